//! FHIR bulk-export NDJSON: one resource per line, read line by line (memory
//! stays flat however large the file).
//!
//! Each of the table's columns is a path into the resource:
//! `birthDate`, `name[0].given[0]`, `identifier[system=https://fhir.nhs.uk/Id/nhs-number].value`.
//! A `reference` (`Patient/123`) gives the id after the last `/`. The values
//! then go through the table's mapping like a CSV row's. A line that is not
//! JSON (a truncated export), is longer than the line limit, or holds another
//! resource type is quarantined with its line number.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::mapping::{Mapping, Resolved};
use crate::source::{Position, RawRow, ReadContext, Source, SourceError, file_fingerprint};

pub struct NdjsonSource {
    path: PathBuf,
    reader: BufReader<File>,
    resource_type: String,
    paths: Vec<JsonPath>,
    mapping: Resolved,
    context: ReadContext,
    total_bytes: u64,
    at: NdjsonAt,
    line: Vec<u8>,
}

/// Where an NDJSON reader is: the next line's byte offset and number, and
/// the resources read before it.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct NdjsonAt {
    byte: u64,
    line: u64,
    record: u64,
}

impl NdjsonSource {
    /// Opens `path`, whose lines are `resource_type` resources; `columns`
    /// maps column names to paths, and `mapping` reads those columns.
    pub fn open(
        path: &Path,
        resource_type: &str,
        columns: &BTreeMap<String, String>,
        mapping: &Mapping,
        mapping_path: &Path,
        context: impl Into<ReadContext>,
    ) -> Result<Self, SourceError> {
        let context = context.into();
        let open_err = |source| SourceError::Open {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let total_bytes = file.metadata().map_err(open_err)?.len();
        let headers: Vec<String> = columns.keys().cloned().collect();
        let paths = columns
            .values()
            .map(|p| JsonPath::parse(p))
            .collect::<Result<Vec<_>, String>>()
            .map_err(|detail| SourceError::Format {
                path: mapping_path.to_owned(),
                detail,
            })?;
        Ok(Self {
            path: path.to_owned(),
            reader: BufReader::with_capacity(256 * 1024, file),
            resource_type: resource_type.to_owned(),
            paths,
            mapping: mapping.resolve(&headers, mapping_path, path)?,
            context,
            total_bytes,
            at: NdjsonAt {
                byte: 0,
                line: 1,
                record: 0,
            },
            line: Vec::new(),
        })
    }

    fn io_error(&self, e: &std::io::Error) -> SourceError {
        SourceError::Io {
            path: self.path.clone(),
            line: self.at.line,
            detail: e.to_string(),
        }
    }

    /// Reads one line into `self.line` (at most the line limit kept);
    /// returns the bytes consumed and whether it was cut short.
    fn read_line(&mut self) -> Result<(u64, bool), std::io::Error> {
        self.line.clear();
        let mut consumed = 0u64;
        let mut too_long = false;
        loop {
            let buffer = self.reader.fill_buf()?;
            if buffer.is_empty() {
                return Ok((consumed, too_long));
            }
            let (chunk, done) = match buffer.iter().position(|&b| b == b'\n') {
                Some(i) => (&buffer[..=i], true),
                None => (buffer, false),
            };
            let n = chunk.len();
            if !too_long && self.line.len() + n <= self.context.limits.max_line_bytes {
                self.line.extend_from_slice(chunk);
            } else {
                too_long = true;
                self.line.clear();
            }
            self.reader.consume(n);
            consumed += n as u64;
            if done {
                return Ok((consumed, too_long));
            }
        }
    }

    fn row(&self, line: u64, too_long: bool) -> Option<RawRow> {
        let quarantined = |what: String| Some(RawRow::broken(line, what));
        let limits = self.context.limits;
        if too_long {
            return quarantined(format!(
                "is longer than {} bytes (limits.max_line_bytes)",
                limits.max_line_bytes
            ));
        }
        let text = self.line.trim_ascii();
        if text.is_empty() {
            return None;
        }
        let resource: Value = match serde_json::from_slice(text) {
            Ok(v) => v,
            Err(e) if e.is_eof() => {
                return quarantined("is not complete JSON (a truncated export?)".to_owned());
            }
            Err(e) => {
                return quarantined(format!("is not valid JSON (column {})", e.column()));
            }
        };
        match resource.get("resourceType").and_then(Value::as_str) {
            Some(t) if t == self.resource_type => {}
            Some(_) => {
                return quarantined(format!(
                    "is another resource type, not {}",
                    self.resource_type
                ));
            }
            None => return quarantined("has no resourceType".to_owned()),
        }
        let fields: Vec<String> = self.paths.iter().map(|p| p.get(&resource)).collect();
        if let Some(long) = fields.iter().position(|f| f.len() > limits.max_field_bytes) {
            return quarantined(format!(
                "field {} is longer than {} bytes (limits.max_field_bytes)",
                long + 1,
                limits.max_field_bytes
            ));
        }
        Some(RawRow::of(line, 0, fields))
    }
}

impl Source for NdjsonSource {
    fn next_raw(&mut self) -> Option<Result<RawRow, SourceError>> {
        loop {
            let line = self.at.line;
            let (consumed, too_long) = match self.read_line() {
                Ok(read) => read,
                Err(e) => return Some(Err(self.io_error(&e))),
            };
            if consumed == 0 {
                return None;
            }
            self.at.byte += consumed;
            self.at.line += 1;
            self.at.record += 1;
            if let Some(row) = self.row(line, too_long) {
                return Some(Ok(row));
            }
        }
    }

    fn position(&self) -> Position {
        Position::of(self.at.line, &self.at)
    }

    fn resume(&mut self, at: Position) -> Result<(), SourceError> {
        let at: NdjsonAt = at.state(&self.path)?;
        self.reader
            .seek(SeekFrom::Start(at.byte))
            .map_err(|e| self.io_error(&e))?;
        self.at = at;
        Ok(())
    }

    fn fingerprint(&self) -> String {
        file_fingerprint(&self.path)
    }

    fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    fn bytes_read(&self) -> u64 {
        self.at.byte
    }

    fn mappings(&self) -> Vec<&Resolved> {
        vec![&self.mapping]
    }

    fn mapping(&self, _table: usize) -> &Resolved {
        &self.mapping
    }

    fn today(&self) -> time::Date {
        self.context.today
    }
}

/// A path into a JSON resource.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JsonPath(Vec<Step>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
    /// The first array element whose `key` is the string `value`.
    Where {
        key: String,
        value: String,
    },
}

impl JsonPath {
    fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a usable JSON path");
        let mut steps = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            if end > 0 {
                steps.push(Step::Key(rest[..end].to_owned()));
            }
            rest = &rest[end..];
            if let Some(inner) = rest.strip_prefix('[') {
                let close = inner.find(']').ok_or_else(bad)?;
                let selector = &inner[..close];
                steps.push(match selector.split_once('=') {
                    Some((key, value)) => Step::Where {
                        key: key.to_owned(),
                        value: value.to_owned(),
                    },
                    None => Step::Index(selector.parse().map_err(|_| bad())?),
                });
                rest = &inner[close + 1..];
            }
            if let Some(after) = rest.strip_prefix('.') {
                if after.is_empty() {
                    return Err(bad());
                }
                rest = after;
            } else if !rest.is_empty() && !rest.starts_with('[') {
                return Err(bad());
            }
        }
        if steps.is_empty() {
            return Err(bad());
        }
        Ok(Self(steps))
    }

    /// The value at the path as text; empty when absent.
    fn get(&self, resource: &Value) -> String {
        let mut at = resource;
        for step in &self.0 {
            let next = match step {
                Step::Key(k) => at.get(k),
                Step::Index(i) => at.get(i),
                Step::Where { key, value } => at.as_array().and_then(|items| {
                    items
                        .iter()
                        .find(|i| i.get(key).and_then(Value::as_str) == Some(value))
                }),
            };
            match next {
                Some(v) => at = v,
                None => return String::new(),
            }
        }
        let is_reference = matches!(self.0.last(), Some(Step::Key(k)) if k == "reference");
        match at {
            Value::String(s) if is_reference => s.rsplit('/').next().unwrap_or(s).to_owned(),
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::RowOutcome;
    use time::macros::date;

    #[test]
    fn paths_reach_into_arrays_and_filters() {
        let patient: Value = serde_json::from_str(
            r#"{"resourceType":"Patient","id":"p1","identifier":[{"system":"urn:local","value":"L1"},{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9434765919"}],"name":[{"family":"Smith","given":["Jane","Ann"]}],"managingOrganization":{"reference":"Organization/RX9"}}"#,
        )
        .unwrap();
        let get = |p: &str| JsonPath::parse(p).unwrap().get(&patient);
        assert_eq!(
            get("identifier[system=https://fhir.nhs.uk/Id/nhs-number].value"),
            "9434765919"
        );
        assert_eq!(get("name[0].given[1]"), "Ann");
        assert_eq!(get("name[0].family"), "Smith");
        assert_eq!(get("managingOrganization.reference"), "RX9");
        assert_eq!(get("birthDate"), "");
        assert!(JsonPath::parse("name[x]").is_err());
        assert!(JsonPath::parse("name.").is_err());
    }

    /// `data` opened as Patient resources: id and birth date.
    fn patients(data: &Path) -> NdjsonSource {
        let mapping: Mapping = serde_saphyr::from_str(
            "dataset: d\nfields:\n  local_id: id\n  date_of_birth: { column: dob, format: iso }\n",
        )
        .unwrap();
        let columns = [
            ("id".to_owned(), "id".to_owned()),
            ("dob".to_owned(), "birthDate".to_owned()),
        ]
        .into();
        NdjsonSource::open(
            data,
            "Patient",
            &columns,
            &mapping,
            Path::new("m"),
            date!(2026 - 01 - 01),
        )
        .unwrap()
    }

    #[test]
    fn broken_resources_are_quarantined_without_their_values() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("Patient.ndjson");
        std::fs::write(
            &data,
            concat!(
                "{\"resourceType\":\"Patient\",\"id\":\"Quillfeather\",\"birthDate\":\"Quill-feather\"}\n",
                "{\"resourceType\":\"Patient\",\"id\":\"Quillfeather\" \"name\":1}\n",
                "{\"resourceType\":\"Quillfeather\",\"id\":\"x\"}\n",
                "{\"resourceType\":\"Patient\",\"id\":\"Quill\\u0000feather\"}\n",
                "{\"resourceType\":\"Patient\",\"id\":\"Quillfeather"
            ),
        )
        .unwrap();
        let mut source = patients(&data);
        let mut problems = Vec::new();
        while let Some(row) = source.next_row() {
            match row.unwrap().outcome {
                RowOutcome::Quarantined(p) => problems.push(p.to_string()),
                RowOutcome::Valid { warnings, .. } => {
                    problems.extend(warnings.iter().map(ToString::to_string))
                }
            }
        }
        assert_eq!(problems.len(), 5, "{problems:?}");
        for problem in &problems {
            assert!(
                !problem.contains("Quill") && !problem.contains("feather"),
                "{problem}"
            );
        }
    }

    #[test]
    fn truncated_foreign_and_overlong_lines_are_quarantined_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("Patient.ndjson");
        let long = format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"{}\"}}",
            "x".repeat(crate::source::InputLimits::default().max_line_bytes)
        );
        std::fs::write(
            &data,
            format!(
                "{{\"resourceType\":\"Patient\",\"id\":\"p1\",\"birthDate\":\"2015-04-03\"}}\n\n{{\"resourceType\":\"Encounter\",\"id\":\"e1\"}}\n{long}\n{{\"resourceType\":\"Patient\",\"id\":\"p2\"}}\n{{\"resourceType\":\"Patient\",\"id\":\"p3\",\"bir"
            ),
        )
        .unwrap();
        let mut source = patients(&data);
        let mut rows = Vec::new();
        while let Some(row) = source.next_row() {
            rows.push(row.unwrap());
        }
        assert_eq!(source.bytes_read(), source.total_bytes());
        let summary: Vec<(u64, String)> = rows
            .iter()
            .map(|r| {
                (
                    r.line,
                    match &r.outcome {
                        RowOutcome::Valid { row, .. } => row.local_id.clone(),
                        RowOutcome::Quarantined(p) => p.to_string(),
                    },
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (1, "p1".to_owned()),
                (3, "row: is another resource type, not Patient".to_owned()),
                (
                    4,
                    "row: is longer than 1048576 bytes (limits.max_line_bytes)".to_owned()
                ),
                (5, "p2".to_owned()),
                (
                    6,
                    "row: is not complete JSON (a truncated export?)".to_owned()
                ),
            ]
        );
        // Resuming at a position gives the same rows from there on.
        let mut again = patients(&data);
        for _ in 0..3 {
            again.next_row();
        }
        let at = again.position();
        let mut resumed = patients(&data);
        resumed.resume(at).unwrap();
        assert_eq!(resumed.next_row().unwrap().unwrap().line, 5);
    }
}
