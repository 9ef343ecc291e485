//! Retention: the gateway deletes data its agreements no longer allow it to
//! keep — batches older than their dataset's `retention_days`, and everything
//! sent under an agreement that has ended. It runs on a schedule inside
//! `joinery gateway serve` and on demand with `joinery gateway retention`
//! (`--dry-run` to preview). Data sent under an agreement version the gateway
//! does not hold is kept and reported: the gateway never guesses a rule.

use std::time::Duration;

use joinery_policies::AgreementRef;
use time::OffsetDateTime;

use crate::agreements::{Agreements, LiveAgreements};
use crate::storage::{Purge, Storage, StorageError};

/// What one retention pass did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub purged: Vec<Purge>,
    /// (agreement, dataset) held under no loaded agreement.
    pub ungoverned: Vec<(AgreementRef, String)>,
}

impl RetentionReport {
    pub fn records(&self) -> u64 {
        self.purged.iter().map(|p| p.records).sum()
    }
}

/// How many data generations of the population change log a pass keeps
/// ([`Storage::prune_population_changes`]): a gateway whose population in
/// memory is older reads everyone again instead of only who changed.
pub const CHANGE_LOG_GENERATIONS: i64 = 10_000;

/// One retention pass at `now`; a real one also prunes the population
/// change log.
pub async fn run(
    storage: &Storage,
    agreements: &Agreements,
    now: OffsetDateTime,
    dry_run: bool,
) -> Result<RetentionReport, StorageError> {
    let mut report = RetentionReport::default();
    for (agreement, dataset) in storage.held_datasets().await? {
        let rule = agreements.get(&agreement).and_then(|signed| {
            let ended = now > signed.agreement.expires.end();
            signed
                .agreement
                .datasets
                .get(&dataset)
                .map(|d| (ended, d.retention_days))
        });
        let Some((ended, retention_days)) = rule else {
            report.ungoverned.push((agreement, dataset));
            continue;
        };
        let cutoff = if ended {
            // The agreement has ended: nothing sent under it may be kept.
            now.unix_timestamp() + 1
        } else {
            (now - time::Duration::days(i64::from(retention_days))).unix_timestamp()
        };
        report
            .purged
            .extend(storage.purge(&agreement, &dataset, cutoff, dry_run).await?);
    }
    if !dry_run {
        storage
            .prune_population_changes(CHANGE_LOG_GENERATIONS)
            .await?;
    }
    Ok(report)
}

/// Runs retention every `interval` until the gateway stops.
pub async fn every(
    storage: Storage,
    agreements: LiveAgreements,
    interval: Duration,
    mut stopping: crate::background::Stopping,
) {
    let mut ticks = tokio::time::interval(interval);
    while stopping.tick(&mut ticks).await {
        let in_force = agreements.current();
        match run(&storage, &in_force, OffsetDateTime::now_utc(), false).await {
            Ok(report) => {
                for p in &report.purged {
                    crate::metrics::retention_deleted(&p.organisation, &p.dataset, p.records);
                    tracing::info!(agreement = %p.agreement.id, version = p.agreement.version, dataset = %p.dataset, organisation = %p.organisation, batches = p.batches, records = p.records, "retention: deleted");
                }
                for (agreement, dataset) in &report.ungoverned {
                    tracing::warn!(agreement = %agreement.id, version = agreement.version, %dataset, "retention: data held under an agreement the gateway has not loaded; kept");
                }
            }
            Err(e) => tracing::error!(error = %e, "retention pass failed; will retry"),
        }
    }
}
