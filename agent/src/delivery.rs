//! Delivery that survives the network and the gateway going away: batches
//! come from the spool, are sent over an ingest session, and are deleted from
//! the spool when acknowledged. When the session fails for a reason that may
//! pass (the gateway restarting, the connection cut, the database away), the
//! agent reconnects with exponential backoff and jitter and resends every
//! unacknowledged batch; the gateway recognises any it had already stored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use joinery_proto::v1::Hello;
use rand::Rng;
use rustls::ClientConfig;
use tonic::Code;

use crate::config::GatewayEndpoint;
use crate::error::AgentError;
use crate::spool::{Spool, Spooled};
use crate::uploader::{Acked, UploadError, Uploader};

/// Backoff between reconnection attempts.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub struct Delivery {
    gateway: GatewayEndpoint,
    tls: ClientConfig,
    hello: Hello,
    window: usize,
    retry_for: Duration,
    spool: Arc<Spool>,
    uploader: Option<Uploader<usize>>,
    /// Unacknowledged batches, by id: the caller's tag and every spool file
    /// holding that id (a batch read again after a crash has two).
    in_flight: BTreeMap<String, (usize, Vec<Spooled>)>,
    /// Batch ids in the order they were first sent.
    order: Vec<String>,
    /// Sessions opened so far.
    sessions: u64,
}

/// Whether a failure may pass if we try again.
fn retryable(error: &AgentError) -> bool {
    match error {
        AgentError::Connect(_) => true,
        AgentError::Upload(UploadError::Closed(_) | UploadError::Protocol(_)) => true,
        AgentError::Upload(UploadError::Refused { code, .. } | UploadError::Ended { code, .. }) => {
            matches!(
                code,
                Code::Unavailable
                    | Code::Unknown
                    | Code::Internal
                    | Code::Cancelled
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Aborted
            )
        }
        _ => false,
    }
}

impl Delivery {
    pub fn new(
        gateway: &GatewayEndpoint,
        tls: ClientConfig,
        hello: Hello,
        window: usize,
        retry_for: Duration,
        spool: Arc<Spool>,
    ) -> Self {
        Self {
            gateway: gateway.clone(),
            tls,
            hello,
            window,
            retry_for,
            spool,
            uploader: None,
            in_flight: BTreeMap::new(),
            order: Vec::new(),
            sessions: 0,
        }
    }

    /// Sessions reopened after the gateway or the network failed.
    pub fn reconnections(&self) -> u64 {
        self.sessions.saturating_sub(1)
    }

    /// The gateway's largest accepted batch, connecting if need be.
    pub async fn max_batch_bytes(&mut self) -> Result<usize, AgentError> {
        self.connected().await?;
        Ok(self
            .uploader
            .as_ref()
            .map_or(usize::MAX, Uploader::max_batch_bytes))
    }

    async fn open(&self) -> Result<Uploader<usize>, AgentError> {
        let channel = joinery_proto::channel::connect(
            &self.gateway.address,
            self.gateway.server_name(),
            self.tls.clone(),
        )
        .await?;
        Ok(Uploader::open(
            channel,
            self.hello.clone(),
            self.window,
            self.gateway.compress,
        )
        .await?)
    }

    /// Makes sure a session is open, retrying with backoff; a new session
    /// resends whatever is unacknowledged. Returns the acks received and
    /// whether a session was (re)opened.
    async fn connected(&mut self) -> Result<(Vec<Acked<usize>>, bool), AgentError> {
        let mut acked = Vec::new();
        let reopened = self.uploader.is_none();
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = FIRST_BACKOFF;
        while self.uploader.is_none() {
            let attempt = match self.open().await {
                Ok(mut uploader) => {
                    let mut resent = Ok(());
                    for id in &self.order {
                        if let Some((tag, copies)) = self.in_flight.get(id) {
                            match uploader.send(*tag, copies[0].batch.clone()).await {
                                Ok(more) => acked.extend(more),
                                Err(e) => {
                                    resent = Err(AgentError::from(e));
                                    break;
                                }
                            }
                        }
                    }
                    resent.map(|()| uploader)
                }
                Err(e) => Err(e),
            };
            match attempt {
                Ok(uploader) => {
                    self.sessions += 1;
                    if self.sessions > 1 {
                        crate::metrics::reconnected();
                    }
                    self.uploader = Some(uploader);
                }
                Err(e) if retryable(&e) && Instant::now() < deadline => {
                    self.spool.record_error(&e.to_string());
                    let jitter = rand::rng().random_range(0.5..1.5);
                    tracing::warn!(error = %e, retry_in_ms = (backoff.as_millis() as f64 * jitter) as u64, "delivery failed; will reconnect");
                    tokio::time::sleep(backoff.mul_f64(jitter)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    self.spool.record_error(&e.to_string());
                    return Err(e);
                }
            }
        }
        Ok((self.settle(acked)?, reopened))
    }

    /// Removes acknowledged batches from the spool and the in-flight set.
    fn settle(&mut self, acked: Vec<Acked<usize>>) -> Result<Vec<Acked<usize>>, AgentError> {
        for a in &acked {
            if let Some((_, copies)) = self.in_flight.remove(&a.ack.batch_id) {
                for copy in &copies {
                    self.spool.acknowledged(copy)?;
                }
            }
        }
        self.order.retain(|id| self.in_flight.contains_key(id));
        Ok(acked)
    }

    /// Sends a spooled batch (reconnecting as needed); returns acks received.
    pub async fn send(
        &mut self,
        tag: usize,
        spooled: Spooled,
    ) -> Result<Vec<Acked<usize>>, AgentError> {
        let id = spooled.batch.batch_id.clone();
        if let Some((_, copies)) = self.in_flight.get_mut(&id) {
            // Already on its way: its ack will clear this copy too.
            copies.push(spooled);
            return Ok(Vec::new());
        }
        let batch = spooled.batch.clone();
        self.in_flight.insert(id.clone(), (tag, vec![spooled]));
        self.order.push(id);
        // A new session resends everything in flight, this batch included.
        let (mut acked, reopened) = self.connected().await?;
        if reopened {
            return Ok(acked);
        }
        let Some(uploader) = self.uploader.as_mut() else {
            return Ok(acked);
        };
        match uploader.send(tag, batch).await {
            Ok(more) => acked.extend(self.settle(more)?),
            Err(e) => {
                let e = AgentError::from(e);
                if !retryable(&e) {
                    return Err(e);
                }
                self.uploader = None;
                self.spool.record_error(&e.to_string());
                acked.extend(self.connected().await?.0);
            }
        }
        Ok(acked)
    }

    /// Waits until every batch sent is acknowledged.
    pub async fn finish(&mut self) -> Result<Vec<Acked<usize>>, AgentError> {
        let mut acked = Vec::new();
        while !self.in_flight.is_empty() {
            acked.extend(self.connected().await?.0);
            let Some(uploader) = self.uploader.take() else {
                continue;
            };
            match uploader.finish().await {
                Ok(more) => acked.extend(self.settle(more)?),
                Err(e) => {
                    let e = AgentError::from(e);
                    if !retryable(&e) {
                        return Err(e);
                    }
                    self.spool.record_error(&e.to_string());
                }
            }
        }
        // A session opened but given nothing to send (everything already
        // delivered) is ended in order too.
        if let Some(uploader) = self.uploader.take() {
            match uploader.finish().await {
                Ok(more) => acked.extend(self.settle(more)?),
                Err(e) => tracing::debug!(error = %e, "closing an idle session"),
            }
        }
        Ok(acked)
    }
}
