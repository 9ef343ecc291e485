//! `joinery bench`: measurements (figures go in notes, never asserted in tests).

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Agent -> gateway ingest over mutual TLS: records/s, ack latency, peak memory.
    Ingest {
        /// Records to send.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
    },
}

impl BenchCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        anyhow::bail!("not built yet")
    }
}
