//! Validation and normalisation of identifying fields, inside the agent.
//!
//! Nothing here logs or returns a value it was given: errors describe what was
//! wrong, never the data.

use time::{Date, Month};

/// Why a value was refused. Display texts name the rule, never the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("NHS number must be 10 digits")]
    NhsNumberShape,
    #[error("NHS number fails the Modulus 11 check")]
    NhsNumberCheckDigit,
    #[error("not a valid UK postcode")]
    Postcode,
    #[error("a placeholder postcode (ZZ99: no fixed abode, not known or abroad)")]
    PlaceholderPostcode,
    #[error("a placeholder date (a system default, not a birth date)")]
    PlaceholderDate,
    #[error("date does not match the expected format")]
    DateFormat,
    #[error("date does not exist")]
    ImpossibleDate,
    #[error("date is in the future")]
    FutureDate,
    #[error("UPN must be a letter, 11 digits and a digit or letter (13 characters)")]
    UpnShape,
    #[error("UPN fails its check letter")]
    UpnCheckLetter,
}

/// Validates an NHS number (spaces and hyphens allowed between digits) with
/// the Modulus 11 algorithm, returning its ten digits.
pub fn nhs_number(raw: &str) -> Result<String, Invalid> {
    let digits: String = raw.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Invalid::NhsNumberShape);
    }
    match nhs_check_digit(&digits.as_bytes()[..9]) {
        Some(check) if check == digits.as_bytes()[9] - b'0' => Ok(digits),
        _ => Err(Invalid::NhsNumberCheckDigit),
    }
}

/// The Modulus 11 check digit for nine NHS number digits, or `None` when the
/// remainder gives 10 (no valid number has these nine digits).
pub fn nhs_check_digit(nine: &[u8]) -> Option<u8> {
    let sum: u32 = nine
        .iter()
        .zip((2..=10).rev())
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    match 11 - (sum % 11) {
        11 => Some(0),
        10 => None,
        check => Some(check as u8),
    }
}

/// Letters of the Unique Pupil Number's check character (and of a temporary
/// UPN's last character), in value order 0-22: A-Z without I, O and S.
const UPN_LETTERS: &[u8; 23] = b"ABCDEFGHJKLMNPQRTUVWXYZ";

/// Validates a Unique Pupil Number (DfE): a check letter, then 11 digits
/// (local authority, establishment, year, serial), then a digit, or for a
/// temporary UPN a letter. Returns it upper case.
pub fn upn(raw: &str) -> Result<String, Invalid> {
    let upn = raw.trim().to_ascii_uppercase();
    let b = upn.as_bytes();
    let shaped = b.len() == 13
        && UPN_LETTERS.contains(&b[0])
        && b[1..12].iter().all(u8::is_ascii_digit)
        && (b[12].is_ascii_digit() || UPN_LETTERS.contains(&b[12]));
    if !shaped {
        return Err(Invalid::UpnShape);
    }
    match upn_check_letter(&b[1..]) {
        Some(letter) if letter == b[0] => Ok(upn),
        _ => Err(Invalid::UpnCheckLetter),
    }
}

/// The check letter for a UPN's characters 2-13: each multiplied by its
/// position (2-13), summed, modulo 23, as a letter of A-Z without I, O, S. A
/// letter in the last place (a temporary UPN) counts as its value 0-22 in
/// that same alphabet. `None` when a character is neither.
pub fn upn_check_letter(twelve: &[u8]) -> Option<u8> {
    if twelve.len() != 12 {
        return None;
    }
    let mut sum = 0u32;
    for (c, weight) in twelve.iter().zip(2u32..) {
        let value = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            UPN_LETTERS.iter().position(|l| l == c)? as u32
        };
        sum += value * weight;
    }
    Some(UPN_LETTERS[(sum % 23) as usize])
}

/// A UK postcode split into outward and inward codes, upper case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Postcode {
    pub outward: String,
    pub inward: String,
}

impl Postcode {
    /// `AA9A 9AA`-style normalised form.
    pub fn normalised(&self) -> String {
        format!("{} {}", self.outward, self.inward)
    }

    /// The postcode district (outward code), e.g. `LS6`.
    pub fn district(&self) -> &str {
        &self.outward
    }

    /// The postcode sector, e.g. `LS6 2`.
    pub fn sector(&self) -> String {
        format!("{} {}", self.outward, &self.inward[..1])
    }

    /// The postcode area, the letters the district starts with, e.g. `LS`.
    pub fn area(&self) -> &str {
        joinery_policies::transform::area_of(&self.outward)
    }
}

/// The NHS pseudo-postcodes' district: `ZZ99 3VZ` (no fixed abode),
/// `ZZ99 3WZ` (not known), `ZZ99 3CZ` and others (abroad). Two records
/// holding one say nothing about where either child lives.
const PLACEHOLDER_DISTRICT: &str = "ZZ99";

/// Parses a UK postcode in any spacing or case. Checks the shapes of the
/// outward code (A9, A99, AA9, AA99, A9A, AA9A) and the inward code (9AA).
pub fn postcode(raw: &str) -> Result<Postcode, Invalid> {
    let compact: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if !(5..=7).contains(&compact.len()) || !compact.is_ascii() {
        return Err(Invalid::Postcode);
    }
    let (outward, inward) = compact.split_at(compact.len() - 3);
    let inward_ok = {
        let b = inward.as_bytes();
        b[0].is_ascii_digit() && b[1].is_ascii_alphabetic() && b[2].is_ascii_alphabetic()
    };
    let outward_ok = joinery_policies::transform::is_district(outward);
    if inward_ok && outward == PLACEHOLDER_DISTRICT {
        Err(Invalid::PlaceholderPostcode)
    } else if inward_ok && outward_ok {
        Ok(Postcode {
            outward: outward.to_owned(),
            inward: inward.to_owned(),
        })
    } else {
        Err(Invalid::Postcode)
    }
}

/// A name normalised for matching: upper case ASCII letters, with single
/// spaces and hyphens kept; accents folded; other characters removed.
pub fn name(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = fold_accent(c).to_ascii_uppercase();
        let separator = c == ' ' || c == '-';
        if c.is_ascii_uppercase() || (separator && !out.is_empty() && !out.ends_with([' ', '-'])) {
            out.push(c);
        }
    }
    out.trim_end_matches([' ', '-']).to_owned()
}

fn fold_accent(c: char) -> char {
    match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' => 'A',
        'ç' | 'Ç' => 'C',
        'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' => 'E',
        'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => 'I',
        'ñ' | 'Ñ' => 'N',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' | 'Ø' => 'O',
        'ù' | 'ú' | 'û' | 'ü' | 'Ù' | 'Ú' | 'Û' | 'Ü' => 'U',
        'ý' | 'ÿ' | 'Ý' => 'Y',
        '\'' | '’' => '\0',
        other => other,
    }
}

/// Date layouts found in agency extracts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
pub enum DateFormat {
    /// `31/01/2015` (also accepts `-` or `.` separators)
    #[serde(rename = "dd/mm/yyyy")]
    DayMonthYear,
    /// `20150131`
    #[serde(rename = "yyyymmdd")]
    Compact,
    /// `2015-01-31`, optionally followed by a time (`T…` or ` …`), which is ignored
    #[serde(rename = "iso")]
    Iso,
}

/// Parses a date in `format`. A day-month-year date with a time after it
/// (spreadsheet exports) is accepted; the time is ignored.
pub fn date(raw: &str, format: DateFormat) -> Result<Date, Invalid> {
    let raw = raw.trim();
    let (year, month, day) = match format {
        DateFormat::DayMonthYear => {
            let date_part = raw.split(' ').next().unwrap_or(raw);
            let mut parts = date_part.split(['/', '-', '.']);
            let (Some(d), Some(m), Some(y), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(Invalid::DateFormat);
            };
            if y.len() != 4 || d.is_empty() || d.len() > 2 || m.is_empty() || m.len() > 2 {
                return Err(Invalid::DateFormat);
            }
            (number(y)?, number(m)?, number(d)?)
        }
        DateFormat::Compact => {
            if raw.len() != 8 {
                return Err(Invalid::DateFormat);
            }
            (number(&raw[..4])?, number(&raw[4..6])?, number(&raw[6..8])?)
        }
        DateFormat::Iso => {
            let date_part = raw.get(..10).ok_or(Invalid::DateFormat)?;
            let rest = &raw[10..];
            if !(rest.is_empty() || rest.starts_with(['T', ' '])) {
                return Err(Invalid::DateFormat);
            }
            let b = date_part.as_bytes();
            if b[4] != b'-' || b[7] != b'-' {
                return Err(Invalid::DateFormat);
            }
            (
                number(&date_part[..4])?,
                number(&date_part[5..7])?,
                number(&date_part[8..10])?,
            )
        }
    };
    let month = u8::try_from(month)
        .ok()
        .and_then(|m| Month::try_from(m).ok())
        .ok_or(Invalid::ImpossibleDate)?;
    let day = u8::try_from(day).map_err(|_| Invalid::ImpossibleDate)?;
    Date::from_calendar_date(year as i32, month, day).map_err(|_| Invalid::ImpossibleDate)
}

/// Whether `date` is one of the defaults records systems put in a date
/// field that was not known (1 January 1900 and its neighbours, 1 January
/// 1800): never a child's birth date.
pub fn is_placeholder_date(date: Date) -> bool {
    date.year() < 1901 || (date.year() == 1901 && date.ordinal() == 1)
}

fn number(s: &str) -> Result<u32, Invalid> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Invalid::DateFormat);
    }
    s.parse().map_err(|_| Invalid::DateFormat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::date as d;

    /// A valid UPN made from 12 characters, computed independently of
    /// `upn_check_letter` (same rule, written out).
    fn make_upn(twelve: &str) -> String {
        let sum: usize = twelve
            .bytes()
            .enumerate()
            .map(|(i, c)| {
                let value = if c.is_ascii_digit() {
                    usize::from(c - b'0')
                } else {
                    "ABCDEFGHJKLMNPQRTUVWXYZ".find(char::from(c)).unwrap()
                };
                value * (i + 2)
            })
            .sum();
        format!(
            "{}{twelve}",
            &"ABCDEFGHJKLMNPQRTUVWXYZ"[sum % 23..sum % 23 + 1]
        )
    }

    #[test]
    fn upns_by_check_letter() {
        // Worked by hand for 801200100001: 8*2 + 1*4 + 2*5 + 1*8 + 1*13 = 51;
        // 51 mod 23 = 5 -> F (A=0 ... F=5).
        assert_eq!(upn("F801200100001").unwrap(), "F801200100001");
        assert_eq!(upn("f801200100001").unwrap(), "F801200100001");
        assert_eq!(upn("A801200100001"), Err(Invalid::UpnCheckLetter));
        assert_eq!(upn("F80120010000"), Err(Invalid::UpnShape));
        assert_eq!(upn("I801200100001"), Err(Invalid::UpnShape));
        // Temporary UPN: a letter last, valued by its place in the alphabet.
        let temporary = make_upn("80120010000A");
        assert_eq!(upn(&temporary).unwrap(), temporary);
        assert_eq!(upn("F80120010000S"), Err(Invalid::UpnShape));
    }

    proptest! {
        #[test]
        fn every_made_upn_is_valid(digits in "[0-9]{11}", last in "[0-9ABCDEFGHJKLMNPQRTUVWXYZ]") {
            let made = make_upn(&format!("{digits}{last}"));
            prop_assert_eq!(upn(&made), Ok(made.clone()));
        }

        #[test]
        fn a_changed_upn_digit_or_swapped_neighbours_fail(
            digits in "[0-9]{12}", position in 1usize..13, replacement in 0u8..10, swap in 1usize..12,
        ) {
            let made = make_upn(&digits);
            let mut changed = made.clone().into_bytes();
            changed[position] = b'0' + replacement;
            if changed != made.as_bytes() {
                prop_assert!(upn(std::str::from_utf8(&changed).unwrap()).is_err());
            }
            let mut swapped = made.clone().into_bytes();
            swapped.swap(swap, swap + 1);
            if swapped != made.as_bytes() {
                prop_assert!(upn(std::str::from_utf8(&swapped).unwrap()).is_err());
            }
        }

        #[test]
        fn swapped_nhs_number_neighbours_fail(nine in "[0-9]{9}", swap in 0usize..9) {
            let Some(check) = nhs_check_digit(nine.as_bytes()) else { return Ok(()) };
            let valid = format!("{nine}{check}");
            prop_assert!(nhs_number(&valid).is_ok());
            let mut swapped = valid.clone().into_bytes();
            swapped.swap(swap, swap + 1);
            if swapped != valid.as_bytes() {
                prop_assert!(nhs_number(std::str::from_utf8(&swapped).unwrap()).is_err());
            }
        }
    }

    #[test]
    fn nhs_numbers_by_modulus_11() {
        // Published example: 943 476 5919 is valid.
        assert_eq!(nhs_number("943 476 5919").unwrap(), "9434765919");
        assert_eq!(nhs_number("943-476-5919").unwrap(), "9434765919");
        assert_eq!(nhs_number("9434765918"), Err(Invalid::NhsNumberCheckDigit));
        assert_eq!(nhs_number("943476591"), Err(Invalid::NhsNumberShape));
        assert_eq!(nhs_number("94347659AA"), Err(Invalid::NhsNumberShape));
        // Nine digits whose check digit would be 10 are never valid.
        let nine = b"000000006";
        assert_eq!(nhs_check_digit(nine), None);
    }

    #[test]
    fn every_single_digit_error_is_caught() {
        let valid = b"9434765919";
        for position in 0..10 {
            for digit in b'0'..=b'9' {
                if digit == valid[position] {
                    continue;
                }
                let mut changed = *valid;
                changed[position] = digit;
                let text = std::str::from_utf8(&changed).unwrap();
                assert!(nhs_number(text).is_err(), "{text} should fail");
            }
        }
    }

    #[test]
    fn postcodes() {
        let p = postcode(" ls6 2ab").unwrap();
        assert_eq!(p.normalised(), "LS6 2AB");
        assert_eq!(p.district(), "LS6");
        assert_eq!(p.sector(), "LS6 2");
        assert_eq!(postcode("SW1A1AA").unwrap().district(), "SW1A");
        assert_eq!(postcode("M1 1AE").unwrap().district(), "M1");
        assert_eq!(postcode("SW1A1AA").unwrap().area(), "SW");
        assert_eq!(postcode("M1 1AE").unwrap().area(), "M");
        assert_eq!(postcode("ls6 2ab").unwrap().area(), "LS");
        assert_eq!(postcode("LS6"), Err(Invalid::Postcode));
        assert_eq!(postcode("12345"), Err(Invalid::Postcode));
        assert_eq!(postcode("LS6 2A1"), Err(Invalid::Postcode));
        for placeholder in ["ZZ99 3VZ", "zz993wz", "ZZ99 3CZ"] {
            assert_eq!(postcode(placeholder), Err(Invalid::PlaceholderPostcode));
        }
        assert!(is_placeholder_date(d!(1900 - 01 - 01)));
        assert!(is_placeholder_date(d!(1800 - 01 - 01)));
        assert!(!is_placeholder_date(d!(2015 - 01 - 01)));
    }

    #[test]
    fn names() {
        assert_eq!(name("  o'Brien-  Smith "), "OBRIEN-SMITH");
        assert_eq!(name("Zoë   Ann"), "ZOE ANN");
        assert_eq!(name("José"), "JOSE");
        assert_eq!(name("123"), "");
    }

    #[test]
    fn dates_in_every_format() {
        assert_eq!(
            date("31/01/2015", DateFormat::DayMonthYear),
            Ok(d!(2015 - 01 - 31))
        );
        assert_eq!(
            date("1/2/2015", DateFormat::DayMonthYear),
            Ok(d!(2015 - 02 - 01))
        );
        assert_eq!(
            date("31.01.2015 00:00", DateFormat::DayMonthYear),
            Ok(d!(2015 - 01 - 31))
        );
        assert_eq!(
            date("20150131", DateFormat::Compact),
            Ok(d!(2015 - 01 - 31))
        );
        assert_eq!(date("2015-01-31", DateFormat::Iso), Ok(d!(2015 - 01 - 31)));
        assert_eq!(
            date("2015-01-31T10:00:00Z", DateFormat::Iso),
            Ok(d!(2015 - 01 - 31))
        );
        assert_eq!(
            date("31/02/2015", DateFormat::DayMonthYear),
            Err(Invalid::ImpossibleDate)
        );
        assert_eq!(
            date("2015-13-01", DateFormat::Iso),
            Err(Invalid::ImpossibleDate)
        );
        assert_eq!(
            date("2015/01/31", DateFormat::DayMonthYear),
            Err(Invalid::DateFormat)
        );
        assert_eq!(date("15-01-31", DateFormat::Iso), Err(Invalid::DateFormat));
        assert_eq!(date("", DateFormat::Compact), Err(Invalid::DateFormat));
    }
}
