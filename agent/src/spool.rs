//! The durable spool: every batch is written and fsynced to disk before it is
//! sent, and deleted only when the gateway acknowledges it; each source's
//! reading position is committed right after the batch that covers it. A
//! restarted agent first resends what the spool holds, then resumes each
//! source where its checkpoint says — so no acknowledged record is lost and
//! the gateway (which stores a batch id once) stores nothing twice.
//!
//! Layout of the spool directory: `batches/<seq>-<batch id>.batch` (one
//! encoded `Batch` each), `checkpoints.json`, `status.json` (last ack, last
//! error) and `LOCK` (held while an agent runs on this spool).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use joinery_proto::v1::Batch;
use prost::Message;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool {path} is in use by another agent run")]
    Locked { path: PathBuf },
    #[error("spool file {path} is damaged: {detail}")]
    Damaged { path: PathBuf, detail: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where reading of one source has got to, committed with the spool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Identifies the file's content: size, modification time, digest of its start.
    pub fingerprint: String,
    /// Where to resume reading.
    #[serde(flatten)]
    pub at: crate::source::Position,
    /// The next batch sequence number for this source (keeps batch ids
    /// reproducible when rows after the checkpoint are read again).
    pub sequence: u64,
    /// The whole file has been read.
    pub complete: bool,
}

/// What `joinery agent status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub last_ack_at: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

/// A batch held in the spool.
#[derive(Debug, Clone)]
pub struct Spooled {
    pub path: PathBuf,
    pub batch: Batch,
}

pub struct Spool {
    dir: PathBuf,
    next_seq: AtomicU64,
    bytes: Arc<AtomicU64>,
    checkpoints: Mutex<BTreeMap<String, Checkpoint>>,
    _lock: File,
}

impl Spool {
    /// Opens (creating) the spool in `dir` and takes its lock.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        let batches = dir.join("batches");
        std::fs::create_dir_all(&batches).map_err(io(&batches))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        lock.try_lock().map_err(|_| SpoolError::Locked {
            path: dir.to_owned(),
        })?;
        let (mut max_seq, mut bytes) = (0, 0);
        for entry in std::fs::read_dir(&batches).map_err(io(&batches))? {
            let entry = entry.map_err(io(&batches))?;
            let path = entry.path();
            if !is_batch(&path) {
                // A write interrupted before its rename: the batch was never
                // spooled and its checkpoint never committed, so its rows
                // will be read again.
                std::fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(seq) = name.split('-').next().and_then(|s| s.parse::<u64>().ok()) {
                max_seq = max_seq.max(seq);
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        let checkpoints_path = dir.join("checkpoints.json");
        let checkpoints = match std::fs::read(&checkpoints_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SpoolError::Damaged {
                path: checkpoints_path.clone(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(SpoolError::Io {
                    path: checkpoints_path,
                    source,
                });
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            next_seq: AtomicU64::new(max_seq + 1),
            bytes: Arc::new(AtomicU64::new(bytes)),
            checkpoints: Mutex::new(checkpoints),
            _lock: lock,
        })
    }

    /// Bytes of batches waiting for an ack.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn checkpoint(&self, source: &str) -> Option<Checkpoint> {
        self.checkpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(source)
            .cloned()
    }

    /// Every spooled batch, oldest first.
    pub fn pending(&self) -> Result<Vec<Spooled>, SpoolError> {
        let batches = self.dir.join("batches");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&batches)
            .map_err(io(&batches))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| is_batch(p))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|path| {
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                let batch = Batch::decode(bytes.as_slice()).map_err(|e| SpoolError::Damaged {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
                Ok(Spooled { path, batch })
            })
            .collect()
    }

    /// Writes `batch` durably, then commits `checkpoint` for `source`.
    pub fn put(
        &self,
        batch: Batch,
        source: &str,
        checkpoint: Checkpoint,
    ) -> Result<Spooled, SpoolError> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join("batches")
            .join(format!("{seq:012}-{}.batch", batch.batch_id));
        let bytes = batch.encode_to_vec();
        write_durably(&path, &bytes)?;
        if let Err(e) = self.commit_checkpoint(source, checkpoint) {
            // Without its checkpoint the batch would be read again: take it
            // back, so a retry (say, once disk space returns) starts clean.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        crate::metrics::spool_bytes(self.bytes());
        Ok(Spooled { path, batch })
    }

    /// Commits a source's checkpoint (atomically: write, fsync, rename).
    pub fn commit_checkpoint(
        &self,
        source: &str,
        checkpoint: Checkpoint,
    ) -> Result<(), SpoolError> {
        let mut checkpoints = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
        checkpoints.insert(source.to_owned(), checkpoint);
        let json = serde_json::to_vec_pretty(&*checkpoints).unwrap_or_default();
        write_durably(&self.dir.join("checkpoints.json"), &json)
    }

    /// Forgets where reading of the named sources (every source when
    /// `sources` is empty) has got to, so the next run reads them from the
    /// start and sends them again (under the same batch ids: a gateway that
    /// has them answers "duplicate"). Returns the sources forgotten.
    pub fn forget_checkpoints(&self, sources: &[String]) -> Result<Vec<String>, SpoolError> {
        let mut checkpoints = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
        let forgotten: Vec<String> = checkpoints
            .keys()
            .filter(|k| sources.is_empty() || sources.contains(k))
            .cloned()
            .collect();
        for key in &forgotten {
            checkpoints.remove(key);
        }
        let json = serde_json::to_vec_pretty(&*checkpoints).unwrap_or_default();
        write_durably(&self.dir.join("checkpoints.json"), &json)?;
        Ok(forgotten)
    }

    /// Deletes an acknowledged batch.
    pub fn acknowledged(&self, spooled: &Spooled) -> Result<(), SpoolError> {
        let size = std::fs::metadata(&spooled.path)
            .map(|m| m.len())
            .unwrap_or(0);
        match std::fs::remove_file(&spooled.path) {
            Ok(()) => {
                self.bytes
                    .fetch_sub(size.min(self.bytes()), Ordering::Relaxed);
                crate::metrics::spool_bytes(self.bytes());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SpoolError::Io {
                    path: spooled.path.clone(),
                    source,
                });
            }
        }
        // The status file is for people; failing to update it (a full disk)
        // must not fail the delivery.
        self.record_status(|s| s.last_ack_at = Some(now()));
        Ok(())
    }

    /// Records the last delivery error for `joinery agent status`.
    pub fn record_error(&self, error: &str) {
        self.record_status(|s| {
            s.last_error = Some(error.to_owned());
            s.last_error_at = Some(now());
        });
    }

    /// Updates `status.json`, best effort: it is for people, not recovery.
    fn record_status(&self, change: impl FnOnce(&mut Status)) {
        if let Err(e) = self.update_status(change) {
            tracing::debug!(error = %e, "could not update the spool status file");
        }
    }

    fn update_status(&self, change: impl FnOnce(&mut Status)) -> Result<(), SpoolError> {
        let path = self.dir.join("status.json");
        let mut status: Status = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        change(&mut status);
        let json = serde_json::to_vec_pretty(&status).unwrap_or_default();
        write_durably(&path, &json)
    }
}

/// What `joinery agent status` reads (without taking the lock).
pub fn inspect(dir: &Path) -> Result<(u64, u64, Status, BTreeMap<String, Checkpoint>), SpoolError> {
    let batches = dir.join("batches");
    let (mut count, mut bytes) = (0, 0);
    if let Ok(entries) = std::fs::read_dir(&batches) {
        for entry in entries
            .filter_map(Result::ok)
            .filter(|e| is_batch(&e.path()))
        {
            count += 1;
            bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    let status = std::fs::read(dir.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let checkpoints = std::fs::read(dir.join("checkpoints.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    Ok((count, bytes, status, checkpoints))
}

fn is_batch(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "batch")
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Writes `bytes` to `path` so that after a crash the file is either the old
/// one or the new one, complete: temporary file, fsync, rename, fsync the directory.
/// A write cut short (a full disk) removes its temporary file, so the space
/// it took returns at once.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let tmp = path.with_extension("tmp");
    let written = File::create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(SpoolError::Io { path: tmp, source });
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(parent) = path.parent() {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io(parent))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use joinery_proto::v1::BatchBody;

    fn batch(n: u64) -> Batch {
        let body = BatchBody {
            dataset: "d".into(),
            sequence: n,
            records: vec![],
            source: "d.csv".into(),
            snapshot: String::new(),
        };
        Batch {
            batch_id: body.digest(),
            body: Some(body),
        }
    }

    #[test]
    fn batches_survive_until_acknowledged_and_checkpoints_persist() {
        let at = |line: u64, byte: u64| {
            crate::source::Position::of(line, &serde_json::json!({"byte": byte}))
        };
        let dir = tempfile::tempdir().unwrap();
        let first;
        {
            let spool = Spool::open(dir.path()).unwrap();
            assert!(Spool::open(dir.path()).is_err(), "one agent per spool");
            first = spool
                .put(
                    batch(1),
                    "a.csv",
                    Checkpoint {
                        at: at(2, 20),
                        ..Default::default()
                    },
                )
                .unwrap();
            spool
                .put(
                    batch(2),
                    "a.csv",
                    Checkpoint {
                        at: at(3, 30),
                        ..Default::default()
                    },
                )
                .unwrap();
            assert!(spool.bytes() > 0);
        }
        let spool = Spool::open(dir.path()).unwrap();
        let pending = spool.pending().unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].batch, batch(1), "oldest first");
        assert_eq!(spool.checkpoint("a.csv").unwrap().at, at(3, 30));
        spool.acknowledged(&first).unwrap();
        assert_eq!(spool.pending().unwrap().len(), 1);
        let (count, _, status, _) = inspect(dir.path()).unwrap();
        assert_eq!(count, 1);
        assert!(status.last_ack_at.is_some());
        // New batches are numbered after the ones still held.
        let third = spool.put(batch(3), "a.csv", Checkpoint::default()).unwrap();
        assert!(third.path > pending[1].path);
        // A write cut short before its rename is cleared away on opening.
        drop(spool);
        std::fs::write(dir.path().join("batches/000000000099-x.tmp"), b"partial").unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.pending().unwrap().len(), 2);
        assert!(!dir.path().join("batches/000000000099-x.tmp").exists());
    }
}
