//! How rows of a national format's event tables find their person.
//!
//! In SSDA903, MHSDS, CSDS and FHIR exports only one table (Header, the MPI,
//! Patient) says who a person is; the others name the person by local id, or
//! only by another key (an MHSDS care contact names its referral's
//! `ServiceRequestId`). Before those tables are read, a pass over the
//! identity table (and over any table other tables point through) builds this
//! index in memory: about 60 bytes per person and per key, independent of how
//! many event rows follow. Each event row then carries its person's local id
//! and NHS number, so the gateway files it under the same person as the
//! identity row. A row naming nobody in the index is quarantined.
//!
//! Debug output shows sizes only, never an identifier.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::person::{PersonRow, Problem};

/// People of one source by local id, and other keys pointing at them.
#[derive(Default)]
pub struct PersonIndex {
    /// Local id -> NHS number (as a number), when the identity table has a
    /// valid one.
    people: HashMap<Box<str>, Option<u64>>,
    /// Key (e.g. a referral id) -> local id.
    keys: HashMap<Box<str>, Box<str>>,
}

impl fmt::Debug for PersonIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersonIndex")
            .field("people", &self.people.len())
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl PersonIndex {
    /// Adds a person from the identity table (`nhs_number`: ten valid digits).
    pub fn add_person(&mut self, local_id: &str, nhs_number: Option<&str>) {
        let nhs = nhs_number.and_then(|n| n.parse::<u64>().ok());
        self.people
            .entry(local_id.into())
            .and_modify(|known| *known = known.or(nhs))
            .or_insert(nhs);
    }

    /// Records that rows naming `key` belong to the person `local_id`.
    pub fn add_key(&mut self, key: &str, local_id: &str) {
        self.keys.insert(key.into(), local_id.into());
    }

    pub fn people(&self) -> usize {
        self.people.len()
    }
}

/// How one table's rows find their person in a [`PersonIndex`].
#[derive(Debug, Clone)]
pub struct PersonRef {
    pub index: Arc<PersonIndex>,
    pub by: By,
    /// The identity table, named in problems.
    pub identity_table: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum By {
    /// The row's `local_id` column holds the person's local id.
    LocalId,
    /// The row's `local_id` column holds a key another table (`table`)
    /// recorded for the person.
    Key { table: String },
}

impl PersonRef {
    /// Sets the row's local id and NHS number from its person; a row naming
    /// nobody known is a problem (reported by rule, not value).
    pub fn attach(&self, row: &mut PersonRow) -> Result<(), Problem> {
        if let By::Key { table } = &self.by {
            let local = self
                .index
                .keys
                .get(row.local_id.as_str())
                .ok_or_else(|| Problem::new("local_id", format!("names no row of {table}")))?;
            row.local_id = local.to_string();
        }
        let nhs = self
            .index
            .people
            .get(row.local_id.as_str())
            .ok_or_else(|| {
                Problem::new(
                    "local_id",
                    format!("names no person in {}", self.identity_table),
                )
            })?;
        if row.nhs_number.is_none() {
            row.nhs_number = nhs.map(|n| format!("{n:010}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(local_id: &str) -> PersonRow {
        PersonRow {
            local_id: local_id.into(),
            nhs_number: None,
            given_name: None,
            family_name: None,
            date_of_birth: None,
            sex: None,
            postcode: None,
            upn: None,
            attributes: Default::default(),
            events: Vec::new(),
        }
    }

    #[test]
    fn rows_find_their_person_directly_or_through_a_key() {
        let mut index = PersonIndex::default();
        index.add_person("P1", Some("0434765919"));
        index.add_person("P2", None);
        index.add_key("REF-9", "P1");
        let index = Arc::new(index);
        let direct = PersonRef {
            index: index.clone(),
            by: By::LocalId,
            identity_table: "MPI".into(),
        };
        let mut r = row("P1");
        direct.attach(&mut r).unwrap();
        assert_eq!(
            r.nhs_number.as_deref(),
            Some("0434765919"),
            "leading zero kept"
        );
        let mut r = row("P2");
        direct.attach(&mut r).unwrap();
        assert_eq!(r.nhs_number, None);
        let problem = direct.attach(&mut row("P3")).unwrap_err();
        assert_eq!(problem.to_string(), "local_id: names no person in MPI");

        let through = PersonRef {
            index,
            by: By::Key {
                table: "Referral".into(),
            },
            identity_table: "MPI".into(),
        };
        let mut r = row("REF-9");
        through.attach(&mut r).unwrap();
        assert_eq!(r.local_id, "P1");
        assert!(through.attach(&mut row("REF-1")).is_err());
        assert!(!format!("{through:?}").contains("P1"));
    }
}
