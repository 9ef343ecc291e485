//! What delivery needs of the way to the gateway, and nothing more: open a
//! session, send batches on it and collect their acknowledgements, end it.
//!
//! [`crate::uploader::Grpc`] is the real transport (mutual TLS,
//! `joinery.v1.Ingest/Stream`). [`crate::delivery`]'s tests put an in-memory
//! gateway with scripted failures behind the same traits, so the spool and
//! the retry logic are tested against every failure order without a
//! network, as Vector tests its buffers against a model.

use std::future::Future;
use std::time::Duration;

use joinery_proto::v1::{Ack, AckStatus, Batch};

/// Why a session could not be opened or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Connect(#[from] joinery_proto::channel::ConnectError),
    #[error("the gateway refused the session ({}): {message}", joinery_proto::channel::in_words(*code))]
    Refused { code: tonic::Code, message: String },
    #[error("the gateway ended the session ({}): {message}", joinery_proto::channel::in_words(*code))]
    Ended { code: tonic::Code, message: String },
    #[error("the gateway closed the session with {0} batches unacknowledged")]
    Closed(usize),
    #[error("the gateway sent an unexpected message: {0}")]
    Protocol(&'static str),
}

impl UploadError {
    /// Whether the failure may pass if the session is opened again (the
    /// gateway restarting, the connection cut, the database away), as
    /// opposed to a refusal that will be the same next time.
    pub fn may_pass(&self) -> bool {
        match self {
            Self::Connect(e) => matches!(e, joinery_proto::channel::ConnectError::Transport { .. }),
            Self::Closed(_) | Self::Protocol(_) => true,
            Self::Refused { code, .. } | Self::Ended { code, .. } => matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::Cancelled
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Aborted
            ),
        }
    }
}

/// An acknowledged batch, with the caller's tag for it.
#[derive(Debug, Clone)]
pub struct Acked {
    pub tag: usize,
    pub records: usize,
    pub ack: Ack,
    /// From handing the batch to the connection to receiving its ack.
    pub latency: Duration,
}

impl Acked {
    pub fn status(&self) -> AckStatus {
        AckStatus::try_from(self.ack.status).unwrap_or(AckStatus::Unspecified)
    }
}

/// A way to open sessions with the gateway.
pub trait Transport: Send {
    type Session: Session;

    /// Opens a session: the gateway has accepted this agency and agreement.
    fn open(&self) -> impl Future<Output = Result<Self::Session, UploadError>> + Send;
}

/// One session: batches sent in order, each acknowledged only once the
/// gateway has committed it (or found it already stored).
pub trait Session: Send + Sized {
    /// The largest encoded batch the gateway accepts.
    fn max_batch_bytes(&self) -> usize;

    /// Sends `batch`, tagged for the caller; returns the acks that arrived
    /// meanwhile (waiting for some when the session's window is full).
    fn send(
        &mut self,
        tag: usize,
        batch: Batch,
    ) -> impl Future<Output = Result<Vec<Acked>, UploadError>> + Send;

    /// Waits for every outstanding ack and ends the session in order.
    fn finish(self) -> impl Future<Output = Result<Vec<Acked>, UploadError>> + Send;
}
