//! How identifiable the records at rest are. The gateway keeps three
//! quasi-identifiers in clear on every record — sex, birth month and postcode
//! district — so that analysts can break counts down by them. Someone who
//! reads the database and knows a child's sex, birth month and district can
//! single out that child's records if no other record shares them.
//!
//! [`measure`] groups the records by those values as stored and as they
//! would be coarsened further (birth quarter or year, postcode area), so an
//! IG lead can see what a coarser agreement would buy. It counts children,
//! not records (ten records of one child are still one child): a class's k
//! is how many children have a record with its values, and a child is as
//! exposed as the smallest class any of their records is in (k-anonymity).
//! A missing value is a value of its own (an attacker sees the blank);
//! records with none of the three single nobody out and are left out.

use std::collections::HashMap;

/// One child's stored quasi-identifiers on one or more of their records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// The child (their person on the spine), numbered by the reader.
    pub child: u32,
    pub sex: Option<String>,
    /// The birth period as stored: `YYYY-MM`, or where an agreement
    /// coarsens it, `YYYY-Qn` or `YYYY`.
    pub birth: Option<String>,
    /// The outward code (`LS6`), or where an agreement coarsens it, the
    /// postcode area (`LS`).
    pub place: Option<String>,
}

/// How the stored values are coarsened before grouping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coarsening {
    AsStored,
    BirthQuarter,
    BirthYear,
    PostcodeArea,
    BirthYearAndPostcodeArea,
}

impl Coarsening {
    pub const ALL: [Self; 5] = [
        Self::AsStored,
        Self::BirthQuarter,
        Self::BirthYear,
        Self::PostcodeArea,
        Self::BirthYearAndPostcodeArea,
    ];

    /// Its name on a command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::AsStored => "as-stored",
            Self::BirthQuarter => "birth-quarter",
            Self::BirthYear => "birth-year",
            Self::PostcodeArea => "postcode-area",
            Self::BirthYearAndPostcodeArea => "birth-year-and-postcode-area",
        }
    }

    /// The coarsening called `name`.
    pub fn named(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|c| c.name()).collect();
                format!("not a coarsening: {name:?} (one of {})", names.join(", "))
            })
    }

    /// Whether the birth month survives it (else a quarter or a year does).
    pub fn keeps_month(self) -> bool {
        matches!(self, Self::AsStored | Self::PostcodeArea)
    }

    /// Whether the postcode district survives it (else its area does).
    pub fn keeps_district(self) -> bool {
        !matches!(self, Self::PostcodeArea | Self::BirthYearAndPostcodeArea)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::AsStored => {
                "as stored: sex, birth month (or the quarter or year an agreement sends), postcode district (or area)"
            }
            Self::BirthQuarter => "sex, birth quarter, postcode district",
            Self::BirthYear => "sex, birth year, postcode district",
            Self::PostcodeArea => "sex, birth month, postcode area",
            Self::BirthYearAndPostcodeArea => "sex, birth year, postcode area",
        }
    }

    /// The birth month (`YYYY-MM`) and district as this coarsening sees
    /// them (empty where missing).
    pub fn apply(self, month: Option<&str>, district: Option<&str>) -> (String, String) {
        use joinery_policies::transform::{area_of, quarter_of};
        let year = |m: &str| m.get(..4).unwrap_or(m).to_owned();
        let quarter = |m: &str| {
            let year = m.get(..4).and_then(|y| y.parse::<i32>().ok());
            match (year, m.get(5..7).and_then(|m| m.parse::<u8>().ok())) {
                (Some(year), Some(month @ 1..=12)) => quarter_of(year, month),
                _ => m.to_owned(),
            }
        };
        let month = month.map(|m| match self {
            _ if self.keeps_month() => m.to_owned(),
            Self::BirthQuarter => quarter(m),
            _ => year(m),
        });
        let district = district.map(|d| {
            if self.keeps_district() {
                d.to_owned()
            } else {
                area_of(d).to_owned()
            }
        });
        (month.unwrap_or_default(), district.unwrap_or_default())
    }
}

/// What grouping the children under one coarsening shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Identifiability {
    /// Children with a record carrying any of the values.
    pub children: u64,
    /// Distinct combinations of values.
    pub classes: u64,
    /// Children with a record whose values no other child's share (k = 1).
    pub unique: u64,
    /// Children with a record in a class of fewer than 5, of fewer than 10.
    pub under_5: u64,
    pub under_10: u64,
    /// The median child's smallest k.
    pub median_k: u64,
}

/// Sex, birth date and postcode as one coarsening sees them.
type Values<'a> = (Option<&'a str>, String, String);

/// Groups the children of `sightings` under `coarsening`.
pub fn measure(sightings: &[Sighting], coarsening: Coarsening) -> Identifiability {
    let mut seen: Vec<(Values, u32)> = sightings
        .iter()
        .map(|s| {
            let (month, district) = coarsening.apply(s.birth.as_deref(), s.place.as_deref());
            ((s.sex.as_deref(), month, district), s.child)
        })
        .collect();
    seen.sort_unstable();
    seen.dedup();
    // Each child's smallest class.
    let mut smallest: HashMap<u32, u64> = HashMap::new();
    let mut classes = 0;
    for class in seen.chunk_by(|a, b| a.0 == b.0) {
        classes += 1;
        let k = class.len() as u64;
        for (_, child) in class {
            let s = smallest.entry(*child).or_insert(k);
            *s = (*s).min(k);
        }
    }
    let mut ks: Vec<u64> = smallest.into_values().collect();
    ks.sort_unstable();
    let under = |k: u64| ks.iter().filter(|&&s| s < k).count() as u64;
    Identifiability {
        children: ks.len() as u64,
        classes,
        unique: under(2),
        under_5: under(5),
        under_10: under(10),
        median_k: ks.get(ks.len().saturating_sub(1) / 2).copied().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(child: u32, sex: &str, month: &str, district: &str) -> Sighting {
        let some = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        Sighting {
            child,
            sex: some(sex),
            birth: some(month),
            place: some(district),
        }
    }

    #[test]
    fn children_not_records_are_counted_and_coarser_values_merge_classes() {
        let mut sightings = vec![
            // Child 1 (two agencies' records, one a month out) and child 2
            // are girls in LS6; child 3 in LS7.
            seen(1, "female", "2015-04", "LS6"),
            seen(1, "female", "2015-05", "LS6"),
            seen(2, "female", "2015-05", "LS6"),
            seen(3, "female", "2015-11", "LS7"),
            // A blank birth month is a value of its own.
            seen(4, "male", "", "LS6"),
        ];
        // Six boys born in April 2015 in LS6, each with several records.
        for child in 10..16 {
            sightings.push(seen(child, "male", "2015-04", "LS6"));
        }
        let stored = measure(&sightings, Coarsening::AsStored);
        // Child 1's April record is unique; so are children 3 and 4.
        assert_eq!(
            (
                stored.children,
                stored.classes,
                stored.unique,
                stored.under_5,
                stored.under_10
            ),
            (10, 5, 3, 4, 10)
        );
        assert_eq!(stored.median_k, 6);
        // April and May are one quarter: children 1 and 2 share it.
        let quarter = measure(&sightings, Coarsening::BirthQuarter);
        assert_eq!((quarter.classes, quarter.unique), (4, 2));
        // LS6 and LS7 are one area, 2015 one year; the blank stays apart.
        let area = measure(&sightings, Coarsening::BirthYearAndPostcodeArea);
        assert_eq!((area.classes, area.unique, area.under_5), (3, 1, 4));
        assert_eq!(area.median_k, 6);
    }
}
