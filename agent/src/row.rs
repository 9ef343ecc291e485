//! The canonical person row, and how a source row's fields become one.
//!
//! Every problem is a [`Problem`] naming the canonical field and the rule that
//! failed, never the value. A row is quarantined when it cannot be used (no
//! local id, an impossible or future date); a lesser problem (an NHS number
//! failing its check digit, an unrecognised code) drops that value, keeps the
//! row and is reported as a warning.

use std::collections::BTreeMap;

use time::Date;

use crate::mapping::{IfInvalid, NameOrder, Resolved, ResolvedAttribute, ResolvedDate};
use crate::person::{Event, PersonRow, Problem};
use crate::validate;

/// The result of mapping one source row.
// Almost every row is valid: boxing it would cost an allocation per row to
// shrink the rare quarantined one.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    Valid {
        row: PersonRow,
        warnings: Vec<Problem>,
    },
    Quarantined(Problem),
}

/// Maps a row's fields (already split, in header order) through `mapping`.
/// Dates after `today` are refused.
pub fn map_row(fields: &[String], mapping: &Resolved, today: Date) -> RowOutcome {
    let built = build(fields, mapping, today).and_then(|(mut row, warnings)| {
        if let Some(person) = &mapping.person {
            person.attach(&mut row)?;
        }
        Ok((row, warnings))
    });
    match built {
        Ok((row, warnings)) => RowOutcome::Valid { row, warnings },
        Err(problem) => RowOutcome::Quarantined(problem),
    }
}

/// Values a return uses for "no UPN" (SSDA903 and CIN census `UN1`-`UN10`:
/// not yet allocated, not known, and so on): missing, not invalid.
fn is_upn_unknown_code(raw: &str) -> bool {
    raw.len() <= 4
        && raw
            .to_ascii_uppercase()
            .strip_prefix("UN")
            .is_some_and(|n| n.parse::<u8>().is_ok_and(|n| (1..=10).contains(&n)))
}

fn build(
    fields: &[String],
    mapping: &Resolved,
    today: Date,
) -> Result<(PersonRow, Vec<Problem>), Problem> {
    let get = |index: usize| fields.get(index).map(|s| s.trim()).unwrap_or("");
    let present = |index: Option<usize>| index.map(get).filter(|s| !s.is_empty());
    let mut warnings = Vec::new();

    // Identifying fields with control characters (a NUL, an escape) are
    // damaged, or an attempt to smuggle something past the checks.
    for (field, index) in [
        ("local_id", Some(mapping.local_id)),
        ("nhs_number", mapping.nhs_number),
        ("given_name", mapping.given_name),
        ("family_name", mapping.family_name),
        ("name", mapping.full_name.map(|(index, _)| index)),
        (
            "date_of_birth",
            mapping.date_of_birth.map(|(index, _, _)| index),
        ),
        ("postcode", mapping.postcode),
        ("upn", mapping.upn),
    ] {
        if present(index).is_some_and(|value| value.chars().any(char::is_control)) {
            return Err(Problem::new(field, "contains a control character"));
        }
    }

    let local_id = get(mapping.local_id).to_owned();
    if local_id.is_empty() {
        return Err(Problem::new("local_id", "missing"));
    }

    let nhs_number = present(mapping.nhs_number).and_then(|raw| match validate::nhs_number(raw) {
        Ok(n) => Some(n),
        Err(e) => {
            warnings.push(Problem::new(
                "nhs_number",
                format!("{e}; treated as missing"),
            ));
            None
        }
    });

    let (given_name, family_name) = match mapping.full_name {
        Some((index, order)) => split_name(get(index), order),
        None => (
            present(mapping.given_name).map(validate::name),
            present(mapping.family_name).map(validate::name),
        ),
    };
    let non_empty = |n: Option<String>| n.filter(|n| !n.is_empty());

    let date_of_birth = match mapping.date_of_birth {
        Some((index, format, if_invalid)) => match present(Some(index)) {
            None => {
                warnings.push(Problem::new("date_of_birth", "missing"));
                None
            }
            Some(raw) => match (
                checked_date(raw, format, today, mapping, "date_of_birth"),
                if_invalid,
            ) {
                (Ok(date), _) if validate::is_placeholder_date(date) => {
                    warnings.push(Problem::new(
                        "date_of_birth",
                        format!("{}; treated as missing", validate::Invalid::PlaceholderDate),
                    ));
                    None
                }
                (Ok(date), _) => Some(date),
                (Err(problem), IfInvalid::Quarantine) => return Err(problem),
                (Err(problem), IfInvalid::Drop) => {
                    warnings.push(Problem::new(
                        "date_of_birth",
                        format!("{}; treated as missing", problem.what),
                    ));
                    None
                }
            },
        },
        None => None,
    };

    let sex = mapping.sex.as_ref().and_then(|(index, codes)| {
        let raw = present(Some(*index))?;
        match codes.get(&raw.to_uppercase()) {
            Some(value) if crate::mapping::SEX_VALUES.contains(&value.as_str()) => {
                Some(value.clone())
            }
            _ => {
                warnings.push(Problem::new(
                    "sex",
                    "code not recognised; treated as missing",
                ));
                None
            }
        }
    });

    let postcode = present(mapping.postcode).and_then(|raw| match validate::postcode(raw) {
        Ok(p) => Some(p),
        Err(e) => {
            warnings.push(Problem::new("postcode", format!("{e}; treated as missing")));
            None
        }
    });

    let upn = present(mapping.upn)
        .filter(|raw| !is_upn_unknown_code(raw))
        .and_then(|raw| match validate::upn(raw) {
            Ok(upn) => Some(upn),
            Err(e) => {
                warnings.push(Problem::new("upn", format!("{e}; treated as missing")));
                None
            }
        });

    for order in &mapping.date_order {
        let date = |(index, format, _): &(usize, validate::DateFormat, String)| {
            present(Some(*index)).and_then(|raw| validate::date(raw, *format).ok())
        };
        if let (Some(earlier), Some(later)) = (date(&order.earlier), date(&order.later))
            && later < earlier
        {
            return Err(Problem::new(
                order.later.2.clone(),
                format!("is before {}", order.earlier.2),
            ));
        }
    }

    let attributes = collect_attributes(&mapping.attributes, &get, "", &mut warnings);

    let mut events = Vec::new();
    for event in &mapping.events {
        if let Some((index, values)) = &event.when
            && !values.contains(&get(*index).to_uppercase())
        {
            continue;
        }
        let field = format!("{} date", event.event_type);
        let date = match event.date {
            ResolvedDate::Fixed(date) => date,
            ResolvedDate::Column(index, format) => match present(Some(index)) {
                Some(raw) => checked_date(raw, format, today, mapping, &field)?,
                // Not happened yet (an open episode has no end date).
                None if event.optional => continue,
                None => {
                    warnings.push(Problem::new(field, "missing; no event recorded"));
                    continue;
                }
            },
        };
        events.push(Event {
            event_type: event.event_type.clone(),
            date,
            attributes: collect_attributes(
                &event.attributes,
                &get,
                &format!("{} ", event.event_type),
                &mut warnings,
            ),
        });
    }

    Ok((
        PersonRow {
            local_id,
            nhs_number,
            given_name: non_empty(given_name),
            family_name: non_empty(family_name),
            date_of_birth,
            sex,
            postcode,
            upn,
            attributes,
            events,
        },
        warnings,
    ))
}

/// A real date, not after `today`, and not after the end of the collection
/// the file belongs to (a later one means the file is for another year).
fn checked_date(
    raw: &str,
    format: validate::DateFormat,
    today: Date,
    mapping: &Resolved,
    field: &str,
) -> Result<Date, Problem> {
    let date = validate::date(raw, format).map_err(|e| Problem::new(field, e))?;
    if date > today {
        return Err(Problem::new(field, validate::Invalid::FutureDate));
    }
    if let Some(collection) = &mapping.collection
        && date > collection.ends
    {
        return Err(Problem::new(
            field,
            format!(
                "is after the end of the {} collection year ({}): is the file for another year?",
                collection.label, collection.ends
            ),
        ));
    }
    Ok(date)
}

fn collect_attributes<'a>(
    attributes: &[ResolvedAttribute],
    get: &impl Fn(usize) -> &'a str,
    prefix: &str,
    warnings: &mut Vec<Problem>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for attribute in attributes {
        let raw = get(attribute.index);
        if raw.is_empty() {
            continue;
        }
        let value = match &attribute.codes {
            None => raw.to_owned(),
            Some(codes) => match codes.get(&raw.to_uppercase()) {
                Some(value) => value.clone(),
                None => {
                    warnings.push(Problem::new(
                        format!("{prefix}{}", attribute.name),
                        "code not in the mapping's code map; treated as missing",
                    ));
                    continue;
                }
            },
        };
        if let Some((list, codes)) = &attribute.code_list {
            // A repeated XML element arrives as `A,B`: each code is checked.
            let (known, unknown): (Vec<String>, Vec<String>) = value
                .split(',')
                .map(|c| c.trim().to_uppercase())
                .filter(|c| !c.is_empty())
                .partition(|c| codes.contains(c));
            if !unknown.is_empty() {
                warnings.push(Problem::new(
                    format!("{prefix}{}", attribute.name),
                    format!("code not in code list {list}; treated as missing"),
                ));
            }
            if !known.is_empty() {
                out.insert(attribute.name.clone(), known.join(","));
            }
        } else {
            out.insert(attribute.name.clone(), value);
        }
    }
    out
}

/// Splits a combined name column into (given, family), normalised.
fn split_name(raw: &str, order: NameOrder) -> (Option<String>, Option<String>) {
    let raw = raw.trim();
    if raw.is_empty() {
        return (None, None);
    }
    match order {
        NameOrder::SurnameCommaForename => match raw.split_once(',') {
            Some((family, given)) => (Some(validate::name(given)), Some(validate::name(family))),
            None => (None, Some(validate::name(raw))),
        },
        NameOrder::ForenameSurname => match raw.rsplit_once(char::is_whitespace) {
            Some((given, family)) => (Some(validate::name(given)), Some(validate::name(family))),
            None => (None, Some(validate::name(raw))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Mapping;
    use std::path::Path;
    use time::macros::date;

    fn resolved(yaml: &str, headers: &[&str]) -> Resolved {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.yaml");
        std::fs::write(&path, yaml).unwrap();
        let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        Mapping::load(&path)
            .unwrap()
            .resolve(&headers, &path, Path::new("d.csv"))
            .unwrap()
    }

    fn row(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    const MAP: &str = "dataset: d\nfields:\n  local_id: id\n  nhs_number: nhs\n  full_name: { column: name, order: surname_comma_forename }\n  date_of_birth: { column: dob, format: dd/mm/yyyy }\n  sex: sex\n  postcode: pc\nevents:\n  - type: referral\n    date: { column: ref, format: iso }\n";
    const HEADERS: &[&str] = &["id", "nhs", "name", "dob", "sex", "pc", "ref"];
    const TODAY: Date = date!(2026 - 01 - 01);

    #[test]
    fn placeholders_and_an_unknown_sex_take_no_part_in_linkage() {
        let m = resolved(MAP, HEADERS);
        let RowOutcome::Valid { row: r, warnings } = map_row(
            &row(&[
                "C1",
                "",
                "SMITH, Jane",
                "01/01/1900",
                "U",
                "ZZ99 3VZ",
                "2024-05-06",
            ]),
            &m,
            TODAY,
        ) else {
            panic!("a row with placeholders is still valid")
        };
        let said: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
        for warning in [
            "date_of_birth: a placeholder date",
            "postcode: a placeholder postcode",
        ] {
            assert!(said.iter().any(|w| w.starts_with(warning)), "{said:?}");
        }
        assert_eq!((r.date_of_birth, &r.postcode), (None, &None));
        assert_eq!(r.sex.as_deref(), Some("unknown"));
        let identity = r.linkage_identity();
        for field in ["date_of_birth", "postcode", "sex"] {
            assert_eq!(identity.get(field), None, "{field}");
        }
        assert_eq!(identity.get("family_name"), Some("SMITH"));
    }

    #[test]
    fn a_clean_row_maps_every_field() {
        let m = resolved(MAP, HEADERS);
        let RowOutcome::Valid { row: r, warnings } = map_row(
            &row(&[
                "C1",
                "943 476 5919",
                "SMITH, Jane",
                "03/04/2015",
                "F",
                "ls6 2ab",
                "2024-05-06",
            ]),
            &m,
            TODAY,
        ) else {
            panic!("row should be valid")
        };
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(r.nhs_number.as_deref(), Some("9434765919"));
        assert_eq!(r.given_name.as_deref(), Some("JANE"));
        assert_eq!(r.family_name.as_deref(), Some("SMITH"));
        assert_eq!(r.date_of_birth, Some(date!(2015 - 04 - 03)));
        assert_eq!(r.sex.as_deref(), Some("female"));
        assert_eq!(r.postcode.unwrap().district(), "LS6");
        assert_eq!(r.events[0].date, date!(2024 - 05 - 06));
    }

    #[test]
    fn an_invalid_nhs_number_is_a_warning_and_counts_as_missing() {
        let m = resolved(MAP, HEADERS);
        let RowOutcome::Valid { row: r, warnings } = map_row(
            &row(&["C1", "9434765918", "", "03/04/2015", "", "", "2024-05-06"]),
            &m,
            TODAY,
        ) else {
            panic!("row should be valid")
        };
        assert_eq!(r.nhs_number, None);
        assert_eq!(warnings[0].field, "nhs_number");
        assert!(!warnings[0].to_string().contains("9434765918"));
    }

    #[test]
    fn an_impossible_date_of_birth_is_dropped_when_the_mapping_says_so() {
        let map = MAP.replace(
            "format: dd/mm/yyyy }\n  sex",
            "format: dd/mm/yyyy, if_invalid: drop }\n  sex",
        );
        let m = resolved(&map, HEADERS);
        let RowOutcome::Valid { row: r, warnings } = map_row(
            &row(&["C1", "", "SMITH, Jane", "31/02/2015", "", "", "2024-05-06"]),
            &m,
            TODAY,
        ) else {
            panic!("row should be sent without its date of birth")
        };
        assert_eq!(r.date_of_birth, None);
        assert_eq!(r.family_name.as_deref(), Some("SMITH"));
        assert_eq!(
            warnings[0].to_string(),
            "date_of_birth: date does not exist; treated as missing"
        );
    }

    #[test]
    fn impossible_future_and_missing_key_fields_quarantine_the_row() {
        let m = resolved(MAP, HEADERS);
        let cases = [
            (
                ["C1", "", "", "31/02/2015", "", "", ""],
                "date_of_birth: date does not exist",
            ),
            (
                ["C1", "", "", "01/01/2030", "", "", ""],
                "date_of_birth: date is in the future",
            ),
            (["", "", "", "01/01/2015", "", "", ""], "local_id: missing"),
            (
                ["C1", "", "", "01/01/2015", "", "", "06/05/2024"],
                "referral date: date does not match the expected format",
            ),
        ];
        for (values, expected) in cases {
            match map_row(&row(&values), &m, TODAY) {
                RowOutcome::Quarantined(p) => assert_eq!(p.to_string(), expected),
                other => panic!("expected quarantine, got {other:?}"),
            }
        }
    }

    #[test]
    fn names_split_both_ways() {
        assert_eq!(
            split_name("Smith-Jones, Mary Ann", NameOrder::SurnameCommaForename),
            (Some("MARY ANN".into()), Some("SMITH-JONES".into()))
        );
        assert_eq!(
            split_name("Mary Ann Smith", NameOrder::ForenameSurname),
            (Some("MARY ANN".into()), Some("SMITH".into()))
        );
    }
}
