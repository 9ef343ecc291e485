//! Many rows in one statement: rows are bound as one JSON array of objects
//! and unpacked by the database (PostgreSQL's `json_to_recordset`, SQLite's
//! `json_each`). A batch of a thousand records is one short statement,
//! prepared once per connection, instead of a statement of fifteen thousand
//! placeholders written, parsed and planned again for every batch (or, on
//! SQLite, sixty statements of a few rows each).
//!
//! Each table written this way is a [`Rows`]: its columns and their kinds,
//! declared with the struct its rows are by [`table_rows!`], from one list
//! of columns. Bytes travel as hex.

use serde::Serialize;
use sqlx::AssertSqlSafe;
use sqlx::any::{Any, AnyArguments};
use sqlx::query::Query;

use super::Backend;

/// How a column's value travels in the JSON.
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

        const $rows: $crate::storage::rows::Rows = $crate::storage::rows::Rows {
            table: $table,
            columns: &[$((stringify!($column), $crate::storage::rows::Kind::$kind)),+],
        };
    };
}
pub(super) use table_rows;

/// A table's columns, as rows are written to it.
pub(super) struct Rows {
    pub table: &'static str,
    pub columns: &'static [(&'static str, Kind)],
}

impl Rows {
    /// `SELECT <columns> FROM <the rows bound as $1>`: the rows as a table,
    /// for an INSERT or an `IN (…)`.
    pub fn select(&self, backend: Backend) -> String {
        match backend {
            Backend::Postgres => {
                let values = self.each(|name, kind| match kind {
                    Kind::Bytes => format!("decode({name}, 'hex')"),
                    _ => name.to_owned(),
                });
                let types = self.each(|name, kind| match kind {
                    Kind::Text | Kind::Bytes => format!("{name} text"),
                    Kind::Integer => format!("{name} bigint"),
                    Kind::Real => format!("{name} double precision"),
                });
                format!("SELECT {values} FROM json_to_recordset(CAST($1 AS json)) AS r({types})")
            }
            Backend::Sqlite => {
                let values = self.each(|name, kind| match kind {
                    Kind::Bytes => format!("unhex(value ->> '{name}')"),
                    _ => format!("value ->> '{name}'"),
                });
                format!("SELECT {values} FROM json_each($1) WHERE true")
            }
        }
    }

    /// `INSERT INTO <table> (<columns>) SELECT … <tail>` with `rows` bound
    /// (`tail`: an `ON CONFLICT` or `RETURNING` clause, or nothing).
    pub fn insert<'q>(
        &self,
        backend: Backend,
        tail: &str,
        rows: &[impl Serialize],
    ) -> Result<Query<'q, Any, AnyArguments>, sqlx::Error> {
        let sql = format!(
            "INSERT INTO {} ({}) {} {tail}",
            self.table,
            self.each(|name, _| name.to_owned()),
            self.select(backend)
        );
        self.bind(sql, rows)
    }

    /// `sql`, which reads [`Rows::select`], with `rows` bound as its one
    /// JSON parameter. In debug builds (and so in every test), rows whose
    /// fields are not exactly these columns (another table's rows) are a
    /// panic: a field missing would otherwise be stored as NULL.
    pub fn bind<'q>(
        &self,
        sql: String,
        rows: &[impl Serialize],
    ) -> Result<Query<'q, Any, AnyArguments>, sqlx::Error> {
        let encode = |e: serde_json::Error| sqlx::Error::Encode(Box::new(e));
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
        let json = serde_json::to_string(rows).map_err(encode)?;
        Ok(sqlx::query(AssertSqlSafe(sql)).bind(json))
    }

    /// Every column written as `each` writes it, comma-separated.
    fn each(&self, each: impl Fn(&str, Kind) -> String) -> String {
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

    const PAIRS: Rows = Rows {
        table: "pairs",
        columns: &[("left_id", Kind::Text), ("score", Kind::Real)],
    };

    #[derive(Serialize)]
    struct Misnamed {
        left: &'static str,
        score: f64,
    }

    #[test]
    #[should_panic(expected = "rows for pairs carry other fields")]
    fn rows_with_a_misnamed_field_are_refused_in_tests() {
        let _ = PAIRS.insert(
            Backend::Sqlite,
            "",
            &[Misnamed {
                left: "a",
                score: 1.0,
            }],
        );
    }
}
