//! Fuzz the CSV reader (delimiter detection, BOM, quoting, Windows-1252,
//! short and long rows) through a mapping with every kind of field.
//! Run with `agent/fuzz/run` (see its header).
#![no_main]

use std::path::Path;

use joinery_agent::mapping::Mapping;
use joinery_agent::source::csv::CsvSource;
use libfuzzer_sys::fuzz_target;

mod common;

const MAPPING: &str = "\
dataset: d
fields:
  local_id: id
  nhs_number: nhs
  full_name: { column: name, order: surname_comma_forename }
  date_of_birth: { column: dob, format: dd/mm/yyyy }
  sex: sex
  postcode: postcode
  upn: upn
attributes:
  source: source
events:
  - type: referral
    date: { column: referred, format: iso }
optional_columns: [upn, source]
date_order:
  - { earlier: dob, later: referred }
";

fuzz_target!(|data: &[u8]| {
    let path = common::scratch().join("extract.csv");
    std::fs::write(&path, data).expect("write the input");
    let mapping: Mapping = serde_saphyr::from_str(MAPPING).expect("the mapping");
    if let Ok(mut source) = CsvSource::open(&path, &mapping, Path::new("mapping.yaml"), common::today()) {
        common::drain(&mut source);
    }
});
