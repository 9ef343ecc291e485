//! `joinery-bench ingest`: a synthetic council extract delivered by the
//! agent (in this process) to a real gateway process (SQLite, and PostgreSQL
//! when `--postgres-url` is given) over mutual TLS: records per second end to
//! end, ack latency percentiles, the agent's pseudonymisation rate on one
//! core, and peak resident memory of agent and gateway; with `--keyholders
//! N`, the same delivery with NHS numbers pseudonymised through N keyholders.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use joinery_agent::release::Releaser;
use joinery_agent::row::RowOutcome;
use joinery_agent::source::Source;
use joinery_agent::source::csv::CsvSource;
use joinery_crypto::keys::SecretKey;

use joinery_agent::config::KeyholderEndpoint;

use super::{ServerProcess, create_sandbox, csv_agent, peak_rss_kib, percentile};
use crate::sandbox::Sandbox;

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
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
    /// Measure only the agent's one-core rate (no gateway, nothing sent).
    #[arg(long)]
    agent_only: bool,
    /// Also deliver to SQLite under an agreement naming this many keyholders
    /// (each a `joinery keyholder serve` process), NHS numbers pseudonymised
    /// through them.
    #[arg(long, default_value_t = 0)]
    keyholders: usize,
}

const ORG: &str = "E08000099";

pub async fn run(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let IngestArgs {
        records,
        postgres_url,
        batch_size,
        agent_only,
        keyholders,
    } = args;
    let dir = tempfile::Builder::new()
        .prefix("joinery-bench-")
        .tempdir()?;
    let root = dir.path();
    let deployment = create_sandbox(root, &[ORG])?;
    let agreement = deployment.agreement()?;

    // The council layout has about 1.1 rows per child.
    let reference = time::OffsetDateTime::now_utc().date();
    let children = (records * 10 / 11).max(1);
    let synth = crate::synth::generate(
        &root.join("synth"),
        &crate::synth::Population {
            national_formats: false,
            ..crate::synth::Population::tidy(children, 1, reference)
        },
    )?;
    let (_, extract, mapping) = synth.extracts.first().context("synth wrote no extract")?;
    println!(
        "bench ingest: {} (council layout), batch size {batch_size}",
        extract.display()
    );

    pseudonymisation_rate(extract, mapping, &deployment.linkage_key(), &agreement)?;
    if agent_only {
        return Ok(ExitCode::SUCCESS);
    }

    let mut targets = vec![("SQLite", None)];
    if let Some(url) = postgres_url {
        targets.push(("PostgreSQL", Some(url)));
    }
    let run = Delivery {
        root,
        extract,
        mapping,
        batch_size,
    };
    for (name, url) in targets {
        run.measure(name, &deployment, url.as_deref(), &[]).await?;
    }
    if keyholders > 0 {
        let with = create_sandbox(&root.join("with-keyholders"), &[ORG])?;
        let names: Vec<String> = (1..=keyholders)
            .map(|i| format!("keyholder-{i}.localhost"))
            .collect();
        let named: Vec<&str> = names.iter().map(String::as_str).collect();
        crate::sandbox::sign_example_agreement(
            &with.agreements_dir(),
            crate::sandbox::naming_keyholders(&named),
        )?;
        let mut processes = Vec::new();
        let mut endpoints = Vec::new();
        for name in &names {
            let (process, data) = ServerProcess::keyholder(&with, name)?;
            let public_key = joinery_gateway::keyholder::public_key(&data, &with.agreement_id()?)?;
            endpoints.push(KeyholderEndpoint {
                name: name.clone(),
                address: process.address.clone(),
                public_key: hex::encode(public_key),
            });
            processes.push(process);
        }
        run.measure(
            &format!(
                "SQLite through {keyholders} keyholder{}",
                if keyholders == 1 { "" } else { "s" }
            ),
            &with,
            None,
            &endpoints,
        )
        .await?;
        for mut process in processes {
            process.stop("TERM");
        }
    }
    println!(
        "peak RSS agent (this process, including data generation): {} MiB",
        peak_rss_kib(std::process::id()).map_or("?".to_owned(), |k| (k / 1024).to_string())
    );
    Ok(ExitCode::SUCCESS)
}

/// One extract delivered afresh to a gateway per target.
struct Delivery<'a> {
    root: &'a Path,
    extract: &'a Path,
    mapping: &'a Path,
    batch_size: usize,
}

impl Delivery<'_> {
    /// Delivers the extract to a new gateway of `sandbox` (on `url`, else
    /// SQLite) through `keyholders`, and prints the rate, ack latencies and
    /// the gateway's peak memory.
    async fn measure(
        &self,
        name: &str,
        sandbox: &Sandbox,
        url: Option<&str>,
        keyholders: &[KeyholderEndpoint],
    ) -> anyhow::Result<()> {
        let slug: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let data_dir = self.root.join(format!("gateway-{slug}"));
        let mut gateway = ServerProcess::start(sandbox, "127.0.0.1:0", &data_dir, url, None, &[])?;
        let mut config = csv_agent(sandbox, ORG, &gateway.address, self.extract, self.mapping)?;
        config.batch_size = self.batch_size;
        config.keyholders = keyholders.to_vec();
        // Each target is delivered from scratch: its own spool.
        config.spool_dir = self.root.join(format!("spool-{slug}"));
        let started = Instant::now();
        let summary = joinery_agent::run(&config, joinery_agent::Progress::Quiet).await?;
        let elapsed = started.elapsed();
        let gateway_peak = gateway.peak_rss_kib();
        gateway.stop("TERM");
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
        Ok(())
    }
}

/// Passes over the extract [`pseudonymisation_rate`] makes: the first warms
/// the page cache and the encoder's remembered tags, as a long run would.
const PASSES: usize = 5;

/// Read, validate and pseudonymise every row on one core, without sending,
/// [`PASSES`] times, reporting the median rate.
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
    let key = SecretKey::load(key)?;
    let keys = joinery_agent::keys::ReleaseKeys {
        linkage: key.clone(),
        local_ids: key,
    };
    let releaser = Releaser::new(&keys, agreement.agreement.linkage.params().as_ref(), None)?;
    let today = time::OffsetDateTime::now_utc().date();
    let mut rates = Vec::new();
    let mut released = 0usize;
    for _ in 0..PASSES {
        let started = Instant::now();
        let mut source = CsvSource::open(extract, &map, mapping, today)?;
        released = 0;
        let mut chunk = Vec::with_capacity(joinery_agent::pipeline::CHUNK);
        loop {
            let next = source.next_row().transpose()?;
            let done = next.is_none();
            if let Some(RowOutcome::Valid { row: person, .. }) = next.map(|row| row.outcome) {
                chunk.push((0, person));
            }
            if chunk.len() >= joinery_agent::pipeline::CHUNK || (done && !chunk.is_empty()) {
                released +=
                    std::hint::black_box(releaser.release_all(&chunk, dataset, today)?).len();
                chunk.clear();
            }
            if done {
                break;
            }
        }
        rates.push(released as f64 / started.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "agent read+validate+pseudonymise, one core: {released} rows, median of {PASSES} passes {:.0} rows/s (slowest {:.0}, fastest {:.0})",
        rates[PASSES / 2],
        rates[0],
        rates[PASSES - 1]
    );
    Ok(())
}
