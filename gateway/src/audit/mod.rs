//! The tamper-evident audit trail: what the gateway records, how entries are
//! chained, and how a chain is verified. (Storage appends and reads entries;
//! this module never touches SQL.)
//!
//! Every entry carries the SHA-256 of its own fields and of the entry before
//! it, so an edited, deleted or reordered row breaks the chain. A superuser
//! who rewrites the whole chain consistently is still caught: at a fixed
//! interval the gateway signs the chain head with its Ed25519 audit key
//! (a checkpoint), and agencies can fetch and keep those checkpoints.
//! Entries hold organisation codes, analyst names, agreement ids, datasets,
//! counts, digests and reasons — never an identifier of a person.
//!
//! [`record`] holds the entries and their verification; this module signs
//! checkpoints on a schedule and serves them (`joinery.v1.Audit`).

pub mod record;

pub use record::*;

/// Signs the current chain head, unless it is already signed or empty.
pub async fn checkpoint(
    storage: &crate::storage::Storage,
    key: &joinery_crypto::signing::SigningKey,
) -> Result<Option<Checkpoint>, crate::storage::StorageError> {
    let (seq, hash) = storage.audit_head().await?;
    if seq == 0 || !storage.checkpoints(seq - 1).await?.is_empty() {
        return Ok(None);
    }
    let at_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let checkpoint = Checkpoint {
        seq,
        signature: key.sign_hex(&checkpoint_message(seq, &hash, at_ms)),
        hash,
        at_ms,
        public_key: key.public_hex(),
    };
    storage.add_checkpoint(&checkpoint).await?;
    Ok(Some(checkpoint))
}

/// A checkpoint is signed at least this often in entries, as well as in
/// time: a busy gateway leaves no long unsigned tail.
pub const CHECKPOINT_EVERY_ENTRIES: u64 = 1000;

/// Signs the chain head every `interval`, and sooner whenever
/// [`CHECKPOINT_EVERY_ENTRIES`] entries have been written since the last
/// checkpoint, until the gateway stops.
pub async fn every(
    storage: crate::storage::Storage,
    key: std::sync::Arc<joinery_crypto::signing::SigningKey>,
    interval: std::time::Duration,
    mut stopping: crate::background::Stopping,
) {
    let mut ticks = tokio::time::interval(interval.min(std::time::Duration::from_secs(1)));
    ticks.tick().await;
    let (mut signed_at, mut signed_seq) = (std::time::Instant::now(), 0);
    while stopping.tick(&mut ticks).await {
        let due = signed_at.elapsed() >= interval
            || storage
                .audit_head()
                .await
                .is_ok_and(|(head, _)| head >= signed_seq + CHECKPOINT_EVERY_ENTRIES);
        if !due {
            continue;
        }
        signed_at = std::time::Instant::now();
        match checkpoint(&storage, &key).await {
            Ok(Some(c)) => {
                signed_seq = c.seq;
                tracing::info!(seq = c.seq, "audit checkpoint signed");
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "audit checkpoint failed; will retry"),
        }
    }
}

/// `joinery.v1.Audit`: any authenticated party may fetch the checkpoints.
pub struct AuditService {
    storage: crate::storage::Storage,
}

impl AuditService {
    pub fn new(storage: crate::storage::Storage) -> Self {
        Self { storage }
    }
}

#[tonic::async_trait]
impl joinery_proto::v1::audit_server::Audit for AuditService {
    async fn checkpoints(
        &self,
        request: tonic::Request<joinery_proto::v1::CheckpointsRequest>,
    ) -> Result<tonic::Response<joinery_proto::v1::CheckpointsResponse>, tonic::Status> {
        crate::peer::identity(&request)?;
        let checkpoints = self
            .storage
            .checkpoints(request.get_ref().after_seq)
            .await
            .map_err(|_| tonic::Status::unavailable("the gateway's database is not available"))?;
        Ok(tonic::Response::new(
            joinery_proto::v1::CheckpointsResponse {
                checkpoints: checkpoints
                    .into_iter()
                    .map(|c| joinery_proto::v1::Checkpoint {
                        seq: c.seq,
                        hash: c.hash,
                        at_ms: c.at_ms,
                        public_key: c.public_key,
                        signature: c.signature,
                    })
                    .collect(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_checkpoint_is_signed_after_so_many_entries_whatever_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let storage =
            crate::storage::Storage::open(&crate::storage::Storage::sqlite_url(dir.path()))
                .await
                .unwrap();
        let key = std::sync::Arc::new(
            joinery_crypto::signing::SigningKey::generate(&dir.path().join("audit.key")).unwrap(),
        );
        let mut supervisor = crate::background::Supervisor::default();
        let signing = storage.clone();
        supervisor.spawn("checkpoints", move |stopping| {
            every(signing, key, std::time::Duration::from_secs(3600), stopping)
        });
        for i in 0..CHECKPOINT_EVERY_ENTRIES {
            storage
                .append_audit(&AuditRecord::query(
                    "analyst:a",
                    "run",
                    "d",
                    "rule",
                    i as usize,
                ))
                .await
                .unwrap();
        }
        let mut signed = Vec::new();
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            signed = storage.checkpoints(0).await.unwrap();
            if !signed.is_empty() {
                break;
            }
        }
        assert!(
            signed.iter().any(|c| c.seq >= CHECKPOINT_EVERY_ENTRIES),
            "{signed:?}"
        );
        supervisor.shutdown(std::time::Duration::from_secs(5)).await;
    }
}
