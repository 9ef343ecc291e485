//! Why an agent run (or a direct-care resolution) stops: one error for the
//! whole pipeline, from reading the configuration to the gateway's refusal.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Key(#[from] joinery_crypto::keys::KeyError),
    #[error(transparent)]
    Tls(#[from] joinery_crypto::tls::TlsError),
    #[error(transparent)]
    Mapping(#[from] crate::mapping::MappingError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Formats(#[from] crate::format::RegistryError),
    #[error(transparent)]
    Connect(#[from] joinery_proto::channel::ConnectError),
    #[error(transparent)]
    Upload(#[from] crate::transport::UploadError),
    #[error(transparent)]
    Checkpoints(#[from] crate::checkpoints::CheckpointError),
    #[error("cannot write the quarantine report {path}: {source}")]
    Quarantine {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the reader thread failed: {0}")]
    Reader(String),
    #[error(transparent)]
    Agreement(#[from] joinery_policies::PolicyError),
    #[error(transparent)]
    OptOut(#[from] crate::opt_out::OptOutError),
    #[error("{0}")]
    NotAllowed(String),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    #[error("the agreement's linkage parameters: {0}")]
    Linkage(#[from] joinery_linkage::params::ParamsError),
    #[error("keyholder {name}: {message}")]
    Keyholder { name: String, message: String },
    #[error(transparent)]
    PseudonymCache(#[from] crate::pseudonym_cache::CacheError),
    #[error("the gateway refused: {0}")]
    Refused(String),
}
