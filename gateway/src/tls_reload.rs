//! The gateway's TLS configuration, reloaded without a restart: when the CA,
//! certificate, key or revocation list files change on disk, the next
//! connection is served with the new ones (checked at most once a second).
//! A change that does not load — a half-written file, a key that does not
//! match — is logged and the running configuration is kept. Each load
//! publishes when the files expire (metrics).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use joinery_crypto::tls::{TlsError, TlsFiles};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

const CHECK_EVERY: Duration = Duration::from_secs(1);

pub struct TlsReloader {
    files: TlsFiles,
    state: Mutex<State>,
}

struct State {
    acceptor: TlsAcceptor,
    stamps: Vec<Option<SystemTime>>,
    checked: Instant,
}

/// When the file at `path` last changed, if it is there.
pub(crate) fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl TlsReloader {
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let acceptor = acceptor(&files)?;
        let stamps = stamps(&files);
        Ok(Self {
            files,
            state: Mutex::new(State {
                acceptor,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The acceptor for a new connection, with the files as they are now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() >= CHECK_EVERY {
            state.checked = Instant::now();
            let now = stamps(&self.files);
            if now != state.stamps {
                state.stamps = now;
                match acceptor(&self.files) {
                    Ok(acceptor) => {
                        state.acceptor = acceptor;
                        tracing::info!("TLS certificates reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "TLS files changed but do not load; keeping the previous ones")
                    }
                }
            }
        }
        state.acceptor.clone()
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [
        Some(&files.ca),
        Some(&files.cert),
        Some(&files.key),
        files.crl.as_ref(),
    ]
    .into_iter()
    .map(|p| p.and_then(|p| modified(p)))
    .collect()
}

/// An acceptor for `files`, publishing when they expire.
fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let config: ServerConfig = joinery_crypto::tls::server_config(files)?;
    let expiry = joinery_crypto::tls::expiry(files)?;
    crate::metrics::tls_expiry(expiry.certificate, expiry.ca, expiry.crl_next_update);
    Ok(TlsAcceptor::from(Arc::new(config)))
}
