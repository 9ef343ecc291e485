//! `joinery-bench`: measurements. Figures go in notes, never asserted in tests.
//!
//! - `bench ingest`: records per second end to end, ack latency, the agent's
//!   pseudonymisation rate on one core, peak memory of agent and gateway.
//! - `bench chaos`: several agents deliver while agents are killed, the
//!   gateway is killed and restarted, connections are cut (and PostgreSQL is
//!   restarted); then every record must be stored exactly once.
//! - `bench linkage`: fuzzy linkage accuracy (precision, recall, F1) and
//!   speed on extracts with a known truth.
//! - `bench dice`: the matcher's Dice kernel over every pair of two files of
//!   filters another tool made (anonlink's CLKs, in the comparison script).
//! - `bench readers`: rows per second of every reader and the peak memory
//!   of a process reading each, at two input sizes ten times apart.
//! - `bench query`: the latency of a stratified indicator table over a large
//!   linked population, on SQLite or PostgreSQL.
//!
//! `ingest` and `chaos` start a real gateway process over mutual TLS in a throwaway
//! deployment (this module).

mod chaos;
mod dice;
mod ingest;
mod linkage;
mod query;
mod readers;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use joinery_crypto::identity::PeerIdentity;
use joinery_crypto::keys::SecretKey;
use joinery_crypto::pki::{CertificateAuthority, Validity};

use crate::commands::demo::{Layout, write_signed_agreement};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Agent -> gateway ingest over mutual TLS: records/s, ack latency, peak memory.
    Ingest(ingest::IngestArgs),
    /// Faults while agents deliver; then every record stored exactly once?
    Chaos(chaos::ChaosArgs),
    /// Fuzzy linkage on extracts with a known truth: precision, recall, F1, speed.
    Linkage(linkage::LinkageArgs),
    /// The Dice kernel over every pair of two files of filters: pairs/s on one core.
    Dice(dice::DiceArgs),
    /// Every reader: rows/s and peak memory at two input sizes.
    Readers(readers::ReadersArgs),
    /// An analyst's stratified table over a large linked population: latency, memory.
    Query(query::QueryArgs),
}

impl BenchCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Ingest(args) => ingest::run(args).await,
            Self::Chaos(args) => chaos::run(args).await,
            Self::Linkage(args) => linkage::run(args).await,
            Self::Dice(args) => dice::run(args),
            Self::Readers(args) => readers::run(args),
            Self::Query(args) => query::run(args).await,
        }
    }
}

/// The `joinery` binary beside this one (`target/release/joinery` next to
/// `target/release/joinery-bench`): the gateways and agents a benchmark
/// runs are the ones that ship.
fn joinery_binary() -> anyhow::Result<std::path::PathBuf> {
    let here = std::env::current_exe()?;
    let beside = here.with_file_name(format!("joinery{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        beside.exists(),
        "no joinery binary beside {} (cargo build --release builds both)",
        here.display()
    );
    Ok(beside)
}

/// A throwaway deployment: CA, gateway certificate for localhost, agency
/// certificates, linkage key, a signed agreement and an empty opt-out list.
struct BenchDeployment {
    root: PathBuf,
    agreement: PathBuf,
}

impl BenchDeployment {
    fn create(root: &Path, organisations: &[&str]) -> anyhow::Result<Self> {
        let pki = root.join("pki");
        let validity = Validity::days_from_now(1)?;
        CertificateAuthority::init(&pki, "bench CA", validity)?;
        let ca = CertificateAuthority::load(&pki)?;
        ca.issue_server(&["localhost".into()], validity, &pki.join("gateway"))?;
        for organisation in organisations {
            ca.issue_client(
                &PeerIdentity::Organisation((*organisation).into()),
                validity,
                &pki.join("agents"),
            )?;
        }
        SecretKey::generate()?.save(&Layout::linkage_key(root))?;
        let agreement = write_signed_agreement(&root.join("agreements"))?;
        std::fs::write(root.join("opt-out.txt"), "")?;
        Ok(Self {
            root: root.to_owned(),
            agreement,
        })
    }

    /// Agent configurations are laid out as the demo lays them out.
    fn layout<'a>(&'a self, address: &'a str) -> Layout<'a> {
        Layout {
            dir: &self.root,
            address,
            server_name: "localhost",
            agreement: &self.agreement,
        }
    }

    fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
}

/// The gateway as its own process, so its memory is measured on its own and
/// it can be killed.
struct GatewayProcess {
    child: std::process::Child,
    address: String,
}

impl GatewayProcess {
    /// Starts `joinery gateway serve` on `listen` (port 0: any free port),
    /// logging warnings to `log` (or the terminal).
    fn start(
        deployment: &BenchDeployment,
        listen: &str,
        data_dir: &Path,
        database_url: Option<&str>,
        log: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let pki = deployment.pki();
        let mut command = Command::new(joinery_binary()?);
        command
            .args(["gateway", "serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .arg("--agreements")
            .arg(deployment.root.join("agreements"))
            .arg("--tls-ca")
            .arg(pki.join("ca.pem"))
            .arg("--tls-cert")
            .arg(pki.join("gateway/gateway.pem"))
            .arg("--tls-key")
            .arg(pki.join("gateway/gateway.key"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped());
        if let Some(url) = database_url {
            command.arg("--database-url").arg(url);
        }
        if let Some(log) = log {
            command.stderr(append(log)?);
        }
        let mut child = command.spawn().context("starting the gateway")?;
        let stdout = child.stdout.take().context("gateway stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("gateway did not start: {line:?}"))?
            .to_owned();
        Ok(Self { child, address })
    }

    fn peak_rss_kib(&self) -> Option<u64> {
        peak_rss_kib(self.child.id())
    }

    /// Stops it with `signal` (TERM: a clean shutdown; KILL: a crash).
    fn stop(&mut self, signal: &str) {
        signal_process(self.child.id(), signal);
        let _ = self.child.wait();
    }
}

/// Opens `path` for appending a process's output.
fn append(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

fn signal_process(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

/// Peak resident set size of a live process, from /proc (Linux).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// A process's resident memory now, in KiB (Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// One KiB figure of `/proc/PID/status`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
