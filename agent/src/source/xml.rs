//! XML returns (the DfE Children in Need census), streamed one record
//! (`<Child>`) at a time: memory holds one record, however large the file.
//!
//! Each table is an element inside the record (`ChildIdentifiers`,
//! `CINdetails`, `Assessments` …); every occurrence becomes one row. A leaf
//! element's text goes to the innermost table element around it, under its
//! element name (a repeated leaf, such as each `<Disability>`, is joined with
//! `,`). A column a row lacks is taken from the table elements around it, then
//! from the record's one-off top-level tables — so an assessment row carries
//! its referral's date and its child's `LAchildID`, but never the dates of
//! another referral. Rows then go through their
//! table's mapping like CSV rows.
//!
//! An element outside the records may name the collection year; a file for
//! another year is refused before any row is read. Malformed XML stops the
//! source with the line where the parser stopped.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use quick_xml::events::Event;

use crate::mapping::{Mapping, Resolved};
use crate::source::{Position, RawRow, ReadContext, Source, SourceError, file_fingerprint};

/// The largest record read; a larger one stops the source (a CIN record is a
/// few kilobytes).
pub const MAX_RECORD_BYTES: u64 = 16 * 1024 * 1024;

/// One table of an XML return: the element each row is, and its mapping,
/// whose columns are leaf element names.
pub struct XmlTable {
    pub element: String,
    pub mapping: Mapping,
}

/// Where an XML reader is: the byte offset and line where the record being
/// returned (or the next one) starts, the whole records read before it, and
/// the rows of that record already returned.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct XmlAt {
    byte: u64,
    line: u64,
    record: u64,
    #[serde(default)]
    within: u64,
}

struct BoundTable {
    element: String,
    mapping: Resolved,
}

/// A table element seen in the current record.
struct RecordRow {
    table: usize,
    /// The enclosing table element's row.
    parent: Option<usize>,
    line: u64,
    values: Vec<Option<String>>,
}

pub struct XmlSource {
    path: PathBuf,
    reader: quick_xml::Reader<BufReader<File>>,
    record: String,
    tables: Vec<BoundTable>,
    /// Every column name, in header order (shared by all tables' mappings).
    columns: Vec<String>,
    year: Option<(String, i32)>,
    context: ReadContext,
    total_bytes: u64,
    /// The line the reader is at.
    line: u64,
    /// Where the record being returned (or the next one) starts.
    at: XmlAt,
    pending: VecDeque<RawRow>,
    finished: bool,
    buf: Vec<u8>,
}

impl XmlSource {
    /// Opens `path`; `record` is the element holding one person; `year`, an
    /// element outside the records and the collection year it must hold.
    pub fn open(
        path: &Path,
        record: &str,
        tables: Vec<XmlTable>,
        year: Option<(String, i32)>,
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
        let mut columns: Vec<String> = Vec::new();
        for table in &tables {
            for column in table.mapping.columns() {
                if !columns.iter().any(|c| c == column) {
                    columns.push(column.to_owned());
                }
            }
        }
        let tables = tables
            .into_iter()
            .map(|t| {
                Ok(BoundTable {
                    mapping: t.mapping.resolve(&columns, mapping_path, path)?,
                    element: t.element,
                })
            })
            .collect::<Result<Vec<_>, SourceError>>()?;
        Ok(Self {
            path: path.to_owned(),
            reader: Self::reader(file),
            record: record.to_owned(),
            tables,
            columns,
            year,
            context,
            total_bytes,
            line: 1,
            at: XmlAt {
                line: 1,
                ..XmlAt::default()
            },
            pending: VecDeque::new(),
            finished: false,
            buf: Vec::new(),
        })
    }

    fn reader(file: File) -> quick_xml::Reader<BufReader<File>> {
        let mut reader = quick_xml::Reader::from_reader(BufReader::with_capacity(256 * 1024, file));
        reader.config_mut().check_end_names = true;
        reader
    }

    /// Moves the position past a record whose rows have all been returned.
    fn record_done(&mut self) {
        self.at = XmlAt {
            byte: self.reader.buffer_position(),
            line: self.line,
            record: self.at.record + 1,
            within: 0,
        };
    }

    /// Reads up to the end of the next record and returns its rows (`None`
    /// at the end of the file).
    fn read_record(&mut self) -> Result<Option<Vec<RawRow>>, SourceError> {
        // Outside a record: element names, for the collection-year check.
        let mut outside: Vec<Vec<u8>> = Vec::new();
        let mut text = String::new();
        loop {
            self.buf.clear();
            let start_line = self.line;
            let event = self
                .reader
                .read_event_into(&mut self.buf)
                .map_err(|e| malformed(&self.path, start_line, e))?;
            self.line += newlines(&event);
            match event {
                Event::Start(e) if e.local_name().as_ref() == self.record.as_bytes() => {
                    return self.read_record_body(start_line).map(Some);
                }
                Event::Start(e) => {
                    outside.push(e.local_name().as_ref().to_vec());
                    text.clear();
                }
                Event::Text(t) => {
                    text.push_str(
                        &t.xml_content()
                            .map_err(|e| malformed(&self.path, self.line, e))?,
                    );
                }
                Event::End(_) => {
                    let name = outside.pop().unwrap_or_default();
                    self.check_year(&name, text.trim())?;
                    text.clear();
                }
                Event::Eof => return Ok(None),
                _ => {}
            }
        }
    }

    fn check_year(&self, element: &[u8], value: &str) -> Result<(), SourceError> {
        let Some((year_element, year)) = &self.year else {
            return Ok(());
        };
        if element != year_element.as_bytes() || value == year.to_string() {
            return Ok(());
        }
        Err(SourceError::Format {
            path: self.path.clone(),
            detail: format!(
                "line {}: {year_element} says this is the return for {value:?}, not {year}: is the file for another year?",
                self.line
            ),
        })
    }

    /// Reads the body of a record whose start tag has just been read.
    fn read_record_body(&mut self, record_line: u64) -> Result<Vec<RawRow>, SourceError> {
        let record_start = self.reader.buffer_position();
        let mut rows: Vec<RecordRow> = Vec::new();
        // Open table elements (row indices) and open leaf candidates.
        let mut open_tables: Vec<usize> = Vec::new();
        let mut elements: Vec<(Vec<u8>, bool)> = Vec::new(); // (name, has child elements)
        let mut text = String::new();
        loop {
            if self.reader.buffer_position() - record_start > MAX_RECORD_BYTES {
                return Err(SourceError::Format {
                    path: self.path.clone(),
                    detail: format!(
                        "line {record_line}: the <{}> starting here is larger than {} MiB",
                        self.record,
                        MAX_RECORD_BYTES >> 20
                    ),
                });
            }
            self.buf.clear();
            let start_line = self.line;
            let event = self
                .reader
                .read_event_into(&mut self.buf)
                .map_err(|e| malformed(&self.path, start_line, e))?;
            self.line += newlines(&event);
            match event {
                Event::Start(e) => {
                    let name = e.local_name().as_ref().to_vec();
                    if let Some(last) = elements.last_mut() {
                        last.1 = true;
                    }
                    if let Some(table) = self.table_of(&name) {
                        rows.push(RecordRow {
                            table,
                            parent: open_tables.last().copied(),
                            line: start_line,
                            values: vec![None; self.columns.len()],
                        });
                        open_tables.push(rows.len() - 1);
                    }
                    elements.push((name, false));
                    text.clear();
                }
                Event::Text(t) => {
                    text.push_str(
                        &t.xml_content()
                            .map_err(|e| malformed(&self.path, self.line, e))?,
                    );
                }
                Event::CData(t) => {
                    text.push_str(&String::from_utf8_lossy(&t));
                }
                Event::GeneralRef(r) => {
                    let resolved = match r
                        .resolve_char_ref()
                        .map_err(|e| malformed(&self.path, self.line, e))?
                    {
                        Some(c) => c.to_string(),
                        None => {
                            let name = r
                                .xml_content()
                                .map_err(|e| malformed(&self.path, self.line, e))?;
                            quick_xml::escape::resolve_predefined_entity(&name)
                                .ok_or_else(|| {
                                    // Its name is the file's text: not shown.
                                    malformed(&self.path, self.line, "an unknown entity (&...;)")
                                })?
                                .to_owned()
                        }
                    };
                    text.push_str(&resolved);
                }
                Event::End(e) => {
                    if e.local_name().as_ref() == self.record.as_bytes() && elements.is_empty() {
                        return Ok(self.finish_record(rows));
                    }
                    let (name, has_children) = elements.pop().unwrap_or_default();
                    if self.table_of(&name).is_some() {
                        open_tables.pop();
                    } else if !has_children {
                        self.assign(&mut rows, open_tables.last().copied(), &name, text.trim());
                    }
                    text.clear();
                }
                Event::Eof => {
                    return Err(malformed(
                        &self.path,
                        self.line,
                        format!(
                            "the file ends inside the <{}> starting at line {record_line}",
                            self.record
                        ),
                    ));
                }
                // Empty elements hold no value; comments, processing
                // instructions and declarations none either.
                _ => {}
            }
        }
    }

    fn table_of(&self, element: &[u8]) -> Option<usize> {
        self.tables
            .iter()
            .position(|t| t.element.as_bytes() == element)
    }

    /// Gives a leaf's value to the innermost table element around it.
    fn assign(&self, rows: &mut [RecordRow], row: Option<usize>, element: &[u8], value: &str) {
        let (Some(row), false) = (row, value.is_empty()) else {
            return;
        };
        let Some(column) = self.columns.iter().position(|c| c.as_bytes() == element) else {
            return;
        };
        let slot = &mut rows[row].values[column];
        match slot {
            Some(existing) => {
                existing.push(',');
                existing.push_str(value);
            }
            None => *slot = Some(value.to_owned()),
        }
    }

    /// Fills each row's missing columns from the table elements around it,
    /// then from the record's one-off top-level tables (`ChildIdentifiers`,
    /// not one of several `CINdetails`), and maps it.
    fn finish_record(&self, rows: Vec<RecordRow>) -> Vec<RawRow> {
        let once = |i: usize| {
            rows.iter()
                .filter(|r| r.parent.is_none() && r.table == rows[i].table)
                .count()
                == 1
        };
        let top_level: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].parent.is_none() && once(i))
            .collect();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.values.iter().all(Option::is_none) {
                continue;
            }
            let fields: Vec<String> = (0..self.columns.len())
                .map(|column| {
                    let mut at = Some(row);
                    while let Some(r) = at {
                        if let Some(v) = &r.values[column] {
                            return v.clone();
                        }
                        at = r.parent.map(|p| &rows[p]);
                    }
                    top_level
                        .iter()
                        .find_map(|&i| rows[i].values[column].clone())
                        .unwrap_or_default()
                })
                .collect();
            out.push(RawRow::of(row.line, row.table, fields));
        }
        out
    }
}

fn malformed(path: &Path, line: u64, detail: impl std::fmt::Display) -> SourceError {
    // The parser quotes what it found (`...`): the file's own text, which
    // may be a child's name. Only the shape of the problem is kept.
    let detail = detail.to_string();
    let shape: String = detail
        .split('`')
        .enumerate()
        .map(|(i, part)| if i % 2 == 1 { "…" } else { part })
        .collect::<Vec<_>>()
        .join("`");
    SourceError::Io {
        path: path.to_owned(),
        line,
        detail: format!("malformed XML: {shape}"),
    }
}

/// Line ends inside an event's raw bytes.
fn newlines(event: &Event<'_>) -> u64 {
    let bytes: &[u8] = match event {
        Event::Start(e) | Event::Empty(e) => e,
        Event::Text(e) | Event::Comment(e) | Event::DocType(e) => e,
        Event::CData(e) => e,
        Event::PI(e) => e,
        Event::Decl(e) => e,
        Event::End(_) | Event::GeneralRef(_) | Event::Eof => &[],
    };
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

impl Source for XmlSource {
    fn next_raw(&mut self) -> Option<Result<RawRow, SourceError>> {
        loop {
            if let Some(row) = self.pending.pop_front() {
                if self.pending.is_empty() {
                    self.record_done();
                } else {
                    self.at.within += 1;
                }
                return Some(Ok(row));
            }
            if self.finished {
                return None;
            }
            match self.read_record() {
                Ok(Some(rows)) if rows.is_empty() => {
                    self.record_done();
                }
                Ok(Some(rows)) => self.pending = rows.into(),
                Ok(None) => {
                    self.finished = true;
                    self.at.byte = self.reader.buffer_position();
                    self.at.line = self.line;
                    return None;
                }
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
        }
    }

    fn position(&self) -> Position {
        Position::of(self.at.line, &self.at)
    }

    /// Re-reads the file from its start (an XML parser cannot start mid-way
    /// without the elements around it), skipping the records already read.
    fn resume(&mut self, at: Position) -> Result<(), SourceError> {
        let at: XmlAt = at.state(&self.path)?;
        let mut file = self
            .reader
            .get_ref()
            .get_ref()
            .try_clone()
            .map_err(|source| SourceError::Open {
                path: self.path.clone(),
                source,
            })?;
        file.seek(SeekFrom::Start(0))
            .map_err(|source| SourceError::Open {
                path: self.path.clone(),
                source,
            })?;
        self.reader = Self::reader(file);
        self.line = 1;
        self.at = XmlAt {
            line: 1,
            ..XmlAt::default()
        };
        self.pending.clear();
        self.finished = false;
        while self.at.record < at.record || self.at.within < at.within {
            match self.next_row() {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(())
    }

    fn fingerprint(&self) -> String {
        file_fingerprint(&self.path)
    }

    fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    fn bytes_read(&self) -> u64 {
        self.reader.buffer_position()
    }

    fn mappings(&self) -> Vec<&Resolved> {
        self.tables.iter().map(|t| &t.mapping).collect()
    }

    fn mapping(&self, table: usize) -> &Resolved {
        &self.tables[table].mapping
    }

    fn today(&self) -> time::Date {
        self.context.today
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::RowOutcome;
    use crate::source::SourceRow;
    use time::macros::date;

    const CHILD_A: &str = r#"
    <Child>
      <ChildIdentifiers>
        <LAchildID>A1</LAchildID>
        <UPN>UN1</UPN>
        <PersonBirthDate>2015-04-03</PersonBirthDate>
      </ChildIdentifiers>
      <ChildCharacteristics>
        <Disabilities><Disability>HAND</Disability><Disability>VIS</Disability></Disabilities>
      </ChildCharacteristics>
      <CINdetails>
        <CINreferralDate>2024-05-01</CINreferralDate>
        <Assessments>
          <AssessmentActualStartDate>2024-05-03</AssessmentActualStartDate>
        </Assessments>
        <Assessments>
          <AssessmentActualStartDate>2024-09-01</AssessmentActualStartDate>
        </Assessments>
      </CINdetails>
    </Child>"#;

    fn census(children: &str, year: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Message>\n  <Header><CollectionDetails><Collection>CIN</Collection><Year>{year}</Year></CollectionDetails></Header>\n  <Children>{children}\n  </Children>\n</Message>\n"
        )
    }

    fn tables() -> Vec<XmlTable> {
        let table = |element: &str, mapping: &str| XmlTable {
            element: element.to_owned(),
            mapping: serde_saphyr::from_str(mapping).unwrap(),
        };
        vec![
            table(
                "ChildIdentifiers",
                "dataset: d\nfields:\n  local_id: LAchildID\n  upn: UPN\n  date_of_birth: { column: PersonBirthDate, format: iso }\n",
            ),
            table(
                "ChildCharacteristics",
                "dataset: d\nfields:\n  local_id: LAchildID\nattributes:\n  disability: Disability\n",
            ),
            table(
                "CINdetails",
                "dataset: d\nfields:\n  local_id: LAchildID\nevents:\n  - type: referral\n    date: { column: CINreferralDate, format: iso }\n",
            ),
            table(
                "Assessments",
                "dataset: d\nfields:\n  local_id: LAchildID\nattributes:\n  referred: CINreferralDate\nevents:\n  - type: assessment\n    date: { column: AssessmentActualStartDate, format: iso }\n",
            ),
        ]
    }

    fn open(path: &Path) -> XmlSource {
        XmlSource::open(
            path,
            "Child",
            tables(),
            Some(("Year".to_owned(), 2025)),
            Path::new("m"),
            date!(2026 - 01 - 01),
        )
        .unwrap()
    }

    fn read_all(source: &mut XmlSource) -> Result<Vec<SourceRow>, SourceError> {
        let mut rows = Vec::new();
        while let Some(row) = source.next_row() {
            rows.push(row?);
        }
        Ok(rows)
    }

    fn valid(row: &SourceRow) -> &crate::person::PersonRow {
        match &row.outcome {
            RowOutcome::Valid { row, .. } => row,
            RowOutcome::Quarantined(p) => panic!("line {}: {p}", row.line),
        }
    }

    #[test]
    fn rows_inherit_from_the_elements_around_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cin.xml");
        let second = CHILD_A.replace("A1", "B2").replace("&", "");
        std::fs::write(&path, census(&format!("{CHILD_A}{second}"), "2025")).unwrap();
        let mut source = open(&path);
        let rows = read_all(&mut source).unwrap();
        assert_eq!(rows.len(), 10, "5 rows per child");
        let first: Vec<_> = rows[..5].iter().map(valid).collect();
        assert!(first.iter().all(|r| r.local_id == "A1"));
        assert_eq!(first[0].upn, None, "UN1 means no UPN");
        assert_eq!(first[0].date_of_birth, Some(date!(2015 - 04 - 03)));
        assert_eq!(first[1].attributes["disability"], "HAND,VIS");
        assert_eq!(first[2].events[0].event_type, "referral");
        assert_eq!(first[3].events[0].date, date!(2024 - 05 - 03));
        assert_eq!(first[4].events[0].date, date!(2024 - 09 - 01));
        assert_eq!(first[4].attributes["referred"], "2024-05-01");
        assert_eq!(valid(&rows[5]).local_id, "B2");
        // Line numbers are where each table element starts.
        let text = std::fs::read_to_string(&path).unwrap();
        let line_of = |needle: &str, nth: usize| {
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.contains(needle))
                .nth(nth)
                .unwrap()
                .0 as u64
                + 1
        };
        assert_eq!(rows[0].line, line_of("<ChildIdentifiers>", 0));
        assert_eq!(rows[4].line, line_of("<Assessments>", 1));
        assert_eq!(rows[9].line, line_of("<Assessments>", 3));
        assert_eq!(source.bytes_read(), source.total_bytes());
    }

    #[test]
    fn resuming_mid_record_gives_the_remaining_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cin.xml");
        std::fs::write(
            &path,
            census(&format!("{CHILD_A}{}", CHILD_A.replace("A1", "B2")), "2025"),
        )
        .unwrap();
        let all = read_all(&mut open(&path)).unwrap();
        for skip in [0, 3, 5, 7, 10] {
            let mut first = open(&path);
            for _ in 0..skip {
                first.next_row().unwrap().unwrap();
            }
            let at = first.position();
            let mut resumed = open(&path);
            resumed.resume(at).unwrap();
            let rest = read_all(&mut resumed).unwrap();
            assert_eq!(rest.len(), all.len() - skip, "after {skip}");
            assert_eq!(
                rest.iter().map(|r| r.line).collect::<Vec<_>>(),
                all[skip..].iter().map(|r| r.line).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn a_return_for_another_year_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cin.xml");
        std::fs::write(&path, census(CHILD_A, "2024")).unwrap();
        let err = read_all(&mut open(&path)).unwrap_err().to_string();
        assert!(err.contains("\"2024\", not 2025"), "{err}");
        assert!(err.contains("cin.xml"), "{err}");
    }

    #[test]
    fn malformed_xml_names_the_line_and_no_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cin.xml");
        let broken = CHILD_A.replace("</UPN>", "</UPX>");
        std::fs::write(&path, census(&broken, "2025")).unwrap();
        let err = read_all(&mut open(&path)).unwrap_err().to_string();
        let line = census(&broken, "2025")
            .lines()
            .position(|l| l.contains("</UPX>"))
            .unwrap()
            + 1;
        assert!(err.contains(&format!("line {line}")), "{err}");
        assert!(err.contains("malformed XML"), "{err}");
        assert!(!err.contains("A1") && !err.contains("2015-04-03"), "{err}");
        // A file cut off mid-record.
        let whole = census(CHILD_A, "2025");
        std::fs::write(&path, &whole[..whole.find("<CINdetails>").unwrap()]).unwrap();
        let err = read_all(&mut open(&path)).unwrap_err().to_string();
        assert!(err.contains("ends inside the <Child>"), "{err}");
        // Identifiers where entities, character references and tags go
        // wrong: the error names the line, never them.
        for broken in [
            CHILD_A.replace("A1", "&Quillfeather;"),
            CHILD_A.replace("A1", "Quill&#xZZZ;feather"),
            CHILD_A.replace("<UPN>UN1</UPN>", "<UPN>Quillfeather</UPN></Quillfeather>"),
            CHILD_A.replace("<UPN>UN1</UPN>", "<UPN>Quillfeather<</UPN>"),
        ] {
            std::fs::write(&path, census(&broken, "2025")).unwrap();
            let err = read_all(&mut open(&path)).unwrap_err().to_string();
            assert!(
                err.contains("malformed XML") && err.contains("line "),
                "{err}"
            );
            assert!(!err.contains("Quill") && !err.contains("feather"), "{err}");
        }
    }

    #[test]
    fn entities_and_character_references_are_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cin.xml");
        let child = CHILD_A.replace(
            "<Disability>VIS</Disability>",
            "<Disability>V&amp;&#73;S</Disability>",
        );
        std::fs::write(&path, census(&child, "2025")).unwrap();
        let rows = read_all(&mut open(&path)).unwrap();
        assert_eq!(valid(&rows[1]).attributes["disability"], "HAND,V&IS");
    }
}
