//! rustls configurations for Joinery's mutual TLS.
//!
//! Invariants enforced here, for both ends: ring is the only crypto provider,
//! TLS 1.3 is the only protocol version, and the peer must present a
//! certificate chaining to the deployment CA (the gateway requires client
//! certificates; a client without one is refused on its first RPC).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

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
    #[error("client certificate verifier: {0}")]
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
    let verifier = verifier.build()?;
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
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(certificates(&files.cert)?, private_key(&files.key)?)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
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
