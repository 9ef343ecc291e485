//! The national formats an agent knows, held as data: each a definition
//! (`<format>.yaml`: its tables, how they name their person, a mapping per
//! table) and its code lists (`codes/<format>/<year>.yaml`, or
//! `codes/<format>/current.yaml` for a format without collection years).
//!
//! The formats in `agent/formats/` are built in (`build.rs` embeds every
//! file there, so a new format or a new year's lists is a new file, not a
//! code change). An agency can keep more in a directory of the same layout,
//! named by `formats` in `agent.yaml`; they are read and checked when the
//! configuration is loaded, and a source uses one by its name as `kind`.
//!
//! Every format is checked on loading: it parses, its name matches its
//! file, it has an identity table, every table's mapping is valid,
//! and every code list a mapping names exists in each of its years' lists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::mapping::{CodeLists, Mapping};

include!(concat!(env!("OUT_DIR"), "/built_in_formats.rs"));

/// A format's definition (`<format>.yaml`).
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

/// Why the national formats could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read the national formats in {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("national format file {file}: {detail}")]
    Invalid { file: String, detail: String },
}

/// Every national format an agent can read.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    formats: BTreeMap<String, Format>,
}

/// One format: its definition, where it came from and its code-list files.
#[derive(Debug, Clone)]
pub struct Format {
    pub definition: Definition,
    /// `built in`, or the directory it was read from.
    pub origin: String,
    /// Code-list files by collection year (or `current`), parsed on
    /// loading.
    code_lists: BTreeMap<String, CodeListFile>,
}

/// A code-list file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeListFile {
    /// The year whose lists this one starts from; lists named here replace
    /// that year's.
    #[serde(default)]
    extends: Option<String>,
    #[serde(default)]
    lists: CodeLists,
}

const BUILT_IN_ORIGIN: &str = "built in";

impl Registry {
    /// The built-in formats only.
    pub fn built_in() -> Result<Self, RegistryError> {
        Self::load(None)
    }

    /// The built-in formats and those in `directory` (same layout as
    /// `agent/formats/`). A directory format may not reuse a built-in name.
    pub fn load(directory: Option<&Path>) -> Result<Self, RegistryError> {
        let mut files: Vec<(String, String, String)> = BUILT_IN
            .iter()
            .map(|(path, text)| {
                (
                    BUILT_IN_ORIGIN.to_owned(),
                    (*path).to_owned(),
                    (*text).to_owned(),
                )
            })
            .collect();
        if let Some(directory) = directory {
            let origin = directory.display().to_string();
            for (relative, text) in read_directory(directory)? {
                files.push((origin.clone(), relative, text));
            }
        }
        let mut registry = Self {
            formats: BTreeMap::new(),
        };
        let mut lists = Vec::new();
        for (origin, relative, text) in files {
            let file = format!("{relative} ({origin})");
            let invalid = |detail: String| RegistryError::Invalid {
                file: file.clone(),
                detail,
            };
            let parts: Vec<&str> = relative.split('/').collect();
            match parts.as_slice() {
                [name] => {
                    let name = name.strip_suffix(".yaml").unwrap_or(name);
                    let definition: Definition =
                        serde_saphyr::from_str(&text).map_err(|e| invalid(e.to_string()))?;
                    if definition.format != name {
                        return Err(invalid(format!(
                            "says format {:?}: the file must be named {}.yaml",
                            definition.format, definition.format
                        )));
                    }
                    if let Some(held) = registry.formats.get(name) {
                        return Err(invalid(format!(
                            "format {name} is already defined ({}); pick another name",
                            held.origin
                        )));
                    }
                    registry.formats.insert(
                        name.to_owned(),
                        Format {
                            definition,
                            origin: origin.clone(),
                            code_lists: BTreeMap::new(),
                        },
                    );
                }
                ["codes", format, year] => {
                    let year = year.strip_suffix(".yaml").unwrap_or(year);
                    if year != "current" && year.parse::<i32>().is_err() {
                        return Err(invalid(
                            "a code-list file is named by its collection year (2025.yaml) or current.yaml"
                                .to_owned(),
                        ));
                    }
                    let parsed: CodeListFile =
                        serde_saphyr::from_str(&text).map_err(|e| invalid(e.to_string()))?;
                    lists.push(((*format).to_owned(), year.to_owned(), file.clone(), parsed));
                }
                _ => {
                    return Err(invalid(
                        "expected <format>.yaml or codes/<format>/<year>.yaml".to_owned(),
                    ));
                }
            }
        }
        for (format, year, file, parsed) in lists {
            let Some(entry) = registry.formats.get_mut(&format) else {
                return Err(RegistryError::Invalid {
                    file,
                    detail: format!("code lists for {format}, which has no definition"),
                });
            };
            entry.code_lists.insert(year, parsed);
        }
        for format in registry.formats.values() {
            format.check().map_err(|detail| RegistryError::Invalid {
                file: format!("{}.yaml ({})", format.definition.format, format.origin),
                detail,
            })?;
        }
        Ok(registry)
    }

    /// The formats, by name.
    pub fn formats(&self) -> impl Iterator<Item = &Format> {
        self.formats.values()
    }

    /// The format called `name`.
    pub fn get(&self, name: &str) -> Result<&Format, String> {
        self.formats.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.formats.keys().map(String::as_str).collect();
            format!(
                "no national format {name:?} (known: csv, sql, {}; an agency's own go in the directory named by formats)",
                known.join(", ")
            )
        })
    }
}

impl Format {
    /// The code lists for `year` (`None`: the format is not yearly), from
    /// `file` when given, else the format's own (a year it has no lists
    /// for yet uses the latest earlier year's, with a warning).
    pub fn code_lists(&self, year: Option<i32>, file: Option<&Path>) -> Result<CodeLists, String> {
        let format = &self.definition.format;
        let year = year.map_or_else(|| "current".to_owned(), |y| y.to_string());
        let mut file = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read code lists {}: {e}", path.display()))?;
                serde_saphyr::from_str::<CodeListFile>(&text)
                    .map_err(|e| format!("code lists {}: {e}", path.display()))?
            }
            None if self.code_lists.is_empty() => return Ok(CodeLists::new()),
            None => {
                let (found, held) = self.lists_for(&year)?;
                if found != year {
                    tracing::warn!(
                        %format,
                        %year,
                        using = %found,
                        "no code lists for this collection year: using the latest earlier year's; set code_lists to the year's file once published"
                    );
                }
                held.clone()
            }
        };
        let mut lists = CodeLists::new();
        let mut seen = vec![year.clone()];
        while let Some(base) = file.extends.take() {
            if seen.contains(&base) {
                return Err(format!("{format} code lists: {base} extends itself"));
            }
            seen.push(base.clone());
            let base_file = self
                .code_lists
                .get(&base)
                .ok_or_else(|| format!("{format} code lists extend {base}, which is not held"))?;
            for (name, list) in std::mem::take(&mut file.lists) {
                lists.entry(name).or_insert(list);
            }
            file = base_file.clone();
        }
        for (name, list) in file.lists {
            lists.entry(name).or_insert(list);
        }
        Ok(lists)
    }

    /// The code-list file for `year`, or (a year with none yet) the latest
    /// earlier year's: (the year used, the file).
    fn lists_for(&self, year: &str) -> Result<(String, &CodeListFile), String> {
        if let Some(found) = self.code_lists.get(year) {
            return Ok((year.to_owned(), found));
        }
        let earlier = self
            .code_lists
            .iter()
            .filter(|(y, _)| y.parse::<i32>().ok() < year.parse::<i32>().ok())
            .max_by_key(|(y, _)| y.parse::<i32>().ok());
        earlier.map(|(y, found)| (y.clone(), found)).ok_or_else(|| {
            let known: Vec<&str> = self.code_lists.keys().map(String::as_str).collect();
            format!(
                "no {} code lists for {year} or an earlier year (held: {}); set code_lists to that year's file",
                self.definition.format,
                known.join(", ")
            )
        })
    }

    /// What loading promises of a format (see the module doc).
    fn check(&self) -> Result<(), String> {
        let definition = &self.definition;
        if !definition
            .tables
            .iter()
            .any(|t| t.person == PersonLink::Identity)
        {
            return Err(
                "needs a table with person: identity (the first such says who people are)"
                    .to_owned(),
            );
        }
        if definition.reader == ReaderKind::Xml && definition.record.is_none() {
            return Err("an XML format names its record element (record)".to_owned());
        }
        let years: Vec<Option<i32>> = if definition.yearly {
            self.code_lists
                .keys()
                .filter_map(|y| y.parse().ok())
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        let lists = years
            .iter()
            .map(|year| Ok((*year, self.code_lists(*year, None)?)))
            .collect::<Result<Vec<_>, String>>()?;
        for table in &definition.tables {
            if let PersonLink::Via(other) = &table.person
                && !definition
                    .tables
                    .iter()
                    .any(|t| &t.table == other && t.key.is_some())
            {
                return Err(format!(
                    "table {}: person via {other}, which is not a table with a key",
                    table.table
                ));
            }
            let mut mapping = table.mapping.clone();
            mapping.dataset = "checked".into();
            mapping
                .check(Path::new(&table.table))
                .map_err(|e| format!("table {}: {e}", table.table))?;
            let columns = table.mapping.attributes.values().chain(
                table
                    .mapping
                    .events
                    .iter()
                    .flat_map(|e| e.attributes.values()),
            );
            for list in columns.filter_map(|c| c.code_list()) {
                for (year, held) in &lists {
                    if !held.contains_key(list) {
                        let year = year.map_or("current".to_owned(), |y| y.to_string());
                        return Err(format!(
                            "table {}: code list {list} is not in the {year} lists",
                            table.table
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Every `.yaml` file under `directory`: (path below it with `/`, text).
fn read_directory(directory: &Path) -> Result<Vec<(String, String)>, RegistryError> {
    let read_error = |path: &Path, source| RegistryError::Read {
        path: path.to_owned(),
        source,
    };
    let mut found = Vec::new();
    let mut pending = vec![directory.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| read_error(&dir, e))? {
            let path = entry.map_err(|e| read_error(&dir, e))?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).map_err(|e| read_error(&path, e))?;
                let relative = path
                    .strip_prefix(directory)
                    .unwrap_or(&path)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                found.push((relative, text));
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_format_loads_and_checks() {
        let registry = Registry::built_in().unwrap();
        let names: Vec<&str> = registry
            .formats()
            .map(|f| f.definition.format.as_str())
            .collect();
        assert_eq!(
            names,
            ["annex_a", "cin_census", "csds", "fhir", "mhsds", "ssda903"]
        );
        assert!(registry.formats().all(|f| f.origin == BUILT_IN_ORIGIN));
    }

    #[test]
    fn a_later_year_uses_the_latest_lists_and_an_earlier_one_is_refused() {
        let registry = Registry::built_in().unwrap();
        let ssda903 = registry.get("ssda903").unwrap();
        assert_eq!(
            ssda903.code_lists(Some(2031), None).unwrap(),
            ssda903.code_lists(Some(2027), None).unwrap()
        );
        let err = ssda903.code_lists(Some(2019), None).unwrap_err();
        assert!(err.contains("2025, 2026, 2027"), "{err}");
        assert!(err.contains("code_lists"), "{err}");
    }

    #[test]
    fn a_later_year_extends_an_earlier_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("2027.yaml");
        std::fs::write(&file, "extends: '2026'\nlists:\n  LS: { X9: New status }\n").unwrap();
        let registry = Registry::built_in().unwrap();
        let lists = registry
            .get("ssda903")
            .unwrap()
            .code_lists(Some(2027), Some(&file))
            .unwrap();
        assert_eq!(lists["LS"].keys().collect::<Vec<_>>(), ["X9"]);
        assert!(
            lists["PLACE"].contains_key("U1"),
            "other lists carried forward"
        );
    }

    /// A directory format that breaks a promise is refused on loading, the
    /// message naming the file and what is wrong.
    #[test]
    fn a_broken_directory_format_is_refused_naming_its_file() {
        let identity = "tables:\n  - table: People\n    file: people.csv\n    person: identity\n    mapping:\n      fields: { local_id: ID }\n";
        let cases: &[(&str, &str, &str)] = &[
            (
                "wrong.yaml",
                &format!("format: other\ntitle: T\nreader: csv\n{identity}"),
                "must be named other.yaml",
            ),
            (
                "ssda903.yaml",
                &format!("format: ssda903\ntitle: T\nreader: csv\n{identity}"),
                "already defined (built in)",
            ),
            (
                "noid.yaml",
                "format: noid\ntitle: T\nreader: csv\ntables:\n  - table: People\n    mapping:\n      fields: { local_id: ID }\n",
                "needs a table with person: identity",
            ),
            (
                "coded.yaml",
                &format!(
                    "format: coded\ntitle: T\nreader: csv\n{identity}      attributes:\n        kind: {{ column: K, code_list: KINDS }}\n"
                ),
                "code list KINDS",
            ),
            (
                "codes/ghost/current.yaml",
                "lists: {}\n",
                "which has no definition",
            ),
            ("notes/readme.yaml", "a: 1\n", "expected <format>.yaml"),
        ];
        for (file, text, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            let err = Registry::load(Some(dir.path())).unwrap_err().to_string();
            assert!(
                err.contains(expected) && err.contains(file.rsplit('/').next().unwrap()),
                "{file}: {err}"
            );
        }
    }
}
