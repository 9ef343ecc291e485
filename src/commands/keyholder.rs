//! `joinery keyholder serve`: an independent keyholder, through whom the
//! agencies of an agreement that names it make NHS-number pseudonyms
//! without it, or them, holding a key that computes one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use joinery_gateway::Limits;
use joinery_gateway::keyholder::{DEFAULT_DAILY_ALLOWANCE, KeyholderConfig, KeyholderServerHandle};

use crate::commands::TlsArgs;

#[derive(Debug, Subcommand)]
pub enum KeyholderCommand {
    /// Make a new keyholder's key (DIR/keyholder.key, mode 0600; never over
    /// an existing one). Back it up: every NHS pseudonym made through this
    /// keyholder depends on it, and `serve` will not start without it.
    Init {
        #[arg(long, env = "JOINERY_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Print the public key (64 hex digits) the agencies of an agreement pin
    /// in their agent configuration (`keyholders: [{ name, address,
    /// public_key }]`): their agents check every answer's proof against it.
    PublicKey {
        #[arg(long, env = "JOINERY_DATA_DIR")]
        data_dir: PathBuf,
        /// The agreement's id (each agreement has its own key).
        #[arg(long)]
        agreement: String,
    },
    /// Evaluate agencies' blinded NHS numbers over mutual TLS until SIGTERM or Ctrl-C.
    Serve(Box<ServeArgs>),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address for gRPC over mutual TLS.
    #[arg(long, default_value = "0.0.0.0:7600", env = "JOINERY_KEYHOLDER_LISTEN")]
    listen: SocketAddr,
    /// This keyholder's name, as agreements list it under
    /// linkage.nhs_number_keyholders and its certificate carries it.
    #[arg(long, env = "JOINERY_KEYHOLDER_NAME")]
    name: String,
    /// Holds keyholder.key (made by `joinery keyholder init`) and
    /// ledger.jsonl (every answer: when, which agency, which agreement, how
    /// many elements).
    #[arg(long, env = "JOINERY_DATA_DIR")]
    data_dir: PathBuf,
    /// The signed agreements (reloaded when they change).
    #[arg(long, env = "JOINERY_AGREEMENTS")]
    agreements: PathBuf,
    /// Elements one agency may have evaluated under one agreement in any 24
    /// hours: enough for its extract, and far too few to try every NHS number.
    #[arg(long, default_value_t = DEFAULT_DAILY_ALLOWANCE, env = "JOINERY_DAILY_ALLOWANCE")]
    daily_allowance: u64,
    #[command(flatten)]
    tls: TlsArgs,
    /// Certificate revocation list (joinery pki revoke writes pki/crl.pem).
    #[arg(long, env = "JOINERY_TLS_CRL")]
    tls_crl: Option<PathBuf>,
    /// Serve GET /metrics (Prometheus), /healthz and /readyz on this address.
    #[arg(long, env = "JOINERY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

impl KeyholderCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let args = match self {
            Self::Init { data_dir } => {
                let path = joinery_gateway::keyholder::init(&data_dir)?;
                println!("keyholder key written to {} (mode 0600)", path.display());
                println!(
                    "back it up: every NHS pseudonym made through this keyholder depends on it"
                );
                println!(
                    "give each agreement's agencies its public key to pin: joinery keyholder public-key --data-dir DIR --agreement ID"
                );
                return Ok(ExitCode::SUCCESS);
            }
            Self::PublicKey {
                data_dir,
                agreement,
            } => {
                let key = joinery_gateway::keyholder::public_key(&data_dir, &agreement)?;
                println!("{}", hex::encode(key));
                return Ok(ExitCode::SUCCESS);
            }
            Self::Serve(args) => args,
        };
        let recorder = match args.metrics_listen {
            Some(_) => Some(crate::observe::install()?),
            None => None,
        };
        let keyholder = KeyholderServerHandle::bind(KeyholderConfig {
            listen: args.listen,
            data_dir: args.data_dir,
            agreements_dir: args.agreements,
            name: args.name,
            tls: args.tls.files(args.tls_crl),
            daily_allowance: args.daily_allowance,
            limits: Limits::default(),
        })
        .await?;
        if let (Some(address), Some(recorder)) = (args.metrics_listen, recorder) {
            crate::observe::serve(address, recorder, crate::observe::always_ready()).await?;
        }
        if let Some(address) = keyholder.local_addr() {
            // Machine-readable line for scripts and tests that bind port 0.
            println!("listening on {address}");
        }
        keyholder
            .serve(crate::commands::gateway::shutdown_signal())
            .await?;
        Ok(ExitCode::SUCCESS)
    }
}
