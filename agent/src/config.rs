//! The agent's configuration file (`agent.yaml`), loaded once. Relative paths
//! are resolved against the directory holding the file.

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
    /// The National Data Opt-out list: a file of NHS numbers, one per line.
    /// Required when the agreement says the opt-out applies.
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
    },
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
                SourceConfig::Csv { path, mapping } => {
                    resolve(path);
                    resolve(mapping);
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
        let SourceConfig::Csv { path: data, .. } = &config.sources[0];
        assert_eq!(data, &dir.path().join("data.csv"));
    }

    #[test]
    fn the_shipped_examples_load() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let config = AgentConfig::load(&examples.join("agent.yaml")).unwrap();
        assert_eq!(config.organisation, "E08000035");
        let SourceConfig::Csv { mapping, .. } = &config.sources[0];
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
