//! The agent's configuration file (`agent.yaml`), loaded once. Relative paths
//! are resolved against the directory holding the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use joinery_crypto::tls::TlsFiles;

use crate::format::{Registry, RegistryError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Everything an agent run needs to know.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This agency's ODS or local-authority code; must match its certificate.
    pub organisation: String,
    /// The signed data-sharing agreement the data is sent under (its
    /// signatures are read from the same path with `.sig` appended). The
    /// agent refuses to run on an agreement that is not fully signed or not
    /// in force, and sends only what it allows.
    pub agreement: PathBuf,
    /// The National Data Opt-out list: a file of NHS numbers, one per line
    /// (spaces allowed; blank lines and lines starting with `#` ignored; a
    /// line that is not a valid NHS number stops the agent, naming the
    /// line). Required when the agreement says the opt-out applies (an
    /// empty list then says nobody has opted out); `joinery synth` writes
    /// one for its population.
    #[serde(default)]
    pub national_data_opt_out: Option<PathBuf>,
    /// Where the gateway is.
    pub gateway: GatewayEndpoint,
    /// This agency's mutual-TLS credentials.
    pub tls: TlsPaths,
    /// File holding the agreement's 256-bit linkage key (hex, mode 0600),
    /// shared by the agencies and never by the gateway.
    pub linkage_key: PathBuf,
    /// Where quarantine reports are written (one CSV per source).
    #[serde(default = "default_quarantine_dir")]
    pub quarantine_dir: PathBuf,
    /// The durable spool: batches wait here, on disk, until acknowledged,
    /// with each source's reading position.
    #[serde(default = "default_spool_dir")]
    pub spool_dir: PathBuf,
    /// Reading pauses while the spool holds more than this many bytes.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// How long to keep reconnecting after the gateway becomes unreachable
    /// before the run gives up (the spool keeps everything for the next run).
    #[serde(default = "default_retry_for_secs")]
    pub retry_for_secs: u64,
    /// Records per batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Batches sent but not yet acknowledged, at most.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Extracts to read, in order.
    pub sources: Vec<SourceConfig>,
    /// A directory of the agency's own national formats, laid out as the
    /// built-in ones in the agent's `formats/` (`<format>.yaml` and
    /// `codes/<format>/<year>.yaml`); a source names one by `kind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formats: Option<PathBuf>,
    /// The longest line and field read from any extract (defaults: 1 MiB
    /// and 64 KiB): a longer field quarantines its row, a longer line stops
    /// the file.
    #[serde(default)]
    pub limits: crate::source::InputLimits,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayEndpoint {
    /// `host:port` of the gateway.
    pub address: String,
    /// Name the gateway's certificate must carry (defaults to the host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Compress batches with gzip on the wire (about half the bytes, for
    /// more agent CPU); worth it on a slow link.
    #[serde(default)]
    pub compress: bool,
}

impl GatewayEndpoint {
    /// The name the gateway's certificate must carry.
    pub fn server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or_else(|| {
            self.address
                .rsplit_once(':')
                .map_or(self.address.as_str(), |(host, _)| host)
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// The deployment CA certificate.
    pub ca: PathBuf,
    /// This agency's certificate, issued by `joinery pki issue --org CODE`.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

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

fn default_quarantine_dir() -> PathBuf {
    PathBuf::from("quarantine")
}
fn default_spool_dir() -> PathBuf {
    PathBuf::from("spool")
}
fn default_spool_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_retry_for_secs() -> u64 {
    300
}
fn default_batch_size() -> usize {
    1000
}
fn default_max_in_flight() -> usize {
    4
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read agent configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent configuration {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl AgentConfig {
    /// Reads and checks `path`, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut config: Self = serde_saphyr::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        joinery_crypto::identity::validate_organisation_code(&config.organisation)
            .map_err(|e| invalid(format!("organisation: {e}")))?;
        if config.batch_size == 0 || config.max_in_flight == 0 {
            return Err(invalid(
                "batch_size and max_in_flight must be 1 or more".to_owned(),
            ));
        }
        if config.sources.is_empty() {
            return Err(invalid("sources: list at least one extract".to_owned()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        let formats = config.formats().map_err(|e| invalid(e.to_string()))?;
        for (i, source) in config.sources.iter().enumerate() {
            if let SourceConfig::National(national) = source {
                formats
                    .get(&national.format)
                    .map_err(|e| invalid(format!("sources[{i}].kind: {e}")))?;
            }
        }
        Ok(config)
    }

    /// The national formats this agent can read: the built-in ones and
    /// those in `formats`.
    pub fn formats(&self) -> Result<Registry, RegistryError> {
        Registry::load(self.formats.as_deref())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.tls.ca);
        resolve(&mut self.tls.cert);
        resolve(&mut self.tls.key);
        resolve(&mut self.linkage_key);
        resolve(&mut self.agreement);
        if let Some(list) = &mut self.national_data_opt_out {
            resolve(list);
        }
        resolve(&mut self.quarantine_dir);
        resolve(&mut self.spool_dir);
        if let Some(formats) = &mut self.formats {
            resolve(formats);
        }
        for source in &mut self.sources {
            match source {
                SourceConfig::Csv(file) => {
                    resolve(&mut file.path);
                    resolve(&mut file.mapping);
                }
                SourceConfig::Sql(table) => resolve(&mut table.mapping),
                SourceConfig::National(format) => {
                    resolve(&mut format.path);
                    if let Some(lists) = &mut format.code_lists {
                        resolve(lists);
                    }
                }
            }
        }
    }

    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.tls.ca.clone(),
            cert: self.tls.cert.clone(),
            key: self.tls.key.clone(),
            crl: None,
        }
    }

    /// The name the gateway's certificate must carry.
    pub fn server_name(&self) -> &str {
        self.gateway.server_name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_and_resolves_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(
            &path,
            "organisation: RGD\nagreement: dsa.yaml\n\
             gateway: { address: 'gw.example:7443' }\n\
             tls: { ca: pki/ca.pem, cert: pki/RGD.pem, key: pki/RGD.key }\n\
             linkage_key: linkage.key\n\
             sources:\n  - kind: csv\n    path: data.csv\n    mapping: map.yaml\n",
        )
        .unwrap();
        let config = AgentConfig::load(&path).unwrap();
        assert_eq!(config.tls.ca, dir.path().join("pki/ca.pem"));
        assert_eq!(config.agreement, dir.path().join("dsa.yaml"));
        assert_eq!(config.server_name(), "gw.example");
        assert_eq!(config.batch_size, 1000);
        let SourceConfig::Csv(file) = &config.sources[0] else {
            panic!("a csv source")
        };
        assert_eq!(file.path, dir.path().join("data.csv"));
    }

    #[test]
    fn the_shipped_examples_load() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let config = AgentConfig::load(&examples.join("agent.yaml")).unwrap();
        assert_eq!(config.organisation, "E08000035");
        let SourceConfig::Csv(file) = &config.sources[0] else {
            panic!("a csv source")
        };
        let mapping = crate::mapping::Mapping::load(&file.mapping).unwrap();
        assert_eq!(mapping.dataset, "csc_referrals");
    }

    #[test]
    fn unknown_keys_and_bad_codes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, "organisation: RGD\nsurprise: 1\n").unwrap();
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("surprise"), "{err}");
        std::fs::write(
            &path,
            "organisation: rgd\nagreement: a.yaml\ngateway: { address: 'h:1' }\n\
             tls: { ca: a, cert: b, key: c }\nlinkage_key: k\nsources: [ { kind: csv, path: a, mapping: b } ]\n",
        )
        .unwrap();
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("organisation"), "{err}");
    }

    /// A source's keys are checked against its kind, and a kind must name
    /// csv, sql or a format the agent knows: each refusal names the source
    /// and what is wrong.
    #[test]
    fn a_source_is_checked_against_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        let head = "organisation: RGD\nagreement: a.yaml\ngateway: { address: 'h:1' }\n\
                    tls: { ca: a, cert: b, key: c }\nlinkage_key: k\nsources:\n";
        for (source, expected) in [
            ("{ kind: csv, path: a }", "a csv source needs mapping"),
            (
                "{ kind: csv, path: a, mapping: b, year: 2025 }",
                "year does not apply to a csv source",
            ),
            (
                "{ kind: ssda903, path: a, mapping: b }",
                "mapping does not apply to a ssda903 source",
            ),
            (
                "{ kind: ssda903, path: a, year: 2025 }",
                "a ssda903 source needs dataset",
            ),
            (
                "{ kind: sql, url: 'sqlite:///x', table: t, query: q, mapping: m, watermark: w, key: k }",
                "either table or query",
            ),
            (
                "{ kind: sen9, path: a, dataset: d }",
                "sources[0].kind: no national format \"sen9\"",
            ),
            ("{ kind: SSDA903, path: a, dataset: d }", "a-z, 0-9, _"),
        ] {
            std::fs::write(&path, format!("{head}  - {source}\n")).unwrap();
            let err = AgentConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(expected), "{source}: {err}");
            assert!(err.contains("agent.yaml"), "{source}: {err}");
        }
        std::fs::write(
            &path,
            format!("{head}  - {{ kind: ssda903, path: lac, dataset: lac, year: 2025 }}\n"),
        )
        .unwrap();
        let config = AgentConfig::load(&path).unwrap();
        let SourceConfig::National(format) = &config.sources[0] else {
            panic!("a national format")
        };
        assert_eq!(
            (format.format.as_str(), format.path.clone()),
            ("ssda903", dir.path().join("lac"))
        );
    }
}
