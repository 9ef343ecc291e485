//! Fuzz the XML reader with the CIN census format: malformed XML, entities,
//! deep nesting, records without identifiers. Run with `agent/fuzz/run`.
#![no_main]

use joinery_agent::config::{NationalFormat, SourceConfig};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch().join("cin_census.xml");
    std::fs::write(&path, data).expect("write the input");
    common::read_config(&SourceConfig::National(NationalFormat {
        format: "cin_census".to_owned(),
        path,
        dataset: "cin".to_owned(),
        year: Some(2026),
        code_lists: None,
        files: Default::default(),
        snapshot: false,
    }));
});
