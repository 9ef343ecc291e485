//! One module per `joinery` subcommand: argument parsing and output at the
//! binary's edge; the work is done by the library crates.

pub mod agent;
pub mod audit;
pub mod bench;
pub mod console;
pub mod demo;
pub mod gateway;
pub mod keyholder;
pub mod pki;
pub mod policy;
pub mod probe;
pub mod query;
pub mod reference;
pub mod synth;

use std::path::PathBuf;

use joinery_crypto::tls::TlsFiles;

/// This party's mutual-TLS credentials on the command line (gateway and clients alike).
#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    /// Deployment CA certificate: the other side's certificate must chain to it.
    #[arg(long, env = "JOINERY_TLS_CA")]
    tls_ca: PathBuf,
    /// This party's certificate (joinery pki server for the gateway; joinery pki issue
    /// --org or --analyst for agencies and analysts).
    #[arg(long, env = "JOINERY_TLS_CERT")]
    tls_cert: PathBuf,
    /// Its private key.
    #[arg(long, env = "JOINERY_TLS_KEY")]
    tls_key: PathBuf,
}

impl TlsArgs {
    pub fn files(&self, crl: Option<PathBuf>) -> TlsFiles {
        TlsFiles {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            crl,
        }
    }
}
