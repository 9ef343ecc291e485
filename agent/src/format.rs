//! National formats: SSDA903, the CIN census, Ofsted Annex A, MHSDS- and
//! CSDS-style tables and FHIR bulk exports, read as agencies produce them.
//!
//! A format is data, not code: `agent/formats/<format>.yaml` lists its tables
//! (a file each, or for the CIN census an XML element each), which table says
//! who the person is, how other tables name their person, and a mapping per
//! table in the same language as a CSV mapping file. Code lists live in
//! `agent/formats/codes/<format>/<year>.yaml`, so next year's lists are a
//! data change (a source may also point `code_lists` at a newer file).
//!
//! [`open`] turns a configured source into [`Part`]s, one per file (or per
//! XML file), each a [`Source`] whose rows are canonical rows. For formats
//! whose event tables name their person only by id, it first reads the
//! identity table (and any table other tables point through) into a
//! [`PersonIndex`], so that every event row carries its person's local id
//! and NHS number.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use time::{Date, Month};

use crate::config::{NationalFormat, SourceConfig};
use crate::mapping::{CodeLists, Collection, Column, Fields, Mapping};
use crate::person_index::{By, PersonIndex, PersonRef};
use crate::row::RowOutcome;
use crate::source::csv::CsvSource;
use crate::source::ndjson::NdjsonSource;
use crate::source::sql::SqlSource;
use crate::source::xml::{XmlSource, XmlTable};
use crate::source::{ReadContext, Source, SourceError};

/// One file of a source, read on its own (with its own checkpoint and
/// quarantine report).
pub struct Part {
    /// The file read.
    pub path: PathBuf,
    /// The dataset its records go to.
    pub dataset: String,
    /// Which of its source's tables it is, by the format's own name for it
    /// (`Episodes`, or the format for an XML file holding several), or empty
    /// for a source of one table: never the file's name, so a file sent
    /// again under another name is recognised, while two tables of one
    /// dataset that yield identical rows stay apart.
    pub table: String,
    pub source: Box<dyn Source>,
}

/// A format's definition (`agent/formats/<format>.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub format: String,
    pub title: String,
    pub reader: ReaderKind,
    /// Returns made per collection year (`year` is then required).
    #[serde(default)]
    pub yearly: bool,
    /// XML: the element holding one person (e.g. `Child`).
    #[serde(default)]
    pub record: Option<String>,
    /// XML: an element outside the records naming the collection year; a
    /// file of another year is refused.
    #[serde(default)]
    pub year_element: Option<String>,
    pub tables: Vec<Table>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReaderKind {
    Csv,
    Xml,
    Ndjson,
}

/// One table of a format.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    pub table: String,
    /// CSV and NDJSON: the file's standard name (matched ignoring case).
    #[serde(default)]
    pub file: Option<String>,
    /// A return may leave this table out.
    #[serde(default)]
    pub optional: bool,
    #[serde(default)]
    pub person: PersonLink,
    /// A column whose values other tables use to name this row's person
    /// (an MHSDS referral's `ServiceRequestId`).
    #[serde(default)]
    pub key: Option<String>,
    /// NDJSON: the table's columns, each a JSON path (`name[0].given[0]`,
    /// `identifier[system=URI].value`; a reference `Patient/ID` gives `ID`).
    /// XML tables need none: the mapping's columns are leaf element names.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    pub mapping: Mapping,
}

/// How a table's rows find their person.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersonLink {
    /// The table says who the person is (every source has one, first).
    Identity,
    /// The row's local id names a person of the identity table.
    #[default]
    LocalId,
    /// The row's local-id column holds a key of the named table.
    Via(String),
}

const DEFINITIONS: &[(&str, &str)] = &[
    ("ssda903", include_str!("../formats/ssda903.yaml")),
    ("cin_census", include_str!("../formats/cin_census.yaml")),
    ("annex_a", include_str!("../formats/annex_a.yaml")),
    ("mhsds", include_str!("../formats/mhsds.yaml")),
    ("csds", include_str!("../formats/csds.yaml")),
    ("fhir", include_str!("../formats/fhir.yaml")),
];

/// Built-in code lists: (format, year or `current`, the file's text).
macro_rules! code_lists {
    ($(($format:literal, $year:literal)),* $(,)?) => {
        &[$(($format, $year, include_str!(concat!("../formats/codes/", $format, "/", $year, ".yaml")))),*]
    };
}

const CODE_LISTS: &[(&str, &str, &str)] = code_lists![
    ("ssda903", "2025"),
    ("ssda903", "2026"),
    ("ssda903", "2027"),
    ("cin_census", "2025"),
    ("cin_census", "2026"),
    ("cin_census", "2027"),
    ("annex_a", "current"),
    ("mhsds", "current"),
    ("csds", "current"),
    ("fhir", "current"),
];

/// A code-list file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeListFile {
    /// The year whose lists this one starts from; lists named here replace
    /// that year's.
    #[serde(default)]
    extends: Option<String>,
    #[serde(default)]
    lists: CodeLists,
}

/// The built-in definition of `format`.
pub fn definition(format: &str) -> Result<Definition, String> {
    let (_, text) = DEFINITIONS
        .iter()
        .find(|(name, _)| *name == format)
        .ok_or_else(|| format!("no built-in format {format:?}"))?;
    let definition: Definition =
        serde_saphyr::from_str(text).map_err(|e| format!("built-in format {format}: {e}"))?;
    Ok(definition)
}

/// The built-in code-list file for `year` of `format`, or (a year whose lists
/// are not built in yet) the latest earlier year's: (the year used, text).
fn built_in_for(format: &str, year: &str) -> Result<(String, &'static str), String> {
    let years: Vec<(&str, &'static str)> = CODE_LISTS
        .iter()
        .filter(|(f, _, _)| *f == format)
        .map(|(_, y, text)| (*y, *text))
        .collect();
    if let Some((y, text)) = years.iter().find(|(y, _)| *y == year) {
        return Ok(((*y).to_owned(), text));
    }
    let earlier = years
        .iter()
        .filter(|(y, _)| y.parse::<i32>().ok() < year.parse::<i32>().ok())
        .max_by_key(|(y, _)| *y);
    earlier.map(|(y, text)| ((*y).to_owned(), *text)).ok_or_else(|| {
        let known: Vec<&str> = years.iter().map(|(y, _)| *y).collect();
        format!(
            "no built-in {format} code lists for {year} or an earlier year (built in: {}); set code_lists to that year's file",
            known.join(", ")
        )
    })
}

/// The code lists for `format` in `year` (`None`: the format is not yearly),
/// from `file` when given, else built in (a year not built in yet uses the
/// latest earlier year's, with a warning).
pub fn code_lists(
    format: &str,
    year: Option<i32>,
    file: Option<&Path>,
) -> Result<CodeLists, String> {
    let year = year.map_or_else(|| "current".to_owned(), |y| y.to_string());
    let parse = |text: &str, name: &str| {
        serde_saphyr::from_str::<CodeListFile>(text).map_err(|e| format!("code lists {name}: {e}"))
    };
    let built_in = |year: &str| {
        CODE_LISTS
            .iter()
            .find(|(f, y, _)| *f == format && *y == year)
            .map(|(_, _, text)| *text)
    };
    let mut file = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read code lists {}: {e}", path.display()))?;
            parse(&text, &path.display().to_string())?
        }
        None => {
            let (found, text) = built_in_for(format, &year)?;
            if found != year {
                tracing::warn!(
                    %format,
                    %year,
                    using = %found,
                    "no built-in code lists for this collection year: using the latest earlier year's; set code_lists to the year's file once published"
                );
            }
            parse(text, &format!("{format}/{found}"))?
        }
    };
    let mut lists = CodeLists::new();
    let mut seen = vec![year.clone()];
    while let Some(base) = file.extends.take() {
        if seen.contains(&base) {
            return Err(format!("{format} code lists: {base} extends itself"));
        }
        seen.push(base.clone());
        let text = built_in(&base)
            .ok_or_else(|| format!("{format} code lists extend {base}, which is not built in"))?;
        let base_file = parse(text, &format!("{format}/{base}"))?;
        for (name, list) in std::mem::take(&mut file.lists) {
            lists.entry(name).or_insert(list);
        }
        file = base_file;
    }
    for (name, list) in file.lists {
        lists.entry(name).or_insert(list);
    }
    Ok(lists)
}

/// The parts of a configured source, ready to read.
pub fn open(
    source: &SourceConfig,
    context: impl Into<ReadContext>,
) -> Result<Vec<Part>, SourceError> {
    let context = context.into();
    let Some(national) = source.national() else {
        return Ok(vec![match source {
            SourceConfig::Csv { path, mapping, .. } => {
                let map = Mapping::load(mapping)?;
                Part {
                    path: path.clone(),
                    dataset: map.dataset.clone(),
                    table: String::new(),
                    source: Box::new(CsvSource::open(path, &map, mapping, context)?),
                }
            }
            SourceConfig::Sql(table) => {
                let source = SqlSource::open(table, context)?;
                Part {
                    path: PathBuf::from(format!(
                        "sql-{}",
                        table.table.as_deref().unwrap_or("query")
                    )),
                    dataset: Mapping::load(&table.mapping)?.dataset,
                    table: String::new(),
                    source: Box::new(source),
                }
            }
            _ => unreachable!("the other kinds are national formats"),
        }]);
    };
    let format_error = |detail: String| SourceError::Format {
        path: national.path.clone(),
        detail,
    };
    let definition = definition(source.kind()).map_err(format_error)?;
    let collection = match (definition.yearly, national.year) {
        (true, Some(year)) => Some(Collection {
            label: format!("{}-{:02}", year - 1, year.rem_euclid(100)),
            ends: Date::from_calendar_date(year, Month::March, 31)
                .map_err(|e| format_error(format!("year {year}: {e}")))?,
        }),
        (true, None) => {
            return Err(format_error(format!(
                "{} needs the collection year: set year (2025 for 2024-25)",
                definition.title
            )));
        }
        (false, Some(_)) => {
            return Err(format_error(format!(
                "{} is not a yearly return: remove year",
                definition.title
            )));
        }
        (false, None) => None,
    };
    let lists = Arc::new(
        code_lists(
            &definition.format,
            national.year.filter(|_| definition.yearly),
            national.code_lists.as_deref(),
        )
        .map_err(format_error)?,
    );
    let opening = Opening {
        definition: &definition,
        national,
        lists,
        collection,
        context,
    };
    match definition.reader {
        ReaderKind::Xml => opening.xml(),
        ReaderKind::Csv | ReaderKind::Ndjson => opening.tables(),
    }
}

/// What opening one national-format source needs.
struct Opening<'a> {
    definition: &'a Definition,
    national: &'a NationalFormat,
    lists: Arc<CodeLists>,
    collection: Option<Collection>,
    context: ReadContext,
}

impl Opening<'_> {
    /// The table's mapping, completed for this source.
    fn mapping(&self, table: &Table, person: Option<PersonRef>) -> Mapping {
        let mut mapping = table.mapping.clone();
        mapping.dataset = self.national.dataset.clone();
        mapping.code_lists = self.lists.clone();
        mapping.collection = self.collection.clone();
        mapping.person = person;
        mapping
    }

    /// Names the built-in mapping in errors.
    fn mapping_label(&self, table: &str) -> PathBuf {
        PathBuf::from(format!(
            "the built-in {} format (table {table})",
            self.definition.format
        ))
    }

    fn check(&self, mapping: &Mapping, table: &str) -> Result<(), SourceError> {
        Ok(mapping.check(&self.mapping_label(table))?)
    }

    /// The file of `table` in the source's directory, matched ignoring case.
    fn file(&self, table: &Table) -> Result<Option<PathBuf>, SourceError> {
        let dir = &self.national.path;
        let name = self
            .national
            .files
            .get(&table.table)
            .or(table.file.as_ref())
            .ok_or_else(|| SourceError::Format {
                path: dir.clone(),
                detail: format!("table {} has no file name", table.table),
            })?;
        let entries = std::fs::read_dir(dir).map_err(|source| SourceError::Open {
            path: dir.clone(),
            source,
        })?;
        let found = entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().eq_ignore_ascii_case(name))
        });
        match found {
            Some(path) => Ok(Some(path)),
            None if table.optional => {
                tracing::info!(format = %self.definition.format, table = %table.table, "optional table not present");
                Ok(None)
            }
            None => Err(SourceError::Format {
                path: dir.clone(),
                detail: format!(
                    "no {name} (the {} table of {}); use files to name it if it is called something else",
                    table.table, self.definition.title
                ),
            }),
        }
    }

    /// A source over one table file.
    fn table_source(
        &self,
        table: &Table,
        path: &Path,
        mapping: &Mapping,
    ) -> Result<Box<dyn Source>, SourceError> {
        self.check(mapping, &table.table)?;
        let label = self.mapping_label(&table.table);
        Ok(match self.definition.reader {
            ReaderKind::Csv => Box::new(CsvSource::open(path, mapping, &label, self.context)?),
            ReaderKind::Ndjson => Box::new(NdjsonSource::open(
                path,
                &table.table,
                &table.columns,
                mapping,
                &label,
                self.context,
            )?),
            ReaderKind::Xml => unreachable!("XML sources are opened whole"),
        })
    }

    /// CSV and NDJSON formats: a part per table file, after indexing people.
    fn tables(&self) -> Result<Vec<Part>, SourceError> {
        let files = self
            .definition
            .tables
            .iter()
            .map(|t| Ok((t, self.file(t)?)))
            .collect::<Result<Vec<_>, SourceError>>()?;
        let identity = files
            .iter()
            .find(|(t, _)| t.person == PersonLink::Identity)
            .ok_or_else(|| SourceError::Format {
                path: self.national.path.clone(),
                detail: format!("{} has no identity table", self.definition.format),
            })?;
        let Some(identity_path) = &identity.1 else {
            return Err(SourceError::Format {
                path: self.national.path.clone(),
                detail: "the identity table cannot be optional".to_owned(),
            });
        };
        // Who the people are, then which keys name them.
        let mut index = PersonIndex::default();
        let needs_index = files.iter().any(|(t, _)| t.person != PersonLink::Identity);
        if needs_index {
            let mapping = self.mapping(identity.0, None);
            let mut reader = self.table_source(identity.0, identity_path, &mapping)?;
            while let Some(row) = reader.next_row() {
                if let RowOutcome::Valid { row, .. } = row?.outcome {
                    index.add_person(&row.local_id, row.nhs_number.as_deref());
                }
            }
        }
        for (table, path) in &files {
            if let (Some(key), Some(path)) = (&table.key, path) {
                self.index_keys(table, key, path, &mut index)?;
            }
        }
        tracing::info!(format = %self.definition.format, people = index.people(), "indexed the identity table");
        let index = Arc::new(index);
        let identity_table = identity.0.table.clone();
        let mut parts = Vec::new();
        for (table, path) in files {
            let Some(path) = path else { continue };
            let by = match &table.person {
                PersonLink::Identity => None,
                PersonLink::LocalId => Some(By::LocalId),
                PersonLink::Via(other) => Some(By::Key {
                    table: other.clone(),
                }),
            };
            let person = by.map(|by| PersonRef {
                index: index.clone(),
                by,
                identity_table: identity_table.clone(),
            });
            let mapping = self.mapping(table, person);
            parts.push(Part {
                source: self.table_source(table, &path, &mapping)?,
                path,
                dataset: self.national.dataset.clone(),
                table: table.table.clone(),
            });
        }
        Ok(parts)
    }

    /// Records, for each row of `table`, that its `key` names its person.
    fn index_keys(
        &self,
        table: &Table,
        key: &str,
        path: &Path,
        index: &mut PersonIndex,
    ) -> Result<(), SourceError> {
        const OWNER: &str = "owner";
        let mut mapping = self.mapping(table, None);
        mapping.fields = Fields {
            local_id: Column::Name(key.to_owned()),
            nhs_number: None,
            given_name: None,
            family_name: None,
            full_name: None,
            date_of_birth: None,
            sex: None,
            postcode: None,
            upn: None,
        };
        mapping.attributes = [(OWNER.to_owned(), table.mapping.fields.local_id.clone())].into();
        mapping.events.clear();
        mapping.date_order.clear();
        let mut reader = self.table_source(table, path, &mapping)?;
        while let Some(row) = reader.next_row() {
            if let RowOutcome::Valid { row, .. } = row?.outcome
                && let Some(owner) = row.attributes.get(OWNER)
            {
                index.add_key(&row.local_id, owner);
            }
        }
        Ok(())
    }

    /// The CIN census: one XML file, every table an element inside a record.
    fn xml(&self) -> Result<Vec<Part>, SourceError> {
        let record = self
            .definition
            .record
            .clone()
            .ok_or_else(|| SourceError::Format {
                path: self.national.path.clone(),
                detail: format!("format {} names no record element", self.definition.format),
            })?;
        let tables = self
            .definition
            .tables
            .iter()
            .map(|t| {
                let mapping = self.mapping(t, None);
                self.check(&mapping, &t.table)?;
                Ok(XmlTable {
                    element: t.table.clone(),
                    mapping,
                })
            })
            .collect::<Result<Vec<_>, SourceError>>()?;
        let year = self.definition.year_element.clone().zip(self.national.year);
        let path = &self.national.path;
        let source = XmlSource::open(
            path,
            &record,
            tables,
            year,
            &self.mapping_label(&record),
            self.context,
        )?;
        Ok(vec![Part {
            path: path.clone(),
            dataset: self.national.dataset.clone(),
            table: record,
            source: Box::new(source),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_format_and_code_list_parses() {
        for (name, _) in DEFINITIONS {
            let d = definition(name).unwrap();
            assert_eq!(&d.format, name);
            assert!(
                d.tables.iter().any(|t| t.person == PersonLink::Identity),
                "{name} has an identity table"
            );
            for table in &d.tables {
                let mut mapping = table.mapping.clone();
                mapping.dataset = "d".into();
                mapping.check(Path::new(name)).unwrap();
                for column in table.mapping.attributes.values().chain(
                    table
                        .mapping
                        .events
                        .iter()
                        .flat_map(|e| e.attributes.values()),
                ) {
                    if let Some(list) = column.code_list() {
                        let years: Vec<Option<i32>> = if d.yearly {
                            vec![Some(2025), Some(2026)]
                        } else {
                            vec![None]
                        };
                        for year in years {
                            let lists = code_lists(name, year, None).unwrap();
                            assert!(lists.contains_key(list), "{name} {year:?}: no list {list}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_later_year_uses_the_latest_lists_and_an_earlier_one_is_refused() {
        assert_eq!(
            code_lists("ssda903", Some(2031), None).unwrap(),
            code_lists("ssda903", Some(2027), None).unwrap()
        );
        let err = code_lists("ssda903", Some(2019), None).unwrap_err();
        assert!(err.contains("2025, 2026, 2027"), "{err}");
        assert!(err.contains("code_lists"), "{err}");
    }

    #[test]
    fn a_later_year_extends_an_earlier_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("2027.yaml");
        std::fs::write(&file, "extends: '2026'\nlists:\n  LS: { X9: New status }\n").unwrap();
        let lists = code_lists("ssda903", Some(2027), Some(&file)).unwrap();
        assert_eq!(lists["LS"].keys().collect::<Vec<_>>(), ["X9"]);
        assert!(
            lists["PLACE"].contains_key("U1"),
            "other lists carried forward"
        );
    }

    fn ssda903(dir: &Path, year: i32) -> SourceConfig {
        SourceConfig::Ssda903(NationalFormat {
            path: dir.to_owned(),
            dataset: "lac".to_owned(),
            year: Some(year),
            code_lists: None,
            files: BTreeMap::new(),
            snapshot: false,
        })
    }

    fn outcomes(parts: Vec<Part>) -> Vec<(String, u64, Result<String, String>)> {
        let mut out = Vec::new();
        for mut part in parts {
            let file = part
                .path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            while let Some(row) = part.source.next_row() {
                let row = row.unwrap();
                out.push((
                    file.clone(),
                    row.line,
                    match row.outcome {
                        RowOutcome::Valid { row, .. } => Ok(format!(
                            "{} {}",
                            row.local_id,
                            row.events
                                .iter()
                                .map(|e| e.event_type.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        )),
                        RowOutcome::Quarantined(p) => Err(p.to_string()),
                    },
                ));
            }
        }
        out
    }

    #[test]
    fn ssda903_rows_are_checked_against_the_year_the_order_of_dates_and_their_child() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("Header.CSV"),
            "CHILD,SEX,DOB,ETHNIC,UPN,MOTHER,MC_DOB\nC1,1,03/04/2015,WBRI,UN2,,\nC2,2,31/02/2014,XXXX,A123,,\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("episodes.csv"),
            "CHILD,DECOM,RNE,LS,CIN,PLACE,PLACE_PROVIDER,DEC,REC,REASON_PLACE_CHANGE,HOME_POST,PL_POST,URN\n\
             C1,01/05/2024,S,C2,N1,U1,PR1,01/09/2024,X1,CARPL,LS6,LS7,SC1\n\
             C1,01/09/2024,P,C2,N1,K2,PR4,,,,LS6,LS8,SC2\n\
             C1,01/09/2024,P,C2,N1,U1,PR1,01/08/2024,E13,,LS6,LS7,SC1\n\
             C1,01/06/2025,P,C2,N1,U1,PR1,,,,LS6,LS7,SC1\n\
             C9,01/05/2024,S,C2,N1,ZZ,PR1,,,,LS6,LS7,SC1\n",
        )
        .unwrap();
        let today = time::macros::date!(2026 - 01 - 01);
        let rows = outcomes(open(&ssda903(dir.path(), 2025), today).unwrap());
        let summary: Vec<_> = rows
            .iter()
            .map(|(f, l, o)| (f.as_str(), *l, o.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                ("Header.CSV", 2, Ok("C1 ".to_owned())),
                ("Header.CSV", 3, Err("date_of_birth: date does not exist".to_owned())),
                ("episodes.csv", 2, Ok("C1 lac_episode_start,lac_episode_end".to_owned())),
                ("episodes.csv", 3, Ok("C1 lac_episode_start".to_owned())),
                ("episodes.csv", 4, Err("DEC: is before DECOM".to_owned())),
                (
                    "episodes.csv",
                    5,
                    Err("lac_episode_start date: is after the end of the 2024-25 collection year (2025-03-31): is the file for another year?".to_owned())
                ),
                ("episodes.csv", 6, Err("local_id: names no person in Header".to_owned())),
            ]
        );

        // A required column missing: named, with the file and the format's table.
        std::fs::write(
            dir.path().join("episodes.csv"),
            "CHILD,RNE,LS,CIN,PLACE,DEC,REC\n",
        )
        .unwrap();
        let Err(err) = open(&ssda903(dir.path(), 2025), today) else {
            panic!("a missing column is refused")
        };
        let err = err.to_string();
        assert!(
            err.contains("\"DECOM\"") && err.contains("episodes.csv") && err.contains("Episodes"),
            "{err}"
        );

        // A missing table that is not optional, and a yearly return without its year.
        std::fs::remove_file(dir.path().join("episodes.csv")).unwrap();
        let Err(err) = open(&ssda903(dir.path(), 2025), today) else {
            panic!("episodes are required")
        };
        assert!(err.to_string().contains("episodes.csv"), "{err}");
        let SourceConfig::Ssda903(mut format) = ssda903(dir.path(), 2025) else {
            unreachable!()
        };
        format.year = None;
        let Err(err) = open(&SourceConfig::Ssda903(format), today) else {
            panic!("the year is required")
        };
        assert!(err.to_string().contains("set year"), "{err}");
    }
}
