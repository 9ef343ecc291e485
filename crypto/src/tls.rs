//! rustls configurations for Joinery's mutual TLS.
//!
//! Invariants enforced here, for both ends: ring is the only crypto provider,
//! TLS 1.3 is the only protocol version, and the peer must present a
//! certificate chaining to the deployment CA (the gateway requires client
//! certificates; a client without one is refused on its first RPC), issued
//! for its role: `clientAuth` for agents and analysts, `serverAuth` for the
//! gateway (`RequireUsage`; webpki alone takes a certificate without the
//! extended key usage extension as good for any purpose).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls_pki_types::{ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The application protocol spoken over TLS: HTTP/2 for gRPC.
const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate file {path}: {detail}")]
    Certificates { path: PathBuf, detail: String },
    #[error("cannot read private key file {path}: {detail}")]
    PrivateKey { path: PathBuf, detail: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration rejected: {0}")]
    Config(#[from] rustls::Error),
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Where one party's TLS material lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The deployment CA certificate (PEM), used to verify the peer.
    pub ca: PathBuf,
    /// This party's certificate (PEM).
    pub cert: PathBuf,
    /// This party's private key (PEM).
    pub key: PathBuf,
    /// Certificate revocation list (PEM) from `joinery pki revoke`; the
    /// server refuses client certificates it lists.
    pub crl: Option<PathBuf>,
}

/// The crypto provider: ring, and nothing else.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server side: TLS 1.3 only, client certificate required and verified
/// against the deployment CA.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&files.ca)?), provider.clone());
    if let Some(crl) = &files.crl {
        let crls = CertificateRevocationListDer::pem_file_iter(crl)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Certificates {
                path: crl.clone(),
                detail: e.to_string(),
            })?;
        verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
    }
    let verifier = Arc::new(RequireUsage {
        inner: verifier.build()?,
        usage: Usage::Client,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(&files.cert)?, private_key(&files.key)?)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Client side: TLS 1.3 only, server verified against the deployment CA,
/// presenting this party's certificate.
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(RequireUsage {
        inner: WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(&files.ca)?),
            provider.clone(),
        )
        .build()?,
        usage: Usage::Server,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certificates(&files.cert)?, private_key(&files.key)?)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// What an end-entity certificate must be issued for.
#[derive(Debug, Clone, Copy)]
enum Usage {
    Client,
    Server,
}

/// Whether `der` carries the extended key usage for `usage`.
fn issued_for(der: &CertificateDer<'_>, usage: Usage) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    match cert.extended_key_usage() {
        Ok(Some(eku)) => match usage {
            Usage::Client => eku.value.client_auth,
            Usage::Server => eku.value.server_auth,
        },
        _ => false,
    }
}

/// The webpki verifier, and then the extended key usage required for the
/// peer's role.
#[derive(Debug)]
struct RequireUsage<V: ?Sized> {
    inner: Arc<V>,
    usage: Usage,
}

impl<V: ?Sized> RequireUsage<V> {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if issued_for(end_entity, self.usage) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose,
            ))
        }
    }
}

impl ClientCertVerifier for RequireUsage<dyn ClientCertVerifier> {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl ServerCertVerifier for RequireUsage<WebPkiServerVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// When a party's TLS material stops working, as Unix seconds: its own
/// certificate's and the CA's end of validity, and the revocation list's
/// next update (a peer may refuse it after that). For expiry metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub certificate: i64,
    pub ca: i64,
    pub crl_next_update: Option<i64>,
}

/// Reads [`Expiry`] from `files`.
pub fn expiry(files: &TlsFiles) -> Result<Expiry, TlsError> {
    let not_after = |path: &Path| -> Result<i64, TlsError> {
        let certs = certificates(path)?;
        let (_, cert) =
            X509Certificate::from_der(&certs[0]).map_err(|e| TlsError::Certificates {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
        Ok(cert.validity().not_after.timestamp())
    };
    let crl_next_update = match &files.crl {
        None => None,
        Some(path) => {
            let unreadable = |detail: String| TlsError::Certificates {
                path: path.clone(),
                detail,
            };
            let der = CertificateRevocationListDer::from_pem_file(path)
                .map_err(|e| unreadable(e.to_string()))?;
            let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
                .map_err(|e| unreadable(e.to_string()))?;
            crl.next_update().map(|t| t.timestamp())
        }
    };
    Ok(Expiry {
        certificate: not_after(&files.cert)?,
        ca: not_after(&files.ca)?,
        crl_next_update,
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path)? {
        store.add(cert)?;
    }
    Ok(store)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificates {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::PrivateKey {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PeerIdentity;
    use crate::pki::{CertificateAuthority, Validity};
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};

    /// A leaf signed by the CA in `dir`, with the given usages, written to
    /// `dir/<stem>.pem` and `.key`.
    fn leaf(
        dir: &Path,
        stem: &str,
        san: SanType,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> TlsFiles {
        let key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
        let issuer =
            Issuer::from_ca_cert_pem(&std::fs::read_to_string(dir.join("ca.pem")).unwrap(), key)
                .unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![san];
        params.extended_key_usages = usages;
        let leaf_key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&leaf_key, &issuer).unwrap();
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
            crl: None,
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, leaf_key.serialize_pem()).unwrap();
        files
    }

    /// A whole handshake in memory between the two configurations: Ok, or
    /// the first side's error.
    fn handshake(client: ClientConfig, server: ServerConfig) -> Result<(), rustls::Error> {
        let mut client =
            rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap())?;
        let mut server = rustls::ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            let mut bytes = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut bytes).unwrap();
            }
            server.read_tls(&mut bytes.as_slice()).unwrap();
            server.process_new_packets()?;
            let mut bytes = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut bytes).unwrap();
            }
            client.read_tls(&mut bytes.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                // The server judges the client's certificate on its last flight.
                let mut bytes = Vec::new();
                while client.wants_write() {
                    client.write_tls(&mut bytes).unwrap();
                }
                server.read_tls(&mut bytes.as_slice()).unwrap();
                server.process_new_packets()?;
                return Ok(());
            }
        }
        panic!("the handshake did not finish")
    }

    #[test]
    fn expiry_reads_the_certificates_and_the_revocation_list() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::init(dir.path(), "test CA", Validity::days_from_now(90).unwrap())
            .unwrap();
        let ca = CertificateAuthority::load(dir.path()).unwrap();
        let server = ca
            .issue_server(
                "gateway",
                &["localhost".to_owned()],
                Validity::days_from_now(7).unwrap(),
                dir.path(),
            )
            .unwrap();
        ca.publish_crl(dir.path()).unwrap();
        let mut files = TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: server.cert,
            key: server.key,
            crl: Some(dir.path().join(crate::pki::CRL_FILE)),
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let days = |t: i64| (t - now) as f64 / 86_400.0;
        let read = expiry(&files).unwrap();
        assert!((6.9..=7.1).contains(&days(read.certificate)), "{read:?}");
        assert!((89.9..=90.1).contains(&days(read.ca)), "{read:?}");
        let crl = read.crl_next_update.expect("a next update");
        assert!((29.9..=30.1).contains(&days(crl)), "{read:?}");
        files.crl = None;
        assert_eq!(expiry(&files).unwrap().crl_next_update, None);
    }

    #[test]
    fn each_side_must_hold_a_certificate_issued_for_its_role() {
        let dir = tempfile::tempdir().unwrap();
        let validity = Validity::days_from_now(1).unwrap();
        CertificateAuthority::init(dir.path(), "test CA", validity).unwrap();
        let ca = CertificateAuthority::load(dir.path()).unwrap();
        let server = ca
            .issue_server("gateway", &["localhost".to_owned()], validity, dir.path())
            .unwrap();
        let server = TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: server.cert,
            key: server.key,
            crl: None,
        };
        let agent = ca
            .issue_client(
                &PeerIdentity::Organisation("RX9".parse().unwrap()),
                validity,
                dir.path(),
            )
            .unwrap();
        let agent = TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: agent.cert,
            key: agent.key,
            crl: None,
        };
        let san = |uri: &str| SanType::URI(uri.try_into().unwrap());
        let dns = SanType::DnsName("localhost".try_into().unwrap());

        handshake(
            client_config(&agent).unwrap(),
            server_config(&server).unwrap(),
        )
        .expect("the deployment's own certificates");
        for (name, usages) in [
            ("no-usage", vec![]),
            ("server-usage", vec![ExtendedKeyUsagePurpose::ServerAuth]),
        ] {
            let client = leaf(dir.path(), name, san("urn:joinery:org:RX9"), usages);
            let refused = handshake(
                client_config(&client).unwrap(),
                server_config(&server).unwrap(),
            );
            assert!(
                matches!(
                    refused,
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::InvalidPurpose
                            | CertificateError::InvalidPurposeContext { .. }
                    ))
                ),
                "client certificate with {name}: {refused:?}"
            );
        }
        for (name, usages) in [
            ("gateway-no-usage", vec![]),
            (
                "gateway-client-usage",
                vec![ExtendedKeyUsagePurpose::ClientAuth],
            ),
        ] {
            let gateway = leaf(dir.path(), name, dns.clone(), usages);
            let refused = handshake(
                client_config(&agent).unwrap(),
                server_config(&gateway).unwrap(),
            );
            assert!(
                matches!(
                    refused,
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::InvalidPurpose
                            | CertificateError::InvalidPurposeContext { .. }
                    ))
                ),
                "gateway certificate with {name}: {refused:?}"
            );
        }
    }
}
