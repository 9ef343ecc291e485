//! One configured extract: how `agent.yaml` writes it ([`SourceEntry`],
//! flat, `kind` first) and the typed form it is checked into
//! ([`SourceConfig`]: a CSV file, an SQL table, or a national format by
//! name). A leaf: the configuration, the readers and the formats all use it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One extract, in its typed form; `agent.yaml` writes it as a
/// [`SourceEntry`], whose `kind` says which of these it is.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(try_from = "SourceEntry", into = "SourceEntry")]
pub enum SourceConfig {
    Csv(CsvFile),
    Sql(SqlTable),
    National(NationalFormat),
}

/// A delimited text file read through a mapping file.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvFile {
    pub path: PathBuf,
    pub mapping: PathBuf,
    pub snapshot: bool,
}

/// A database table (or query) read incrementally through a mapping file.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlTable {
    pub url: String,
    pub table: Option<String>,
    pub query: Option<String>,
    pub mapping: PathBuf,
    pub watermark: String,
    pub key: String,
}

/// A national format's files, read as its registry entry says
/// ([`crate::format::registry`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NationalFormat {
    /// The format's name in the registry (the source's `kind`).
    pub format: String,
    pub path: PathBuf,
    pub dataset: String,
    pub year: Option<i32>,
    pub code_lists: Option<PathBuf>,
    pub files: BTreeMap<String, String>,
    pub snapshot: bool,
}

/// One extract as `agent.yaml` writes it: `kind`, then the keys of that
/// kind.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceEntry {
    /// `csv` (a delimited text file read through a mapping file), `sql` (a
    /// table or query in PostgreSQL or SQLite, read through a mapping file;
    /// each run sends only the rows whose watermark has moved past the last
    /// row sent), or a national format by name: one built in (listed under
    /// "National formats" below) or one in the `formats` directory.
    pub kind: String,
    /// csv: the extract. A national format: the directory holding its
    /// tables (the file, for a format read from one XML file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// csv and sql: the mapping file (see deploy/examples/mapping.yaml);
    /// for sql its columns are the result's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<PathBuf>,
    /// csv and national formats: the extract is a full snapshot of the
    /// dataset: once all of it is delivered, the agency's records from
    /// earlier snapshots are retired at the gateway. Otherwise each run adds
    /// to what is held.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
    /// National formats: the dataset name at the gateway, as the agreement
    /// lists it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// National formats made per collection year: the year, by the year it
    /// ends (2025 for 2024-25). Dates after 31 March of it are refused (the
    /// file is for another year), and the code lists of that year apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub year: Option<i32>,
    /// National formats: a code-list file to use instead of the format's own
    /// for the year (when a new year's lists are published before the agent
    /// is updated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_lists: Option<PathBuf>,
    /// National formats: file names that differ from the standard ones, by
    /// table name (e.g. `Episodes: episodes_2025.csv`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// sql: `postgres://user@host/db` or `sqlite:///path/to/file.db`. A
    /// password is better left out and given as PGPASSWORD in the agent's
    /// environment; the URL is never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// sql: the table (or view) to read, `name` or `schema.name` …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// sql: … or a SELECT whose columns the mapping names (cast dates and
    /// other types to text in it: `dob::text AS dob`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// sql: a column that grows when a row is added or changed (a
    /// last-modified timestamp as ISO text, or a sequence): a run sends the
    /// rows past the last one sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    /// sql: a column unique per row (the primary key), ordering rows that
    /// share a watermark value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl SourceEntry {
    /// The keys given besides `kind`.
    fn given(&self) -> Vec<&'static str> {
        [
            ("path", self.path.is_some()),
            ("mapping", self.mapping.is_some()),
            ("snapshot", self.snapshot),
            ("dataset", self.dataset.is_some()),
            ("year", self.year.is_some()),
            ("code_lists", self.code_lists.is_some()),
            ("files", !self.files.is_empty()),
            ("url", self.url.is_some()),
            ("table", self.table.is_some()),
            ("query", self.query.is_some()),
            ("watermark", self.watermark.is_some()),
            ("key", self.key.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, given)| given.then_some(key))
        .collect()
    }
}

/// `kind: KIND` with `key` missing.
fn required<T>(kind: &str, key: &str, value: Option<T>) -> Result<T, String> {
    value.ok_or_else(|| format!("a {kind} source needs {key}"))
}

impl TryFrom<SourceEntry> for SourceConfig {
    type Error = String;

    fn try_from(entry: SourceEntry) -> Result<Self, String> {
        let kind = entry.kind.clone();
        let keys: &[&str] = match kind.as_str() {
            "csv" => &["path", "mapping", "snapshot"],
            "sql" => &["url", "table", "query", "mapping", "watermark", "key"],
            _ => &["path", "dataset", "year", "code_lists", "files", "snapshot"],
        };
        if let Some(stray) = entry.given().into_iter().find(|k| !keys.contains(k)) {
            return Err(format!(
                "{stray} does not apply to a {kind} source (its keys: {})",
                keys.join(", ")
            ));
        }
        Ok(match kind.as_str() {
            "csv" => Self::Csv(CsvFile {
                path: required(&kind, "path", entry.path)?,
                mapping: required(&kind, "mapping", entry.mapping)?,
                snapshot: entry.snapshot,
            }),
            "sql" => {
                let table = SqlTable {
                    url: required(&kind, "url", entry.url)?,
                    table: entry.table,
                    query: entry.query,
                    mapping: required(&kind, "mapping", entry.mapping)?,
                    watermark: required(&kind, "watermark", entry.watermark)?,
                    key: required(&kind, "key", entry.key)?,
                };
                table.check()?;
                Self::Sql(table)
            }
            format => {
                if !is_format_name(format) {
                    return Err(format!(
                        "kind {format:?}: csv, sql or a national format's name (a-z, 0-9, _)"
                    ));
                }
                Self::National(NationalFormat {
                    format: kind.clone(),
                    path: required(&kind, "path", entry.path)?,
                    dataset: required(&kind, "dataset", entry.dataset)?,
                    year: entry.year,
                    code_lists: entry.code_lists,
                    files: entry.files,
                    snapshot: entry.snapshot,
                })
            }
        })
    }
}

fn is_format_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl From<SourceConfig> for SourceEntry {
    fn from(source: SourceConfig) -> Self {
        match source {
            SourceConfig::Csv(file) => Self {
                kind: "csv".to_owned(),
                path: Some(file.path),
                mapping: Some(file.mapping),
                snapshot: file.snapshot,
                ..Self::default()
            },
            SourceConfig::Sql(table) => Self {
                kind: "sql".to_owned(),
                url: Some(table.url),
                table: table.table,
                query: table.query,
                mapping: Some(table.mapping),
                watermark: Some(table.watermark),
                key: Some(table.key),
                ..Self::default()
            },
            SourceConfig::National(format) => Self {
                kind: format.format,
                path: Some(format.path),
                dataset: Some(format.dataset),
                year: format.year,
                code_lists: format.code_lists,
                files: format.files,
                snapshot: format.snapshot,
                ..Self::default()
            },
        }
    }
}

impl SqlTable {
    /// Exactly one of table and query; names that are plain identifiers
    /// (they are written into SQL).
    pub fn check(&self) -> Result<(), String> {
        let identifier = |name: &str, dots: bool| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || (dots && b == b'.'))
        };
        match (&self.table, &self.query) {
            (Some(table), None) if identifier(table, true) => {}
            (Some(_), None) => {
                return Err("sql table: a name of letters, digits, _ and . only".to_owned());
            }
            (None, Some(_)) => {}
            _ => return Err("sql: give either table or query".to_owned()),
        }
        for (what, column) in [("watermark", &self.watermark), ("key", &self.key)] {
            if !identifier(column, false) {
                return Err(format!(
                    "sql {what}: a column name of letters, digits and _ only"
                ));
            }
        }
        Ok(())
    }
}

impl SourceConfig {
    /// What the source is, as its `kind`: `csv`, `sql` or the format's name.
    pub fn kind(&self) -> &str {
        match self {
            Self::Csv(_) => "csv",
            Self::Sql(_) => "sql",
            Self::National(format) => &format.format,
        }
    }

    /// Whether the source is declared a full snapshot of its dataset.
    pub fn snapshot(&self) -> bool {
        match self {
            Self::Csv(file) => file.snapshot,
            Self::Sql(_) => false,
            Self::National(format) => format.snapshot,
        }
    }
}
