//! Committing delivered batches, several to a transaction (group commit).
//!
//! Every batch waiting when a writer comes free is written in one
//! transaction: one commit and one flush of the write-ahead log for the
//! group, and an index page that several of its batches touch written
//! once, instead of one of each per batch. A batch is still acknowledged
//! only once the transaction holding it has committed. Should a group's
//! transaction fail, each of its batches is tried again alone, so one batch
//! cannot sink the others.
//!
//! Writers: one on SQLite (it allows one at a time), [`POSTGRES_WRITERS`]
//! on PostgreSQL. Each takes what is waiting when it starts, up to
//! [`GROUP_RECORDS`] records.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::{Semaphore, oneshot};

use super::rows::table_rows;
use super::{Backend, CommitOutcome, NewBatch, NewRecord, Storage, StorageError};
use super::{append_audit_in, count, to_i64};

/// Groups committed at once on PostgreSQL (each on its own connection).
const POSTGRES_WRITERS: usize = 8;
/// The most records one group takes (a batch larger than this is a group
/// of its own).
const GROUP_RECORDS: usize = 16_000;

/// The batches waiting to be committed, and the writers that take them.
pub(super) struct Commits {
    waiting: Mutex<Vec<Waiting>>,
    writers: Semaphore,
}

/// A batch waiting, and where its outcome goes.
struct Waiting {
    batch: NewBatch,
    outcome: oneshot::Sender<Result<CommitOutcome, StorageError>>,
}

impl Commits {
    pub(super) fn new(backend: Backend) -> Self {
        Self {
            waiting: Mutex::new(Vec::new()),
            writers: Semaphore::new(match backend {
                Backend::Sqlite => 1,
                Backend::Postgres => POSTGRES_WRITERS,
            }),
        }
    }

    /// The queue (a panic while it was held left it whole: each change is
    /// one push or one drain).
    fn waiting(&self) -> MutexGuard<'_, Vec<Waiting>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The batches waiting longest, up to [`GROUP_RECORDS`] records (and
    /// at least one batch, if any waits).
    fn take_group(&self) -> Vec<Waiting> {
        let mut waiting = self.waiting();
        let mut records = 0;
        let mut taken = 0;
        for next in waiting.iter() {
            records += next.batch.records.len();
            if taken > 0 && records > GROUP_RECORDS {
                break;
            }
            taken += 1;
        }
        waiting.drain(..taken).collect()
    }
}

table_rows! {
    /// A record as stored, and the table it is stored in.
    struct RecordRow<'a> in "records" as RECORDS {
        person_id: &'a str => Text,
        organisation: &'a str => Text,
        batch_id: &'a str => Text,
        record_index: usize => Integer,
        dataset: &'a str => Text,
        source_row: u64 => Integer,
        local_pseudonym: &'a str => Text,
        nhs_pseudonym: Option<&'a str> => Text,
        link_method: &'a str => Text,
        sex: Option<&'a str> => Text,
        birth_month: Option<&'a str> => Text,
        postcode_district: Option<&'a str> => Text,
        attributes: &'a str => Text,
        record_key: &'a str => Text,
    }
}

impl<'a> RecordRow<'a> {
    fn new(batch: &'a NewBatch, record_index: usize, record: &'a NewRecord) -> Self {
        Self {
            person_id: &record.person_id,
            organisation: &batch.organisation,
            batch_id: &batch.batch_id,
            record_index,
            dataset: &batch.dataset,
            source_row: record.source_row,
            local_pseudonym: &record.local_pseudonym,
            nhs_pseudonym: record.nhs_pseudonym.as_deref(),
            link_method: record.link_method.as_str(),
            sex: record.sex.as_deref(),
            birth_month: record.birth_month.as_deref(),
            postcode_district: record.postcode_district.as_deref(),
            attributes: &record.attributes,
            record_key: &record.record_key,
        }
    }
}

table_rows! {
    /// An event as stored, and the table it is stored in.
    struct EventRow<'a> in "events" as EVENTS {
        person_id: &'a str => Text,
        organisation: &'a str => Text,
        batch_id: &'a str => Text,
        record_index: usize => Integer,
        event_index: usize => Integer,
        event_type: &'a str => Text,
        event_date: &'a str => Text,
        attributes: &'a str => Text,
    }
}

impl Storage {
    /// Stores a batch, its records and events, unless the same organisation
    /// already delivered a batch with this id; returns once the transaction
    /// holding it has committed.
    pub async fn commit_batch(&self, batch: NewBatch) -> Result<CommitOutcome, StorageError> {
        let (outcome, committed) = oneshot::channel();
        self.commits.waiting().push(Waiting { batch, outcome });
        // A writer for every batch queued, each taking what waits when it
        // starts (so none is left behind), spawned so that a group is
        // finished even if the caller that queued it goes away.
        let storage = self.clone();
        tokio::spawn(async move { storage.commit_waiting().await });
        committed
            .await
            .unwrap_or(Err(StorageError::CommitAbandoned))
    }

    /// Commits the batches waiting, as one group, when a writer is free.
    async fn commit_waiting(&self) {
        let Ok(_writer) = self.commits.writers.acquire().await else {
            return;
        };
        let group = self.commits.take_group();
        if group.is_empty() {
            return;
        }
        crate::metrics::commit_group(group.len());
        let _writing = match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let batches: Vec<&NewBatch> = group.iter().map(|w| &w.batch).collect();
        match self.commit_group(&batches).await {
            Ok(outcomes) => {
                for (waiting, outcome) in group.into_iter().zip(outcomes) {
                    let _ = waiting.outcome.send(Ok(outcome));
                }
            }
            Err(error) if group.len() > 1 => {
                tracing::warn!(batches = group.len(), %error, "batches could not be committed together: committing each alone");
                for waiting in group {
                    let alone = self
                        .commit_group(&[&waiting.batch])
                        .await
                        .map(|outcomes| outcomes[0]);
                    let _ = waiting.outcome.send(alone);
                }
            }
            Err(error) => {
                if let Some(waiting) = group.into_iter().next() {
                    let _ = waiting.outcome.send(Err(error));
                }
            }
        }
    }

    /// Writes `batches` in one transaction; returns each one's outcome.
    async fn commit_group(
        &self,
        batches: &[&NewBatch],
    ) -> Result<Vec<CommitOutcome>, StorageError> {
        let mut tx = self.pool.begin().await?;
        let mut changed = Vec::new();
        let mut outcomes = Vec::with_capacity(batches.len());
        for batch in batches {
            outcomes.push(self.write_batch(&mut tx, batch, &mut changed).await?);
        }
        // What analytics reads changed unless every batch was a duplicate.
        if outcomes
            .iter()
            .any(|o| matches!(o, CommitOutcome::Committed(_)))
        {
            self.bump_generation(&mut tx, &changed).await?;
        }
        for (batch, outcome) in batches.iter().zip(&outcomes) {
            append_audit_in(&mut tx, &batch.audit(*outcome)).await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Writes one batch inside `tx`, adding the people whose records it
    /// stored to `changed`.
    async fn write_batch<'b>(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        batch: &'b NewBatch,
        changed: &mut Vec<&'b str>,
    ) -> Result<CommitOutcome, StorageError> {
        let inserted = sqlx::query(
            "INSERT INTO batches (organisation, batch_id, dataset, sequence, agreement_id, \
             agreement_version, record_count, received_at, snapshot) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (organisation, batch_id) DO NOTHING",
        )
        .bind(&batch.organisation)
        .bind(&batch.batch_id)
        .bind(&batch.dataset)
        .bind(to_i64(batch.sequence))
        .bind(&batch.agreement.id)
        .bind(i64::from(batch.agreement.version))
        .bind(to_i64(batch.records.len() as u64))
        .bind(time::OffsetDateTime::now_utc().unix_timestamp())
        .bind(&batch.snapshot)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(CommitOutcome::Duplicate);
        }

        // Records already stored (by an earlier delivery of the same lines
        // under any name or batching) are skipped, and so are their events.
        let records: Vec<RecordRow> = batch
            .records
            .iter()
            .enumerate()
            .map(|(index, record)| RecordRow::new(batch, index, record))
            .collect();
        let inserted = RECORDS
            .write_returning(
                tx,
                self.backend,
                "ON CONFLICT (person_id, organisation, record_key) DO NOTHING RETURNING record_index",
                &records,
            )
            .await?;
        let mut stored = HashSet::new();
        for row in inserted {
            stored.insert(count(&row, "record_index")? as usize);
        }

        let events: Vec<EventRow> = batch
            .records
            .iter()
            .enumerate()
            .filter(|(index, _)| stored.contains(index))
            .flat_map(|(index, record)| {
                record
                    .events
                    .iter()
                    .enumerate()
                    .map(move |(event_index, event)| EventRow {
                        person_id: &record.person_id,
                        organisation: &batch.organisation,
                        batch_id: &batch.batch_id,
                        record_index: index,
                        event_index,
                        event_type: &event.event_type,
                        event_date: &event.event_date,
                        attributes: &event.attributes,
                    })
            })
            .collect();
        EVENTS.write(tx, self.backend, "", &events).await?;
        self.insert_linkage(tx, batch).await?;
        changed.extend(stored.iter().map(|&i| batch.records[i].person_id.as_str()));
        Ok(CommitOutcome::Committed(stored.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::tests::{bare_record, la1_cin_batch, on_both_backends, scratch_postgres};

    /// Batch `n`: three records of its own people.
    fn batch(n: usize) -> NewBatch {
        let records = (0..3)
            .map(|r| {
                bare_record(
                    &format!("p{n}-{r}"),
                    &format!("k{n}-{r}"),
                    &format!("l{n}-{r}"),
                )
            })
            .collect();
        la1_cin_batch(&format!("b{n}"), records)
    }

    /// Delivers every batch at once, as concurrent sessions would; returns
    /// each one's outcome, in order.
    async fn delivered_at_once(
        storage: &Storage,
        batches: Vec<NewBatch>,
    ) -> Vec<Result<CommitOutcome, StorageError>> {
        let deliveries: Vec<_> = batches
            .into_iter()
            .map(|batch| {
                let storage = storage.clone();
                tokio::spawn(async move { storage.commit_batch(batch).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for delivery in deliveries {
            outcomes.push(delivery.await.unwrap());
        }
        outcomes
    }

    async fn number(storage: &Storage, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&storage.pool)
            .await
            .unwrap()
    }

    /// Batches waiting together are committed in one transaction, and each
    /// still gets its own outcome and its own audit entry: a batch sent
    /// twice is stored once, the same lines under another batch id add no
    /// record.
    #[tokio::test]
    async fn batches_waiting_together_are_committed_together_each_with_its_own_outcome() {
        on_both_backends("group_commit", committed_together).await;
    }

    async fn committed_together(url: String) {
        let storage = Storage::open(&url).await.unwrap();
        let before = storage.data_generation().await.unwrap();
        let mut batches: Vec<NewBatch> = (0..10).map(batch).collect();
        batches.push(batch(0));
        batches.push(NewBatch {
            batch_id: "b1-again".to_owned(),
            ..batch(1)
        });
        let outcomes: Vec<CommitOutcome> = delivered_at_once(&storage, batches)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();

        use CommitOutcome::{Committed, Duplicate};
        let twice = [outcomes[0], outcomes[10]];
        assert!(
            twice.contains(&Committed(3)) && twice.contains(&Duplicate),
            "{twice:?}"
        );
        let same_lines = [outcomes[1], outcomes[11]];
        assert!(
            same_lines.contains(&Committed(3)) && same_lines.contains(&Committed(0)),
            "{same_lines:?}"
        );
        assert!(
            outcomes[2..10].iter().all(|o| *o == Committed(3)),
            "{outcomes:?}"
        );
        assert_eq!(number(&storage, "SELECT COUNT(*) FROM records").await, 30);
        assert_eq!(
            number(
                &storage,
                "SELECT COUNT(*) FROM audit_log WHERE kind = 'batch'"
            )
            .await,
            12,
            "every delivery audited"
        );
        let generations = storage.data_generation().await.unwrap() - before;
        assert!(
            (1..11).contains(&generations),
            "11 batches stored in {generations} transactions: none grouped"
        );
    }

    /// A batch with more values than one SQLite statement may bind is
    /// written in several, and every record it stores is reported.
    #[tokio::test]
    async fn a_batch_larger_than_one_statement_is_stored_whole() {
        on_both_backends("group_commit_large", |url| async move {
            let storage = Storage::open(&url).await.unwrap();
            let records = (0..2_500)
                .map(|r| bare_record(&format!("p{r}"), &format!("k{r}"), &format!("l{r}")))
                .collect();
            let outcome = storage
                .commit_batch(la1_cin_batch("large", records))
                .await
                .unwrap();
            assert_eq!(outcome, CommitOutcome::Committed(2_500));
            assert_eq!(
                number(&storage, "SELECT COUNT(*) FROM records").await,
                2_500
            );
        })
        .await;
    }

    /// A batch the database refuses (PostgreSQL stores no NUL in text)
    /// fails alone: the batches waiting with it are committed.
    #[tokio::test]
    async fn a_batch_the_database_refuses_fails_alone_not_with_its_group() {
        let Some(url) = scratch_postgres("group_commit_refused").await else {
            return;
        };
        let storage = Storage::open(&url).await.unwrap();
        let mut refused = batch(9);
        refused.records[1].attributes = "{\"note\": \"a\u{0}b\"}".to_owned();
        let mut batches: Vec<NewBatch> = (0..4).map(batch).collect();
        batches.insert(2, refused);
        let outcomes = delivered_at_once(&storage, batches).await;
        assert!(outcomes[2].is_err(), "{:?}", outcomes[2]);
        for (i, outcome) in outcomes.iter().enumerate().filter(|(i, _)| *i != 2) {
            assert_eq!(
                *outcome.as_ref().unwrap(),
                CommitOutcome::Committed(3),
                "batch {i}"
            );
        }
        assert_eq!(number(&storage, "SELECT COUNT(*) FROM records").await, 12);
        assert_eq!(
            number(&storage, "SELECT COUNT(*) FROM batches").await,
            4,
            "nothing of the refused batch is stored"
        );
    }
}
