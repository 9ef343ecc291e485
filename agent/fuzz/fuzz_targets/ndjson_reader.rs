//! Fuzz the NDJSON reader with the FHIR format: the input is the Patient
//! file (read twice: for the person index, then as rows) and the Encounter
//! file. Run with `agent/fuzz/run`.
#![no_main]

use joinery_agent::config::{NationalFormat, SourceConfig};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch();
    std::fs::write(dir.join("Patient.ndjson"), data).expect("write the input");
    std::fs::write(dir.join("Encounter.ndjson"), data).expect("write the input");
    common::read_config(&SourceConfig::National(NationalFormat {
        format: "fhir".to_owned(),
        path: dir,
        dataset: "fhir".to_owned(),
        year: None,
        code_lists: None,
        files: Default::default(),
        snapshot: false,
    }));
});
