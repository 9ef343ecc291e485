//! The stages one source's rows go through, on a blocking thread, from the
//! reader to the spool; [`read`] runs them in order:
//!
//! 1. the [`Source`] reads a raw row, its table's fields (its position
//!    before the row is the checkpoint a batch ending there resumes from);
//!    mapping ([`Source::map`]) makes it a canonical row through the table's
//!    mapping, validated, with the person an event table's row belongs to;
//! 2. [`Screening`]: a quarantined row is reported by line and counted, a
//!    valid row's warnings are reported and it goes on;
//! 3. [`Withholding`]: a person on the National Data Opt-out list is
//!    withheld, and counted;
//! 4. release ([`Releasing`]): only what the agreement lists, pseudonymised
//!    and coarsened as it says, [`CHUNK`] rows at a time (their NHS numbers
//!    go to the keyholders together);
//! 5. batching ([`Batcher`]): records into content-addressed batches;
//! 6. [`Spooling`]: each batch written durably with its checkpoint, then
//!    handed to delivery through a bounded channel, so a slow gateway slows
//!    reading rather than filling memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use joinery_policies::model::Dataset;
use joinery_proto::v1::Batch;
use time::Date;
use tokio::sync::mpsc;

use crate::batch::Batcher;
use crate::error::AgentError;
use crate::opt_out::OptOutList;
use crate::person::PersonRow;
use crate::progress::{Progress, SourceProgress};
use crate::quarantine::{QUARANTINED, QuarantineReport, SENT_WITH_WARNING};
use crate::release::Releaser;
use crate::row::RowOutcome;
use crate::source::{Position, Source, SourceRow};
use crate::spool::{Checkpoint, Spool, SpoolError, Spooled};
use crate::summary::SourceSummary;

/// Stage 2: what cannot be used is reported by line and counted, never sent.
pub struct Screening {
    report: QuarantineReport,
}

impl Screening {
    pub fn new(report: QuarantineReport) -> Self {
        Self { report }
    }

    /// The row's person, if it can be used (its warnings reported).
    fn screen(
        &mut self,
        row: SourceRow,
        summary: &mut SourceSummary,
    ) -> Result<Option<(u64, PersonRow)>, AgentError> {
        match row.outcome {
            RowOutcome::Quarantined(problem) => {
                *summary.quarantined.entry(problem.to_string()).or_default() += 1;
                self.report
                    .write(row.line, QUARANTINED, &problem)
                    .map_err(|e| self.failed(e))?;
                Ok(None)
            }
            RowOutcome::Valid {
                row: person,
                warnings,
            } => {
                for problem in &warnings {
                    *summary.warnings.entry(problem.to_string()).or_default() += 1;
                    self.report
                        .write(row.line, SENT_WITH_WARNING, problem)
                        .map_err(|e| self.failed(e))?;
                }
                Ok(Some((row.line, person)))
            }
        }
    }

    /// Makes what is reported so far durable (before a batch is spooled, so
    /// a checkpoint never passes a row whose report could be lost).
    fn flush(&mut self) -> Result<(), AgentError> {
        self.report.flush().map_err(|e| self.failed(e))
    }

    /// The report's name in progress lines: its dataset.
    fn name(&self) -> String {
        self.report
            .path()
            .file_stem()
            .map_or_else(String::new, |s| {
                s.to_string_lossy()
                    .trim_end_matches(".quarantine")
                    .to_owned()
            })
    }

    fn finish(self) -> Result<PathBuf, AgentError> {
        self.report
            .finish()
            .map_err(|source| AgentError::Quarantine {
                path: PathBuf::new(),
                source,
            })
    }

    fn failed(&self, source: std::io::Error) -> AgentError {
        AgentError::Quarantine {
            path: self.report.path().to_owned(),
            source,
        }
    }
}

/// Stage 3: people on the National Data Opt-out list (when the agreement
/// says it applies) are withheld before anything is pseudonymised.
pub struct Withholding(pub Option<Arc<OptOutList>>);

impl Withholding {
    fn withholds(&self, person: &PersonRow) -> bool {
        person
            .nhs_number
            .as_deref()
            .is_some_and(|n| self.0.as_ref().is_some_and(|list| list.contains(n)))
    }
}

/// Stage 4: how rows of one dataset are released.
pub struct Releasing {
    pub releaser: Arc<Releaser>,
    pub dataset: Dataset,
    pub today: Date,
}

/// Stage 6: where batches of one source are spooled, and who takes them.
pub struct Spooling {
    pub spool: Arc<Spool>,
    /// The source's checkpoint key (its path).
    pub key: String,
    pub fingerprint: String,
    /// Reading pauses while the spool holds more than this.
    pub max_bytes: u64,
    /// Delivery's end of the channel.
    pub delivery: mpsc::Sender<Spooled>,
}

impl Spooling {
    /// Spools `batch` with the position to resume from (the start of the
    /// first row not in it) and hands it to delivery; false when delivery
    /// has stopped (its error ends the run).
    fn send(
        &self,
        batch: Batch,
        at: Position,
        sequence: u64,
        complete: bool,
    ) -> Result<bool, AgentError> {
        let spooled = self.put(batch, self.checkpoint(at, sequence, complete))?;
        Ok(self.delivery.blocking_send(spooled).is_ok())
    }

    /// Marks the source read to `at` with nothing left to send.
    fn read_to(&self, at: Position, sequence: u64) -> Result<(), AgentError> {
        Ok(self
            .spool
            .commit_checkpoint(&self.key, self.checkpoint(at, sequence, true))?)
    }

    fn checkpoint(&self, at: Position, sequence: u64, complete: bool) -> Checkpoint {
        Checkpoint {
            fingerprint: self.fingerprint.clone(),
            at,
            sequence,
            complete,
        }
    }

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

/// The stages of one source, set up by the run.
pub struct Stages {
    pub screening: Screening,
    pub withholding: Withholding,
    pub releasing: Releasing,
    pub batcher: Batcher,
    pub spooling: Spooling,
}

/// Reads every row of `reader` through the stages (on a blocking thread);
/// returns what happened.
pub fn read(
    mut reader: Box<dyn Source>,
    stages: Stages,
    progress: Progress,
) -> Result<SourceSummary, AgentError> {
    let Stages {
        mut screening,
        withholding,
        releasing,
        mut batcher,
        spooling,
    } = stages;
    let mut shown = SourceProgress::start(progress, screening.name(), reader.total_bytes());
    let mut summary = SourceSummary::default();
    // Rows waiting to be released together, each with the position before it.
    let mut pending: Vec<(Position, (u64, PersonRow))> = Vec::with_capacity(CHUNK);
    loop {
        let before = reader.position();
        let Some(raw) = reader.next_raw() else { break };
        summary.rows_read += 1;
        if summary.rows_read % 4096 == 0 {
            shown.update(summary.rows_read, reader.bytes_read());
        }
        let row = reader.map(raw?);
        let Some(person) = screening.screen(row, &mut summary)? else {
            continue;
        };
        if withholding.withholds(&person.1) {
            summary.opted_out += 1;
            continue;
        }
        summary.records_sent += 1;
        pending.push((before, person));
        if pending.len() >= CHUNK
            && !release(
                &mut pending,
                &releasing,
                &mut batcher,
                &mut screening,
                &spooling,
            )?
        {
            // Delivery has stopped: the checkpoint stays where it is, so
            // nothing is marked read that was not spooled.
            shown.finish(summary.rows_read);
            return Ok(summary);
        }
    }
    let end = reader.position();
    if !release(
        &mut pending,
        &releasing,
        &mut batcher,
        &mut screening,
        &spooling,
    )? {
        shown.finish(summary.rows_read);
        return Ok(summary);
    }
    screening.flush()?;
    match batcher.flush() {
        Some(batch) => {
            spooling.send(batch, end, batcher.sequence(), true)?;
        }
        None => spooling.read_to(end, batcher.sequence())?,
    }
    shown.finish(summary.rows_read);
    summary.quarantine_report = screening.finish()?;
    Ok(summary)
}

/// Rows released together: one round to the keyholders for their NHS
/// numbers when the agreement names any.
pub const CHUNK: usize = 1000;

/// Releases the `pending` rows and batches their records, spooling each
/// full batch with the position before the first row not in it; false when
/// delivery has stopped.
fn release(
    pending: &mut Vec<(Position, (u64, PersonRow))>,
    releasing: &Releasing,
    batcher: &mut Batcher,
    screening: &mut Screening,
    spooling: &Spooling,
) -> Result<bool, AgentError> {
    let (positions, rows): (Vec<Position>, Vec<(u64, PersonRow)>) = pending.drain(..).unzip();
    let records = releasing
        .releaser
        .release_all(&rows, &releasing.dataset, releasing.today)?;
    for (record, before) in records.into_iter().zip(positions) {
        if let Some(batch) = batcher.push(record) {
            screening.flush()?;
            if !spooling.send(batch, before, batcher.sequence(), false)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}
