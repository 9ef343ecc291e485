//! What the agreements in force let agencies send, and what a query asks
//! for that none does. An event type, dataset or attribute no agreement
//! shares never reaches the gateway, so a condition on it holds for no
//! child: the answer would read as a finding ("0% seen within 18 weeks").
//! [`Shared::unshared`] names each such use, and every answer carries them
//! as warnings; [`Shared::vocabulary`] lists what may be used (the
//! console's builder offers only that).

use std::collections::{BTreeMap, BTreeSet};

use joinery_policies::model::{Agreement, Transform};
use joinery_policies::transform::wire_name;
use joinery_proto::v1::{SharedDataset, SharedOrganisation, VocabularyResponse};

use super::model::{AnalystQuery, Breakdown, Condition, EventCondition, Measure, Spell};
use crate::storage::COLUMN_ATTRIBUTES;

/// The organisations, datasets, event types and attributes some agreement
/// shares.
#[derive(Debug, Default)]
pub struct Shared {
    /// Code → (name, datasets it sends).
    organisations: BTreeMap<String, (String, BTreeSet<String>)>,
    /// Dataset → (its event types, its record attributes).
    datasets: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>,
    events: BTreeSet<String>,
    /// (event type, attribute).
    event_attributes: BTreeSet<(String, String)>,
    /// Record attributes a breakdown can use, by the name they are sent
    /// under (`ethnicity`): not the pseudonyms, nor those stored in their
    /// own columns (sex, birth month, postcode district have breakdowns or
    /// none of their own).
    record_attributes: BTreeSet<String>,
}

impl Shared {
    pub fn of<'a>(agreements: impl IntoIterator<Item = &'a Agreement>) -> Self {
        let mut shared = Self::default();
        let agreements: Vec<&Agreement> = agreements.into_iter().collect();
        for party in agreements.iter().flat_map(|a| &a.parties) {
            let (_, sends) = shared
                .organisations
                .entry(party.organisation.clone())
                .or_insert_with(|| (party.name.clone(), BTreeSet::new()));
            sends.extend(party.sends.iter().cloned());
        }
        for (name, dataset) in agreements.iter().flat_map(|a| &a.datasets) {
            let (events, attributes) = shared.datasets.entry(name.clone()).or_default();
            let sent = dataset
                .fields
                .iter()
                .filter_map(|(field, transform)| wire_name(field, transform))
                .filter(|name| !COLUMN_ATTRIBUTES.contains(name));
            for name in sent {
                shared.record_attributes.insert(name.to_owned());
                attributes.insert(name.to_owned());
            }
            for (event, rule) in &dataset.events {
                events.insert(event.clone());
                shared.events.insert(event.clone());
                for (attribute, transform) in &rule.attributes {
                    if *transform != Transform::Drop {
                        shared
                            .event_attributes
                            .insert((event.clone(), attribute.clone()));
                    }
                }
            }
        }
        shared
    }

    /// What may be used, as the `Vocabulary` RPC answers it.
    pub fn vocabulary(&self) -> VocabularyResponse {
        let sorted = |set: &BTreeSet<String>| set.iter().cloned().collect();
        VocabularyResponse {
            organisations: self
                .organisations
                .iter()
                .map(|(code, (name, sends))| SharedOrganisation {
                    code: code.clone(),
                    name: name.clone(),
                    sends: sorted(sends),
                })
                .collect(),
            datasets: self
                .datasets
                .iter()
                .map(|(name, (events, attributes))| SharedDataset {
                    name: name.clone(),
                    events: sorted(events),
                    attributes: sorted(attributes),
                })
                .collect(),
        }
    }

    /// The vocabulary as JSON, as the HTTP API and the console serve it.
    pub fn vocabulary_json(words: &VocabularyResponse) -> serde_json::Value {
        serde_json::json!({
            "organisations": words.organisations.iter().map(|o| serde_json::json!({
                "code": o.code, "name": o.name, "sends": o.sends,
            })).collect::<Vec<_>>(),
            "datasets": words.datasets.iter().map(|d| serde_json::json!({
                "name": d.name, "events": d.events, "attributes": d.attributes,
            })).collect::<Vec<_>>(),
        })
    }

    /// Each thing `query` uses that no agreement shares, in words, once.
    pub fn unshared(&self, query: &AnalystQuery) -> Vec<String> {
        let mut walk = Walk {
            shared: self,
            missing: BTreeSet::new(),
        };
        if let Some(cohort) = &query.cohort {
            walk.condition(cohort);
        }
        match &query.measure {
            Measure::Children => {}
            Measure::Events(e) => walk.event(e),
            Measure::Share(c) => walk.condition(c),
            Measure::MedianDays(i) => {
                walk.event(&i.from);
                walk.event(&i.to);
            }
            Measure::MedianChange(c) => {
                walk.event(&c.of);
                walk.attribute(&c.of.event, &c.attribute);
            }
        }
        for breakdown in [&query.rows, &query.columns] {
            if let Breakdown::Attribute(name) = breakdown {
                walk.record_attribute(name);
            }
        }
        for factor in query.stratification.iter().flat_map(|s| &s.factors) {
            walk.condition(&factor.when);
        }
        walk.missing.into_iter().collect()
    }
}

/// One pass over a query, collecting what is not shared.
struct Walk<'a> {
    shared: &'a Shared,
    missing: BTreeSet<String>,
}

impl Walk<'_> {
    fn condition(&mut self, condition: &Condition) {
        match condition {
            Condition::All(all) | Condition::Any(all) => {
                all.iter().for_each(|c| self.condition(c));
            }
            Condition::Not(c) => self.condition(c),
            Condition::Has(e) => self.event(e),
            Condition::Age(_) => {}
            Condition::KnownTo(k) => {
                self.dataset(k.dataset.as_deref());
                self.organisation(k.organisation.as_deref());
            }
            Condition::Open(Spell {
                start,
                end,
                dataset,
                ..
            }) => {
                self.event_type(start);
                self.event_type(end);
                self.dataset(dataset.as_deref());
            }
        }
    }

    fn event(&mut self, e: &EventCondition) {
        self.event_type(&e.event);
        self.dataset(e.dataset.as_deref());
        for attribute in e.attributes.keys() {
            self.attribute(&e.event, attribute);
        }
        for relative in [&e.before, &e.after].into_iter().flatten() {
            self.event_type(&relative.event);
            self.dataset(relative.dataset.as_deref());
            for attribute in relative.attributes.keys() {
                self.attribute(&relative.event, attribute);
            }
        }
    }

    fn event_type(&mut self, event: &str) {
        if !self.shared.events.contains(event) {
            self.missing.insert(format!(
                "event type `{event}` is shared by no agreement in force: every condition on it counts as if no child had one"
            ));
        }
    }

    fn dataset(&mut self, dataset: Option<&str>) {
        if let Some(dataset) = dataset
            && !self.shared.datasets.contains_key(dataset)
        {
            self.missing.insert(format!(
                "dataset `{dataset}` is shared under no agreement in force: every condition on it counts as if no child were in it"
            ));
        }
    }

    fn organisation(&mut self, code: Option<&str>) {
        if let Some(code) = code
            && !self.shared.organisations.contains_key(code)
        {
            self.missing.insert(format!(
                "organisation `{code}` is party to no agreement in force: every condition on it counts as if no child were known to it"
            ));
        }
    }

    fn record_attribute(&mut self, name: &str) {
        if !self.shared.record_attributes.contains(name) {
            self.missing.insert(format!(
                "record attribute `{name}` is sent under no agreement in force: every child falls under \"other\""
            ));
        }
    }

    fn attribute(&mut self, event: &str, attribute: &str) {
        if self.shared.events.contains(event)
            && !self
                .shared
                .event_attributes
                .contains(&(event.to_owned(), attribute.to_owned()))
        {
            self.missing.insert(format!(
                "attribute `{attribute}` of `{event}` is sent under no agreement in force: no event carries it"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Shared {
        let text = include_str!("../../../policies/examples/children-at-risk-stratification.yaml");
        let agreement: Agreement = serde_saphyr::from_str(text).expect("the example agreement");
        Shared::of([&agreement])
    }

    fn unshared(query: &str) -> Vec<String> {
        example().unshared(&AnalystQuery::parse(query).expect("a query"))
    }

    #[test]
    fn what_no_agreement_shares_is_named_wherever_the_query_uses_it() {
        // Everything shared: no warning.
        assert_eq!(
            unshared(
                "cohort: { has: { event: camhs_referral, dataset: camhs_referrals, attributes: { source: [A1] } } }\nrows: { attribute: ethnicity }\n"
            ),
            Vec::<String>::new()
        );
        // An event type in a relative condition, inside `not`.
        let found = unshared(
            "cohort: { not: { has: { event: camhs_referral, before: { event: camhs_first_contact, within_days: 126 } } } }\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("`camhs_first_contact`"), "{found:?}");
        // A dataset, an attribute, a record attribute, a measure's event.
        let found = unshared(
            "cohort: { known_to: { dataset: school_census } }\nrows: { attribute: religion }\nmeasure: { events: { event: csc_referral, attributes: { outcome: [X] } } }\n",
        );
        let text = found.join("\n");
        for named in [
            "`school_census`",
            "`religion`",
            "`outcome` of `csc_referral`",
        ] {
            assert!(text.contains(named), "{named} in {text}");
        }
        // An organisation no agreement names.
        let found = unshared("cohort: { known_to: { organisation: Z99 } }\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("`Z99`"), "{found:?}");
        // A stratification's factors are walked too.
        let found = unshared(
            "rows: stratum\nstratification: { name: t, version: 1, factors: [ { name: f, points: 1, when: { open: { start: secret_start, end: secret_end } } } ], tiers: [ { name: all, from_points: 0 } ] }\n",
        );
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn the_vocabulary_lists_what_the_agreement_shares() {
        let words = example().vocabulary();
        let agreement: Agreement = serde_saphyr::from_str(include_str!(
            "../../../policies/examples/children-at-risk-stratification.yaml"
        ))
        .expect("the example agreement");
        let codes: Vec<&str> = words
            .organisations
            .iter()
            .map(|o| o.code.as_str())
            .collect();
        let parties: BTreeSet<&str> = agreement
            .parties
            .iter()
            .map(|p| p.organisation.as_str())
            .collect();
        assert_eq!(codes, parties.into_iter().collect::<Vec<_>>());
        let camhs = words
            .datasets
            .iter()
            .find(|d| d.name == "camhs_referrals")
            .expect("camhs_referrals is shared");
        assert!(
            camhs.events.iter().any(|e| e == "camhs_referral"),
            "{camhs:?}"
        );
        // Pseudonyms, dropped fields and the attributes stored in their own
        // columns are no breakdown attributes; ethnicity, sent as it is, is.
        for absent in ["nhs_number", "local_id", "given_name", "sex", "birth_month"] {
            assert!(
                !camhs.attributes.iter().any(|a| a == absent),
                "{absent}: {camhs:?}"
            );
        }
        let csc = words
            .datasets
            .iter()
            .find(|d| d.name == "csc_referrals")
            .expect("csc_referrals is shared");
        assert_eq!(csc.attributes, ["ethnicity"], "{csc:?}");
        assert_eq!(
            unshared("rows: { attribute: nhs_number }\n").len(),
            1,
            "a pseudonym is no breakdown attribute"
        );
        // Each organisation the vocabulary offers passes the unshared check.
        for o in &words.organisations {
            let query = format!("cohort: {{ known_to: {{ organisation: {} }} }}\n", o.code);
            assert_eq!(unshared(&query), Vec::<String>::new());
        }
    }
}
