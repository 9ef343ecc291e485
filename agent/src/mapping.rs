//! Mapping files: how one extract's columns become Joinery's canonical person
//! row. Written once per extract layout by agency IT, for example:
//!
//! ```yaml
//! dataset: csc_referrals
//! fields:
//!   local_id: Child ID
//!   nhs_number: NHS Number
//!   full_name: { column: Name, order: surname_comma_forename }
//!   date_of_birth: { column: DOB, format: dd/mm/yyyy }
//!   sex: { column: Gender, codes: { "1": male, "2": female } }
//!   postcode: Postcode
//! attributes:
//!   ethnicity: Ethnicity
//! events:
//!   - type: referral
//!     date: { column: Referral Date, format: dd/mm/yyyy }
//! ```
//!
//! [`Mapping::resolve`] binds it to a file's header row, failing with the name
//! of any column the file lacks before a single row is read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::person_index::PersonRef;
use crate::validate::DateFormat;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Dataset name at the gateway (a-z, 0-9, _). A national format's
    /// tables take theirs from the source's configuration.
    #[serde(default)]
    pub dataset: String,
    /// Field separator; detected from the header line when absent.
    #[serde(default)]
    pub delimiter: Option<char>,
    pub fields: Fields,
    /// Further columns passed on as attributes, by attribute name.
    #[serde(default)]
    pub attributes: BTreeMap<String, Column>,
    /// Dated events each row records.
    #[serde(default)]
    pub events: Vec<EventMapping>,
    /// Columns a file may lack (a field mapped to one is then simply absent),
    /// e.g. name columns an MHSDS-style extract may or may not carry.
    #[serde(default)]
    pub optional_columns: Vec<String>,
    /// Pairs of date columns that must be in order when both are present
    /// (an episode cannot end before it starts); a row breaking one is
    /// quarantined.
    #[serde(default)]
    pub date_order: Vec<DateOrder>,
    /// Code lists a column's `code_list` may name (a national format's lists
    /// for its collection year).
    #[serde(skip)]
    #[schemars(skip)]
    pub code_lists: Arc<CodeLists>,
    /// The last day of the collection the file belongs to: a later date
    /// means the file is for another year.
    #[serde(skip)]
    #[schemars(skip)]
    pub collection: Option<Collection>,
    /// How a row finds its person, when the person is in another table.
    #[serde(skip)]
    #[schemars(skip)]
    pub person: Option<PersonRef>,
}

/// Code lists by name: each maps a code to its description.
pub type CodeLists = BTreeMap<String, BTreeMap<String, String>>;

/// A return's collection year.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collection {
    /// e.g. `2024-25`
    pub label: String,
    /// The last day it covers (31 March).
    pub ends: time::Date,
}

/// Two date columns, the first not after the second.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DateOrder {
    pub earlier: String,
    pub later: String,
}

/// Columns holding the person's identity.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fields {
    /// The agency's own record id (required).
    pub local_id: Column,
    #[serde(default)]
    pub nhs_number: Option<Column>,
    #[serde(default)]
    pub given_name: Option<Column>,
    #[serde(default)]
    pub family_name: Option<Column>,
    /// One column holding both names.
    #[serde(default)]
    pub full_name: Option<FullName>,
    #[serde(default)]
    pub date_of_birth: Option<BirthDateColumn>,
    /// Sex; common codes (1/2/9/0, M/F/U, Male/Female) are understood, and
    /// `codes` adds or overrides entries.
    #[serde(default)]
    pub sex: Option<Column>,
    #[serde(default)]
    pub postcode: Option<Column>,
    /// Unique Pupil Number; validated by its check letter, never sent.
    #[serde(default)]
    pub upn: Option<Column>,
}

/// A source column, by header name, optionally with a code map and a code
/// list its values must be in.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Column {
    Name(String),
    Coded {
        column: String,
        /// Source code -> value sent.
        #[serde(default)]
        codes: BTreeMap<String, String>,
        /// A code list (of the format's collection year) the value must be
        /// in; a value outside it is dropped with a warning.
        #[serde(default)]
        code_list: Option<String>,
    },
}

impl Column {
    pub fn header(&self) -> &str {
        match self {
            Self::Name(name) | Self::Coded { column: name, .. } => name,
        }
    }

    pub fn codes(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            Self::Name(_) => None,
            Self::Coded { codes, .. } if codes.is_empty() => None,
            Self::Coded { codes, .. } => Some(codes),
        }
    }

    pub fn code_list(&self) -> Option<&str> {
        match self {
            Self::Name(_) => None,
            Self::Coded { code_list, .. } => code_list.as_deref(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DateColumn {
    /// The column's header.
    pub column: String,
    pub format: DateFormat,
}

/// The date of birth's column, and what an impossible or future date does.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BirthDateColumn {
    /// The column's header.
    pub column: String,
    pub format: DateFormat,
    #[serde(default)]
    pub if_invalid: IfInvalid,
}

/// What a value that fails validation does to its row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IfInvalid {
    /// The row is quarantined (reported, not sent).
    #[default]
    Quarantine,
    /// The value is dropped with a warning and the row is sent without it
    /// (it can still link on the other fields).
    Drop,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FullName {
    pub column: String,
    pub order: NameOrder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NameOrder {
    /// `SMITH, Jane`
    SurnameCommaForename,
    /// `Jane Smith` (the last word is the surname)
    ForenameSurname,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventMapping {
    /// Event type, e.g. `referral`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The column holding the event's date, or `collection_end` for a table
    /// whose facts describe the whole collection year (SSDA903 OC2, OC3).
    pub date: EventDate,
    /// An empty date means the event has not happened (an open episode's
    /// end), not a gap in the data: no warning.
    #[serde(default)]
    pub optional: bool,
    /// Records the event only on rows whose column holds one of the values
    /// (an encounter is an A&E attendance when its class is `EMER`).
    #[serde(default)]
    pub when: Option<When>,
    /// Columns sent as the event's attributes, by attribute name.
    #[serde(default)]
    pub attributes: BTreeMap<String, Column>,
}

/// A condition on a column: its value (ignoring case) is one of `is`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct When {
    pub column: String,
    pub is: Vec<String>,
}

/// Where an event's date comes from.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EventDate {
    Column(DateColumn),
    Fixed(FixedDate),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FixedDate {
    /// The last day of the return's collection year.
    CollectionEnd,
}

impl EventDate {
    fn column(&self) -> Option<&DateColumn> {
        match self {
            Self::Column(c) => Some(c),
            Self::Fixed(_) => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("cannot read mapping file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mapping file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// The file's first line lacks a column the mapping needs. Only the
    /// header cells that the mapping itself names are listed: a first line
    /// that is not a header would be a child's data.
    #[error(
        "mapping file {mapping} names column {column:?} (for {field}), but the first line of {data} (its header row) has no such column; {found}"
    )]
    MissingColumn {
        mapping: PathBuf,
        data: PathBuf,
        field: String,
        column: String,
        found: String,
    },
}

impl Mapping {
    pub fn load(path: &Path) -> Result<Self, MappingError> {
        let text = std::fs::read_to_string(path).map_err(|source| MappingError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mapping: Self = serde_saphyr::from_str(&text).map_err(|e| MappingError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        mapping.check(path)?;
        Ok(mapping)
    }

    /// Which of the mapping's columns `headers` holds, for an error: the
    /// other cells are counted, never shown (a first line that is not a
    /// header row is a child's data).
    fn found_columns(&self, headers: &[String]) -> String {
        let named = self.columns();
        let found: Vec<String> = headers
            .iter()
            .filter_map(|h| {
                named
                    .iter()
                    .find(|n| n.trim().eq_ignore_ascii_case(h.trim()))
                    .map(|n| format!("{n:?}"))
            })
            .collect();
        let others = headers.len() - found.len();
        if found.is_empty() {
            format!(
                "none of the columns the mapping names is there (its {others} fields are not shown: they may be \
                 data): the file must start with its header row"
            )
        } else {
            format!(
                "of the mapping's columns it has {} ({others} other fields not shown)",
                found.join(", ")
            )
        }
    }

    /// Every column the mapping reads, each once, in the order named.
    pub fn columns(&self) -> Vec<&str> {
        let f = &self.fields;
        let mut columns: Vec<&str> = vec![f.local_id.header()];
        columns.extend(
            [
                &f.nhs_number,
                &f.given_name,
                &f.family_name,
                &f.sex,
                &f.postcode,
                &f.upn,
            ]
            .into_iter()
            .flatten()
            .map(Column::header),
        );
        columns.extend(f.full_name.iter().map(|n| n.column.as_str()));
        columns.extend(f.date_of_birth.iter().map(|d| d.column.as_str()));
        columns.extend(self.attributes.values().map(Column::header));
        for event in &self.events {
            columns.extend(event.date.column().map(|c| c.column.as_str()));
            columns.extend(event.when.iter().map(|w| w.column.as_str()));
            columns.extend(event.attributes.values().map(Column::header));
        }
        let mut seen = BTreeSet::new();
        columns.retain(|c| seen.insert(*c));
        columns
    }

    /// Checks names and combinations serde cannot; `path` names the file in
    /// errors.
    pub fn check(&self, path: &Path) -> Result<(), MappingError> {
        let invalid = |message: String| MappingError::Invalid {
            path: path.to_owned(),
            message,
        };
        if !is_name(&self.dataset) {
            return Err(invalid("dataset must be 1-64 of a-z, 0-9 and _".to_owned()));
        }
        for name in self
            .attributes
            .keys()
            .chain(self.events.iter().flat_map(|e| e.attributes.keys()))
            .chain(self.events.iter().map(|e| &e.event_type))
        {
            if !is_name(name) || RESERVED.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "{name:?} is not a usable attribute or event name (a-z, 0-9, _; not one of {RESERVED:?})"
                )));
            }
        }
        if self.fields.full_name.is_some()
            && (self.fields.given_name.is_some() || self.fields.family_name.is_some())
        {
            return Err(invalid(
                "fields: use either full_name or given_name/family_name, not both".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Attribute names the agent itself produces.
const RESERVED: &[&str] = &["sex", "birth_month", "postcode_district"];

fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A mapping bound to one file's header: column positions instead of names.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub local_id: usize,
    pub nhs_number: Option<usize>,
    pub given_name: Option<usize>,
    pub family_name: Option<usize>,
    pub full_name: Option<(usize, NameOrder)>,
    pub date_of_birth: Option<(usize, DateFormat, IfInvalid)>,
    pub sex: Option<(usize, BTreeMap<String, String>)>,
    pub postcode: Option<usize>,
    pub upn: Option<usize>,
    pub attributes: Vec<ResolvedAttribute>,
    pub events: Vec<ResolvedEvent>,
    pub date_order: Vec<ResolvedDateOrder>,
    pub collection: Option<Collection>,
    pub person: Option<PersonRef>,
}

#[derive(Debug, Clone)]
pub struct ResolvedAttribute {
    pub name: String,
    pub index: usize,
    /// Upper-cased source code -> value, when the mapping gives a code map.
    pub codes: Option<BTreeMap<String, String>>,
    /// The code list the value must be in: its name and upper-cased codes.
    pub code_list: Option<(String, Arc<BTreeSet<String>>)>,
}

/// An event's date: a column, or a fixed date.
#[derive(Debug, Clone, Copy)]
pub enum ResolvedDate {
    Column(usize, DateFormat),
    Fixed(time::Date),
}

/// A [`DateOrder`] bound to column positions and date formats.
#[derive(Debug, Clone)]
pub struct ResolvedDateOrder {
    pub earlier: (usize, DateFormat, String),
    pub later: (usize, DateFormat, String),
}

#[derive(Debug, Clone)]
pub struct ResolvedEvent {
    pub event_type: String,
    pub date: ResolvedDate,
    pub optional: bool,
    /// The column and the upper-cased values that record the event.
    pub when: Option<(usize, BTreeSet<String>)>,
    pub attributes: Vec<ResolvedAttribute>,
}

impl Mapping {
    /// Binds the mapping to `headers` (the file's first row). Header names
    /// match exactly after trimming, or else ignoring case. A column listed
    /// in `optional_columns` may be missing; what it maps is then left out.
    pub fn resolve(
        &self,
        headers: &[String],
        mapping_path: &Path,
        data_path: &Path,
    ) -> Result<Resolved, MappingError> {
        let position = |column: &str| {
            let wanted = column.trim();
            headers.iter().position(|h| h.trim() == wanted).or_else(|| {
                headers
                    .iter()
                    .position(|h| h.trim().eq_ignore_ascii_case(wanted))
            })
        };
        // Ok(None): an optional column the file lacks.
        let lookup = |field: &str, column: &str| -> Result<Option<usize>, MappingError> {
            match position(column) {
                Some(index) => Ok(Some(index)),
                None if self.optional_columns.iter().any(|c| c == column) => Ok(None),
                None => Err(MappingError::MissingColumn {
                    mapping: mapping_path.to_owned(),
                    data: data_path.to_owned(),
                    field: field.to_owned(),
                    column: column.to_owned(),
                    found: self.found_columns(headers),
                }),
            }
        };
        let invalid = |message: String| MappingError::Invalid {
            path: mapping_path.to_owned(),
            message,
        };
        let optional = |field: &str, column: &Option<Column>| {
            column
                .as_ref()
                .map(|c| lookup(field, c.header()))
                .transpose()
                .map(Option::flatten)
        };
        let code_list = |column: &Column| {
            column
                .code_list()
                .map(|name| {
                    let list = self.code_lists.get(name).ok_or_else(|| {
                        invalid(format!(
                            "code list {name:?} is not among this collection's code lists"
                        ))
                    })?;
                    Ok((
                        name.to_owned(),
                        Arc::new(list.keys().map(|k| k.trim().to_uppercase()).collect()),
                    ))
                })
                .transpose()
        };
        let attributes = |prefix: &str, map: &BTreeMap<String, Column>| {
            let mut resolved = Vec::new();
            for (name, column) in map {
                if let Some(index) = lookup(&format!("{prefix}{name}"), column.header())? {
                    resolved.push(ResolvedAttribute {
                        name: name.clone(),
                        index,
                        codes: column.codes().map(upper_keys),
                        code_list: code_list(column)?,
                    });
                }
            }
            Ok::<_, MappingError>(resolved)
        };
        let f = &self.fields;
        let local_id = lookup("local_id", f.local_id.header())?
            .ok_or_else(|| invalid("local_id's column cannot be optional".to_owned()))?;
        let mut events = Vec::new();
        for e in &self.events {
            let date = match &e.date {
                EventDate::Column(c) => lookup(&format!("{} date", e.event_type), &c.column)?
                    .map(|index| ResolvedDate::Column(index, c.format)),
                EventDate::Fixed(FixedDate::CollectionEnd) => {
                    let collection = self.collection.as_ref().ok_or_else(|| {
                        invalid(format!(
                            "{} events are dated collection_end, but the source has no collection year",
                            e.event_type
                        ))
                    })?;
                    Some(ResolvedDate::Fixed(collection.ends))
                }
            };
            let when = match &e.when {
                Some(w) => match lookup(&format!("{} when", e.event_type), &w.column)? {
                    Some(index) => Some((
                        index,
                        w.is.iter().map(|v| v.trim().to_uppercase()).collect(),
                    )),
                    // The column is optional and absent: the event cannot be told.
                    None => continue,
                },
                None => None,
            };
            if let Some(date) = date {
                events.push(ResolvedEvent {
                    event_type: e.event_type.clone(),
                    date,
                    optional: e.optional,
                    when,
                    attributes: attributes(&format!("{} ", e.event_type), &e.attributes)?,
                });
            }
        }
        // A date column's format comes from the event (or birth date) it dates.
        let date_column =
            |column: &str| -> Result<Option<(usize, DateFormat, String)>, MappingError> {
                let format = self
                .events
                .iter()
                .filter_map(|e| e.date.column())
                .find(|c| c.column == column)
                .map(|c| c.format)
                .or_else(|| {
                    f.date_of_birth
                        .as_ref()
                        .filter(|d| d.column == column)
                        .map(|d| d.format)
                })
                .ok_or_else(|| {
                    invalid(format!(
                        "date_order names {column:?}, which is not an event's or the birth date's column"
                    ))
                })?;
                Ok(lookup("date_order", column)?.map(|index| (index, format, column.to_owned())))
            };
        let mut date_order = Vec::new();
        for order in &self.date_order {
            if let (Some(earlier), Some(later)) =
                (date_column(&order.earlier)?, date_column(&order.later)?)
            {
                date_order.push(ResolvedDateOrder { earlier, later });
            }
        }
        Ok(Resolved {
            local_id,
            nhs_number: optional("nhs_number", &f.nhs_number)?,
            given_name: optional("given_name", &f.given_name)?,
            family_name: optional("family_name", &f.family_name)?,
            full_name: match &f.full_name {
                Some(n) => lookup("full_name", &n.column)?.map(|i| (i, n.order)),
                None => None,
            },
            date_of_birth: match &f.date_of_birth {
                Some(d) => lookup("date_of_birth", &d.column)?.map(|i| (i, d.format, d.if_invalid)),
                None => None,
            },
            sex: match &f.sex {
                Some(c) => lookup("sex", c.header())?.map(|i| {
                    let mut codes = default_sex_codes();
                    codes.extend(c.codes().map(upper_keys).unwrap_or_default());
                    (i, codes)
                }),
                None => None,
            },
            postcode: optional("postcode", &f.postcode)?,
            upn: optional("upn", &f.upn)?,
            attributes: attributes("attribute ", &self.attributes)?,
            events,
            date_order,
            collection: self.collection.clone(),
            person: self.person.clone(),
        })
    }
}

/// Canonical sex values.
pub const SEX_VALUES: &[&str] = &["male", "female", "indeterminate", "unknown"];

/// NHS Data Dictionary person stated gender codes and common spellings.
fn default_sex_codes() -> BTreeMap<String, String> {
    [
        ("1", "male"),
        ("M", "male"),
        ("MALE", "male"),
        ("2", "female"),
        ("F", "female"),
        ("FEMALE", "female"),
        ("9", "indeterminate"),
        ("I", "indeterminate"),
        ("INDETERMINATE", "indeterminate"),
        ("0", "unknown"),
        ("U", "unknown"),
        ("X", "unknown"),
        ("UNKNOWN", "unknown"),
        ("NOT KNOWN", "unknown"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn upper_keys(codes: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    codes
        .iter()
        .map(|(k, v)| (k.trim().to_uppercase(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("map.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn resolves_columns_with_spaces_and_any_case() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "dataset: salt\nfields:\n  local_id: Patient ID\n  date_of_birth: { column: Date of Birth, format: yyyymmdd }\n  sex: { column: Sex, codes: { w: female } }\nevents:\n  - type: contact\n    date: { column: contact date, format: iso }\n",
        );
        let mapping = Mapping::load(&path).unwrap();
        let headers: Vec<String> = ["Sex", " Patient ID ", "Date of Birth", "Contact Date"]
            .map(String::from)
            .to_vec();
        let resolved = mapping
            .resolve(&headers, &path, Path::new("x.csv"))
            .unwrap();
        assert_eq!(resolved.local_id, 1);
        assert_eq!(resolved.date_of_birth.unwrap().0, 2);
        let (index, codes) = resolved.sex.unwrap();
        assert_eq!(index, 0);
        assert_eq!(codes["W"], "female");
        assert_eq!(codes["M"], "male");
        assert!(matches!(
            resolved.events[0].date,
            ResolvedDate::Column(3, _)
        ));
    }

    #[test]
    fn a_missing_column_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "dataset: salt\nfields:\n  local_id: Patient ID\n  nhs_number: NHS No\n",
        );
        let mapping = Mapping::load(&path).unwrap();
        let err = mapping
            .resolve(&["Patient ID".to_owned()], &path, Path::new("x.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"NHS No\""), "{err}");
        assert!(err.contains("nhs_number"), "{err}");
        assert!(err.contains("x.csv"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "dataset: salt\nfields:\n  local_id: a\n  nhs: b\n",
        );
        assert!(
            Mapping::load(&path)
                .unwrap_err()
                .to_string()
                .contains("nhs")
        );
        let path = write(dir.path(), "dataset: Salt Data\nfields:\n  local_id: a\n");
        assert!(
            Mapping::load(&path)
                .unwrap_err()
                .to_string()
                .contains("dataset")
        );
        let path = write(
            dir.path(),
            "dataset: s\nfields:\n  local_id: a\nattributes:\n  sex: b\n",
        );
        assert!(Mapping::load(&path).is_err());
    }
}
