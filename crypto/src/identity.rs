//! Who a certificate names. Every Joinery client certificate carries exactly
//! one URI subject alternative name:
//!
//! - `urn:joinery:org:CODE` — an agency (ODS or local-authority code), which
//!   may deliver data;
//! - `urn:joinery:analyst:NAME` — an analyst, who may query;
//! - `urn:joinery:gateway:NAME` — a gateway answering from the gateways
//!   that each hold a shard of the population, which may ask them for
//!   their parts of a table (never for a released answer).
//!
//! The gateway takes identity only from the verified certificate, never from
//! anything the client sends.

use std::fmt;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const ORG_PREFIX: &str = "urn:joinery:org:";
const ANALYST_PREFIX: &str = "urn:joinery:analyst:";
const GATEWAY_PREFIX: &str = "urn:joinery:gateway:";

/// The party a certificate was issued to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    Organisation(OrganisationCode),
    Analyst(String),
    Gateway(String),
}

/// An agency's ODS or local-authority code, as its certificate names it:
/// 2–12 upper-case ASCII letters or digits, checked when made (or read from
/// configuration), so a held code is always well formed.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct OrganisationCode(String);

impl OrganisationCode {
    pub fn new(code: impl Into<String>) -> Result<Self, IdentityError> {
        let code = code.into();
        let ok = (2..=12).contains(&code.len())
            && code
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        ok.then_some(Self(code))
            .ok_or(IdentityError::BadOrganisationCode)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for OrganisationCode {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for OrganisationCode {
    type Err = IdentityError;
    fn from_str(code: &str) -> Result<Self, IdentityError> {
        Self::new(code)
    }
}

impl TryFrom<String> for OrganisationCode {
    type Error = IdentityError;
    fn try_from(code: String) -> Result<Self, IdentityError> {
        Self::new(code)
    }
}

impl From<OrganisationCode> for String {
    fn from(code: OrganisationCode) -> String {
        code.0
    }
}

impl PartialEq<OrganisationCode> for String {
    fn eq(&self, other: &OrganisationCode) -> bool {
        *self == other.0
    }
}

impl fmt::Display for OrganisationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("certificate is not valid X.509 DER")]
    NotX509,
    #[error("certificate must carry exactly one URI subject alternative name, found {0}")]
    UriSanCount(usize),
    #[error(
        "certificate URI SAN is not urn:joinery:org:CODE, urn:joinery:analyst:NAME or urn:joinery:gateway:NAME"
    )]
    UnknownUri,
    #[error(
        "organisation code must be 2 to 12 upper-case letters or digits (an ODS or local-authority code)"
    )]
    BadOrganisationCode,
    #[error("analyst name must be 1 to 64 letters, digits, '.', '-' or '_'")]
    BadAnalystName,
    #[error("gateway name must be 1 to 64 letters, digits, '.', '-' or '_'")]
    BadGatewayName,
}

/// Whether `name` is 1–64 of `[A-Za-z0-9._-]`, as analyst and gateway
/// names are.
fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Checks an analyst name: 1–64 of `[A-Za-z0-9._-]`.
pub fn validate_analyst_name(name: &str) -> Result<(), IdentityError> {
    is_name(name)
        .then_some(())
        .ok_or(IdentityError::BadAnalystName)
}

impl PeerIdentity {
    /// The URI to put in a certificate's subject alternative name.
    pub fn to_uri(&self) -> String {
        match self {
            Self::Organisation(code) => format!("{ORG_PREFIX}{code}"),
            Self::Analyst(name) => format!("{ANALYST_PREFIX}{name}"),
            Self::Gateway(name) => format!("{GATEWAY_PREFIX}{name}"),
        }
    }

    /// Parses a SAN URI.
    pub fn from_uri(uri: &str) -> Result<Self, IdentityError> {
        if let Some(code) = uri.strip_prefix(ORG_PREFIX) {
            Ok(Self::Organisation(OrganisationCode::new(code)?))
        } else if let Some(name) = uri.strip_prefix(ANALYST_PREFIX) {
            validate_analyst_name(name)?;
            Ok(Self::Analyst(name.to_owned()))
        } else if let Some(name) = uri.strip_prefix(GATEWAY_PREFIX) {
            is_name(name)
                .then(|| Self::Gateway(name.to_owned()))
                .ok_or(IdentityError::BadGatewayName)
        } else {
            Err(IdentityError::UnknownUri)
        }
    }

    /// Reads the identity from a DER certificate (already verified by TLS).
    pub fn from_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::NotX509)?;
        let uris: Vec<&str> = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(_) => return Err(IdentityError::NotX509),
        };
        match uris.as_slice() {
            [uri] => Self::from_uri(uri),
            other => Err(IdentityError::UriSanCount(other.len())),
        }
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Organisation(code) => write!(f, "organisation {code}"),
            Self::Analyst(name) => write!(f, "analyst {name}"),
            Self::Gateway(name) => write!(f, "gateway {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip() {
        for id in [
            PeerIdentity::Organisation("RXX01".parse().unwrap()),
            PeerIdentity::Analyst("a.analyst".into()),
            PeerIdentity::Gateway("answering-1".into()),
        ] {
            assert_eq!(PeerIdentity::from_uri(&id.to_uri()).unwrap(), id);
        }
    }

    #[test]
    fn rejects_bad_codes_and_foreign_uris() {
        assert_eq!(
            PeerIdentity::from_uri("urn:joinery:org:rx1"),
            Err(IdentityError::BadOrganisationCode)
        );
        assert_eq!(
            PeerIdentity::from_uri("urn:joinery:org:"),
            Err(IdentityError::BadOrganisationCode)
        );
        assert_eq!(
            PeerIdentity::from_uri("https://example.org"),
            Err(IdentityError::UnknownUri)
        );
        assert_eq!(
            PeerIdentity::from_uri("urn:joinery:analyst:a b"),
            Err(IdentityError::BadAnalystName)
        );
        assert_eq!(
            PeerIdentity::from_uri("urn:joinery:gateway:"),
            Err(IdentityError::BadGatewayName)
        );
    }
}
