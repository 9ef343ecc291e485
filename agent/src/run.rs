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

use indicatif::{ProgressBar, ProgressStyle};
use joinery_crypto::keys::SecretKey;
use joinery_policies::SignedAgreement;
use joinery_policies::model::{Dataset, OptOut};
use joinery_proto::v1::{AckStatus, Batch, Hello, RejectReason};
use time::Date;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::batch::Batcher;
use crate::config::{AgentConfig, SourceConfig};
use crate::mapping::Mapping;
use crate::metrics;
use crate::opt_out::OptOutList;
use crate::quarantine::{QUARANTINED, QuarantineReport, SENT_WITH_WARNING};
use crate::release::{Releaser, withheld_by_agreement};
use crate::row::RowOutcome;
use crate::source::csv::CsvSource;
use crate::uploader::{Acked, Uploader};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Key(#[from] joinery_crypto::keys::KeyError),
    #[error(transparent)]
    Tls(#[from] joinery_crypto::tls::TlsError),
    #[error(transparent)]
    Mapping(#[from] crate::mapping::MappingError),
    #[error(transparent)]
    Source(#[from] crate::source::csv::CsvError),
    #[error(transparent)]
    Connect(#[from] joinery_proto::channel::ConnectError),
    #[error(transparent)]
    Upload(#[from] crate::uploader::UploadError),
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
}

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

/// How the run reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar on the terminal (hidden when stderr is not a terminal).
    Bar,
    Quiet,
}

/// Runs the agent once over every configured source.
pub async fn run(config: &AgentConfig, progress: Progress) -> Result<RunSummary, AgentError> {
    let span = tracing::info_span!("agent_run", organisation = %config.organisation);
    run_sources(config, progress).instrument(span).await
}

async fn run_sources(config: &AgentConfig, progress: Progress) -> Result<RunSummary, AgentError> {
    let key = SecretKey::load(&config.linkage_key)?;
    let tls = joinery_crypto::tls::client_config(&config.tls_files())?;
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
    let mut opened = Vec::new();
    for source in &config.sources {
        let SourceConfig::Csv { path, mapping } = source;
        let map = Mapping::load(mapping)?;
        if !signed.may_send(&config.organisation, &map.dataset) {
            return Err(AgentError::NotAllowed(format!(
                "agreement {} version {} does not let {} send dataset {} (mapping {})",
                agreement.id,
                agreement.version,
                config.organisation,
                map.dataset,
                mapping.display()
            )));
        }
        let reader = CsvSource::open(path, &map, mapping, today)?;
        let dataset = agreement
            .datasets
            .get(&map.dataset)
            .cloned()
            .ok_or_else(|| {
                AgentError::NotAllowed(format!("dataset {} is not in the agreement", map.dataset))
            })?;
        opened.push((path.clone(), map.dataset.clone(), dataset, reader));
    }

    let channel =
        joinery_proto::channel::connect(&config.gateway.address, config.server_name(), tls).await?;
    let hello = Hello {
        organisation: config.organisation.clone(),
        agreement_id: agreement.id.clone(),
        agreement_version: agreement.version,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        agreement_digest: signed.digest.clone(),
    };
    let mut uploader: Uploader<usize> =
        Uploader::open(channel, hello, config.max_in_flight).await?;
    // Leave headroom under the gateway's limit for framing.
    let max_batch_bytes = uploader.max_batch_bytes() / 2;
    let releaser = Arc::new(Releaser::new(&key));
    let mut summaries = Vec::new();

    for (index, (path, dataset, rules, reader)) in opened.into_iter().enumerate() {
        tracing::info!(source = %path.display(), %dataset, "reading source");
        let withheld_fields = withheld_by_agreement(reader.mapping(), &rules);
        if !withheld_fields.is_empty() {
            tracing::info!(%dataset, withheld = ?withheld_fields, "mapped fields the agreement does not allow are not sent");
        }
        let report = QuarantineReport::create(&config.quarantine_dir, &dataset, &path).map_err(
            |source| AgentError::Quarantine {
                path: config.quarantine_dir.clone(),
                source,
            },
        )?;
        let batcher = Batcher::new(&dataset, config.batch_size, max_batch_bytes);
        let (tx, mut rx) = mpsc::channel::<Batch>(config.max_in_flight);
        let releasing = Releasing {
            releaser: releaser.clone(),
            dataset: rules,
            today,
            opt_out: opt_out.clone(),
        };
        let reading = tokio::task::spawn_blocking(move || {
            read_source(reader, &releasing, batcher, report, tx, progress)
        });
        let mut acked = Vec::new();
        let sending = async {
            while let Some(batch) = rx.recv().await {
                acked.extend(uploader.send(index, batch).await?);
            }
            Ok::<_, AgentError>(())
        };
        sending
            .instrument(tracing::info_span!("source", %dataset))
            .await?;
        let mut summary = reading
            .await
            .map_err(|e| AgentError::Reader(e.to_string()))??;
        summary.source = path;
        summary.dataset = dataset;
        summary.withheld_fields = withheld_fields;
        metrics::rows(
            &summary.dataset,
            summary.rows_read,
            summary.quarantined_rows(),
            summary.opted_out,
            summary.records_sent,
        );
        summaries.push(summary);
        tally(&mut summaries, acked);
    }
    let rest = uploader.finish().await?;
    tally(&mut summaries, rest);
    Ok(RunSummary { sources: summaries })
}

fn tally(summaries: &mut [SourceSummary], acked: Vec<Acked<usize>>) {
    for a in acked {
        let Some(summary) = summaries.get_mut(a.tag) else {
            continue;
        };
        let records = a.records as u64;
        summary.ack_latencies.push(a.latency);
        match a.status() {
            AckStatus::Committed => {
                summary.records_stored += a.ack.records_stored;
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
    mut reader: CsvSource,
    releasing: &Releasing,
    mut batcher: Batcher,
    mut report: QuarantineReport,
    tx: mpsc::Sender<Batch>,
    progress: Progress,
) -> Result<SourceSummary, AgentError> {
    let bar = match progress {
        Progress::Bar => ProgressBar::new(reader.total_bytes()).with_style(
            ProgressStyle::with_template(
                "{msg} {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        Progress::Quiet => ProgressBar::hidden(),
    };
    bar.set_message(report.path().file_stem().map_or_else(String::new, |s| {
        s.to_string_lossy()
            .trim_end_matches(".quarantine")
            .to_owned()
    }));
    let quarantine_err = |path: &Path| {
        let path = path.to_owned();
        move |source| AgentError::Quarantine { path, source }
    };
    let mut summary = SourceSummary::default();
    let send = |batch: Batch| tx.blocking_send(batch).is_ok();
    while let Some(row) = reader.next_row() {
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
                    && !send(batch)
                {
                    break;
                }
            }
        }
        if summary.rows_read % 4096 == 0 {
            bar.set_position(reader.bytes_read());
        }
    }
    if let Some(batch) = batcher.flush() {
        send(batch);
    }
    bar.finish_and_clear();
    summary.quarantine_report = report.finish().map_err(|source| AgentError::Quarantine {
        path: PathBuf::new(),
        source,
    })?;
    Ok(summary)
}
