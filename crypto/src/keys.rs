//! 256-bit secret keys stored as hex in owner-only files.
//!
//! A [`SecretKey`] never appears in `Debug` output, logs or errors.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

/// Length of every Joinery secret key, in bytes.
pub const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is not a {KEY_LEN}-byte key written as 64 hexadecimal characters")]
    Malformed { path: PathBuf },
    #[error(
        "key file {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}` (a file owned by root may also be group-readable, 640 or 440, as a Kubernetes Secret mounted with an fsGroup is)",
        path = path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("the system random number generator failed")]
    Random,
}

/// A 256-bit secret key.
#[derive(Clone)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        Ok(Self(bytes))
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Loads a key written by [`SecretKey::save`]. On Unix the file must not
    /// be readable by others, nor by its group unless root owns it (the rule
    /// PostgreSQL applies to its key: a root-owned key shared with a
    /// service's group, such as a Kubernetes Secret mounted with an
    /// `fsGroup`, is 0440).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let metadata = std::fs::metadata(path).map_err(|source| KeyError::Read {
                path: path.to_owned(),
                source,
            })?;
            let mode = metadata.mode();
            let closed = if metadata.uid() == 0 { 0o037 } else { 0o077 };
            if mode & closed != 0 {
                return Err(KeyError::TooOpen {
                    path: path.to_owned(),
                    mode: mode & 0o777,
                });
            }
        }
        let malformed = || KeyError::Malformed {
            path: path.to_owned(),
        };
        let bytes = hex::decode(text.trim()).map_err(|_| malformed())?;
        let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|_| malformed())?;
        Ok(Self(bytes))
    }

    /// Writes the key as hex with mode 0600. Never overwrites an existing key.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let mut text = hex::encode(self.0);
        text.push('\n');
        crate::files::write_private(path, text.as_bytes(), false).map_err(|source| {
            KeyError::Write {
                path: path.to_owned(),
                source,
            }
        })
    }

    /// Loads the key at `path`, or creates and saves a new one if there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        if path.exists() {
            Self::load(path)
        } else {
            let key = Self::generate()?;
            key.save(path)?;
            Ok(key)
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips_with_owner_only_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let key = SecretKey::generate().unwrap();
        key.save(&path).unwrap();
        assert_eq!(SecretKey::load(&path).unwrap().as_bytes(), key.as_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(key.save(&path), Err(KeyError::Write { .. })));
    }

    #[test]
    fn debug_output_hides_the_key() {
        let key = SecretKey::from_bytes([0xab; KEY_LEN]);
        assert!(!format!("{key:?}").contains("ab"));
    }

    #[cfg(unix)]
    #[test]
    fn refuses_group_readable_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        SecretKey::generate().unwrap().save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SecretKey::load(&path),
            Err(KeyError::TooOpen { .. })
        ));
    }

    /// A Kubernetes Secret mounted with an fsGroup: root's, mode 0440.
    #[cfg(unix)]
    #[test]
    fn a_root_owned_key_may_be_readable_by_its_group_and_no_other_key_may() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        SecretKey::generate().unwrap().save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
        if std::fs::metadata(&path).unwrap().uid() == 0 {
            SecretKey::load(&path).expect("root's group-readable key");
            std::os::unix::fs::chown(&path, Some(10001), None).unwrap();
        } else {
            eprintln!("not root: only the refusal of a user's group-readable key is tested here");
        }
        assert!(matches!(
            SecretKey::load(&path),
            Err(KeyError::TooOpen { .. })
        ));
    }

    #[test]
    fn rejects_malformed_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        crate::files::write_private(&path, b"not hex", false).unwrap();
        assert!(matches!(
            SecretKey::load(&path),
            Err(KeyError::Malformed { .. })
        ));
    }
}
