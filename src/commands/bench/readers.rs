//! `joinery-bench readers`: rows per second of every reader (CSV, the
//! national formats, the SQL source) on `joinery synth` output, and the peak
//! resident memory of a process doing nothing but reading each source, at
//! two population sizes ten times apart: memory that stays flat as the input
//! grows tenfold is what "constant memory" means here.
//!
//! Each measurement runs in a fresh process (this binary, with a hidden
//! `--read` argument), so one reader's peak memory is not another's.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Context;
use joinery_agent::config::{CsvFile, SourceConfig};
use joinery_agent::format::Registry;

use super::peak_rss_kib;

#[derive(Debug, clap::Args)]
pub struct ReadersArgs {
    /// Children in the larger population (the smaller has a tenth). At
    /// 800 000 the council's CSV extract has about 880 000 rows.
    #[arg(long, default_value_t = 800_000)]
    children: usize,
    /// Internal: read the source configured in this JSON file and print
    /// `rows seconds peak_kib`.
    #[arg(long, hide = true)]
    read: Option<PathBuf>,
}

/// One reader's figures at one size.
struct Measured {
    rows: u64,
    seconds: f64,
    peak_kib: u64,
}

pub fn run(args: ReadersArgs) -> anyhow::Result<ExitCode> {
    if let Some(config) = &args.read {
        let (rows, seconds) = read(config)?;
        let peak = peak_rss_kib(std::process::id()).unwrap_or(0);
        println!("{rows} {seconds} {peak}");
        return Ok(ExitCode::SUCCESS);
    }
    let dir = tempfile::Builder::new()
        .prefix("joinery-bench-readers-")
        .tempdir()?;
    // Dated at the end of a collection year the agent has code lists for.
    let reference = time::macros::date!(2026 - 03 - 31);
    let sizes = [(args.children / 10).max(10), args.children];
    let mut results: Vec<(String, Vec<Measured>)> = Vec::new();
    for (i, children) in sizes.into_iter().enumerate() {
        let out = dir.path().join(format!("synth-{children}"));
        let started = Instant::now();
        let synth = crate::synth::generate(
            &out,
            &crate::synth::Population::tidy(children, 7, reference),
        )?;
        println!(
            "synth: {children} children in {:.1} s ({})",
            started.elapsed().as_secs_f64(),
            out.display()
        );
        let mut sources: Vec<(String, SourceConfig)> = synth
            .extracts
            .iter()
            .map(|(agency, extract, mapping)| {
                (
                    format!("csv ({})", agency.dataset),
                    SourceConfig::Csv(CsvFile {
                        path: extract.clone(),
                        mapping: mapping.clone(),
                        snapshot: false,
                    }),
                )
            })
            .collect();
        sources.extend(
            synth
                .national
                .iter()
                .map(|s| (s.config.kind().to_owned(), s.config.clone())),
        );
        for (index, (name, config)) in sources.into_iter().enumerate() {
            let file = out.join(format!("source-{index}.json"));
            std::fs::write(&file, serde_json::to_vec(&config)?)?;
            let measured = measure(&file).with_context(|| format!("reading {name}"))?;
            match results.iter_mut().find(|(n, _)| *n == name) {
                Some((_, m)) => m.push(measured),
                None if i == 0 => results.push((name, vec![measured])),
                None => {}
            }
        }
        // The larger population's files can be large: keep one size at a time.
        if i == 0 {
            std::fs::remove_dir_all(&out)?;
        }
    }
    println!(
        "\n{:<28} {:>10} {:>11} {:>9} | {:>10} {:>11} {:>9} | {:>10}",
        "reader", "rows", "rows/s", "peak MiB", "rows", "rows/s", "peak MiB", "peak ratio"
    );
    for (name, m) in &results {
        let [small, large] = m.as_slice() else {
            continue;
        };
        let rate = |m: &Measured| m.rows as f64 / m.seconds.max(1e-9);
        println!(
            "{name:<28} {:>10} {:>11.0} {:>9.1} | {:>10} {:>11.0} {:>9.1} | {:>10.2}",
            small.rows,
            rate(small),
            small.peak_kib as f64 / 1024.0,
            large.rows,
            rate(large),
            large.peak_kib as f64 / 1024.0,
            large.peak_kib as f64 / small.peak_kib.max(1) as f64,
        );
    }
    println!(
        "\nrows: canonical rows (one per row, table element or resource); a run is one process, reading and validating only."
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs this binary to read one source and parses its figures.
fn measure(config: &Path) -> anyhow::Result<Measured> {
    let output = Command::new(std::env::current_exe()?)
        .args(["readers", "--read"])
        .arg(config)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let mut words = text.split_whitespace();
    let mut next = || words.next().context("no figures printed");
    Ok(Measured {
        rows: next()?.parse()?,
        seconds: next()?.parse()?,
        peak_kib: next()?.parse()?,
    })
}

/// Reads every row of every part of the source; returns rows and seconds.
fn read(config: &Path) -> anyhow::Result<(u64, f64)> {
    let config: SourceConfig = serde_json::from_slice(&std::fs::read(config)?)?;
    let today = time::OffsetDateTime::now_utc().date();
    let started = Instant::now();
    let mut rows = 0u64;
    for mut part in joinery_agent::format::open(&config, &Registry::built_in()?, today)? {
        while let Some(row) = part.source.next_row() {
            row?;
            rows += 1;
        }
    }
    Ok((rows, started.elapsed().as_secs_f64()))
}
