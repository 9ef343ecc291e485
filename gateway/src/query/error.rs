//! Why a question is not answered: one domain error for the query
//! service, turned into a gRPC status (here) or an HTTP status
//! ([`crate::http`]) only at the edge. No message carries data about a
//! child, another analyst's question or the store's contents.

use crate::disclosure::NoiseError;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The asker may not ask this: no role, the wrong kind of certificate,
    /// another agency's data.
    #[error("{0}")]
    Forbidden(String),
    /// The question itself is wrong: it says what to fix.
    #[error("{0}")]
    Invalid(String),
    /// A new release would take an agreement past its privacy budget.
    #[error("{0}")]
    BudgetSpent(String),
    #[error("the gateway's database is not available")]
    Unavailable(#[source] StorageError),
    #[error("the gateway could not draw noise for disclosure control")]
    Noise(#[from] NoiseError),
    #[error("a kept release could not be read")]
    Corrupt(#[from] prost::DecodeError),
    /// This gateway holds one shard of the population and answers only
    /// the gateways that answer from shards.
    #[error("{0}")]
    NotAnswering(String),
    /// The gateways holding the shards could not all be heard from, or
    /// disagree about which shard each holds.
    #[error("{0}")]
    Shards(String),
    /// A shard holds newer data than the generation the answer was being
    /// worked out at; it is worked out again at the newer one.
    #[error("the data moved on while the shards were asked")]
    MovedOn,
}

impl QueryError {
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden(message.into())
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
}

impl From<StorageError> for QueryError {
    fn from(error: StorageError) -> Self {
        tracing::error!(%error, "query failed");
        Self::Unavailable(error)
    }
}

impl From<QueryError> for tonic::Status {
    fn from(error: QueryError) -> Self {
        let message = error.to_string();
        match error {
            QueryError::Forbidden(_) => Self::permission_denied(message),
            QueryError::Invalid(_) => Self::invalid_argument(message),
            QueryError::BudgetSpent(_) => Self::resource_exhausted(message),
            QueryError::Unavailable(_)
            | QueryError::Noise(_)
            | QueryError::Shards(_)
            | QueryError::MovedOn => Self::unavailable(message),
            QueryError::NotAnswering(_) => Self::failed_precondition(message),
            QueryError::Corrupt(ref e) => {
                tracing::error!(error = %e, "a kept release does not decode");
                Self::internal(message)
            }
        }
    }
}
