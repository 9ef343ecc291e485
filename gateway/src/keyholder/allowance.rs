//! How many elements each agency has had evaluated in the last day, kept in
//! an append-only ledger so a restart forgets nothing.
//!
//! The ledger is the keyholder's audit trail as well: one JSON line per
//! answered request (when, which organisation, which agreement, how many
//! elements), never a value.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The window an allowance is counted over.
pub const WINDOW_SECS: i64 = 24 * 60 * 60;

#[derive(Debug, thiserror::Error)]
pub enum AllowanceError {
    #[error("keyholder ledger {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("keyholder ledger {path} line {line}: not a ledger entry ({problem})")]
    Malformed {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error(
        "{organisation} has had {used} elements evaluated under {agreement} in the last 24 hours and asks for {asked} more: its allowance is {allowance} a day (the keyholder's operator may raise it with --daily-allowance)"
    )]
    Spent {
        organisation: String,
        agreement: String,
        used: u64,
        asked: u64,
        allowance: u64,
    },
}

/// One answered request, as the ledger keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// Unix seconds.
    at: i64,
    organisation: String,
    agreement: String,
    elements: u64,
}

/// Each agency's use under each agreement over the last day.
pub struct Allowance {
    daily: u64,
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    file: File,
    /// (organisation, agreement) -> (at, elements), oldest first.
    used: HashMap<(String, String), VecDeque<(i64, u64)>>,
}

impl Allowance {
    /// Opens (or creates) the ledger at `path`, reading the last day's use.
    pub fn open(path: &Path, daily: u64, now: i64) -> Result<Self, AllowanceError> {
        let io = |source| AllowanceError::Io {
            path: path.to_owned(),
            source,
        };
        let mut used: HashMap<(String, String), VecDeque<(i64, u64)>> = HashMap::new();
        match File::open(path) {
            Ok(file) => {
                for (index, line) in BufReader::new(file).lines().enumerate() {
                    let line = line.map_err(io)?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let entry: Entry =
                        serde_json::from_str(&line).map_err(|e| AllowanceError::Malformed {
                            path: path.to_owned(),
                            line: index + 1,
                            problem: e.to_string(),
                        })?;
                    if entry.at > now - WINDOW_SECS {
                        used.entry((entry.organisation, entry.agreement))
                            .or_default()
                            .push_back((entry.at, entry.elements));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(Self {
            daily,
            path: path.to_owned(),
            state: Mutex::new(State { file, used }),
        })
    }

    /// Charges `elements` to `organisation` under `agreement` at `now`, and
    /// writes it durably to the ledger, or refuses if the last day's use
    /// and these would pass the allowance. Returns the day's use after.
    pub fn charge(
        &self,
        organisation: &str,
        agreement: &str,
        elements: u64,
        now: i64,
    ) -> Result<u64, AllowanceError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let key = (organisation.to_owned(), agreement.to_owned());
        let history = state.used.entry(key).or_default();
        while history
            .front()
            .is_some_and(|(at, _)| *at <= now - WINDOW_SECS)
        {
            history.pop_front();
        }
        let used: u64 = history.iter().map(|(_, n)| n).sum();
        if used + elements > self.daily {
            return Err(AllowanceError::Spent {
                organisation: organisation.to_owned(),
                agreement: agreement.to_owned(),
                used,
                asked: elements,
                allowance: self.daily,
            });
        }
        history.push_back((now, elements));
        let entry = Entry {
            at: now,
            organisation: organisation.to_owned(),
            agreement: agreement.to_owned(),
            elements,
        };
        let mut line = serde_json::to_string(&entry).expect("a ledger entry serialises");
        line.push('\n');
        let io = |source| AllowanceError::Io {
            path: self.path.clone(),
            source,
        };
        state.file.write_all(line.as_bytes()).map_err(io)?;
        state.file.sync_data().map_err(io)?;
        Ok(used + elements)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_is_counted_per_agency_and_agreement_over_a_day_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let allowance = Allowance::open(&path, 100, 1_000).unwrap();
        assert_eq!(allowance.charge("RX9", "a", 60, 1_000).unwrap(), 60);
        assert_eq!(
            allowance.charge("LA1", "a", 100, 1_000).unwrap(),
            100,
            "another agency"
        );
        assert_eq!(
            allowance.charge("RX9", "b", 100, 1_000).unwrap(),
            100,
            "another agreement"
        );
        let spent = allowance.charge("RX9", "a", 41, 1_001).unwrap_err();
        assert!(
            spent.to_string().contains("has had 60 elements")
                && spent.to_string().contains("allowance is 100 a day"),
            "{spent}"
        );
        assert_eq!(allowance.charge("RX9", "a", 40, 1_001).unwrap(), 100);
        drop(allowance);

        // A restart reads the ledger: the day's use is still spent.
        let reopened = Allowance::open(&path, 100, 2_000).unwrap();
        assert!(reopened.charge("RX9", "a", 1, 2_000).is_err());
        // A day after the first charge, its 60 are free again.
        assert_eq!(
            reopened
                .charge("RX9", "a", 60, 1_000 + WINDOW_SECS)
                .unwrap(),
            100
        );
        assert!(
            reopened
                .charge("RX9", "a", 41, 1_001 + WINDOW_SECS)
                .is_err()
        );
        assert_eq!(
            reopened
                .charge("RX9", "a", 40, 1_001 + WINDOW_SECS)
                .unwrap(),
            100
        );
    }

    #[test]
    fn a_damaged_ledger_is_refused_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        std::fs::write(
            &path,
            "{\"at\":1,\"organisation\":\"RX9\",\"agreement\":\"a\",\"elements\":3}\nnonsense\n",
        )
        .unwrap();
        let error = Allowance::open(&path, 100, 2).err().unwrap();
        assert!(error.to_string().contains("line 2"), "{error}");
    }
}
