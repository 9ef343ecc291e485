//! Sources: readers that turn an agency's extract into canonical rows, each
//! tagged with its line number. `csv` is the first; the national formats
//! (SSDA903, CIN census, MHSDS, CSDS, FHIR, SQL) plug in beside it.

pub mod csv;

use crate::row::RowOutcome;

/// One source row after mapping.
#[derive(Debug, Clone)]
pub struct SourceRow {
    /// Line in the file where the row starts (1 = header).
    pub line: u64,
    pub outcome: RowOutcome,
}
