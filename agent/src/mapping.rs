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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

use crate::validate::DateFormat;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Dataset name at the gateway (a-z, 0-9, _).
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
}

/// A source column, by header name, optionally with a code map.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Column {
    Name(String),
    Coded {
        column: String,
        #[serde(default)]
        codes: BTreeMap<String, String>,
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
            Self::Coded { codes, .. } => Some(codes),
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
    /// The column holding the event's date.
    pub date: DateColumn,
    /// Columns sent as the event's attributes, by attribute name.
    #[serde(default)]
    pub attributes: BTreeMap<String, Column>,
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
    #[error(
        "mapping file {mapping} names column {column:?} (for {field}), but {data} has no such column; its columns are: {available}"
    )]
    MissingColumn {
        mapping: PathBuf,
        data: PathBuf,
        field: String,
        column: String,
        available: String,
    },
}

impl Mapping {
    pub fn load(path: &Path) -> Result<Self, MappingError> {
        let text = std::fs::read_to_string(path).map_err(|source| MappingError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |message: String| MappingError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mapping: Self = serde_saphyr::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if !is_name(&mapping.dataset) {
            return Err(invalid("dataset must be 1-64 of a-z, 0-9 and _".to_owned()));
        }
        for name in mapping
            .attributes
            .keys()
            .chain(mapping.events.iter().flat_map(|e| e.attributes.keys()))
            .chain(mapping.events.iter().map(|e| &e.event_type))
        {
            if !is_name(name) || RESERVED.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "{name:?} is not a usable attribute or event name (a-z, 0-9, _; not one of {RESERVED:?})"
                )));
            }
        }
        if mapping.fields.full_name.is_some()
            && (mapping.fields.given_name.is_some() || mapping.fields.family_name.is_some())
        {
            return Err(invalid(
                "fields: use either full_name or given_name/family_name, not both".to_owned(),
            ));
        }
        Ok(mapping)
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
    pub attributes: Vec<ResolvedAttribute>,
    pub events: Vec<ResolvedEvent>,
}

#[derive(Debug, Clone)]
pub struct ResolvedAttribute {
    pub name: String,
    pub index: usize,
    /// Upper-cased source code -> value, when the mapping gives a code map.
    pub codes: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone)]
pub struct ResolvedEvent {
    pub event_type: String,
    pub date: (usize, DateFormat),
    pub attributes: Vec<ResolvedAttribute>,
}

impl Mapping {
    /// Binds the mapping to `headers` (the file's first row). Header names
    /// match exactly after trimming, or else ignoring case.
    pub fn resolve(
        &self,
        headers: &[String],
        mapping_path: &Path,
        data_path: &Path,
    ) -> Result<Resolved, MappingError> {
        let find = |field: &str, column: &str| -> Result<usize, MappingError> {
            let wanted = column.trim();
            headers
                .iter()
                .position(|h| h.trim() == wanted)
                .or_else(|| {
                    headers
                        .iter()
                        .position(|h| h.trim().eq_ignore_ascii_case(wanted))
                })
                .ok_or_else(|| MappingError::MissingColumn {
                    mapping: mapping_path.to_owned(),
                    data: data_path.to_owned(),
                    field: field.to_owned(),
                    column: column.to_owned(),
                    available: headers
                        .iter()
                        .map(|h| format!("{:?}", h.trim()))
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        };
        let optional = |field: &str, column: &Option<Column>| {
            column.as_ref().map(|c| find(field, c.header())).transpose()
        };
        let attributes = |prefix: &str, map: &BTreeMap<String, Column>| {
            map.iter()
                .map(|(name, column)| {
                    Ok(ResolvedAttribute {
                        name: name.clone(),
                        index: find(&format!("{prefix}{name}"), column.header())?,
                        codes: column.codes().map(upper_keys),
                    })
                })
                .collect::<Result<Vec<_>, MappingError>>()
        };
        let f = &self.fields;
        Ok(Resolved {
            local_id: find("local_id", f.local_id.header())?,
            nhs_number: optional("nhs_number", &f.nhs_number)?,
            given_name: optional("given_name", &f.given_name)?,
            family_name: optional("family_name", &f.family_name)?,
            full_name: f
                .full_name
                .as_ref()
                .map(|n| Ok::<_, MappingError>((find("full_name", &n.column)?, n.order)))
                .transpose()?,
            date_of_birth: f
                .date_of_birth
                .as_ref()
                .map(|d| {
                    Ok::<_, MappingError>((
                        find("date_of_birth", &d.column)?,
                        d.format,
                        d.if_invalid,
                    ))
                })
                .transpose()?,
            sex: f
                .sex
                .as_ref()
                .map(|c| {
                    let mut codes = default_sex_codes();
                    codes.extend(c.codes().map(upper_keys).unwrap_or_default());
                    Ok::<_, MappingError>((find("sex", c.header())?, codes))
                })
                .transpose()?,
            postcode: optional("postcode", &f.postcode)?,
            attributes: attributes("attribute ", &self.attributes)?,
            events: self
                .events
                .iter()
                .map(|e| {
                    Ok(ResolvedEvent {
                        event_type: e.event_type.clone(),
                        date: (
                            find(&format!("{} date", e.event_type), &e.date.column)?,
                            e.date.format,
                        ),
                        attributes: attributes(&format!("{} ", e.event_type), &e.attributes)?,
                    })
                })
                .collect::<Result<Vec<_>, MappingError>>()?,
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
        assert_eq!(resolved.events[0].date.0, 3);
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
