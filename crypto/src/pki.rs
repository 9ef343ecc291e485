//! The deployment's private certificate authority (`joinery pki`).
//!
//! One CA per deployment signs short-lived leaf certificates: one per agency
//! agent (exactly one URI SAN, `urn:joinery:org:CODE`), one per analyst
//! (`urn:joinery:analyst:NAME`) and one for each gateway host. Private keys are
//! written with mode 0600; the CA never issues a certificate that it would not
//! itself accept.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime};

use crate::identity::PeerIdentity;

/// File names inside a PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
/// The certificate revocation list the gateway loads (`--tls-crl`).
pub const CRL_FILE: &str = "crl.pem";
/// The serial numbers revoked so far, one hex serial per line.
pub const REVOKED_FILE: &str = "revoked.txt";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source} (an existing file is never overwritten)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not hold a usable PEM certificate or key: {source}")]
    Parse { path: PathBuf, source: rcgen::Error },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("a lifetime must be at least one day, got {0} days")]
    Lifetime(i64),
    #[error("the system random number generator failed")]
    Random,
    #[error("{path} is not a PEM certificate")]
    NotACertificate { path: PathBuf },
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From a minute ago (tolerating small clock skew) for `days` days.
    pub fn days_from_now(days: i64) -> Result<Self, PkiError> {
        if days < 1 {
            return Err(PkiError::Lifetime(days));
        }
        let now = OffsetDateTime::now_utc();
        Ok(Self {
            not_before: now - Duration::minutes(1),
            not_after: now + Duration::days(days),
        })
    }

    /// Whole days between the two bounds.
    pub fn lifetime_days(&self) -> i64 {
        (self.not_after - self.not_before).whole_days()
    }
}

/// A certificate and private key written to disk.
#[derive(Debug, Clone)]
pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub validity: Validity,
}

/// The deployment CA, loaded from (or created in) a PKI directory.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// Creates a new CA in `dir` (`ca.pem`, and `ca.key` with mode 0600).
    pub fn init(dir: &Path, name: &str, validity: Validity) -> Result<IssuedFiles, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;
        write_pair(
            &dir.join(CA_CERT_FILE),
            &cert.pem(),
            &dir.join(CA_KEY_FILE),
            &key,
            validity,
        )
    }

    /// Loads the CA from `dir`.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| PkiError::Parse {
            path: key_path,
            source,
        })?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|source| PkiError::Parse {
                path: cert_path,
                source,
            })?;
        Ok(Self { issuer })
    }

    /// Issues a client certificate for an organisation or analyst into
    /// `out_dir/<code-or-name>.pem` and `.key`.
    pub fn issue_client(
        &self,
        identity: &PeerIdentity,
        validity: Validity,
        out_dir: &Path,
    ) -> Result<IssuedFiles, PkiError> {
        // Round-trip through the parser so only acceptable identities are issued.
        let identity = PeerIdentity::from_uri(&identity.to_uri())?;
        let (label, stem) = match &identity {
            PeerIdentity::Organisation(code) => (format!("Joinery agent {code}"), code.to_string()),
            PeerIdentity::Analyst(name) => {
                (format!("Joinery analyst {name}"), format!("analyst-{name}"))
            }
            PeerIdentity::Gateway(name) => {
                (format!("Joinery gateway {name}"), format!("gateway-{name}"))
            }
        };
        let mut params = leaf_params(&label, validity)?;
        params.subject_alt_names = vec![SanType::URI(identity.to_uri().try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(
            params,
            &out_dir.join(format!("{stem}.pem")),
            &out_dir.join(format!("{stem}.key")),
            validity,
        )
    }

    /// Issues a server certificate for `hosts` (DNS names or IP addresses)
    /// into `out_dir/<service>.pem` and `<service>.key`: the gateway's, or
    /// a keyholder's.
    pub fn issue_server(
        &self,
        service: &str,
        hosts: &[String],
        validity: Validity,
        out_dir: &Path,
    ) -> Result<IssuedFiles, PkiError> {
        let label = format!(
            "Joinery {service} {}",
            hosts.first().map_or("", String::as_str)
        );
        let mut params = leaf_params(&label, validity)?;
        params.subject_alt_names = CertificateParams::new(hosts.to_vec())?.subject_alt_names;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(
            params,
            &out_dir.join(format!("{service}.pem")),
            &out_dir.join(format!("{service}.key")),
            validity,
        )
    }

    /// Revokes the certificate at `cert` and rewrites `dir/crl.pem` with every
    /// revoked serial (valid for 30 days; revoke again or re-run to renew it).
    /// Returns the number of certificates now revoked.
    pub fn revoke(&self, dir: &Path, cert: &Path) -> Result<usize, PkiError> {
        use rustls_pki_types::pem::PemObject;
        use x509_parser::prelude::FromDer;
        let der = rustls_pki_types::CertificateDer::from_pem_file(cert).map_err(|_| {
            PkiError::NotACertificate {
                path: cert.to_owned(),
            }
        })?;
        let (_, parsed) = x509_parser::prelude::X509Certificate::from_der(&der).map_err(|_| {
            PkiError::NotACertificate {
                path: cert.to_owned(),
            }
        })?;
        let serial = hex::encode(parsed.raw_serial());
        let list_path = dir.join(REVOKED_FILE);
        let mut serials = revoked_serials(dir)?;
        if !serials.contains(&serial) {
            serials.push(serial);
        }
        crate::files::write_public(&list_path, (serials.join("\n") + "\n").as_bytes(), true)
            .map_err(|source| PkiError::Write {
                path: list_path.clone(),
                source,
            })?;
        self.publish_crl(dir)?;
        Ok(serials.len())
    }

    /// Writes `dir/crl.pem` listing every serial in `dir/revoked.txt` (none
    /// if it does not exist), valid for 30 days.
    pub fn publish_crl(&self, dir: &Path) -> Result<(), PkiError> {
        let serials = revoked_serials(dir)?;
        let now = OffsetDateTime::now_utc();
        let revoked = serials
            .iter()
            .filter_map(|s| hex::decode(s).ok())
            .map(|bytes| rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::minutes(1),
            next_update: now + Duration::days(30),
            crl_number: SerialNumber::from((now.unix_timestamp() as u64).to_be_bytes().to_vec()),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer)?;
        let path = dir.join(CRL_FILE);
        crate::files::write_public(&path, crl.pem()?.as_bytes(), true)
            .map_err(|source| PkiError::Write { path, source })
    }

    fn sign(
        &self,
        params: CertificateParams,
        cert_path: &Path,
        key_path: &Path,
        validity: Validity,
    ) -> Result<IssuedFiles, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        write_pair(cert_path, &cert.pem(), key_path, &key, validity)
    }
}

/// The serials listed in `dir/revoked.txt` (none if it does not exist).
fn revoked_serials(dir: &Path) -> Result<Vec<String>, PkiError> {
    let path = dir.join(REVOKED_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(PkiError::Read { path, source }),
    }
}

fn leaf_params(common_name: &str, validity: Validity) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    Ok(params)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Joinery deployment");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    bytes[0] &= 0x7f; // keep it positive
    Ok(SerialNumber::from_slice(&bytes))
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write_pair(
    cert_path: &Path,
    cert_pem: &str,
    key_path: &Path,
    key: &KeyPair,
    validity: Validity,
) -> Result<IssuedFiles, PkiError> {
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| PkiError::Write { path, source }
    };
    crate::files::write_private(key_path, key.serialize_pem().as_bytes(), false)
        .map_err(write_err(key_path))?;
    crate::files::write_public(cert_path, cert_pem.as_bytes(), false)
        .map_err(write_err(cert_path))?;
    Ok(IssuedFiles {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        validity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::{CertificateDer, pem::PemObject};

    #[test]
    fn issued_client_certificate_names_exactly_its_organisation() {
        let dir = tempfile::tempdir().unwrap();
        let validity = Validity::days_from_now(30).unwrap();
        CertificateAuthority::init(dir.path(), "test CA", validity).unwrap();
        let ca = CertificateAuthority::load(dir.path()).unwrap();
        let issued = ca
            .issue_client(
                &PeerIdentity::Organisation("E10000002".parse().unwrap()),
                validity,
                &dir.path().join("agents"),
            )
            .unwrap();
        let der = CertificateDer::from_pem_file(&issued.cert).unwrap();
        assert_eq!(
            PeerIdentity::from_certificate(&der).unwrap(),
            PeerIdentity::Organisation("E10000002".parse().unwrap())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&issued.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn refuses_invalid_identities_and_zero_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let validity = Validity::days_from_now(1).unwrap();
        CertificateAuthority::init(dir.path(), "test CA", validity).unwrap();
        let ca = CertificateAuthority::load(dir.path()).unwrap();
        let err = ca
            .issue_client(
                &PeerIdentity::Analyst("bad name!".into()),
                validity,
                dir.path(),
            )
            .unwrap_err();
        assert!(matches!(err, PkiError::Identity(_)));
        // A bad organisation code cannot even be made.
        assert!(
            "bad code"
                .parse::<crate::identity::OrganisationCode>()
                .is_err()
        );
        assert!(matches!(
            Validity::days_from_now(0),
            Err(PkiError::Lifetime(0))
        ));
    }

    #[test]
    fn revoking_writes_a_crl_listing_every_revoked_serial() {
        let dir = tempfile::tempdir().unwrap();
        let validity = Validity::days_from_now(5).unwrap();
        CertificateAuthority::init(dir.path(), "test CA", validity).unwrap();
        let ca = CertificateAuthority::load(dir.path()).unwrap();
        let a = ca
            .issue_client(
                &PeerIdentity::Organisation("AA1".parse().unwrap()),
                validity,
                dir.path(),
            )
            .unwrap();
        let b = ca
            .issue_client(
                &PeerIdentity::Organisation("BB2".parse().unwrap()),
                validity,
                dir.path(),
            )
            .unwrap();
        assert_eq!(ca.revoke(dir.path(), &a.cert).unwrap(), 1);
        assert_eq!(
            ca.revoke(dir.path(), &a.cert).unwrap(),
            1,
            "revoking twice lists it once"
        );
        assert_eq!(ca.revoke(dir.path(), &b.cert).unwrap(), 2);
        let crl = std::fs::read_to_string(dir.path().join(CRL_FILE)).unwrap();
        assert!(crl.contains("BEGIN X509 CRL"));
    }

    #[test]
    fn init_refuses_to_overwrite_an_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        let validity = Validity::days_from_now(1).unwrap();
        CertificateAuthority::init(dir.path(), "test CA", validity).unwrap();
        let err = CertificateAuthority::init(dir.path(), "test CA", validity).unwrap_err();
        assert!(matches!(err, PkiError::Write { .. }));
    }
}
