//! The agent's configuration file (`agent.yaml`), loaded once. Relative paths
//! are resolved against the directory holding the file.

use std::path::{Path, PathBuf};

use joinery_crypto::identity::OrganisationCode;
use joinery_crypto::tls::TlsFiles;

use crate::format::Registry;
pub use crate::source::config::{CsvFile, NationalFormat, SourceConfig, SourceEntry, SqlTable};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Everything an agent run needs to know.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This agency's ODS or local-authority code; must match its certificate.
    #[schemars(with = "String")]
    pub organisation: OrganisationCode,
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
    /// Where each keyholder the agreement names under
    /// `linkage.nhs_number_keyholders` is (its certificate carries the name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keyholders: Vec<KeyholderEndpoint>,
    /// File holding the agreement's 256-bit linkage key (hex, mode 0600),
    /// shared by the agencies and never by the gateway.
    pub linkage_key: PathBuf,
    /// File holding this agency's own 256-bit key for its local record ids
    /// (hex, mode 0600; `joinery pki linkage-key --out local-ids.key`),
    /// shared with nobody: local ids link only within the agency, so no
    /// other agency, nor the gateway's operator with one's help, can test
    /// guesses of them. Without it they are pseudonymised under the shared
    /// linkage key, as before this setting (the agent warns); adding it to
    /// an agency already delivering changes every one of its local
    /// pseudonyms, so do it as a key rotation (docs/key-rotation.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_id_key: Option<PathBuf>,
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
    /// The national formats loaded from the built-in ones and `formats`
    /// (by [`AgentConfig::load`], once, and checked against the sources).
    #[serde(skip)]
    #[schemars(skip)]
    pub registry: Registry,
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

/// A keyholder's name (as the agreement lists it and its certificate
/// carries it), address, and public key for the agreement.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyholderEndpoint {
    /// The keyholder's name, as the agreement lists it.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Its public key for this agreement, 64 hex digits, as `joinery
    /// keyholder public-key --agreement ID` prints it (the keyholder's
    /// operator gives it to the agencies). Every answer's proof is checked
    /// against it: a keyholder answering with another key stops the run.
    pub public_key: String,
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
        config.registry =
            Registry::load(config.formats.as_deref()).map_err(|e| invalid(e.to_string()))?;
        for (i, source) in config.sources.iter().enumerate() {
            if let SourceConfig::National(national) = source {
                config
                    .registry
                    .get(&national.format)
                    .map_err(|e| invalid(format!("sources[{i}].kind: {e}")))?;
            }
        }
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
        if let Some(key) = &mut self.local_id_key {
            resolve(key);
        }
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
        assert_eq!(config.organisation.as_str(), "E08000035");
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
