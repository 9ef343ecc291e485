//! `joinery-bench`: the developers' benchmarks and fault injection
//! (ingest, chaos, linkage, dice, readers, query), kept out of the
//! `joinery` binary that ships to agencies and gateways. It runs the
//! `joinery` binary beside it for the gateways and agents it measures.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use joinery::cli::LogArgs;
use joinery::commands::bench::BenchCommand;

/// Measure Joinery's throughput, latency, memory and linkage quality on
/// synthetic data.
#[derive(Debug, Parser)]
#[command(name = "joinery-bench", version)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,

    #[command(subcommand)]
    command: BenchCommand,
}

/// As `joinery`'s: glibc's allocator halves the linkage bench's encoding
/// threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    joinery::run(
        "joinery-bench",
        cli.log.log_format,
        "warn",
        cli.command.run(),
    )
}
