//! Many rows in one statement: rows are bound as one JSON array of objects
//! and unpacked by the database (PostgreSQL's `json_to_recordset`, SQLite's
//! `json_each`). A batch of a thousand records is one short statement,
//! prepared once per connection, instead of a statement of fifteen thousand
//! placeholders written, parsed and planned again for every batch (or, on
//! SQLite, sixty statements of a few rows each).
//!
//! Each table written this way is a [`Rows`]: its columns and their kinds.
//! The rows themselves are any `Serialize` values whose field names are the
//! column names (a missing field is NULL); bytes travel as hex.

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
                let values = self
                    .columns
                    .iter()
                    .map(|&(name, kind)| match kind {
                        Kind::Bytes => format!("decode({name}, 'hex')"),
                        _ => name.to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let types = self
                    .columns
                    .iter()
                    .map(|&(name, kind)| {
                        let ty = match kind {
                            Kind::Text | Kind::Bytes => "text",
                            Kind::Integer => "bigint",
                            Kind::Real => "double precision",
                        };
                        format!("{name} {ty}")
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("SELECT {values} FROM json_to_recordset(CAST($1 AS json)) AS r({types})")
            }
            Backend::Sqlite => {
                let values = self
                    .columns
                    .iter()
                    .map(|&(name, kind)| match kind {
                        Kind::Bytes => format!("unhex(value ->> '{name}')"),
                        _ => format!("value ->> '{name}'"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("SELECT {values} FROM json_each($1) WHERE true")
            }
        }
    }

    /// `INSERT INTO <table> (<columns>) SELECT … <tail>`, the rows bound as
    /// `$1` (`tail`: an `ON CONFLICT` or `RETURNING` clause, or nothing).
    pub fn insert(&self, backend: Backend, tail: &str) -> String {
        format!(
            "INSERT INTO {} ({}) {} {tail}",
            self.table,
            self.names(),
            self.select(backend)
        )
    }

    fn names(&self) -> String {
        self.columns
            .iter()
            .map(|&(name, _)| name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `sql` with `rows` bound as its one JSON parameter.
pub(super) fn bound<'q>(
    sql: String,
    rows: &[impl Serialize],
) -> Result<Query<'q, Any, AnyArguments>, sqlx::Error> {
    let json = serde_json::to_string(rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    Ok(sqlx::query(AssertSqlSafe(sql)).bind(json))
}
