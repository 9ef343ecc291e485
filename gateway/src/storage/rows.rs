//! Many rows in one statement: on PostgreSQL one array per column, unnested
//! (`unnest(CAST($1 AS text[]), CAST($2 AS bigint[]), …)`). On SQLite,
//! rows written are bound value by value (`VALUES (?, …), …`, in as many
//! statements as its limit of 32,766 values needs), and rows a statement
//! joins against travel as one JSON array of objects (`json_each`), which
//! has no such limit. A batch of a thousand records is one short statement
//! on PostgreSQL, prepared once per connection, instead of a statement of
//! fifteen thousand placeholders written, parsed and planned again for
//! every batch. PostgreSQL reads arrays faster than JSON (which it parses
//! twice, to check it and then to read it); SQLite reads bound values
//! faster than JSON, whose every row object it turns back into text to
//! read (docs/scaling.md).
//!
//! Each table written this way is a [`Rows`]: its columns and their kinds,
//! declared with the struct its rows are by [`table_rows!`], from one list
//! of columns. Bytes travel as hex.

use serde::Serialize;
use sqlx::AnyConnection;
use sqlx::AssertSqlSafe;
use sqlx::any::{Any, AnyArguments, AnyRow};
use sqlx::query::Query;

use super::Backend;

/// Values bound to one SQLite statement, at most (SQLite's
/// `SQLITE_MAX_VARIABLE_NUMBER` since 3.32).
const SQLITE_VALUES: usize = 32_766;

/// `bytes` as lowercase hex digits, the way [`Kind::Bytes`] columns travel
/// (a table look-up per byte: `hex::encode` builds its string a character
/// at a time, a twelfth of ingest's time in the gateway for the filters).
pub(super) fn hex_text(bytes: &[u8]) -> String {
    let mut digits = vec![0; bytes.len() * 2];
    // Cannot fail: the output is exactly twice the input.
    let _ = hex::encode_to_slice(bytes, &mut digits);
    String::from_utf8(digits).unwrap_or_default()
}

/// A JSON error as sqlx's.
fn encode(e: serde_json::Error) -> sqlx::Error {
    sqlx::Error::Encode(Box::new(e))
}

/// A column's type: how its values are written and read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Text,
    Integer,
    Real,
    /// Hex digits, stored as bytes.
    Bytes,
}

/// Declares a row struct and the [`Rows`] of its table from one list of
/// columns (`name: type => Kind`), so the two cannot disagree:
///
/// ```text
/// table_rows! {
///     /// A change as stored.
///     struct Changed<'a> in "population_changes" as POPULATION_CHANGES {
///         person_id: &'a str => Text,
///         generation: i64 => Integer,
///     }
/// }
/// ```
macro_rules! table_rows {
    ($(#[$doc:meta])* struct $row:ident<$lt:lifetime> in $table:literal as $rows:ident {
        $($column:ident: $ty:ty => $kind:ident),+ $(,)?
    }) => {
        $(#[$doc])*
        #[derive(serde::Serialize)]
        struct $row<$lt> {
            $($column: $ty),+
        }

        impl $crate::storage::rows::Row for $row<'_> {
            fn append_to(&self, columns: &mut [String]) {
                let mut columns = columns.iter_mut();
                $(
                    if let Some(column) = columns.next() {
                        $crate::storage::rows::Cell::append_to(&self.$column, column);
                    }
                )+
            }

            fn bind_to<'q>(
                &self,
                mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
            ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
                $(query = $crate::storage::rows::Cell::bind_to(&self.$column, query);)+
                query
            }
        }

        const $rows: $crate::storage::rows::Rows = $crate::storage::rows::Rows {
            table: $table,
            columns: &[$((stringify!($column), $crate::storage::rows::Kind::$kind)),+],
        };
    };
}
pub(super) use table_rows;

/// A row that writes itself column by column (see [`table_rows!`]).
pub(super) trait Row: Serialize {
    /// Appends each of its values to its column's array literal.
    fn append_to(&self, columns: &mut [String]);
    /// Binds each of its values, in column order.
    fn bind_to<'q>(&self, query: Query<'q, Any, AnyArguments>) -> Query<'q, Any, AnyArguments>;
}

/// A value written into a statement: on PostgreSQL as an element of an
/// array literal (`append_to`: text quoted, `"` and `\` escaped, numbers
/// as they are, an absent value `NULL`); on SQLite bound on its own
/// (`bind_to`: integers as `i64`, an absent value as NULL).
pub(super) trait Cell {
    fn append_to(&self, literal: &mut String);
    fn bind_to<'q>(&self, query: Query<'q, Any, AnyArguments>) -> Query<'q, Any, AnyArguments>;
}

impl Cell for str {
    fn append_to(&self, literal: &mut String) {
        literal.reserve(self.len() + 2);
        literal.push('"');
        // Copied whole between the characters to escape (ASCII, so each
        // cut is at a character boundary): most values have none.
        let mut rest = self;
        while let Some(at) = memchr::memchr2(b'"', b'\\', rest.as_bytes()) {
            literal.push_str(&rest[..at]);
            literal.push('\\');
            literal.push_str(&rest[at..=at]);
            rest = &rest[at + 1..];
        }
        literal.push_str(rest);
        literal.push('"');
    }
    fn bind_to<'q>(&self, query: Query<'q, Any, AnyArguments>) -> Query<'q, Any, AnyArguments> {
        query.bind(self.to_owned())
    }
}

impl Cell for &str {
    fn append_to(&self, literal: &mut String) {
        (**self).append_to(literal);
    }
    fn bind_to<'q>(&self, query: Query<'q, Any, AnyArguments>) -> Query<'q, Any, AnyArguments> {
        (**self).bind_to(query)
    }
}

impl Cell for String {
    fn append_to(&self, literal: &mut String) {
        self.as_str().append_to(literal);
    }
    fn bind_to<'q>(&self, query: Query<'q, Any, AnyArguments>) -> Query<'q, Any, AnyArguments> {
        self.as_str().bind_to(query)
    }
}

impl<T: Cell> Cell for Option<T> {
    fn append_to(&self, literal: &mut String) {
        match self {
            Some(value) => value.append_to(literal),
            None => literal.push_str("NULL"),
        }
    }
    fn bind_to<'q>(&self, query: Query<'q, Any, AnyArguments>) -> Query<'q, Any, AnyArguments> {
        match self {
            Some(value) => value.bind_to(query),
            None => query.bind(None::<String>),
        }
    }
}

/// Numbers as Rust writes them: integers exactly, floats in the shortest
/// form that reads back as the same value (`NaN` and `inf` too, which
/// PostgreSQL reads as such).
macro_rules! number_cell {
    ($($ty:ty => $bind:ty),+) => {
        $(impl Cell for $ty {
            fn append_to(&self, literal: &mut String) {
                use std::fmt::Write;
                let _ = write!(literal, "{self}");
            }
            fn bind_to<'q>(&self, query: Query<'q, Any, AnyArguments>) -> Query<'q, Any, AnyArguments> {
                query.bind(*self as $bind)
            }
        })+
    };
}
number_cell!(usize => i64, u64 => i64, u32 => i64, i64 => i64, f64 => f64);

/// A table's columns, as rows are written to it.
pub(super) struct Rows {
    pub table: &'static str,
    pub columns: &'static [(&'static str, Kind)],
}

impl Rows {
    /// `SELECT <columns> FROM <the rows bound>`: the rows as a table, each
    /// column under its name, for an INSERT, an `IN (…)` or an `UPDATE …
    /// FROM`.
    pub fn select(&self, backend: Backend) -> String {
        match backend {
            Backend::Postgres => {
                let values = self.each(|name, kind| match kind {
                    Kind::Bytes => format!("decode({name}, 'hex') AS {name}"),
                    _ => name.to_owned(),
                });
                let mut number = 0;
                let arrays = self.each(|_, kind| {
                    number += 1;
                    match kind {
                        Kind::Text | Kind::Bytes => format!("CAST(${number} AS text[])"),
                        Kind::Integer => format!("CAST(${number} AS bigint[])"),
                        Kind::Real => format!("CAST(${number} AS double precision[])"),
                    }
                });
                let names = self.each(|name, _| name.to_owned());
                format!("SELECT {values} FROM unnest({arrays}) AS r({names})")
            }
            Backend::Sqlite => {
                let values = self.each(|name, kind| match kind {
                    Kind::Bytes => format!("unhex(value ->> '{name}') AS {name}"),
                    _ => format!("value ->> '{name}' AS {name}"),
                });
                format!("SELECT {values} FROM json_each($1) WHERE true")
            }
        }
    }

    /// Writes `rows` with `INSERT INTO <table> (<columns>) … <tail>` on
    /// `connection` (`tail`: an `ON CONFLICT` clause, or nothing); no rows,
    /// no statement.
    pub async fn write(
        &self,
        connection: &mut AnyConnection,
        backend: Backend,
        tail: &str,
        rows: &[impl Row],
    ) -> Result<(), sqlx::Error> {
        for chunk in self.chunks(backend, rows) {
            self.insert(backend, tail, chunk)?
                .execute(&mut *connection)
                .await?;
        }
        Ok(())
    }

    /// [`Rows::write`] with a `RETURNING` clause in `tail`: the rows it
    /// returns.
    pub async fn write_returning(
        &self,
        connection: &mut AnyConnection,
        backend: Backend,
        tail: &str,
        rows: &[impl Row],
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        let mut returned = Vec::new();
        for chunk in self.chunks(backend, rows) {
            returned.extend(
                self.insert(backend, tail, chunk)?
                    .fetch_all(&mut *connection)
                    .await?,
            );
        }
        Ok(returned)
    }

    /// `rows` in as many statements as SQLite's limit on bound values
    /// needs; on PostgreSQL, one.
    fn chunks<'r, R: Row>(&self, backend: Backend, rows: &'r [R]) -> std::slice::Chunks<'r, R> {
        let per_statement = match backend {
            Backend::Sqlite => SQLITE_VALUES / self.columns.len(),
            Backend::Postgres => rows.len(),
        };
        rows.chunks(per_statement.max(1))
    }

    /// `INSERT INTO <table> (<columns>) SELECT … <tail>` with `rows` bound:
    /// on PostgreSQL as [`Rows::bind`] binds them, on SQLite value by
    /// value (`VALUES (?, …), …`), which SQLite reads without parsing
    /// anything.
    fn insert<'q>(
        &self,
        backend: Backend,
        tail: &str,
        rows: &[impl Row],
    ) -> Result<Query<'q, Any, AnyArguments>, sqlx::Error> {
        let columns = self.each(|name, _| name.to_owned());
        match backend {
            Backend::Postgres => {
                let sql = format!(
                    "INSERT INTO {} ({columns}) {} {tail}",
                    self.table,
                    self.select(backend)
                );
                self.bind(backend, sql, rows)
            }
            Backend::Sqlite => {
                self.check_fields(rows)?;
                let mut number = 0;
                let values = self.each(|_, kind| {
                    number += 1;
                    match kind {
                        Kind::Bytes => format!("unhex(column{number})"),
                        _ => format!("column{number}"),
                    }
                });
                let row = format!("({})", vec!["?"; self.columns.len()].join(", "));
                // `WHERE true` tells SQLite's parser that an `ON CONFLICT`
                // after it is the upsert's, not a join's.
                let sql = format!(
                    "INSERT INTO {} ({columns}) SELECT {values} FROM (VALUES {}) WHERE true {tail}",
                    self.table,
                    vec![row; rows.len()].join(", ")
                );
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for row in rows {
                    query = row.bind_to(query);
                }
                Ok(query)
            }
        }
    }

    /// `sql`, which reads [`Rows::select`], with `rows` bound: an array
    /// literal per column on PostgreSQL, one JSON array on SQLite (any
    /// number of rows in one statement, as a join needs). Checked as
    /// [`Rows::check_fields`] checks.
    pub fn bind<'q>(
        &self,
        backend: Backend,
        sql: String,
        rows: &[impl Row],
    ) -> Result<Query<'q, Any, AnyArguments>, sqlx::Error> {
        self.check_fields(rows)?;
        let mut query = sqlx::query(AssertSqlSafe(sql));
        match backend {
            Backend::Postgres => {
                let mut columns = vec![String::from("{"); self.columns.len()];
                for (i, row) in rows.iter().enumerate() {
                    if i > 0 {
                        columns.iter_mut().for_each(|c| c.push(','));
                    }
                    row.append_to(&mut columns);
                    if i == 0 {
                        // The other rows are about as long as the first:
                        // each column grown once, not doubled over and over.
                        for column in &mut columns {
                            column.reserve(column.len() * rows.len());
                        }
                    }
                }
                for mut column in columns {
                    column.push('}');
                    query = query.bind(column);
                }
            }
            Backend::Sqlite => query = query.bind(serde_json::to_string(rows).map_err(encode)?),
        }
        Ok(query)
    }

    /// In debug builds (and so in every test), rows whose fields are not
    /// exactly these columns (another table's rows) are a panic.
    fn check_fields(&self, rows: &[impl Row]) -> Result<(), sqlx::Error> {
        #[cfg(debug_assertions)]
        if let Some(first) = rows.first() {
            let value = serde_json::to_value(first).map_err(encode)?;
            let mut fields: Vec<&str> = value
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            let mut columns: Vec<&str> = self.columns.iter().map(|&(name, _)| name).collect();
            fields.sort_unstable();
            columns.sort_unstable();
            assert_eq!(
                fields, columns,
                "rows for {} carry other fields",
                self.table
            );
        }
        #[cfg(not(debug_assertions))]
        let _ = rows;
        Ok(())
    }

    /// Every column written as `each` writes it, comma-separated.
    fn each(&self, mut each: impl FnMut(&str, Kind) -> String) -> String {
        self.columns
            .iter()
            .map(|&(name, kind)| each(name, kind))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    table_rows! {
        struct Pair<'a> in "pairs" as PAIRS {
            left_id: &'a str => Text,
            score: Option<f64> => Real,
        }
    }

    table_rows! {
        struct Other<'a> in "others" as OTHERS {
            left: &'a str => Text,
            score: Option<f64> => Real,
        }
    }

    #[test]
    #[should_panic(expected = "rows for pairs carry other fields")]
    fn another_tables_rows_are_refused_in_tests() {
        let _ = OTHERS.select(Backend::Sqlite);
        let rows = [Other {
            left: "a",
            score: None,
        }];
        let _ = PAIRS.insert(Backend::Sqlite, "", &rows);
    }

    #[test]
    fn bytes_travel_as_the_hex_digits_hex_writes() {
        for bytes in [&[][..], &[0, 1, 0xab, 0xff], &[7; 455]] {
            assert_eq!(hex_text(bytes), hex::encode(bytes));
        }
    }

    #[test]
    fn text_in_an_array_literal_is_quoted_and_absent_values_are_null() {
        let mut columns = vec![String::new(), String::new()];
        Pair {
            left_id: r#"say "hi" \ {x,y} NULL ü"#,
            score: None,
        }
        .append_to(&mut columns);
        assert_eq!(columns[0], r#""say \"hi\" \\ {x,y} NULL ü""#);
        assert_eq!(columns[1], "NULL");
        let mut literal = String::new();
        Some(0.1 + 0.2).append_to(&mut literal);
        assert_eq!(literal.parse::<f64>().unwrap(), 0.1 + 0.2);
    }
}
