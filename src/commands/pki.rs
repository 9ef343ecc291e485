//! `joinery pki`: the deployment CA, agent, analyst, gateway and keyholder certificates,
//! and the agreement's linkage key.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use joinery_crypto::identity::PeerIdentity;
use joinery_crypto::keys::SecretKey;
use joinery_crypto::pki::{CertificateAuthority, IssuedFiles, Validity};

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create the deployment CA (ca.pem, and ca.key with mode 0600) in --dir.
    Init {
        #[command(flatten)]
        dir: PkiDir,
        /// The CA's common name.
        #[arg(long, default_value = "Joinery deployment CA")]
        name: String,
        /// Lifetime in days.
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Issue a client certificate: for an agency's agent (--org), an analyst
    /// (--analyst), or a gateway that answers from shards (--gateway).
    Issue {
        #[command(flatten)]
        dir: PkiDir,
        #[command(flatten)]
        who: ClientIdentity,
        /// Lifetime in days (short lifetimes limit the harm of a lost key).
        #[arg(long, default_value_t = 90)]
        days: i64,
        /// Where to write CODE.pem and CODE.key (default: --dir/agents,
        /// --dir/analysts or --dir/gateways).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Issue a server certificate: the gateway's (gateway.pem, gateway.key)
    /// or, with --service keyholder, a keyholder's (keyholder.pem, .key).
    Server {
        #[command(flatten)]
        dir: PkiDir,
        /// DNS name or IP address agents use to reach the server; repeat for
        /// several. A keyholder's first name is the one agreements list.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Which server the certificate is for.
        #[arg(long, value_enum, default_value = "gateway")]
        service: Service,
        /// Lifetime in days.
        #[arg(long, default_value_t = 90)]
        days: i64,
        /// Where to write the files (default: --dir/gateway, or
        /// --dir/keyholders/NAME for a keyholder).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a client certificate: add it to the revocation list (--dir/crl.pem)
    /// that the gateway loads with --tls-crl (it reloads the file when it changes).
    Revoke {
        #[command(flatten)]
        dir: PkiDir,
        /// The certificate to revoke (PEM).
        #[arg(long)]
        cert: PathBuf,
    },
    /// Create an agreement linkage key (256 bits, hex, mode 0600) for the agencies'
    /// agents. Share it between the agencies only, never with the gateway operator.
    LinkageKey {
        /// File to create (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

/// The servers of a deployment.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Service {
    Gateway,
    Keyholder,
}

#[derive(Debug, Args)]
pub struct PkiDir {
    /// Directory holding the CA (ca.pem, ca.key).
    #[arg(long, default_value = "pki")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ClientIdentity {
    /// The agency's ODS or local-authority code, e.g. RX9 or E08000035.
    #[arg(long)]
    org: Option<joinery_crypto::identity::OrganisationCode>,
    /// The analyst's user name.
    #[arg(long)]
    analyst: Option<String>,
    /// The name of a gateway that answers from the gateways holding each
    /// shard of the population (`gateway serve --answer-from-shards`).
    #[arg(long)]
    gateway: Option<String>,
}

impl PkiCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Init { dir, name, days } => {
                let issued =
                    CertificateAuthority::init(&dir.dir, &name, Validity::days_from_now(days)?)?;
                CertificateAuthority::load(&dir.dir)?.publish_crl(&dir.dir)?;
                report("deployment CA", &issued);
                println!(
                    "  revocation list: {} (empty; joinery pki revoke adds to it)",
                    dir.dir.join(joinery_crypto::pki::CRL_FILE).display()
                );
            }
            Self::Issue {
                dir,
                who,
                days,
                out,
            } => {
                let ca = CertificateAuthority::load(&dir.dir)?;
                let (identity, default_out) = match (who.org, who.analyst, who.gateway) {
                    (Some(code), ..) => (PeerIdentity::Organisation(code), dir.dir.join("agents")),
                    (None, Some(name), _) => {
                        (PeerIdentity::Analyst(name), dir.dir.join("analysts"))
                    }
                    (None, None, Some(name)) => {
                        (PeerIdentity::Gateway(name), dir.dir.join("gateways"))
                    }
                    (None, None, None) => {
                        anyhow::bail!("give --org CODE, --analyst NAME or --gateway NAME")
                    }
                };
                let issued = ca.issue_client(
                    &identity,
                    Validity::days_from_now(days)?,
                    &out.unwrap_or(default_out),
                )?;
                report(&format!("{identity} ({})", identity.to_uri()), &issued);
            }
            Self::Server {
                dir,
                names,
                service,
                days,
                out,
            } => {
                let ca = CertificateAuthority::load(&dir.dir)?;
                let (stem, default_out) = match service {
                    Service::Gateway => ("gateway", dir.dir.join("gateway")),
                    Service::Keyholder => ("keyholder", dir.dir.join("keyholders").join(&names[0])),
                };
                let issued = ca.issue_server(
                    stem,
                    &names,
                    Validity::days_from_now(days)?,
                    &out.unwrap_or(default_out),
                )?;
                report(&format!("{stem} {}", names.join(", ")), &issued);
            }
            Self::Revoke { dir, cert } => {
                let ca = CertificateAuthority::load(&dir.dir)?;
                let count = ca.revoke(&dir.dir, &cert)?;
                println!(
                    "revoked {}; {} now lists {count} revoked certificates (valid for 30 days: revoke or re-run to renew)",
                    cert.display(),
                    dir.dir.join(joinery_crypto::pki::CRL_FILE).display()
                );
            }
            Self::LinkageKey { out } => {
                SecretKey::generate()?.save(&out)?;
                println!("linkage key written to {} (mode 0600)", out.display());
                println!(
                    "give it to every agency's agent under this agreement; never to the gateway operator"
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn report(what: &str, issued: &IssuedFiles) {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    let date = |t: time::OffsetDateTime| t.format(&format).unwrap_or_default();
    println!("issued certificate for {what}");
    println!("  certificate: {}", issued.cert.display());
    println!("  private key: {} (mode 0600)", issued.key.display());
    println!(
        "  valid from {} until {} ({} days)",
        date(issued.validity.not_before),
        date(issued.validity.not_after),
        issued.validity.lifetime_days()
    );
}
