//! `joinery`: one binary for every role in a Joinery deployment.
//!
//! Agency IT runs `joinery agent`, the gateway operator `joinery gateway` and
//! `joinery pki`, analysts `joinery query`; `joinery synth`, `joinery demo` and
//! `joinery bench` generate data, show the whole system and measure it.

#![forbid(unsafe_code)]

mod commands;
mod observe;
mod synth;
mod telemetry;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use joinery_proto::channel::with_causes;

use crate::telemetry::LogFormat;

/// Share individual-level data about vulnerable children between agencies
/// without sharing identifiers: agents pseudonymise on-premise, a gateway
/// links and answers disclosure-controlled queries.
#[derive(Debug, Parser)]
#[command(name = "joinery", version, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr (filter with RUST_LOG, default info).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "JOINERY_LOG_FORMAT"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an agency's agent: read extracts, pseudonymise, deliver to the gateway.
    #[command(subcommand)]
    Agent(commands::agent::AgentCommand),
    /// Verify and report the gateway's tamper-evident audit log; fetch its signed checkpoints.
    #[command(subcommand)]
    Audit(commands::audit::AuditCommand),
    /// Run the central gateway.
    #[command(subcommand)]
    Gateway(commands::gateway::GatewayCommand),
    /// Write, check, explain, compare, sign and verify data-sharing agreements.
    #[command(subcommand)]
    Policy(commands::policy::PolicyCommand),
    /// Manage the deployment's certificate authority, certificates and keys.
    #[command(subcommand)]
    Pki(commands::pki::PkiCommand),
    /// Ask the gateway disclosure-controlled questions (as an analyst; an agency may ask `counts` about its own data).
    #[command(subcommand)]
    Query(commands::query::QueryCommand),
    /// The analysts' web console on this machine (127.0.0.1), asking the gateway with your analyst certificate.
    Console(commands::console::ConsoleArgs),
    /// Generate synthetic extracts for several agencies, with a ground truth.
    Synth(commands::synth::SynthArgs),
    /// Run the whole system on this machine in a temporary directory and print a result.
    Demo(commands::demo::DemoArgs),
    /// Check an HTTP endpoint answers 200 (container health checks: `probe http://127.0.0.1:9464/readyz`).
    Probe(commands::probe::ProbeArgs),
    /// Print reference documentation generated from the code.
    #[command(subcommand, hide = true)]
    Reference(commands::reference::ReferenceCommand),
    /// Measure throughput, latency and memory.
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
}

/// mimalloc rather than glibc's allocator: agent and gateway free on one
/// thread what another allocated (rows read, then encoded or stored), where
/// glibc's arenas contend; `joinery bench linkage` encodes twice as fast.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        let (service, default_filter) = match &cli.command {
            Command::Gateway(_) => ("joinery-gateway", "info"),
            Command::Agent(_) => ("joinery-agent", "info"),
            Command::Demo(_) | Command::Bench(_) | Command::Probe(_) | Command::Reference(_) => {
                ("joinery", "warn")
            }
            _ => ("joinery", "info"),
        };
        let _telemetry = match telemetry::init(service, cli.log_format, default_filter) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot start telemetry: {}", with_causes(e.as_ref()));
                return ExitCode::FAILURE;
            }
        };
        let result = match cli.command {
            Command::Agent(c) => c.run().await,
            Command::Audit(c) => c.run().await,
            Command::Gateway(c) => c.run().await,
            Command::Pki(c) => c.run(),
            Command::Policy(c) => c.run(),
            Command::Query(c) => c.run().await,
            Command::Console(a) => a.run().await,
            Command::Synth(a) => a.run(),
            Command::Demo(a) => a.run().await,
            Command::Probe(a) => a.run().await,
            Command::Reference(c) => c.run(),
            Command::Bench(c) => c.run().await,
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {}", with_causes(e.as_ref()));
                ExitCode::FAILURE
            }
        }
    })
}
