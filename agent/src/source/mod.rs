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
//! [`crate::format`] opens the national formats as a series of these, each
//! with a built-in mapping. Every source can say where it is
//! ([`Source::position`]) and continue from there in a later run
//! ([`Source::resume`]), which is what the spool's checkpoints hold.

pub mod csv;
pub mod ndjson;
pub mod sql;
pub mod xml;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::mapping::{MappingError, Resolved};
use crate::row::RowOutcome;

/// One source row after mapping.
#[derive(Debug, Clone)]
pub struct SourceRow {
    /// Line in the file where the row starts (1 = a CSV header).
    pub line: u64,
    pub outcome: RowOutcome,
}

/// Where a source is: enough to continue from there. `byte` and `line` are
/// where the next row (for XML, the next record) starts; `record` counts the
/// rows (for XML, whole records) read before it; `within` counts the rows of
/// an XML record already read; `after` is the last SQL row read, by its
/// watermark and key.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub byte: u64,
    pub line: u64,
    pub record: u64,
    #[serde(default)]
    pub within: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<sql::Cursor>,
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

/// A readable extract.
pub trait Source: Send {
    /// The next row, `None` at the end.
    fn next_row(&mut self) -> Option<Result<SourceRow, SourceError>>;
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
