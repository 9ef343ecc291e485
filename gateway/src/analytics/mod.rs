//! Analytics over the linked population: cohorts, breakdowns and their
//! counts, before disclosure control ([`crate::disclosure`]) decides what of
//! them may leave.
//!
//! A query ([`model::AnalystQuery`]) names a cohort — conditions on a
//! person's events, age and the services that know them, combined with
//! all / any / not — and how to break it down. [`tabulate`] counts the people
//! of the population ([`crate::storage::Storage::population`]) in each cell;
//! [`explain`] says in words who is counted.

pub mod model;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use joinery_proto::v1::{Cell, cell};
use time::{Date, Duration, Month};

use crate::disclosure::DisclosureRule;

use model::{
    AnalystQuery, Breakdown, Condition, EventCondition, Measure, Relative, Stratification,
};

/// One person on the spine, as analytics sees them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Person {
    /// Stands for the person in the query log (a digest of the spine id).
    pub key: u64,
    /// The earliest birth month the records give (YYYY-MM).
    pub birth_month: Option<Text>,
    /// `female`, `male`, `indeterminate` or `unknown`; the first recorded.
    pub sex: Option<Text>,
    pub organisations: BTreeSet<Text>,
    pub datasets: BTreeSet<Text>,
    /// In date order.
    pub events: Vec<PersonEvent>,
}

/// Shared text: event types, datasets and attribute values repeat across
/// millions of events, so each distinct one is held once ([`Interner`]).
pub type Text = Arc<str>;

#[derive(Debug, Clone, PartialEq)]
pub struct PersonEvent {
    pub event_type: Text,
    pub dataset: Text,
    pub date: Date,
    /// Shared by every event with the same attributes.
    pub attributes: Arc<BTreeMap<Text, Text>>,
}

/// Hands out one shared copy of each distinct text and attribute set.
#[derive(Debug, Default)]
pub struct Interner {
    texts: HashMap<Box<str>, Text>,
    attributes: HashMap<Box<str>, Arc<BTreeMap<Text, Text>>>,
}

impl Interner {
    pub fn text(&mut self, text: &str) -> Text {
        if let Some(shared) = self.texts.get(text) {
            return shared.clone();
        }
        let shared: Text = text.into();
        self.texts.insert(text.into(), shared.clone());
        shared
    }

    /// The attribute set stored as `json` (a JSON object of strings).
    pub fn attributes(&mut self, json: &str) -> Arc<BTreeMap<Text, Text>> {
        if let Some(shared) = self.attributes.get(json) {
            return shared.clone();
        }
        let parsed: BTreeMap<String, String> = serde_json::from_str(json).unwrap_or_default();
        let shared = Arc::new(
            parsed
                .iter()
                .map(|(k, v)| (self.text(k), self.text(v)))
                .collect(),
        );
        self.attributes.insert(json.into(), Arc::clone(&shared));
        shared
    }
}

impl Person {
    /// A person known by `spine_id`.
    pub fn with_key(spine_id: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, spine_id.as_bytes());
        let mut key = [0u8; 8];
        key.copy_from_slice(&digest.as_ref()[..8]);
        Self {
            key: u64::from_le_bytes(key),
            ..Self::default()
        }
    }

    /// Adds what one record says.
    pub fn add_record(
        &mut self,
        organisation: Text,
        dataset: Text,
        sex: Option<Text>,
        birth_month: Option<Text>,
    ) {
        self.organisations.insert(organisation);
        self.datasets.insert(dataset);
        if self.sex.is_none() {
            self.sex = sex;
        }
        if let Some(month) = birth_month
            && self.birth_month.as_ref().is_none_or(|known| month < *known)
        {
            self.birth_month = Some(month);
        }
    }

    /// Whole years at `on`, counting the birthday as the first of the month.
    pub fn age_on(&self, on: Date) -> Option<u32> {
        let (year, month) = self.birth_month.as_deref()?.split_once('-')?;
        let born = Date::from_calendar_date(
            year.parse().ok()?,
            Month::try_from(month.parse::<u8>().ok()?).ok()?,
            1,
        )
        .ok()?;
        if born > on {
            return None;
        }
        let mut age = on.year() - born.year();
        if (on.month() as u8) < (born.month() as u8) {
            age -= 1;
        }
        u32::try_from(age).ok()
    }
}

/// Life-course segments, in years at the reference date.
pub const SEGMENTS: &[(&str, u32, u32)] = &[
    ("early years 0-4", 0, 4),
    ("primary 5-10", 5, 10),
    ("adolescence 11-15", 11, 15),
    ("transition 16-17", 16, 17),
    ("young adults 18-25", 18, 25),
    ("26+", 26, u32::MAX),
];
const UNKNOWN: &str = "unknown";
const SEXES: &[&str] = &["female", "male", "indeterminate", UNKNOWN];
const OVERLAP: &[&str] = &["1 agency", "2 agencies", "3+ agencies"];

/// Whether `person` is in the cohort described by `condition`.
pub fn matches(condition: &Condition, person: &Person, reference: Date) -> bool {
    match condition {
        Condition::All(list) => list.iter().all(|c| matches(c, person, reference)),
        Condition::Any(list) => list.iter().any(|c| matches(c, person, reference)),
        Condition::Not(inner) => !matches(inner, person, reference),
        Condition::Age(range) => person
            .age_on(reference)
            .is_some_and(|age| (range.from..=range.to).contains(&age)),
        Condition::KnownTo(k) => {
            k.organisation
                .as_ref()
                .is_none_or(|o| person.organisations.contains(o.as_str()))
                && k.dataset
                    .as_ref()
                    .is_none_or(|d| person.datasets.contains(d.as_str()))
        }
        Condition::Has(e) => matching_events(e, person, reference) >= e.at_least as usize,
    }
}

fn matching_events(condition: &EventCondition, person: &Person, reference: Date) -> usize {
    person
        .events
        .iter()
        .filter(|e| event_matches(condition, person, e, reference))
        .count()
}

/// Whether one of `person`'s events matches `condition`.
fn event_matches(
    condition: &EventCondition,
    person: &Person,
    e: &PersonEvent,
    reference: Date,
) -> bool {
    *e.event_type == *condition.event
        && condition.dataset.as_ref().is_none_or(|d| **d == *e.dataset)
        && condition.attributes.iter().all(|(name, allowed)| {
            e.attributes
                .get(name.as_str())
                .is_some_and(|v| allowed.iter().any(|a| a.eq_ignore_ascii_case(v)))
        })
        && condition.from.is_none_or(|from| e.date >= from)
        && condition.to.is_none_or(|to| e.date <= to)
        && condition
            .within_months
            .is_none_or(|months| e.date > months_before(reference, months) && e.date <= reference)
        && condition
            .before
            .as_ref()
            .is_none_or(|r| related(person, r, e.date, 0, i64::from(r.within_days)))
        && condition
            .after
            .as_ref()
            .is_none_or(|r| related(person, r, e.date, -i64::from(r.within_days), 0))
}

/// Whether the person has a `relative` event from `day + low` to `day + high` days.
fn related(person: &Person, relative: &Relative, day: Date, low: i64, high: i64) -> bool {
    let (start, end) = (day + Duration::days(low), day + Duration::days(high));
    person.events.iter().any(|e| {
        *e.event_type == *relative.event
            && relative.dataset.as_ref().is_none_or(|d| **d == *e.dataset)
            && e.date >= start
            && e.date <= end
    })
}

/// The same day `months` months earlier (the month's last day when shorter).
fn months_before(day: Date, months: u32) -> Date {
    let total = day.year() * 12 + i32::from(day.month() as u8) - 1 - months as i32;
    let (year, month) = (total.div_euclid(12), total.rem_euclid(12) as u8 + 1);
    let month = Month::try_from(month).unwrap_or(Month::January);
    let last = time::util::days_in_month(month, year);
    Date::from_calendar_date(year, month, day.day().min(last)).unwrap_or(day)
}

/// The tier of `person` under `stratification`.
pub fn stratum<'a>(
    stratification: &'a Stratification,
    person: &Person,
    reference: Date,
) -> &'a str {
    let points: u32 = stratification
        .factors
        .iter()
        .filter(|f| matches(&f.when, person, reference))
        .map(|f| f.points)
        .sum();
    stratification
        .tiers
        .iter()
        .rev()
        .find(|t| points >= t.from_points)
        .map_or(UNKNOWN, |t| t.name.as_str())
}

/// The label of `person` under `breakdown` (`None`: one line for all).
fn label<'q>(
    query: &'q AnalystQuery,
    breakdown: Breakdown,
    person: &Person,
    reference: Date,
) -> Cow<'q, str> {
    match breakdown {
        Breakdown::Stratum => Cow::Borrowed(
            query
                .stratification
                .as_ref()
                .map_or(UNKNOWN, |s| stratum(s, person, reference)),
        ),
        Breakdown::None => Cow::Borrowed("all"),
        Breakdown::Segment => Cow::Borrowed(
            person
                .age_on(reference)
                .and_then(|age| {
                    SEGMENTS
                        .iter()
                        .find(|(_, low, high)| (*low..=*high).contains(&age))
                })
                .map_or(UNKNOWN, |(name, _, _)| name),
        ),
        Breakdown::Sex => Cow::Borrowed(
            SEXES
                .iter()
                .find(|s| person.sex.as_deref() == Some(**s))
                .copied()
                .unwrap_or(UNKNOWN),
        ),
        Breakdown::AgencyOverlap => {
            Cow::Borrowed(OVERLAP[person.organisations.len().clamp(1, 3) - 1])
        }
        Breakdown::Agencies => Cow::Owned(
            person
                .organisations
                .iter()
                .map(|o| o.as_ref())
                .collect::<Vec<&str>>()
                .join(" + "),
        ),
    }
}

/// The categories of a breakdown, in display order (fixed lists first, so
/// an empty category still shows as 0; combinations as found).
fn categories(query: &AnalystQuery, breakdown: Breakdown, found: &BTreeSet<String>) -> Vec<String> {
    let fixed: Vec<&str> = match breakdown {
        Breakdown::Stratum => query
            .stratification
            .iter()
            .flat_map(|s| s.tiers.iter().map(|t| t.name.as_str()))
            .collect(),
        Breakdown::None => vec!["all"],
        Breakdown::Segment => SEGMENTS
            .iter()
            .map(|(name, _, _)| *name)
            .chain([UNKNOWN])
            .collect(),
        Breakdown::Sex => SEXES.to_vec(),
        Breakdown::AgencyOverlap => OVERLAP.to_vec(),
        Breakdown::Agencies => Vec::new(),
    };
    let mut out: Vec<String> = fixed.iter().map(|s| (*s).to_owned()).collect();
    out.extend(
        found
            .iter()
            .filter(|f| !fixed.contains(&f.as_str()))
            .cloned(),
    );
    out
}

/// What one cell (or total) of a table holds before disclosure control.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CellData {
    /// The cohort's people in the cell.
    pub people: u64,
    /// Events counted (`events`), or people meeting the condition (`share`).
    pub hits: u64,
    /// Days from each person's `from` event to their `to` event (`median_days`).
    pub days: Vec<i64>,
}

impl CellData {
    fn add(&mut self, other: &CellData) {
        self.people += other.people;
        self.hits += other.hits;
        self.days.extend_from_slice(&other.days);
    }

    /// The median of `days`, if any.
    pub fn median_days(&self) -> Option<f64> {
        let mut days = self.days.clone();
        days.sort_unstable();
        let n = days.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(days[n / 2] as f64),
            _ => Some((days[n / 2 - 1] + days[n / 2]) as f64 / 2.0),
        }
    }
}

/// A query's table of true values: rows × columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tabulation {
    pub rows: Vec<String>,
    pub columns: Vec<String>,
    pub cells: Vec<Vec<CellData>>,
    /// How many people the cohort holds.
    pub cohort_size: u64,
    /// Their keys, sorted.
    pub members: Vec<u64>,
}

impl Tabulation {
    /// People per cell.
    pub fn counts(&self) -> Vec<Vec<u64>> {
        self.table(|c| c.people)
    }

    /// One number per cell.
    pub fn table(&self, value: impl Fn(&CellData) -> u64) -> Vec<Vec<u64>> {
        self.cells
            .iter()
            .map(|r| r.iter().map(&value).collect())
            .collect()
    }

    /// The cells with a total column and a total row (the last of each).
    pub fn with_totals(&self) -> Vec<Vec<CellData>> {
        let width = self.columns.len();
        let mut out: Vec<Vec<CellData>> = self
            .cells
            .iter()
            .map(|row| {
                let mut total = CellData::default();
                row.iter().for_each(|c| total.add(c));
                row.iter().cloned().chain([total]).collect()
            })
            .collect();
        let totals: Vec<CellData> = (0..=width)
            .map(|j| {
                let mut total = CellData::default();
                out.iter().for_each(|row| total.add(&row[j]));
                total
            })
            .collect();
        out.push(totals);
        out
    }
}

/// What `person` adds to their cell under `measure`.
fn measured(measure: &Measure, person: &Person, reference: Date) -> CellData {
    let mut cell = CellData {
        people: 1,
        ..CellData::default()
    };
    match measure {
        Measure::Children => {}
        Measure::Events(e) => cell.hits = matching_events(e, person, reference) as u64,
        Measure::Share(condition) => cell.hits = u64::from(matches(condition, person, reference)),
        Measure::MedianDays(interval) => {
            let from = person
                .events
                .iter()
                .find(|e| event_matches(&interval.from, person, e, reference));
            if let Some(from) = from
                && let Some(to) = person.events.iter().find(|e| {
                    e.date >= from.date && event_matches(&interval.to, person, e, reference)
                })
            {
                cell.days.push((to.date - from.date).whole_days());
            }
        }
    }
    cell
}

/// Tabulates the cohort's people over the query's breakdown and measure,
/// on every core (each takes a share of the people; the shares are summed).
pub fn tabulate(query: &AnalystQuery, people: &[Person], reference: Date) -> Tabulation {
    type Cells<'q> = HashMap<(Cow<'q, str>, Cow<'q, str>), CellData>;
    let share = |people: &[Person]| {
        let mut cells: Cells<'_> = HashMap::new();
        let mut members = Vec::new();
        for person in people {
            if !query
                .cohort
                .as_ref()
                .is_none_or(|c| matches(c, person, reference))
            {
                continue;
            }
            members.push(person.key);
            let key = (
                label(query, query.rows, person, reference),
                label(query, query.columns, person, reference),
            );
            cells
                .entry(key)
                .or_default()
                .add(&measured(&query.measure, person, reference));
        }
        (cells, members)
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = people.len().div_ceil(threads).max(1);
    let shares: Vec<(Cells<'_>, Vec<u64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = people
            .chunks(chunk)
            .map(|part| scope.spawn(move || share(part)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut cells: Cells<'_> = HashMap::new();
    let mut members = Vec::new();
    for (part, part_members) in shares {
        for (key, cell) in part {
            cells.entry(key).or_default().add(&cell);
        }
        members.extend(part_members);
    }
    let row_labels: BTreeSet<String> = cells.keys().map(|(r, _)| r.to_string()).collect();
    let column_labels: BTreeSet<String> = cells.keys().map(|(_, c)| c.to_string()).collect();
    members.sort_unstable();
    let rows = categories(query, query.rows, &row_labels);
    let columns = categories(query, query.columns, &column_labels);
    let cells = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|c| {
                    cells
                        .get(&(Cow::Borrowed(r.as_str()), Cow::Borrowed(c.as_str())))
                        .cloned()
                        .unwrap_or_default()
                })
                .collect()
        })
        .collect();
    Tabulation {
        rows,
        columns,
        cells,
        cohort_size: members.len() as u64,
        members,
    }
}

/// The table as it may leave: each cell (and total) protected by `rule`.
/// Counts (children, events) are suppressed and rounded with secondary
/// suppression; a percentage is computed from true counts and suppressed
/// with its numerator or denominator; a median is shown only where more
/// children than the threshold have an interval.
pub fn release(table: &Tabulation, measure: &Measure, rule: &DisclosureRule) -> Vec<Vec<Cell>> {
    let number = |v: f64| Cell {
        value: Some(cell::Value::Number(v)),
    };
    let suppressed = || Cell {
        value: Some(cell::Value::Suppressed(true)),
    };
    let full = table.with_totals();
    match measure {
        Measure::Children => rule.protect_table(&table.counts()),
        Measure::Events(_) => rule.protect_table(&table.table(|c| c.hits)),
        Measure::Share(_) => {
            let people = rule.suppressed(&table.counts());
            let hits = rule.suppressed(&table.table(|c| c.hits));
            full.iter()
                .enumerate()
                .map(|(i, row)| {
                    row.iter()
                        .enumerate()
                        .map(|(j, c)| match c.people {
                            _ if people[i][j] || hits[i][j] => suppressed(),
                            0 => Cell { value: None },
                            n => number(100.0 * c.hits as f64 / n as f64),
                        })
                        .collect()
                })
                .collect()
        }
        Measure::MedianDays(_) => {
            let with_interval = rule.suppressed(&table.table(|c| c.days.len() as u64));
            full.iter()
                .enumerate()
                .map(|(i, row)| {
                    row.iter()
                        .enumerate()
                        .map(|(j, c)| match c.median_days() {
                            _ if with_interval[i][j] => suppressed(),
                            Some(median) => number(median),
                            None => Cell { value: None },
                        })
                        .collect()
                })
                .collect()
        }
    }
}

/// A released table as JSON: each row's cells by column label; a count or
/// a number as a number, `"suppressed"`, or null where there is nothing.
pub fn table_json(table: &joinery_proto::v1::TableResponse) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = table
        .rows
        .iter()
        .map(|row| {
            let cells: serde_json::Map<String, serde_json::Value> = table
                .columns
                .iter()
                .zip(&row.cells)
                .map(|(column, c)| {
                    let value = match c.value {
                        Some(cell::Value::Count(n)) => serde_json::json!(n),
                        Some(cell::Value::Number(v)) => serde_json::json!(v),
                        Some(cell::Value::Suppressed(_)) => serde_json::json!("suppressed"),
                        None => serde_json::Value::Null,
                    };
                    (column.clone(), value)
                })
                .collect();
            serde_json::json!({ "label": row.label, "cells": cells })
        })
        .collect();
    serde_json::json!({
        "reference_date": table.reference_date,
        "explanation": table.explanation,
        "measure": table.measure,
        "row_heading": table.row_heading,
        "column_heading": table.column_heading,
        "rows": rows,
        "disclosure_note": table.disclosure_note,
    })
}

/// What the cells of a query's table hold.
pub fn measure_name(measure: &Measure) -> &'static str {
    match measure {
        Measure::Children => "children",
        Measure::Events(_) => "events",
        Measure::Share(_) => "percent",
        Measure::MedianDays(_) => "median days",
    }
}

/// Whether releasing a cohort with `members` next to an earlier one with
/// `earlier` (both sorted) would let a handful of people be found by
/// differencing: the two differ, but by at most `threshold` people each way.
pub fn differs_by_a_few(members: &[u64], earlier: &[u64], threshold: u64) -> bool {
    let (mut i, mut j) = (0, 0);
    let (mut only_new, mut only_old) = (0u64, 0u64);
    while i < members.len() || j < earlier.len() {
        match (members.get(i), earlier.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                only_new += 1;
                i += 1;
            }
            (Some(_), None) => {
                only_new += 1;
                i += 1;
            }
            _ => {
                only_old += 1;
                j += 1;
            }
        }
        if only_new > threshold || only_old > threshold {
            return false;
        }
    }
    only_new + only_old > 0
}

/// The cohort in words.
pub fn explain(query: &AnalystQuery) -> String {
    let who = query
        .cohort
        .as_ref()
        .map_or_else(|| "everyone on the person spine".to_owned(), describe);
    let by = |b: Breakdown| match b {
        Breakdown::None => None,
        Breakdown::Segment => Some("life-course segment"),
        Breakdown::Sex => Some("sex"),
        Breakdown::AgencyOverlap => Some("how many agencies know them"),
        Breakdown::Agencies => Some("which agencies know them"),
        Breakdown::Stratum => Some("risk tier"),
    };
    let split: Vec<&str> = [by(query.rows), by(query.columns)]
        .into_iter()
        .flatten()
        .collect();
    let reference = query
        .reference_date
        .map_or_else(|| "today".to_owned(), |d| d.to_string());
    let strata = query.stratification.as_ref().map_or_else(String::new, |s| {
        let factors: Vec<String> = s
            .factors
            .iter()
            .map(|f| format!("{} ({} points: {})", f.name, f.points, describe(&f.when)))
            .collect();
        let tiers: Vec<String> = s
            .tiers
            .iter()
            .map(|t| format!("{} from {}", t.name, t.from_points))
            .collect();
        format!(
            " Risk tiers by {} version {}: {}; tiers {}.",
            s.name,
            s.version,
            factors.join("; "),
            tiers.join(", ")
        )
    });
    if split.is_empty() {
        format!("People: {who}. Ages and recent periods are counted at {reference}.{strata}")
    } else {
        format!(
            "People: {who}; counted by {}. Ages and recent periods are counted at {reference}.{strata}",
            split.join(" and by ")
        )
    }
}

fn describe(condition: &Condition) -> String {
    let join = |list: &[Condition], word: &str| {
        let parts: Vec<String> = list.iter().map(describe).collect();
        if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("({})", parts.join(&format!(" {word} ")))
        }
    };
    match condition {
        Condition::All(list) => join(list, "and"),
        Condition::Any(list) => join(list, "or"),
        Condition::Not(inner) => format!("not {}", describe(inner)),
        Condition::Age(a) if a.to == u32::MAX => format!("aged {} or over", a.from),
        Condition::Age(a) => format!("aged {} to {}", a.from, a.to),
        Condition::KnownTo(k) => {
            let mut parts = Vec::new();
            if let Some(o) = &k.organisation {
                parts.push(format!("organisation {o}"));
            }
            if let Some(d) = &k.dataset {
                parts.push(format!("dataset {d}"));
            }
            format!("known to {}", parts.join(", "))
        }
        Condition::Has(e) => {
            let mut text = if e.at_least > 1 {
                format!("with at least {} {} events", e.at_least, e.event)
            } else {
                format!("with a {} event", e.event)
            };
            if let Some(d) = &e.dataset {
                text.push_str(&format!(" in {d}"));
            }
            for (name, values) in &e.attributes {
                text.push_str(&format!(" whose {name} is {}", values.join(" or ")));
            }
            match (e.from, e.to) {
                (Some(f), Some(t)) => text.push_str(&format!(" between {f} and {t}")),
                (Some(f), None) => text.push_str(&format!(" on or after {f}")),
                (None, Some(t)) => text.push_str(&format!(" on or before {t}")),
                (None, None) => {}
            }
            if let Some(m) = e.within_months {
                text.push_str(&format!(" in the {m} months before the reference date"));
            }
            if let Some(r) = &e.before {
                text.push_str(&format!(
                    " followed within {} days by a {} event",
                    r.within_days, r.event
                ));
            }
            if let Some(r) = &e.after {
                text.push_str(&format!(
                    " within {} days after a {} event",
                    r.within_days, r.event
                ));
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

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
        let count = |q: &str| tabulate(&query(q), &people, on).cohort_size;
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

        let table = tabulate(
            &query("rows: segment\ncolumns: agency_overlap"),
            &people,
            on,
        );
        assert_eq!(table.columns, ["1 agency", "2 agencies", "3+ agencies"]);
        let row =
            |name: &str| table.counts()[table.rows.iter().position(|r| r == name).unwrap()].clone();
        assert_eq!(row("early years 0-4"), [1, 0, 0]);
        assert_eq!(row("primary 5-10"), [0, 1, 0]);
        assert_eq!(row("adolescence 11-15"), [1, 0, 0]);
        assert_eq!(row("unknown"), [0, 0, 0]);
        let combos = tabulate(&query("rows: agencies"), &people, on);
        assert_eq!(combos.rows, ["LA", "LA + RX9", "RX9"]);
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
        let table = tabulate(&q, &[none, one, both], on);
        assert_eq!(table.rows, ["universal", "targeted", "specialist"]);
        assert_eq!(table.columns[..2], ["female", "male"]);
        assert_eq!(table.counts(), [[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]]);
        assert!(
            explain(&q).contains("CP plan (3 points: with a cp_plan_start event)"),
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
    fn the_example_queries_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/queries");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let q = AnalystQuery::parse(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!explain(&q).is_empty());
            seen += 1;
        }
        assert!(seen >= 6, "{seen} example queries");
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
        let exact = DisclosureRule {
            suppress_up_to: 0,
            rounding: joinery_policies::model::Rounding::None,
        };
        let run = |text: &str, rule: &DisclosureRule| {
            let q = query(text);
            let table = tabulate(&q, &people, on);
            release(&table, &q.measure, rule)
        };
        let number = |c: &Cell| match c.value {
            Some(cell::Value::Number(v)) => Some(v),
            Some(cell::Value::Count(n)) => Some(n as f64),
            _ => None,
        };
        // Events: 20 referrals in the female row (and its total).
        let events = run(
            "rows: sex\nmeasure: { events: { event: camhs_referral } }",
            &exact,
        );
        assert_eq!(number(&events[0][0]), Some(20.0));
        assert_eq!(number(&events[4][0]), Some(20.0), "the total row");
        // Seen within 126 days of a referral: six of ten (the sixth was seen
        // 120 days after its first referral).
        let share = run(
            "rows: sex\nmeasure: { share: { has: { event: camhs_referral, before: { event: camhs_contact, within_days: 126 } } } }",
            &exact,
        );
        assert_eq!(number(&share[0][0]), Some(60.0));
        // Median days from the first referral to the first contact: 20..120 → 70.
        let median = run(
            "rows: sex\nmeasure: { median_days: { from: { event: camhs_referral }, to: { event: camhs_contact } } }",
            &exact,
        );
        assert_eq!(number(&median[0][0]), Some(70.0));
        // Under the usual rule (1 to 7 suppressed) six intervals are too few
        // for a median, and a numerator of six suppresses the percentage.
        let default = DisclosureRule::default();
        let median = run(
            "rows: sex\nmeasure: { median_days: { from: { event: camhs_referral }, to: { event: camhs_contact } } }",
            &default,
        );
        assert!(matches!(
            median[0][0].value,
            Some(cell::Value::Suppressed(_))
        ));
        let share = run(
            "rows: sex\nmeasure: { share: { has: { event: camhs_contact } } }",
            &default,
        );
        assert!(
            matches!(share[0][0].value, Some(cell::Value::Suppressed(_))),
            "numerator 6 is suppressed"
        );
        assert_eq!(share[1][0].value, None, "no boys: no percentage");
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
            "People: (with a cp_plan_start event within 365 days after a camhs_referral event and not with a lac_episode_start event and aged 5 to 17); counted by life-course segment. Ages and recent periods are counted at 2026-03-31."
        );
    }

    #[test]
    fn small_differences_between_cohorts_are_found() {
        let big: Vec<u64> = (0..100).collect();
        let fewer: Vec<u64> = (3..100).collect();
        assert!(differs_by_a_few(&fewer, &big, 7), "three removed");
        assert!(differs_by_a_few(&big, &fewer, 7), "three added");
        assert!(!differs_by_a_few(&big, &big, 7), "the same cohort again");
        let many_fewer: Vec<u64> = (20..100).collect();
        assert!(!differs_by_a_few(&many_fewer, &big, 7), "twenty removed");
        let swapped: Vec<u64> = (2..102).collect();
        assert!(differs_by_a_few(&swapped, &big, 7), "two out, two in");
        assert!(!differs_by_a_few(&[], &[], 7));
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
