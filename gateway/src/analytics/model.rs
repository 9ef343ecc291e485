//! The analyst's query: a YAML or JSON document, the same through
//! `joinery query run FILE`, gRPC `joinery.v1.Query/Run` and HTTP.
//!
//! ```yaml
//! reference_date: 2026-03-31
//! cohort:
//!   all:
//!     - has: { event: cp_plan_start, from: 2025-04-01, to: 2026-03-31 }
//!     - has: { event: camhs_referral, before: { event: cp_plan_start, within_days: 365 } }
//!     - not: { has: { event: lac_episode_start } }
//!     - age: { from: 5, to: 17 }
//! rows: segment
//! columns: sex
//! ```

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use time::Date;

/// One question about the linked population.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalystQuery {
    /// The day ages and relative windows are counted from (default today).
    #[serde(default, deserialize_with = "optional_date::deserialize")]
    #[schemars(with = "Option<String>")]
    pub reference_date: Option<Date>,
    /// Who is counted; everyone on the person spine when absent.
    #[serde(default)]
    pub cohort: Option<Condition>,
    /// How the rows are broken down.
    #[serde(default)]
    pub rows: Breakdown,
    /// How the columns are broken down (one column when absent).
    #[serde(default)]
    pub columns: Breakdown,
    /// Risk tiers, for a `stratum` breakdown.
    #[serde(default)]
    pub stratification: Option<Stratification>,
    /// What each cell holds (children, by default).
    #[serde(default)]
    pub measure: Measure,
}

/// What a table's cells hold, in the three questions Results-Based
/// Accountability asks: how much did we do (children, events), how well
/// did we do it and is anyone better off (shares, median waits).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Measure {
    /// The cell's children.
    #[default]
    Children,
    /// The cell's children's matching events.
    Events(EventCondition),
    /// The percentage of the cell's children who meet the condition,
    /// computed from true counts; suppressed with its numerator or
    /// denominator.
    Share(Box<Condition>),
    /// The median days from each child's first `from` event to the first
    /// `to` event on or after it (children with both), shown when more
    /// children than the suppression threshold have one.
    MedianDays(Box<Interval>),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Interval {
    pub from: EventCondition,
    pub to: EventCondition,
}

/// Rule-based risk stratification: points for each factor a person has,
/// and tiers by total points. Versioned, so a published table says which
/// rules made it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stratification {
    pub name: String,
    pub version: u32,
    pub factors: Vec<Factor>,
    /// Each tier starts at `from_points`; the first must start at 0.
    pub tiers: Vec<Tier>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Factor {
    pub name: String,
    pub points: u32,
    /// Who has the factor.
    pub when: Condition,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub name: String,
    pub from_points: u32,
}

/// A condition on a person, combined with `all`, `any` and `not`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// Every condition holds.
    All(Vec<Condition>),
    /// At least one holds.
    Any(Vec<Condition>),
    /// It does not hold.
    Not(Box<Condition>),
    /// The person has matching events.
    Has(EventCondition),
    /// Age in whole years at the reference date, from..=to.
    Age(AgeRange),
    /// The person is known to this organisation or dataset.
    KnownTo(KnownTo),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgeRange {
    #[serde(default)]
    pub from: u32,
    #[serde(default = "no_limit")]
    pub to: u32,
}

fn no_limit() -> u32 {
    u32::MAX
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KnownTo {
    #[serde(default)]
    pub organisation: Option<String>,
    #[serde(default)]
    pub dataset: Option<String>,
}

/// Events of one type, optionally narrowed.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventCondition {
    /// Event type, e.g. `cp_plan_start`.
    pub event: String,
    /// Only events from this dataset.
    #[serde(default)]
    pub dataset: Option<String>,
    /// Attribute values the event must carry (any of the listed values).
    #[serde(default)]
    pub attributes: BTreeMap<String, Vec<String>>,
    /// Events on or after this day.
    #[serde(default, deserialize_with = "optional_date::deserialize")]
    #[schemars(with = "Option<String>")]
    pub from: Option<Date>,
    /// Events on or before this day.
    #[serde(default, deserialize_with = "optional_date::deserialize")]
    #[schemars(with = "Option<String>")]
    pub to: Option<Date>,
    /// Events in the last N months before the reference date.
    #[serde(default)]
    pub within_months: Option<u32>,
    /// How many matching events at least (default 1).
    #[serde(default = "one")]
    pub at_least: u32,
    /// Only events followed by another event within so many days (a CAMHS
    /// referral followed by a CP plan within 12 months).
    #[serde(default)]
    pub before: Option<Relative>,
    /// Only events preceded by another event within so many days.
    #[serde(default)]
    pub after: Option<Relative>,
}

fn one() -> u32 {
    1
}

/// Another event, within so many days.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Relative {
    pub event: String,
    #[serde(default)]
    pub dataset: Option<String>,
    pub within_days: u32,
}

/// What rows or columns are split by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Breakdown {
    /// One line: everyone.
    #[default]
    None,
    /// Life-course segments: early years 0-4, primary 5-10, adolescence
    /// 11-15, transition 16-17, young adults 18-25, 26+.
    Segment,
    Sex,
    /// Known to 1, 2 or 3+ agencies.
    AgencyOverlap,
    /// Which combination of agencies the person is known to.
    Agencies,
    /// The tier of the query's `stratification`.
    Stratum,
}

mod optional_date {
    use serde::{Deserialize, Deserializer};
    use time::Date;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Date>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            Date::parse(&t, &time::format_description::well_known::Iso8601::DATE)
                .map_err(|_| serde::de::Error::custom(format!("{t:?} is not a date (YYYY-MM-DD)")))
        })
        .transpose()
    }
}

impl AnalystQuery {
    /// Parses a query (YAML, of which JSON is a part).
    pub fn parse(text: &str) -> Result<Self, String> {
        let query: Self = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        query.check()?;
        Ok(query)
    }

    fn check(&self) -> Result<(), String> {
        fn walk(c: &Condition) -> Result<(), String> {
            match c {
                Condition::All(list) | Condition::Any(list) if list.is_empty() => {
                    Err("all/any needs at least one condition".to_owned())
                }
                Condition::All(list) | Condition::Any(list) => list.iter().try_for_each(walk),
                Condition::Not(inner) => walk(inner),
                Condition::Has(e) if e.at_least == 0 => {
                    Err(format!("has {}: at_least must be 1 or more", e.event))
                }
                Condition::Age(a) if a.from > a.to => Err("age: from is after to".to_owned()),
                Condition::KnownTo(k) if k.organisation.is_none() && k.dataset.is_none() => {
                    Err("known_to: name an organisation or a dataset".to_owned())
                }
                _ => Ok(()),
            }
        }
        if let Some(cohort) = &self.cohort {
            walk(cohort)?;
        }
        match &self.measure {
            Measure::Share(condition) => walk(condition)?,
            Measure::Events(e) => walk(&Condition::Has(e.clone()))?,
            Measure::MedianDays(i) => {
                walk(&Condition::Has(i.from.clone()))?;
                walk(&Condition::Has(i.to.clone()))?;
            }
            Measure::Children => {}
        }
        let wants_strata = self.rows == Breakdown::Stratum || self.columns == Breakdown::Stratum;
        match &self.stratification {
            None if wants_strata => {
                return Err("a stratum breakdown needs a stratification".to_owned());
            }
            None => {}
            Some(s) => {
                s.factors.iter().try_for_each(|f| walk(&f.when))?;
                let starts: Vec<u32> = s.tiers.iter().map(|t| t.from_points).collect();
                if starts.first() != Some(&0) || starts.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(format!(
                        "stratification {}: tiers must start at 0 points and rise",
                        s.name
                    ));
                }
            }
        }
        if self.rows != Breakdown::None && self.rows == self.columns {
            return Err("rows and columns break down by the same thing".to_owned());
        }
        Ok(())
    }
}
