//! The built-in library: indicators (the DfE children-in-need and
//! looked-after measures, CAMHS access and waits, each with its exact
//! definition; `gateway/library/indicators.yaml`) and versioned risk
//! stratifications (`gateway/library/stratifications/`). Both are compiled
//! into the gateway, so every gateway answers a named indicator the same way.

use std::sync::LazyLock;

use schemars::JsonSchema;
use serde::Deserialize;

use super::model::{AnalystQuery, Condition, Measure, Stratification, StratificationSpec};

/// One built-in indicator: what it measures and the query that measures it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Indicator {
    pub name: String,
    pub title: String,
    pub question: Question,
    /// The published measure it follows.
    pub source: String,
    /// Exactly who is counted and how.
    pub definition: String,
    /// Which way is better, where one is (a count of children seen is
    /// neither): the console judges whether the curve has turned by it.
    #[serde(default)]
    pub better: Option<Better>,
    pub cohort: Condition,
    pub measure: Measure,
}

/// Which way an indicator improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
}

impl Better {
    pub fn word(self) -> &'static str {
        match self {
            Self::Lower => "lower",
            Self::Higher => "higher",
        }
    }
}

/// The three questions Results-Based Accountability asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Question {
    HowMuch,
    HowWell,
    BetterOff,
}

impl Question {
    pub fn words(self) -> &'static str {
        match self {
            Self::HowMuch => "How much did we do?",
            Self::HowWell => "How well did we do it?",
            Self::BetterOff => "Is anyone better off?",
        }
    }
}

const INDICATORS: &str = include_str!("../../library/indicators.yaml");
const STRATIFICATIONS: &[&str] = &[include_str!(
    "../../library/stratifications/children-at-risk-v1.yaml"
)];

/// The built-in indicators, in the library's order.
pub fn indicators() -> &'static [Indicator] {
    static PARSED: LazyLock<Vec<Indicator>> = LazyLock::new(|| {
        serde_saphyr::from_str(INDICATORS)
            .unwrap_or_else(|e| panic!("the built-in indicators are invalid (a build defect): {e}"))
    });
    &PARSED
}

/// The built-in stratifications, every version.
pub fn stratifications() -> &'static [Stratification] {
    static PARSED: LazyLock<Vec<Stratification>> = LazyLock::new(|| {
        STRATIFICATIONS
            .iter()
            .map(|text| {
                serde_saphyr::from_str(text).unwrap_or_else(|e| {
                    panic!("a built-in stratification is invalid (a build defect): {e}")
                })
            })
            .collect()
    });
    &PARSED
}

/// The indicator called `name`.
pub fn indicator(name: &str) -> Result<&'static Indicator, String> {
    indicators().iter().find(|i| i.name == name).ok_or_else(|| {
        let known: Vec<&str> = indicators().iter().map(|i| i.name.as_str()).collect();
        format!(
            "no built-in indicator {name:?}; there are: {}",
            known.join(", ")
        )
    })
}

/// The stratification `name@version`, or the latest version of `name`.
pub fn named_stratification(reference: &str) -> Result<&'static Stratification, String> {
    let (name, version) = match reference.split_once('@') {
        Some((name, version)) => (
            name,
            Some(version.parse::<u32>().map_err(|_| {
                format!("stratification {reference:?}: the version after @ must be a number")
            })?),
        ),
        None => (reference, None),
    };
    stratifications()
        .iter()
        .filter(|s| s.name == name && version.is_none_or(|v| s.version == v))
        .max_by_key(|s| s.version)
        .ok_or_else(|| {
            let known: Vec<String> = stratifications()
                .iter()
                .map(|s| format!("{}@{}", s.name, s.version))
                .collect();
            format!(
                "no built-in stratification {reference:?}; there are: {}",
                known.join(", ")
            )
        })
}

impl AnalystQuery {
    /// Parses a query (YAML, of which JSON is a part), filling in the
    /// cohort and measure of a built-in indicator and the tiers of a named
    /// stratification. Resolved here, after parsing, so the query's types
    /// (`model.rs`) know nothing of the library.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut query: Self = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        if let Some(name) = &query.indicator {
            if query.cohort.is_some() || !matches!(query.measure, Measure::Children) {
                return Err(format!(
                    "indicator {name} defines the cohort and the measure: give only breakdowns, periods and the reference date"
                ));
            }
            let indicator = indicator(name)?;
            query.cohort = Some(indicator.cohort.clone());
            query.measure = indicator.measure.clone();
        }
        query.stratification = match query.stratification_spec.take() {
            None => None,
            Some(StratificationSpec::Inline(s)) => Some(s),
            Some(StratificationSpec::Named(reference)) => {
                Some(named_stratification(&reference)?.clone())
            }
        };
        query.check()?;
        Ok(query)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use time::Date;
    use time::macros::date;

    use super::*;
    use crate::analytics::{Labels, Person, PersonEvent, stratum, tabulate};

    const ON: Date = date!(2026 - 03 - 31);

    /// A hand-built event: type, dataset, date, attributes.
    type Event<'a> = (&'a str, &'a str, Date, &'a [(&'a str, &'a str)]);

    /// A person with `events`, known to each event's dataset.
    fn person(events: &[Event<'_>]) -> Person {
        let mut p = Person::default();
        p.key = events.len() as u64 * 1000 + u64::from(events[0].2.ordinal());
        p.birth_month = Some("2012-05".into());
        p.sex = Some("female".into());
        for (event_type, dataset, day, attributes) in events {
            p.add_record("ORG".into(), (*dataset).into(), None, None);
            let attributes: BTreeMap<_, _> = attributes
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect();
            p.events.push(PersonEvent {
                event_type: (*event_type).into(),
                dataset: (*dataset).into(),
                date: *day,
                attributes: Arc::new(attributes),
            });
        }
        p.events.sort_by_key(|e| e.date);
        p
    }

    /// Children A to K, each described where the expectations use them.
    fn population() -> Vec<Person> {
        let cin = |t, d| (t, "cin", d, &[][..]);
        let rne = |d, code: &'static [(&'static str, &'static str)]| {
            ("lac_episode_start", "lac", d, code)
        };
        vec![
            // A: referred twice in the year, 184 days apart; a CP plan from
            // 2023-01-10 to 2025-06-01 (873 days) and another from 2025-12-01.
            person(&[
                cin("referral", date!(2025 - 05 - 01)),
                cin("referral", date!(2025 - 11 - 01)),
                cin("cp_plan_start", date!(2023 - 01 - 10)),
                cin("cp_plan_end", date!(2025 - 06 - 01)),
                cin("cp_plan_start", date!(2025 - 12 - 01)),
            ]),
            // B: referred in 2024-01 and again 517 days later; a first CP
            // plan from 2025-07-01 to 2026-02-01 (215 days).
            person(&[
                cin("referral", date!(2024 - 01 - 01)),
                cin("referral", date!(2025 - 06 - 01)),
                cin("cp_plan_start", date!(2025 - 07 - 01)),
                cin("cp_plan_end", date!(2026 - 02 - 01)),
            ]),
            // C: one referral in the year.
            person(&[cin("referral", date!(2025 - 09 - 01))]),
            // D: in care since 2024-01-01 through three placement moves in
            // the year (P, T, U; each episode ends the day the next
            // begins); health assessment up to date, teeth not checked;
            // missing once; SDQ 20 → 16 → 12.
            person(&[
                rne(date!(2024 - 01 - 01), &[("reason_new_episode", "S")]),
                ("lac_episode_end", "lac", date!(2025 - 05 - 01), &[]),
                rne(date!(2025 - 05 - 01), &[("reason_new_episode", "P")]),
                ("lac_episode_end", "lac", date!(2025 - 09 - 01), &[]),
                rne(date!(2025 - 09 - 01), &[("reason_new_episode", "T")]),
                ("lac_episode_end", "lac", date!(2026 - 01 - 01), &[]),
                rne(date!(2026 - 01 - 01), &[("reason_new_episode", "U")]),
                ("health_assessment", "lac", ON, &[("up_to_date", "1")]),
                ("dental_check", "lac", ON, &[("up_to_date", "0")]),
                (
                    "missing_episode",
                    "lac",
                    date!(2025 - 10 - 01),
                    &[("kind", "M")],
                ),
                (
                    "sdq_score",
                    "lac",
                    date!(2024 - 03 - 31),
                    &[("score", "20")],
                ),
                (
                    "sdq_score",
                    "lac",
                    date!(2025 - 03 - 31),
                    &[("score", "16")],
                ),
                ("sdq_score", "lac", ON, &[("score", "12")]),
            ]),
            // E: in care since 2025-08-01 (242 days); away without
            // authorisation once; one SDQ score.
            person(&[
                rne(date!(2025 - 08 - 01), &[("reason_new_episode", "S")]),
                (
                    "missing_episode",
                    "lac",
                    date!(2025 - 12 - 01),
                    &[("kind", "A")],
                ),
                ("sdq_score", "lac", ON, &[("score", "9")]),
            ]),
            // F: left care on 2025-06-30; missing before that; SDQ 10 → 14.
            person(&[
                rne(date!(2023 - 06 - 01), &[("reason_new_episode", "S")]),
                (
                    "missing_episode",
                    "lac",
                    date!(2025 - 05 - 01),
                    &[("kind", "M")],
                ),
                ("lac_episode_end", "lac", date!(2025 - 06 - 30), &[]),
                (
                    "sdq_score",
                    "lac",
                    date!(2024 - 03 - 31),
                    &[("score", "10")],
                ),
                (
                    "sdq_score",
                    "lac",
                    date!(2025 - 03 - 31),
                    &[("score", "14")],
                ),
            ]),
            // G: in care since 2024-04-01, one placement; assessment not up
            // to date, teeth checked.
            person(&[
                rne(date!(2024 - 04 - 01), &[("reason_new_episode", "S")]),
                ("health_assessment", "lac", ON, &[("up_to_date", "0")]),
                ("dental_check", "lac", ON, &[("up_to_date", "1")]),
            ]),
            // H: referred to CAMHS 2025-06-01; did not attend on 06-20;
            // seen on 08-01 (61 days).
            person(&[
                ("camhs_referral", "camhs", date!(2025 - 06 - 01), &[]),
                (
                    "camhs_contact",
                    "camhs",
                    date!(2025 - 06 - 20),
                    &[("attendance", "3")],
                ),
                (
                    "camhs_contact",
                    "camhs",
                    date!(2025 - 08 - 01),
                    &[("attendance", "5")],
                ),
            ]),
            // I: referred 2025-04-15, seen 183 days later.
            person(&[
                ("camhs_referral", "camhs", date!(2025 - 04 - 15), &[]),
                (
                    "camhs_contact",
                    "camhs",
                    date!(2025 - 10 - 15),
                    &[("attendance", "6")],
                ),
            ]),
            // J: referred 2026-02-01, not seen yet.
            person(&[("camhs_referral", "camhs", date!(2026 - 02 - 01), &[])]),
            // K: referred and seen before the year.
            person(&[
                ("camhs_referral", "camhs", date!(2024 - 11 - 01), &[]),
                (
                    "camhs_contact",
                    "camhs",
                    date!(2024 - 12 - 01),
                    &[("attendance", "5")],
                ),
            ]),
            // L: in care since 2022-01-01, last moved 2023-06-01: stable.
            person(&[
                rne(date!(2022 - 01 - 01), &[("reason_new_episode", "S")]),
                ("lac_episode_end", "lac", date!(2023 - 06 - 01), &[]),
                rne(date!(2023 - 06 - 01), &[("reason_new_episode", "P")]),
            ]),
            // M: in care since 2022-06-01, moved on 2025-01-01.
            person(&[
                rne(date!(2022 - 06 - 01), &[("reason_new_episode", "S")]),
                ("lac_episode_end", "lac", date!(2025 - 01 - 01), &[]),
                rne(date!(2025 - 01 - 01), &[("reason_new_episode", "T")]),
            ]),
        ]
    }

    /// The indicator's value over `people` at [`ON`], before disclosure
    /// control: children, events, a percentage or a median.
    fn value(name: &str, people: &[Person]) -> f64 {
        let query = AnalystQuery::parse(&format!("indicator: {name}\nreference_date: {ON}"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let table = tabulate(&query, people, ON, &Labels::default());
        let cell = &table.cells[0][0];
        match &query.measure {
            Measure::Children => cell.people as f64,
            Measure::Events(_) => cell.hits as f64,
            Measure::Share(_) => 100.0 * cell.hits as f64 / cell.people as f64,
            Measure::MedianDays(_) | Measure::MedianChange(_) => cell.median().unwrap_or(f64::NAN),
        }
    }

    #[test]
    fn every_indicator_gives_its_hand_computed_value() {
        let people = population();
        let third = 100.0 / 3.0;
        let expected: &[(&str, f64)] = &[
            ("cin-referrals", 4.0),                // A 2, B 1, C 1 in the year
            ("cp-plans-started", 2.0),             // A, B
            ("children-looked-after", 5.0),        // D, E, G, L, M (F left)
            ("lac-missing", 2.0),                  // D, F (E was away, not missing)
            ("camhs-access", 2.0),                 // H, I (H's first was a DNA; K before the year)
            ("cin-re-referrals", third),           // A of A, B, C
            ("lac-health-assessments", 25.0),      // D of D, G, L, M (E in care < 365 days)
            ("lac-dental-checks", 25.0),           // G of D, G, L, M
            ("camhs-seen-within-18-weeks", third), // H of H, I, J
            ("camhs-median-wait", 122.0),          // H 61, I 183
            ("cp-repeat-plans", 50.0),             // A of A, B
            ("cp-plans-lasting-two-years", 50.0),  // A (873 days) of A, B (215)
            ("lac-three-placements", 20.0),        // D of D, E, G, L, M
            ("lac-long-term-stability", 50.0),     // L of L, M (D and G in care < 2.5 years)
            ("sdq-change", -2.0),                  // D -8, F +4
        ];
        for (name, want) in expected {
            let got = value(name, &people);
            assert!((got - want).abs() < 1e-9, "{name}: {got}, expected {want}");
        }
        for indicator in indicators() {
            assert!(
                expected.iter().any(|(name, _)| *name == indicator.name),
                "{} has no hand-computed expectation",
                indicator.name
            );
        }
    }

    #[test]
    fn the_library_is_consistent() {
        let mut names: Vec<&str> = indicators().iter().map(|i| i.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            indicators().len(),
            "indicator names are unique"
        );
        for s in stratifications() {
            s.check().unwrap();
            assert_eq!(
                named_stratification(&format!("{}@{}", s.name, s.version))
                    .unwrap()
                    .version,
                s.version
            );
        }
        assert!(
            named_stratification("children-at-risk@9")
                .unwrap_err()
                .contains("children-at-risk@1")
        );
        assert!(
            indicator("cp-plans")
                .unwrap_err()
                .contains("cp-plans-started")
        );
        let err = AnalystQuery::parse("indicator: cp-plans-started\ncohort: { age: { from: 1 } }")
            .unwrap_err();
        assert!(err.contains("defines the cohort"), "{err}");
    }

    #[test]
    fn the_built_in_stratification_tiers_children() {
        let people = population();
        let children_at_risk = named_stratification("children-at-risk").unwrap();
        let tier = |i: usize| stratum(children_at_risk, &people[i], ON);
        assert_eq!(tier(0), "targeted", "A: known to CSC 1 + open CP plan 3");
        assert_eq!(tier(1), "universal", "B: known to CSC 1, plan ended");
        assert_eq!(tier(3), "targeted", "D: looked after 3 + missing 2");
        assert_eq!(tier(7), "universal", "H: seen within 18 weeks");
        assert_eq!(tier(9), "early help", "J: referred, not seen");
        let q = AnalystQuery::parse("rows: stratum\nstratification: children-at-risk@1").unwrap();
        assert_eq!(
            q.stratification.unwrap().factors.len(),
            children_at_risk.factors.len()
        );
    }

    #[test]
    fn periods_count_each_period_at_its_end() {
        let people = population();
        let q = AnalystQuery::parse(
            "indicator: cin-referrals\nreference_date: 2026-03-31\ncolumns: period\nperiods: { every: year, count: 3 }",
        )
        .unwrap();
        let table = tabulate(&q, &people, ON, &Labels::default());
        assert_eq!(
            table.columns,
            [
                "2023-04-01 to 2024-03-31",
                "2024-04-01 to 2025-03-31",
                "2025-04-01 to 2026-03-31"
            ]
        );
        assert_eq!(
            table.table(|c| c.hits),
            [[1, 0, 4]],
            "B's 2024 referral, none, A B C"
        );
        assert_eq!(table.cohort_size, 3, "A, B and C, each once");
        for bad in [
            "rows: period",
            "periods: { every: year }",
            "rows: period\nperiods: { every: month, count: 0 }",
        ] {
            assert!(AnalystQuery::parse(bad).is_err(), "{bad}");
        }
    }
}
