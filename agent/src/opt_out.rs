//! The National Data Opt-out: NHS numbers whose records must not be shared
//! for planning or research. The list is hashed as it is loaded (HMAC under a
//! key that lives only for this run), so the numbers are not kept in memory;
//! matching rows are withheld before anything is pseudonymised.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use joinery_crypto::keys::SecretKey;
use joinery_crypto::pseudonym::{Pseudonym, Pseudonymiser};

#[derive(Debug, thiserror::Error)]
pub enum OptOutError {
    #[error("cannot read the opt-out list {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opt-out list {path}, line {line}: {problem}")]
    Invalid {
        path: PathBuf,
        line: usize,
        problem: crate::validate::Invalid,
    },
    #[error(transparent)]
    Key(#[from] joinery_crypto::keys::KeyError),
}

pub struct OptOutList {
    hasher: Pseudonymiser,
    hashes: HashSet<Pseudonym>,
}

impl OptOutList {
    /// Reads one NHS number per line (spaces allowed; blank lines and `#`
    /// comments ignored). A line that is not a valid NHS number is an error
    /// naming the line, so a damaged list never silently lets records through.
    pub fn load(path: &Path) -> Result<Self, OptOutError> {
        let text = std::fs::read_to_string(path).map_err(|source| OptOutError::Read {
            path: path.to_owned(),
            source,
        })?;
        let hasher = Pseudonymiser::new(&SecretKey::generate()?, "opt-out");
        let mut hashes = HashSet::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let number =
                crate::validate::nhs_number(line).map_err(|problem| OptOutError::Invalid {
                    path: path.to_owned(),
                    line: index + 1,
                    problem,
                })?;
            hashes.insert(hasher.pseudonymise(number.as_bytes()));
        }
        Ok(Self { hasher, hashes })
    }

    /// Whether this (valid, normalised) NHS number has opted out.
    pub fn contains(&self, nhs_number: &str) -> bool {
        self.hashes
            .contains(&self.hasher.pseudonymise(nhs_number.as_bytes()))
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_listed_numbers_in_any_spacing_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opt-out.txt");
        std::fs::write(&path, "# national data opt-out\n943 476 5919\n\n").unwrap();
        let list = OptOutList::load(&path).unwrap();
        assert_eq!(list.len(), 1);
        assert!(list.contains("9434765919"));
        assert!(!list.contains("9990000018"));
        std::fs::write(&path, "9434765919\n9434765918\n").unwrap();
        let err = OptOutList::load(&path).err().unwrap().to_string();
        assert!(
            err.contains("line 2") && !err.contains("9434765918"),
            "{err}"
        );
    }
}
