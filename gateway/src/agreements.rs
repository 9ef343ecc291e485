//! The signed agreements the gateway enforces, from the agreements
//! directory (`*.yaml`, each with its `.sig`). At start-up a file that is
//! invalid or not fully signed stops the gateway: it never runs on an
//! agreement it cannot trust. While serving, [`LiveAgreements`] loads the
//! directory again when a file changes (a new version signed and dropped
//! in needs no restart); a set that does not load whole is refused and the
//! one in force kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use joinery_policies::model::Access;
use joinery_policies::{AgreementRef, PolicyError, SignedAgreement};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum AgreementsError {
    #[error("cannot read the agreements directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{first} and {second} both hold agreement {id} version {version}")]
    Duplicate {
        id: String,
        version: u32,
        first: PathBuf,
        second: PathBuf,
    },
}

/// A role an analyst holds under an agreement in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The agreement's id: the project row-level pseudonyms belong to.
    pub agreement: String,
    pub role: String,
    pub access: Access,
}

/// Agreements by (id, version).
#[derive(Debug, Clone, Default)]
pub struct Agreements {
    by_version: HashMap<AgreementRef, Arc<SignedAgreement>>,
}

/// The agreements in force now, replaced whole when the directory changes
/// ([`LiveAgreements::reload`]). Each use takes the current set once
/// ([`LiveAgreements::current`]), so one request sees one set.
#[derive(Debug, Clone)]
pub struct LiveAgreements {
    /// Where they are reloaded from (none: fixed).
    dir: Option<PathBuf>,
    current: Arc<RwLock<Arc<Agreements>>>,
    /// The directory's files and modification times when last loaded.
    stamps: Arc<Mutex<Stamps>>,
}

impl LiveAgreements {
    /// The agreements `loaded` from `dir`, to be reloaded from it.
    pub fn new(dir: &Path, loaded: Agreements) -> Self {
        Self {
            dir: Some(dir.to_owned()),
            current: Arc::new(RwLock::new(Arc::new(loaded))),
            stamps: Arc::new(Mutex::new(stamps(dir))),
        }
    }

    /// Fixed agreements, never reloaded (tests and benchmarks).
    pub fn fixed(agreements: Agreements) -> Self {
        Self {
            dir: None,
            current: Arc::new(RwLock::new(Arc::new(agreements))),
            stamps: Arc::default(),
        }
    }

    pub fn current(&self) -> Arc<Agreements> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Loads the directory again if a file in it changed, appeared or went,
    /// and puts the new set in force. Returns the agreements (id, version)
    /// the new set adds, for the audit log; an error (the set in force is
    /// kept) when the new one does not load whole. Each change is tried
    /// once.
    pub fn reload(&self) -> Result<Vec<Arc<SignedAgreement>>, AgreementsError> {
        let Some(dir) = &self.dir else {
            return Ok(Vec::new());
        };
        let now = stamps(dir);
        {
            let mut seen = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(Vec::new());
            }
            *seen = now;
        }
        let loaded = Agreements::load_dir(dir)?;
        let before = self.current();
        let added: Vec<Arc<SignedAgreement>> = loaded
            .iter()
            .filter(|a| {
                before
                    .get(&a.agreement.reference())
                    .is_none_or(|b| b.digest != a.digest)
            })
            .cloned()
            .collect();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(added)
    }
}

/// Whether `path` names an agreement file (`*.yaml`, `*.yml`).
fn is_agreement(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

/// Agreement files and when each last changed.
type Stamps = Vec<(PathBuf, Option<SystemTime>)>;

/// The agreement files in `dir` (and their signatures) and when each last
/// changed.
fn stamps(dir: &Path) -> Stamps {
    let mut stamps: Stamps = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_agreement(p) || p.extension().is_some_and(|e| e == "sig"))
        .map(|p| {
            let modified = crate::tls_reload::modified(&p);
            (p, modified)
        })
        .collect();
    stamps.sort();
    stamps
}

impl Agreements {
    /// Loads every `*.yaml` in `dir` (a missing directory holds none).
    pub fn load_dir(dir: &Path) -> Result<Self, AgreementsError> {
        let mut agreements = Self::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(agreements),
            Err(source) => {
                return Err(AgreementsError::Directory {
                    path: dir.to_owned(),
                    source,
                });
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| is_agreement(p))
            .collect();
        paths.sort();
        for path in paths {
            let signed = SignedAgreement::load(&path)?;
            let key = signed.agreement.reference();
            if let Some(first) = agreements.by_version.get(&key) {
                return Err(AgreementsError::Duplicate {
                    id: key.id,
                    version: key.version,
                    first: first.path.clone(),
                    second: path,
                });
            }
            tracing::info!(agreement = %key.id, version = key.version, digest = %signed.digest, "agreement loaded");
            crate::metrics::agreement_expiry(
                &key.id,
                key.version,
                signed.agreement.expires.end().unix_timestamp(),
            );
            agreements.by_version.insert(key, Arc::new(signed));
        }
        Ok(agreements)
    }

    pub fn get(&self, agreement: &AgreementRef) -> Option<&Arc<SignedAgreement>> {
        self.by_version.get(agreement)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<SignedAgreement>> {
        self.by_version.values()
    }

    /// The distinct fuzzy-linkage parameters of the loaded agreements.
    pub fn linkage_params(&self) -> Vec<joinery_linkage::LinkageParams> {
        let mut all: Vec<joinery_linkage::LinkageParams> = Vec::new();
        for params in self.iter().filter_map(|a| a.agreement.linkage.params()) {
            if !all.contains(&params) {
                all.push(params);
            }
        }
        all
    }

    /// The roles `analyst` holds under the agreements in force at `at`,
    /// by agreement id.
    pub fn grants(&self, analyst: &str, at: OffsetDateTime) -> Vec<Grant> {
        let mut grants: Vec<Grant> = self
            .iter()
            .filter(|a| a.in_force_at(at).is_ok())
            .flat_map(|a| {
                a.agreement
                    .roles
                    .iter()
                    .filter(|(_, role)| role.analysts.iter().any(|name| name == analyst))
                    .map(|(name, role)| Grant {
                        agreement: a.agreement.id.clone(),
                        role: name.clone(),
                        access: role.access,
                    })
            })
            .collect();
        grants.sort_by(|a, b| (&a.agreement, &a.role).cmp(&(&b.agreement, &b.role)));
        grants.dedup();
        grants
    }

    /// Agreements already checked and verified by the caller (benchmarks
    /// and tests that need no files).
    pub fn from_verified(agreements: Vec<SignedAgreement>) -> Self {
        Self {
            by_version: agreements
                .into_iter()
                .map(|a| (a.agreement.reference(), Arc::new(a)))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_version.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_version.is_empty()
    }
}
