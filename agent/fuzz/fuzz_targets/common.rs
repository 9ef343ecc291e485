//! Shared by the reader fuzz targets: the input goes to a file (readers read
//! files), and every row is read; any bytes must give rows, quarantined rows
//! or an error naming the file — never a panic, a hang or unbounded memory.

use std::path::PathBuf;

use joinery_agent::source::Source;

/// A scratch directory for this fuzzing process.
pub fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("joinery-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

pub fn today() -> time::Date {
    time::Date::from_calendar_date(2026, time::Month::January, 1).expect("a date")
}

/// Reads every row of `source`, stopping at its first error.
pub fn drain(source: &mut dyn Source) {
    while let Some(row) = source.next_row() {
        if row.is_err() {
            break;
        }
    }
}

/// Opens every part of a configured source and reads it.
pub fn read_config(config: &joinery_agent::config::SourceConfig) {
    let formats = joinery_agent::format::Registry::built_in().expect("the built-in formats");
    if let Ok(parts) = joinery_agent::format::open(config, &formats, today()) {
        for mut part in parts {
            drain(part.source.as_mut());
        }
    }
}
