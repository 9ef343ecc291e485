//! One agent run, as a sequence of named steps:
//!
//! 1. `Admitted::check`: the linkage key and TLS credentials load, and the
//!    agreement is fully signed, in force, and has its opt-out list if it
//!    says the National Data Opt-out applies;
//! 2. `open_sources`: every source opens (each mapping bound to its file)
//!    and the agreement lets this organisation send each dataset — all
//!    before anything is sent;
//! 3. what an interrupted run left in the spool is resent;
//! 4. `Run::deliver` per source part: resume from its checkpoint, read it
//!    through the [`pipeline`](crate::pipeline) stages on a blocking thread
//!    while delivery sends what they spool;
//! 5. the last acknowledgements are tallied ([`crate::summary`]), full
//!    snapshots delivered whole replace the earlier ones, and the gateway's
//!    signed audit checkpoints are kept.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use joinery_policies::SignedAgreement;
use joinery_policies::model::OptOut;
use joinery_proto::v1::ingest_client::IngestClient;
use joinery_proto::v1::{Hello, SnapshotDelivered};
use time::{Date, OffsetDateTime};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::batch::Batcher;
use crate::config::AgentConfig;
use crate::delivery::Delivery;
use crate::keyholders::Keyholders;
use crate::keys::ReleaseKeys;
use crate::metrics;
use crate::opt_out::OptOutList;
use crate::pipeline::{Releasing, Screening, Spooling, Stages, Withholding};
use crate::progress::Progress;
use crate::quarantine::QuarantineReport;
use crate::release::{Releaser, withheld_by_agreement};
use crate::source::Source;
use crate::spool::{Spool, Spooled};
use crate::summary::{REPLAYED, RunSummary, SourceSummary};
use crate::transport::Acked;
use crate::uploader::Grpc;

pub use crate::error::AgentError;

/// Runs the agent once over every configured source.
pub async fn run(config: &AgentConfig, progress: Progress) -> Result<RunSummary, AgentError> {
    let span = tracing::info_span!("agent_run", organisation = %config.organisation);
    run_sources(config, progress).instrument(span).await
}

async fn run_sources(config: &AgentConfig, progress: Progress) -> Result<RunSummary, AgentError> {
    let now = OffsetDateTime::now_utc();
    let admitted = Admitted::check(config, now)?;
    let opened = open_sources(config, &admitted.signed, now.date())?;
    let snapshots = snapshots_in(&opened);

    let spool = Arc::new(Spool::open(&config.spool_dir)?);
    let transport = Grpc {
        gateway: config.gateway.clone(),
        tls: admitted.tls.clone(),
        hello: admitted.hello(config),
        window: config.max_in_flight,
    };
    let retry_for = Duration::from_secs(config.retry_for_secs);
    let delivery = Delivery::new(transport, retry_for, spool.clone());
    let agreement = &admitted.signed.agreement;
    let keyholders = match agreement.linkage.nhs_number_keyholders.as_slice() {
        [] => None,
        names => Some(
            Keyholders::connect(
                config,
                &agreement.id,
                names,
                &admitted.keys,
                admitted.tls.clone(),
            )
            .await?,
        ),
    };
    let mut run = Run {
        config,
        today: now.date(),
        releaser: Arc::new(Releaser::new(
            &admitted.keys,
            agreement.linkage.params().as_ref(),
            keyholders,
        )?),
        opt_out: admitted.opt_out.clone(),
        spool,
        delivery,
        acked: Vec::new(),
        reports: BTreeSet::new(),
        max_batch_bytes: 0,
    };
    let replayed_batches = run.replay().await?;
    // Leave headroom under the gateway's limit for framing.
    run.max_batch_bytes = run.delivery.max_batch_bytes().await? / 2;
    let mut sources = Vec::new();
    for (index, part) in opened.into_iter().enumerate() {
        sources.push(run.deliver(index, part, progress).await?);
    }
    run.acked.extend(run.delivery.finish().await?);
    let mut summary = RunSummary {
        sources,
        replayed_batches,
        reconnections: run.delivery.reconnections(),
        ..RunSummary::default()
    };
    summary.tally(run.acked);
    close(config, &admitted, snapshots, &mut summary).await?;
    Ok(summary)
}

/// What a run may start with: its keys, and an agreement it may send under.
struct Admitted {
    keys: ReleaseKeys,
    tls: rustls::ClientConfig,
    signed: SignedAgreement,
    opt_out: Option<Arc<OptOutList>>,
}

impl Admitted {
    fn check(config: &AgentConfig, now: OffsetDateTime) -> Result<Self, AgentError> {
        let keys = ReleaseKeys::load(config)?;
        if config.local_id_key.is_none() {
            tracing::warn!(
                "local ids are pseudonymised under the shared linkage key: another agency of the agreement, with the gateway's operator, could test guesses of them; give this agency its own local_id_key (docs/key-rotation.md)"
            );
        }
        let tls = joinery_crypto::tls::client_config(&config.tls_files())?;
        let expiry = joinery_crypto::tls::expiry(&config.tls_files())?;
        metrics::tls_expiry(expiry.certificate, expiry.ca);
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
        Ok(Self {
            keys,
            tls,
            signed,
            opt_out,
        })
    }

    /// How a session introduces this agent.
    fn hello(&self, config: &AgentConfig) -> Hello {
        Hello {
            organisation: config.organisation.to_string(),
            agreement_id: self.signed.agreement.id.clone(),
            agreement_version: self.signed.agreement.version,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            agreement_digest: self.signed.digest.clone(),
        }
    }
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

/// Opens every source, binding each mapping to its file, and checks the
/// agreement lets this organisation send each dataset.
fn open_sources(
    config: &AgentConfig,
    signed: &SignedAgreement,
    today: Date,
) -> Result<Vec<Opened>, AgentError> {
    let agreement = &signed.agreement;
    let mut opened = Vec::new();
    for source in &config.sources {
        let context = crate::source::ReadContext {
            today,
            limits: config.limits,
        };
        let parts = crate::format::open(source, &config.registry, context)?;
        let snapshot = if source.snapshot() {
            snapshot_id(&parts)
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
            let rules = agreement
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
                rules,
                reader: part.source,
                snapshot: snapshot.clone(),
            });
        }
    }
    Ok(opened)
}

/// A full snapshot's id: the same for every part of it, and across an
/// interrupted run, while its files are unchanged.
fn snapshot_id(parts: &[crate::format::Part]) -> String {
    let mut fingerprints: Vec<String> = parts.iter().map(|p| p.source.fingerprint()).collect();
    fingerprints.sort_unstable();
    let dataset = parts.first().map_or("", |p| p.dataset.as_str());
    let identity: String = std::iter::once(dataset)
        .chain(fingerprints.iter().map(String::as_str))
        .map(|part| format!("{part}\0"))
        .collect();
    let digest = ring::digest::digest(&ring::digest::SHA256, identity.as_bytes());
    hex::encode(&digest.as_ref()[..16])
}

/// The full snapshots among the parts: (dataset, snapshot id), once each.
fn snapshots_in(opened: &[Opened]) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = opened
        .iter()
        .filter(|o| !o.snapshot.is_empty())
        .map(|o| (o.dataset.clone(), o.snapshot.clone()))
        .collect();
    seen.dedup();
    seen
}

/// What delivering the sources one after another shares.
struct Run<'a> {
    config: &'a AgentConfig,
    today: Date,
    releaser: Arc<Releaser>,
    opt_out: Option<Arc<OptOutList>>,
    spool: Arc<Spool>,
    delivery: Delivery<Grpc>,
    acked: Vec<Acked>,
    /// Datasets whose quarantine report this run has started.
    reports: BTreeSet<String>,
    max_batch_bytes: usize,
}

impl Run<'_> {
    /// Resends whatever an interrupted run left in the spool; returns how
    /// many batches.
    async fn replay(&mut self) -> Result<u64, AgentError> {
        let leftovers = self.spool.pending()?;
        let batches = leftovers.len() as u64;
        if batches > 0 {
            tracing::info!(
                batches,
                "resending batches left in the spool by an earlier run"
            );
        }
        for spooled in leftovers {
            self.acked
                .extend(self.delivery.send(REPLAYED, spooled).await?);
        }
        Ok(batches)
    }

    /// Reads one part from where the last run left it, through the
    /// pipeline, while delivery sends what it spools.
    async fn deliver(
        &mut self,
        index: usize,
        opened: Opened,
        progress: Progress,
    ) -> Result<SourceSummary, AgentError> {
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
        let checkpoint = self
            .spool
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
            return Ok(summary);
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
        let append = (checkpoint.is_some() && !complete) || !self.reports.insert(dataset.clone());
        let report = QuarantineReport::create(&self.config.quarantine_dir, &dataset, &path, append)
            .map_err(|source| AgentError::Quarantine {
                path: self.config.quarantine_dir.clone(),
                source,
            })?;
        let (tx, mut rx) = mpsc::channel::<Spooled>(self.config.max_in_flight);
        let stages = Stages {
            screening: Screening::new(report),
            withholding: Withholding(self.opt_out.clone()),
            releasing: Releasing {
                releaser: self.releaser.clone(),
                dataset: rules,
                today: self.today,
            },
            batcher: Batcher::new(
                &dataset,
                &table,
                self.config.batch_size,
                self.max_batch_bytes,
                checkpoint.map_or(0, |c| c.sequence),
            )
            .in_snapshot(&snapshot),
            spooling: Spooling {
                spool: self.spool.clone(),
                key,
                fingerprint,
                max_bytes: self.config.spool_max_bytes,
                delivery: tx,
            },
        };
        let reading =
            tokio::task::spawn_blocking(move || crate::pipeline::read(reader, stages, progress));
        let sending = async {
            while let Some(spooled) = rx.recv().await {
                self.acked.extend(self.delivery.send(index, spooled).await?);
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
        Ok(summary)
    }
}

/// After the batches: full snapshots delivered whole (nothing rejected)
/// replace the earlier ones — which must happen — and the gateway's signed
/// audit checkpoints are kept, which may fail.
async fn close(
    config: &AgentConfig,
    admitted: &Admitted,
    snapshots: Vec<(String, String)>,
    run: &mut RunSummary,
) -> Result<(), AgentError> {
    let agreement = &admitted.signed.agreement;
    let (complete, incomplete): (Vec<_>, Vec<_>) =
        snapshots.into_iter().partition(|(dataset, _)| {
            !run.sources
                .iter()
                .any(|s| &s.dataset == dataset && s.records_rejected > 0)
        });
    for (dataset, _) in &incomplete {
        tracing::warn!(%dataset, "snapshot not complete at the gateway (batches rejected); earlier snapshots kept");
    }
    let channel = match joinery_proto::channel::connect(
        &config.gateway.address,
        config.gateway.server_name(),
        admitted.tls.clone(),
    )
    .await
    {
        Ok(channel) => channel,
        Err(e) if complete.is_empty() => {
            tracing::warn!(error = %e, "could not keep the gateway's audit checkpoints");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
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
    Ok(())
}
