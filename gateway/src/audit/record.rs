//! What the audit trail records and how entries chain and verify: plain
//! types built from plain values, and hashing — nothing here reads or
//! writes storage, so storage and the signing side can both use it.

use std::collections::BTreeMap;

use joinery_policies::AgreementRef;
use ring::digest::{Context, SHA256};

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
    /// The event's fields as canonical JSON (keys sorted).
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

/// What happened, one variant per kind of entry with its detail typed.
/// Stored as the entry's `kind` (the variant's name) and its detail (the
/// variant's fields as canonical JSON, keys sorted), both hashed into the
/// chain; [`AuditRecord::event`] reads it back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A batch: stored, recognised as already stored, or refused.
    Batch {
        batch_id: String,
        dataset: String,
        records: u64,
        records_stored: u64,
        decision: Decision,
        /// Why it was refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A session refused before any batch (wrong agreement, not a party...).
    SessionRefused { code: String, reason: String },
    /// An agreement loaded (at start-up or by a reload).
    AgreementLoaded { digest: String, file: String },
    /// Data deleted by retention.
    #[serde(rename = "retention_deleted")]
    Retention {
        organisation: String,
        dataset: String,
        batches: u64,
        records: u64,
    },
    /// A fuzzy linkage run: how much it read and changed (no identifiers).
    Linkage {
        params_version: u32,
        full: bool,
        entities: u64,
        pending: u64,
        links: u64,
        person_ids_moved: u64,
        nhs_conflicts: u64,
    },
    /// A full snapshot delivered whole: the organisation's records of the
    /// dataset from earlier snapshots retired.
    SnapshotReplaced {
        dataset: String,
        snapshot: String,
        records_retired: u64,
    },
    /// After a key rotation, what this store took over from the one it
    /// replaces before answering anyone (`joinery gateway take-over`): the
    /// privacy loss already spent under each agreement, the fitted linkage
    /// models (by parameters version), and how many of the last run's
    /// links were carried onto this store's records of the same origins
    /// (by parameters version; none before links were taken over).
    TookOver {
        privacy_spent_nano: BTreeMap<String, u64>,
        linkage_models: Vec<u32>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        links: BTreeMap<u32, u64>,
    },
    /// An analyst's (or agency's) query and what it released: table cells,
    /// or for a row-level extract ([`EXTRACT_QUERY`]) person rows.
    Query {
        query: String,
        query_digest: String,
        disclosure: String,
        cells_released: u64,
    },
}

/// What became of a batch, as [`AuditEvent::Batch`] records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Committed,
    Duplicate,
    Rejected,
}

/// The query name [`AuditEvent::Query`] gives a row-level extract: what
/// it releases is person rows, not table cells.
pub const EXTRACT_QUERY: &str = "extract";

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
    /// `event` by `actor` (an organisation code, `analyst:NAME` or
    /// `gateway`) under `agreement`, if any (stored as id `""`, version 0).
    pub fn new(actor: &str, agreement: Option<&AgreementRef>, event: &AuditEvent) -> Self {
        let mut detail = serde_json::to_value(event).expect("an audit event is plain data");
        let kind = detail
            .as_object_mut()
            .and_then(|fields| fields.remove("kind"))
            .and_then(|kind| kind.as_str().map(str::to_owned))
            .expect("an audit event is tagged with its kind");
        Self {
            kind,
            actor: actor.to_owned(),
            agreement_id: agreement.map_or_else(String::new, |a| a.id.clone()),
            agreement_version: agreement.map_or(0, |a| a.version),
            // serde_json's objects keep keys sorted: canonical.
            detail: detail.to_string(),
        }
    }

    /// The agreement the entry was made under, if any.
    pub fn agreement(&self) -> Option<AgreementRef> {
        (!self.agreement_id.is_empty())
            .then(|| AgreementRef::new(&self.agreement_id, self.agreement_version))
    }

    /// The event the entry records, or `None` for a kind or detail this
    /// version does not know.
    pub fn event(&self) -> Option<AuditEvent> {
        let mut detail: serde_json::Value = serde_json::from_str(&self.detail).ok()?;
        detail
            .as_object_mut()?
            .insert("kind".to_owned(), self.kind.clone().into());
        serde_json::from_value(detail).ok()
    }

    /// What became of a batch of `records` records: stored, recognised as
    /// already stored, or refused.
    pub fn batch(
        organisation: &str,
        agreement: &AgreementRef,
        batch_id: &str,
        dataset: &str,
        records: usize,
        decision: BatchDecision<'_>,
    ) -> Self {
        let (decision, records_stored, reason) = match decision {
            BatchDecision::Committed(stored) => (Decision::Committed, stored, None),
            BatchDecision::Duplicate => (Decision::Duplicate, 0, None),
            BatchDecision::Rejected(reason) => (Decision::Rejected, 0, Some(reason.to_owned())),
        };
        let event = AuditEvent::Batch {
            batch_id: batch_id.to_owned(),
            dataset: dataset.to_owned(),
            records: records as u64,
            records_stored,
            decision,
            reason,
        };
        Self::new(organisation, Some(agreement), &event)
    }

    /// A session refused before any batch (wrong agreement, not a party...).
    pub fn session_refused(
        actor: &str,
        agreement: Option<&AgreementRef>,
        code: &str,
        reason: &str,
    ) -> Self {
        let event = AuditEvent::SessionRefused {
            code: code.to_owned(),
            reason: reason.to_owned(),
        };
        Self::new(actor, agreement, &event)
    }

    /// An agreement loaded at start-up.
    pub fn agreement_loaded(agreement: &AgreementRef, digest: &str, path: &str) -> Self {
        let event = AuditEvent::AgreementLoaded {
            digest: digest.to_owned(),
            file: path.to_owned(),
        };
        Self::new("gateway", Some(agreement), &event)
    }

    /// Data deleted by retention: `batches` and `records` of `organisation`'s
    /// `dataset` sent under `agreement`.
    pub fn retention(
        organisation: &str,
        agreement: &AgreementRef,
        dataset: &str,
        batches: u64,
        records: u64,
    ) -> Self {
        let event = AuditEvent::Retention {
            organisation: organisation.to_owned(),
            dataset: dataset.to_owned(),
            batches,
            records,
        };
        Self::new("gateway", Some(agreement), &event)
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
        let event = AuditEvent::Linkage {
            params_version,
            full,
            entities: entities as u64,
            pending: pending as u64,
            links: links as u64,
            person_ids_moved: moved as u64,
            nhs_conflicts: nhs_conflicts as u64,
        };
        Self::new("gateway", None, &event)
    }

    /// A full snapshot delivered whole: the organisation's records of the
    /// dataset from earlier snapshots retired.
    pub fn snapshot_replaced(
        organisation: &str,
        agreement: &AgreementRef,
        dataset: &str,
        snapshot: &str,
        records_retired: u64,
    ) -> Self {
        let event = AuditEvent::SnapshotReplaced {
            dataset: dataset.to_owned(),
            snapshot: snapshot.to_owned(),
            records_retired,
        };
        Self::new(organisation, Some(agreement), &event)
    }

    /// An analyst's (or agency's) query and what it released.
    pub fn query(
        actor: &str,
        query: &str,
        query_digest: &str,
        disclosure: &str,
        cells_released: usize,
    ) -> Self {
        let event = AuditEvent::Query {
            query: query.to_owned(),
            query_digest: query_digest.to_owned(),
            disclosure: disclosure.to_owned(),
            cells_released: cells_released as u64,
        };
        Self::new(actor, None, &event)
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

    #[test]
    fn every_event_is_stored_as_its_kind_and_sorted_detail_and_read_back() {
        let a = AgreementRef::new("a", 1);
        let records = [
            AuditRecord::batch("RX9", &a, "b1", "camhs", 10, BatchDecision::Committed(7)),
            AuditRecord::batch("RX9", &a, "b2", "camhs", 10, BatchDecision::Duplicate),
            AuditRecord::batch(
                "RX9",
                &a,
                "b3",
                "camhs",
                10,
                BatchDecision::Rejected("field x"),
            ),
            AuditRecord::session_refused("RX9", Some(&a), "permission_denied", "not a party"),
            AuditRecord::agreement_loaded(&a, "d", "a.yaml"),
            AuditRecord::retention("RX9", &a, "camhs", 2, 20),
            AuditRecord::linkage(4, true, 100, 10, 5, 1, 0),
            AuditRecord::snapshot_replaced("RX9", &a, "camhs", "s1", 3),
            AuditRecord::query("analyst:a", EXTRACT_QUERY, "d", "row-level", 12),
        ];
        for record in records {
            let detail: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&record.detail).unwrap();
            assert!(!detail.contains_key("kind"), "{}", record.detail);
            let keys: Vec<&String> = detail.keys().collect();
            assert!(keys.is_sorted(), "canonical: {}", record.detail);
            let event = record.event().expect("read back");
            assert_eq!(
                AuditRecord::new(&record.actor, record.agreement().as_ref(), &event),
                record
            );
        }
        // Entries written before the events were typed read the same.
        let old = AuditRecord {
            kind: "batch".into(),
            actor: "RX9".into(),
            agreement_id: "a".into(),
            agreement_version: 1,
            detail: r#"{"batch_id":"b","dataset":"camhs","decision":"rejected","reason":"field x","records":3,"records_stored":0}"#.into(),
        };
        assert!(matches!(
            old.event(),
            Some(AuditEvent::Batch { decision: Decision::Rejected, reason: Some(r), .. }) if r == "field x"
        ));
        // A kind this version does not know is passed over, not misread.
        let unknown = AuditRecord {
            kind: "something_new".into(),
            ..old
        };
        assert_eq!(unknown.event(), None);
    }

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
