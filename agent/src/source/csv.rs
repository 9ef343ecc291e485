//! Delimited text extracts read through a mapping file.
//!
//! Copes with what spreadsheets and reporting tools produce: a UTF-8 byte
//! order mark, CRLF line ends, `;` or tab separators (detected from the header
//! when the mapping does not say), and Windows-1252 text. A row with the
//! wrong number of fields — including one swallowed by an unbalanced quote —
//! is quarantined with its line numbers; reading continues. A header that
//! names a column twice is refused, a field over the limit quarantines its
//! row, a line over the limit stops the file.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::mapping::{Mapping, Resolved};
use crate::source::{
    LineLimited, Position, RawRow, ReadContext, Source, SourceError, file_fingerprint,
};

/// An open CSV extract with its mapping bound to the header.
pub struct CsvSource {
    path: PathBuf,
    reader: csv::Reader<LineLimited<BufReader<File>>>,
    mapping: Resolved,
    header_len: usize,
    total_bytes: u64,
    context: ReadContext,
    record: csv::ByteRecord,
}

impl CsvSource {
    /// Opens `path`, reads its header and binds `mapping` to it. Fails naming
    /// any column the mapping needs and the file lacks.
    pub fn open(
        path: &Path,
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
        let mut buffered = BufReader::with_capacity(256 * 1024, file);
        // A blank first line would let the reader take the first data row
        // for the header (and an error then show it).
        let start = buffered.fill_buf().map_err(open_err)?;
        let start = start.strip_prefix(b"\xef\xbb\xbf").unwrap_or(start);
        let first_line = start.split(|&b| b == b'\n').next().unwrap_or_default();
        if !start.is_empty() && first_line.iter().all(u8::is_ascii_whitespace) {
            return Err(SourceError::Header {
                path: path.to_owned(),
                detail: "line 1 is blank: the file must start with its header row".to_owned(),
            });
        }
        let delimiter = match mapping.delimiter {
            Some(d) => u8::try_from(d).map_err(|_| SourceError::Header {
                path: path.to_owned(),
                detail: "the mapping's delimiter must be a single ASCII character".to_owned(),
            })?,
            None => detect_delimiter(buffered.fill_buf().map_err(open_err)?),
        };
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            // Records end at LF only, so line numbers stay exact for CRLF
            // files; the CR is trimmed with the rest of the field's spaces.
            .terminator(csv::Terminator::Any(b'\n'))
            .has_headers(true)
            .from_reader(LineLimited::new(buffered, context.limits.max_line_bytes));
        let headers = reader.byte_headers().map_err(|e| SourceError::Header {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        if headers.is_empty() {
            return Err(SourceError::NoHeader {
                path: path.to_owned(),
            });
        }
        let headers: Vec<String> = headers
            .iter()
            .map(|h| decode(h).trim_start_matches('\u{feff}').to_owned())
            .collect();
        if let Some((first, second)) = duplicate(&headers) {
            return Err(SourceError::Header {
                path: path.to_owned(),
                detail: format!(
                    "columns {first} and {second} of the header row have the same name: each column must be named once"
                ),
            });
        }
        let resolved = mapping.resolve(&headers, mapping_path, path)?;
        Ok(Self {
            path: path.to_owned(),
            reader,
            mapping: resolved,
            header_len: headers.len(),
            total_bytes,
            context,
            record: csv::ByteRecord::new(),
        })
    }

    /// The mapping as bound to this file's header.
    pub fn mapping(&self) -> &Resolved {
        &self.mapping
    }
}

/// Where a CSV reader is: the next row's byte offset and line, and the
/// records (the header among them) read before it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CsvAt {
    byte: u64,
    line: u64,
    record: u64,
}

impl Source for CsvSource {
    /// Blank lines are skipped.
    fn next_raw(&mut self) -> Option<Result<RawRow, SourceError>> {
        loop {
            match self.read_row()? {
                Ok(None) => continue,
                Ok(Some(row)) => return Some(Ok(row)),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn position(&self) -> Position {
        let p = self.reader.position();
        Position::of(
            p.line(),
            &CsvAt {
                byte: p.byte(),
                line: p.line(),
                record: p.record(),
            },
        )
    }

    fn resume(&mut self, at: Position) -> Result<(), SourceError> {
        let at: CsvAt = at.state(&self.path)?;
        let mut position = csv::Position::new();
        position
            .set_byte(at.byte)
            .set_line(at.line)
            .set_record(at.record);
        self.reader.seek(position).map_err(|e| SourceError::Io {
            path: self.path.clone(),
            line: at.line,
            detail: e.to_string(),
        })
    }

    fn fingerprint(&self) -> String {
        file_fingerprint(&self.path)
    }

    fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    fn bytes_read(&self) -> u64 {
        self.reader.position().byte()
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

impl CsvSource {
    /// The next row; `Some(Ok(None))` for a blank line.
    fn read_row(&mut self) -> Option<Result<Option<RawRow>, SourceError>> {
        let start_line = self.reader.position().line();
        match self.reader.read_byte_record(&mut self.record) {
            Ok(false) => None,
            Ok(true) => {
                if self.record.len() == 1 && self.record[0].trim_ascii().is_empty() {
                    return Some(Ok(None));
                }
                let line = self.record.position().map_or(start_line, |p| p.line());
                let end_line = self.reader.position().line();
                if self.record.len() != self.header_len {
                    let span = if end_line > line + 1 {
                        format!(
                            " (the row runs from line {line} to line {}: probably an unbalanced quote)",
                            end_line - 1
                        )
                    } else {
                        String::new()
                    };
                    return Some(Ok(Some(RawRow::broken(
                        line,
                        format!(
                            "has {} fields but the header has {}{span}",
                            self.record.len(),
                            self.header_len
                        ),
                    ))));
                }
                let max_field = self.context.limits.max_field_bytes;
                if let Some(long) = self.record.iter().position(|f| f.len() > max_field) {
                    return Some(Ok(Some(RawRow::broken(
                        line,
                        format!(
                            "field {} is longer than {max_field} bytes (limits.max_field_bytes)",
                            long + 1
                        ),
                    ))));
                }
                let fields: Vec<String> = self.record.iter().map(decode).collect();
                Some(Ok(Some(RawRow::of(line, 0, fields))))
            }
            Err(e) => {
                let line = e.position().map_or(start_line, |p| p.line());
                match e.into_kind() {
                    csv::ErrorKind::Io(io) => Some(Err(SourceError::Io {
                        path: self.path.clone(),
                        line,
                        detail: io.to_string(),
                    })),
                    // Other csv errors describe structure, not content: the
                    // row is quarantined and reading goes on.
                    _ => Some(Ok(Some(RawRow::broken(line, "is not well-formed CSV")))),
                }
            }
        }
    }
}

/// The first two columns (1-based) whose names are the same, ignoring case
/// and spaces around them; blank names may repeat.
fn duplicate(headers: &[String]) -> Option<(usize, usize)> {
    let names: Vec<String> = headers.iter().map(|h| h.trim().to_lowercase()).collect();
    names.iter().enumerate().find_map(|(second, name)| {
        (!name.is_empty())
            .then(|| names[..second].iter().position(|n| n == name))
            .flatten()
            .map(|first| (first + 1, second + 1))
    })
}

/// The separator used by the header line: `;` or tab if either appears more
/// often than `,`, else `,`.
fn detect_delimiter(start: &[u8]) -> u8 {
    let header = start.split(|&b| b == b'\n').next().unwrap_or(start);
    let count = |d: u8| header.iter().filter(|&&b| b == d).count();
    let (commas, semicolons, tabs) = (count(b','), count(b';'), count(b'\t'));
    if semicolons > commas && semicolons >= tabs {
        b';'
    } else if tabs > commas {
        b'\t'
    } else {
        b','
    }
}

/// UTF-8 when it is; otherwise Windows-1252 (as Excel saves "CSV").
fn decode(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.iter().map(|&b| windows_1252(b)).collect(),
    }
}

fn windows_1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    match b {
        0x80..=0x9f => HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::RowOutcome;
    use crate::source::SourceRow;
    use time::macros::date;

    const MAPPING: &str = "dataset: d\nfields:\n  local_id: Child ID\n  family_name: Surname\n  date_of_birth: { column: DOB, format: dd/mm/yyyy }\n";

    fn read_all(csv_bytes: &[u8]) -> Vec<SourceRow> {
        read_with(csv_bytes, date!(2026 - 01 - 01).into()).unwrap()
    }

    /// Every row of `csv_bytes` read under `context`, having checked the
    /// whole file was read; or the error that stopped it.
    fn read_with(csv_bytes: &[u8], context: ReadContext) -> Result<Vec<SourceRow>, String> {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d.csv");
        let map = dir.path().join("m.yaml");
        std::fs::write(&data, csv_bytes).unwrap();
        std::fs::write(&map, MAPPING).unwrap();
        let mapping = Mapping::load(&map).unwrap();
        let mut source =
            CsvSource::open(&data, &mapping, &map, context).map_err(|e| e.to_string())?;
        let mut rows = Vec::new();
        while let Some(row) = source.next_row() {
            rows.push(row.map_err(|e| e.to_string())?);
        }
        assert_eq!(source.bytes_read(), source.total_bytes());
        Ok(rows)
    }

    fn family(row: &SourceRow) -> Option<&str> {
        match &row.outcome {
            RowOutcome::Valid { row, .. } => row.family_name.as_deref(),
            RowOutcome::Quarantined(_) => None,
        }
    }

    /// `csv_bytes` read under small limits (a 200-byte line, a 40-byte
    /// field).
    fn read_limited(csv_bytes: &[u8]) -> Result<Vec<SourceRow>, String> {
        read_with(
            csv_bytes,
            ReadContext {
                today: date!(2026 - 01 - 01),
                limits: crate::source::InputLimits {
                    max_line_bytes: 200,
                    max_field_bytes: 40,
                },
            },
        )
    }

    fn problem(row: &SourceRow) -> String {
        match &row.outcome {
            RowOutcome::Quarantined(p) => p.to_string(),
            RowOutcome::Valid { .. } => String::new(),
        }
    }

    #[test]
    fn limits_duplicate_columns_and_control_characters() {
        let canary = "Quillfeatherington";
        // A field over the limit: its row is quarantined, reading goes on.
        let rows = read_limited(
            format!(
                "Child ID,Surname,DOB\nA1,{},01/02/2015\nA2,Jones,01/02/2015\n",
                canary.repeat(3)
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            problem(&rows[0]),
            "row: field 2 is longer than 40 bytes (limits.max_field_bytes)"
        );
        assert_eq!(family(&rows[1]), Some("JONES"));
        // A line over the limit stops the file, naming it and the limit.
        let err = read_limited(
            format!(
                "Child ID,Surname,DOB\nA1,Smith,01/02/2015\nA2,\"{}\",01/02/2015\n",
                canary.repeat(20)
            )
            .as_bytes(),
        )
        .unwrap_err();
        assert!(
            err.contains("d.csv") && err.contains("limits.max_line_bytes"),
            "{err}"
        );
        assert!(!err.contains("Quillfeather"), "{err}");
        // So does a header over the limit.
        let err = read_limited(format!("Child ID,Surname,DOB,{}\n", canary.repeat(20)).as_bytes())
            .unwrap_err();
        assert!(
            err.contains("limits.max_line_bytes") && !err.contains("Quillfeather"),
            "{err}"
        );
        // A column named twice.
        let err =
            read_limited(b"Child ID,Surname,DOB,surname \nA1,Smith,01/02/2015,x\n").unwrap_err();
        assert!(
            err.contains("columns 2 and 4 of the header row have the same name"),
            "{err}"
        );
        // NUL or another control character in an identifying field.
        for (line, field) in [
            ("A1,Smi\u{0}th,01/02/2015", "family_name"),
            ("A\u{1b}1,Smith,01/02/2015", "local_id"),
            ("A1,Smith,01/02\u{7}/2015", "date_of_birth"),
        ] {
            let rows = read_limited(format!("Child ID,Surname,DOB\n{line}\n").as_bytes()).unwrap();
            assert_eq!(
                problem(&rows[0]),
                format!("{field}: contains a control character")
            );
        }
    }

    #[test]
    fn bom_crlf_and_semicolons() {
        let rows = read_all(b"\xef\xbb\xbfChild ID;Surname;DOB\r\nA1;Smith;01/02/2015\r\n\r\nA2;Jones;03/04/2016\r\n");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[1].line, 4);
        assert_eq!(family(&rows[1]), Some("JONES"));
    }

    #[test]
    fn windows_1252_names() {
        let rows = read_all(b"Child ID,Surname,DOB\nA1,Lef\xe8vre,01/02/2015\n");
        assert_eq!(family(&rows[0]), Some("LEFEVRE"));
    }

    #[test]
    fn wrong_field_counts_are_quarantined_and_reading_continues() {
        let rows = read_all(
            b"Child ID,Surname,DOB\nA1,Smith\nA2,Jones,01/02/2015,extra\nA3,Brown,01/02/2015\n",
        );
        assert_eq!(rows.len(), 3);
        for bad in &rows[..2] {
            let RowOutcome::Quarantined(p) = &bad.outcome else {
                panic!("should be quarantined")
            };
            assert!(p.what.contains("but the header has 3"), "{p}");
        }
        assert_eq!(rows[1].line, 3);
        assert_eq!(family(&rows[2]), Some("BROWN"));
    }

    #[test]
    fn an_unbalanced_quote_is_reported_with_its_line_span() {
        let rows = read_all(b"Child ID,Surname,DOB\nA1,\"Smith,01/02/2015\nA2,Jones,01/02/2015\nA3,Brown,01/02/2015\n");
        let RowOutcome::Quarantined(p) = &rows[0].outcome else {
            panic!("should be quarantined")
        };
        assert!(p.what.contains("unbalanced quote"), "{p}");
        assert!(!p.what.contains("Smith"), "{p}");
    }
}
