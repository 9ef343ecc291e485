//! What leaves the agent: a canonical row becomes a wire [`Record`] under the
//! signed agreement's rules for its dataset, and nothing else.
//!
//! The local id (always) and the NHS number (when the agreement says
//! `pseudonymise`) become keyed HMAC-SHA256 pseudonyms under the agreement's
//! linkage key; the NHS number's made from the outputs of the agreement's
//! keyholders when it names any ([`crate::keyholders`]). Every other field is sent only if the dataset lists it, in the
//! form its transform produces ([`joinery_policies::transform`]): a date of
//! birth as month, year or age band, a postcode as district or sector, codes
//! through their map. Names never leave. Event types and event attributes the
//! agreement does not list are not sent. When the agreement lists linkage
//! fields, the record also carries their keyed encodings (Bloom filters and
//! blocking keys, [`joinery_linkage`]), from which nothing can be read back.

use std::collections::BTreeMap;

use joinery_crypto::pseudonym::{Pseudonym, Pseudonymiser};
use joinery_linkage::params::ParamsError;
use joinery_linkage::{Encoder, LinkageParams};
use joinery_policies::model::{Dataset, Transform};
use joinery_policies::transform::{age_band_of, apply, event_date, wire_name};
use joinery_proto::v1::{Event, LinkageEncoding, Record};
use time::Date;

use crate::error::AgentError;
use crate::keyholders::Keyholders;
use crate::keys::ReleaseKeys;
use crate::mapping::Resolved;
use crate::person::PersonRow;

pub struct Releaser {
    nhs: Pseudonymiser,
    /// Present when the agreement names keyholders: NHS pseudonyms are
    /// made through them, never with `nhs`.
    keyholders: Option<Keyholders>,
    local: Pseudonymiser,
    /// Present when the agreement asks for fuzzy linkage.
    encoder: Option<Encoder>,
}

impl Releaser {
    /// `linkage`: the agreement's linkage parameters, if it has any;
    /// `keyholders`: its keyholders, connected, if it names any.
    pub fn new(
        keys: &ReleaseKeys,
        linkage: Option<&LinkageParams>,
        keyholders: Option<Keyholders>,
    ) -> Result<Self, ParamsError> {
        let linkage_key = &keys.linkage;
        Ok(Self {
            nhs: Pseudonymiser::new(linkage_key, "agent nhs-number"),
            keyholders,
            local: Pseudonymiser::new(&keys.local_ids, "agent local-id"),
            encoder: linkage
                .map(|params| Encoder::new(linkage_key, params))
                .transpose()?,
        })
    }

    /// The records for `rows` (each with the source line it was read from)
    /// under `dataset`'s rules; `today` is the extraction date for age
    /// bands. The NHS numbers of all of them are pseudonymised together (one
    /// round to the keyholders, when the agreement names any).
    pub fn release_all(
        &self,
        rows: &[(u64, PersonRow)],
        dataset: &Dataset,
        today: Date,
    ) -> Result<Vec<Record>, AgentError> {
        let pseudonymised = matches!(
            dataset.fields.get("nhs_number"),
            Some(Transform::Pseudonymise)
        );
        let numbers: Vec<&str> = rows
            .iter()
            .filter_map(|(_, row)| row.nhs_number.as_deref())
            .filter(|_| pseudonymised)
            .collect();
        let pseudonyms = match &self.keyholders {
            Some(keyholders) => keyholders.pseudonymise(&numbers)?,
            None => numbers
                .iter()
                .map(|n| self.nhs.pseudonymise(n.as_bytes()))
                .collect(),
        };
        let mut pseudonyms = pseudonyms.into_iter();
        Ok(rows
            .iter()
            .map(|(line, row)| {
                let nhs = pseudonymised
                    .then(|| row.nhs_number.as_ref().and_then(|_| pseudonyms.next()))
                    .flatten();
                self.release(row, *line, dataset, today, nhs)
            })
            .collect())
    }

    /// The pseudonym of an agency-local record id.
    pub fn local_pseudonym(&self, local_id: &str) -> Pseudonym {
        self.local.pseudonymise(local_id.as_bytes())
    }

    /// The record for `row` (read from source line `line`) under `dataset`'s
    /// rules, with its NHS pseudonym if it is sent.
    fn release(
        &self,
        row: &PersonRow,
        line: u64,
        dataset: &Dataset,
        today: Date,
        nhs_pseudonym: Option<Pseudonym>,
    ) -> Record {
        let fields = &dataset.fields;
        let mut attributes = BTreeMap::new();
        let mut put = |field: &str, value: Option<String>| {
            if let (Some(transform), Some(value)) = (fields.get(field), value)
                && let Some(name) = wire_name(field, transform)
            {
                attributes.insert(name.to_owned(), value);
            }
        };
        put(
            "date_of_birth",
            row.date_of_birth
                .zip(fields.get("date_of_birth"))
                .and_then(|(dob, t)| match t {
                    Transform::AgeBand(bands) => age_band_of(bands, age_on(dob, today)),
                    Transform::Keep => Some(dob.to_string()),
                    other => apply(other, &dob.to_string()),
                }),
        );
        put(
            "postcode",
            row.postcode
                .as_ref()
                .zip(fields.get("postcode"))
                .and_then(|(p, t)| match t {
                    Transform::District => Some(p.district().to_owned()),
                    Transform::Sector => Some(p.sector()),
                    Transform::Area => Some(p.area().to_owned()),
                    Transform::Keep => Some(p.normalised()),
                    _ => None,
                }),
        );
        put(
            "sex",
            row.sex
                .as_ref()
                .zip(fields.get("sex"))
                .and_then(|(s, t)| apply(t, s)),
        );
        for (name, value) in &row.attributes {
            put(name, fields.get(name).and_then(|t| apply(t, value)));
        }
        let nhs_pseudonym = nhs_pseudonym.map_or_else(Vec::new, |p| p.to_vec());
        let events = row
            .events
            .iter()
            .filter_map(|e| {
                let rule = dataset.events.get(&e.event_type)?;
                Some(Event {
                    event_type: e.event_type.clone(),
                    date: event_date(&rule.date, e.date)?.to_string(),
                    attributes: e
                        .attributes
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), apply(rule.attributes.get(k)?, v)?)))
                        .collect(),
                })
            })
            .collect();
        // A row without identity (an event table's) has nothing to encode:
        // its person links through the identity table's row.
        let encoder = self.encoder.as_ref().filter(|_| row.has_identity());
        let linkage = encoder.map(|encoder| {
            let encoding = encoder.encode(&row.linkage_identity());
            LinkageEncoding {
                version: encoder.params().version,
                filters: (0..encoder.params().fields.len())
                    .map(|f| {
                        joinery_linkage::Encoding::filter_bytes(
                            encoding.filter(encoder.params(), f),
                        )
                    })
                    .collect(),
                blocks: encoding
                    .blocks
                    .iter()
                    .map(|b| b.map_or_else(Vec::new, |b| b.to_vec()))
                    .collect(),
            }
        });
        Record {
            source_row: line,
            local_pseudonym: self.local_pseudonym(&row.local_id).to_vec(),
            nhs_pseudonym,
            attributes,
            events,
            linkage,
        }
    }
}

/// Whole years from `born` to `on`.
fn age_on(born: Date, on: Date) -> u32 {
    let mut years = on.year() - born.year();
    if (on.month() as u8, on.day()) < (born.month() as u8, born.day()) {
        years -= 1;
    }
    u32::try_from(years).unwrap_or(0)
}

/// What a source's mappings (one per table) produce that the agreement does
/// not let this dataset send (reported once per run, so agency IT can tidy
/// the mapping), each once.
pub fn withheld_by_agreement(mappings: &[&Resolved], dataset: &Dataset) -> Vec<String> {
    let mut withheld: Vec<String> = mappings
        .iter()
        .flat_map(|m| withheld_from(m, dataset))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    withheld.retain(|w| seen.insert(w.clone()));
    withheld
}

fn withheld_from(mapping: &Resolved, dataset: &Dataset) -> Vec<String> {
    let listed = |field: &str| {
        dataset
            .fields
            .get(field)
            .is_some_and(|t| *t != Transform::Drop)
    };
    let mut withheld: Vec<String> = [
        ("nhs_number", mapping.nhs_number.is_some()),
        ("date_of_birth", mapping.date_of_birth.is_some()),
        ("sex", mapping.sex.is_some()),
        ("postcode", mapping.postcode.is_some()),
    ]
    .into_iter()
    .filter(|(field, mapped)| *mapped && !listed(field))
    .map(|(field, _)| field.to_owned())
    .collect();
    withheld.extend(
        mapping
            .attributes
            .iter()
            .filter(|a| !listed(&a.name))
            .map(|a| a.name.clone()),
    );
    for event in &mapping.events {
        match dataset.events.get(&event.event_type) {
            None => withheld.push(format!("{} events", event.event_type)),
            Some(rule) => withheld.extend(
                event
                    .attributes
                    .iter()
                    .filter(|a| !rule.attributes.contains_key(&a.name))
                    .map(|a| format!("{}.{}", event.event_type, a.name)),
            ),
        }
    }
    withheld
}

#[cfg(test)]
mod tests {
    use super::*;
    use joinery_crypto::keys::SecretKey;

    fn test_keys() -> ReleaseKeys {
        ReleaseKeys {
            linkage: SecretKey::from_bytes([5; 32]),
            local_ids: SecretKey::from_bytes([5; 32]),
        }
    }

    /// An agency's own key for its local ids gives them pseudonyms the
    /// shared linkage key cannot compute; the NHS pseudonym stays the
    /// agreement's, so records still link across agencies.
    #[test]
    fn local_ids_under_the_agencys_own_key_are_not_the_shared_keys() {
        let shared = Releaser::new(&test_keys(), None, None).unwrap();
        let own = Releaser::new(
            &ReleaseKeys {
                local_ids: SecretKey::from_bytes([6; 32]),
                ..test_keys()
            },
            None,
            None,
        )
        .unwrap();
        assert_ne!(shared.local_pseudonym("L1"), own.local_pseudonym("L1"));
        assert_eq!(
            shared.nhs.pseudonymise(b"9434765919"),
            own.nhs.pseudonymise(b"9434765919")
        );
    }

    fn release_one(
        releaser: &Releaser,
        row: &PersonRow,
        line: u64,
        dataset: &Dataset,
        today: Date,
    ) -> Record {
        releaser
            .release_all(&[(line, row.clone())], dataset, today)
            .unwrap()
            .remove(0)
    }
    use joinery_policies::model::EventRule;
    use prost::Message;
    use time::macros::date;

    fn row() -> PersonRow {
        PersonRow {
            local_id: "CHILD-123".into(),
            nhs_number: Some("9434765919".into()),
            given_name: Some("JANE".into()),
            family_name: Some("SMITHERSON".into()),
            date_of_birth: Some(date!(2015 - 04 - 03)),
            sex: Some("female".into()),
            postcode: Some(crate::validate::postcode("LS6 2AB").unwrap()),
            upn: None,
            attributes: [
                ("ethnicity".to_owned(), "WBRI".to_owned()),
                ("worker".to_owned(), "Bob".to_owned()),
            ]
            .into(),
            events: vec![crate::person::Event {
                event_type: "referral".into(),
                date: date!(2024 - 05 - 17),
                attributes: [
                    ("source".to_owned(), "1A".to_owned()),
                    ("notes".to_owned(), "x".to_owned()),
                ]
                .into(),
            }],
        }
    }

    fn dataset(fields: &[(&str, Transform)]) -> Dataset {
        Dataset {
            description: String::new(),
            retention_days: 1,
            fields: fields
                .iter()
                .map(|(k, t)| ((*k).to_owned(), t.clone()))
                .collect(),
            events: [(
                "referral".to_owned(),
                EventRule {
                    date: Transform::Month,
                    attributes: [(
                        "source".to_owned(),
                        Transform::CodeMap([("1A".to_owned(), "police".to_owned())].into()),
                    )]
                    .into(),
                },
            )]
            .into(),
        }
    }

    #[test]
    fn sends_only_what_the_agreement_lists_in_its_form() {
        let releaser = Releaser::new(&test_keys(), None, None).unwrap();
        let d = dataset(&[
            ("local_id", Transform::Pseudonymise),
            ("nhs_number", Transform::Pseudonymise),
            ("date_of_birth", Transform::Month),
            ("postcode", Transform::District),
            ("sex", Transform::Keep),
            ("ethnicity", Transform::Keep),
            ("given_name", Transform::Drop),
        ]);
        let record = release_one(&releaser, &row(), 7, &d, date!(2026 - 01 - 01));
        let keys: Vec<&str> = record.attributes.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["birth_month", "ethnicity", "postcode_district", "sex"]
        );
        assert_eq!(record.attributes["birth_month"], "2015-04");
        assert_eq!(record.nhs_pseudonym.len(), 32);
        assert_eq!(
            record.events[0].date, "2024-05-01",
            "month precision: day 1"
        );
        assert_eq!(
            record.events[0].attributes,
            [("source".to_owned(), "police".to_owned())].into()
        );
        let wire = String::from_utf8_lossy(&record.encode_to_vec()).into_owned();
        for secret in [
            "CHILD-123",
            "9434765919",
            "JANE",
            "SMITHERSON",
            "2015-04-03",
            "2AB",
            "Bob",
        ] {
            assert!(!wire.contains(secret), "{secret} leaked");
        }
    }

    #[test]
    fn other_transforms_and_a_dropped_nhs_number() {
        let releaser = Releaser::new(&test_keys(), None, None).unwrap();
        let d = dataset(&[
            ("local_id", Transform::Pseudonymise),
            ("nhs_number", Transform::Drop),
            ("date_of_birth", Transform::AgeBand(vec![0, 5, 11, 16])),
            ("postcode", Transform::Sector),
        ]);
        let record = release_one(&releaser, &row(), 7, &d, date!(2026 - 04 - 02));
        assert!(record.nhs_pseudonym.is_empty());
        assert_eq!(
            record.attributes["age_band"], "5-10",
            "aged 10 the day before the birthday"
        );
        assert_eq!(record.attributes["postcode_sector"], "LS6 2");
        assert_eq!(record.attributes.len(), 2);
        assert_eq!(age_on(date!(2015 - 04 - 03), date!(2026 - 04 - 03)), 11);
        // The coarsest an agreement may ask: birth quarter, postcode area.
        let d = dataset(&[
            ("local_id", Transform::Pseudonymise),
            ("date_of_birth", Transform::Quarter),
            ("postcode", Transform::Area),
        ]);
        let record = release_one(&releaser, &row(), 7, &d, date!(2026 - 04 - 02));
        assert_eq!(record.attributes["birth_quarter"], "2015-Q2");
        assert_eq!(record.attributes["postcode_area"], "LS");
        assert_eq!(record.attributes.len(), 2);
        let rules = joinery_policies::enforce::DatasetRules::new(&d);
        assert_eq!(rules.check(&record.attributes, false, []), Ok(()));
    }

    #[test]
    fn only_rows_that_say_who_the_person_is_carry_linkage_encodings() {
        let params = joinery_linkage::params::LinkageParams::canonical();
        let releaser = Releaser::new(&test_keys(), Some(&params), None).unwrap();
        let d = dataset(&[("local_id", Transform::Pseudonymise)]);
        let today = date!(2026 - 01 - 01);
        assert!(
            release_one(&releaser, &row(), 1, &d, today)
                .linkage
                .is_some()
        );
        // An event table's row: its person's local id and NHS number only.
        let event_row = PersonRow {
            given_name: None,
            family_name: None,
            date_of_birth: None,
            postcode: None,
            ..row()
        };
        assert!(!event_row.has_identity());
        assert!(
            release_one(&releaser, &event_row, 2, &d, today)
                .linkage
                .is_none()
        );
    }

    #[test]
    fn an_attribute_the_agreement_links_on_is_encoded_not_sent() {
        let mut params = joinery_linkage::params::LinkageParams::canonical();
        params.fields.push(joinery_linkage::params::FieldEncoding {
            field: "worker".into(),
            name: None,
            tokens: joinery_linkage::params::Tokens::Bigrams,
            bits: 128,
            hashes: 4,
            salt: None,
            stands_in_for: Vec::new(),
            nicknames: false,
        });
        let releaser = Releaser::new(&test_keys(), Some(&params), None).unwrap();
        let d = dataset(&[("local_id", Transform::Pseudonymise)]);
        let today = date!(2026 - 01 - 01);
        let record = release_one(&releaser, &row(), 1, &d, today);
        assert!(!record.attributes.contains_key("worker"));
        let linkage = record.linkage.expect("an identity row is encoded");
        let worker = params.fields.len() - 1;
        assert_eq!(linkage.filters.len(), params.fields.len());
        assert_eq!(linkage.filters[worker].len(), 16, "128 bits");
        // Without the attribute, its filter is empty (missing).
        let mut without = row();
        without.attributes.remove("worker");
        let linkage = release_one(&releaser, &without, 2, &d, today)
            .linkage
            .unwrap();
        assert!(linkage.filters[worker].is_empty());
    }
}
