//! Data-sharing agreements as signed, machine-checked policy.
//!
//! An information-governance lead writes an agreement in YAML ([`model`]);
//! [`check`] reports every problem at its line and column (found by
//! [`locate`] for rules checked after parsing); [`signing`] signs
//! and verifies it with Ed25519; [`explain`] renders it for a board paper and
//! [`diff`] shows what a new version changes. [`transform`] defines what each
//! field transform means on the wire, for the agent that applies it and the
//! gateway that checks it ([`enforce`]). [`SignedAgreement`] is what both ends load: an
//! agreement that parses, passes every rule and carries every signature.
//!
//! Invariants: what an agreement does not list is denied (a field not
//! listed is never sent, a role not listed may not query); an agreement's
//! digest covers every byte its signatures sign, so any edit needs signing
//! again; a problem is reported at its line and column.

#![forbid(unsafe_code)]

pub mod check;
pub mod diff;
pub mod enforce;
pub mod explain;
pub mod locate;
pub mod model;
pub mod signing;
pub mod transform;

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

pub use model::{Agreement, AgreementRef};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid agreement:\n{report}")]
    Invalid { path: PathBuf, report: String },
    #[error("{path}: signature file is not valid: {message}")]
    Signatures { path: PathBuf, message: String },
    #[error("agreement {path} is not in force: missing or invalid signatures of {missing}")]
    Unsigned { path: PathBuf, missing: String },
    #[error("agreement {id} version {version} is not in force at {at}: {why}")]
    NotInForce {
        id: String,
        version: u32,
        at: String,
        why: String,
    },
    #[error("{key} is not the key of any signatory of this agreement")]
    NotASignatory { key: PathBuf },
    #[error(transparent)]
    Key(#[from] joinery_crypto::signing::SigningError),
    #[error("cannot write signatures: {0}")]
    Serialize(String),
}

/// A valid agreement with every signature it requires.
#[derive(Debug, Clone)]
pub struct SignedAgreement {
    pub agreement: Agreement,
    /// SHA-256 of the file's bytes, lowercase hex: what agents name in Hello.
    pub digest: String,
    pub path: PathBuf,
}

impl SignedAgreement {
    /// Reads `path` and `path.sig`; fails unless the agreement passes every
    /// rule and every signatory has validly signed these exact bytes.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let bytes = std::fs::read(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let checked = check::check(&text, OffsetDateTime::now_utc());
        let agreement = match checked.agreement {
            Some(agreement) if checked.errors().next().is_none() => agreement,
            _ => {
                let report = checked
                    .errors()
                    .map(|d| format!("{}:{d}", path.display()))
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(PolicyError::Invalid {
                    path: path.to_owned(),
                    report,
                });
            }
        };
        let entries = signing::read_signatures(&signing::signature_path(path))?;
        let verification = signing::verify(&agreement, &bytes, &entries);
        if !verification.complete() {
            return Err(PolicyError::Unsigned {
                path: path.to_owned(),
                missing: verification.missing.join(", "),
            });
        }
        Ok(Self {
            agreement,
            digest: signing::digest(&bytes),
            path: path.to_owned(),
        })
    }

    /// Whether the agreement is in force at `at`.
    pub fn in_force_at(&self, at: OffsetDateTime) -> Result<(), PolicyError> {
        let a = &self.agreement;
        let why = if at < a.valid_from.start {
            format!("it comes into force on {}", a.valid_from)
        } else if at > a.expires.end() {
            format!("it expired on {}", a.expires)
        } else {
            return Ok(());
        };
        Err(PolicyError::NotInForce {
            id: a.id.clone(),
            version: a.version,
            at: at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            why,
        })
    }

    /// Whether `organisation` is a party that sends `dataset`.
    pub fn may_send(&self, organisation: &str, dataset: &str) -> bool {
        self.agreement
            .parties
            .iter()
            .any(|p| p.organisation == organisation && p.sends.iter().any(|d| d == dataset))
    }
}

/// The JSON Schema of agreement files, for editors (shipped as
/// `policies/agreement.schema.json`).
pub fn schema() -> String {
    let schema = schemars::schema_for!(Agreement);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
