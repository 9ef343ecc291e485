//! `joinery-bench`: measurements. Figures go in notes, never asserted in tests.
//!
//! - `bench ingest`: records per second end to end, ack latency, the agent's
//!   pseudonymisation rate on one core, peak memory of agent and gateway
//!   (and with `--keyholders N`, through N keyholders).
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
//! - `bench region`: the whole system at a region's scale (ten million
//!   children), resumable step by step: ingest, full link, the incremental
//!   link of a delivery, answers, and each process's peak memory.
//! - `bench attack`: what the gateway's operator, holding the stored
//!   encodings and a plaintext register, could re-identify (frequency,
//!   date-part, graph matching and pattern-mining attacks), at several
//!   overlaps.
//!
//! `ingest` and `chaos` start a real gateway process over mutual TLS in a
//! throwaway deployment ([`Sandbox`]).

mod attack;
mod chaos;
mod dice;
mod ingest;
mod linkage;
mod query;
mod readers;
mod region;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use joinery_agent::AgentConfig;
use joinery_agent::config::{CsvFile, SourceConfig};

use crate::sandbox::{Sandbox, SandboxSpec};

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
    /// Attacks by the gateway's operator on the stored encodings: records re-identified.
    Attack(attack::AttackArgs),
    /// A region's scale, step by step and resumable: ingest, full link,
    /// incremental link of a delivery, answers, each process's memory.
    Region(region::RegionArgs),
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
            Self::Attack(args) => attack::run(args),
            Self::Region(args) => region::run(args).await,
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

/// A throwaway deployment ([`Sandbox`]) for `organisations`, its gateway
/// certificate for localhost.
fn create_sandbox(root: &Path, organisations: &[&str]) -> anyhow::Result<Sandbox> {
    Sandbox::create(
        root,
        &SandboxSpec {
            ca_name: "bench CA",
            validity_days: 1,
            server_names: &["localhost".to_owned()],
            organisations,
            analysts: &[],
        },
    )
}

/// `organisation`'s agent reading one CSV extract, for the gateway at
/// `address`.
fn csv_agent(
    sandbox: &Sandbox,
    organisation: &str,
    address: &str,
    extract: &Path,
    mapping: &Path,
) -> anyhow::Result<AgentConfig> {
    sandbox.agent_config(
        organisation,
        address,
        "localhost",
        vec![SourceConfig::Csv(CsvFile {
            path: extract.to_owned(),
            mapping: mapping.to_owned(),
            snapshot: false,
        })],
    )
}

/// A gateway or keyholder as its own process, so its memory is measured on
/// its own and it can be killed.
struct ServerProcess {
    child: std::process::Child,
    address: String,
}

impl ServerProcess {
    /// Starts `joinery gateway serve` on `listen` (port 0: any free port),
    /// with `extra` arguments, logging warnings to `log` (or the terminal).
    fn start(
        sandbox: &Sandbox,
        listen: &str,
        data_dir: &Path,
        database_url: Option<&str>,
        log: Option<&Path>,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let (cert, key) = sandbox.gateway_cert();
        let mut command = Command::new(joinery_binary()?);
        command
            .args(["gateway", "serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .arg("--agreements")
            .arg(sandbox.agreements_dir())
            .arg("--tls-ca")
            .arg(sandbox.ca())
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped());
        if let Some(url) = database_url {
            command.arg("--database-url").arg(url);
        }
        if let Some(log) = log {
            command.stderr(append(log)?);
        }
        Self::spawn(command, "gateway")
    }

    /// Starts `joinery keyholder serve` named `name` on any free port, for
    /// the sandbox's agreements, its certificate issued now; returns it and
    /// its data directory (its key).
    fn keyholder(sandbox: &Sandbox, name: &str) -> anyhow::Result<(Self, PathBuf)> {
        let (cert, _) = sandbox.keyholder_cert(name);
        joinery_crypto::pki::CertificateAuthority::load(&sandbox.pki())?.issue_server(
            "keyholder",
            &[name.to_owned()],
            joinery_crypto::pki::Validity::days_from_now(1)?,
            cert.parent()
                .context("a keyholder's certificate directory")?,
        )?;
        let data = sandbox.root().join("keyholder-data").join(name);
        joinery_gateway::keyholder::init(&data)?;
        let mut command = Command::new(joinery_binary()?);
        command
            .args(sandbox.keyholder_serve_args(name, &data))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped());
        Ok((Self::spawn(command, "keyholder")?, data))
    }

    /// Spawns `command` and waits for its `listening on ADDRESS` line.
    fn spawn(mut command: Command, what: &str) -> anyhow::Result<Self> {
        let mut child = command
            .spawn()
            .with_context(|| format!("starting the {what}"))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("{what} did not start: {line:?}"))?
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

/// A server the bench started does not outlive it: a step that fails
/// leaves no gateway behind holding the store's linkage lease (the next
/// run's gateway would never link).
impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop("KILL");
        }
    }
}

/// A loopback address (`127.0.0.1:PORT`) no one listens on now.
fn free_port() -> anyhow::Result<String> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(probe.local_addr()?.to_string())
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

/// How many values two sorted lists of distinct values share.
fn count_common<T: Ord>(a: &[T], b: &[T]) -> usize {
    let (mut i, mut j, mut common) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    common
}

/// Linkage parameters from a YAML file (as in an agreement), or the
/// canonical ones.
fn linkage_params(
    path: Option<&Path>,
    version: Option<u32>,
) -> anyhow::Result<joinery_linkage::LinkageParams> {
    let Some(path) = path else {
        return Ok(version.map_or_else(
            joinery_linkage::LinkageParams::canonical,
            joinery_linkage::LinkageParams::canonical_version,
        ));
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_str(&text)
        .with_context(|| format!("{}: not linkage parameters", path.display()))
}
