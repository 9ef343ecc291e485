//! `joinery gateway serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use joinery_crypto::tls::TlsFiles;
use joinery_gateway::{Gateway, GatewayConfig, Limits};

#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Serve agents (Ingest) and analysts (Query) over mutual TLS until SIGTERM or Ctrl-C.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address for gRPC over mutual TLS.
    #[arg(long, default_value = "0.0.0.0:7443", env = "JOINERY_LISTEN")]
    listen: SocketAddr,
    /// Directory for the SQLite database and the gateway key.
    #[arg(long, default_value = "joinery-data", env = "JOINERY_DATA_DIR")]
    data_dir: PathBuf,
    /// PostgreSQL URL (postgres://user@host/db); default: SQLite in --data-dir.
    #[arg(long, env = "JOINERY_DATABASE_URL")]
    database_url: Option<String>,
    /// The gateway's re-keying key (default: --data-dir/gateway.key, created on
    /// first start). Every gateway of a deployment must use the same key.
    #[arg(long, env = "JOINERY_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Directory of signed agreements to enforce (*.yaml, each with its .sig)
    /// [default: --data-dir/agreements]. An invalid or unsigned file stops the gateway.
    #[arg(long, env = "JOINERY_AGREEMENTS")]
    agreements: Option<PathBuf>,
    /// Deployment CA certificate: client certificates must chain to it.
    #[arg(long, env = "JOINERY_TLS_CA")]
    tls_ca: PathBuf,
    /// The gateway's certificate (joinery pki server).
    #[arg(long, env = "JOINERY_TLS_CERT")]
    tls_cert: PathBuf,
    /// The gateway's private key.
    #[arg(long, env = "JOINERY_TLS_KEY")]
    tls_key: PathBuf,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long, env = "JOINERY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Largest gRPC message accepted, in bytes.
    #[arg(long, default_value_t = Limits::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Concurrent streams allowed on one connection.
    #[arg(long, default_value_t = Limits::default().max_streams_per_connection)]
    max_streams_per_connection: u32,
    /// Seconds a client has to complete the TLS handshake.
    #[arg(long, default_value_t = Limits::default().handshake_timeout.as_secs())]
    handshake_timeout_secs: u64,
    /// Open connections allowed at once.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
}

impl GatewayCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let Self::Serve(args) = self;
        if let Some(address) = args.metrics_listen {
            joinery_gateway::metrics::install_prometheus(address)
                .map_err(|e| anyhow::anyhow!("cannot serve metrics on {address}: {e}"))?;
        }
        let config = GatewayConfig {
            listen: args.listen,
            data_dir: args.data_dir,
            database_url: args.database_url,
            key_file: args.key_file,
            agreements_dir: args.agreements,
            tls: TlsFiles {
                ca: args.tls_ca,
                cert: args.tls_cert,
                key: args.tls_key,
            },
            limits: Limits {
                max_message_bytes: args.max_message_bytes,
                max_streams_per_connection: args.max_streams_per_connection,
                handshake_timeout: Duration::from_secs(args.handshake_timeout_secs),
                max_connections: args.max_connections,
            },
        };
        let gateway = Gateway::bind(config).await?;
        // Machine-readable line for scripts and tests that bind port 0.
        println!("listening on {}", gateway.local_addr());
        gateway.serve(shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested; finishing open streams");
}
