//! One agent run: check every source against its mapping, connect, stream
//! every row through validation, release and batching to the gateway, and
//! summarise what happened.
//!
//! Rows are read on a blocking thread and handed to the sender through a
//! bounded channel, so a slow gateway slows reading rather than filling memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use joinery_crypto::keys::SecretKey;
use joinery_policies::SignedAgreement;
use joinery_policies::model::{Dataset, OptOut};
use joinery_proto::v1::ingest_client::IngestClient;
use joinery_proto::v1::{AckStatus, Batch, Hello, RejectReason, SnapshotDelivered};
use time::Date;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::batch::Batcher;
use crate::config::AgentConfig;
use crate::delivery::Delivery;
use crate::metrics;
use crate::opt_out::OptOutList;
use crate::progress::{Progress, SourceProgress};
use crate::quarantine::{QUARANTINED, QuarantineReport, SENT_WITH_WARNING};
use crate::release::{Releaser, withheld_by_agreement};
use crate::row::RowOutcome;
use crate::source::{Position, Source};
use crate::spool::{Checkpoint, Spool, SpoolError, Spooled};
use crate::transport::Acked;
use crate::uploader::Grpc;

pub use crate::error::AgentError;

/// What happened to one source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceSummary {
    pub source: PathBuf,
    pub dataset: String,
    pub rows_read: u64,
    pub records_sent: u64,
    /// Stored by this run.
    pub records_stored: u64,
    /// Already stored by an earlier run (their batches were duplicates).
    pub records_already_stored: u64,
    pub records_rejected: u64,
    pub batches_rejected: BTreeMap<String, u64>,
    /// Rows not sent, by reason.
    pub quarantined: BTreeMap<String, u64>,
    /// Rows sent with a value dropped, by reason.
    pub warnings: BTreeMap<String, u64>,
    pub quarantine_report: PathBuf,
    /// Rows withheld because the person is on the National Data Opt-out list.
    pub opted_out: u64,
    /// What the mapping reads but the agreement does not let this dataset send.
    pub withheld_fields: Vec<String>,
    /// Time from sending each batch to its ack.
    pub ack_latencies: Vec<Duration>,
    /// This run found the source already completely delivered (same file).
    pub already_delivered: bool,
    /// Reading resumed at this line, where an interrupted run stopped.
    pub resumed_at_line: Option<u64>,
}

impl SourceSummary {
    /// Takes the counts of a read.
    fn absorb(&mut self, read: SourceSummary) {
        self.rows_read = read.rows_read;
        self.records_sent = read.records_sent;
        self.quarantined = read.quarantined;
        self.warnings = read.warnings;
        self.opted_out = read.opted_out;
        self.quarantine_report = read.quarantine_report;
    }
}

impl SourceSummary {
    pub fn quarantined_rows(&self) -> u64 {
        self.quarantined.values().sum()
    }
}

/// What happened in the run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub sources: Vec<SourceSummary>,
    /// Batches an interrupted earlier run left in the spool, resent first.
    pub replayed_batches: u64,
    pub replayed_records: u64,
    /// Sessions reopened after the gateway or network failed.
    pub reconnections: u64,
    /// Full snapshots delivered whole this run: the dataset, and how many
    /// records of earlier snapshots the gateway retired.
    pub snapshots: Vec<(String, u64)>,
    /// The gateway's signed audit checkpoints fetched and kept this run
    /// ([`crate::checkpoints`]); `None` when the gateway could not be asked.
    pub checkpoints: Option<crate::checkpoints::Fetched>,
}

/// Exit statuses of `joinery agent run`.
pub const EXIT_OK: i32 = 0;
pub const EXIT_QUARANTINED: i32 = 3;
pub const EXIT_REJECTED: i32 = 4;

impl RunSummary {
    /// 0: everything delivered; 3: some rows quarantined, the rest delivered;
    /// 4: the gateway rejected at least one batch.
    pub fn exit_code(&self) -> i32 {
        if self.sources.iter().any(|s| s.records_rejected > 0) {
            EXIT_REJECTED
        } else if self.sources.iter().any(|s| s.quarantined_rows() > 0) {
            EXIT_QUARANTINED
        } else {
            EXIT_OK
        }
    }
}

/// Runs the agent once over every configured source.
pub async fn run(config: &AgentConfig, progress: Progress) -> Result<RunSummary, AgentError> {
    let span = tracing::info_span!("agent_run", organisation = %config.organisation);
    run_sources(config, progress).instrument(span).await
}

async fn run_sources(config: &AgentConfig, progress: Progress) -> Result<RunSummary, AgentError> {
    let key = SecretKey::load(&config.linkage_key)?;
    let tls = joinery_crypto::tls::client_config(&config.tls_files())?;
    let expiry = joinery_crypto::tls::expiry(&config.tls_files())?;
    metrics::tls_expiry(expiry.certificate, expiry.ca);
    let now = time::OffsetDateTime::now_utc();
    let today = now.date();

    // The agreement: fully signed, in force, and naming this organisation.
    let signed = SignedAgreement::load(&config.agreement)?;
    signed.in_force_at(now)?;
    let agreement = &signed.agreement;
    let opt_out = match (
        agreement.national_data_opt_out,
        &config.national_data_opt_out,
    ) {
        (OptOut::Applies, Some(path)) => Some(Arc::new(OptOutList::load(path)?)),
        (OptOut::Applies, None) => {
            return Err(AgentError::NotAllowed(format!(
                "agreement {} version {} says the National Data Opt-out applies: set national_data_opt_out to the opt-out list",
                agreement.id, agreement.version
            )));
        }
        (OptOut::DoesNotApply, _) => None,
    };

    // Bind every mapping to its file, and check the agreement lets this
    // organisation send each dataset, before anything is sent.
    let formats = config.formats()?;
    let mut opened = Vec::new();
    for source in &config.sources {
        let context = crate::source::ReadContext {
            today,
            limits: config.limits,
        };
        let parts = crate::format::open(source, &formats, context)?;
        // A full snapshot's id: the same for every part of it, and across
        // an interrupted run, while its files are unchanged.
        let snapshot = if source.snapshot() {
            let mut fingerprints: Vec<String> =
                parts.iter().map(|p| p.source.fingerprint()).collect();
            fingerprints.sort_unstable();
            let dataset = parts.first().map_or("", |p| p.dataset.as_str());
            let identity: String = std::iter::once(dataset)
                .chain(fingerprints.iter().map(String::as_str))
                .map(|part| format!("{part}\0"))
                .collect();
            let digest = ring::digest::digest(&ring::digest::SHA256, identity.as_bytes());
            hex::encode(&digest.as_ref()[..16])
        } else {
            String::new()
        };
        for part in parts {
            if !signed.may_send(&config.organisation, &part.dataset) {
                return Err(AgentError::NotAllowed(format!(
                    "agreement {} version {} does not let {} send dataset {} (source {})",
                    agreement.id,
                    agreement.version,
                    config.organisation,
                    part.dataset,
                    part.path.display()
                )));
            }
            let dataset = agreement
                .datasets
                .get(&part.dataset)
                .cloned()
                .ok_or_else(|| {
                    AgentError::NotAllowed(format!(
                        "dataset {} is not in the agreement",
                        part.dataset
                    ))
                })?;
            opened.push(Opened {
                path: part.path,
                table: part.table,
                dataset: part.dataset,
                rules: dataset,
                reader: part.source,
                snapshot: snapshot.clone(),
            });
        }
    }

    let hello = Hello {
        organisation: config.organisation.clone(),
        agreement_id: agreement.id.clone(),
        agreement_version: agreement.version,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        agreement_digest: signed.digest.clone(),
    };
    let spool = Arc::new(Spool::open(&config.spool_dir)?);
    let transport = Grpc {
        gateway: config.gateway.clone(),
        tls: tls.clone(),
        hello,
        window: config.max_in_flight,
    };
    let mut delivery = Delivery::new(
        transport,
        Duration::from_secs(config.retry_for_secs),
        spool.clone(),
    );
    let mut acked = Vec::new();

    // First, whatever an interrupted run left in the spool.
    let leftovers = spool.pending()?;
    let replayed_batches = leftovers.len() as u64;
    if replayed_batches > 0 {
        tracing::info!(
            batches = replayed_batches,
            "resending batches left in the spool by an earlier run"
        );
    }
    for spooled in leftovers {
        acked.extend(delivery.send(REPLAYED, spooled).await?);
    }

    // Leave headroom under the gateway's limit for framing.
    let max_batch_bytes = delivery.max_batch_bytes().await? / 2;
    let releaser = Arc::new(Releaser::new(&key, agreement.linkage.params().as_ref())?);
    let mut summaries = Vec::new();
    let mut reports = std::collections::BTreeSet::new();

    let snapshots: Vec<(String, String)> = {
        let mut seen: Vec<(String, String)> = opened
            .iter()
            .filter(|o| !o.snapshot.is_empty())
            .map(|o| (o.dataset.clone(), o.snapshot.clone()))
            .collect();
        seen.dedup();
        seen
    };
    for (index, opened) in opened.into_iter().enumerate() {
        let Opened {
            path,
            table,
            dataset,
            rules,
            mut reader,
            snapshot,
        } = opened;
        let key = path.display().to_string();
        let fingerprint = reader.fingerprint();
        let checkpoint = spool
            .checkpoint(&key)
            .filter(|c| c.fingerprint == fingerprint);
        let mut summary = SourceSummary {
            source: path.clone(),
            dataset: dataset.clone(),
            withheld_fields: withheld_by_agreement(&reader.mappings(), &rules),
            ..SourceSummary::default()
        };
        let complete = checkpoint.as_ref().is_some_and(|c| c.complete);
        if complete && !reader.incremental() {
            tracing::info!(source = %path.display(), %dataset, "source already delivered; nothing new to read");
            summary.already_delivered = true;
            summaries.push(summary);
            continue;
        }
        if let Some(c) = &checkpoint {
            reader.resume(c.at.clone())?;
            if complete {
                tracing::info!(source = %path.display(), %dataset, "reading what was added or changed since the last run");
            } else {
                summary.resumed_at_line = Some(c.at.line);
                tracing::info!(source = %path.display(), %dataset, line = c.at.line, "resuming an interrupted read");
            }
        } else {
            tracing::info!(source = %path.display(), %dataset, "reading source");
        }
        if !summary.withheld_fields.is_empty() {
            tracing::info!(%dataset, withheld = ?summary.withheld_fields, "mapped fields the agreement does not allow are not sent");
        }
        // One report per dataset: its first source this run starts it afresh
        // (unless resuming an interrupted read); the others add to it.
        let append = (checkpoint.is_some() && !complete) || !reports.insert(dataset.clone());
        let report = QuarantineReport::create(&config.quarantine_dir, &dataset, &path, append)
            .map_err(|source| AgentError::Quarantine {
                path: config.quarantine_dir.clone(),
                source,
            })?;
        let sequence = checkpoint.map_or(0, |c| c.sequence);
        let batcher = Batcher::new(
            &dataset,
            &table,
            config.batch_size,
            max_batch_bytes,
            sequence,
        )
        .in_snapshot(&snapshot);
        let (tx, mut rx) = mpsc::channel::<Spooled>(config.max_in_flight);
        let releasing = Releasing {
            releaser: releaser.clone(),
            dataset: rules,
            today,
            opt_out: opt_out.clone(),
        };
        let spooling = Spooling {
            spool: spool.clone(),
            key,
            fingerprint,
            max_bytes: config.spool_max_bytes,
        };
        let reading = tokio::task::spawn_blocking(move || {
            read_source(reader, &releasing, &spooling, batcher, report, tx, progress)
        });
        let sending = async {
            while let Some(spooled) = rx.recv().await {
                acked.extend(delivery.send(index, spooled).await?);
            }
            Ok::<_, AgentError>(())
        };
        sending
            .instrument(tracing::info_span!("source", %dataset))
            .await?;
        let counts = reading
            .await
            .map_err(|e| AgentError::Reader(e.to_string()))??;
        summary.absorb(counts);
        metrics::rows(
            &summary.dataset,
            summary.rows_read,
            summary.quarantined_rows(),
            summary.opted_out,
            summary.records_sent,
        );
        summaries.push(summary);
    }
    acked.extend(delivery.finish().await?);
    let reconnections = delivery.reconnections();
    let mut run = RunSummary {
        sources: summaries,
        replayed_batches,
        reconnections,
        ..RunSummary::default()
    };
    run.tally(acked);
    // Full snapshots delivered whole (nothing rejected) replace the earlier.
    let (complete, incomplete): (Vec<_>, Vec<_>) =
        snapshots.into_iter().partition(|(dataset, _)| {
            !run.sources
                .iter()
                .any(|s| &s.dataset == dataset && s.records_rejected > 0)
        });
    for (dataset, _) in &incomplete {
        tracing::warn!(%dataset, "snapshot not complete at the gateway (batches rejected); earlier snapshots kept");
    }
    // One connection for what follows the batches: snapshot replacement
    // (which must happen) and keeping the audit checkpoints (which may fail).
    let channel = match joinery_proto::channel::connect(
        &config.gateway.address,
        config.gateway.server_name(),
        tls,
    )
    .await
    {
        Ok(channel) => Some(channel),
        Err(e) if complete.is_empty() => {
            tracing::warn!(error = %e, "could not keep the gateway's audit checkpoints");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let Some(channel) = channel else {
        return Ok(run);
    };
    for (dataset, snapshot) in complete {
        let replaced = IngestClient::new(channel.clone())
            .replace_snapshot(SnapshotDelivered {
                dataset: dataset.clone(),
                snapshot,
                agreement_id: agreement.id.clone(),
                agreement_version: agreement.version,
            })
            .await
            .map_err(|status| {
                AgentError::NotAllowed(format!(
                    "the gateway did not replace the earlier snapshots of {dataset}: {}",
                    status.message()
                ))
            })?
            .into_inner();
        run.snapshots.push((dataset, replaced.records_retired));
    }
    run.checkpoints =
        crate::checkpoints::fetch_into(channel, &crate::checkpoints::kept_file(&config.spool_dir))
            .await
            .inspect_err(
                |e| tracing::warn!(error = %e, "could not keep the gateway's audit checkpoints"),
            )
            .ok();
    Ok(run)
}

/// A source's part, opened and checked, waiting its turn.
struct Opened {
    path: PathBuf,
    table: String,
    dataset: String,
    rules: joinery_policies::model::Dataset,
    reader: Box<dyn Source>,
    /// Its full snapshot's id; empty for incremental data.
    snapshot: String,
}

impl RunSummary {
    /// Counts acknowledgements into the sources they belong to.
    fn tally(&mut self, acked: Vec<Acked>) {
        for a in acked {
            if a.tag == REPLAYED {
                self.replayed_records += a.records as u64;
                continue;
            }
            let Some(summary) = self.sources.get_mut(a.tag) else {
                continue;
            };
            let records = a.records as u64;
            summary.ack_latencies.push(a.latency);
            match a.status() {
                AckStatus::Committed => {
                    // Records the gateway held already (sent before under
                    // another file name or batching) are not stored again.
                    summary.records_stored += a.ack.records_stored;
                    summary.records_already_stored += records.saturating_sub(a.ack.records_stored);
                    metrics::acked(&summary.dataset, "committed", records, a.latency);
                }
                AckStatus::Duplicate => {
                    summary.records_already_stored += records;
                    metrics::acked(&summary.dataset, "duplicate", records, a.latency);
                }
                _ => {
                    summary.records_rejected += records;
                    let reason = RejectReason::try_from(a.ack.reason)
                        .map_or("UNKNOWN", |r| r.as_str_name())
                        .to_owned();
                    metrics::rejected(&summary.dataset, &reason);
                    *summary.batches_rejected.entry(reason).or_default() += 1;
                    tracing::warn!(batch_id = %a.ack.batch_id, detail = %a.ack.detail, "gateway rejected a batch");
                }
            }
        }
    }
}

/// Tag of batches resent from an earlier run's spool.
const REPLAYED: usize = usize::MAX;

/// Where batches of one source are spooled.
struct Spooling {
    spool: Arc<Spool>,
    /// The source's checkpoint key (its path).
    key: String,
    fingerprint: String,
    /// Reading pauses while the spool holds more than this.
    max_bytes: u64,
}

impl Spooling {
    /// Writes a batch and its checkpoint durably. Waits while the spool is
    /// full, and while the disk is: reading stops with a clear error in the
    /// log, and resumes when space returns. Nothing is dropped.
    fn put(&self, batch: Batch, checkpoint: Checkpoint) -> Result<Spooled, AgentError> {
        let mut waited = false;
        while self.spool.bytes() > self.max_bytes {
            if !waited {
                tracing::warn!(
                    bytes = self.spool.bytes(),
                    limit = self.max_bytes,
                    "spool full: reading paused until the gateway acknowledges"
                );
                waited = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut delay = Duration::from_millis(500);
        loop {
            match self.spool.put(batch.clone(), &self.key, checkpoint.clone()) {
                Ok(spooled) => return Ok(spooled),
                Err(SpoolError::Io { path, source }) if is_out_of_space(&source) => {
                    let message = format!(
                        "no space left to spool at {}: reading paused until space returns",
                        path.display()
                    );
                    tracing::error!("{message}");
                    self.spool.record_error(&message);
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn is_out_of_space(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// How rows of one source are released.
struct Releasing {
    releaser: Arc<Releaser>,
    dataset: Dataset,
    today: Date,
    opt_out: Option<Arc<OptOutList>>,
}

/// Reads every row of one source (on a blocking thread), quarantining what
/// cannot be used, withholding opted-out people, and sending full batches
/// down `tx`.
fn read_source(
    mut reader: Box<dyn Source>,
    releasing: &Releasing,
    spooling: &Spooling,
    mut batcher: Batcher,
    mut report: QuarantineReport,
    tx: mpsc::Sender<Spooled>,
    progress: Progress,
) -> Result<SourceSummary, AgentError> {
    let name = report.path().file_stem().map_or_else(String::new, |s| {
        s.to_string_lossy()
            .trim_end_matches(".quarantine")
            .to_owned()
    });
    let mut shown = SourceProgress::start(progress, name, reader.total_bytes());
    let quarantine_err = |path: &Path| {
        let path = path.to_owned();
        move |source| AgentError::Quarantine { path, source }
    };
    let mut summary = SourceSummary::default();
    // Spools a full batch with the position to resume from (the start of the
    // row that did not fit), then hands it to the sender.
    let spool_and_send = |batch: Batch, at: Position, sequence: u64, complete: bool| {
        let checkpoint = Checkpoint {
            fingerprint: spooling.fingerprint.clone(),
            at,
            sequence,
            complete,
        };
        let spooled = spooling.put(batch, checkpoint)?;
        Ok::<_, AgentError>(tx.blocking_send(spooled).is_ok())
    };
    loop {
        let before = reader.position();
        let Some(row) = reader.next_row() else { break };
        let row = row?;
        summary.rows_read += 1;
        match row.outcome {
            RowOutcome::Quarantined(problem) => {
                *summary.quarantined.entry(problem.to_string()).or_default() += 1;
                report
                    .write(row.line, QUARANTINED, &problem)
                    .map_err(quarantine_err(report.path()))?;
            }
            RowOutcome::Valid {
                row: person,
                warnings,
            } => {
                for problem in &warnings {
                    *summary.warnings.entry(problem.to_string()).or_default() += 1;
                    report
                        .write(row.line, SENT_WITH_WARNING, problem)
                        .map_err(quarantine_err(report.path()))?;
                }
                let opted_out = person.nhs_number.as_deref().is_some_and(|n| {
                    releasing
                        .opt_out
                        .as_ref()
                        .is_some_and(|list| list.contains(n))
                });
                if opted_out {
                    summary.opted_out += 1;
                    continue;
                }
                summary.records_sent += 1;
                let record = releasing.releaser.release(
                    &person,
                    row.line,
                    &releasing.dataset,
                    releasing.today,
                );
                if let Some(batch) = batcher.push(record)
                    && !{
                        report.flush().map_err(quarantine_err(report.path()))?;
                        spool_and_send(batch, before, batcher.sequence(), false)?
                    }
                {
                    // Delivery has stopped (its error ends the run): leave
                    // the checkpoint where it is, so nothing is marked read
                    // that was not spooled.
                    shown.finish(summary.rows_read);
                    return Ok(summary);
                }
            }
        }
        if summary.rows_read % 4096 == 0 {
            shown.update(summary.rows_read, reader.bytes_read());
        }
    }
    let end = reader.position();
    report.flush().map_err(quarantine_err(report.path()))?;
    match batcher.flush() {
        Some(batch) => {
            let sequence = batcher.sequence();
            spool_and_send(batch, end, sequence, true)?;
        }
        None => spooling.spool.commit_checkpoint(
            &spooling.key,
            Checkpoint {
                fingerprint: spooling.fingerprint.clone(),
                at: end,
                sequence: batcher.sequence(),
                complete: true,
            },
        )?,
    }
    shown.finish(summary.rows_read);
    summary.quarantine_report = report.finish().map_err(|source| AgentError::Quarantine {
        path: PathBuf::new(),
        source,
    })?;
    Ok(summary)
}
