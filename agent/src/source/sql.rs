//! A table or query in PostgreSQL or SQLite (sqlx), read incrementally.
//!
//! Rows are read in (watermark, key) order; the position after each row is
//! that pair, so a later run — or an interrupted one resumed — asks only for
//! rows past it: `WHERE (watermark, key) > ($1, $2)`. A row added or changed
//! since (its watermark moved) is sent; nothing already sent is read again.
//!
//! The database is read on a thread of its own with its own runtime, rows
//! handed over through a bounded channel, so memory stays flat and the
//! source works the same inside or outside the agent's runtime. Values are
//! read as text, integers, reals or booleans; other types (dates,
//! timestamps) must be cast to text in the query. Errors carry the column
//! name or the database's error code and kind, never a value.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AssertSqlSafe, Column, Executor, Row, SqlSafeStr, Statement};

use crate::mapping::{Mapping, Resolved};
use crate::person::Problem;
use crate::source::config::SqlTable;
use crate::source::{Position, RawRow, ReadContext, Source, SourceError};

/// Rows fetched ahead of the reader, at most.
const AHEAD: usize = 1024;

/// A watermark or key value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Integer(i64),
    Text(String),
}

/// The last row read: its watermark and key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub watermark: Value,
    pub key: Value,
}

/// From the database thread.
enum Fetched {
    Columns(Vec<String>),
    /// A row's fields as text, and its cursor (`None`: watermark or key is
    /// NULL or of another type).
    Row(Vec<String>, Option<Cursor>),
    Failed(String),
}

pub struct SqlSource {
    label: PathBuf,
    fingerprint: String,
    start: Option<mpsc::SyncSender<Option<Cursor>>>,
    rows: mpsc::Receiver<Fetched>,
    mapping: Resolved,
    context: ReadContext,
    at: SqlAt,
    finished: bool,
}

/// Where a SQL reader is: the rows read (a row's `line` is its number in
/// the read), and the last one's watermark and key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SqlAt {
    line: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<Cursor>,
}

impl SqlSource {
    /// Connects, learns the result's columns and binds the mapping to them;
    /// reading starts at the first [`Source::next_row`].
    pub fn open(table: &SqlTable, context: impl Into<ReadContext>) -> Result<Self, SourceError> {
        let context = context.into();
        let label = PathBuf::from(format!("sql {}", table.table.as_deref().unwrap_or("query")));
        let mapping = Mapping::load(&table.mapping)?;
        let select = format!(
            "SELECT * FROM ({}) AS joinery_source",
            match (&table.table, &table.query) {
                (Some(name), _) => format!("SELECT * FROM {name}"),
                (None, Some(query)) => query.trim().trim_end_matches(';').to_owned(),
                (None, None) => String::new(),
            }
        );
        let (start, started) = mpsc::sync_channel::<Option<Cursor>>(1);
        let (sender, rows) = mpsc::sync_channel(AHEAD);
        let url = table.url.clone();
        let (watermark, key) = (table.watermark.clone(), table.key.clone());
        let fingerprint = {
            // The URL without its user and password.
            let place = table.url.rsplit('@').next().unwrap_or_default();
            let identity = format!(
                "{place}\n{select}\n{watermark}\n{key}\n{}",
                table.mapping.display()
            );
            hex::encode(
                &ring::digest::digest(&ring::digest::SHA256, identity.as_bytes()).as_ref()[..16],
            )
        };
        std::thread::Builder::new()
            .name("sql-source".to_owned())
            .spawn(move || {
                let result = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        runtime.block_on(read(&url, &select, &watermark, &key, &sender, started))
                    }
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = result {
                    let _ = sender.send(Fetched::Failed(e));
                }
            })
            .map_err(|source| SourceError::Open {
                path: label.clone(),
                source,
            })?;
        let columns = match rows.recv_timeout(Duration::from_secs(60)) {
            Ok(Fetched::Columns(columns)) => columns,
            Ok(Fetched::Failed(detail)) => {
                return Err(SourceError::Format {
                    path: label,
                    detail,
                });
            }
            _ => {
                return Err(SourceError::Format {
                    path: label,
                    detail: "the database did not answer within 60 s".to_owned(),
                });
            }
        };
        let mapping = mapping.resolve(&columns, &table.mapping, &label)?;
        Ok(Self {
            label,
            fingerprint,
            start: Some(start),
            rows,
            mapping,
            context,
            at: SqlAt::default(),
            finished: false,
        })
    }

    fn failed(&self, detail: String) -> SourceError {
        SourceError::Io {
            path: self.label.clone(),
            line: self.at.line,
            detail,
        }
    }
}

/// The database side: columns first, then (when told where to start) rows.
async fn read(
    url: &str,
    select: &str,
    watermark: &str,
    key: &str,
    sender: &mpsc::SyncSender<Fetched>,
    started: mpsc::Receiver<Option<Cursor>>,
) -> Result<(), String> {
    use futures::TryStreamExt;
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to the database: {}", database_error(&e)))?;
    let statement = (&pool)
        .prepare(AssertSqlSafe(select.to_owned()).into_sql_str())
        .await
        .map_err(|e| database_error(&e))?;
    let columns: Vec<String> = statement
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let position = |name: &str| {
        columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                format!(
                    "the result has no column {name:?} (available: {})",
                    columns.join(", ")
                )
            })
    };
    let (watermark_at, key_at) = (position(watermark)?, position(key)?);
    let _ = sender.send(Fetched::Columns(columns.clone()));
    // Blocks this thread until the reader says where to start (or leaves).
    let Ok(after) = started.recv() else {
        return Ok(());
    };
    let order = format!("{select} {{}} ORDER BY {watermark}, {key}");
    let sql = match &after {
        Some(_) => order.replace("{}", &format!("WHERE ({watermark}, {key}) > ($1, $2)")),
        None => order.replace("{}", ""),
    };
    let mut query = sqlx::query(AssertSqlSafe(sql));
    if let Some(cursor) = after {
        for value in [cursor.watermark, cursor.key] {
            query = match value {
                Value::Integer(i) => query.bind(i),
                Value::Text(t) => query.bind(t),
            };
        }
    }
    let mut stream = query.fetch(&pool);
    while let Some(row) = stream
        .try_next()
        .await
        .map_err(|e| format!("reading rows: {}", database_error(&e)))?
    {
        let fields = (0..columns.len())
            .map(|i| {
                text(&row, i).ok_or_else(|| {
                    format!(
                        "column {:?}: its type cannot be read; cast it to text in the query",
                        columns[i]
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cursor = cursor_value(&row, watermark_at)
            .zip(cursor_value(&row, key_at))
            .map(|(watermark, key)| Cursor { watermark, key });
        if sender.send(Fetched::Row(fields, cursor)).is_err() {
            break; // the reader has gone
        }
    }
    Ok(())
}

/// A column's value as text ("" for NULL); `None` if its type is not one
/// the reader knows.
fn text(row: &AnyRow, i: usize) -> Option<String> {
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return Some(v.unwrap_or_default());
    }
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return Some(v.map(|v| v.to_string()).unwrap_or_default());
    }
    if let Ok(v) = row.try_get::<Option<i32>, _>(i) {
        return Some(v.map(|v| v.to_string()).unwrap_or_default());
    }
    if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
        return Some(v.map(|v| v.to_string()).unwrap_or_default());
    }
    if let Ok(v) = row.try_get::<Option<bool>, _>(i) {
        return Some(v.map(|v| v.to_string()).unwrap_or_default());
    }
    None
}

fn cursor_value(row: &AnyRow, i: usize) -> Option<Value> {
    if let Ok(Some(v)) = row.try_get::<Option<i64>, _>(i) {
        return Some(Value::Integer(v));
    }
    if let Ok(Some(v)) = row.try_get::<Option<i32>, _>(i) {
        return Some(Value::Integer(i64::from(v)));
    }
    row.try_get::<Option<String>, _>(i)
        .ok()
        .flatten()
        .map(Value::Text)
}

/// A database error without the values a server may quote in its message
/// (`invalid input syntax for type date: "…"` keeps what is before the colon).
fn database_error(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(e) => {
            let message = e.message();
            let kind = message.split(':').next().unwrap_or(message);
            match e.code() {
                Some(code) => format!("{kind} (SQLSTATE {code})"),
                None => kind.to_owned(),
            }
        }
        sqlx::Error::ColumnDecode { index, .. } => format!(
            "column {index:?}: its type cannot be read; cast it to text in the query ({index}::text AS {index})"
        ),
        other => other.to_string(),
    }
}

impl Source for SqlSource {
    fn next_raw(&mut self) -> Option<Result<RawRow, SourceError>> {
        if let Some(start) = self.start.take() {
            let _ = start.send(self.at.after.clone());
        }
        if self.finished {
            return None;
        }
        match self.rows.recv() {
            Ok(Fetched::Row(fields, cursor)) => {
                self.at.line += 1;
                let line = self.at.line;
                let fields = match cursor {
                    Some(cursor) => {
                        self.at.after = Some(cursor);
                        Ok((0, fields))
                    }
                    None => Err(Problem::new(
                        "watermark",
                        "the watermark or key is empty or neither text nor an integer",
                    )),
                };
                Some(Ok(RawRow { line, fields }))
            }
            Ok(Fetched::Failed(detail)) => {
                self.finished = true;
                Some(Err(self.failed(detail)))
            }
            Ok(Fetched::Columns(_)) | Err(_) => {
                self.finished = true;
                None
            }
        }
    }

    fn position(&self) -> Position {
        Position::of(self.at.line, &self.at)
    }

    fn resume(&mut self, at: Position) -> Result<(), SourceError> {
        if self.start.is_none() {
            return Err(self.failed("cannot resume a read already started".to_owned()));
        }
        self.at = at.state(&self.label)?;
        Ok(())
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn total_bytes(&self) -> u64 {
        0
    }

    fn bytes_read(&self) -> u64 {
        0
    }

    fn mappings(&self) -> Vec<&Resolved> {
        vec![&self.mapping]
    }

    fn mapping(&self, _table: usize) -> &Resolved {
        &self.mapping
    }

    fn today(&self) -> time::Date {
        self.context.today
    }

    fn incremental(&self) -> bool {
        true
    }
}
