//! Grouping records into batches whose id is the digest of their content, so
//! a batch sent twice is recognised by the gateway and stored once.

use joinery_proto::v1::{Batch, BatchBody, Record};
use prost::Message;

/// Collects records for one dataset and cuts batches by count or size.
pub struct Batcher {
    dataset: String,
    source: String,
    snapshot: String,
    max_records: usize,
    max_bytes: usize,
    sequence: u64,
    records: Vec<Record>,
    bytes: usize,
}

impl Batcher {
    /// A batcher for `dataset`'s rows from `source` (a file or table name)
    /// whose next batch has sequence number `sequence` (0 for a new source;
    /// a checkpoint's sequence when resuming one).
    pub fn new(
        dataset: &str,
        source: &str,
        max_records: usize,
        max_bytes: usize,
        sequence: u64,
    ) -> Self {
        Self {
            dataset: dataset.to_owned(),
            source: source.to_owned(),
            snapshot: String::new(),
            max_records,
            max_bytes,
            sequence,
            records: Vec::with_capacity(max_records),
            bytes: 0,
        }
    }

    /// Marks every batch as part of the full snapshot `snapshot`.
    pub fn in_snapshot(mut self, snapshot: &str) -> Self {
        self.snapshot = snapshot.to_owned();
        self
    }

    /// The sequence number of the batch being filled.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Adds a record; returns a full batch when one is ready.
    pub fn push(&mut self, record: Record) -> Option<Batch> {
        let size = record.encoded_len() + 8;
        let full = !self.records.is_empty()
            && (self.records.len() >= self.max_records || self.bytes + size > self.max_bytes);
        let ready = if full { self.flush() } else { None };
        self.bytes += size;
        self.records.push(record);
        ready
    }

    /// The last, partly filled batch, if any.
    pub fn flush(&mut self) -> Option<Batch> {
        if self.records.is_empty() {
            return None;
        }
        let body = BatchBody {
            dataset: self.dataset.clone(),
            sequence: self.sequence,
            records: std::mem::replace(&mut self.records, Vec::with_capacity(self.max_records)),
            source: self.source.clone(),
            snapshot: self.snapshot.clone(),
        };
        self.sequence += 1;
        self.bytes = 0;
        Some(Batch {
            batch_id: body.digest(),
            body: Some(body),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(row: u64) -> Record {
        Record {
            source_row: row,
            local_pseudonym: vec![1; 32],
            ..Default::default()
        }
    }

    #[test]
    fn cuts_by_count_and_ids_are_content_digests() {
        let mut batcher = Batcher::new("d", "d.csv", 2, 1 << 20, 0);
        assert!(batcher.push(record(1)).is_none());
        assert!(batcher.push(record(2)).is_none());
        let first = batcher
            .push(record(3))
            .expect("third record starts a new batch");
        assert_eq!(first.body.as_ref().unwrap().records.len(), 2);
        let last = batcher.flush().unwrap();
        assert_eq!(last.body.as_ref().unwrap().sequence, 1);
        assert!(batcher.flush().is_none());

        let mut again = Batcher::new("d", "d.csv", 2, 1 << 20, 0);
        again.push(record(1));
        again.push(record(2));
        assert_eq!(again.flush().unwrap().batch_id, first.batch_id);

        // The same rows from another source of the dataset are another
        // batch, not a resend of this one.
        let mut other = Batcher::new("d", "other.csv", 2, 1 << 20, 0);
        other.push(record(1));
        other.push(record(2));
        assert_ne!(other.flush().unwrap().batch_id, first.batch_id);
    }

    #[test]
    fn cuts_by_size() {
        let mut batcher = Batcher::new("d", "d.csv", 1000, 100, 0);
        let mut batches = 0;
        for row in 0..10 {
            batches += usize::from(batcher.push(record(row)).is_some());
        }
        assert!(batches >= 3, "{batches}");
    }
}
