//! `joinery-bench chaos`: the synthetic agencies' agents (separate
//! processes) deliver through a fault-injecting TCP proxy to a gateway process
//! while, at random moments, an agent is killed with SIGKILL and started
//! again, the gateway is killed and restarted, every connection through the
//! proxy is cut, and (with `--postgres-restarts`) PostgreSQL is restarted.
//! After the last fault the agents drain; then every usable source row must
//! be stored exactly once. Exits 1 when a row is lost or doubled.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use joinery_agent::source::Source;
use joinery_agent::source::csv::CsvSource;
use joinery_gateway::storage::Storage;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{ServerProcess, append, create_sandbox, csv_agent, free_port, signal_process};
use crate::sandbox::write_agent_config;

#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// Approximate number of source rows, across the agencies.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Agents killed with SIGKILL (and started again).
    #[arg(long, default_value_t = 10)]
    agent_kills: u32,
    /// Gateway crashes (SIGKILL) and restarts.
    #[arg(long, default_value_t = 3)]
    gateway_restarts: u32,
    /// Times every connection between agents and gateway is cut.
    #[arg(long, default_value_t = 3)]
    cuts: u32,
    /// Store in this PostgreSQL database (a scratch one) instead of SQLite.
    #[arg(long)]
    postgres_url: Option<String>,
    /// PostgreSQL restarts (by `pg_ctlcluster`, on this machine); needs
    /// `--postgres-url`.
    #[arg(long, default_value_t = 0)]
    postgres_restarts: u32,
    /// Records per batch: small batches give more to interrupt.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Longest pause between faults, in milliseconds (each is random up to it).
    #[arg(long, default_value_t = 800)]
    max_pause_ms: u64,
    /// Seed for the data and the fault schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep the deployment (logs, spools, database) in this directory.
    #[arg(long)]
    keep: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    AgentKill,
    GatewayRestart,
    Cut,
    PostgresRestart,
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    if args.postgres_restarts > 0 && args.postgres_url.is_none() {
        bail!("--postgres-restarts needs --postgres-url");
    }
    let scratch = tempfile::Builder::new()
        .prefix("joinery-chaos-")
        .tempdir()?;
    let root = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => scratch.path().to_owned(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);

    // The synthetic population: about 2.2 rows per child across the agencies.
    let reference = time::OffsetDateTime::now_utc().date();
    let children = (args.records * 10 / 22).max(1);
    let synth = crate::synth::generate(
        &root.join("synth"),
        &crate::synth::Population::tidy(children, args.seed, reference),
    )?;
    let organisations: Vec<&str> = synth
        .extracts
        .iter()
        .map(|(a, _, _)| a.organisation)
        .collect();
    let deployment = create_sandbox(&root, &organisations)?;

    // The gateway on a fixed port (restarts reuse it), behind the proxy.
    let listen = free_port()?;
    let data_dir = root.join("gateway");
    let gateway_log = root.join("gateway.log");
    let database_url = args.postgres_url.clone();
    let start_gateway = || {
        ServerProcess::start(
            &deployment,
            &listen,
            &data_dir,
            database_url.as_deref(),
            Some(&gateway_log),
            &[],
        )
    };
    let mut gateway = start_gateway()?;
    let proxy = CuttableProxy::start(&listen).await?;

    let mut agents = Vec::new();
    for (agency, extract, mapping) in &synth.extracts {
        let mut config = csv_agent(
            &deployment,
            agency.organisation,
            &proxy.address,
            extract,
            mapping,
        )?;
        config.batch_size = args.batch_size;
        config.retry_for_secs = 3600;
        let path = root
            .join("agents")
            .join(format!("{}.yaml", agency.organisation));
        write_agent_config(&path, &config)?;
        agents.push(AgentProcess {
            organisation: agency.organisation,
            dataset: agency.dataset,
            extract: extract.clone(),
            mapping: mapping.clone(),
            quarantine_report: config
                .quarantine_dir
                .join(format!("{}.quarantine.csv", agency.dataset)),
            config: path,
            log: root.join(format!("agent-{}.log", agency.organisation)),
            child: None,
            done: false,
            starts: 0,
        });
    }
    println!(
        "bench chaos: {} rows from {} agencies, batch size {}, storing in {}; faults: {} agent kills, {} gateway restarts, {} cuts, {} PostgreSQL restarts",
        synth.rows,
        agents.len(),
        args.batch_size,
        if args.postgres_url.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        args.agent_kills,
        args.gateway_restarts,
        args.cuts,
        args.postgres_restarts,
    );

    let mut faults = Vec::new();
    for (fault, n) in [
        (Fault::AgentKill, args.agent_kills),
        (Fault::GatewayRestart, args.gateway_restarts),
        (Fault::Cut, args.cuts),
        (Fault::PostgresRestart, args.postgres_restarts),
    ] {
        faults.extend(std::iter::repeat_n(fault, n as usize));
    }
    faults.shuffle(&mut rng);

    let started = Instant::now();
    for agent in &mut agents {
        agent.spawn()?;
    }
    let mut applied_while_delivering = 0;
    for fault in &faults {
        let pause = rng.random_range(0..=args.max_pause_ms.max(1));
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let delivering = poll(&mut agents)?;
        if delivering > 0 {
            applied_while_delivering += 1;
        }
        match fault {
            Fault::AgentKill => {
                let running: Vec<usize> = (0..agents.len())
                    .filter(|&i| agents[i].child.is_some())
                    .collect();
                if let Some(&i) = running.get(rng.random_range(0..running.len().max(1))) {
                    agents[i].kill();
                    agents[i].spawn()?;
                }
            }
            Fault::GatewayRestart => {
                gateway.stop("KILL");
                gateway = restart(&start_gateway).await?;
            }
            Fault::Cut => proxy.cut(),
            Fault::PostgresRestart => restart_postgres()?,
        }
    }
    let last_fault = Instant::now();
    let faults_took = started.elapsed();

    // Drain: every agent runs until it has delivered everything.
    while poll(&mut agents)? > 0 {
        if last_fault.elapsed() > Duration::from_secs(3600) {
            bail!("the agents did not drain within an hour of the last fault");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain = last_fault.elapsed();
    let total = started.elapsed();
    let gateway_peak = gateway.peak_rss_kib();
    gateway.stop("TERM");

    // Every usable row exactly once.
    let storage = Storage::open(
        &args
            .postgres_url
            .clone()
            .unwrap_or_else(|| Storage::sqlite_url(&data_dir)),
    )
    .await?;
    let mut expected_total = 0;
    let mut stored_total = 0;
    let mut lost = 0;
    let mut doubled = 0;
    for agent in &agents {
        let expected = agent.usable_rows(reference)?;
        let stored = storage
            .stored_source_rows(agent.organisation, agent.dataset)
            .await?;
        let distinct: BTreeSet<u64> = stored.iter().copied().collect();
        lost += expected.difference(&distinct).count();
        doubled += stored.len() - distinct.len();
        let extra = distinct.difference(&expected).count();
        if extra > 0 {
            bail!(
                "{}: {extra} stored rows are not usable rows of the extract",
                agent.organisation
            );
        }
        expected_total += expected.len();
        stored_total += stored.len();
    }
    let resent = storage.duplicate_batches().await?;
    let agent_starts: u32 = agents.iter().map(|a| a.starts).sum();

    println!(
        "faults applied: {} in {:.1} s ({} while agents were delivering); agent processes started: {agent_starts}",
        faults.len(),
        faults_took.as_secs_f64(),
        applied_while_delivering
    );
    println!(
        "rows usable {expected_total}, stored {stored_total}: lost {lost}, doubled {doubled}; batches resent and recognised as duplicates: {resent}"
    );
    println!(
        "drain after the last fault {:.1} s; total {:.1} s = {:.0} records/s under faults; gateway peak RSS {} MiB",
        drain.as_secs_f64(),
        total.as_secs_f64(),
        stored_total as f64 / total.as_secs_f64(),
        gateway_peak.map_or("?".to_owned(), |k| (k / 1024).to_string()),
    );
    if args.keep.is_some() {
        println!("deployment kept in {}", root.display());
    }
    if lost > 0 || doubled > 0 {
        println!("FAILED: every row must be stored exactly once");
        return Ok(ExitCode::FAILURE);
    }
    println!("exactly once: every usable row stored once");
    Ok(ExitCode::SUCCESS)
}

/// One agency's agent, run as `joinery agent run` until it has delivered
/// everything.
struct AgentProcess {
    organisation: &'static str,
    dataset: &'static str,
    extract: PathBuf,
    mapping: PathBuf,
    quarantine_report: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    done: bool,
    starts: u32,
}

impl AgentProcess {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new(super::joinery_binary()?)
            .args(["agent", "run", "--no-progress", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(append(&self.log)?)
            .stderr(append(&self.log)?)
            .stdin(Stdio::null())
            .spawn()
            .context("starting an agent")?;
        self.child = Some(child);
        self.done = false;
        self.starts += 1;
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_process(child.id(), "KILL");
            let _ = child.wait();
        }
    }

    /// Source lines that must arrive: every row but those the agent
    /// quarantined (its report, appended to across restarts).
    fn usable_rows(&self, today: time::Date) -> anyhow::Result<BTreeSet<u64>> {
        let mapping = joinery_agent::mapping::Mapping::load(&self.mapping)?;
        let mut source = CsvSource::open(&self.extract, &mapping, &self.mapping, today)?;
        let mut lines = BTreeSet::new();
        while let Some(row) = source.next_row() {
            lines.insert(row?.line);
        }
        let mut report = csv::Reader::from_path(&self.quarantine_report)
            .with_context(|| format!("reading {}", self.quarantine_report.display()))?;
        for record in report.records() {
            let record = record?;
            if record.get(2) == Some(joinery_agent::quarantine::QUARANTINED) {
                let line: u64 = record.get(1).unwrap_or_default().parse()?;
                lines.remove(&line);
            }
        }
        Ok(lines)
    }
}

/// Reaps agents that exited: done when they delivered everything (exit 0,
/// or 3 with rows quarantined); started again when they failed. Returns how
/// many are still delivering.
fn poll(agents: &mut [AgentProcess]) -> anyhow::Result<usize> {
    for agent in agents.iter_mut() {
        let Some(child) = agent.child.as_mut() else {
            continue;
        };
        if let Some(status) = child.try_wait()? {
            agent.child = None;
            match status.code() {
                Some(
                    joinery_agent::summary::EXIT_OK | joinery_agent::summary::EXIT_QUARANTINED,
                ) => agent.done = true,
                Some(joinery_agent::summary::EXIT_REJECTED) => bail!(
                    "{}: the gateway rejected batches (see {})",
                    agent.organisation,
                    agent.log.display()
                ),
                _ => agent.spawn()?,
            }
        }
    }
    Ok(agents.iter().filter(|a| !a.done).count())
}

/// Starts the gateway again, retrying while its port is still held.
async fn restart(
    start: &impl Fn() -> anyhow::Result<ServerProcess>,
) -> anyhow::Result<ServerProcess> {
    let mut attempts = 0;
    loop {
        match start() {
            Ok(gateway) => return Ok(gateway),
            Err(e) if attempts < 50 => {
                attempts += 1;
                tracing::debug!(error = %e, "gateway restart failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn restart_postgres() -> anyhow::Result<()> {
    let version = std::fs::read_dir("/etc/postgresql")
        .context("PostgreSQL restarts need a local cluster under /etc/postgresql")?
        .next()
        .context("no cluster under /etc/postgresql")??
        .file_name();
    let status = Command::new("pg_ctlcluster")
        .arg("--skip-systemctl-redirect")
        .arg(&version)
        .args(["main", "restart"])
        .stdout(Stdio::null())
        .status()
        .context("running pg_ctlcluster")?;
    if !status.success() {
        bail!("pg_ctlcluster could not restart PostgreSQL");
    }
    Ok(())
}

/// A TCP proxy whose open connections can all be cut at once (new ones are
/// accepted again).
struct CuttableProxy {
    address: String,
    cut: Arc<tokio::sync::Notify>,
}

impl CuttableProxy {
    async fn start(target: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let cut = Arc::new(tokio::sync::Notify::new());
        let cutter = cut.clone();
        let target = target.to_owned();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                let cutter = cutter.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cutter.notified() => {}
                    }
                });
            }
        });
        Ok(Self { address, cut })
    }

    fn cut(&self) {
        self.cut.notify_waiters();
    }
}
