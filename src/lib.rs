//! The commands behind the `joinery` binary (`src/main.rs`), for every role
//! in a deployment, and behind `joinery-bench` (`src/bin/joinery-bench.rs`),
//! the developers' benchmarks and fault injection, kept out of the binary
//! that ships to agencies and gateways.
//!
//! [`cli`] is `joinery`'s command line; [`commands`] has one module per
//! subcommand; [`synth`] generates the
//! synthetic population; [`sandbox`] is the throwaway deployment the demo,
//! the benchmarks and the end-to-end tests stand up; [`telemetry`] and [`observe`] are logs, traces and
//! the metrics/health endpoints; [`run`] is the one way a binary runs a
//! command: an async runtime, telemetry, and an error printed with its
//! causes.

#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod observe;
pub mod sandbox;
pub mod synth;
pub mod telemetry;

use std::future::Future;
use std::process::ExitCode;

use joinery_proto::channel::with_causes;

use crate::telemetry::LogFormat;

/// Runs `command` on a multi-threaded runtime with telemetry set up as
/// `service` (logs below `default_filter` hidden unless `RUST_LOG` says),
/// printing an error and its causes on failure.
pub fn run(
    service: &'static str,
    log_format: LogFormat,
    default_filter: &str,
    command: impl Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = match telemetry::init(service, log_format, default_filter) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot start telemetry: {}", with_causes(e.as_ref()));
                return ExitCode::FAILURE;
            }
        };
        match command.await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {}", with_causes(e.as_ref()));
                ExitCode::FAILURE
            }
        }
    })
}
