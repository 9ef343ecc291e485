//! The gateway's storage: the only module that speaks SQL.
//!
//! One code path serves both backends through sqlx's `Any` driver: SQLite (a
//! file under the data directory, the default) and PostgreSQL (production).
//! Each backend has its own migrations folder; queries use `$N` placeholders,
//! which both accept. A batch, its records and its events are written in one
//! transaction (with the other batches waiting then: `commits`), and a
//! batch already stored for the same organisation is recognised by its
//! primary key and never stored twice. Every change of data is audited in
//! the same transaction ([`crate::audit`]).

mod commits;
mod linkage;
mod links;
mod migrations;
mod population;
mod releases;
mod rotation;
mod rows;

pub use links::LinkChanges;
pub use population::{PopulationChanges, PopulationRead, SharedSnapshot, SnapshotId};
pub use releases::{NewRelease, Recorded};
pub use rotation::{TakenLinks, TakenModel, TakenOver};

pub use linkage::{
    EntityRecord, EntityScope, FittedModel, LinkageEntities, LinkageStatus, SpineAssignment,
    StoredModel,
};

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, ConnectOptions, Row};
use tokio::sync::Mutex;

use joinery_policies::AgreementRef;

use crate::audit::record::{AuditRecord, BatchDecision, Checkpoint, Entry};
use crate::rekey::{LinkMethod, StoredLinkage};
use rows::table_rows;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database URL must start with sqlite: or postgres:")]
    UnsupportedUrl,
    #[error("cannot open the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error(
        "PostgreSQL has no database {name:?}: create it (`createdb '{name}'`, or `CREATE DATABASE \"{name}\";` as a user who may) and start again"
    )]
    NoDatabase { name: String },
    #[error("cannot make the database file {path} readable by its owner only: {source}")]
    Private {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    #[error(
        "another linkage run was saved while this one ran: this one is dropped, and the next starts from what is stored"
    )]
    LinkageMovedOn,
    #[error(
        "this store already holds {released} released answers and a privacy ledger for {agreements} agreements: a rotated store takes over from the old one once, before it answers anyone"
    )]
    AlreadyAnswered { released: i64, agreements: i64 },
    #[error("the batch's commit ended without an outcome (the gateway is stopping): retry")]
    CommitAbandoned,
    #[error("the population cannot be loaded for analytics: {0}")]
    Symbols(#[from] crate::analytics::symbol::TooManySymbols),
}

/// Which engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A batch ready to store: already validated and re-keyed.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub organisation: String,
    pub batch_id: String,
    pub dataset: String,
    /// The full snapshot its records belong to, if any.
    pub snapshot: Option<String>,
    pub sequence: u64,
    pub agreement: AgreementRef,
    pub records: Vec<NewRecord>,
}

/// The record attributes stored in their own columns (and so not among a
/// record's free attributes, which `{ attribute: … }` breakdowns read).
pub const COLUMN_ATTRIBUTES: [&str; 3] = [SEX, BIRTH_MONTH, POSTCODE_DISTRICT];
pub const SEX: &str = "sex";
pub const BIRTH_MONTH: &str = "birth_month";
pub const POSTCODE_DISTRICT: &str = "postcode_district";

#[derive(Debug, Clone)]
pub struct NewRecord {
    pub person_id: String,
    /// What makes the record itself (its dataset, line and content, not
    /// its file's name or batch): stored once per organisation.
    pub record_key: String,
    pub source_row: u64,
    pub local_pseudonym: String,
    pub nhs_pseudonym: Option<String>,
    pub link_method: LinkMethod,
    pub sex: Option<String>,
    pub birth_month: Option<String>,
    pub postcode_district: Option<String>,
    /// Remaining attributes as a JSON object.
    pub attributes: String,
    pub events: Vec<NewEvent>,
    /// The record's re-keyed linkage encoding, when the agreement asks for one.
    pub linkage: Option<StoredLinkage>,
}

impl NewBatch {
    /// The audit entry of this batch's `outcome`.
    fn audit(&self, outcome: CommitOutcome) -> AuditRecord {
        AuditRecord::batch(
            &self.organisation,
            &self.agreement,
            &self.batch_id,
            &self.dataset,
            self.records.len(),
            match outcome {
                CommitOutcome::Committed(stored) => BatchDecision::Committed(stored),
                CommitOutcome::Duplicate => BatchDecision::Duplicate,
            },
        )
    }
}

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: String,
    pub event_date: String,
    pub attributes: String,
}

/// What committing a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Stored now, with this many records.
    Committed(u64),
    /// Already stored by an earlier delivery; nothing written.
    Duplicate,
}

/// Batches and records held for one organisation and dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetCount {
    pub organisation: String,
    pub dataset: String,
    pub batches: u64,
    pub records: u64,
}

/// Batches under one agreement version and dataset, from one organisation,
/// due for deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    pub agreement: AgreementRef,
    pub dataset: String,
    pub organisation: String,
    pub batches: u64,
    pub records: u64,
}

#[derive(Clone)]
pub struct Storage {
    pool: AnyPool,
    backend: Backend,
    /// SQLite allows one writer at a time; queueing writers here is fairer
    /// and faster than SQLite's sleep-and-retry busy handler.
    write_lock: Option<Arc<Mutex<()>>>,
    /// Batches waiting to be committed (`commits`).
    commits: Arc<commits::Commits>,
}

impl Backend {
    /// The engine a database URL names (`sqlite:`, `postgres:` or
    /// `postgresql:`).
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Self::Postgres)
        } else {
            None
        }
    }

    /// Bound parameters per `IN (…)` list ([`for_each_in`]). PostgreSQL:
    /// large (its limit is 65535), so one statement usually does. SQLite:
    /// small, because binding cost grows with statement size (measured: 1000
    /// records in 21 ms at 260 parameters per statement, 285 ms at 30000).
    fn parameters_per_statement(self) -> usize {
        match self {
            Self::Sqlite => 260,
            Self::Postgres => 30_000,
        }
    }
}

impl Storage {
    /// The URL of the default SQLite database inside `data_dir`.
    pub fn sqlite_url(data_dir: &Path) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            data_dir.join("joinery.db").display()
        )
    }

    /// Connects and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Self, StorageError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url).ok_or(StorageError::UnsupportedUrl)?;
        if let Some(file) = sqlite_file(url) {
            keep_private(&file).map_err(|source| StorageError::Private { path: file, source })?;
        }
        let mut options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
        options = match backend {
            Backend::Sqlite => options.max_connections(4).after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL for concurrent readers; FULL so a commit (and so an
                    // ack) survives power loss; wait rather than fail on a
                    // busy writer lock; once checkpointed, cut the WAL file
                    // back to 64 MiB (a linkage run's writes grow it far
                    // past); checkpoint every 64 MiB of WAL rather than 4, so
                    // a page several batches dirty is copied back once (ingest
                    // 4,900 -> 5,400 records/s, docs/scaling.md).
                    sqlx::raw_sql(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA busy_timeout = 30000; PRAGMA cache_size = -65536; \
                         PRAGMA journal_size_limit = 67108864; PRAGMA wal_autocheckpoint = 16384;",
                    )
                    .execute(conn)
                    .await?;
                    Ok(())
                })
            }),
            Backend::Postgres => options.max_connections(16),
        };
        // Statement logging is for debugging only; bound values are never logged.
        let connect = AnyConnectOptions::from_str(url)
            .map_err(StorageError::Connect)?
            .log_statements(log::LevelFilter::Trace)
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        let pool = options
            .connect_with(connect)
            .await
            .map_err(|e| connect_error(e, url))?;
        migrations::for_backend(backend).run(&pool).await?;
        Ok(Self {
            pool,
            backend,
            write_lock: (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(()))),
            commits: Arc::new(commits::Commits::new(backend)),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Retires `organisation`'s records of `dataset` from snapshots other
    /// than `snapshot` (and their events), audited, once that snapshot is
    /// held; returns how many records were retired. Refused (None) when no
    /// record of `snapshot` is held: a snapshot that never arrived replaces
    /// nothing.
    pub async fn replace_snapshot(
        &self,
        organisation: &str,
        dataset: &str,
        snapshot: &str,
        agreement: &AgreementRef,
    ) -> Result<Option<u64>, StorageError> {
        let _writing = match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let mut tx = self.pool.begin().await?;
        // Every record of a batch belongs to the batch's snapshot; a batch
        // purged by retention holds none.
        let held = sqlx::query(
            "SELECT COUNT(*) AS n FROM batches WHERE organisation = $1 AND dataset = $2 \
             AND snapshot = $3 AND record_count > 0 AND purged_at IS NULL",
        )
        .bind(organisation)
        .bind(dataset)
        .bind(snapshot)
        .fetch_one(&mut *tx)
        .await?;
        if count(&held, "n")? == 0 {
            return Ok(None);
        }
        let (changed, retired) = delete_batches_data(
            &mut tx,
            self.backend,
            "WHERE organisation = $1 AND dataset = $2 AND snapshot IS NOT NULL AND snapshot <> $3",
            |sql| {
                sqlx::query(AssertSqlSafe(sql))
                    .bind(organisation)
                    .bind(dataset)
                    .bind(snapshot)
            },
        )
        .await?;
        if retired > 0 {
            self.bump_generation(&mut tx, &changed).await?;
        }
        append_audit_in(
            &mut tx,
            &AuditRecord::snapshot_replaced(organisation, agreement, dataset, snapshot, retired),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(retired))
    }

    /// The (agreement, dataset) of every batch still holding data.
    pub async fn held_datasets(&self) -> Result<Vec<(AgreementRef, String)>, StorageError> {
        let rows = sqlx::query(
            "SELECT DISTINCT agreement_id, agreement_version, dataset FROM batches \
             WHERE purged_at IS NULL ORDER BY agreement_id, agreement_version, dataset",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let version: i64 = row.try_get("agreement_version")?;
                Ok((
                    AgreementRef::new(
                        row.try_get::<String, _>("agreement_id")?,
                        u32::try_from(version).unwrap_or(0),
                    ),
                    row.try_get("dataset")?,
                ))
            })
            .collect()
    }

    /// Deletes the records and events of batches of `dataset` sent under
    /// `agreement` and received before `received_before`
    /// (unix seconds). Each batch row is kept, marked purged, so a resent copy
    /// is still recognised and not stored again. With `dry_run`, only counts.
    pub async fn purge(
        &self,
        agreement: &AgreementRef,
        dataset: &str,
        received_before: i64,
        dry_run: bool,
    ) -> Result<Vec<Purge>, StorageError> {
        const DUE: &str = "agreement_id = $1 AND agreement_version = $2 AND dataset = $3 \
                           AND received_at < $4 AND purged_at IS NULL";
        let _writing = match (&self.write_lock, dry_run) {
            (Some(lock), false) => Some(lock.lock().await),
            _ => None,
        };
        // A statement over the due batches, its four parameters bound.
        let over_due = |sql: String| {
            sqlx::query(AssertSqlSafe(sql))
                .bind(agreement.id.as_str())
                .bind(i64::from(agreement.version))
                .bind(dataset)
                .bind(received_before)
        };
        let mut tx = self.pool.begin().await?;
        let rows = over_due(format!(
            "SELECT organisation, COUNT(*) AS batches, CAST(SUM(record_count) AS BIGINT) AS records \
             FROM batches WHERE {DUE} GROUP BY organisation ORDER BY organisation"
        ))
        .fetch_all(&mut *tx)
        .await?;
        let purges = rows
            .iter()
            .map(|row| {
                Ok(Purge {
                    agreement: agreement.clone(),
                    dataset: dataset.to_owned(),
                    organisation: row.try_get("organisation")?,
                    batches: count(row, "batches")?,
                    records: count(row, "records")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        if dry_run || purges.is_empty() {
            tx.rollback().await?;
            return Ok(purges);
        }
        let (changed, _) =
            delete_batches_data(&mut tx, self.backend, &format!("WHERE {DUE}"), over_due).await?;
        for purge in &purges {
            append_audit_in(
                &mut tx,
                &AuditRecord::retention(
                    &purge.organisation,
                    &purge.agreement,
                    &purge.dataset,
                    purge.batches,
                    purge.records,
                ),
            )
            .await?;
        }
        over_due(format!("UPDATE batches SET purged_at = $5 WHERE {DUE}"))
            .bind(time::OffsetDateTime::now_utc().unix_timestamp())
            .execute(&mut *tx)
            .await?;
        self.bump_generation(&mut tx, &changed).await?;
        tx.commit().await?;
        Ok(purges)
    }

    /// Appends an audit entry in its own transaction.
    pub async fn append_audit(&self, record: &AuditRecord) -> Result<u64, StorageError> {
        let _writing = match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let mut tx = self.pool.begin().await?;
        let seq = append_audit_in(&mut tx, record).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// The chain head: the last entry's number and hash.
    pub async fn audit_head(&self) -> Result<(u64, String), StorageError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok((count(&row, "seq")?, row.try_get("hash")?))
    }

    /// Up to `limit` audit entries after `after_seq`, in order.
    pub async fn audit_entries(
        &self,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Entry>, StorageError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, kind, actor, agreement_id, agreement_version, detail, prev_hash, hash \
             FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(to_i64(after_seq))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Entry {
                    seq: count(row, "seq")?,
                    at_ms: row.try_get("at_ms")?,
                    record: AuditRecord {
                        kind: row.try_get("kind")?,
                        actor: row.try_get("actor")?,
                        agreement_id: row.try_get("agreement_id")?,
                        agreement_version: u32::try_from(count(row, "agreement_version")?)
                            .unwrap_or(0),
                        detail: row.try_get("detail")?,
                    },
                    prev_hash: row.try_get("prev_hash")?,
                    hash: row.try_get("hash")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StorageError::from)
    }

    pub async fn add_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, at_ms, public_key, signature) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING",
        )
        .bind(to_i64(checkpoint.seq))
        .bind(&checkpoint.hash)
        .bind(checkpoint.at_ms)
        .bind(&checkpoint.public_key)
        .bind(&checkpoint.signature)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Checkpoints after `after_seq`, in order.
    pub async fn checkpoints(&self, after_seq: u64) -> Result<Vec<Checkpoint>, StorageError> {
        let rows = sqlx::query(
            "SELECT seq, hash, at_ms, public_key, signature FROM audit_checkpoints \
             WHERE seq > $1 ORDER BY seq",
        )
        .bind(to_i64(after_seq))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Checkpoint {
                    seq: count(row, "seq")?,
                    hash: row.try_get("hash")?,
                    at_ms: row.try_get("at_ms")?,
                    public_key: row.try_get("public_key")?,
                    signature: row.try_get("signature")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StorageError::from)
    }

    /// Batches and records per organisation and dataset, optionally for one
    /// organisation only.
    pub async fn dataset_counts(
        &self,
        organisation: Option<&str>,
    ) -> Result<Vec<DatasetCount>, StorageError> {
        let rows = sqlx::query(
            "SELECT organisation, dataset, COUNT(*) AS batches, CAST(SUM(record_count) AS BIGINT) AS records \
             FROM batches WHERE purged_at IS NULL AND ($1 = '' OR organisation = $1) \
             GROUP BY organisation, dataset ORDER BY organisation, dataset",
        )
        .bind(organisation.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DatasetCount {
                    organisation: row.try_get("organisation")?,
                    dataset: row.try_get("dataset")?,
                    batches: count(row, "batches")?,
                    records: count(row, "records")?,
                })
            })
            .collect()
    }

    /// The source rows stored for one organisation's dataset, in order (a
    /// row stored twice appears twice): what delivery checks compare with
    /// the extract.
    pub async fn stored_source_rows(
        &self,
        organisation: &str,
        dataset: &str,
    ) -> Result<Vec<u64>, StorageError> {
        let rows = sqlx::query(
            "SELECT source_row FROM records WHERE organisation = $1 AND dataset = $2 ORDER BY source_row",
        )
        .bind(organisation)
        .bind(dataset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| count(row, "source_row"))
            .collect::<Result<_, _>>()
            .map_err(StorageError::from)
    }

    /// Batches recognised as already stored (resent after a fault), from the
    /// audit log.
    pub async fn duplicate_batches(&self) -> Result<u64, StorageError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'batch' AND detail LIKE '%\"decision\":\"duplicate\"%'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(count(&row, "n")?)
    }
}

impl Storage {
    /// Marks, inside `tx`, that what analytics reads has changed, and which
    /// people it changed (`changed`: stored person ids or spine ids), so a
    /// population held in memory can read just those again
    /// ([`Storage::population_changes`]). The generation row is locked until
    /// `tx` commits, so generations are numbered in commit order.
    pub(super) async fn bump_generation(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        changed: &[impl AsRef<str>],
    ) -> Result<(), sqlx::Error> {
        let generation: i64 =
            sqlx::query_scalar("UPDATE data_generation SET n = n + 1 WHERE id = 1 RETURNING n")
                .fetch_one(&mut **tx)
                .await?;
        let mut changed: Vec<&str> = changed.iter().map(AsRef::as_ref).collect();
        changed.sort_unstable();
        changed.dedup();
        table_rows! {
            struct Changed<'a> in "population_changes" as POPULATION_CHANGES {
                person_id: &'a str => Text,
                generation: i64 => Integer,
            }
        }
        let changed: Vec<Changed> = changed
            .into_iter()
            .map(|person_id| Changed {
                person_id,
                generation,
            })
            .collect();
        POPULATION_CHANGES
            .write(tx, self.backend, "", &changed)
            .await
    }
}

/// Deletes, inside `tx`, the records and events of the batches that
/// `which` (a `WHERE` clause over `batches`) picks, its parameters bound by
/// `bound` (which turns a statement into a query), and what linkage held
/// of the records no longer held ([`linkage::forget_unheld`]); returns the
/// people that changed (those the records were about, and the people their
/// person ids had been joined into) and how many records went. The batch
/// rows stay.
async fn delete_batches_data<'q>(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    which: &str,
    bound: impl Fn(String) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
) -> Result<(Vec<String>, u64), sqlx::Error> {
    let of_batches =
        format!("(organisation, batch_id) IN (SELECT organisation, batch_id FROM batches {which})");
    let people = bound(format!(
        "SELECT DISTINCT person_id FROM records WHERE {of_batches}"
    ))
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|row| row.try_get(0))
    .collect::<Result<Vec<String>, _>>()?;
    bound(format!("DELETE FROM events WHERE {of_batches}"))
        .execute(&mut **tx)
        .await?;
    let records = bound(format!("DELETE FROM records WHERE {of_batches}"))
        .execute(&mut **tx)
        .await?
        .rows_affected();
    let mut changed = linkage::forget_unheld(tx, backend, &people).await?;
    changed.extend(people);
    Ok((changed, records))
}

/// Numbers, chains and stores an audit entry inside `tx`. Locking the chain
/// head row serialises appends in commit order, across gateways too.
async fn append_audit_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    record: &AuditRecord,
) -> Result<u64, StorageError> {
    let head = sqlx::query("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
        .fetch_one(&mut **tx)
        .await?;
    let seq = count(&head, "seq")?;
    let prev_hash: String = head.try_get("hash")?;
    let at_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let hash = crate::audit::record::entry_hash(seq, at_ms, record, &prev_hash);
    sqlx::query(
        "INSERT INTO audit_log (seq, at_ms, kind, actor, agreement_id, agreement_version, detail, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(to_i64(seq))
    .bind(at_ms)
    .bind(&record.kind)
    .bind(&record.actor)
    .bind(&record.agreement_id)
    .bind(i64::from(record.agreement_version))
    .bind(&record.detail)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(&hash)
        .execute(&mut **tx)
        .await?;
    Ok(seq)
}

/// `n` numbered placeholders from `$first`, comma-separated: an `IN` list.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `select … IN (…)` for each chunk of `ids`, handing every row to
/// `each`.
async fn for_each_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    per_statement: usize,
    select: &str,
    ids: &[impl AsRef<str>],
    mut each: impl FnMut(&AnyRow) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    for chunk in ids.chunks(per_statement) {
        let sql = format!("{select} IN ({})", placeholders(1, chunk.len()));
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(id.as_ref());
        }
        let mut rows = query.fetch(&mut **tx);
        while let Some(row) = rows.try_next().await? {
            each(&row)?;
        }
    }
    Ok(())
}

/// Reads a count column: BIGINT on PostgreSQL, INTEGER on SQLite; SUM of no
/// rows is NULL.
fn count(row: &AnyRow, column: &str) -> Result<u64, sqlx::Error> {
    let value: Option<i64> = row.try_get(column)?;
    Ok(value.unwrap_or(0).max(0) as u64)
}

/// Why connecting failed, with what to do where that is known: a
/// PostgreSQL database that does not exist (SQLSTATE 3D000) is named.
fn connect_error(error: sqlx::Error, url: &str) -> StorageError {
    let missing = error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "3D000");
    if !missing {
        return StorageError::Connect(error);
    }
    let name = url
        .split('?')
        .next()
        .and_then(|u| u.rsplit('/').next())
        .unwrap_or_default()
        .to_owned();
    StorageError::NoDatabase { name }
}

/// The file a SQLite URL names (none for an in-memory database).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| PathBuf::from(path))
}

/// Makes a SQLite database file owner-only (0600) before SQLite opens it,
/// creating it empty if new: the file holds person-level data, and SQLite
/// gives its WAL and shared-memory files the database file's mode.
fn keep_private(file: &Path) -> std::io::Result<()> {
    if !file.exists() {
        return joinery_crypto::files::write_private(file, b"", false);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use joinery_linkage::cluster::Link;

    #[tokio::test]
    async fn a_store_from_before_the_change_log_upgrades_with_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let url = Storage::sqlite_url(dir.path());
        sqlx::any::install_default_drivers();
        // The schema as the release before the population change log left
        // it, holding two children, one linked to the other's spine person.
        let old = AnyPool::connect(&url).await.unwrap();
        migrations::through(Backend::Sqlite, 12)
            .run(&old)
            .await
            .unwrap();
        sqlx::raw_sql(
            "INSERT INTO batches (organisation, batch_id, dataset, sequence, agreement_id, \
             agreement_version, record_count, received_at) VALUES ('LA1', 'b1', 'cin', 1, 'a', 1, 2, 0); \
             INSERT INTO records (person_id, organisation, batch_id, record_index, dataset, \
             source_row, local_pseudonym, link_method, sex, birth_month, attributes, record_key) VALUES \
             ('p1', 'LA1', 'b1', 0, 'cin', 1, 'l1', 'unlinked', 'female', '2015-04', '{}', 'k1'), \
             ('p2', 'LA1', 'b1', 1, 'cin', 2, 'l2', 'unlinked', 'male', '2016-05', '{}', 'k2'); \
             INSERT INTO events (person_id, organisation, batch_id, record_index, event_index, \
             event_type, event_date, attributes) VALUES \
             ('p1', 'LA1', 'b1', 0, 0, 'referral', '2025-01-02', '{}'), \
             ('p2', 'LA1', 'b1', 1, 0, 'referral', '2025-02-03', '{}'); \
             INSERT INTO person_spine (person_id, spine_id, method, linked_at) VALUES \
             ('p1', 'p1', 'unlinked', 0), ('p2', 'p1', 'fuzzy', 0); \
             UPDATE data_generation SET n = 7;",
        )
        .execute(&old)
        .await
        .unwrap();
        old.close().await;

        let storage = Storage::open(&url).await.unwrap();
        let mut interner = crate::analytics::Interner::default();
        let read = storage
            .population(&mut interner, crate::analytics::Shard::WHOLE, None)
            .await
            .unwrap();
        assert_eq!(read.generation, 7);
        assert_eq!(read.people.len(), 1, "p2 is on p1's spine");
        assert_eq!(read.people[0].events.len(), 2);
        // The log starts at the upgrade: a population loaded before it is
        // read afresh, one loaded since catches up by who changed.
        assert!(
            storage
                .population_changes(
                    6,
                    usize::MAX,
                    &mut interner,
                    crate::analytics::Shard::WHOLE,
                    None
                )
                .await
                .unwrap()
                .is_none()
        );
        let mut batch = NewBatch {
            snapshot: None,
            organisation: "LA1".to_owned(),
            batch_id: "b2".to_owned(),
            dataset: "cin".to_owned(),
            sequence: 2,
            agreement: AgreementRef::new("a", 1),
            records: Vec::new(),
        };
        batch.records.push(NewRecord {
            source_row: 3,
            ..bare_record("p2", "k3", "l2")
        });
        storage.commit_batch(batch).await.unwrap();
        let changes = storage
            .population_changes(
                7,
                usize::MAX,
                &mut interner,
                crate::analytics::Shard::WHOLE,
                None,
            )
            .await
            .unwrap()
            .expect("the log reaches back to the upgrade");
        // p2 changed: its own entry (it has none) and its spine person p1's
        // are replaced, p1 read again with both records.
        let key = crate::analytics::Person::key_of;
        let mut keys = changes.keys.clone();
        keys.sort_unstable();
        let mut expected = [key("p1"), key("p2")];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(changes.people.len(), 1);
        assert_eq!(changes.people[0].key, key("p1"));
        assert_eq!(changes.people[0].events.len(), 2);
    }

    /// A store as the release before records were keyed by content left
    /// it (keyed by batch and position; snapshots on each record; records
    /// from before content keys without one) upgrades with its data on
    /// both backends, and snapshots and exactly-once work on what it held.
    #[tokio::test]
    async fn a_store_keyed_by_batch_upgrades_to_records_keyed_by_content() {
        on_both_backends("records_by_content", upgrade_to_records_by_content).await;
    }

    async fn upgrade_to_records_by_content(url: String) {
        let url = url.as_str();
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url).unwrap();
        let old = AnyPool::connect(url).await.unwrap();
        migrations::through(backend, 14).run(&old).await.unwrap();
        sqlx::raw_sql(
            "INSERT INTO batches (organisation, batch_id, dataset, sequence, agreement_id, \
             agreement_version, record_count, received_at) VALUES \
             ('LA1', 'b0', 'cin', 1, 'a', 1, 2, 0), ('LA1', 'b1', 'cin', 2, 'a', 1, 1, 0), \
             ('LA1', 'b2', 'cin', 3, 'a', 1, 1, 0); \
             INSERT INTO records (person_id, organisation, batch_id, record_index, dataset, \
             source_row, local_pseudonym, link_method, attributes, record_key, snapshot) VALUES \
             ('p1', 'LA1', 'b0', 0, 'cin', 1, 'l1', 'unlinked', '{}', NULL, NULL), \
             ('p1', 'LA1', 'b0', 1, 'cin', 2, 'l1', 'unlinked', '{}', NULL, NULL), \
             ('p2', 'LA1', 'b1', 0, 'cin', 1, 'l2', 'unlinked', '{}', 'k-s1', 's1'), \
             ('p3', 'LA1', 'b2', 0, 'cin', 1, 'l3', 'unlinked', '{}', 'k-s2', 's2'); \
             INSERT INTO events (person_id, organisation, batch_id, record_index, event_index, \
             event_type, event_date, attributes) VALUES \
             ('p1', 'LA1', 'b0', 1, 0, 'referral', '2025-01-02', '{}'), \
             ('p2', 'LA1', 'b1', 0, 0, 'referral', '2025-02-03', '{}');",
        )
        .execute(&old)
        .await
        .unwrap();
        old.close().await;

        let storage = Storage::open(url).await.unwrap();
        let number = |sql: &'static str| {
            let pool = storage.pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(number("SELECT COUNT(*) FROM records").await, 4);
        assert_eq!(
            number("SELECT COUNT(*) FROM records WHERE record_key LIKE 'batch b0 %'").await,
            2,
            "records from before content keys keep their batch and position as key"
        );
        let snapshots: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT batch_id, snapshot FROM batches ORDER BY batch_id")
                .fetch_all(&storage.pool)
                .await
                .unwrap();
        assert_eq!(
            snapshots,
            [
                ("b0".to_owned(), None),
                ("b1".to_owned(), Some("s1".to_owned())),
                ("b2".to_owned(), Some("s2".to_owned()))
            ]
        );
        let agreement = AgreementRef::new("a", 1);
        assert_eq!(
            storage
                .replace_snapshot("LA1", "cin", "s2", &agreement)
                .await
                .unwrap(),
            Some(1),
            "s1's one record retired"
        );
        assert_eq!(number("SELECT COUNT(*) FROM records").await, 3);
        assert_eq!(number("SELECT COUNT(*) FROM events").await, 1);
        assert_eq!(
            storage
                .replace_snapshot("LA1", "cin", "s9", &agreement)
                .await
                .unwrap(),
            None,
            "a snapshot never delivered replaces nothing"
        );
        // The same content again, in another batch: stored once.
        let again = |batch_id: &str, key: &str| NewBatch {
            snapshot: Some("s2".to_owned()),
            ..la1_cin_batch(batch_id, vec![bare_record("p3", key, "l3")])
        };
        let stored = |batch| {
            let storage = storage.clone();
            async move { storage.commit_batch(batch).await.unwrap() }
        };
        assert_eq!(
            stored(again("b3", "k-s2")).await,
            CommitOutcome::Committed(0)
        );
        assert_eq!(
            stored(again("b4", "k-new")).await,
            CommitOutcome::Committed(1)
        );
        let mut interner = crate::analytics::Interner::default();
        let read = storage
            .population(&mut interner, crate::analytics::Shard::WHOLE, None)
            .await
            .unwrap();
        assert_eq!(read.people.len(), 2, "p1 and p3");
    }

    /// A local id delivered again (another record, another batch) keeps
    /// one encoding and one set of blocking keys, on both backends; the
    /// encoding's bytes, which travel as hex, are stored as bytes, and the
    /// blocking keys are read back for the rules that had them.
    #[tokio::test]
    async fn an_entity_delivered_again_keeps_one_encoding_and_one_set_of_keys() {
        on_both_backends("entity_twice", delivered_twice).await;
    }

    async fn delivered_twice(url: String) {
        let storage = Storage::open(&url).await.unwrap();
        let key_of = |person: &str, rule: u8| {
            let mut key = [rule; joinery_linkage::encode::BLOCK_KEY_LEN];
            key[..person.len()].copy_from_slice(person.as_bytes());
            key
        };
        let batch = |batch_id: &str, person: &str, key: &str| {
            let record = NewRecord {
                linkage: Some(StoredLinkage {
                    params_version: 1,
                    filters: vec![0xab; 16],
                    blocks: vec![Some(key_of(person, b'a')), None, Some(key_of(person, b'c'))],
                }),
                ..bare_record(person, key, &format!("local-{person}"))
            };
            la1_cin_batch(batch_id, vec![record])
        };
        let counts = || {
            let pool = storage.pool.clone();
            async move {
                let n = |sql| sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool);
                n("SELECT COUNT(*) FROM linkage_entities").await.unwrap()
            }
        };
        storage.commit_batch(batch("b1", "p1", "k1")).await.unwrap();
        assert_eq!(counts().await, 1, "one entity");
        storage.commit_batch(batch("b2", "p1", "k2")).await.unwrap();
        assert_eq!(counts().await, 1, "the same local id again: nothing new");
        storage.commit_batch(batch("b3", "p2", "k3")).await.unwrap();
        assert_eq!(counts().await, 2);
        let (filters, packed): (Vec<u8>, Vec<u8>) = sqlx::query_as(
            "SELECT filters, block_keys FROM linkage_entities WHERE person_id = 'p2'",
        )
        .fetch_one(&storage.pool)
        .await
        .unwrap();
        assert_eq!(
            filters,
            vec![0xab; 16],
            "bytes travel as hex and are stored as bytes"
        );
        assert_eq!(
            linkage::unpack_block_keys(&packed, 3),
            [Some(key_of("p2", b'a')), None, Some(key_of("p2", b'c'))]
        );
    }

    /// A store as the release before packed blocking keys left it (a row
    /// of `linkage_blocks` per key; the encodings of records retention had
    /// deleted still held) upgrades on both backends: each entity's keys
    /// are on its row, the unheld entity and its spine place are gone, the
    /// entity that was linked into its person is pending again, and the
    /// run count has moved on.
    #[tokio::test]
    async fn a_store_with_a_table_of_blocking_keys_upgrades_to_packed_keys() {
        on_both_backends("packed_block_keys", upgrade_to_packed_block_keys).await;
    }

    async fn upgrade_to_packed_block_keys(url: String) {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(&url).unwrap();
        let old = AnyPool::connect(&url).await.unwrap();
        migrations::through(backend, 15).run(&old).await.unwrap();
        let (a, b) = ("aa".repeat(16), "bb".repeat(16));
        let byte = match backend {
            Backend::Sqlite => "X'00'",
            Backend::Postgres => "'\\x00'",
        };
        sqlx::raw_sql(AssertSqlSafe(format!(
            "INSERT INTO batches (organisation, batch_id, dataset, sequence, agreement_id, \
             agreement_version, record_count, received_at) VALUES ('LA1', 'b1', 'cin', 1, 'a', 1, 1, 0); \
             INSERT INTO records (person_id, organisation, batch_id, record_index, dataset, \
             source_row, local_pseudonym, link_method, attributes, record_key) VALUES \
             ('p2', 'LA1', 'b1', 0, 'cin', 1, 'l2', 'unlinked', '{{}}', 'k2'), \
             ('p3', 'LA1', 'b1', 1, 'cin', 2, 'l3', 'unlinked', '{{}}', 'k3'); \
             INSERT INTO linkage_entities (person_id, organisation, local_pseudonym, params_version, \
             filters, linked) VALUES ('p1', 'LA2', 'l1', 5, {byte}, 1), ('p2', 'LA1', 'l2', 5, {byte}, 1), \
             ('p3', 'LA1', 'l3', 5, {byte}, 1); \
             INSERT INTO linkage_blocks (person_id, organisation, local_pseudonym, rule, block_key) VALUES \
             ('p1', 'LA2', 'l1', 0, '{a}'), ('p2', 'LA1', 'l2', 0, '{a}'), ('p2', 'LA1', 'l2', 2, '{b}'); \
             INSERT INTO person_spine (person_id, spine_id, method, linked_at) VALUES \
             ('p1', 'p1', 'unlinked', 0), ('p2', 'p1', 'fuzzy', 0), ('p3', 'p3', 'unlinked', 0); \
             INSERT INTO linkage_models (params_version, model, entities, fitted_at, runs) \
             VALUES (5, '{{}}', 3, 0, 3);"
        )))
        .execute(&old)
        .await
        .unwrap();
        old.close().await;

        let storage = Storage::open(&url).await.unwrap();
        let entities: Vec<(String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT person_id, block_keys, linked FROM linkage_entities ORDER BY person_id",
        )
        .fetch_all(&storage.pool)
        .await
        .unwrap();
        let key = |hex_text: &str| <[u8; 16]>::try_from(hex::decode(hex_text).unwrap()).unwrap();
        let keys: Vec<_> = entities
            .iter()
            .map(|(person, packed, linked)| {
                (
                    person.as_str(),
                    linkage::unpack_block_keys(packed, 3),
                    *linked,
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("p2", vec![Some(key(&a)), None, Some(key(&b))], 0),
                ("p3", vec![None, None, None], 1),
            ],
            "p1's records are gone, so is its encoding; p2, linked into p1, is pending"
        );
        assert_eq!(spine_places(&storage).await, ["p2", "p3"]);
        assert_eq!(storage.linkage_model(5).await.unwrap().unwrap().runs, 4);
    }

    /// The person ids with a place on the spine, in order.
    async fn spine_places(storage: &Storage) -> Vec<String> {
        sqlx::query_scalar("SELECT person_id FROM person_spine ORDER BY person_id")
            .fetch_all(&storage.pool)
            .await
            .unwrap()
    }

    /// A snapshot that no longer holds a local id takes its encoding and
    /// keys with its records, on both backends: the entity linked into the
    /// same person is pending again and the run count moves on (a
    /// gateway's kept entities held the one that went).
    #[tokio::test]
    async fn records_deleted_take_their_encodings_with_them() {
        on_both_backends("unheld_encodings", unheld_encodings).await;
    }

    async fn unheld_encodings(url: String) {
        let storage = Storage::open(&url).await.unwrap();
        storage
            .commit_batch(snapshot_batch(
                "b1",
                "s1",
                vec![
                    encoded_record("p1", "k1", "l1"),
                    encoded_record("p2", "k2", "l2"),
                ],
            ))
            .await
            .unwrap();
        let mut other = la1_cin_batch("b9", vec![encoded_record("p3", "k3", "l3")]);
        other.organisation = "LA2".to_owned();
        storage.commit_batch(other).await.unwrap();
        // A run linked p3 into p1's person and marked everyone linked.
        let model = FittedModel {
            model: "{}".to_owned(),
            quality: "[]".to_owned(),
            entities: 3,
        };
        let joined = [SpineAssignment {
            person_id: "p3".to_owned(),
            spine_id: "p1".to_owned(),
            method: LinkMethod::Fuzzy,
            score: Some(0.99),
        }];
        let marked = [
            ("p1", "LA1", "l1"),
            ("p2", "LA1", "l2"),
            ("p3", "LA2", "l3"),
        ];
        let params = joinery_linkage::LinkageParams::canonical_version(1);
        let mut read = LinkageEntities::new(&params);
        storage
            .linkage_entities(&params, EntityScope::All, &mut read)
            .await
            .unwrap();
        let number = |person: &str| {
            read.records
                .iter()
                .position(|r| r.person_id == person)
                .unwrap() as u32
        };
        let link = |a: &str, b: &str, probability: f64| Link {
            a: number(a).min(number(b)),
            b: number(a).max(number(b)),
            probability,
            weight: probability * 10.0,
        };
        let mut links = vec![link("p1", "p3", 0.99), link("p2", "p3", 0.955)];
        let runs = storage
            .save_linkage(
                1,
                Some(&model),
                None,
                &joined,
                &marked,
                &LinkChanges::between(&read, 1, None, &links),
            )
            .await
            .unwrap();
        assert!(!storage.linkage_pending(1).await.unwrap());
        let sorted = |mut links: Vec<Link>| {
            links.sort_by_key(|l| (l.a, l.b));
            links
        };
        assert_eq!(
            storage
                .stored_links(1, runs, &read)
                .await
                .unwrap()
                .map(sorted),
            Some(sorted(links.clone())),
            "the run's links read back exactly"
        );
        assert_eq!(
            storage.stored_links(1, runs - 1, &read).await.unwrap(),
            None
        );
        // A run building on them stores only what changed: p1's link goes,
        // p2's is another now.
        links = vec![link("p2", "p3", 0.97)];
        let earlier = storage.stored_links(1, runs, &read).await.unwrap().unwrap();
        let changes = LinkChanges::between(&read, 1, Some(&earlier), &links);
        let runs = storage
            .save_linkage(1, None, Some(runs), &[], &[], &changes)
            .await
            .unwrap();
        assert_eq!(
            storage.stored_links(1, runs, &read).await.unwrap(),
            Some(links)
        );
        let owners: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM linkage_links")
            .fetch_one(&storage.pool)
            .await
            .unwrap();
        assert_eq!(owners, 1, "p1 owns no link any more");

        // The next snapshot holds p2 only (a record key digests its
        // snapshot).
        storage
            .commit_batch(snapshot_batch(
                "b2",
                "s2",
                vec![encoded_record("p2", "k2-s2", "l2")],
            ))
            .await
            .unwrap();
        let agreement = AgreementRef::new("a", 1);
        assert_eq!(
            storage
                .replace_snapshot("LA1", "cin", "s2", &agreement)
                .await
                .unwrap(),
            Some(2)
        );
        let held: Vec<(String, i64)> =
            sqlx::query_as("SELECT person_id, linked FROM linkage_entities ORDER BY person_id")
                .fetch_all(&storage.pool)
                .await
                .unwrap();
        assert_eq!(
            held,
            [("p2".to_owned(), 1), ("p3".to_owned(), 0)],
            "p1's encoding went with its record; p3, linked into p1's person, is pending"
        );
        assert_eq!(
            spine_places(&storage).await,
            ["p2", "p3"],
            "no place on the spine for p1"
        );
        assert_eq!(
            storage.linkage_model(1).await.unwrap().unwrap().runs,
            runs + 1
        );
        assert!(storage.linkage_pending(1).await.unwrap());
        let owners: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM linkage_links")
            .fetch_one(&storage.pool)
            .await
            .unwrap();
        assert_eq!(owners, 0, "no stored link outlives the entities deleted");
        assert_eq!(
            storage.stored_links(1, runs + 1, &read).await.unwrap(),
            None
        );
    }

    /// An encoding goes with the dataset whose record brought it, though
    /// the local id's records of another dataset (without linkage fields)
    /// are still held: the person id is then its own person again, and so
    /// is the person id that was joined into it, on both backends.
    #[tokio::test]
    async fn an_encoding_goes_with_the_dataset_that_brought_it() {
        on_both_backends("encoding_by_dataset", encoding_by_dataset).await;
    }

    async fn encoding_by_dataset(url: String) {
        let storage = Storage::open(&url).await.unwrap();
        storage
            .commit_batch(snapshot_batch(
                "b1",
                "s1",
                vec![encoded_record("p1", "k1", "l1")],
            ))
            .await
            .unwrap();
        let mut cla = la1_cin_batch("b2", vec![bare_record("p1", "k2", "l1")]);
        cla.dataset = "cla".to_owned();
        storage.commit_batch(cla).await.unwrap();
        let mut camhs = la1_cin_batch("b3", vec![encoded_record("p2", "k3", "l2")]);
        camhs.organisation = "RX9".to_owned();
        storage.commit_batch(camhs).await.unwrap();
        // A run joined RX9's p2 into p1.
        let params = joinery_linkage::LinkageParams::canonical_version(1);
        let none = LinkageEntities::new(&params);
        storage
            .save_linkage(
                1,
                Some(&FittedModel {
                    model: "{}".to_owned(),
                    quality: "[]".to_owned(),
                    entities: 2,
                }),
                None,
                &[SpineAssignment {
                    person_id: "p2".to_owned(),
                    spine_id: "p1".to_owned(),
                    method: LinkMethod::Fuzzy,
                    score: Some(0.98),
                }],
                &[("p1", "LA1", "l1"), ("p2", "RX9", "l2")],
                &LinkChanges::between(&none, 1, None, &[]),
            )
            .await
            .unwrap();
        let generation = storage.data_generation().await.unwrap();

        // The next CIN snapshot no longer holds l1; its CLA record stays.
        storage
            .commit_batch(snapshot_batch(
                "b4",
                "s2",
                vec![encoded_record("p9", "k9", "l9")],
            ))
            .await
            .unwrap();
        let agreement = AgreementRef::new("a", 1);
        assert_eq!(
            storage
                .replace_snapshot("LA1", "cin", "s2", &agreement)
                .await
                .unwrap(),
            Some(1)
        );
        let encoded_ids: Vec<String> =
            sqlx::query_scalar("SELECT person_id FROM linkage_entities ORDER BY person_id")
                .fetch_all(&storage.pool)
                .await
                .unwrap();
        assert_eq!(
            encoded_ids,
            ["p2", "p9"],
            "p1's encoding went with its CIN record"
        );
        let places: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT person_id, spine_id, method FROM person_spine ORDER BY person_id",
        )
        .fetch_all(&storage.pool)
        .await
        .unwrap();
        let own = |p: &str| (p.to_owned(), p.to_owned(), "unlinked".to_owned());
        assert_eq!(
            places,
            [own("p1"), own("p2"), own("p9")],
            "p1 keeps its CLA record as its own person; p2, joined into it by what went, is its own again"
        );
        let changed: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT person_id FROM population_changes WHERE generation > $1 ORDER BY person_id",
        )
        .bind(generation)
        .fetch_all(&storage.pool)
        .await
        .unwrap();
        assert!(changed.contains(&"p2".to_owned()), "{changed:?}");
    }

    /// A store built under new keys takes the old store's last linkage run
    /// over by where each record came from: the same entities linked, with
    /// the old store's tiebreak numbers, the same links between them, and
    /// what only the new store holds pending.
    #[tokio::test]
    async fn a_new_store_takes_the_old_ones_links_over_by_record_origin() {
        on_both_backends("links_taken_over", links_taken_over).await;
    }

    /// Each record (person id, local pseudonym, organisation, source row)
    /// delivered with an encoding, and every entity as a run reads them.
    async fn encoded_entities(
        storage: &Storage,
        records: &[(&str, &str, &str, u64)],
    ) -> LinkageEntities {
        for (n, &(person, local, organisation, row)) in records.iter().enumerate() {
            let mut batch = la1_cin_batch(
                &format!("b{n}"),
                vec![NewRecord {
                    source_row: row,
                    ..encoded_record(person, &format!("k{row}"), local)
                }],
            );
            batch.organisation = organisation.to_owned();
            storage.commit_batch(batch).await.unwrap();
        }
        let params = joinery_linkage::LinkageParams::canonical_version(1);
        let mut read = LinkageEntities::new(&params);
        storage
            .linkage_entities(&params, EntityScope::All, &mut read)
            .await
            .unwrap();
        read
    }

    async fn links_taken_over(new_url: String) {
        let params = joinery_linkage::LinkageParams::canonical_version(1);
        let number = |read: &LinkageEntities, person: &str| {
            read.records
                .iter()
                .position(|r| r.person_id == person)
                .unwrap() as u32
        };
        let dir = tempfile::tempdir().unwrap();
        let old = Storage::open(&Storage::sqlite_url(dir.path()))
            .await
            .unwrap();
        let read = encoded_entities(
            &old,
            &[
                ("p1", "l1", "LA1", 1),
                ("p2", "l2", "LA1", 2),
                ("p3", "l3", "LA2", 1),
            ],
        )
        .await;
        let (p1, p3) = (number(&read, "p1"), number(&read, "p3"));
        let link = Link {
            a: p1.min(p3),
            b: p1.max(p3),
            probability: 0.97,
            weight: 9.5,
        };
        let model = FittedModel {
            model: "{}".to_owned(),
            quality: "[]".to_owned(),
            entities: 3,
        };
        let keys = [
            ("p1", "LA1", "l1"),
            ("p2", "LA1", "l2"),
            ("p3", "LA2", "l3"),
        ];
        old.save_linkage(
            1,
            Some(&model),
            None,
            &[],
            &keys,
            &LinkChanges::between(&read, 1, None, &[link]),
        )
        .await
        .unwrap();
        let taken = old.to_take_over().await.unwrap();
        assert_eq!(taken.links.len(), 1);
        assert_eq!(
            (taken.links[0].entities.len(), taken.links[0].links.len()),
            (3, 1)
        );

        // The new store: other person ids and pseudonyms for the same
        // records, and one record the old store never had.
        let new = Storage::open(&new_url).await.unwrap();
        encoded_entities(
            &new,
            &[
                ("q1", "m1", "LA1", 1),
                ("q2", "m2", "LA1", 2),
                ("q3", "m3", "LA2", 1),
                ("q4", "m4", "LA2", 9),
            ],
        )
        .await;
        new.take_over(&taken).await.unwrap();
        let runs = new.linkage_model(1).await.unwrap().unwrap().runs;
        let mut read = LinkageEntities::new(&params);
        new.linkage_entities(&params, EntityScope::All, &mut read)
            .await
            .unwrap();
        let (q1, q3) = (number(&read, "q1"), number(&read, "q3"));
        assert_eq!(
            new.stored_links(1, runs, &read).await.unwrap(),
            Some(vec![Link {
                a: q1.min(q3),
                b: q1.max(q3),
                ..link
            }]),
            "p1 and p3's link is q1 and q3's"
        );
        let linked: Vec<(&str, bool)> = read
            .records
            .iter()
            .map(|r| (r.person_id.as_str(), r.linked))
            .collect();
        assert_eq!(
            linked,
            [("q1", true), ("q2", true), ("q3", true), ("q4", false)]
        );
        assert_eq!(
            read.entities.tiebreaks()[q1 as usize],
            linkage::tiebreak(None, "p1", "LA1", "l1"),
            "ties broken as the old store broke them"
        );
    }

    /// Text with quotes, backslashes, braces, commas, the word NULL and
    /// letters beyond ASCII is stored as it was sent, on both backends.
    #[tokio::test]
    async fn awkward_text_is_stored_as_it_was_sent() {
        on_both_backends("awkward_text", awkward_text).await;
    }

    async fn awkward_text(url: String) {
        let storage = Storage::open(&url).await.unwrap();
        let attributes = r#"{"note":"say \"hi\" \\ {x,y}, NULL ü"}"#;
        let record = NewRecord {
            sex: Some("NULL".to_owned()),
            attributes: attributes.to_owned(),
            events: vec![NewEvent {
                event_type: "referral".to_owned(),
                event_date: "2025-01-02".to_owned(),
                attributes: attributes.to_owned(),
            }],
            ..bare_record("p1", "k1", "l1")
        };
        storage
            .commit_batch(la1_cin_batch("b1", vec![record]))
            .await
            .unwrap();
        let (sex, stored): (Option<String>, String) =
            sqlx::query_as("SELECT sex, attributes FROM records")
                .fetch_one(&storage.pool)
                .await
                .unwrap();
        assert_eq!(
            (sex.as_deref(), stored.as_str()),
            (Some("NULL"), attributes)
        );
        let event: String = sqlx::query_scalar("SELECT attributes FROM events")
            .fetch_one(&storage.pool)
            .await
            .unwrap();
        assert_eq!(event, attributes);
    }

    /// The quasi-identifiers read for identifiability include a birth
    /// quarter or year and a postcode area where an agreement coarsened
    /// them (they travel as free attributes), the month and district where
    /// not; a record with none is left out.
    #[tokio::test]
    async fn coarsened_quasi_identifiers_are_read_too() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&Storage::sqlite_url(dir.path()))
            .await
            .unwrap();
        let records = vec![
            NewRecord {
                sex: Some("female".to_owned()),
                birth_month: Some("2015-04".to_owned()),
                postcode_district: Some("LS6".to_owned()),
                ..bare_record("p1", "k1", "l1")
            },
            NewRecord {
                attributes: r#"{"birth_quarter":"2016-Q3","postcode_area":"LS","ethnicity":"A"}"#
                    .to_owned(),
                ..bare_record("p2", "k2", "l2")
            },
            NewRecord {
                attributes: r#"{"birth_year":"2017"}"#.to_owned(),
                ..bare_record("p3", "k3", "l3")
            },
            NewRecord {
                attributes: r#"{"ethnicity":"A"}"#.to_owned(),
                ..bare_record("p4", "k4", "l4")
            },
        ];
        storage
            .commit_batch(la1_cin_batch("b1", records))
            .await
            .unwrap();
        let mut seen: Vec<_> = storage
            .quasi_identifiers()
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.sex, s.birth, s.place))
            .collect();
        seen.sort();
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            seen,
            vec![
                (None, some("2016-Q3"), some("LS")),
                (None, some("2017"), None),
                (some("female"), some("2015-04"), some("LS6")),
            ]
        );
    }

    /// A record of `person` under `key` and local id `local`, holding
    /// nothing else.
    pub(super) fn bare_record(person: &str, key: &str, local: &str) -> NewRecord {
        NewRecord {
            person_id: person.to_owned(),
            record_key: key.to_owned(),
            source_row: 1,
            local_pseudonym: local.to_owned(),
            nhs_pseudonym: None,
            link_method: LinkMethod::Unlinked,
            sex: None,
            birth_month: None,
            postcode_district: None,
            attributes: "{}".to_owned(),
            events: Vec::new(),
            linkage: None,
        }
    }

    /// A record carrying an encoding under linkage parameters version 1.
    fn encoded_record(person: &str, key: &str, local: &str) -> NewRecord {
        NewRecord {
            linkage: Some(StoredLinkage {
                params_version: 1,
                filters: vec![1; 8],
                blocks: vec![Some([7; 16])],
            }),
            ..bare_record(person, key, local)
        }
    }

    /// [`la1_cin_batch`] in full snapshot `snapshot`.
    fn snapshot_batch(batch_id: &str, snapshot: &str, records: Vec<NewRecord>) -> NewBatch {
        NewBatch {
            snapshot: Some(snapshot.to_owned()),
            ..la1_cin_batch(batch_id, records)
        }
    }

    /// Organisation LA1's batch `batch_id` of dataset `cin`, under
    /// agreement `a` version 1, in no snapshot.
    pub(super) fn la1_cin_batch(batch_id: &str, records: Vec<NewRecord>) -> NewBatch {
        NewBatch {
            snapshot: None,
            organisation: "LA1".to_owned(),
            batch_id: batch_id.to_owned(),
            dataset: "cin".to_owned(),
            sequence: 1,
            agreement: AgreementRef::new("a", 1),
            records,
        }
    }

    /// Runs `test` on a fresh SQLite store, then on a fresh PostgreSQL
    /// database named after `name` when a server answers.
    pub(super) async fn on_both_backends<F: std::future::Future<Output = ()>>(
        name: &str,
        test: impl Fn(String) -> F,
    ) {
        let dir = tempfile::tempdir().unwrap();
        test(Storage::sqlite_url(dir.path())).await;
        if let Some(url) = scratch_postgres(name).await {
            test(url).await;
        }
    }

    /// A fresh PostgreSQL database named after the test, or `None`, said
    /// loudly past the harness's capture, when no server answers at
    /// `JOINERY_TEST_POSTGRES_URL` (a failure instead with
    /// `JOINERY_REQUIRE_POSTGRES=1`).
    pub(super) async fn scratch_postgres(name: &str) -> Option<String> {
        use std::io::Write;
        let admin = std::env::var("JOINERY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let required = std::env::var("JOINERY_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
        sqlx::any::install_default_drivers();
        let pool = match AnyPool::connect(&admin).await {
            Ok(pool) => pool,
            Err(e) => {
                let message =
                    format!("SKIPPED the PostgreSQL half of {name}: no server at {admin} ({e})");
                assert!(!required, "{message} (JOINERY_REQUIRE_POSTGRES=1)");
                let _ = writeln!(std::io::stderr(), "\n*** {message} ***\n");
                return None;
            }
        };
        let database = format!("joinery_unit_{name}");
        for sql in [
            format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
            format!("CREATE DATABASE {database}"),
        ] {
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
        }
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Some(format!("{base}/{database}"))
    }

    /// Text compares byte by byte on PostgreSQL as on SQLite, whatever
    /// collation the database was created with: no column is left to the
    /// database's (a migration adding one must say `COLLATE "C"`).
    #[tokio::test]
    async fn every_postgres_text_column_compares_byte_by_byte() {
        let Some(url) = scratch_postgres("bytewise_text").await else {
            return;
        };
        let storage = Storage::open(&url).await.unwrap();
        let other: Vec<String> = sqlx::query_scalar(
            "SELECT table_name || '.' || column_name FROM information_schema.columns \
             WHERE table_schema = current_schema() AND data_type = 'text' \
             AND table_name <> '_sqlx_migrations' \
             AND collation_name IS DISTINCT FROM 'C' ORDER BY 1",
        )
        .fetch_all(&storage.pool)
        .await
        .unwrap();
        assert_eq!(other, Vec::<String>::new());
    }

    #[tokio::test]
    async fn one_gateway_holds_the_linkage_lease_until_it_runs_out_or_is_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&Storage::sqlite_url(dir.path()))
            .await
            .unwrap();
        assert!(storage.take_linkage_lease("a", 180).await.unwrap());
        assert!(
            storage.take_linkage_lease("a", 180).await.unwrap(),
            "renewed"
        );
        assert!(!storage.take_linkage_lease("b", 180).await.unwrap());
        // Another's release changes nothing; the holder's frees it.
        storage.release_linkage_lease("b").await.unwrap();
        assert!(!storage.take_linkage_lease("b", 180).await.unwrap());
        storage.release_linkage_lease("a").await.unwrap();
        assert!(storage.take_linkage_lease("b", 180).await.unwrap());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_sqlite_database_and_its_wal_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&Storage::sqlite_url(dir.path()))
            .await
            .unwrap();
        storage.data_generation().await.unwrap();
        let file = dir.path().join("joinery.db");
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&dir.path().join("joinery.db-wal")), 0o600);
        drop(storage);
        // One made open before (as earlier versions did) is closed again.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        Storage::open(&Storage::sqlite_url(dir.path()))
            .await
            .unwrap();
        assert_eq!(mode(&file), 0o600);
    }

    #[tokio::test]
    async fn the_population_is_read_by_person_and_its_generation_moves_with_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&Storage::sqlite_url(dir.path()))
            .await
            .unwrap();
        let before = storage.data_generation().await.unwrap();
        let record = |person: &str, event: &str| NewRecord {
            person_id: person.to_owned(),
            record_key: format!("{person}-{event}"),
            source_row: 1,
            local_pseudonym: format!("local-{person}"),
            nhs_pseudonym: None,
            link_method: LinkMethod::Unlinked,
            sex: Some("female".to_owned()),
            birth_month: Some("2015-04".to_owned()),
            postcode_district: None,
            attributes: "{}".to_owned(),
            events: vec![NewEvent {
                event_type: event.to_owned(),
                event_date: "2025-01-02".to_owned(),
                attributes: r#"{"source":"3A"}"#.to_owned(),
            }],
            linkage: None,
        };
        let batch = NewBatch {
            snapshot: None,
            organisation: "E08000099".to_owned(),
            batch_id: "b1".to_owned(),
            dataset: "cin".to_owned(),
            sequence: 1,
            agreement: AgreementRef::new("a", 1),
            records: vec![
                record("p1", "referral"),
                record("p1", "cp_plan_start"),
                record("p2", "referral"),
            ],
        };
        storage.commit_batch(batch.clone()).await.unwrap();
        let after = storage.data_generation().await.unwrap();
        assert!(after > before, "a stored batch moves the generation");
        // A duplicate changes nothing.
        storage.commit_batch(batch).await.unwrap();
        assert_eq!(storage.data_generation().await.unwrap(), after);
        let read = storage
            .population(
                &mut crate::analytics::Interner::default(),
                crate::analytics::Shard::WHOLE,
                None,
            )
            .await
            .unwrap();
        assert_eq!(read.generation, after);
        let mut people = read.people;
        people.sort_by_key(|p| p.events.len());
        assert_eq!(people.len(), 2);
        assert_eq!(people[1].events.len(), 2);
        assert_eq!(&*people[1].events[0].attributes["source"], "3A");
        assert_eq!(people[1].birth_month.as_deref(), Some("2015-04"));
        assert!(people[1].is_in("cin"));
    }

    /// A snapshot one gateway shares is read by another at the generation
    /// it was exported at, however the data moved since, and only while
    /// the sharing gateway holds it open; SQLite has none to share.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_shared_snapshot_reads_the_generation_it_was_exported_at() {
        on_both_backends("shared_snapshot", shared_snapshot).await;
    }

    async fn shared_snapshot(url: String) {
        use crate::analytics::{Interner, Shard};
        // What is not a snapshot id never reaches the database.
        for not_an_id in ["", "1'; DROP TABLE records; --", "00000003 0000001B-1"] {
            assert_eq!(SnapshotId::parse(not_an_id), None, "{not_an_id:?}");
        }
        let storage = Storage::open(&url).await.unwrap();
        let first = la1_cin_batch("b1", vec![bare_record("p1", "k1", "l1")]);
        storage.commit_batch(first).await.unwrap();
        let shared = storage.shared_snapshot().await.unwrap();
        let second = la1_cin_batch("b2", vec![bare_record("p2", "k2", "l2")]);
        storage.commit_batch(second).await.unwrap();
        let now = storage.data_generation().await.unwrap();
        assert!(now > shared.generation);
        let mut interner = Interner::default();
        let id = match storage.backend() {
            Backend::Postgres => shared.id.clone().expect("PostgreSQL shares its snapshots"),
            Backend::Sqlite => {
                assert_eq!(shared.id, None);
                return;
            }
        };
        let read = storage
            .population(&mut interner, Shard::WHOLE, Some(&id))
            .await
            .unwrap();
        assert_eq!((read.generation, read.people.len()), (shared.generation, 1));
        let changes = storage
            .population_changes(0, usize::MAX, &mut interner, Shard::WHOLE, Some(&id))
            .await
            .unwrap()
            .expect("the change log reaches back");
        assert_eq!(changes.generation, shared.generation);
        let read = storage
            .population(&mut interner, Shard::WHOLE, None)
            .await
            .unwrap();
        assert_eq!((read.generation, read.people.len()), (now, 2));
        // Let go, its snapshot is gone (once the pool has rolled the
        // dropped transaction back, which it does in the background).
        drop(shared);
        let mut gone = false;
        for _ in 0..100 {
            if storage
                .population(&mut interner, Shard::WHOLE, Some(&id))
                .await
                .is_err()
            {
                gone = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(gone, "a snapshot let go still reads");
    }
}
