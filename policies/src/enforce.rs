//! Checking what arrives against a dataset's rules: the gateway's half of
//! enforcement (the agent's half applies the same [`crate::transform`]s).
//! A record passes only if every attribute is one the agreement lets the
//! dataset send, in the form its transform produces, and every event is of
//! a listed type with a date at the allowed precision.

use std::collections::BTreeMap;

use crate::model::{Dataset, Transform};
use crate::transform::{event_date_obeys, obeys, wire_name};

/// Why a record breaks its agreement. Messages name fields, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("attribute {0:?} is not allowed by the agreement for this dataset")]
    FieldNotAllowed(String),
    #[error("attribute {0:?} does not have the form its transform produces")]
    ValueNotAllowed(String),
    #[error("an NHS number pseudonym is not allowed for this dataset")]
    NhsNotAllowed,
    #[error("event type {0:?} is not allowed by the agreement for this dataset")]
    EventNotAllowed(String),
    #[error("{0} event date is more precise than the agreement allows")]
    EventDateTooPrecise(String),
}

/// A dataset's rules, indexed by what appears on the wire.
pub struct DatasetRules<'a> {
    dataset: &'a Dataset,
    attributes: BTreeMap<&'a str, &'a Transform>,
}

impl<'a> DatasetRules<'a> {
    pub fn new(dataset: &'a Dataset) -> Self {
        let attributes = dataset
            .fields
            .iter()
            .filter_map(|(field, transform)| {
                wire_name(field, transform).map(|name| (name, transform))
            })
            .collect();
        Self {
            dataset,
            attributes,
        }
    }

    /// Checks one record's attributes, NHS pseudonym presence and events.
    pub fn check<'r>(
        &self,
        attributes: &BTreeMap<String, String>,
        has_nhs_pseudonym: bool,
        events: impl IntoIterator<Item = (&'r str, &'r str, &'r BTreeMap<String, String>)>,
    ) -> Result<(), Violation> {
        for (name, value) in attributes {
            let transform = self
                .attributes
                .get(name.as_str())
                .ok_or_else(|| Violation::FieldNotAllowed(name.clone()))?;
            if !obeys(transform, value) {
                return Err(Violation::ValueNotAllowed(name.clone()));
            }
        }
        if has_nhs_pseudonym
            && self.dataset.fields.get("nhs_number") != Some(&Transform::Pseudonymise)
        {
            return Err(Violation::NhsNotAllowed);
        }
        for (event_type, date, event_attributes) in events {
            let rule = self
                .dataset
                .events
                .get(event_type)
                .ok_or_else(|| Violation::EventNotAllowed(event_type.to_owned()))?;
            if !event_date_obeys(&rule.date, date) {
                return Err(Violation::EventDateTooPrecise(event_type.to_owned()));
            }
            for (name, value) in event_attributes {
                let transform = rule
                    .attributes
                    .get(name)
                    .ok_or_else(|| Violation::FieldNotAllowed(format!("{event_type}.{name}")))?;
                if !obeys(transform, value) {
                    return Err(Violation::ValueNotAllowed(format!("{event_type}.{name}")));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventRule;

    fn dataset() -> Dataset {
        Dataset {
            description: String::new(),
            retention_days: 10,
            fields: [
                ("local_id".to_owned(), Transform::Pseudonymise),
                ("nhs_number".to_owned(), Transform::Pseudonymise),
                ("date_of_birth".to_owned(), Transform::Month),
                ("ethnicity".to_owned(), Transform::Keep),
                ("notes".to_owned(), Transform::Drop),
            ]
            .into(),
            events: [(
                "referral".to_owned(),
                EventRule {
                    date: Transform::Month,
                    attributes: [("source".to_owned(), Transform::Keep)].into(),
                },
            )]
            .into(),
        }
    }

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn allowed_records_pass_and_each_violation_is_named() {
        let d = dataset();
        let rules = DatasetRules::new(&d);
        let source = attrs(&[("source", "police")]);
        assert_eq!(
            rules.check(
                &attrs(&[("birth_month", "2015-04"), ("ethnicity", "WBRI")]),
                true,
                [("referral", "2024-05-01", &source)]
            ),
            Ok(())
        );
        assert_eq!(
            rules.check(&attrs(&[("notes", "x")]), false, []),
            Err(Violation::FieldNotAllowed("notes".into()))
        );
        assert_eq!(
            rules.check(&attrs(&[("date_of_birth", "2015-04-03")]), false, []),
            Err(Violation::FieldNotAllowed("date_of_birth".into()))
        );
        assert_eq!(
            rules.check(&attrs(&[("birth_month", "2015-04-03")]), false, []),
            Err(Violation::ValueNotAllowed("birth_month".into()))
        );
        let empty = BTreeMap::new();
        assert_eq!(
            rules.check(
                &BTreeMap::new(),
                false,
                [("assessment", "2024-05-01", &empty)]
            ),
            Err(Violation::EventNotAllowed("assessment".into()))
        );
        assert_eq!(
            rules.check(
                &BTreeMap::new(),
                false,
                [("referral", "2024-05-17", &empty)]
            ),
            Err(Violation::EventDateTooPrecise("referral".into()))
        );
        let extra = attrs(&[("worker", "x")]);
        assert_eq!(
            rules.check(
                &BTreeMap::new(),
                false,
                [("referral", "2024-05-01", &extra)]
            ),
            Err(Violation::FieldNotAllowed("referral.worker".into()))
        );
        let mut no_nhs = dataset();
        no_nhs.fields.insert("nhs_number".into(), Transform::Drop);
        assert_eq!(
            DatasetRules::new(&no_nhs).check(&BTreeMap::new(), true, []),
            Err(Violation::NhsNotAllowed)
        );
    }
}
