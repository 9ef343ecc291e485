//! Delivery that survives the network and the gateway going away: batches
//! come from the spool, are sent over an ingest session, and are deleted from
//! the spool when acknowledged. When the session fails for a reason that may
//! pass (the gateway restarting, the connection cut, the database away), the
//! agent reconnects with exponential backoff and jitter and resends every
//! unacknowledged batch; the gateway recognises any it had already stored.
//!
//! Delivery is generic over its [`Transport`], so its tests run it against
//! a model gateway that fails in every order (below) while a run uses the
//! gRPC one ([`crate::uploader::Grpc`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::error::AgentError;
use crate::spool::{Spool, Spooled};
use crate::transport::{Acked, Session, Transport, UploadError};

/// Backoff between reconnection attempts.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Exponential backoff with jitter, for a limited time.
struct Backoff {
    deadline: Instant,
    next: Duration,
}

impl Backoff {
    fn new(retry_for: Duration) -> Self {
        Self {
            deadline: Instant::now() + retry_for,
            next: FIRST_BACKOFF,
        }
    }

    /// Waits before the next attempt after `failure`; false once the time
    /// allowed has passed (the caller then gives up).
    async fn wait(&mut self, failure: &UploadError) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        let pause = self.next.mul_f64(rand::rng().random_range(0.5..1.5));
        tracing::warn!(error = %failure, retry_in_ms = pause.as_millis() as u64, "delivery failed; will reconnect");
        tokio::time::sleep(pause).await;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        true
    }
}

pub struct Delivery<T: Transport> {
    transport: T,
    retry_for: Duration,
    spool: Arc<Spool>,
    session: Option<T::Session>,
    /// Unacknowledged batches, by id: the caller's tag and every spool file
    /// holding that id (a batch read again after a crash has two).
    in_flight: BTreeMap<String, (usize, Vec<Spooled>)>,
    /// Batch ids in the order they were first sent.
    order: Vec<String>,
    /// Sessions opened so far.
    sessions: u64,
}

impl<T: Transport> Delivery<T> {
    /// Delivers over `transport`, reconnecting for up to `retry_for` after a
    /// failure that may pass.
    pub fn new(transport: T, retry_for: Duration, spool: Arc<Spool>) -> Self {
        Self {
            transport,
            retry_for,
            spool,
            session: None,
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
            .session
            .as_ref()
            .map_or(usize::MAX, Session::max_batch_bytes))
    }

    /// Makes sure a session is open, retrying with backoff; a new session
    /// resends whatever is unacknowledged. Returns the acks received and
    /// whether a session was (re)opened.
    async fn connected(&mut self) -> Result<(Vec<Acked>, bool), AgentError> {
        let mut acked = Vec::new();
        let reopened = self.session.is_none();
        let mut backoff = Backoff::new(self.retry_for);
        while self.session.is_none() {
            let attempt = match self.transport.open().await {
                Ok(mut session) => {
                    let mut resent = Ok(());
                    for id in &self.order {
                        if let Some((tag, copies)) = self.in_flight.get(id) {
                            match session.send(*tag, copies[0].batch.clone()).await {
                                Ok(more) => acked.extend(more),
                                Err(e) => {
                                    resent = Err(e);
                                    break;
                                }
                            }
                        }
                    }
                    resent.map(|()| session)
                }
                Err(e) => Err(e),
            };
            match attempt {
                Ok(session) => {
                    self.sessions += 1;
                    if self.sessions > 1 {
                        crate::metrics::reconnected();
                    }
                    self.session = Some(session);
                }
                Err(e) => self.endure(&mut backoff, e).await?,
            }
        }
        Ok((self.settle(acked)?, reopened))
    }

    /// Records `failure` for `agent status`, then waits out `backoff` if it
    /// may pass and time remains; otherwise delivery stops with it.
    async fn endure(&self, backoff: &mut Backoff, failure: UploadError) -> Result<(), AgentError> {
        self.spool.record_error(&failure.to_string());
        if failure.may_pass() && backoff.wait(&failure).await {
            Ok(())
        } else {
            Err(failure.into())
        }
    }

    /// Removes acknowledged batches from the spool and the in-flight set.
    fn settle(&mut self, acked: Vec<Acked>) -> Result<Vec<Acked>, AgentError> {
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
    pub async fn send(&mut self, tag: usize, spooled: Spooled) -> Result<Vec<Acked>, AgentError> {
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
        let Some(session) = self.session.as_mut() else {
            return Ok(acked);
        };
        match session.send(tag, batch).await {
            Ok(more) => acked.extend(self.settle(more)?),
            Err(e) => {
                if !e.may_pass() {
                    self.spool.record_error(&e.to_string());
                    return Err(e.into());
                }
                self.session = None;
                self.spool.record_error(&e.to_string());
                acked.extend(self.connected().await?.0);
            }
        }
        Ok(acked)
    }

    /// Waits until every batch sent is acknowledged. A session that ends
    /// leaving batches unacknowledged is reopened (with backoff) for up to
    /// `retry_for`, as after any failure that may pass; then the batches
    /// stay in the spool for the next run.
    pub async fn finish(&mut self) -> Result<Vec<Acked>, AgentError> {
        let mut acked = Vec::new();
        let mut backoff = Backoff::new(self.retry_for);
        while !self.in_flight.is_empty() {
            acked.extend(self.connected().await?.0);
            let Some(session) = self.session.take() else {
                continue;
            };
            let failure = match session.finish().await {
                Ok(more) => {
                    acked.extend(self.settle(more)?);
                    if self.in_flight.is_empty() {
                        break;
                    }
                    UploadError::Closed(self.in_flight.len())
                }
                Err(e) => e,
            };
            self.endure(&mut backoff, failure).await?;
        }
        // A session opened but given nothing to send (everything already
        // delivered) is ended in order too.
        if let Some(session) = self.session.take() {
            match session.finish().await {
                Ok(more) => acked.extend(self.settle(more)?),
                Err(e) => tracing::debug!(error = %e, "closing an idle session"),
            }
        }
        Ok(acked)
    }
}

/// Delivery against a model gateway behind the [`Transport`] traits: the
/// spool and the retry logic under every order of failures, no network.
#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, VecDeque};
    use std::sync::Mutex;

    use joinery_proto::v1::{Ack, AckStatus, Batch, BatchBody, Record};
    use proptest::prelude::*;

    use super::*;
    use crate::spool::Checkpoint;
    use crate::transport::UploadError;

    /// What the model gateway does at its next step.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Fault {
        /// Nothing goes wrong.
        None,
        /// Refuses to open a session, as a restarting gateway does.
        Unavailable,
        /// Loses the connection before the batch is committed.
        CutBeforeCommit,
        /// Commits the batch, then loses the connection before its ack.
        CutAfterCommit,
        /// Refuses the session for good (a revoked certificate).
        Denied,
        /// Ends the session in order but forgets the acks it still owed.
        ForgetsAcks,
    }

    #[derive(Default)]
    struct Gateway {
        /// Times each batch id was stored (a second copy is a duplicate).
        stored: BTreeMap<String, usize>,
        script: VecDeque<Fault>,
        sessions: usize,
    }

    impl Gateway {
        fn next(&mut self) -> Fault {
            self.script.pop_front().unwrap_or(Fault::None)
        }

        /// Stores `batch` unless it is held: its ack.
        fn commit(&mut self, batch: &Batch) -> Ack {
            let times = self.stored.entry(batch.batch_id.clone()).or_default();
            let status = if *times == 0 {
                AckStatus::Committed
            } else {
                AckStatus::Duplicate
            };
            *times = 1;
            Ack {
                batch_id: batch.batch_id.clone(),
                status: status as i32,
                ..Ack::default()
            }
        }
    }

    #[derive(Clone)]
    struct Model {
        gateway: Arc<Mutex<Gateway>>,
        window: usize,
    }

    struct ModelSession {
        gateway: Arc<Mutex<Gateway>>,
        window: usize,
        pending: Vec<Acked>,
    }

    fn failed(code: tonic::Code) -> UploadError {
        UploadError::Ended {
            code,
            message: "model".to_owned(),
        }
    }

    impl Transport for Model {
        type Session = ModelSession;

        async fn open(&self) -> Result<ModelSession, UploadError> {
            let mut gateway = self.gateway.lock().unwrap();
            match gateway.script.front() {
                Some(Fault::Unavailable) => {
                    gateway.next();
                    return Err(UploadError::Refused {
                        code: tonic::Code::Unavailable,
                        message: "restarting".to_owned(),
                    });
                }
                Some(Fault::Denied) => {
                    return Err(UploadError::Refused {
                        code: tonic::Code::PermissionDenied,
                        message: "revoked".to_owned(),
                    });
                }
                _ => {}
            }
            gateway.sessions += 1;
            Ok(ModelSession {
                gateway: self.gateway.clone(),
                window: self.window,
                pending: Vec::new(),
            })
        }
    }

    impl Session for ModelSession {
        fn max_batch_bytes(&self) -> usize {
            1 << 20
        }

        async fn send(&mut self, tag: usize, batch: Batch) -> Result<Vec<Acked>, UploadError> {
            let mut gateway = self.gateway.lock().unwrap();
            match gateway.next() {
                Fault::None | Fault::Unavailable | Fault::ForgetsAcks => {}
                Fault::CutBeforeCommit => return Err(failed(tonic::Code::Unavailable)),
                Fault::CutAfterCommit => {
                    gateway.commit(&batch);
                    return Err(failed(tonic::Code::Unavailable));
                }
                Fault::Denied => return Err(failed(tonic::Code::PermissionDenied)),
            }
            let ack = gateway.commit(&batch);
            self.pending.push(Acked {
                tag,
                records: batch.body.as_ref().map_or(0, |b| b.records.len()),
                ack,
                latency: Duration::ZERO,
            });
            Ok(if self.pending.len() >= self.window {
                std::mem::take(&mut self.pending)
            } else {
                Vec::new()
            })
        }

        async fn finish(self) -> Result<Vec<Acked>, UploadError> {
            let mut gateway = self.gateway.lock().unwrap();
            if gateway.script.front() == Some(&Fault::ForgetsAcks) {
                gateway.next();
                return Ok(Vec::new());
            }
            Ok(self.pending)
        }
    }

    fn batch(i: usize) -> Batch {
        Batch {
            batch_id: format!("batch-{i:03}"),
            body: Some(BatchBody {
                dataset: "d".to_owned(),
                records: vec![Record::default(); i % 3 + 1],
                ..BatchBody::default()
            }),
        }
    }

    /// What a model delivery ended with.
    struct Delivered {
        acked: Vec<Acked>,
        /// Why delivery stopped, if it did.
        error: Option<AgentError>,
        gateway: Arc<Mutex<Gateway>>,
        spool: Arc<Spool>,
        /// The spool's directory, removed when this is dropped.
        dir: tempfile::TempDir,
    }

    /// Spools and delivers `batches` batches (the first `replayed` of them
    /// spooled twice, as a crash between spooling and acknowledging leaves
    /// them) against `script`.
    fn deliver(
        batches: usize,
        replayed: usize,
        window: usize,
        script: Vec<Fault>,
        retry_for: Duration,
    ) -> Delivered {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let gateway = Arc::new(Mutex::new(Gateway {
            script: script.into(),
            ..Gateway::default()
        }));
        let model = Model {
            gateway: gateway.clone(),
            window,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let mut acked = Vec::new();
        let outcome = runtime.block_on(async {
            let mut delivery = Delivery::new(model, retry_for, spool.clone());
            for i in 0..batches {
                let copies = if i < replayed { 2 } else { 1 };
                for _ in 0..copies {
                    let spooled = spool
                        .put(batch(i), "source", Checkpoint::default())
                        .unwrap();
                    acked.extend(delivery.send(i, spooled).await?);
                }
            }
            acked.extend(delivery.finish().await?);
            Ok::<_, AgentError>(())
        });
        Delivered {
            acked,
            error: outcome.err(),
            gateway,
            spool,
            dir,
        }
    }

    fn fault() -> impl Strategy<Value = Fault> {
        prop_oneof![
            4 => Just(Fault::None),
            1 => Just(Fault::Unavailable),
            1 => Just(Fault::CutBeforeCommit),
            1 => Just(Fault::CutAfterCommit),
            1 => Just(Fault::ForgetsAcks),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100))]

        /// Whatever the order of failures that may pass: every batch is
        /// stored exactly once, acknowledged to the caller, and gone from
        /// the spool; copies of one batch leave with it.
        #[test]
        fn every_batch_is_stored_once_and_leaves_the_spool(
            batches in 1usize..25,
            replayed in 0usize..4,
            window in 1usize..5,
            script in proptest::collection::vec(fault(), 0..40),
        ) {
            let Delivered { acked, error, gateway, spool, dir: _dir } =
                deliver(batches, replayed, window, script, Duration::from_secs(3600));
            prop_assert!(error.is_none(), "{error:?}");
            let gateway = gateway.lock().unwrap();
            prop_assert_eq!(gateway.stored.len(), batches);
            prop_assert!(gateway.stored.values().all(|times| *times == 1));
            let acknowledged: BTreeSet<&str> =
                acked.iter().map(|a| a.ack.batch_id.as_str()).collect();
            prop_assert_eq!(acknowledged.len(), batches);
            for a in &acked {
                prop_assert_eq!(&a.ack.batch_id, &batch(a.tag).batch_id, "an ack carries its batch's tag");
            }
            prop_assert!(spool.pending().unwrap().is_empty());
            prop_assert_eq!(spool.bytes(), 0);
        }
    }

    /// A refusal that will not pass stops delivery at once: nothing is
    /// lost, every batch stays in the spool for the next run, and the
    /// reason is recorded for `joinery agent status`.
    #[test]
    fn a_lasting_refusal_stops_and_keeps_the_spool() {
        let Delivered {
            acked,
            error,
            gateway,
            spool,
            dir,
        } = deliver(5, 0, 2, vec![Fault::Denied], Duration::from_secs(3600));
        let error = error.expect("delivery stops").to_string();
        assert!(error.contains("revoked"), "{error}");
        assert!(acked.is_empty());
        assert!(gateway.lock().unwrap().stored.is_empty());
        assert_eq!(spool.pending().unwrap().len(), 1, "the first batch waits");
        let (_, _, status, _) = crate::spool::inspect(dir.path()).unwrap();
        assert!(status.last_error.unwrap().contains("revoked"));
    }

    /// A gateway that stays away is retried, with backoff, for
    /// `retry_for` and no longer; the batches wait in the spool.
    #[test]
    fn an_absent_gateway_is_retried_for_retry_for_then_left_to_the_next_run() {
        let retry_for = Duration::from_secs(60);
        let Delivered {
            error,
            gateway,
            spool,
            dir: _dir,
            ..
        } = deliver(3, 0, 4, vec![Fault::Unavailable; 1000], retry_for);
        let error = error.expect("delivery gives up").to_string();
        assert!(error.contains("restarting"), "{error}");
        let left = gateway.lock().unwrap().script.len();
        let attempts = 1000 - left;
        // Backoff 0.2 s doubling to 10 s (±50% jitter): about a dozen
        // attempts fit in a minute, not hundreds.
        assert!((4..=30).contains(&attempts), "{attempts} attempts");
        assert_eq!(spool.pending().unwrap().len(), 1);
    }

    /// A gateway that keeps ending sessions without the acks it owes is
    /// reopened with backoff for `retry_for`, then left to the next run:
    /// `finish` neither spins nor loses the batches.
    #[test]
    fn a_gateway_that_never_acknowledges_is_given_up_after_retry_for() {
        let retry_for = Duration::from_secs(60);
        let Delivered {
            acked,
            error,
            gateway,
            spool,
            dir,
        } = deliver(3, 0, 10, vec![Fault::ForgetsAcks; 10_000], retry_for);
        let error = error.expect("delivery gives up").to_string();
        assert!(error.contains("3 batches unacknowledged"), "{error}");
        assert!(acked.is_empty());
        let sessions = gateway.lock().unwrap().sessions;
        assert!((4..=30).contains(&sessions), "{sessions} sessions");
        assert_eq!(spool.pending().unwrap().len(), 3, "every batch waits");
        let (_, _, status, _) = crate::spool::inspect(dir.path()).unwrap();
        assert!(status.last_error.unwrap().contains("unacknowledged"));
    }
}
