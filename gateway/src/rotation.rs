//! After a key rotation: are the people of the store built under the new
//! keys the people of the old one?
//!
//! Rotating the agreement's linkage key, the keyholders' keys or the
//! gateway's re-keying key changes every pseudonym, so a rotation builds a
//! new store beside the old one (`docs/key-rotation.md`): a second gateway
//! under the new keys, the agencies sending their extracts to both while
//! the old one keeps answering, a full re-link. Before analysts are moved
//! over, [`compare`] checks that the new store links records into the same
//! people. No pseudonym is shared between the stores, so records are
//! matched by where they came from: organisation, dataset and source row
//! (the agencies send the same extracts to both).

use std::collections::{BTreeSet, HashMap};

/// Where a stored record came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordOrigin {
    pub organisation: String,
    pub dataset: String,
    pub source_row: i64,
}

/// How the people of two stores compare.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Records found in both stores (by origin).
    pub records_compared: usize,
    /// Records in only one of them.
    pub only_in_old: usize,
    pub only_in_new: usize,
    /// People of the old store holding compared records.
    pub people: usize,
    /// Old people whose records the new store puts in two or more people.
    pub split: usize,
    /// New people holding records of two or more old people.
    pub merged: usize,
}

impl Comparison {
    /// Whether the new store's people are exactly the old one's.
    pub fn unchanged(&self) -> bool {
        self.split == 0 && self.merged == 0 && self.only_in_old == 0 && self.only_in_new == 0
    }
}

/// Compares the people of `old` and `new` (each record's origin and person
/// on the spine). A record delivered twice into one store counts once.
pub fn compare(old: &[(RecordOrigin, String)], new: &[(RecordOrigin, String)]) -> Comparison {
    let by_origin = |records: &[(RecordOrigin, String)]| -> HashMap<RecordOrigin, String> {
        records.iter().cloned().collect()
    };
    let (old, new) = (by_origin(old), by_origin(new));
    let mut comparison = Comparison::default();
    let mut new_people_of: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    let mut old_people_of: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for (origin, old_person) in &old {
        let Some(new_person) = new.get(origin) else {
            comparison.only_in_old += 1;
            continue;
        };
        comparison.records_compared += 1;
        new_people_of
            .entry(old_person)
            .or_default()
            .insert(new_person);
        old_people_of
            .entry(new_person)
            .or_default()
            .insert(old_person);
    }
    comparison.only_in_new = new.keys().filter(|o| !old.contains_key(*o)).count();
    comparison.people = new_people_of.len();
    comparison.split = new_people_of.values().filter(|p| p.len() > 1).count();
    comparison.merged = old_people_of.values().filter(|p| p.len() > 1).count();
    comparison
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(row: i64, person: &str) -> (RecordOrigin, String) {
        (
            RecordOrigin {
                organisation: "RX9".into(),
                dataset: "d".into(),
                source_row: row,
            },
            person.to_owned(),
        )
    }

    #[test]
    fn the_same_partition_under_other_names_is_unchanged() {
        let old = [record(1, "a"), record(2, "a"), record(3, "b")];
        let new = [
            record(1, "x"),
            record(2, "x"),
            record(3, "y"),
            record(3, "y"),
        ];
        let c = compare(&old, &new);
        assert!(c.unchanged(), "{c:?}");
        assert_eq!((c.records_compared, c.people), (3, 2));
    }

    #[test]
    fn splits_merges_and_missing_records_are_counted() {
        let old = [
            record(1, "a"),
            record(2, "a"),
            record(3, "b"),
            record(4, "c"),
            record(5, "d"),
        ];
        let new = [
            record(1, "x"),
            record(2, "y"),
            record(3, "z"),
            record(4, "z"),
            record(6, "w"),
        ];
        let c = compare(&old, &new);
        assert_eq!(
            (
                c.split,
                c.merged,
                c.only_in_old,
                c.only_in_new,
                c.records_compared
            ),
            (1, 1, 1, 1, 4)
        );
        assert!(!c.unchanged());
    }
}
