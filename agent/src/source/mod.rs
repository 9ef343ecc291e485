//! Sources: readers that turn an agency's extract into canonical rows, each
//! tagged with its line number.
//!
//! - [`csv`]: a delimited file through a mapping file (also each table of the
//!   CSV-based national formats: SSDA903, Annex A, MHSDS, CSDS);
//! - [`xml`]: the CIN census, streamed one `<Child>` at a time;
//! - [`ndjson`]: FHIR bulk-export NDJSON, one resource per line;
//! - [`sql`]: a table or query in PostgreSQL or SQLite, read incrementally
//!   by a watermark column.
//!
//! [`config`] is how a source is configured (`agent.yaml`'s `sources`).
//!
//! [`crate::format`] opens the national formats as a series of these, each
//! with a built-in mapping. Every source can say where it is
//! ([`Source::position`]) and continue from there in a later run
//! ([`Source::resume`]), which is what the spool's checkpoints hold.
//!
//! Every reader works within [`InputLimits`] ([`ReadContext`]): a line
//! longer than the limit stops the source with its file and line, a field
//! longer than its limit quarantines the row, so a hostile or broken file
//! can neither exhaust memory nor print itself into an error.

pub mod config;
pub mod csv;
pub mod ndjson;
mod position;
pub mod sql;
pub mod xml;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use time::Date;

pub use position::Position;

use crate::mapping::{MappingError, Resolved};
use crate::person::Problem;
use crate::row::{RowOutcome, map_row};

/// The most a reader takes in, per line and per field (agent configuration
/// `limits`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields, default)]
pub struct InputLimits {
    /// The longest line (a CSV row, an NDJSON resource), in bytes.
    pub max_line_bytes: usize,
    /// The longest field, in bytes; a row with a longer one is quarantined.
    pub max_field_bytes: usize,
}

impl Default for InputLimits {
    /// 1 MiB a line, 64 KiB a field: far above any real extract's.
    fn default() -> Self {
        Self {
            max_line_bytes: 1 << 20,
            max_field_bytes: 64 << 10,
        }
    }
}

/// What every reader is given: the day dates are checked against, and the
/// limits.
#[derive(Debug, Clone, Copy)]
pub struct ReadContext {
    pub today: Date,
    pub limits: InputLimits,
}

impl From<Date> for ReadContext {
    /// `today`, with the default limits.
    fn from(today: Date) -> Self {
        Self {
            today,
            limits: InputLimits::default(),
        }
    }
}

/// A reader that fails, naming the limit, as soon as a line runs past
/// `max` bytes, before the line is held anywhere.
pub struct LineLimited<R> {
    inner: R,
    max: usize,
    since_newline: usize,
}

impl<R> LineLimited<R> {
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            max,
            since_newline: 0,
        }
    }
}

impl<R: Read> Read for LineLimited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &byte in &buf[..n] {
            if byte == b'\n' {
                self.since_newline = 0;
            } else {
                self.since_newline += 1;
                if self.since_newline > self.max {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "a line is longer than {} bytes (limits.max_line_bytes)",
                            self.max
                        ),
                    ));
                }
            }
        }
        Ok(n)
    }
}

impl<R: Seek> Seek for LineLimited<R> {
    /// Sources resume at the start of a row.
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.since_newline = 0;
        self.inner.seek(to)
    }
}

/// One row as its reader found it, before mapping: its table's fields in
/// that table's column order, or why the row could not be read at all.
#[derive(Debug, Clone)]
pub struct RawRow {
    /// Line in the file where the row starts (1 = a CSV header).
    pub line: u64,
    /// (the table, its fields), or what is wrong with the row's shape.
    pub fields: Result<(usize, Vec<String>), Problem>,
}

impl RawRow {
    /// A row of `table` with these fields.
    pub fn of(line: u64, table: usize, fields: Vec<String>) -> Self {
        Self {
            line,
            fields: Ok((table, fields)),
        }
    }

    /// A row quarantined whole, for its shape rather than a field's value.
    pub fn broken(line: u64, what: impl std::fmt::Display) -> Self {
        Self {
            line,
            fields: Err(Problem::new("row", what)),
        }
    }
}

/// One source row after mapping.
#[derive(Debug, Clone)]
pub struct SourceRow {
    /// Line in the file where the row starts (1 = a CSV header).
    pub line: u64,
    pub outcome: RowOutcome,
}

/// Problems that stop a source (a bad row never does: it is quarantined).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is empty: a header row is required")]
    NoHeader { path: PathBuf },
    #[error("{path}, line 1: cannot read the header row: {detail}")]
    Header { path: PathBuf, detail: String },
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("{path}, line {line}: cannot read the file: {detail}")]
    Io {
        path: PathBuf,
        line: u64,
        detail: String,
    },
    #[error("{path}: {detail}")]
    Format { path: PathBuf, detail: String },
}

/// A readable extract. A reader yields raw rows ([`Source::next_raw`]);
/// mapping them ([`Source::map`]: the table's mapping, validation, the
/// person an event table's row belongs to) is a stage of its own.
pub trait Source: Send {
    /// The next row's fields, `None` at the end.
    fn next_raw(&mut self) -> Option<Result<RawRow, SourceError>>;
    /// The mapping of `table` (bound to this source's columns).
    fn mapping(&self, table: usize) -> &Resolved;
    /// The date rows are checked against (nothing may happen after it).
    fn today(&self) -> Date;

    /// The mapping stage: a raw row through its table's mapping.
    fn map(&self, raw: RawRow) -> SourceRow {
        let outcome = match raw.fields {
            Ok((table, fields)) => map_row(&fields, self.mapping(table), self.today()),
            Err(problem) => RowOutcome::Quarantined(problem),
        };
        SourceRow {
            line: raw.line,
            outcome,
        }
    }

    /// The next row, read and mapped; `None` at the end.
    fn next_row(&mut self) -> Option<Result<SourceRow, SourceError>> {
        Some(self.next_raw()?.map(|raw| self.map(raw)))
    }

    /// Where the next row starts.
    fn position(&self) -> Position;
    /// Continues from a position this source gave in an earlier run over the
    /// same file.
    fn resume(&mut self, at: Position) -> Result<(), SourceError>;
    /// Identifies the file's content; a changed fingerprint means a new extract.
    fn fingerprint(&self) -> String;
    /// Size of the input, for progress.
    fn total_bytes(&self) -> u64;
    /// Bytes consumed so far.
    fn bytes_read(&self) -> u64;
    /// The mappings its rows go through (one per table).
    fn mappings(&self) -> Vec<&Resolved>;
    /// A source that grows (a SQL table read by watermark): a completed
    /// read is continued by the next run, not skipped.
    fn incremental(&self) -> bool {
        false
    }
}

/// Size, modification time and the SHA-256 of the first 64 KiB of `path`.
pub fn file_fingerprint(path: &Path) -> String {
    let metadata = std::fs::metadata(path).ok();
    let size = metadata.as_ref().map_or(0, std::fs::Metadata::len);
    let modified = metadata
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut head = Vec::new();
    let _ = File::open(path).map(|f| f.take(64 * 1024).read_to_end(&mut head));
    let digest = ring::digest::digest(&ring::digest::SHA256, &head);
    format!("{size}:{modified}:{}", hex::encode(&digest.as_ref()[..16]))
}
