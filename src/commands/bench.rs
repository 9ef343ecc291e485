//! `joinery bench`: measurements. Figures go in notes, never asserted in tests.
//!
//! `bench ingest` generates a synthetic council extract, starts a real gateway
//! process (SQLite, and PostgreSQL when `--postgres-url` is given) and runs the
//! agent in this process against it over mutual TLS, reporting records per
//! second end to end, ack latency percentiles, the agent's pseudonymisation
//! rate on one core, and peak resident memory of agent and gateway.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use joinery_agent::release::Releaser;
use joinery_agent::row::RowOutcome;
use joinery_agent::source::csv::CsvSource;
use joinery_crypto::identity::PeerIdentity;
use joinery_crypto::keys::SecretKey;
use joinery_crypto::pki::{CertificateAuthority, Validity};

use crate::commands::demo::{Layout, write_signed_agreement};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Agent -> gateway ingest over mutual TLS: records/s, ack latency, peak memory.
    Ingest {
        /// Approximate number of records to send.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Also measure against this PostgreSQL database: a scratch database, as the
        /// gateway creates its tables there and the run leaves its records behind.
        #[arg(long)]
        postgres_url: Option<String>,
        /// Records per batch.
        #[arg(long, default_value_t = 1000)]
        batch_size: usize,
    },
}

const ORG: &str = "E08000099";

impl BenchCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let Self::Ingest {
            records,
            postgres_url,
            batch_size,
        } = self;
        let dir = tempfile::Builder::new()
            .prefix("joinery-bench-")
            .tempdir()?;
        let root = dir.path();
        let pki = root.join("pki");
        let validity = Validity::days_from_now(1)?;
        CertificateAuthority::init(&pki, "bench CA", validity)?;
        let ca = CertificateAuthority::load(&pki)?;
        ca.issue_server(&["localhost".into()], validity, &pki.join("gateway"))?;
        ca.issue_client(
            &PeerIdentity::Organisation(ORG.into()),
            validity,
            &pki.join("agents"),
        )?;
        SecretKey::generate()?.save(&Layout::linkage_key(root))?;
        let agreement = write_signed_agreement(&root.join("agreements"))?;
        std::fs::write(root.join("opt-out.txt"), "")?;

        // The council layout has about 1.1 rows per child.
        let reference = time::OffsetDateTime::now_utc().date();
        let children = (records * 10 / 11).max(1);
        let synth = crate::synth::generate(&root.join("synth"), children, 1, reference)?;
        let (_, extract, mapping) = synth.extracts.first().context("synth wrote no extract")?;
        println!(
            "bench ingest: {} (council layout), batch size {batch_size}",
            extract.display()
        );

        pseudonymisation_rate(extract, mapping, &Layout::linkage_key(root), &agreement)?;

        let mut targets = vec![("SQLite", None)];
        if let Some(url) = postgres_url {
            targets.push(("PostgreSQL", Some(url)));
        }
        for (name, url) in targets {
            let data_dir = root.join(format!("gateway-{}", name.to_lowercase()));
            let mut gateway =
                GatewayProcess::start(&pki, &data_dir, &root.join("agreements"), url.as_deref())?;
            let layout = Layout {
                dir: root,
                address: &gateway.address,
                server_name: "localhost",
                agreement: &agreement,
            };
            let mut config = layout.agent(ORG, extract, mapping);
            config.batch_size = batch_size;
            // Each target is delivered from scratch: its own spool.
            config.spool_dir = root.join(format!("spool-{}", name.to_lowercase()));
            let started = Instant::now();
            let summary = joinery_agent::run(&config, joinery_agent::Progress::Quiet).await?;
            let elapsed = started.elapsed();
            let gateway_peak = gateway.peak_rss_kib();
            gateway.stop();
            let source = summary.sources.first().context("no source summary")?;
            let stored = source.records_stored + source.records_already_stored;
            let mut latencies = source.ack_latencies.clone();
            latencies.sort();
            println!(
                "{name:<10} {stored} records in {:.2} s = {:.0} records/s; ack latency p50 {:.1} ms, p99 {:.1} ms ({} batches); peak RSS gateway {} MiB",
                elapsed.as_secs_f64(),
                stored as f64 / elapsed.as_secs_f64(),
                percentile(&latencies, 0.50).as_secs_f64() * 1e3,
                percentile(&latencies, 0.99).as_secs_f64() * 1e3,
                latencies.len(),
                gateway_peak.map_or("?".to_owned(), |k| (k / 1024).to_string()),
            );
        }
        println!(
            "peak RSS agent (this process, including data generation): {} MiB",
            peak_rss_kib(std::process::id()).map_or("?".to_owned(), |k| (k / 1024).to_string())
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// Read, validate and pseudonymise every row on one core, without sending.
fn pseudonymisation_rate(
    extract: &Path,
    mapping: &Path,
    key: &Path,
    agreement: &Path,
) -> anyhow::Result<()> {
    let map = joinery_agent::mapping::Mapping::load(mapping)?;
    let agreement = joinery_policies::SignedAgreement::load(agreement)?;
    let dataset = agreement
        .agreement
        .datasets
        .get(&map.dataset)
        .context("the agreement has no dataset for this mapping")?;
    let releaser = Releaser::new(&SecretKey::load(key)?);
    let today = time::OffsetDateTime::now_utc().date();
    let started = Instant::now();
    let mut source = CsvSource::open(extract, &map, mapping, today)?;
    let mut released = 0usize;
    while let Some(row) = source.next_row() {
        if let RowOutcome::Valid { row: person, .. } = row?.outcome {
            std::hint::black_box(releaser.release(&person, 0, dataset, today));
            released += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "agent read+validate+pseudonymise, one core: {released} rows in {elapsed:.2} s = {:.0} rows/s",
        released as f64 / elapsed
    );
    Ok(())
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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The gateway as its own process, so its memory is measured on its own.
struct GatewayProcess {
    child: std::process::Child,
    address: String,
}

impl GatewayProcess {
    fn start(
        pki: &Path,
        data_dir: &PathBuf,
        agreements: &Path,
        database_url: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["gateway", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .arg("--agreements")
            .arg(agreements)
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

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
