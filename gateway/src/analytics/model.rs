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
    /// A built-in indicator (`joinery query library` lists them): it gives
    /// the cohort and the measure; the query adds breakdowns and dates.
    #[serde(default)]
    pub indicator: Option<String>,
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
    /// Risk tiers, for a `stratum` breakdown: a built-in stratification by
    /// name (`children-at-risk@1`, or `children-at-risk` for its latest
    /// version) or one written out here.
    #[serde(default, rename = "stratification")]
    pub(super) stratification_spec: Option<StratificationSpec>,
    /// The risk tiers the document names or writes out, as
    /// [`AnalystQuery::parse`] resolves them (`library.rs`).
    #[serde(skip)]
    pub stratification: Option<Stratification>,
    /// The periods of a `period` breakdown, the last ending on the
    /// reference date.
    #[serde(default)]
    pub periods: Option<Periods>,
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
    /// The cell's children's matching events, at most three a child.
    Events(Box<EventCondition>),
    /// The percentage of the cell's children who meet the condition,
    /// computed from noisy counts; suppressed with its numerator or
    /// denominator.
    Share(Box<Condition>),
    /// The median days from each child's first `from` event to the first
    /// `to` event on or after it (children with both), found by a noisy
    /// search and shown when the noisy number of children with one passes
    /// the suppression threshold.
    MedianDays(Box<Interval>),
    /// The median change in a numeric attribute from each child's first
    /// matching event to their last (children with two or more), found and
    /// shown as a median wait is.
    MedianChange(Box<Change>),
}

/// A numeric attribute of one kind of event (an SDQ score), first to last.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// The events that carry it (each child's first and last count).
    pub of: EventCondition,
    /// The attribute, as the agreement names it (`sdq_total`).
    pub attribute: String,
}

/// The periods a `period` breakdown counts in: `count` periods of one
/// length, the last ending on the reference date. In each, ages and
/// `within_months` windows are counted at the period's last day.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Periods {
    /// The length of each period.
    pub every: PeriodLength,
    /// How many periods (default 3).
    #[serde(default = "three")]
    pub count: u32,
}

fn three() -> u32 {
    3
}

/// How long each period of a `period` breakdown is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeriodLength {
    Month,
    Quarter,
    Year,
}

impl PeriodLength {
    pub fn months(self) -> u32 {
        match self {
            Self::Month => 1,
            Self::Quarter => 3,
            Self::Year => 12,
        }
    }
}

/// From one event to the next of another kind, for a median wait.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Interval {
    /// The event the wait starts at (each child's first).
    pub from: EventCondition,
    /// The event that ends it (the first on or after `from`).
    pub to: EventCondition,
}

/// A stratification named from the built-in library or written out.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StratificationSpec {
    Named(String),
    Inline(Stratification),
}

/// Rule-based risk stratification: points for each factor a person has,
/// and tiers by total points. Versioned, so a published table says which
/// rules made it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stratification {
    /// Its name, as tables and `stratification:` references give it.
    pub name: String,
    /// Its version: a change of rules is a new version.
    pub version: u32,
    /// What earns points.
    pub factors: Vec<Factor>,
    /// Each tier starts at `from_points`; the first must start at 0.
    pub tiers: Vec<Tier>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Factor {
    /// The factor in words, as the table's explanation lists it.
    pub name: String,
    /// Points a person with it scores.
    pub points: u32,
    /// Who has the factor.
    pub when: Condition,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// The tier's name, a column or row of a `stratum` breakdown.
    pub name: String,
    /// The fewest points that put a person in it.
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
    /// The person is in an open spell at the reference date (looked after,
    /// on a CP plan, open to CAMHS), and has been for at least `for_days`.
    Open(Spell),
}

/// A spell between `start` and `end` events. It opens on a start and
/// closes on an end, except that an end and a start on the same day carry
/// it on (an SSDA903 episode ending because a new one begins).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spell {
    /// The event type that opens it (`lac_episode_start`, `cp_plan_start`…).
    pub start: String,
    /// The event type that closes it.
    pub end: String,
    /// Only events of this dataset.
    #[serde(default)]
    pub dataset: Option<String>,
    /// Open at least this many days by the reference date.
    #[serde(default)]
    pub for_days: u32,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgeRange {
    /// The youngest age counted, in whole years.
    #[serde(default)]
    pub from: u32,
    /// The oldest age counted (no limit when absent).
    #[serde(default = "no_limit")]
    pub to: u32,
}

fn no_limit() -> u32 {
    u32::MAX
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KnownTo {
    /// An organisation code (ODS or local-authority code).
    #[serde(default)]
    pub organisation: Option<String>,
    /// A dataset, as the agreements name it.
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
    /// Only the person's first (or last) event of this type (and dataset
    /// and attributes) counts, wherever it falls; the dates and relative
    /// conditions then apply to it: "whose first referral was in the year".
    #[serde(default)]
    pub which: Option<Which>,
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

/// Which of a child's matching events counts: the first or the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Which {
    First,
    Last,
}

/// The nearest other event of a type (the next one for `before`, the
/// previous one for `after`), within or at least so many days away: a
/// CAMHS referral followed by a contact within 126 days; a CP plan end at
/// least 730 days after the start it closes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Relative {
    /// The other event's type.
    pub event: String,
    /// Only other events from this dataset.
    #[serde(default)]
    pub dataset: Option<String>,
    /// Attribute values the other event must carry (any of the listed values).
    #[serde(default)]
    pub attributes: BTreeMap<String, Vec<String>>,
    /// At most this many days away.
    #[serde(default)]
    pub within_days: Option<u32>,
    /// At least this many days away.
    #[serde(default)]
    pub at_least_days: Option<u32>,
}

/// What rows or columns are split by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Breakdown {
    /// One line: everyone.
    #[default]
    None,
    /// Life-course segments: early years 0-4, primary 5-10, adolescence
    /// 11-15, transition 16-17, young adults 18-25, 26+.
    Segment,
    /// Sex as the agencies recorded it (male, female, unknown).
    Sex,
    /// Known to 1, 2 or 3+ agencies.
    AgencyOverlap,
    /// Which combination of agencies the person is known to.
    Agencies,
    /// The tier of the query's `stratification`.
    Stratum,
    /// The query's `periods`, oldest first.
    Period,
    /// Age bands in whole years at the reference date, each starting at one
    /// of these ages: `{ age_bands: [0, 5, 11, 16, 18] }` gives 0-4, 5-10,
    /// 11-15, 16-17 and 18+.
    AgeBands(Vec<u32>),
    /// A record attribute the agreements let agencies send (`{ attribute:
    /// ethnicity }`), as the agency sent it; a person's first record with
    /// it gives the value.
    Attribute(String),
}

impl Breakdown {
    /// Whether its categories are recorded values (an attribute, an agency
    /// combination) rather than a fixed list.
    pub fn is_recorded(&self) -> bool {
        matches!(self, Self::Attribute(_) | Self::Agencies)
    }

    /// What the breakdown's labels are (empty for none).
    pub fn heading(&self) -> String {
        match self {
            Self::None => "",
            Self::Segment => "life-course segment",
            Self::Sex => "sex",
            Self::AgencyOverlap => "number of agencies known to",
            Self::Agencies => "agencies known to",
            Self::Stratum => "risk tier",
            Self::Period => "period",
            Self::AgeBands(_) => "age band",
            Self::Attribute(name) => name,
        }
        .to_owned()
    }

    /// The labels of age bands starting at `starts`.
    pub fn age_band_labels(starts: &[u32]) -> Vec<String> {
        (0..starts.len())
            .map(|band| Self::age_band_label(starts, band))
            .collect()
    }

    /// The label of band `band` of the age bands starting at `starts`.
    pub fn age_band_label(starts: &[u32], band: usize) -> String {
        let from = starts[band];
        match starts.get(band + 1) {
            Some(next) if *next == from + 1 => from.to_string(),
            Some(next) => format!("{from}-{}", next - 1),
            None => format!("{from}+"),
        }
    }
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
    /// The JSON Schema of a query document, for editors
    /// (`docs/queries/query.schema.json`, `joinery query schema`).
    pub fn schema() -> String {
        let mut text =
            serde_json::to_string_pretty(&schemars::schema_for!(AnalystQuery)).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Checks a parsed query's cohort, measure, breakdowns and periods.
    pub(super) fn check(&self) -> Result<(), String> {
        if let Some(cohort) = &self.cohort {
            check_condition(cohort)?;
        }
        match &self.measure {
            Measure::Share(condition) => check_condition(condition)?,
            Measure::Events(e) => check_event(e)?,
            Measure::MedianDays(i) => {
                check_event(&i.from)?;
                check_event(&i.to)?;
            }
            Measure::MedianChange(c) => check_event(&c.of)?,
            Measure::Children => {}
        }
        let wants = |b: Breakdown| self.rows == b || self.columns == b;
        for breakdown in [&self.rows, &self.columns] {
            match breakdown {
                Breakdown::AgeBands(starts)
                    if starts.first() != Some(&0) || starts.windows(2).any(|w| w[0] >= w[1]) =>
                {
                    return Err("age_bands: give the ages each band starts at, from 0 and rising (e.g. [0, 5, 11, 16, 18])".to_owned());
                }
                Breakdown::Attribute(name) if name.trim().is_empty() => {
                    return Err("attribute: name a record attribute (e.g. ethnicity)".to_owned());
                }
                _ => {}
            }
        }
        match &self.stratification {
            None if wants(Breakdown::Stratum) => {
                return Err("a stratum breakdown needs a stratification".to_owned());
            }
            None => {}
            Some(s) => s.check()?,
        }
        match &self.periods {
            None if wants(Breakdown::Period) => {
                return Err("a period breakdown needs periods (every: year, count: 3)".to_owned());
            }
            Some(_) if !wants(Breakdown::Period) => {
                return Err("periods are given but neither rows nor columns is period".to_owned());
            }
            Some(p) if !(1..=60).contains(&p.count) => {
                return Err("periods: count must be 1 to 60".to_owned());
            }
            _ => {}
        }
        if self.rows != Breakdown::None && self.rows == self.columns {
            return Err("rows and columns break down by the same thing".to_owned());
        }
        Ok(())
    }
}

impl Stratification {
    /// Tiers start at 0 points and rise; every factor's condition is valid.
    pub fn check(&self) -> Result<(), String> {
        self.factors
            .iter()
            .try_for_each(|f| check_condition(&f.when))?;
        let starts: Vec<u32> = self.tiers.iter().map(|t| t.from_points).collect();
        if starts.first() != Some(&0) || starts.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!(
                "stratification {}: tiers must start at 0 points and rise",
                self.name
            ));
        }
        Ok(())
    }
}

fn check_relative(r: &Relative) -> Result<(), String> {
    match (r.within_days, r.at_least_days) {
        (None, None) => Err(format!(
            "{}: give within_days, at_least_days or both",
            r.event
        )),
        (Some(within), Some(least)) if least > within => Err(format!(
            "{}: at_least_days is more than within_days",
            r.event
        )),
        _ => Ok(()),
    }
}
fn check_event(e: &EventCondition) -> Result<(), String> {
    if e.at_least == 0 {
        return Err(format!("has {}: at_least must be 1 or more", e.event));
    }
    e.before.iter().chain(&e.after).try_for_each(check_relative)
}
fn check_condition(c: &Condition) -> Result<(), String> {
    match c {
        Condition::All(list) | Condition::Any(list) if list.is_empty() => {
            Err("all/any needs at least one condition".to_owned())
        }
        Condition::All(list) | Condition::Any(list) => list.iter().try_for_each(check_condition),
        Condition::Not(inner) => check_condition(inner),
        Condition::Has(e) => check_event(e),
        Condition::Age(a) if a.from > a.to => Err("age: from is after to".to_owned()),
        Condition::KnownTo(k) if k.organisation.is_none() && k.dataset.is_none() => {
            Err("known_to: name an organisation or a dataset".to_owned())
        }
        Condition::Open(s) if s.start == s.end => Err(format!(
            "open: the spell's start and end are both {}",
            s.start
        )),
        _ => Ok(()),
    }
}
