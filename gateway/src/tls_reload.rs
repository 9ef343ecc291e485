//! The gateway's TLS configuration, reloaded without a restart: when the CA,
//! certificate, key or revocation list files change on disk, the next
//! connection is served with the new ones (checked at most once a second).
//! A change that does not load — a half-written file, a key that does not
//! match — is logged and the running configuration is kept. Each load
//! publishes when the files expire (metrics). The same holds for what a
//! gateway makes of its certificate as a client ([`Reloaded`]): the
//! connections a gateway answering from shards opens to them.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use joinery_crypto::tls::{TlsError, TlsFiles};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How a [`Reloaded`] makes what it holds from the files.
type Make<T> = Box<dyn Fn(&TlsFiles) -> Result<T, TlsError> + Send + Sync>;

/// What is made of a set of TLS files, made again when they change.
pub struct Reloaded<T> {
    files: TlsFiles,
    make: Make<T>,
    state: Mutex<State<T>>,
}

struct State<T> {
    made: T,
    stamps: Vec<Option<SystemTime>>,
    checked: Instant,
}

/// The listener's acceptor, with the gateway's certificate as a server.
pub type TlsReloader = Reloaded<TlsAcceptor>;

/// When the file at `path` last changed, if it is there.
pub(crate) fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl TlsReloader {
    /// The acceptor of a gateway (or keyholder) serving with `files`.
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        Reloaded::with(files, acceptor)
    }
}

impl<T: Clone> Reloaded<T> {
    /// `make` applied to `files` now, and again whenever they change.
    pub fn with(
        files: TlsFiles,
        make: impl Fn(&TlsFiles) -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let made = make(&files)?;
        let stamps = stamps(&files);
        Ok(Self {
            files,
            make: Box::new(make),
            state: Mutex::new(State {
                made,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// What the files make as they are now (for a new connection).
    pub fn current(&self) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() >= CHECK_EVERY {
            state.checked = Instant::now();
            let now = stamps(&self.files);
            if now != state.stamps {
                state.stamps = now;
                match (self.make)(&self.files) {
                    Ok(made) => {
                        state.made = made;
                        tracing::info!("TLS certificates reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "TLS files changed but do not load; keeping the previous ones")
                    }
                }
            }
        }
        state.made.clone()
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
