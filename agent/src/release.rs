//! What leaves the agent: a canonical row becomes a wire [`Record`] holding
//! pseudonyms and coarsened attributes only.
//!
//! Until the signed data-sharing agreement drives this (the policy issue),
//! the release rules are fixed and conservative: the NHS number and the local
//! id are replaced by keyed HMAC-SHA256 pseudonyms under the agreement's
//! linkage key; the date of birth becomes its month (`birth_month`, YYYY-MM);
//! the postcode becomes its district; sex is kept; names are not sent.

use joinery_crypto::keys::SecretKey;
use joinery_crypto::pseudonym::{Pseudonym, Pseudonymiser};
use joinery_proto::v1::{Event, Record};

use crate::row::PersonRow;

pub struct Releaser {
    nhs: Pseudonymiser,
    local: Pseudonymiser,
}

impl Releaser {
    pub fn new(linkage_key: &SecretKey) -> Self {
        Self {
            nhs: Pseudonymiser::new(linkage_key, "agent nhs-number"),
            local: Pseudonymiser::new(linkage_key, "agent local-id"),
        }
    }

    /// The pseudonym of an agency-local record id.
    pub fn local_pseudonym(&self, local_id: &str) -> Pseudonym {
        self.local.pseudonymise(local_id.as_bytes())
    }

    pub fn release(&self, row: &PersonRow, line: u64) -> Record {
        let mut attributes = row.attributes.clone();
        if let Some(sex) = &row.sex {
            attributes.insert("sex".to_owned(), sex.clone());
        }
        if let Some(dob) = row.date_of_birth {
            attributes.insert(
                "birth_month".to_owned(),
                format!("{:04}-{:02}", dob.year(), dob.month() as u8),
            );
        }
        if let Some(postcode) = &row.postcode {
            attributes.insert(
                "postcode_district".to_owned(),
                postcode.district().to_owned(),
            );
        }
        Record {
            source_row: line,
            local_pseudonym: self.local_pseudonym(&row.local_id).to_vec(),
            nhs_pseudonym: row
                .nhs_number
                .as_ref()
                .map(|n| self.nhs.pseudonymise(n.as_bytes()).to_vec())
                .unwrap_or_default(),
            attributes,
            events: row
                .events
                .iter()
                .map(|e| Event {
                    event_type: e.event_type.clone(),
                    date: e.date.to_string(),
                    attributes: e.attributes.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use time::macros::date;

    #[test]
    fn released_record_holds_no_identifier() {
        let row = PersonRow {
            local_id: "CHILD-123".into(),
            nhs_number: Some("9434765919".into()),
            given_name: Some("JANE".into()),
            family_name: Some("SMITHERSON".into()),
            date_of_birth: Some(date!(2015 - 04 - 03)),
            sex: Some("female".into()),
            postcode: Some(crate::validate::postcode("LS6 2AB").unwrap()),
            attributes: Default::default(),
            events: vec![],
        };
        let record = Releaser::new(&SecretKey::from_bytes([5; 32])).release(&row, 7);
        assert_eq!(record.attributes["birth_month"], "2015-04");
        assert_eq!(record.attributes["postcode_district"], "LS6");
        assert_eq!(record.nhs_pseudonym.len(), 32);
        let wire = record.encode_to_vec();
        let text = String::from_utf8_lossy(&wire);
        for secret in [
            "CHILD-123",
            "9434765919",
            "JANE",
            "SMITHERSON",
            "2015-04-03",
            "2AB",
        ] {
            assert!(!text.contains(secret), "{secret} leaked");
        }
    }

    #[test]
    fn no_nhs_number_means_an_empty_pseudonym() {
        let row = PersonRow {
            local_id: "1".into(),
            nhs_number: None,
            given_name: None,
            family_name: None,
            date_of_birth: None,
            sex: None,
            postcode: None,
            attributes: Default::default(),
            events: vec![],
        };
        let record = Releaser::new(&SecretKey::from_bytes([5; 32])).release(&row, 2);
        assert!(record.nhs_pseudonym.is_empty());
        assert!(record.attributes.is_empty());
    }
}
