//! `joinery.v1.Ingest`: receives an agency's batches and acknowledges each one
//! only after it is durably committed.
//!
//! A session is one bidirectional stream. The caller's organisation comes from
//! its certificate; the `Hello` must name the same organisation (else
//! PERMISSION_DENIED) and a signed agreement the gateway holds, by id, version
//! and digest, that is in force and lists the organisation as a party (else
//! FAILED_PRECONDITION or PERMISSION_DENIED). Each batch is checked — its id is
//! the digest of its content; the agreement is still in force; the sender may
//! send the dataset; every attribute and event is one the agreement allows, in
//! the form its transform produces — then re-keyed and committed in one
//! transaction. A violation rejects the whole batch and nothing of it is
//! stored; a batch the organisation has delivered before is acknowledged as
//! DUPLICATE and not stored again.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use joinery_crypto::identity::OrganisationCode;
use joinery_policies::enforce::{DatasetRules, Violation};
use joinery_policies::{AgreementRef, SignedAgreement};
use joinery_proto::v1::ingest_server::Ingest;
use joinery_proto::v1::{
    Ack, AckStatus, AgentMessage, Batch, BatchBody, GatewayMessage, Hello, RejectReason,
    SnapshotDelivered, SnapshotReplaced, Welcome, agent_message, gateway_message,
};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::agreements::{Agreements, LiveAgreements};
use crate::audit::{AuditRecord, BatchDecision};
use crate::config::Limits;
use crate::metrics;
use crate::peer;
use crate::rekey::LinkMethod;
use crate::rekey::{LinkageRekeying, Rekeyer, StoredLinkage};
// Attributes stored in their own columns; everything else goes to JSON.
use crate::storage::{BIRTH_MONTH, POSTCODE_DISTRICT, SEX};
use crate::storage::{CommitOutcome, NewBatch, NewEvent, NewRecord, Storage};

/// Batches of one session committed concurrently (each holds at most one
/// message's worth of memory).
const BATCHES_IN_FLIGHT: usize = 4;

/// How long a new session may take to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

pub struct IngestService {
    storage: Storage,
    rekeyer: Rekeyer,
    agreements: LiveAgreements,
    max_batch_bytes: usize,
    /// Open sessions allowed at once; beyond that, new ones are shed with
    /// RESOURCE_EXHAUSTED (the agent backs off and retries).
    sessions: Arc<Semaphore>,
    /// The same, per organisation.
    organisation_sessions: Mutex<HashMap<String, Arc<Semaphore>>>,
    max_sessions_per_organisation: usize,
    /// A session with no message for this long is ended.
    idle_timeout: std::time::Duration,
}

impl IngestService {
    pub fn new(
        storage: Storage,
        rekeyer: Rekeyer,
        agreements: LiveAgreements,
        limits: &Limits,
    ) -> Self {
        Self {
            storage,
            rekeyer,
            agreements,
            max_batch_bytes: limits.max_message_bytes,
            sessions: Arc::new(Semaphore::new(limits.max_sessions)),
            organisation_sessions: Mutex::default(),
            max_sessions_per_organisation: limits.max_sessions_per_organisation,
            idle_timeout: limits.idle_timeout,
        }
    }

    /// Takes a session slot for `organisation`, or sheds the session.
    fn session_slots(
        &self,
        organisation: &str,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), Status> {
        let organisation_slots = self
            .organisation_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(organisation.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.max_sessions_per_organisation)))
            .clone();
        let Ok(own) = organisation_slots.try_acquire_owned() else {
            metrics::session("shed");
            return Err(Status::resource_exhausted(
                "this organisation is at its session limit; retry later",
            ));
        };
        let Ok(shared) = self.sessions.clone().try_acquire_owned() else {
            metrics::session("shed");
            return Err(Status::resource_exhausted(
                "the gateway is at its session limit; retry later",
            ));
        };
        Ok((own, shared))
    }
}

/// What the gateway knows about an open session.
#[derive(Clone)]
struct Session {
    organisation: OrganisationCode,
    agreement: Arc<SignedAgreement>,
    /// Present when the agreement asks for fuzzy-linkage encodings.
    linkage: Option<Arc<LinkageRekeying>>,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<GatewayMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = AckStream;

    /// A full snapshot delivered whole: the organisation's records of the
    /// dataset from earlier snapshots are retired (audited). The sender
    /// must be a party to the agreement named, in force, that lets it send
    /// the dataset, and the snapshot must be held.
    async fn replace_snapshot(
        &self,
        request: Request<SnapshotDelivered>,
    ) -> Result<Response<SnapshotReplaced>, Status> {
        let organisation = peer::organisation(&request)?;
        let delivered = request.into_inner();
        let in_force = self.agreements.current();
        let named = AgreementRef::new(&delivered.agreement_id, delivered.agreement_version);
        let agreement = agreement_in_force(&in_force, &organisation, &named, None)?;
        if !agreement.may_send(&organisation, &delivered.dataset) || delivered.snapshot.is_empty() {
            return Err(Status::permission_denied(format!(
                "organisation {organisation} does not send dataset {:?} under agreement {} version {}",
                delivered.dataset, delivered.agreement_id, delivered.agreement_version
            )));
        }
        let retired = self
            .storage
            .replace_snapshot(
                &organisation,
                &delivered.dataset,
                &delivered.snapshot,
                &named,
            )
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "replacing a snapshot failed");
                Status::unavailable("the gateway's database is not available")
            })?
            .ok_or_else(|| {
                Status::failed_precondition(
                    "the gateway holds no record of this snapshot: deliver it before replacing",
                )
            })?;
        tracing::info!(%organisation, dataset = %delivered.dataset, retired, "snapshot replaced");
        Ok(Response::new(SnapshotReplaced {
            records_retired: retired,
        }))
    }

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<AckStream>, Status> {
        let organisation = match peer::organisation(&request) {
            Ok(organisation) => organisation,
            Err(status) => {
                let actor = peer::identity(&request)
                    .map_or_else(|_| "unidentified".to_owned(), |id| id.to_string());
                return Err(self.refuse(&actor, None, status).await);
            }
        };
        let session_slot = self.session_slots(&organisation)?;
        let span = tracing::info_span!(
            "ingest_session",
            organisation = %organisation,
            agreement = tracing::field::Empty,
            agreement_version = tracing::field::Empty,
        );
        joinery_proto::trace_context::adopt_parent(&span, request.metadata());
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                kind: Some(agent_message::Kind::Hello(hello)),
            }))) => hello,
            Ok(Ok(_)) => {
                metrics::session("refused");
                return Err(Status::invalid_argument("the first message must be Hello"));
            }
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                metrics::session("refused");
                return Err(Status::deadline_exceeded("no Hello within 30 seconds"));
            }
        };
        let session = match open_session(&self.agreements.current(), &organisation, &hello) {
            Ok(mut session) => {
                session.linkage = session
                    .agreement
                    .agreement
                    .linkage
                    .params()
                    .map(|params| Arc::new(self.rekeyer.linkage_rekeying(params)));
                session
            }
            Err(status) => {
                let named = AgreementRef::new(&hello.agreement_id, hello.agreement_version);
                return Err(self.refuse(&organisation, Some(&named), status).await);
            }
        };
        metrics::session("opened");
        tracing::info!(
            organisation = %session.organisation,
            agreement = %session.agreement.agreement.id,
            version = session.agreement.agreement.version,
            agent = %hello.agent_version,
            "ingest session opened"
        );

        let (tx, rx) = mpsc::channel(16);
        let welcome = GatewayMessage {
            kind: Some(gateway_message::Kind::Welcome(Welcome {
                gateway_version: env!("CARGO_PKG_VERSION").to_owned(),
                max_batch_bytes: self.max_batch_bytes as u64,
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("session closed"))?;
        let storage = self.storage.clone();
        let rekeyer = self.rekeyer.clone();
        span.record("agreement", session.agreement.agreement.id.as_str());
        span.record("agreement_version", session.agreement.agreement.version);
        let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        let idle_timeout = self.idle_timeout;
        let session_task = async move {
            let _slot = session_slot;
            loop {
                let message = match tokio::time::timeout(idle_timeout, inbound.message()).await {
                    Err(_) => {
                        tracing::info!(organisation = %session.organisation, "ingest session idle: ended");
                        let _ = tx
                            .send(Err(Status::deadline_exceeded(format!(
                                "no batch for {} seconds: session ended (reconnect to send more)",
                                idle_timeout.as_secs()
                            ))))
                            .await;
                        break;
                    }
                    Ok(Ok(Some(message))) => message,
                    Ok(Ok(None)) => break,
                    Ok(Err(status)) => {
                        // E.g. a message over the size limit: tell the agent why.
                        tracing::warn!(organisation = %session.organisation, code = ?status.code(), reason = status.message(), "ingest stream ended by error");
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let Some(agent_message::Kind::Batch(batch)) = message.kind else {
                    let _ = tx
                        .send(Err(Status::invalid_argument(
                            "only Batch messages may follow Hello",
                        )))
                        .await;
                    break;
                };
                // Commit up to BATCHES_IN_FLIGHT batches of this session at
                // once; each is acknowledged by id as soon as it commits.
                let Ok(slot) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                if tx.is_closed() {
                    break;
                }
                let (storage, rekeyer, session, tx) = (
                    storage.clone(),
                    rekeyer.clone(),
                    session.clone(),
                    tx.clone(),
                );
                let span = tracing::info_span!("batch", batch_id = %batch.batch_id);
                tokio::spawn(
                    async move {
                        let reply =
                            handle_batch(&storage, &rekeyer, &session, batch)
                                .await
                                .map(|ack| GatewayMessage {
                                    kind: Some(gateway_message::Kind::Ack(ack)),
                                });
                        let _ = tx.send(reply).await;
                        drop(slot);
                    }
                    .instrument(span),
                );
            }
        };
        tokio::spawn(session_task.instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl IngestService {
    /// Counts, logs and audits a refused session; returns the status to send.
    async fn refuse(
        &self,
        actor: &str,
        agreement: Option<&AgreementRef>,
        status: Status,
    ) -> Status {
        metrics::session("refused");
        tracing::warn!(%actor, code = ?status.code(), reason = status.message(), "ingest session refused");
        let code = format!("{:?}", status.code());
        let record = AuditRecord::session_refused(actor, agreement, &code, status.message());
        if let Err(e) = self.storage.append_audit(&record).await {
            tracing::error!(error = %e, "could not audit a refused session");
        }
        status
    }
}

fn open_session(
    agreements: &Agreements,
    organisation: &OrganisationCode,
    hello: &Hello,
) -> Result<Session, Status> {
    if hello.organisation != *organisation {
        return Err(Status::permission_denied(format!(
            "certificate is for organisation {organisation} but Hello claims {:?}",
            hello.organisation
        )));
    }
    let agreement = agreement_in_force(
        agreements,
        organisation,
        &AgreementRef::new(&hello.agreement_id, hello.agreement_version),
        Some(&hello.agreement_digest),
    )?;
    Ok(Session {
        organisation: organisation.clone(),
        agreement: agreement.clone(),
        linkage: None,
    })
}

/// The signed agreement `named` the gateway holds — with the same text as
/// the agent's, when its `digest` is given — in force, with `organisation` a
/// party to it.
fn agreement_in_force<'a>(
    agreements: &'a Agreements,
    organisation: &str,
    named: &AgreementRef,
    digest: Option<&str>,
) -> Result<&'a Arc<SignedAgreement>, Status> {
    let AgreementRef { id, version } = named;
    let agreement = agreements.get(named).ok_or_else(|| {
        Status::failed_precondition(format!(
            "the gateway holds no signed agreement {id:?} version {version}"
        ))
    })?;
    if digest.is_some_and(|d| d != agreement.digest) {
        return Err(Status::failed_precondition(format!(
            "agent and gateway hold different texts of agreement {id} version {version} (digests differ); both must use the same signed file"
        )));
    }
    agreement
        .in_force_at(OffsetDateTime::now_utc())
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    if !agreement
        .agreement
        .parties
        .iter()
        .any(|p| p.organisation == organisation)
    {
        return Err(Status::permission_denied(format!(
            "organisation {organisation} is not a party to agreement {id} version {version}"
        )));
    }
    Ok(agreement)
}

/// Checks, re-keys and commits one batch; returns its ack. Errs only when the
/// storage failed (the session then ends with UNAVAILABLE and the agent retries).
async fn handle_batch(
    storage: &Storage,
    rekeyer: &Rekeyer,
    session: &Session,
    batch: Batch,
) -> Result<Ack, Status> {
    let started = Instant::now();
    let batch_id = batch.batch_id.clone();
    let body = batch.body.unwrap_or_default();
    let dataset = body.dataset.clone();
    let records = body.records.len();
    let prepared = body
        .digest()
        .eq(&batch_id)
        .then_some(())
        .ok_or((
            RejectReason::BatchIdMismatch,
            "batch id is not the SHA-256 of the batch body".to_owned(),
        ))
        .and_then(|()| prepare(rekeyer, session, &batch_id, body));
    let ack = match prepared {
        Err((reason, detail)) => {
            metrics::batch_answered(
                &session.organisation,
                &dataset,
                "rejected",
                reason.as_str_name(),
            );
            tracing::warn!(organisation = %session.organisation, %batch_id, reason = reason.as_str_name(), %detail, "batch rejected");
            let record = AuditRecord::batch(
                &session.organisation,
                &session.agreement.agreement.reference(),
                &batch_id,
                &dataset,
                records,
                BatchDecision::Rejected(reason.as_str_name()),
            );
            storage.append_audit(&record).await.map_err(|e| {
                tracing::error!(error = %e, "could not audit a rejected batch");
                Status::unavailable("the gateway could not record the batch; retry later")
            })?;
            Ack {
                batch_id,
                status: AckStatus::Rejected.into(),
                reason: reason.into(),
                detail,
                records_stored: 0,
            }
        }
        Ok(new_batch) => {
            let methods = [LinkMethod::ExactNhs, LinkMethod::Unlinked].map(|method| {
                let n = new_batch
                    .records
                    .iter()
                    .filter(|r| r.link_method == method)
                    .count();
                (method, n as u64)
            });
            let outcome = storage.commit_batch(new_batch).await.map_err(|e| {
                tracing::error!(organisation = %session.organisation, %batch_id, error = %e, "batch could not be committed");
                Status::unavailable("the gateway could not store the batch; retry later")
            })?;
            let (status, stored, label) = match outcome {
                CommitOutcome::Committed(n) => (AckStatus::Committed, n, "committed"),
                CommitOutcome::Duplicate => (AckStatus::Duplicate, 0, "duplicate"),
            };
            metrics::batch_answered(&session.organisation, &dataset, label, "");
            metrics::records_stored(&session.organisation, &dataset, stored);
            if stored > 0 {
                for (method, n) in methods {
                    metrics::linked(method, n);
                }
            }
            tracing::debug!(organisation = %session.organisation, %batch_id, outcome = label, records = stored, "batch acknowledged");
            Ack {
                batch_id,
                status: status.into(),
                reason: RejectReason::Unspecified.into(),
                detail: String::new(),
                records_stored: stored,
            }
        }
    };
    metrics::ack_latency(started.elapsed());
    Ok(ack)
}

type Rejection = (RejectReason, String);

fn prepare(
    rekeyer: &Rekeyer,
    session: &Session,
    batch_id: &str,
    body: BatchBody,
) -> Result<NewBatch, Rejection> {
    let signed = &session.agreement;
    if let Err(e) = signed.in_force_at(OffsetDateTime::now_utc()) {
        return Err((RejectReason::AgreementNotInForce, e.to_string()));
    }
    if !signed.may_send(&session.organisation, &body.dataset) {
        return Err((
            RejectReason::DatasetNotAllowed,
            format!(
                "organisation {} does not send dataset {:?} under agreement {} version {}",
                session.organisation, body.dataset, signed.agreement.id, signed.agreement.version
            ),
        ));
    }
    let dataset = signed.agreement.datasets.get(&body.dataset).ok_or((
        RejectReason::DatasetNotAllowed,
        "dataset not in the agreement".to_owned(),
    ))?;
    let rules = DatasetRules::new(dataset);
    if body.records.is_empty() {
        return Err((RejectReason::EmptyBatch, "batch has no records".to_owned()));
    }
    let records = body
        .records
        .into_iter()
        .enumerate()
        .map(|(index, record)| {
            let row = record.source_row;
            let at = |detail: String| format!("record {index} (source row {row}): {detail}");
            rules
                .check(
                    &record.attributes,
                    !record.nhs_pseudonym.is_empty(),
                    record
                        .events
                        .iter()
                        .map(|e| (e.event_type.as_str(), e.date.as_str(), &e.attributes)),
                )
                .map_err(|violation| (reason_for(&violation), at(violation.to_string())))?;
            let linkage = match (&record.linkage, &session.linkage) {
                (None, _) => None,
                (Some(_), None) => {
                    return Err((
                        RejectReason::LinkageNotAllowed,
                        at("the agreement asks for no linkage encodings".to_owned()),
                    ));
                }
                (Some(encoding), Some(rekeying)) => Some(
                    rekeyer
                        .linkage(rekeying, encoding)
                        .map_err(|detail| (RejectReason::LinkageNotAllowed, at(detail)))?,
                ),
            };
            prepare_record(
                rekeyer,
                &session.organisation,
                [&body.dataset, &body.source, &body.snapshot],
                record,
                linkage,
            )
            .map_err(|detail| (RejectReason::InvalidRecord, at(detail)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NewBatch {
        organisation: session.organisation.to_string(),
        batch_id: batch_id.to_owned(),
        snapshot: (!body.snapshot.is_empty()).then_some(body.snapshot),
        dataset: body.dataset,
        sequence: body.sequence,
        agreement: signed.agreement.reference(),
        records,
    })
}

fn reason_for(violation: &Violation) -> RejectReason {
    match violation {
        Violation::FieldNotAllowed(_) | Violation::NhsNotAllowed => RejectReason::FieldNotAllowed,
        Violation::ValueNotAllowed(_) => RejectReason::ValueNotAllowed,
        Violation::EventNotAllowed(_) | Violation::EventDateTooPrecise(_) => {
            RejectReason::EventNotAllowed
        }
    }
}

/// Re-keys a record that has passed the agreement's rules (which fix every
/// attribute's name and form) into what storage keeps.
fn prepare_record(
    rekeyer: &Rekeyer,
    organisation: &str,
    identity: [&str; 3],
    record: joinery_proto::v1::Record,
    linkage: Option<StoredLinkage>,
) -> Result<NewRecord, String> {
    if record.local_pseudonym.len() != 32 {
        return Err("local pseudonym must be 32 bytes".to_owned());
    }
    if !(record.nhs_pseudonym.is_empty() || record.nhs_pseudonym.len() == 32) {
        return Err("NHS pseudonym must be empty or 32 bytes".to_owned());
    }
    let record_key = record_key(identity, &record);
    let mut attributes = record.attributes;
    let sex = attributes.remove(SEX);
    let birth_month = attributes.remove(BIRTH_MONTH);
    let postcode_district = attributes.remove(POSTCODE_DISTRICT);
    let events = record
        .events
        .into_iter()
        .map(|event| NewEvent {
            event_type: event.event_type,
            event_date: event.date,
            attributes: to_json(&event.attributes),
        })
        .collect();
    let identity = rekeyer.identify(organisation, &record.local_pseudonym, &record.nhs_pseudonym);
    Ok(NewRecord {
        person_id: identity.person_id,
        record_key,
        source_row: record.source_row,
        local_pseudonym: identity.local_pseudonym,
        nhs_pseudonym: identity.nhs_pseudonym,
        link_method: identity.link_method,
        sex,
        birth_month,
        postcode_district,
        attributes: to_json(&attributes),
        events,
        linkage,
    })
}

/// A record's key: SHA-256 of its dataset, the table of its source it came
/// from (the format's name for it, never a file name: see the batch's
/// `source`), its snapshot (if any) and its wire encoding — its line and
/// all it holds (deterministic: maps are ordered) — not the batch it came
/// in.
fn record_key(identity: [&str; 3], record: &joinery_proto::v1::Record) -> String {
    use prost::Message;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in identity {
        context.update(part.as_bytes());
        context.update(b"\0");
    }
    context.update(&record.encode_to_vec());
    hex::encode(context.finish())
}

fn to_json(map: &BTreeMap<String, String>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_must_name_the_certificate_organisation() {
        let hello = Hello {
            organisation: "RGD".into(),
            agreement_id: "dsa".into(),
            agreement_version: 1,
            agent_version: "t".into(),
            agreement_digest: String::new(),
        };
        let none = Agreements::default();
        let code = |org: &str| {
            open_session(&none, &org.parse().unwrap(), &hello)
                .err()
                .unwrap()
                .code()
        };
        assert_eq!(code("E08000035"), tonic::Code::PermissionDenied);
        // The right organisation, but an agreement the gateway does not hold.
        assert_eq!(code("RGD"), tonic::Code::FailedPrecondition);
    }
}
