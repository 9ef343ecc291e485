//! The gateway's signed audit checkpoints, kept by the agency.
//!
//! Every agent run (and `joinery audit fetch`) asks the gateway for the
//! checkpoints signed since the last one kept and appends them to a file of
//! JSON lines — the form `joinery audit verify --checkpoints` reads — so an
//! agency can later prove that the gateway's log was rewritten after it
//! last looked, even if every checkpoint at the gateway was deleted too.

use std::io::Write;
use std::path::{Path, PathBuf};

use joinery_proto::v1::CheckpointsRequest;
use joinery_proto::v1::audit_client::AuditClient;
use tonic::transport::Channel;

/// The file an agent keeps its checkpoints in, beside its spool.
pub fn kept_file(spool_dir: &Path) -> PathBuf {
    spool_dir.join("audit-checkpoints.jsonl")
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: not a checkpoint")]
    NotACheckpoint { path: PathBuf, line: usize },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the gateway did not give its checkpoints: {0}")]
    Gateway(#[from] tonic::Status),
}

/// What one fetch added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    pub new: usize,
    /// Kept in the file in all, the new ones included.
    pub kept: usize,
}

/// The highest checkpoint number in `path` (0 when there is none) and how
/// many it holds.
fn last_kept(path: &Path) -> Result<(u64, usize), CheckpointError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(source) => {
            return Err(CheckpointError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut last = 0;
    let mut kept = 0;
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let seq = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("seq")?.as_u64())
            .ok_or_else(|| CheckpointError::NotACheckpoint {
                path: path.to_owned(),
                line: i + 1,
            })?;
        last = last.max(seq);
        kept += 1;
    }
    Ok((last, kept))
}

/// Fetches the checkpoints newer than the last kept in `path` and appends
/// them, synced to disk.
pub async fn fetch_into(channel: Channel, path: &Path) -> Result<Fetched, CheckpointError> {
    let (after, kept) = last_kept(path)?;
    let fetched = AuditClient::new(channel)
        .checkpoints(CheckpointsRequest { after_seq: after })
        .await?
        .into_inner()
        .checkpoints;
    let write_err = |source| CheckpointError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(write_err)?;
    for c in &fetched {
        let line = serde_json::json!({
            "seq": c.seq,
            "hash": c.hash,
            "at_ms": c.at_ms,
            "public_key": c.public_key,
            "signature": c.signature,
        });
        writeln!(file, "{line}").map_err(write_err)?;
    }
    file.sync_all().map_err(write_err)?;
    Ok(Fetched {
        new: fetched.len(),
        kept: kept + fetched.len(),
    })
}
