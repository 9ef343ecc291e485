//! Who is in a cohort: conditions on a person's events (type, dataset,
//! attributes, dates, counts, relative time), age and the services that
//! know them; and whether two cohorts differ by so few people that
//! releasing both would single them out.

use time::{Date, Duration, Month};

use super::model::{Condition, EventCondition, Relative};
use super::population::{Person, PersonEvent};

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

pub(super) fn matching_events(
    condition: &EventCondition,
    person: &Person,
    reference: Date,
) -> usize {
    person
        .events
        .iter()
        .filter(|e| event_matches(condition, person, e, reference))
        .count()
}

/// Whether one of `person`'s events matches `condition`.
pub(super) fn event_matches(
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
pub(super) fn months_before(day: Date, months: u32) -> Date {
    let total = day.year() * 12 + i32::from(day.month() as u8) - 1 - months as i32;
    let (year, month) = (total.div_euclid(12), total.rem_euclid(12) as u8 + 1);
    let month = Month::try_from(month).unwrap_or(Month::January);
    let last = time::util::days_in_month(month, year);
    Date::from_calendar_date(year, month, day.day().min(last)).unwrap_or(day)
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
