//! What the audit trail records and how entries chain and verify: plain
//! types built from plain values, and hashing — nothing here reads or
//! writes storage, so storage and the signing side can both use it.

use std::collections::BTreeMap;

use ring::digest::{Context, SHA256};
use serde_json::json;

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, before it is numbered and chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub kind: String,
    /// Who: an organisation code, `analyst:NAME`, or `gateway`.
    pub actor: String,
    pub agreement_id: String,
    pub agreement_version: u32,
    /// Canonical JSON (keys sorted).
    pub detail: String,
}

/// A numbered, chained entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub at_ms: i64,
    pub record: AuditRecord,
    pub prev_hash: String,
    pub hash: String,
}

/// A signed statement that the chain's entry `seq` has hash `hash`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub at_ms: i64,
    pub public_key: String,
    pub signature: String,
}

fn record(
    kind: &str,
    actor: &str,
    agreement: (&str, u32),
    detail: serde_json::Value,
) -> AuditRecord {
    AuditRecord {
        kind: kind.to_owned(),
        actor: actor.to_owned(),
        agreement_id: agreement.0.to_owned(),
        agreement_version: agreement.1,
        detail: detail.to_string(),
    }
}

/// What became of a batch, as the audit log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchDecision<'a> {
    /// Stored now, with this many records (others were held already).
    Committed(u64),
    /// Recognised as already stored: nothing written.
    Duplicate,
    /// Refused for this reason: nothing written.
    Rejected(&'a str),
}

impl AuditRecord {
    /// What became of a batch of `records` records: stored, recognised as
    /// already stored, or refused.
    pub fn batch(
        organisation: &str,
        agreement: (&str, u32),
        batch_id: &str,
        dataset: &str,
        records: usize,
        decision: BatchDecision<'_>,
    ) -> Self {
        let (name, stored) = match decision {
            BatchDecision::Committed(stored) => ("committed", stored),
            BatchDecision::Duplicate => ("duplicate", 0),
            BatchDecision::Rejected(_) => ("rejected", 0),
        };
        let mut detail = json!({
            "batch_id": batch_id,
            "dataset": dataset,
            "records": records,
            "records_stored": stored,
            "decision": name,
        });
        if let BatchDecision::Rejected(reason) = decision {
            detail["reason"] = json!(reason);
        }
        record("batch", organisation, agreement, detail)
    }

    /// A session refused before any batch (wrong agreement, not a party...).
    pub fn session_refused(actor: &str, agreement: (&str, u32), code: &str, reason: &str) -> Self {
        record(
            "session_refused",
            actor,
            agreement,
            json!({ "code": code, "reason": reason }),
        )
    }

    /// An agreement loaded at start-up.
    pub fn agreement_loaded(id: &str, version: u32, digest: &str, path: &str) -> Self {
        record(
            "agreement_loaded",
            "gateway",
            (id, version),
            json!({ "digest": digest, "file": path }),
        )
    }

    /// Data deleted by retention: `batches` and `records` of `organisation`'s
    /// `dataset` sent under `agreement`.
    pub fn retention(
        organisation: &str,
        agreement: (&str, u32),
        dataset: &str,
        batches: u64,
        records: u64,
    ) -> Self {
        record(
            "retention_deleted",
            "gateway",
            agreement,
            json!({
                "organisation": organisation,
                "dataset": dataset,
                "batches": batches,
                "records": records,
            }),
        )
    }

    /// A fuzzy linkage run: how much it read and changed (no identifiers).
    pub fn linkage(
        params_version: u32,
        full: bool,
        entities: usize,
        pending: usize,
        links: usize,
        moved: usize,
        nhs_conflicts: usize,
    ) -> Self {
        record(
            "linkage",
            "gateway",
            ("", 0),
            json!({
                "params_version": params_version,
                "full": full,
                "entities": entities,
                "pending": pending,
                "links": links,
                "person_ids_moved": moved,
                "nhs_conflicts": nhs_conflicts,
            }),
        )
    }

    /// A full snapshot delivered whole: the organisation's records of the
    /// dataset from earlier snapshots retired.
    pub fn snapshot_replaced(
        organisation: &str,
        agreement: (&str, u32),
        dataset: &str,
        snapshot: &str,
        records_retired: u64,
    ) -> Self {
        record(
            "snapshot_replaced",
            organisation,
            agreement,
            json!({
                "dataset": dataset,
                "snapshot": snapshot,
                "records_retired": records_retired,
            }),
        )
    }

    /// An analyst's (or agency's) query and what it released.
    pub fn query(
        actor: &str,
        query: &str,
        query_digest: &str,
        disclosure: &str,
        cells_released: usize,
    ) -> Self {
        record(
            "query",
            actor,
            ("", 0),
            json!({
                "query": query,
                "query_digest": query_digest,
                "disclosure": disclosure,
                "cells_released": cells_released,
            }),
        )
    }

    /// The detail as a JSON object.
    pub fn detail_value(&self) -> BTreeMap<String, serde_json::Value> {
        serde_json::from_str(&self.detail).unwrap_or_default()
    }
}

/// The hash of an entry: SHA-256 over its length-prefixed fields and the
/// previous entry's hash.
pub fn entry_hash(seq: u64, at_ms: i64, record: &AuditRecord, prev_hash: &str) -> String {
    let mut context = Context::new(&SHA256);
    let mut field = |bytes: &[u8]| {
        context.update(&(bytes.len() as u64).to_be_bytes());
        context.update(bytes);
    };
    field(b"joinery audit v1");
    field(&seq.to_be_bytes());
    field(&at_ms.to_be_bytes());
    field(record.kind.as_bytes());
    field(record.actor.as_bytes());
    field(record.agreement_id.as_bytes());
    field(&record.agreement_version.to_be_bytes());
    field(record.detail.as_bytes());
    field(prev_hash.as_bytes());
    hex::encode(context.finish().as_ref())
}

/// The bytes a checkpoint signature covers.
pub fn checkpoint_message(seq: u64, hash: &str, at_ms: i64) -> Vec<u8> {
    format!("joinery audit checkpoint v1\0{seq}\0{hash}\0{at_ms}").into_bytes()
}

/// The result of verifying a chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    pub entries: u64,
    pub checkpoints: u64,
    /// The first problem: the entry it concerns and what is wrong.
    pub broken: Option<(u64, String)>,
}

/// Checks entries as they are read, in order of `seq`, then checkpoints,
/// then that a signed checkpoint covers all but the newest entries (a log
/// whose checkpoints were deleted and whose chain was recomputed is intact
/// as a chain, but its old entries are then covered by none).
pub struct Verifier {
    expected_seq: u64,
    prev_hash: String,
    /// Hashes at the sequence numbers checkpoints name.
    wanted: BTreeMap<u64, Option<String>>,
    /// When the entry after each checkpoint (and the first entry) was
    /// written: where an uncovered tail would start.
    tail_starts: BTreeMap<u64, i64>,
    result: Verification,
}

impl Verifier {
    /// `checkpoint_seqs`: the entries whose hashes checkpoints will be compared with.
    pub fn new(checkpoint_seqs: impl IntoIterator<Item = u64>) -> Self {
        Self {
            expected_seq: 1,
            prev_hash: GENESIS.to_owned(),
            wanted: checkpoint_seqs.into_iter().map(|s| (s, None)).collect(),
            tail_starts: BTreeMap::new(),
            result: Verification::default(),
        }
    }

    fn fail(&mut self, seq: u64, why: String) {
        if self.result.broken.is_none() {
            self.result.broken = Some((seq, why));
        }
    }

    pub fn entry(&mut self, entry: &Entry) {
        self.result.entries += 1;
        if entry.seq != self.expected_seq {
            self.fail(
                self.expected_seq,
                format!(
                    "entry {} is missing (the next entry is {})",
                    self.expected_seq, entry.seq
                ),
            );
        } else if entry.prev_hash != self.prev_hash {
            self.fail(
                entry.seq,
                format!(
                    "entry {} does not follow entry {} (deleted, inserted or reordered)",
                    entry.seq,
                    entry.seq.saturating_sub(1)
                ),
            );
        } else if entry_hash(entry.seq, entry.at_ms, &entry.record, &entry.prev_hash) != entry.hash
        {
            self.fail(
                entry.seq,
                format!(
                    "entry {} has been edited: its content does not match its hash",
                    entry.seq
                ),
            );
        }
        if let Some(slot) = self.wanted.get_mut(&entry.seq) {
            *slot = Some(entry.hash.clone());
        }
        if entry.seq == 1 || self.wanted.contains_key(&(entry.seq - 1)) {
            self.tail_starts.insert(entry.seq, entry.at_ms);
        }
        self.expected_seq = entry.seq + 1;
        self.prev_hash = entry.hash.clone();
    }

    /// Finishes with the chain head's seq and the checkpoints, whose
    /// signatures must verify under one of `trusted_keys`; entries written
    /// before `uncovered_since_ms` must be covered by one.
    pub fn finish(
        mut self,
        head_seq: u64,
        checkpoints: &[Checkpoint],
        trusted_keys: &[String],
        uncovered_since_ms: i64,
    ) -> Verification {
        let last = self.expected_seq - 1;
        if head_seq > last {
            self.fail(
                last + 1,
                format!(
                    "entries {} to {head_seq} are missing from the end of the log",
                    last + 1
                ),
            );
        }
        let mut previous_good = 0;
        for checkpoint in checkpoints {
            self.result.checkpoints += 1;
            let trusted = trusted_keys
                .iter()
                .any(|k| k.eq_ignore_ascii_case(&checkpoint.public_key));
            let signed = joinery_crypto::signing::verify_hex(
                &checkpoint.public_key,
                &checkpoint_message(checkpoint.seq, &checkpoint.hash, checkpoint.at_ms),
                &checkpoint.signature,
            );
            if !trusted || !signed {
                self.fail(
                    checkpoint.seq,
                    format!(
                        "checkpoint at entry {} is not signed by a trusted audit key",
                        checkpoint.seq
                    ),
                );
                continue;
            }
            match self.wanted.get(&checkpoint.seq).cloned().flatten() {
                None => self.fail(last + 1, format!("entries up to {} are missing: a signed checkpoint covers entry {}", checkpoint.seq, checkpoint.seq)),
                Some(hash) if hash != checkpoint.hash => self.fail(
                    previous_good + 1,
                    format!(
                        "the log differs from the checkpoint signed at entry {}: an entry between {} and {} was changed and the chain rewritten",
                        checkpoint.seq,
                        previous_good + 1,
                        checkpoint.seq
                    ),
                ),
                Some(_) => previous_good = previous_good.max(checkpoint.seq),
            }
        }
        if previous_good < last
            && let Some(&written) = self.tail_starts.get(&(previous_good + 1))
            && written < uncovered_since_ms
        {
            self.fail(
                previous_good + 1,
                format!(
                    "entries {} to {last} are covered by no signed checkpoint, and entry {} is older than checkpoints are signed: checkpoints were removed (and the chain perhaps rewritten), or the gateway is not signing them",
                    previous_good + 1,
                    previous_good + 1
                ),
            );
        }
        self.result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<Entry> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let record = AuditRecord::query("analyst:a", "counts", "d", "rule", seq as usize);
                let hash = entry_hash(seq, 1000 + seq as i64, &record, &prev);
                let entry = Entry {
                    seq,
                    at_ms: 1000 + seq as i64,
                    record,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                entry
            })
            .collect()
    }

    fn verify(entries: &[Entry], head: u64) -> Verification {
        let mut v = Verifier::new([]);
        for e in entries {
            v.entry(e);
        }
        v.finish(head, &[], &[], 0)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let entries = chain(5);
        assert_eq!(
            verify(&entries, 5),
            Verification {
                entries: 5,
                checkpoints: 0,
                broken: None
            }
        );
    }

    #[test]
    fn edits_deletions_and_reorders_name_the_first_broken_entry() {
        let mut edited = chain(5);
        edited[2].record.detail = edited[2].record.detail.replace("3", "4");
        assert_eq!(verify(&edited, 5).broken.unwrap().0, 3);

        let mut deleted = chain(5);
        deleted.remove(1);
        assert_eq!(verify(&deleted, 5).broken.unwrap().0, 2);

        let mut reordered = chain(5);
        reordered.swap(1, 3);
        let (a, b) = (reordered[1].seq, reordered[3].seq);
        reordered[1].seq = b;
        reordered[3].seq = a;
        assert_eq!(verify(&reordered, 5).broken.unwrap().0, 2);

        let truncated = chain(3);
        assert_eq!(verify(&truncated, 5).broken.unwrap().0, 4);
    }
}
