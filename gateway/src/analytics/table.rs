//! Tables: each cohort member's row and column label (segment, sex, agency
//! overlap, agency combination, risk tier), what they add to their cell
//! under the query's measure, and the true table that disclosure control
//! ([`crate::disclosure::protect`]) releases.
//!
//! Fixed breakdowns (sex, segments, bands, periods, tiers, overlap) list
//! every category whoever is in the cohort. Breakdowns by a recorded value
//! (an attribute, an agency combination) list only the values disclosure
//! control found safe over the whole population ([`Labels`]); the rest
//! count as [`OTHER`], so no label depends on the cohort's members.

use std::borrow::{Borrow, Cow};
use std::collections::{BTreeSet, HashMap};

use joinery_policies::model::EVENTS_PER_CHILD;
use joinery_proto::v1::cell;
use time::Date;

use super::cohort::{event_matches, matches, matching_events, months_before};
use super::model::{AnalystQuery, Breakdown, Measure, Stratification};
use super::population::Person;

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
/// Where a recorded value too rare to show is counted.
pub const OTHER: &str = "other";
const SEXES: &[&str] = &["female", "male", "indeterminate", UNKNOWN];
const OVERLAP: &[&str] = &["1 agency", "2 agencies", "3+ agencies"];

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

/// The label of `person` under `breakdown` (`None`: one line for all) in
/// the period `period` ending on `reference`.
fn label<'a>(
    query: &'a AnalystQuery,
    breakdown: &'a Breakdown,
    person: &'a Person,
    period: &'a Period,
) -> Cow<'a, str> {
    let reference = period.end;
    match breakdown {
        Breakdown::AgeBands(starts) => match person.age_on(reference) {
            Some(age) => {
                let band = starts.iter().rposition(|from| age >= *from).unwrap_or(0);
                Cow::Owned(Breakdown::age_band_label(starts, band))
            }
            None => Cow::Borrowed(UNKNOWN),
        },
        Breakdown::Attribute(name) => Cow::Borrowed(
            person
                .attributes
                .get(name.as_str())
                .map_or(UNKNOWN, |v| v.as_ref()),
        ),
        Breakdown::Period => Cow::Borrowed(&period.label),
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
            Cow::Borrowed(OVERLAP[person.organisations().len().clamp(1, 3) - 1])
        }
        Breakdown::Agencies => Cow::Owned(
            person
                .organisations()
                .iter()
                .map(|o| o.as_str())
                .collect::<Vec<&str>>()
                .join(" + "),
        ),
    }
}

/// The categories of a breakdown, in display order: a fixed list, or the
/// recorded values found safe and then [`OTHER`] (and, for attributes,
/// [`UNKNOWN`]). None depends on who is in the cohort.
fn categories(
    query: &AnalystQuery,
    breakdown: &Breakdown,
    periods: &[Period],
    safe: Option<&BTreeSet<String>>,
) -> Vec<String> {
    let owned = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    match breakdown {
        Breakdown::AgeBands(starts) => {
            let mut bands = Breakdown::age_band_labels(starts);
            bands.push(UNKNOWN.to_owned());
            bands
        }
        Breakdown::Attribute(_) | Breakdown::Agencies => {
            let mut found: Vec<String> = safe.into_iter().flatten().cloned().collect();
            found.retain(|f| f != OTHER && f != UNKNOWN);
            found.push(OTHER.to_owned());
            if matches!(breakdown, Breakdown::Attribute(_)) {
                found.push(UNKNOWN.to_owned());
            }
            found
        }
        Breakdown::Period => periods.iter().map(|p| p.label.clone()).collect(),
        Breakdown::Stratum => query
            .stratification
            .iter()
            .flat_map(|s| s.tiers.iter().map(|t| t.name.clone()))
            .collect(),
        Breakdown::None => owned(&["all"]),
        Breakdown::Segment => SEGMENTS
            .iter()
            .map(|(name, _, _)| (*name).to_owned())
            .chain([UNKNOWN.to_owned()])
            .collect(),
        Breakdown::Sex => owned(SEXES),
        Breakdown::AgencyOverlap => owned(OVERLAP),
    }
}

/// The recorded values a table may list, per axis (`None` for a fixed
/// breakdown); disclosure control chooses them ([`crate::disclosure::labels`]).
#[derive(Debug, Clone, Default)]
pub struct Labels {
    pub rows: Option<BTreeSet<String>>,
    pub columns: Option<BTreeSet<String>>,
}

/// How many of the whole population hold each recorded value of
/// `breakdown`, when it breaks down by one (an attribute, an agency
/// combination); `None` for a fixed breakdown.
pub fn population_labels(
    query: &AnalystQuery,
    breakdown: &Breakdown,
    people: &[impl Borrow<Person>],
    reference: Date,
) -> Option<HashMap<String, u64>> {
    if !breakdown.is_recorded() {
        return None;
    }
    let period = Period {
        label: String::new(),
        end: reference,
    };
    let mut counts: HashMap<String, u64> = HashMap::new();
    for person in people {
        *counts
            .entry(label(query, breakdown, person.borrow(), &period).into_owned())
            .or_default() += 1;
    }
    Some(counts)
}

/// `raw` as a table under `safe` shows it: itself, or [`OTHER`].
fn admitted<'a>(raw: Cow<'a, str>, safe: Option<&BTreeSet<String>>) -> Cow<'a, str> {
    match safe {
        Some(safe) if raw != UNKNOWN && !safe.contains(raw.as_ref()) => Cow::Borrowed(OTHER),
        _ => raw,
    }
}

/// What one cell (or total) of a table holds before disclosure control.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CellData {
    /// The cohort's people in the cell.
    pub people: u64,
    /// Events counted, at most [`EVENTS_PER_CHILD`] a child (`events`), or
    /// people meeting the condition (`share`).
    pub hits: u64,
    /// Days from each person's `from` event to their `to` event
    /// (`median_days`), or each person's change (`median_change`).
    pub values: Vec<i64>,
}

impl CellData {
    fn add(&mut self, other: &CellData) {
        self.people += other.people;
        self.hits += other.hits;
        self.values.extend_from_slice(&other.values);
    }

    /// The median of `values`, if any.
    pub fn median(&self) -> Option<f64> {
        let mut values = self.values.clone();
        values.sort_unstable();
        let n = values.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(values[n / 2] as f64),
            _ => Some((values[n / 2 - 1] + values[n / 2]) as f64 / 2.0),
        }
    }
}

/// A query's table of true values: rows × columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tabulation {
    pub rows: Vec<String>,
    pub columns: Vec<String>,
    pub cells: Vec<Vec<CellData>>,
    /// How many people the cohort holds (never released as such).
    pub cohort_size: u64,
    /// How many periods one person can count in (1 without a period breakdown).
    pub periods: u32,
    /// Which axis is broken down by period, if one is: its total (a sum
    /// over periods, counting a child once per period) is not released.
    pub period_axis: Option<Axis>,
}

/// A table's rows or its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    Rows,
    Columns,
}

impl Tabulation {
    /// Adds `part`: the same question tabulated over other people (another
    /// shard's), with the same rows and columns; says what differs when
    /// they are not.
    pub fn add(&mut self, part: &Tabulation) -> Result<(), String> {
        if part.rows != self.rows || part.columns != self.columns {
            return Err(format!(
                "a part has {} rows and {} columns where the table has {} and {}, or other labels",
                part.rows.len(),
                part.columns.len(),
                self.rows.len(),
                self.columns.len()
            ));
        }
        for (row, part_row) in self.cells.iter_mut().zip(&part.cells) {
            for (cell, part_cell) in row.iter_mut().zip(part_row) {
                cell.add(part_cell);
            }
        }
        self.cohort_size += part.cohort_size;
        Ok(())
    }

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
        Measure::Events(e) => {
            cell.hits = (matching_events(e, person, reference) as u64).min(EVENTS_PER_CHILD.into())
        }
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
                cell.values.push((to.date - from.date).whole_days());
            }
        }
        Measure::MedianChange(change) => {
            let mut scores = person.events.iter().filter_map(|e| {
                if !event_matches(&change.of, person, e, reference) {
                    return None;
                }
                e.attributes
                    .get(change.attribute.as_str())?
                    .parse::<i64>()
                    .ok()
            });
            if let Some(first) = scores.next()
                && let Some(last) = scores.next_back()
            {
                cell.values.push(last - first);
            }
        }
    }
    cell
}

/// One period of a `period` breakdown (or the whole query without one).
struct Period {
    label: String,
    end: Date,
}

/// The periods in which `person` is in the query's cohort.
fn qualifying<'p>(
    query: &'p AnalystQuery,
    person: &'p Person,
    periods: &'p [Period],
) -> impl Iterator<Item = &'p Period> {
    periods.iter().filter(move |period| {
        query
            .cohort
            .as_ref()
            .is_none_or(|c| matches(c, person, period.end))
    })
}

/// The query's periods, oldest first; one ending on `reference` when it
/// is not broken down by period.
fn periods(query: &AnalystQuery, reference: Date) -> Vec<Period> {
    let Some(periods) = &query.periods else {
        return vec![Period {
            label: String::new(),
            end: reference,
        }];
    };
    let months = periods.every.months();
    (0..periods.count)
        .rev()
        .map(|back| {
            let end = months_before(reference, back * months);
            let start = months_before(end, months) + time::Duration::days(1);
            Period {
                label: format!("{start} to {end}"),
                end,
            }
        })
        .collect()
}

/// Tabulates the cohort's people over the query's breakdown and measure,
/// recorded values outside `labels` counted as [`OTHER`], on every core
/// (each takes a share of the people; the shares are summed).
pub fn tabulate<'a, P: Borrow<Person> + Sync>(
    query: &'a AnalystQuery,
    people: &'a [P],
    reference: Date,
    labels: &'a Labels,
) -> Tabulation {
    type Cells<'q> = HashMap<(Cow<'q, str>, Cow<'q, str>), CellData>;
    let periods = periods(query, reference);
    // A breakdown by recorded values with no safe list shows none of them.
    let none = BTreeSet::new();
    let safe = |breakdown: &Breakdown, listed: Option<&'a BTreeSet<String>>| {
        breakdown.is_recorded().then(|| listed.unwrap_or(&none))
    };
    let (row_safe, column_safe) = (
        safe(&query.rows, labels.rows.as_ref()),
        safe(&query.columns, labels.columns.as_ref()),
    );
    let share = |people: &'a [P]| {
        let mut cells: Cells<'_> = HashMap::new();
        let mut members = 0u64;
        for person in people {
            let person = person.borrow();
            let mut member = false;
            for period in qualifying(query, person, &periods) {
                member = true;
                let key = (
                    admitted(label(query, &query.rows, person, period), row_safe),
                    admitted(label(query, &query.columns, person, period), column_safe),
                );
                cells
                    .entry(key)
                    .or_default()
                    .add(&measured(&query.measure, person, period.end));
            }
            members += u64::from(member);
        }
        (cells, members)
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = people.len().div_ceil(threads).max(1);
    let shares: Vec<(Cells<'_>, u64)> = std::thread::scope(|scope| {
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
    let mut members = 0;
    for (part, part_members) in shares {
        for (key, cell) in part {
            cells.entry(key).or_default().add(&cell);
        }
        members += part_members;
    }
    let rows = categories(query, &query.rows, &periods, row_safe);
    let columns = categories(query, &query.columns, &periods, column_safe);
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
        cohort_size: members,
        periods: periods.len() as u32,
        period_axis: if matches!(query.rows, Breakdown::Period) {
            Some(Axis::Rows)
        } else if matches!(query.columns, Breakdown::Period) {
            Some(Axis::Columns)
        } else {
            None
        },
    }
}

/// One cohort member as a row-level extract shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberRow {
    /// [`Person::key`]; the caller turns it into a project pseudonym.
    pub key: u64,
    pub row: String,
    pub column: String,
    /// What they add to the measure: events, 1 or 0 for a share, days or a
    /// change for a median; none for children.
    pub value: Option<f64>,
}

/// The cohort's members, one row per person (and period they qualify in).
pub fn members(
    query: &AnalystQuery,
    people: &[impl Borrow<Person>],
    reference: Date,
) -> Vec<MemberRow> {
    let periods = periods(query, reference);
    let mut rows = Vec::new();
    for person in people {
        let person = person.borrow();
        for period in qualifying(query, person, &periods) {
            let cell = measured(&query.measure, person, period.end);
            let value = match query.measure {
                Measure::Children => None,
                Measure::Events(_) | Measure::Share(_) => Some(cell.hits as f64),
                Measure::MedianDays(_) | Measure::MedianChange(_) => {
                    cell.values.first().map(|v| *v as f64)
                }
            };
            rows.push(MemberRow {
                key: person.key,
                row: label(query, &query.rows, person, period).into_owned(),
                column: label(query, &query.columns, person, period).into_owned(),
                value,
            });
        }
    }
    rows
}

/// A released table as JSON: each row's cells by column label; a count or
/// a number as a number, `"suppressed"`, or null where there is nothing.
/// What a suppressed cell (`*`; `"suppressed"` in JSON) means, in every
/// legend: the CLI's, the HTTP answer's and the console's.
pub const SUPPRESSED_MEANS: &str = "suppressed by disclosure control: too few children to show safely, or a value that would let a suppressed one be worked out";

/// What an empty cell (`-`; `null` in JSON) means, in every legend.
pub const NOTHING_MEANS: &str = "nothing to show, not a suppressed value: a total across periods (one child may be in several), or a percentage or median of no one";

/// What an answer from the population loaded before the latest data says,
/// in the CLI's warning and the console's stamp alike.
pub const NEWER_DATA_MEANS: &str = "newer data has arrived since this answer's data was loaded; it is being loaded now: ask again in a minute for an answer that includes it";

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
        // The cells are keyed by column; this is the columns' order.
        "columns": table.columns,
        "rows": rows,
        "disclosure_note": table.disclosure_note,
        "warnings": table.warnings,
        "legend": {
            "suppressed": SUPPRESSED_MEANS,
            "null": NOTHING_MEANS,
            "newer_data_pending": NEWER_DATA_MEANS,
        },
        "data_generation": table.data_generation,
        "newer_data_pending": table.newer_data_pending,
    })
}

/// What the cells of a query's table hold.
pub fn measure_name(measure: &Measure) -> &'static str {
    match measure {
        Measure::Children => "children",
        Measure::Events(_) => "events",
        Measure::Share(_) => "percent",
        Measure::MedianDays(_) => "median days",
        Measure::MedianChange(_) => "median change",
    }
}
