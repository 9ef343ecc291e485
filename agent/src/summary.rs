//! What a run did, per source and in all: rows read, sent, stored,
//! quarantined and withheld, acknowledgements tallied by source, and the
//! exit status `joinery agent run` reports.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use joinery_proto::v1::{AckStatus, RejectReason};

use crate::metrics;
use crate::transport::Acked;

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
    pub(crate) fn absorb(&mut self, read: SourceSummary) {
        self.rows_read = read.rows_read;
        self.records_sent = read.records_sent;
        self.quarantined = read.quarantined;
        self.warnings = read.warnings;
        self.opted_out = read.opted_out;
        self.quarantine_report = read.quarantine_report;
    }

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

/// Tag of batches resent from an earlier run's spool.
pub(crate) const REPLAYED: usize = usize::MAX;

impl RunSummary {
    /// Counts acknowledgements into the sources they belong to.
    pub(crate) fn tally(&mut self, acked: Vec<Acked>) {
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
