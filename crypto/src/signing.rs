//! Ed25519 signing keys in owner-only files, and signature checks: used for
//! data-sharing agreement signatures and the gateway's audit checkpoints.

use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("cannot read signing key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write signing key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an Ed25519 signing key written by Joinery")]
    Malformed { path: PathBuf },
    #[error("Ed25519 key generation failed")]
    Generate,
}

/// An Ed25519 key pair (PKCS#8, stored as hex with mode 0600).
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// Creates a key at `path` (never overwriting one).
    pub fn generate(path: &Path) -> Result<Self, SigningError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| SigningError::Generate)?;
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| SigningError::Generate)?;
        let mut text = hex::encode(pkcs8.as_ref());
        text.push('\n');
        crate::files::write_private(path, text.as_bytes(), false).map_err(|source| {
            SigningError::Write {
                path: path.to_owned(),
                source,
            }
        })?;
        Ok(Self { pair })
    }

    pub fn load(path: &Path) -> Result<Self, SigningError> {
        let text = std::fs::read_to_string(path).map_err(|source| SigningError::Read {
            path: path.to_owned(),
            source,
        })?;
        let malformed = || SigningError::Malformed {
            path: path.to_owned(),
        };
        let bytes = hex::decode(text.trim()).map_err(|_| malformed())?;
        let pair = Ed25519KeyPair::from_pkcs8(&bytes).map_err(|_| malformed())?;
        Ok(Self { pair })
    }

    /// Loads the key at `path`, creating it first if there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, SigningError> {
        if path.exists() {
            Self::load(path)
        } else {
            Self::generate(path)
        }
    }

    /// The public key, lowercase hex (64 characters).
    pub fn public_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    /// The signature of `message`, lowercase hex.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.pair.sign(message).as_ref())
    }
}

/// Whether `signature_hex` is a valid signature of `message` by `public_hex`.
pub fn verify_hex(public_hex: &str, message: &[u8], signature_hex: &str) -> bool {
    let (Ok(public), Ok(signature)) = (
        hex::decode(public_hex.trim()),
        hex::decode(signature_hex.trim()),
    ) else {
        return false;
    };
    public.len() == 32
        && UnparsedPublicKey::new(&ED25519, public)
            .verify(message, &signature)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let key = SigningKey::generate(&path).unwrap();
        let signature = key.sign_hex(b"message");
        assert!(verify_hex(&key.public_hex(), b"message", &signature));
        assert!(!verify_hex(&key.public_hex(), b"messagE", &signature));
        assert_eq!(
            SigningKey::load(&path).unwrap().public_hex(),
            key.public_hex()
        );
        assert!(SigningKey::generate(&path).is_err(), "never overwrites");
    }
}
