//! Ed25519 signatures on agreements (`joinery policy keygen / sign / verify`).
//!
//! A signature covers the SHA-256 digest of the agreement file's exact bytes,
//! so any edit after signing breaks every signature. Signatures live beside
//! the agreement in `FILE.sig` (YAML), one entry per signatory; the agreement
//! is in force only when every signatory it lists has signed.

use std::path::{Path, PathBuf};

use joinery_crypto::signing::{SigningKey, verify_hex};
use serde::{Deserialize, Serialize};

use crate::PolicyError;
use crate::model::Agreement;

/// Domain separation for agreement signatures.
const CONTEXT: &[u8] = b"joinery agreement signature v1\0";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    pub signatory: String,
    pub public_key: String,
    pub signature: String,
}

/// Where the signatures of `policy` are kept.
pub fn signature_path(policy: &Path) -> PathBuf {
    let mut name = policy.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// The 32 bytes of a hex-encoded Ed25519 public key.
pub fn public_key_bytes(hex_key: &str) -> Option<[u8; 32]> {
    hex::decode(hex_key.trim()).ok()?.try_into().ok()
}

/// Lowercase hex SHA-256 of the agreement file's bytes: its digest.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

fn message(digest_hex: &str) -> Vec<u8> {
    [CONTEXT, digest_hex.as_bytes()].concat()
}

/// Creates a signing key (PKCS#8, hex, mode 0600) at `out`; returns the public key in hex.
pub fn keygen(out: &Path) -> Result<String, PolicyError> {
    Ok(SigningKey::generate(out)?.public_hex())
}

/// Signs `policy` with the key at `key`, as the signatory that key belongs
/// to, adding (or replacing) that signatory's entry in `policy.sig`.
/// Returns the signatory's name.
pub fn sign(
    policy: &Path,
    agreement: &Agreement,
    bytes: &[u8],
    key: &Path,
) -> Result<String, PolicyError> {
    let pair = SigningKey::load(key)?;
    let public = pair.public_hex();
    let signatory = agreement
        .signatories
        .iter()
        .find(|s| s.public_key.trim().eq_ignore_ascii_case(&public))
        .ok_or_else(|| PolicyError::NotASignatory {
            key: key.to_owned(),
        })?;
    let signature = pair.sign_hex(&message(&digest(bytes)));
    let path = signature_path(policy);
    let mut entries = read_signatures(&path)?;
    entries.retain(|e| !e.public_key.eq_ignore_ascii_case(&public));
    entries.push(SignatureEntry {
        signatory: signatory.name.clone(),
        public_key: public,
        signature,
    });
    let text =
        serde_saphyr::to_string(&entries).map_err(|e| PolicyError::Serialize(e.to_string()))?;
    std::fs::write(&path, text).map_err(|source| PolicyError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(signatory.name.clone())
}

/// Reads `FILE.sig`; a missing file means no signatures.
pub fn read_signatures(path: &Path) -> Result<Vec<SignatureEntry>, PolicyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_saphyr::from_str(&text).map_err(|e| PolicyError::Signatures {
            path: path.to_owned(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(PolicyError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Who has validly signed, and who has not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    pub signed: Vec<String>,
    pub missing: Vec<String>,
}

impl Verification {
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && !self.signed.is_empty()
    }
}

/// Checks every signatory's signature over `bytes` against `entries`.
pub fn verify(agreement: &Agreement, bytes: &[u8], entries: &[SignatureEntry]) -> Verification {
    let message = message(&digest(bytes));
    let mut result = Verification::default();
    for signatory in &agreement.signatories {
        let valid = entries.iter().any(|entry| {
            entry
                .public_key
                .trim()
                .eq_ignore_ascii_case(signatory.public_key.trim())
                && verify_hex(&signatory.public_key, &message, &entry.signature)
        });
        if valid {
            result.signed.push(signatory.name.clone());
        } else {
            result.missing.push(signatory.name.clone());
        }
    }
    result
}
