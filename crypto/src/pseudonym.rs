//! Keyed pseudonyms: HMAC-SHA256 under a key derived with HKDF for one purpose.
//!
//! Agents pseudonymise identifiers under the agreement's linkage key; the
//! gateway re-keys what arrives under its own key. Each purpose ("nhs-number",
//! "local-id", ...) gets its own derived key, so a pseudonym of one kind can
//! never be confused with another, and neither layer alone can reverse one.

use ring::{hkdf, hmac};

use crate::keys::SecretKey;

/// Length of a pseudonym in bytes.
pub const PSEUDONYM_LEN: usize = 32;

/// A pseudonym: HMAC-SHA256 output.
pub type Pseudonym = [u8; PSEUDONYM_LEN];

/// Computes pseudonyms for one purpose under one root key.
#[derive(Clone)]
pub struct Pseudonymiser {
    key: hmac::Key,
}

impl Pseudonymiser {
    /// Derives the HMAC key for `purpose` from `root` with HKDF-SHA256.
    pub fn new(root: &SecretKey, purpose: &str) -> Self {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"joinery pseudonym v1");
        let prk = salt.extract(root.as_bytes());
        let info = [purpose.as_bytes()];
        let okm = prk
            .expand(&info, hmac::HMAC_SHA256)
            .expect("HMAC-SHA256 key length is a valid HKDF output length");
        Self {
            key: hmac::Key::from(okm),
        }
    }

    /// The pseudonym of `value` (already normalised by the caller).
    pub fn pseudonymise(&self, value: &[u8]) -> Pseudonym {
        let tag = hmac::sign(&self.key, value);
        tag.as_ref()
            .try_into()
            .expect("HMAC-SHA256 output is 32 bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_and_purpose_give_same_pseudonym() {
        let key = SecretKey::from_bytes([7; 32]);
        let a = Pseudonymiser::new(&key, "nhs-number").pseudonymise(b"9434765919");
        let b = Pseudonymiser::new(&key, "nhs-number").pseudonymise(b"9434765919");
        assert_eq!(a, b);
    }

    #[test]
    fn purpose_and_key_separate_domains() {
        let key = SecretKey::from_bytes([7; 32]);
        let nhs = Pseudonymiser::new(&key, "nhs-number").pseudonymise(b"123");
        let local = Pseudonymiser::new(&key, "local-id").pseudonymise(b"123");
        let other =
            Pseudonymiser::new(&SecretKey::from_bytes([8; 32]), "nhs-number").pseudonymise(b"123");
        assert_ne!(nhs, local);
        assert_ne!(nhs, other);
    }

    #[test]
    fn matches_rfc5869_derivation_with_hmac() {
        // Independent computation: HKDF-Extract then one HKDF-Expand block by hand.
        let root = SecretKey::from_bytes([1; 32]);
        let salt = hmac::Key::new(hmac::HMAC_SHA256, b"joinery pseudonym v1");
        let prk = hmac::sign(&salt, root.as_bytes());
        let prk_key = hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref());
        let okm = hmac::sign(&prk_key, b"local-id\x01");
        let expected = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, okm.as_ref()), b"abc");
        assert_eq!(
            Pseudonymiser::new(&root, "local-id").pseudonymise(b"abc"),
            expected.as_ref()
        );
    }
}
