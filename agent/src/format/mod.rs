//! Opening a configured source: a CSV file or SQL table through its mapping,
//! or a national format (SSDA903, the CIN census, Ofsted Annex A, MHSDS- and
//! CSDS-style tables, FHIR bulk exports, or an agency's own) read as
//! agencies produce them.
//!
//! A national format is data, not code ([`registry`]): its definition lists
//! its tables (a file each, or for an XML return an element each), which
//! table says who the person is, how other tables name their person, and a
//! mapping per table in the same language as a CSV mapping file; its code
//! lists are files per collection year (a source may also point
//! `code_lists` at a newer file).
//!
//! [`open`] turns a configured source into [`Part`]s, one per file (or per
//! XML file), each a [`Source`] whose rows are canonical rows. For formats
//! whose event tables name their person only by id, it first reads the
//! identity table (and any table other tables point through) into a
//! [`PersonIndex`], so that every event row carries its person's local id
//! and NHS number.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use time::{Date, Month};

use crate::mapping::{CodeLists, Collection, Column, Fields, Mapping};
use crate::person_index::{By, PersonIndex, PersonRef};
use crate::row::RowOutcome;
use crate::source::config::{NationalFormat, SourceConfig};
use crate::source::csv::CsvSource;
use crate::source::ndjson::NdjsonSource;
use crate::source::sql::SqlSource;
use crate::source::xml::{XmlSource, XmlTable};
use crate::source::{ReadContext, Source, SourceError, SourceRow};

pub mod registry;

pub use registry::{Definition, PersonLink, ReaderKind, Registry, RegistryError, Table};

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

impl Part {
    /// Every row of the part, read and mapped, in order.
    pub fn rows(&mut self) -> impl Iterator<Item = Result<SourceRow, SourceError>> + '_ {
        std::iter::from_fn(|| self.source.next_row())
    }
}

/// Every row of `parts`, read and mapped, each with the file it came from:
/// for callers that want a whole source at once (small extracts, tests).
pub fn read_all(parts: Vec<Part>) -> Result<Vec<(PathBuf, SourceRow)>, SourceError> {
    let mut rows = Vec::new();
    for mut part in parts {
        while let Some(row) = part.source.next_row() {
            rows.push((part.path.clone(), row?));
        }
    }
    Ok(rows)
}

/// The parts of a configured source, ready to read; `formats` holds the
/// national formats it may name.
pub fn open(
    source: &SourceConfig,
    formats: &Registry,
    context: impl Into<ReadContext>,
) -> Result<Vec<Part>, SourceError> {
    let context = context.into();
    let national = match source {
        SourceConfig::Csv(file) => {
            let map = Mapping::load(&file.mapping)?;
            return Ok(vec![Part {
                path: file.path.clone(),
                dataset: map.dataset.clone(),
                table: String::new(),
                source: Box::new(CsvSource::open(&file.path, &map, &file.mapping, context)?),
            }]);
        }
        SourceConfig::Sql(table) => {
            let source = SqlSource::open(table, context)?;
            return Ok(vec![Part {
                path: PathBuf::from(format!("sql-{}", table.table.as_deref().unwrap_or("query"))),
                dataset: Mapping::load(&table.mapping)?.dataset,
                table: String::new(),
                source: Box::new(source),
            }]);
        }
        SourceConfig::National(national) => national,
    };
    let format_error = |detail: String| SourceError::Format {
        path: national.path.clone(),
        detail,
    };
    let format = formats.get(&national.format).map_err(format_error)?;
    let definition = &format.definition;
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
        format
            .code_lists(
                national.year.filter(|_| definition.yearly),
                national.code_lists.as_deref(),
            )
            .map_err(format_error)?,
    );
    let opening = Opening {
        definition,
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
    use std::collections::BTreeMap;

    use super::*;

    fn built_in() -> Registry {
        Registry::built_in().unwrap()
    }

    fn ssda903(dir: &Path, year: i32) -> SourceConfig {
        SourceConfig::National(NationalFormat {
            format: "ssda903".to_owned(),
            path: dir.to_owned(),
            dataset: "lac".to_owned(),
            year: Some(year),
            code_lists: None,
            files: BTreeMap::new(),
            snapshot: false,
        })
    }

    fn outcomes(parts: Vec<Part>) -> Vec<(String, u64, Result<String, String>)> {
        read_all(parts)
            .unwrap()
            .into_iter()
            .map(|(path, row)| {
                let outcome = match row.outcome {
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
                };
                let file = path.file_name().unwrap().to_string_lossy().into_owned();
                (file, row.line, outcome)
            })
            .collect()
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
        let rows = outcomes(open(&ssda903(dir.path(), 2025), &built_in(), today).unwrap());
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
        let Err(err) = open(&ssda903(dir.path(), 2025), &built_in(), today) else {
            panic!("a missing column is refused")
        };
        let err = err.to_string();
        assert!(
            err.contains("\"DECOM\"") && err.contains("episodes.csv") && err.contains("Episodes"),
            "{err}"
        );

        // A missing table that is not optional, and a yearly return without its year.
        std::fs::remove_file(dir.path().join("episodes.csv")).unwrap();
        let Err(err) = open(&ssda903(dir.path(), 2025), &built_in(), today) else {
            panic!("episodes are required")
        };
        assert!(err.to_string().contains("episodes.csv"), "{err}");
        let SourceConfig::National(mut format) = ssda903(dir.path(), 2025) else {
            unreachable!()
        };
        format.year = None;
        let Err(err) = open(&SourceConfig::National(format), &built_in(), today) else {
            panic!("the year is required")
        };
        assert!(err.to_string().contains("set year"), "{err}");
    }
}
