//! The canonical person row: who one source row is about, its events, and
//! the problems found reading it (named by field and rule, never value).
//! [`crate::row`] makes one from a source row.

use std::collections::BTreeMap;
use std::fmt;

use time::Date;

use crate::validate::Postcode;

/// One person-row in canonical form. Identifying fields never leave the
/// agent: [`crate::release`] turns this into what may be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonRow {
    pub local_id: String,
    /// Ten digits, only when valid.
    pub nhs_number: Option<String>,
    /// Normalised (upper case, letters only); used by linkage encodings.
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub date_of_birth: Option<Date>,
    /// One of [`crate::mapping::SEX_VALUES`].
    pub sex: Option<String>,
    pub postcode: Option<Postcode>,
    /// Unique Pupil Number, only when valid; never sent.
    pub upn: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub events: Vec<Event>,
}

impl PersonRow {
    /// Whether the row says who the person is (a name, birth date or
    /// postcode), as an identity table's row does and an event table's
    /// (a care contact naming only its referral) does not.
    pub fn has_identity(&self) -> bool {
        self.given_name.is_some()
            || self.family_name.is_some()
            || self.date_of_birth.is_some()
            || self.postcode.is_some()
    }

    /// The identifying fields fuzzy linkage may encode, in the form the
    /// encoder expects (upper-case names, ISO dates, `OUT IN` postcodes),
    /// and the mapped attributes (upper case, single spaces) for parameters
    /// that name one. Only the fields the linkage parameters list are encoded.
    /// The full name is the given and family names together.
    /// What says nothing of the child is missing here (an unknown sex; a
    /// placeholder date or postcode was already dropped when the row was read).
    pub fn linkage_identity(&self) -> joinery_linkage::Identity {
        let dob = self
            .date_of_birth
            .map(|d| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()));
        let full_name = self
            .given_name
            .as_ref()
            .zip(self.family_name.as_ref())
            .map(|(given, family)| format!("{given} {family}"));
        let identity = joinery_linkage::Identity::new()
            .with("given_name", self.given_name.as_deref())
            .with("full_name", full_name.as_deref())
            .with("family_name", self.family_name.as_deref())
            .with("date_of_birth", dob.as_deref())
            // An unknown or indeterminate sex says nothing about who
            // the child is: missing, not a value two records could share.
            .with(
                "sex",
                self.sex
                    .as_deref()
                    .filter(|s| ["male", "female"].contains(s)),
            )
            .with(
                "postcode",
                self.postcode.as_ref().map(Postcode::normalised).as_deref(),
            );
        self.attributes
            .iter()
            .fold(identity, |identity, (name, value)| {
                let value = value
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_uppercase();
                identity.with(name.clone(), Some(&value))
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event_type: String,
    pub date: Date,
    pub attributes: BTreeMap<String, String>,
}

/// A problem with one field of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub what: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, what: impl fmt::Display) -> Self {
        Self {
            field: field.into(),
            what: what.to_string(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.what)
    }
}
