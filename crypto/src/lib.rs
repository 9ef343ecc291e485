//! Cryptography shared by the Joinery agent and gateway, kept in one place:
//!
//! - [`keys`]: 256-bit secret keys in files (the agreement's linkage key, the
//!   gateway's re-keying key), written owner-only and never printed.
//! - [`pseudonym`]: keyed HMAC-SHA256 pseudonyms with HKDF domain separation.
//! - [`oblivious`]: pseudonyms computed with keyholders that never see the
//!   value (RFC 9497 oblivious pseudorandom function).
//! - [`identity`]: who a certificate names (an organisation or an analyst).
//! - [`tls`]: rustls configurations (ring provider only, TLS 1.3 only,
//!   client certificates required).
//! - [`pki`]: the deployment's private certificate authority.
//! - [`signing`]: Ed25519 keys and signatures (agreements, audit checkpoints).
//! - [`files`]: writing secret material owner-only.
//!
//! Invariants: ring is the cryptographic provider of TLS, HMAC and
//! signatures (the oblivious function needs group operations, which ring
//! does not offer: `voprf` over curve25519-dalek); secret keys are
//! never printed, logged or written readable by others; each use of a key
//! derives its own subkey (HKDF), so a pseudonym made for one purpose never
//! matches one made for another.

#![forbid(unsafe_code)]

pub mod identity;
pub mod keys;
pub mod oblivious;
pub mod pki;
pub mod pseudonym;
pub mod signing;
pub mod tls;

pub mod files;
