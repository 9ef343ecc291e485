//! A keyholder: an independent party through whom agencies make NHS-number
//! pseudonyms without anyone seeing an NHS number (`joinery keyholder serve`).
//!
//! An agreement that lists keyholders (`linkage.nhs_number_keyholders`) has
//! its agents blind every NHS number and ask each keyholder to evaluate it
//! under the keyholder's key for that agreement
//! ([`joinery_crypto::oblivious`]), with one proof per request that its
//! key for the agreement made every answer, which the agents check against
//! the public key they pinned ([`public_key`], `joinery keyholder
//! public-key`); the agents then combine the unblinded outputs into the
//! pseudonym they send. The keyholder sees only random group elements. No
//! agency holds a key that computes a pseudonym, so the gateway's operator
//! with an agency's help cannot reverse the stored ones by trying every NHS
//! number offline: every guess would have to be evaluated by every
//! keyholder, and each keyholder answers an agency at most its daily
//! allowance ([`allowance`]), about what an honest agency's
//! extract needs, and writes every answer to its ledger.
//!
//! It runs on the gateway's listener ([`crate::listener`]): TLS 1.3, client
//! certificates required, the same overload manager; it admits an
//! organisation for an agreement in force that names this keyholder and
//! lets the organisation send data, and refuses everyone else (analysts,
//! other organisations, other agreements).

pub mod allowance;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use joinery_crypto::keys::SecretKey;
use joinery_crypto::oblivious::{KeyholderKey, PublicKey};
use joinery_crypto::tls::TlsFiles;
use joinery_proto::v1::keyholder_server::{Keyholder, KeyholderServer};
use joinery_proto::v1::{EvaluateRequest, EvaluateResponse};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::agreements::{Agreements, AgreementsError, LiveAgreements};
use crate::config::Limits;
use crate::listener;
use crate::tls_reload::TlsReloader;
use allowance::{Allowance, AllowanceError};

/// Elements one request may carry.
pub const MAX_ELEMENTS_PER_REQUEST: usize = 10_000;

/// The default daily allowance: an agency's whole extract of a large region
/// in a day, and about 500 days to try every NHS number.
pub const DEFAULT_DAILY_ALLOWANCE: u64 = 2_000_000;

/// How often the agreements directory is checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// A keyholder's configuration, built once.
#[derive(Debug, Clone)]
pub struct KeyholderConfig {
    pub listen: SocketAddr,
    /// Holds `keyholder.key` (made by [`init`]) and `ledger.jsonl`.
    pub data_dir: PathBuf,
    /// The signed agreements (as the gateway's).
    pub agreements_dir: PathBuf,
    /// This keyholder's name as agreements list it (its certificate's name).
    pub name: String,
    pub tls: TlsFiles,
    /// Elements one organisation may have evaluated under one agreement in
    /// any 24 hours.
    pub daily_allowance: u64,
    pub limits: Limits,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyholderError {
    #[error("cannot create the keyholder's data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no keyholder key at {path}: restore it from its backup, or for a new keyholder run `joinery keyholder init --data-dir DIR` (a new key changes every NHS pseudonym made through this keyholder: docs/key-rotation.md)",
        path = path.display()
    )]
    NoKey { path: PathBuf },
    #[error(transparent)]
    Key(#[from] joinery_crypto::keys::KeyError),
    #[error(transparent)]
    Agreements(#[from] AgreementsError),
    #[error(transparent)]
    Allowance(#[from] AllowanceError),
    #[error(transparent)]
    Tls(#[from] joinery_crypto::tls::TlsError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Oblivious(#[from] joinery_crypto::oblivious::ObliviousError),
}

/// Where a keyholder keeps its key in its data directory.
pub fn key_file(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("keyholder.key")
}

/// Makes a new keyholder's key in `data_dir` (never over an existing one).
pub fn init(data_dir: &std::path::Path) -> Result<PathBuf, KeyholderError> {
    std::fs::create_dir_all(data_dir).map_err(|source| KeyholderError::DataDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let path = key_file(data_dir);
    SecretKey::generate()?.save(&path)?;
    Ok(path)
}

/// The keyholder's root key in `data_dir`; never made here (see [`init`]).
fn root_key(data_dir: &std::path::Path) -> Result<SecretKey, KeyholderError> {
    let path = key_file(data_dir);
    if !path.exists() {
        return Err(KeyholderError::NoKey { path });
    }
    Ok(SecretKey::load(&path)?)
}

/// The public key agencies pin for `agreement` (the agreement's id), from
/// the keyholder's key in `data_dir`.
pub fn public_key(
    data_dir: &std::path::Path,
    agreement: &str,
) -> Result<PublicKey, KeyholderError> {
    let key = KeyholderKey::derive(&root_key(data_dir)?, agreement)?;
    Ok(key.public_key())
}

/// A bound keyholder, ready to serve.
pub struct KeyholderServerHandle {
    listener: TcpListener,
    tls: Arc<TlsReloader>,
    service: Arc<KeyholderService>,
    agreements: LiveAgreements,
    limits: Limits,
}

impl KeyholderServerHandle {
    /// Loads the key, opens the ledger, loads the agreements and TLS
    /// material and binds the listener.
    pub async fn bind(config: KeyholderConfig) -> Result<Self, KeyholderError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| KeyholderError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let root = root_key(&config.data_dir)?;
        let agreements = LiveAgreements::new(
            &config.agreements_dir,
            Agreements::load_dir(&config.agreements_dir)?,
        );
        let named = agreements
            .current()
            .iter()
            .filter(|a| {
                a.agreement
                    .linkage
                    .nhs_number_keyholders
                    .contains(&config.name)
            })
            .count();
        if named == 0 {
            tracing::warn!(keyholder = %config.name, "no loaded agreement names this keyholder: every request will be refused");
        }
        let allowance = Allowance::open(
            &config.data_dir.join("ledger.jsonl"),
            config.daily_allowance,
            OffsetDateTime::now_utc().unix_timestamp(),
        )?;
        let tls = Arc::new(TlsReloader::new(config.tls.clone())?);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| KeyholderError::Bind {
                    address: config.listen,
                    source,
                })?;
        Ok(Self {
            listener,
            tls,
            service: Arc::new(KeyholderService {
                name: config.name,
                root,
                agreements: agreements.clone(),
                allowance,
                keys: Mutex::default(),
            }),
            agreements,
            limits: config.limits,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), KeyholderError> {
        let agreements = self.agreements.clone();
        let reload = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                match agreements.reload() {
                    Ok(changed) => {
                        for signed in changed {
                            tracing::info!(agreement = %signed.agreement.id, version = signed.agreement.version, "agreement loaded");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "agreements not reloaded: the ones loaded before stay in force")
                    }
                }
            }
        });
        let admission = listener::Admission::new(self.limits);
        let incoming = listener::incoming(self.listener, self.tls, admission);
        tracing::info!(keyholder = %self.service.name, "keyholder serving");
        let served = Server::builder()
            .tcp_nodelay(true)
            .add_service(
                KeyholderServer::from_arc(self.service)
                    .max_decoding_message_size(self.limits.max_message_bytes),
            )
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        reload.abort();
        served?;
        tracing::info!("keyholder stopped");
        Ok(())
    }
}

/// The `joinery.v1.Keyholder` service.
pub struct KeyholderService {
    name: String,
    root: SecretKey,
    agreements: LiveAgreements,
    allowance: Allowance,
    /// Each agreement's derived key, made once.
    keys: Mutex<HashMap<String, Arc<KeyholderKey>>>,
}

impl KeyholderService {
    /// Whether an agreement in force by `agreement`'s id names this
    /// keyholder and lets `organisation` send data.
    fn admits(&self, organisation: &str, agreement: &str) -> bool {
        let now = OffsetDateTime::now_utc();
        self.agreements.current().iter().any(|signed| {
            let a = &signed.agreement;
            a.id == agreement
                && signed.in_force_at(now).is_ok()
                && a.linkage.nhs_number_keyholders.contains(&self.name)
                && a.parties
                    .iter()
                    .any(|p| p.organisation == organisation && !p.sends.is_empty())
        })
    }

    fn key(&self, agreement: &str) -> Result<Arc<KeyholderKey>, Status> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(key) = keys.get(agreement) {
            return Ok(Arc::clone(key));
        }
        let key = Arc::new(
            KeyholderKey::derive(&self.root, agreement)
                .map_err(|e| Status::internal(e.to_string()))?,
        );
        keys.insert(agreement.to_owned(), Arc::clone(&key));
        Ok(key)
    }
}

#[tonic::async_trait]
impl Keyholder for KeyholderService {
    async fn evaluate(
        &self,
        request: Request<EvaluateRequest>,
    ) -> Result<Response<EvaluateResponse>, Status> {
        let organisation = crate::peer::organisation(&request)?;
        let EvaluateRequest { agreement, blinded } = request.into_inner();
        if blinded.len() > MAX_ELEMENTS_PER_REQUEST {
            return Err(Status::invalid_argument(format!(
                "{} elements in one request: at most {MAX_ELEMENTS_PER_REQUEST}",
                blinded.len()
            )));
        }
        let counted = |outcome: &'static str| {
            metrics::counter!(crate::metrics::KEYHOLDER_ELEMENTS, "outcome" => outcome)
                .increment(blinded.len() as u64);
        };
        if !self.admits(&organisation, &agreement) {
            counted("not_admitted");
            tracing::warn!(%organisation, agreement = %agreement, "evaluation refused: no agreement admits it");
            return Err(Status::permission_denied(format!(
                "no agreement in force with id {agreement:?} names keyholder {} and lets {organisation} send data",
                self.name
            )));
        }
        let used = self
            .allowance
            .charge(
                &organisation,
                &agreement,
                blinded.len() as u64,
                OffsetDateTime::now_utc().unix_timestamp(),
            )
            .map_err(|e| {
                counted("over_allowance");
                tracing::warn!(%organisation, agreement = %agreement, elements = blinded.len(), "evaluation refused: {e}");
                match e {
                    AllowanceError::Spent { .. } => Status::resource_exhausted(e.to_string()),
                    other => Status::internal(other.to_string()),
                }
            })?;
        let key = self.key(&agreement)?;
        let count = blinded.len() as u64;
        let evaluated = tokio::task::spawn_blocking(move || key.evaluate(&blinded))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let outcome = if evaluated.is_ok() {
            "evaluated"
        } else {
            "malformed"
        };
        metrics::counter!(crate::metrics::KEYHOLDER_ELEMENTS, "outcome" => outcome)
            .increment(count);
        let evaluated = evaluated.map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(%organisation, agreement = %agreement, elements = count, used_today = used, "evaluated");
        Ok(Response::new(EvaluateResponse {
            evaluated: evaluated.elements,
            proof: evaluated.proof,
        }))
    }
}
