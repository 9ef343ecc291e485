//! The NHS pseudonyms an agent has made through its keyholders, kept
//! between runs, so an extract delivered again (a full snapshot each
//! month, a spool lost, a re-run) costs neither the group arithmetic nor
//! the keyholders' daily allowance for numbers seen before.
//!
//! One file per agreement and set of keyholders (their names and pinned
//! public keys, digested into its name), in the spool directory, mode
//! 0600: a sequence of fixed entries, each an NHS number's tag (HMAC under
//! the agency's own key for local ids, so the file holds no NHS number and
//! no key shared with another party computes a tag) and its pseudonym.
//! Entries are appended as they are made; a torn last entry (a crash
//! mid-write) is ignored, and losing the file only means asking again. A
//! key rotated anywhere — the linkage key, the agency's own, a keyholder's
//! — makes a new file or tags that match nothing, never a wrong pseudonym.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use joinery_crypto::keys::SecretKey;
use joinery_crypto::pseudonym::{PSEUDONYM_LEN, Pseudonym, Pseudonymiser};

/// Bytes of one entry: the tag, then the pseudonym.
const ENTRY: usize = 2 * PSEUDONYM_LEN;

#[derive(Debug, thiserror::Error)]
#[error("the keyholder pseudonym cache {path}: {source}")]
pub struct CacheError {
    path: PathBuf,
    source: std::io::Error,
}

/// The pseudonyms made so far, and the file they are appended to.
pub struct PseudonymCache {
    path: PathBuf,
    file: File,
    tags: Pseudonymiser,
    known: HashMap<Pseudonym, Pseudonym>,
}

impl PseudonymCache {
    /// Opens (or starts) the cache in `dir` for the keyholders `identity`
    /// describes (the agreement, each keyholder's name and public key),
    /// numbers tagged under `tag_key`.
    pub fn open(dir: &Path, identity: &[u8], tag_key: &SecretKey) -> Result<Self, CacheError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, identity);
        let path = dir.join(format!(
            "keyholder-pseudonyms-{}.bin",
            hex::encode(&digest.as_ref()[..8])
        ));
        let failed = |source| CacheError {
            path: path.clone(),
            source,
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                joinery_crypto::files::write_private(&path, &[], false).map_err(failed)?;
                Vec::new()
            }
            Err(e) => return Err(failed(e)),
        };
        let whole = bytes.len() - bytes.len() % ENTRY;
        let known = bytes[..whole]
            .chunks_exact(ENTRY)
            .map(|entry| {
                let (tag, pseudonym) = entry.split_at(PSEUDONYM_LEN);
                (
                    tag.try_into().expect("a tag's length"),
                    pseudonym.try_into().expect("a pseudonym's length"),
                )
            })
            .collect();
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(failed)?;
        // Drop a torn last entry before appending after it.
        file.set_len(whole as u64).map_err(failed)?;
        Ok(Self {
            path,
            file,
            tags: Pseudonymiser::new(tag_key, "agent keyholder pseudonym cache"),
            known,
        })
    }

    /// The pseudonym made earlier for `number`, if any.
    pub fn get(&self, number: &str) -> Option<Pseudonym> {
        self.known
            .get(&self.tags.pseudonymise(number.as_bytes()))
            .copied()
    }

    /// Keeps the pseudonyms just made.
    pub fn insert_all<'a>(
        &mut self,
        made: impl IntoIterator<Item = (&'a str, Pseudonym)>,
    ) -> Result<(), CacheError> {
        let mut entries = Vec::new();
        for (number, pseudonym) in made {
            let tag = self.tags.pseudonymise(number.as_bytes());
            if self.known.insert(tag, pseudonym).is_none() {
                entries.extend_from_slice(&tag);
                entries.extend_from_slice(&pseudonym);
            }
        }
        self.file.write_all(&entries).map_err(|source| CacheError {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_found_again_after_reopening_and_a_torn_entry_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::from_bytes([7; 32]);
        let mut cache = PseudonymCache::open(dir.path(), b"agreement a", &key).unwrap();
        assert_eq!(cache.get("9434765919"), None);
        cache
            .insert_all([("9434765919", [1; 32]), ("9434765870", [2; 32])])
            .unwrap();
        assert_eq!(cache.get("9434765919"), Some([1; 32]));
        let path = cache.path.clone();
        drop(cache);
        let text = std::fs::read(&path).unwrap();
        assert_eq!(text.len(), 2 * ENTRY);
        assert!(
            !text.windows(10).any(|w| w == b"9434765919"),
            "no NHS number in the file"
        );
        // A crash mid-append leaves half an entry.
        std::fs::write(&path, [&text[..], &[9; 10]].concat()).unwrap();
        let mut cache = PseudonymCache::open(dir.path(), b"agreement a", &key).unwrap();
        assert_eq!(cache.known.len(), 2);
        assert_eq!(cache.get("9434765870"), Some([2; 32]));
        cache.insert_all([("9434765901", [3; 32])]).unwrap();
        drop(cache);
        let cache = PseudonymCache::open(dir.path(), b"agreement a", &key).unwrap();
        assert_eq!(cache.get("9434765901"), Some([3; 32]));
        assert_eq!(std::fs::read(&path).unwrap().len(), 3 * ENTRY);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn other_keyholders_or_another_key_find_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::from_bytes([7; 32]);
        let mut cache = PseudonymCache::open(dir.path(), b"agreement a", &key).unwrap();
        cache.insert_all([("9434765919", [1; 32])]).unwrap();
        drop(cache);
        let other = PseudonymCache::open(dir.path(), b"agreement b", &key).unwrap();
        assert_eq!(other.get("9434765919"), None);
        let rekeyed =
            PseudonymCache::open(dir.path(), b"agreement a", &SecretKey::from_bytes([8; 32]))
                .unwrap();
        assert_eq!(rekeyed.get("9434765919"), None);
    }
}
