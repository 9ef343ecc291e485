//! Who is in a cohort: conditions on a person's events (type, dataset,
//! attributes, dates, counts, relative time), age and the services that
//! know them; and whether two cohorts differ by so few people that
//! releasing both would single them out.

use std::collections::BTreeMap;

use time::{Date, Month};

use super::model::{Condition, EventCondition, Relative, Spell, Which};
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
                .is_none_or(|o| person.is_known_to(o))
                && k.dataset.as_ref().is_none_or(|d| person.is_in(d))
        }
        Condition::Has(e) => matching_events(e, person, reference) >= e.at_least as usize,
        Condition::Open(spell) => open_since(spell, person, reference)
            .is_some_and(|since| (reference - since).whole_days() >= i64::from(spell.for_days)),
    }
}

/// The day the person's spell open at `reference` began, if one is open.
/// An end and a start on the same day carry the spell on.
fn open_since(spell: &Spell, person: &Person, reference: Date) -> Option<Date> {
    let mut since: Option<Date> = None;
    let of_spell = |e: &&PersonEvent| {
        e.date <= reference
            && spell.dataset.as_ref().is_none_or(|d| **d == *e.dataset)
            && (*e.event_type == *spell.start || *e.event_type == *spell.end)
    };
    let events: Vec<&PersonEvent> = person.events.iter().filter(of_spell).collect();
    for day in events.chunk_by(|a, b| a.date == b.date) {
        let starts = day.iter().any(|e| *e.event_type == *spell.start);
        let ends = day.iter().any(|e| *e.event_type == *spell.end);
        match (since, starts, ends) {
            (None, true, _) => since = Some(day[0].date),
            (Some(_), false, true) => since = None,
            _ => {}
        }
    }
    since
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

/// The person's first or last event of the condition's type, dataset and
/// attributes.
fn chosen<'p>(
    condition: &EventCondition,
    person: &'p Person,
    which: Which,
) -> Option<&'p PersonEvent> {
    let mut of_kind = person.events.iter().filter(|e| of_kind(condition, e));
    match which {
        Which::First => of_kind.next(),
        Which::Last => of_kind.next_back(),
    }
}

/// Whether `e` is of the condition's type, dataset and attributes.
fn of_kind(condition: &EventCondition, e: &PersonEvent) -> bool {
    *e.event_type == *condition.event
        && condition.dataset.as_ref().is_none_or(|d| **d == *e.dataset)
        && carries(e, &condition.attributes)
}

/// Whether one of `person`'s events matches `condition` (for `which`, only
/// the chosen event can).
pub(super) fn event_matches(
    condition: &EventCondition,
    person: &Person,
    e: &PersonEvent,
    reference: Date,
) -> bool {
    of_kind(condition, e)
        && condition.from.is_none_or(|from| e.date >= from)
        && condition.to.is_none_or(|to| e.date <= to)
        && condition
            .within_months
            .is_none_or(|months| e.date > months_before(reference, months) && e.date <= reference)
        && condition.which.is_none_or(|which| {
            chosen(condition, person, which).is_some_and(|c| std::ptr::eq(c, e))
        })
        && condition
            .before
            .as_ref()
            .is_none_or(|r| related(person, r, e, Direction::Next))
        && condition
            .after
            .as_ref()
            .is_none_or(|r| related(person, r, e, Direction::Previous))
}

/// Whether `e` carries one of the listed values of every named attribute.
fn carries(e: &PersonEvent, wanted: &BTreeMap<String, Vec<String>>) -> bool {
    wanted.iter().all(|(name, allowed)| {
        e.attributes
            .get(name.as_str())
            .is_some_and(|v| allowed.iter().any(|a| a.eq_ignore_ascii_case(v)))
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Next,
    Previous,
}

/// Whether the nearest other `relative` event on or after (`Next`) or on
/// or before (`Previous`) `event`'s day is as near or as far as it asks.
fn related(
    person: &Person,
    relative: &Relative,
    event: &PersonEvent,
    direction: Direction,
) -> bool {
    let candidates = person.events.iter().filter(|e| {
        !std::ptr::eq(*e, event)
            && *e.event_type == *relative.event
            && relative.dataset.as_ref().is_none_or(|d| **d == *e.dataset)
            && carries(e, &relative.attributes)
    });
    let nearest = match direction {
        Direction::Next => candidates
            .filter(|e| e.date >= event.date)
            .map(|e| e.date)
            .min(),
        Direction::Previous => candidates
            .filter(|e| e.date <= event.date)
            .map(|e| e.date)
            .max(),
    };
    nearest.is_some_and(|day| {
        let apart = (day - event.date).whole_days().abs();
        relative.within_days.is_none_or(|d| apart <= i64::from(d))
            && relative.at_least_days.is_none_or(|d| apart >= i64::from(d))
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
