//! What each transform means on the wire, shared by the agent (which applies
//! it) and the gateway (which checks that what arrives obeys it).
//!
//! Person fields have fixed wire names that depend on the transform
//! (`date_of_birth: month` is sent as `birth_month`); any other field is sent
//! under its own name. Pseudonymised fields travel in the record's pseudonym
//! slots, never as attributes; dropped fields are not sent at all.

use crate::model::Transform;

/// Person-identity fields every mapping may produce.
pub const PERSON_FIELDS: &[&str] = &[
    "local_id",
    "nhs_number",
    "given_name",
    "family_name",
    "date_of_birth",
    "sex",
    "postcode",
];

/// Fields that travel only as pseudonyms.
pub const PSEUDONYM_FIELDS: &[&str] = &["local_id", "nhs_number"];

/// The attribute name a field is sent under with `transform`, or `None` when
/// it is not sent as an attribute (dropped, or pseudonymised).
pub fn wire_name<'a>(field: &'a str, transform: &Transform) -> Option<&'a str> {
    match (field, transform) {
        (_, Transform::Drop | Transform::Pseudonymise) => None,
        ("date_of_birth", Transform::Month) => Some("birth_month"),
        ("date_of_birth", Transform::Quarter) => Some("birth_quarter"),
        ("date_of_birth", Transform::Year) => Some("birth_year"),
        ("date_of_birth", Transform::AgeBand(_)) => Some("age_band"),
        ("postcode", Transform::District) => Some("postcode_district"),
        ("postcode", Transform::Sector) => Some("postcode_sector"),
        ("postcode", Transform::Area) => Some("postcode_area"),
        (field, _) => Some(field),
    }
}

/// Applies `transform` to an attribute's value (after the agent's own
/// validation); `None` means the value is not sent.
pub fn apply(transform: &Transform, value: &str) -> Option<String> {
    match transform {
        Transform::Keep => Some(value.to_owned()),
        Transform::Drop | Transform::Pseudonymise => None,
        Transform::Month => {
            iso_date(value).map(|d| format!("{:04}-{:02}", d.year(), d.month() as u8))
        }
        Transform::Quarter => iso_date(value).map(|d| quarter_of(d.year(), d.month() as u8)),
        Transform::Year => iso_date(value).map(|d| format!("{:04}", d.year())),
        Transform::CodeMap(map) => map.get(value).cloned(),
        Transform::TopCode(max) => value
            .trim()
            .parse::<u64>()
            .ok()
            .map(|n| n.min(u64::from(*max)).to_string()),
        Transform::AgeBand(_) | Transform::District | Transform::Sector | Transform::Area => None,
    }
}

/// Whether `value`, arriving as an attribute produced by `transform`, has the
/// shape that transform produces.
pub fn obeys(transform: &Transform, value: &str) -> bool {
    match transform {
        Transform::Keep => value.len() <= 256,
        Transform::Drop | Transform::Pseudonymise => false,
        Transform::Month => value.len() == 7 && iso_date(&format!("{value}-01")).is_some(),
        Transform::Quarter => value.split_once("-Q").is_some_and(|(year, quarter)| {
            year.len() == 4
                && year.bytes().all(|b| b.is_ascii_digit())
                && matches!(quarter, "1" | "2" | "3" | "4")
        }),
        Transform::Year => value.len() == 4 && value.bytes().all(|b| b.is_ascii_digit()),
        Transform::AgeBand(bounds) => bounds
            .iter()
            .any(|low| age_band_label(bounds, *low) == value),
        Transform::District => is_district(value),
        Transform::Sector => value.rsplit_once(' ').is_some_and(|(district, digit)| {
            is_district(district) && digit.len() == 1 && digit.as_bytes()[0].is_ascii_digit()
        }),
        Transform::Area => {
            (1..=2).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_uppercase())
        }
        Transform::CodeMap(map) => map.values().any(|v| v == value),
        Transform::TopCode(max) => value.parse::<u64>().is_ok_and(|n| n <= u64::from(*max)),
    }
}

/// The postcode area a district lies in: its leading letters (`LS6` is in
/// `LS`).
pub fn area_of(district: &str) -> &str {
    let letters = district.bytes().take_while(u8::is_ascii_alphabetic).count();
    &district[..letters]
}

/// The quarter holding `month` (1 to 12) of `year`, as sent: `2015-Q2`.
pub fn quarter_of(year: i32, month: u8) -> String {
    format!("{year:04}-Q{}", month.div_ceil(3))
}

/// The birth periods coarser than a month, most precise first: where an
/// agreement sends one, it travels as a free attribute under its
/// [`wire_name`] (the birth month has a column of its own).
pub const COARSER_BIRTH_PERIODS: [Transform; 2] = [Transform::Quarter, Transform::Year];

/// The first day of the birth period a date of birth is sent as (`Month`,
/// `Quarter` or `Year`), from its wire value: the day ages are counted
/// from, as though every child were born on it. `None` for a value that
/// is not of that shape.
pub fn birth_period_start(transform: &Transform, value: &str) -> Option<time::Date> {
    let (year, month) = match transform {
        Transform::Month => {
            let (year, month) = value.split_once('-')?;
            (year, month.parse::<u8>().ok()?)
        }
        Transform::Quarter => {
            let (year, quarter) = value.split_once("-Q")?;
            (year, quarter.parse::<u8>().ok()?.checked_sub(1)? * 3 + 1)
        }
        Transform::Year => (value, 1),
        _ => return None,
    };
    if year.len() != 4 {
        return None;
    }
    time::Date::from_calendar_date(year.parse().ok()?, time::Month::try_from(month).ok()?, 1).ok()
}

/// The share of children whose age in whole years, counted from the start
/// of their birth period ([`birth_period_start`]), is a year more than it
/// is, on a day of the year taken at random: the analytic cost of sending
/// the date of birth at this precision. Worked out over the days of four
/// years (one a leap year), every birthday equally likely.
pub fn age_overstated(transform: &Transform) -> Option<f64> {
    if !matches!(
        transform,
        Transform::Month | Transform::Quarter | Transform::Year
    ) {
        return None;
    }
    let first = time::macros::date!(2021 - 01 - 01);
    let last = time::macros::date!(2024 - 12 - 31);
    let (mut days, mut overstated) = (0u64, 0u64);
    let mut born = first;
    while born <= last {
        let wire = apply(transform, &born.to_string())?;
        let start = birth_period_start(transform, &wire)?;
        // The child reads a year older from the period's start until its
        // birthday, the days between them of every year.
        overstated += (born - start).whole_days().unsigned_abs();
        days += 1;
        born = born.next_day()?;
    }
    Some(overstated as f64 / (days as f64 * 365.25))
}

/// An event date at the precision `transform` allows: `keep` is the day;
/// `month` is the first of the month. `None` for any other transform.
pub fn event_date(transform: &Transform, date: time::Date) -> Option<time::Date> {
    match transform {
        Transform::Keep => Some(date),
        Transform::Month => date.replace_day(1).ok(),
        _ => None,
    }
}

/// Whether an event date on the wire obeys `transform`.
pub fn event_date_obeys(transform: &Transform, value: &str) -> bool {
    match (transform, iso_date(value)) {
        (_, None) => false,
        (Transform::Keep, Some(_)) => value.len() == 10,
        (Transform::Month, Some(d)) => value.len() == 10 && d.day() == 1,
        _ => false,
    }
}

/// The label of the age band starting at `low`: `5-10`, or `18+` for the last.
pub fn age_band_label(bounds: &[u32], low: u32) -> String {
    match bounds.iter().find(|b| **b > low) {
        Some(next) => format!("{low}-{}", next - 1),
        None => format!("{low}+"),
    }
}

/// The band an age falls in, if any band starts at or below it.
pub fn age_band_of(bounds: &[u32], age: u32) -> Option<String> {
    bounds
        .iter()
        .filter(|low| **low <= age)
        .max()
        .map(|low| age_band_label(bounds, *low))
}

fn iso_date(value: &str) -> Option<time::Date> {
    (value.len() == 10)
        .then(|| {
            time::Date::parse(value, &time::format_description::well_known::Iso8601::DATE).ok()
        })
        .flatten()
}

/// Whether `value` has the shape of a UK postcode district (outward code):
/// A9, A99, AA9, AA99, A9A or AA9A, upper case.
pub fn is_district(value: &str) -> bool {
    let shape: String = value
        .bytes()
        .map(|b| {
            if b.is_ascii_digit() {
                '9'
            } else if b.is_ascii_uppercase() {
                'A'
            } else {
                '?'
            }
        })
        .collect();
    matches!(
        shape.as_str(),
        "A9" | "A99" | "AA9" | "AA99" | "A9A" | "AA9A"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn every_transform_applies_and_checks() {
        assert_eq!(apply(&Transform::Keep, "WBRI").as_deref(), Some("WBRI"));
        assert!(obeys(&Transform::Keep, "WBRI"));
        assert_eq!(apply(&Transform::Drop, "x"), None);
        assert_eq!(apply(&Transform::Pseudonymise, "x"), None);
        assert!(!obeys(&Transform::Drop, "x"));
        assert_eq!(
            apply(&Transform::Month, "2015-04-03").as_deref(),
            Some("2015-04")
        );
        assert!(obeys(&Transform::Month, "2015-04"));
        assert!(!obeys(&Transform::Month, "2015-04-03"));
        assert_eq!(
            apply(&Transform::Year, "2015-04-03").as_deref(),
            Some("2015")
        );
        assert!(obeys(&Transform::Year, "2015") && !obeys(&Transform::Year, "2015-04"));
        let map: BTreeMap<String, String> = [("1A".to_owned(), "police".to_owned())].into();
        assert_eq!(
            apply(&Transform::CodeMap(map.clone()), "1A").as_deref(),
            Some("police")
        );
        assert_eq!(apply(&Transform::CodeMap(map.clone()), "9Z"), None);
        assert!(
            obeys(&Transform::CodeMap(map.clone()), "police")
                && !obeys(&Transform::CodeMap(map), "1A")
        );
        assert_eq!(apply(&Transform::TopCode(17), "21").as_deref(), Some("17"));
        assert_eq!(apply(&Transform::TopCode(17), "3").as_deref(), Some("3"));
        assert!(obeys(&Transform::TopCode(17), "17") && !obeys(&Transform::TopCode(17), "18"));
        let bands = vec![0, 5, 11, 16, 18];
        assert_eq!(age_band_of(&bands, 4).as_deref(), Some("0-4"));
        assert_eq!(age_band_of(&bands, 17).as_deref(), Some("16-17"));
        assert_eq!(age_band_of(&bands, 40).as_deref(), Some("18+"));
        assert!(
            obeys(&Transform::AgeBand(bands.clone()), "11-15")
                && !obeys(&Transform::AgeBand(bands), "11-14")
        );
        assert!(obeys(&Transform::District, "LS6") && !obeys(&Transform::District, "LS6 2AB"));
        assert!(obeys(&Transform::Sector, "LS6 2") && !obeys(&Transform::Sector, "LS6 2AB"));
        assert_eq!(
            apply(&Transform::Quarter, "2015-04-03").as_deref(),
            Some("2015-Q2")
        );
        assert_eq!(
            apply(&Transform::Quarter, "2015-12-31").as_deref(),
            Some("2015-Q4")
        );
        assert!(obeys(&Transform::Quarter, "2015-Q1"));
        for wrong in ["2015-Q0", "2015-Q5", "2015-04", "15-Q1", "2015-Q12"] {
            assert!(!obeys(&Transform::Quarter, wrong), "{wrong}");
        }
        assert!(obeys(&Transform::Area, "LS") && obeys(&Transform::Area, "E"));
        for wrong in ["LS6", "ls", "LSX", ""] {
            assert!(!obeys(&Transform::Area, wrong), "{wrong}");
        }
    }

    #[test]
    fn a_birth_period_starts_on_its_first_day() {
        let start = |t: Transform, v: &str| birth_period_start(&t, v);
        assert_eq!(
            start(Transform::Month, "2015-04"),
            Some(time::macros::date!(2015 - 04 - 01))
        );
        assert_eq!(
            start(Transform::Quarter, "2015-Q3"),
            Some(time::macros::date!(2015 - 07 - 01))
        );
        assert_eq!(
            start(Transform::Year, "2015"),
            Some(time::macros::date!(2015 - 01 - 01))
        );
        for (t, v) in [
            (Transform::Quarter, "2015-Q0"),
            (Transform::Quarter, "2015-Q5"),
            (Transform::Month, "2015-13"),
            (Transform::Year, "15"),
            (Transform::AgeBand(vec![0]), "0-4"),
        ] {
            assert_eq!(birth_period_start(&t, v), None, "{v}");
        }
    }

    /// Counting ages from the first of the birth period overstates a
    /// child's age from then until the birthday: about half a month's days
    /// in a year for a month, half a quarter's for a quarter, half a year
    /// for a year.
    #[test]
    fn the_coarser_the_birth_period_the_more_ages_read_a_year_high() {
        let share = |t: Transform| age_overstated(&t).unwrap();
        let (month, quarter, year) = (
            share(Transform::Month),
            share(Transform::Quarter),
            share(Transform::Year),
        );
        assert!((0.039..0.042).contains(&month), "{month}");
        assert!((0.12..0.13).contains(&quarter), "{quarter}");
        assert!((0.49..0.51).contains(&year), "{year}");
        assert_eq!(age_overstated(&Transform::Keep), None);
    }

    #[test]
    fn wire_names_follow_the_transform() {
        assert_eq!(
            wire_name("date_of_birth", &Transform::Month),
            Some("birth_month")
        );
        assert_eq!(
            wire_name("date_of_birth", &Transform::AgeBand(vec![0])),
            Some("age_band")
        );
        assert_eq!(
            wire_name("postcode", &Transform::Sector),
            Some("postcode_sector")
        );
        assert_eq!(
            wire_name("date_of_birth", &Transform::Quarter),
            Some("birth_quarter")
        );
        assert_eq!(
            wire_name("postcode", &Transform::Area),
            Some("postcode_area")
        );
        assert_eq!(wire_name("nhs_number", &Transform::Pseudonymise), None);
        assert_eq!(wire_name("ethnicity", &Transform::Keep), Some("ethnicity"));
        assert_eq!(wire_name("ethnicity", &Transform::Drop), None);
    }

    #[test]
    fn event_dates_at_month_precision_fall_on_the_first() {
        let d = time::macros::date!(2024 - 05 - 17);
        assert_eq!(
            event_date(&Transform::Month, d),
            Some(time::macros::date!(2024 - 05 - 01))
        );
        assert!(event_date_obeys(&Transform::Month, "2024-05-01"));
        assert!(!event_date_obeys(&Transform::Month, "2024-05-17"));
        assert!(event_date_obeys(&Transform::Keep, "2024-05-17"));
    }
}
