//! `joinery`: one binary for every role in a Joinery deployment.
//!
//! Agency IT runs `joinery agent`, the gateway operator `joinery gateway` and
//! `joinery pki`, analysts `joinery query` and `joinery console`; `joinery
//! synth` and `joinery demo` generate data and show the whole system. The
//! benchmarks are a separate binary, `joinery-bench`, that does not ship.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use joinery::cli::Cli;

/// mimalloc rather than glibc's allocator: agent and gateway free on one
/// thread what another allocated (rows read, then encoded or stored), where
/// glibc's arenas contend; `joinery-bench linkage` encodes twice as fast.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (service, default_filter) = cli.command.service();
    joinery::run(
        service,
        cli.log.log_format,
        default_filter,
        cli.command.run(),
    )
}
