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
        ("date_of_birth", Transform::Year) => Some("birth_year"),
        ("date_of_birth", Transform::AgeBand(_)) => Some("age_band"),
        ("postcode", Transform::District) => Some("postcode_district"),
        ("postcode", Transform::Sector) => Some("postcode_sector"),
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
        Transform::Year => iso_date(value).map(|d| format!("{:04}", d.year())),
        Transform::CodeMap(map) => map.get(value).cloned(),
        Transform::TopCode(max) => value
            .trim()
            .parse::<u64>()
            .ok()
            .map(|n| n.min(u64::from(*max)).to_string()),
        Transform::AgeBand(_) | Transform::District | Transform::Sector => None,
    }
}

/// Whether `value`, arriving as an attribute produced by `transform`, has the
/// shape that transform produces.
pub fn obeys(transform: &Transform, value: &str) -> bool {
    match transform {
        Transform::Keep => value.len() <= 256,
        Transform::Drop | Transform::Pseudonymise => false,
        Transform::Month => value.len() == 7 && iso_date(&format!("{value}-01")).is_some(),
        Transform::Year => value.len() == 4 && value.bytes().all(|b| b.is_ascii_digit()),
        Transform::AgeBand(bounds) => bounds
            .iter()
            .any(|low| age_band_label(bounds, *low) == value),
        Transform::District => is_district(value),
        Transform::Sector => value.rsplit_once(' ').is_some_and(|(district, digit)| {
            is_district(district) && digit.len() == 1 && digit.as_bytes()[0].is_ascii_digit()
        }),
        Transform::CodeMap(map) => map.values().any(|v| v == value),
        Transform::TopCode(max) => value.parse::<u64>().is_ok_and(|n| n <= u64::from(*max)),
    }
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
