//! The agent's configuration file (`agent.yaml`), loaded once. Relative paths
//! are resolved against the directory holding the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use joinery_crypto::tls::TlsFiles;
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

/// One extract.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A delimited text file read through a mapping file.
    Csv {
        /// The extract.
        path: PathBuf,
        /// Its mapping file (see deploy/examples/mapping.yaml).
        mapping: PathBuf,
        /// The extract is a full snapshot of the dataset: once all of it is
        /// delivered, the agency's records from earlier snapshots are
        /// retired at the gateway. Otherwise each run adds to what is held.
        #[serde(default)]
        snapshot: bool,
    },
    /// The SSDA903 looked-after children return as CSV tables (header.csv,
    /// episodes.csv, reviews.csv, uasc.csv, oc2.csv, oc3.csv, ad1.csv,
    /// placed_for_adoption.csv, prev_perm.csv, missing.csv) in
    /// `path`, a directory. Needs `year`.
    Ssda903(NationalFormat),
    /// The DfE Children in Need census XML file at `path`. Needs `year`.
    CinCensus(NationalFormat),
    /// Ofsted Annex A lists 1-10 as CSV files (list_1.csv ... list_10.csv)
    /// in `path`, a directory.
    AnnexA(NationalFormat),
    /// MHSDS-style tables (MHS001MPI.csv, MHS101Referral.csv,
    /// MHS102ServiceTypeReferredTo.csv, MHS201CareContact.csv) in `path`.
    Mhsds(NationalFormat),
    /// CSDS-style tables (CYP001MPI.csv, CYP101Referral.csv,
    /// CYP102ServiceTypeReferredTo.csv, CYP201CareContact.csv) in `path`.
    Csds(NationalFormat),
    /// A FHIR R4 bulk export (Patient.ndjson, Encounter.ndjson,
    /// EpisodeOfCare.ndjson, ServiceRequest.ndjson) in `path`.
    Fhir(NationalFormat),
    /// A table or query in PostgreSQL or SQLite, read through a mapping file
    /// (its columns are the result's). Each run sends only the rows whose
    /// watermark has moved past the last row sent.
    Sql(SqlTable),
}

/// A database table read incrementally.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlTable {
    /// `postgres://user@host/db` or `sqlite:///path/to/file.db`. A password
    /// is better left out and given as PGPASSWORD in the agent's environment;
    /// the URL is never logged.
    pub url: String,
    /// The table (or view) to read, `name` or `schema.name` …
    #[serde(default)]
    pub table: Option<String>,
    /// … or a SELECT whose columns the mapping names (cast dates and other
    /// types to text in it: `dob::text AS dob`).
    #[serde(default)]
    pub query: Option<String>,
    /// The mapping file.
    pub mapping: PathBuf,
    /// A column that grows when a row is added or changed (a last-modified
    /// timestamp as ISO text, or a sequence): a run sends the rows past the
    /// last one sent.
    pub watermark: String,
    /// A column unique per row (the primary key), ordering rows that share
    /// a watermark value.
    pub key: String,
}

/// A national format's files. Their layout and validation come with the
/// agent (`agent/formats/`); code lists per collection year are data files.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NationalFormat {
    /// The directory holding the tables (the file, for the CIN census).
    pub path: PathBuf,
    /// Dataset name at the gateway, as the agreement lists it.
    pub dataset: String,
    /// Collection year, by the year it ends: 2025 for 2024-25. Dates after
    /// 31 March of it are refused (the file is for another year), and the
    /// code lists of that year apply.
    #[serde(default)]
    pub year: Option<i32>,
    /// A code-list file to use instead of the built-in one for the year
    /// (when a new year's lists are published before the agent is updated).
    #[serde(default)]
    pub code_lists: Option<PathBuf>,
    /// File names that differ from the standard ones, by table name
    /// (e.g. `Episodes: episodes_2025.csv`).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// The tables are a full snapshot of the dataset: once all of them are
    /// delivered, the agency's records from earlier snapshots are retired
    /// at the gateway. Otherwise each run adds to what is held.
    #[serde(default)]
    pub snapshot: bool,
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
    /// The format's name, as in `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Csv { .. } => "csv",
            Self::Ssda903(_) => "ssda903",
            Self::CinCensus(_) => "cin_census",
            Self::AnnexA(_) => "annex_a",
            Self::Mhsds(_) => "mhsds",
            Self::Csds(_) => "csds",
            Self::Fhir(_) => "fhir",
            Self::Sql(_) => "sql",
        }
    }

    /// The national format's settings, for every kind but `csv`.
    /// Whether the source is declared a full snapshot of its dataset.
    pub fn snapshot(&self) -> bool {
        match self {
            Self::Csv { snapshot, .. } => *snapshot,
            Self::Sql(_) => false,
            _ => self.national().is_some_and(|f| f.snapshot),
        }
    }

    pub fn national(&self) -> Option<&NationalFormat> {
        match self {
            Self::Csv { .. } | Self::Sql(_) => None,
            Self::Ssda903(f)
            | Self::CinCensus(f)
            | Self::AnnexA(f)
            | Self::Mhsds(f)
            | Self::Csds(f)
            | Self::Fhir(f) => Some(f),
        }
    }

    fn national_mut(&mut self) -> Option<&mut NationalFormat> {
        match self {
            Self::Csv { .. } | Self::Sql(_) => None,
            Self::Ssda903(f)
            | Self::CinCensus(f)
            | Self::AnnexA(f)
            | Self::Mhsds(f)
            | Self::Csds(f)
            | Self::Fhir(f) => Some(f),
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
        for source in &config.sources {
            if let SourceConfig::Sql(table) = source {
                table
                    .check()
                    .map_err(|e| invalid(format!("sources: {e}")))?;
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
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
        for source in &mut self.sources {
            match source {
                SourceConfig::Csv { path, mapping, .. } => {
                    resolve(path);
                    resolve(mapping);
                }
                SourceConfig::Sql(table) => resolve(&mut table.mapping),
                _ => {}
            }
            if let Some(format) = source.national_mut() {
                resolve(&mut format.path);
                if let Some(lists) = &mut format.code_lists {
                    resolve(lists);
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
        let SourceConfig::Csv { path: data, .. } = &config.sources[0] else {
            panic!("a csv source")
        };
        assert_eq!(data, &dir.path().join("data.csv"));
    }

    #[test]
    fn the_shipped_examples_load() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let config = AgentConfig::load(&examples.join("agent.yaml")).unwrap();
        assert_eq!(config.organisation, "E08000035");
        let SourceConfig::Csv { mapping, .. } = &config.sources[0] else {
            panic!("a csv source")
        };
        let mapping = crate::mapping::Mapping::load(mapping).unwrap();
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
}
