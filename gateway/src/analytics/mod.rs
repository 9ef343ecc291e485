//! Analytics over the linked population: cohorts, breakdowns and measures,
//! before disclosure control ([`crate::disclosure`]) decides what of them
//! may leave.
//!
//! A query ([`model::AnalystQuery`]) names a cohort — conditions on a
//! person's events, age and the services that know them, combined with
//! all / any / not ([`cohort`]) — how to break it down and what each cell
//! holds. [`table::tabulate`] counts it over the population
//! ([`population`], loaded by [`crate::storage::Storage::population`]:
//! compact, as millions of people are held — event types, datasets,
//! organisations, sex and birth month as two-byte [`symbol`]s; kept up to
//! date by who changed, [`Population::updated`]);
//! [`crate::disclosure::protect`] protects it; [`explain()`] says in words who
//! is counted.

pub mod cohort;
pub mod explain;
pub mod library;
pub mod model;
pub mod population;
pub mod shared;
pub mod symbol;
pub mod table;

pub use cohort::matches;
pub use explain::{describe, explain};
pub use population::{Interner, Person, PersonEvent, Population, Shard, Text};
pub use table::{
    Axis, CellData, Labels, MemberRow, OTHER, SEGMENTS, Tabulation, measure_name, members,
    population_labels, stratum, table_json, tabulate,
};

#[cfg(test)]
mod tests {
    use super::cohort::months_before;
    use super::*;
    use model::{AnalystQuery, Breakdown};
    use std::sync::Arc;
    use time::macros::date;
    use time::{Date, Duration};

    fn person(birth: &str, sex: &str, orgs: &[&str], events: &[(&str, &str, Date)]) -> Person {
        let mut p = Person::default();
        for org in orgs {
            p.add_record(
                (*org).into(),
                "d".into(),
                Some(sex.into()),
                Some(birth.into()),
            );
        }
        p.events = events
            .iter()
            .map(|(t, d, date)| PersonEvent {
                event_type: (*t).into(),
                dataset: (*d).into(),
                date: *date,
                attributes: Arc::new([("category_of_abuse".into(), "NEG".into())].into()),
            })
            .collect();
        p.events.sort_by_key(|e| e.date);
        p
    }

    fn query(text: &str) -> AnalystQuery {
        AnalystQuery::parse(text).unwrap()
    }

    #[test]
    fn relative_time_windows_attributes_and_negation() {
        let on = date!(2026 - 03 - 31);
        let a = person(
            "2015-06",
            "female",
            &["LA", "RX9"],
            &[
                ("camhs_referral", "camhs", date!(2025 - 01 - 10)),
                ("cp_plan_start", "cin", date!(2025 - 06 - 01)),
            ],
        );
        let b = person(
            "2012-01",
            "male",
            &["LA"],
            &[
                ("camhs_referral", "camhs", date!(2023 - 01 - 10)),
                ("cp_plan_start", "cin", date!(2025 - 06 - 01)),
                ("lac_episode_start", "lac", date!(2025 - 07 - 01)),
            ],
        );
        let c = person(
            "2024-02",
            "male",
            &["RX9"],
            &[("camhs_referral", "camhs", date!(2026 - 02 - 01))],
        );
        let people = [a, b, c];
        let count = |q: &str| tabulate(&query(q), &people, on, &Labels::default()).cohort_size;
        // A CP plan starting within 12 months after a CAMHS referral: only a.
        assert_eq!(
            count(
                "cohort: { has: { event: cp_plan_start, after: { event: camhs_referral, within_days: 365 } } }"
            ),
            1
        );
        assert_eq!(
            count(
                "cohort: { has: { event: camhs_referral, before: { event: cp_plan_start, within_days: 365 } } }"
            ),
            1
        );
        assert_eq!(count("cohort: { has: { event: cp_plan_start } }"), 2);
        assert_eq!(
            count(
                "cohort: { all: [ { has: { event: cp_plan_start } }, { not: { has: { event: lac_episode_start } } } ] }"
            ),
            1
        );
        assert_eq!(
            count("cohort: { has: { event: camhs_referral, within_months: 3 } }"),
            1,
            "c's referral in Feb 2026"
        );
        assert_eq!(
            count(
                "cohort: { has: { event: cp_plan_start, attributes: { category_of_abuse: [neg, emo] } } }"
            ),
            2
        );
        assert_eq!(
            count(
                "cohort: { has: { event: cp_plan_start, attributes: { category_of_abuse: [EMO] } } }"
            ),
            0
        );
        assert_eq!(
            count("cohort: { has: { event: camhs_referral, from: 2024-01-01, to: 2025-12-31 } }"),
            1
        );
        assert_eq!(
            count("cohort: { has: { event: camhs_referral, dataset: cin } }"),
            0
        );
        assert_eq!(
            count("cohort: { age: { from: 5, to: 10 } }"),
            1,
            "a is 10, b 14, c 2"
        );
        assert_eq!(
            count("cohort: { any: [ { age: { to: 4 } }, { known_to: { organisation: LA } } ] }"),
            3
        );
        assert_eq!(
            count("cohort: { has: { event: camhs_referral, at_least: 2 } }"),
            0
        );
        // First and last: a's first referral is in 2025, b's in 2023, c's in 2026.
        assert_eq!(
            count("cohort: { has: { event: camhs_referral, which: first, from: 2025-01-01 } }"),
            2
        );
        assert_eq!(
            count("cohort: { has: { event: camhs_referral, which: last, to: 2024-12-31 } }"),
            1,
            "only b's last referral is before 2025"
        );
        assert_eq!(
            count(
                "cohort: { has: { event: cp_plan_start, which: last, after: { event: camhs_referral, within_days: 365 } } }"
            ),
            1
        );

        let table = tabulate(
            &query("rows: segment\ncolumns: agency_overlap"),
            &people,
            on,
            &Labels::default(),
        );
        assert_eq!(table.columns, ["1 agency", "2 agencies", "3+ agencies"]);
        let row =
            |name: &str| table.counts()[table.rows.iter().position(|r| r == name).unwrap()].clone();
        assert_eq!(row("early years 0-4"), [1, 0, 0]);
        assert_eq!(row("primary 5-10"), [0, 1, 0]);
        assert_eq!(row("adolescence 11-15"), [1, 0, 0]);
        assert_eq!(row("unknown"), [0, 0, 0]);
        // Recorded values: only those disclosure control found safe over the
        // population are listed, the rest count as other, whoever is in the
        // cohort.
        let safe = |values: &[&str]| Labels {
            rows: Some(values.iter().map(|v| (*v).to_owned()).collect()),
            columns: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        };
        let combos = tabulate(
            &query("rows: agencies"),
            &people,
            on,
            &safe(&["LA", "LA + RX9"]),
        );
        assert_eq!(combos.rows, ["LA", "LA + RX9", "other"]);
        assert_eq!(
            combos.counts(),
            [[1], [1], [1]],
            "RX9 alone counts as other"
        );
        let unsafe_only = tabulate(&query("rows: agencies"), &people, on, &Labels::default());
        assert_eq!(unsafe_only.rows, ["other"], "no safe list: nothing listed");
        assert_eq!(unsafe_only.counts(), [[3]]);
        let counted =
            population_labels(&query("rows: agencies"), &Breakdown::Agencies, &people, on).unwrap();
        assert_eq!(counted.get("RX9"), Some(&1));
        assert!(population_labels(&query("rows: sex"), &Breakdown::Sex, &people, on).is_none());

        // Age bands of the analyst's choosing, and a record attribute.
        let mut people = people;
        let first: Arc<std::collections::BTreeMap<Text, Text>> =
            Arc::new([("ethnicity".into(), "WBRI".into())].into());
        let second = Arc::new(
            [
                ("ethnicity".into(), "WOTH".into()),
                ("disability".into(), "NONE".into()),
            ]
            .into(),
        );
        let mut reversed = people[0].clone();
        people[0].add_attributes(Arc::clone(&first));
        people[0].add_attributes(Arc::clone(&second));
        reversed.add_attributes(second);
        reversed.add_attributes(first);
        assert_eq!(
            people[0].attributes.get("ethnicity").map(|v| &**v),
            Some("WBRI"),
            "records disagree: the first value in alphabetical order"
        );
        assert_eq!(
            people[0].attributes, reversed.attributes,
            "whatever order the records are read in"
        );
        assert_eq!(
            people[0].attributes.get("disability").map(|v| &**v),
            Some("NONE")
        );
        let bands = tabulate(
            &query("rows: { age_bands: [0, 5, 11] }\ncolumns: { attribute: ethnicity }"),
            &people,
            on,
            &safe(&["WBRI"]),
        );
        assert_eq!(bands.rows, ["0-4", "5-10", "11+", "unknown"]);
        assert_eq!(bands.columns, ["WBRI", "other", "unknown"]);
        assert_eq!(
            bands.counts(),
            [[0, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0]],
            "c 2, a 10, b 14"
        );
        for bad in [
            "rows: { age_bands: [1, 5] }",
            "rows: { age_bands: [0, 5, 5] }",
            "rows: { attribute: \" \" }",
        ] {
            assert!(AnalystQuery::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn points_add_up_to_tiers() {
        let on = date!(2026 - 03 - 31);
        let none = person("2015-06", "female", &["LA"], &[]);
        let one = person(
            "2015-06",
            "female",
            &["LA"],
            &[("cp_plan_start", "cin", date!(2025 - 06 - 01))],
        );
        let both = person(
            "2015-06",
            "male",
            &["LA"],
            &[
                ("cp_plan_start", "cin", date!(2025 - 06 - 01)),
                ("ae_attendance", "fhir", date!(2025 - 09 - 01)),
                ("ae_attendance", "fhir", date!(2025 - 10 - 01)),
            ],
        );
        let q = query(
            "rows: stratum\ncolumns: sex\nstratification:\n  name: test\n  version: 1\n  factors:\n    - { name: CP plan, points: 3, when: { has: { event: cp_plan_start } } }\n    - { name: repeated A&E, points: 2, when: { has: { event: ae_attendance, at_least: 2, within_months: 12 } } }\n  tiers:\n    - { name: universal, from_points: 0 }\n    - { name: targeted, from_points: 2 }\n    - { name: specialist, from_points: 5 }\n",
        );
        let table = tabulate(&q, &[none, one, both], on, &Labels::default());
        assert_eq!(table.rows, ["universal", "targeted", "specialist"]);
        assert_eq!(table.columns[..2], ["female", "male"]);
        assert_eq!(table.counts(), [[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]]);
        assert!(
            explain(&q).contains("\n  - CP plan (3 points): with a cp_plan_start event\n"),
            "{}",
            explain(&q)
        );
        for bad in [
            "rows: stratum",
            "rows: stratum\nstratification: { name: t, version: 1, factors: [], tiers: [ { name: a, from_points: 1 } ] }",
            "rows: stratum\nstratification: { name: t, version: 1, factors: [], tiers: [ { name: a, from_points: 0 }, { name: b, from_points: 0 } ] }",
        ] {
            assert!(AnalystQuery::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn measures_count_events_shares_and_median_waits() {
        let on = date!(2026 - 03 - 31);
        // Ten girls referred to CAMHS: the first six seen 20, 40, … 120 days
        // later, the others never; each referred twice, 30 days apart.
        let people: Vec<Person> = (0..10)
            .map(|i| {
                let referred = date!(2025 - 06 - 01) + Duration::days(i);
                let mut events = vec![
                    ("camhs_referral", "camhs", referred),
                    ("camhs_referral", "camhs", referred + Duration::days(30)),
                ];
                if i < 6 {
                    events.push((
                        "camhs_contact",
                        "camhs",
                        referred + Duration::days(20 * (i + 1)),
                    ));
                }
                person("2014-01", "female", &["RX9"], &events)
            })
            .collect();
        let run = |text: &str| {
            let q = query(text);
            tabulate(&q, &people, on, &Labels::default()).with_totals()
        };
        // Events: 20 referrals in the female row (and its total).
        let events = run("rows: sex\nmeasure: { events: { event: camhs_referral } }");
        assert_eq!(events[0][0].hits, 20);
        assert_eq!(events[4][0].hits, 20, "the total row");
        // A child adds at most three events to a cell.
        let five: Vec<(&str, &str, Date)> = (0..5)
            .map(|i| {
                (
                    "camhs_referral",
                    "camhs",
                    date!(2025 - 06 - 01) + Duration::days(i),
                )
            })
            .collect();
        let busy = person("2014-01", "male", &["RX9"], &five);
        let capped = tabulate(
            &query("measure: { events: { event: camhs_referral } }"),
            &[busy],
            on,
            &Labels::default(),
        );
        assert_eq!(capped.cells[0][0].hits, 3);
        // Seen within 126 days of a referral: six of ten (the sixth was seen
        // 120 days after its first referral).
        let share = run(
            "rows: sex\nmeasure: { share: { has: { event: camhs_referral, before: { event: camhs_contact, within_days: 126 } } } }",
        );
        assert_eq!((share[0][0].hits, share[0][0].people), (6, 10));
        // Median days from the first referral to the first contact: 20..120 → 70.
        let median = run(
            "rows: sex\nmeasure: { median_days: { from: { event: camhs_referral }, to: { event: camhs_contact } } }",
        );
        assert!(
            explain(&query(
                "measure: { share: { has: { event: camhs_contact } } }"
            ))
            .contains("Each cell is the percentage of them with a camhs_contact event.")
        );
        assert_eq!(median[0][0].median(), Some(70.0));
        assert_eq!(median[0][0].values.len(), 6);
    }

    #[test]
    fn bad_queries_are_refused_with_a_reason() {
        for (text, expected) in [
            ("cohort: { all: [] }", "at least one"),
            ("cohort: { has: { event: x, at_least: 0 } }", "at_least"),
            ("cohort: { age: { from: 9, to: 3 } }", "from is after to"),
            ("rows: sex\ncolumns: sex", "same thing"),
            (
                "cohort: { has: { event: x, from: 2026-13-01 } }",
                "not a date",
            ),
            ("rows: postcode", "postcode"),
        ] {
            let err = AnalystQuery::parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn explain_says_who_is_counted() {
        let q = query(
            "reference_date: 2026-03-31\ncohort: { all: [ { has: { event: cp_plan_start, after: { event: camhs_referral, within_days: 365 } } }, { not: { has: { event: lac_episode_start } } }, { age: { from: 5, to: 17 } } ] }\nrows: segment",
        );
        assert_eq!(
            explain(&q),
            "People: (with a cp_plan_start event whose previous camhs_referral event is within 365 days before it and not with a lac_episode_start event and aged 5 to 17); counted by life-course segment. Ages and recent periods are counted at 2026-03-31."
        );
    }

    #[test]
    fn months_before_keeps_the_day_or_the_months_last() {
        assert_eq!(
            months_before(date!(2026 - 03 - 31), 1),
            date!(2026 - 02 - 28)
        );
        assert_eq!(
            months_before(date!(2026 - 03 - 31), 12),
            date!(2025 - 03 - 31)
        );
        assert_eq!(
            months_before(date!(2026 - 01 - 15), 2),
            date!(2025 - 11 - 15)
        );
    }
}
