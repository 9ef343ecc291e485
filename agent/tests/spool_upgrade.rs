//! A spool written by an earlier release resumes under this one: the
//! checkpoints in `checkpoints.json` are in the layout agents have written
//! since the spool was introduced (one flat position per source: `byte`,
//! `line`, `record`, `within`), and each reader continues from its own
//! source's checkpoint at the row where the earlier run stopped.

use std::path::Path;

use joinery_agent::mapping::Mapping;
use joinery_agent::source::csv::CsvSource;
use joinery_agent::source::ndjson::NdjsonSource;
use joinery_agent::source::xml::{XmlSource, XmlTable};
use joinery_agent::source::{Source, SourceRow};
use joinery_agent::spool::Spool;
use time::macros::date;

const CSV: &str = "Child ID,DOB\nA1,03/04/2015\nA2,04/04/2015\nA3,05/04/2015\nA4,06/04/2015\n";

const NDJSON: &str = concat!(
    r#"{"resourceType":"Patient","id":"P1","birthDate":"2015-04-03"}"#,
    "\n",
    r#"{"resourceType":"Patient","id":"P2","birthDate":"2015-04-04"}"#,
    "\n",
    r#"{"resourceType":"Patient","id":"P3","birthDate":"2015-04-05"}"#,
    "\n",
);

fn child(id: &str) -> String {
    format!(
        "\n    <Child>\n      <ChildIdentifiers>\n        <LAchildID>{id}</LAchildID>\n      </ChildIdentifiers>\n      <CINdetails>\n        <CINreferralDate>2024-05-01</CINreferralDate>\n      </CINdetails>\n    </Child>"
    )
}

fn census() -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Message>\n  <Children>{}{}{}\n  </Children>\n</Message>\n",
        child("X1"),
        child("X2"),
        child("X3")
    )
}

/// `checkpoints.json` as agents before opaque positions wrote it, for the
/// three files after 2 CSV rows, 1 NDJSON line and 3 XML rows (the first
/// child's two and the second's first).
const OLD_CHECKPOINTS: &str = r#"{
  "council.csv": {"fingerprint":"f1","byte":41,"line":4,"record":3,"within":0,"sequence":1,"complete":false},
  "patients.ndjson": {"fingerprint":"f2","byte":62,"line":2,"record":1,"within":0,"sequence":1,"complete":false},
  "cin.xml": {"fingerprint":"f3","byte":264,"line":11,"record":1,"within":1,"sequence":1,"complete":false}
}"#;

/// Opens one of the test's files with its reader.
type Opener = fn(&Path) -> Box<dyn Source>;

fn mapping(text: &str) -> Mapping {
    serde_saphyr::from_str(text).unwrap()
}

fn open_csv(dir: &Path) -> Box<dyn Source> {
    let path = dir.join("council.csv");
    let mapping = mapping(
        "dataset: d\nfields:\n  local_id: Child ID\n  date_of_birth: { column: DOB, format: dd/mm/yyyy }\n",
    );
    Box::new(CsvSource::open(&path, &mapping, Path::new("m"), date!(2026 - 01 - 01)).unwrap())
}

fn open_ndjson(dir: &Path) -> Box<dyn Source> {
    let mapping = mapping(
        "dataset: d\nfields:\n  local_id: id\n  date_of_birth: { column: dob, format: iso }\n",
    );
    let columns = [
        ("id".to_owned(), "id".to_owned()),
        ("dob".to_owned(), "birthDate".to_owned()),
    ]
    .into();
    Box::new(
        NdjsonSource::open(
            &dir.join("patients.ndjson"),
            "Patient",
            &columns,
            &mapping,
            Path::new("m"),
            date!(2026 - 01 - 01),
        )
        .unwrap(),
    )
}

fn open_xml(dir: &Path) -> Box<dyn Source> {
    let table = |element: &str, text: &str| XmlTable {
        element: element.to_owned(),
        mapping: mapping(text),
    };
    let tables = vec![
        table(
            "ChildIdentifiers",
            "dataset: d\nfields:\n  local_id: LAchildID\n",
        ),
        table(
            "CINdetails",
            "dataset: d\nfields:\n  local_id: LAchildID\nevents:\n  - type: referral\n    date: { column: CINreferralDate, format: iso }\n",
        ),
    ];
    Box::new(
        XmlSource::open(
            &dir.join("cin.xml"),
            "Child",
            tables,
            None,
            Path::new("m"),
            date!(2026 - 01 - 01),
        )
        .unwrap(),
    )
}

fn rest(source: &mut dyn Source) -> Vec<u64> {
    let mut lines = Vec::new();
    while let Some(row) = source.next_row() {
        let row: SourceRow = row.unwrap();
        lines.push(row.line);
    }
    lines
}

#[test]
fn a_spool_from_an_earlier_release_resumes_every_reader_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("council.csv"), CSV).unwrap();
    std::fs::write(dir.path().join("patients.ndjson"), NDJSON).unwrap();
    std::fs::write(dir.path().join("cin.xml"), census()).unwrap();
    let spool_dir = dir.path().join("spool");
    std::fs::create_dir_all(&spool_dir).unwrap();
    std::fs::write(spool_dir.join("checkpoints.json"), OLD_CHECKPOINTS).unwrap();
    let spool = Spool::open(&spool_dir).unwrap();
    let readers: [(&str, Opener, usize); 3] = [
        ("council.csv", open_csv, 2),
        ("patients.ndjson", open_ndjson, 1),
        ("cin.xml", open_xml, 3),
    ];
    for (name, open, read_before) in readers {
        let all = rest(open(dir.path()).as_mut());
        let checkpoint = spool.checkpoint(name).expect("the old checkpoint loads");
        assert_eq!(checkpoint.sequence, 1);
        assert!(!checkpoint.complete);
        let mut resumed = open(dir.path());
        resumed.resume(checkpoint.at).unwrap();
        assert_eq!(
            rest(resumed.as_mut()),
            all[read_before..],
            "{name} resumes after its first {read_before} rows"
        );

        // And this release's own checkpoints, through the spool's JSON.
        let mut first = open(dir.path());
        for _ in 0..read_before {
            first.next_row().unwrap().unwrap();
        }
        let written = serde_json::to_string(&first.position()).unwrap();
        let mut resumed = open(dir.path());
        resumed
            .resume(serde_json::from_str(&written).unwrap())
            .unwrap();
        assert_eq!(
            rest(resumed.as_mut()),
            all[read_before..],
            "{name}: {written}"
        );
    }
}

/// A checkpoint that does not hold what its reader needs (written by
/// another kind of reader, or edited by hand) is refused, naming the file
/// and the way out, rather than read from a made-up place.
#[test]
fn a_checkpoint_its_reader_cannot_use_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("council.csv"), CSV).unwrap();
    let foreign = joinery_agent::source::Position::of(
        3,
        &serde_json::json!({"after": {"watermark": 7, "key": 7}}),
    );
    let err = open_csv(dir.path())
        .resume(foreign)
        .unwrap_err()
        .to_string();
    assert!(err.contains("council.csv"), "{err}");
    assert!(err.contains("joinery agent resend"), "{err}");
}
