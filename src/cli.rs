//! The `joinery` command line: every subcommand operators, agencies and
//! analysts run, parsed once (clap) and dispatched to [`crate::commands`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands;
use crate::telemetry::LogFormat;

/// Share individual-level data about vulnerable children between agencies
/// without sharing identifiers: agents pseudonymise on-premise, a gateway
/// links and answers disclosure-controlled queries.
#[derive(Debug, Parser)]
#[command(name = "joinery", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an agency's agent: read extracts, pseudonymise, deliver to the gateway.
    #[command(subcommand)]
    Agent(commands::agent::AgentCommand),
    /// Verify and report the gateway's tamper-evident audit log; fetch its signed checkpoints.
    #[command(subcommand)]
    Audit(commands::audit::AuditCommand),
    /// Run the central gateway.
    #[command(subcommand)]
    Gateway(commands::gateway::GatewayCommand),
    /// Run an independent keyholder for agreements that pseudonymise NHS numbers through keyholders.
    #[command(subcommand)]
    Keyholder(commands::keyholder::KeyholderCommand),
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
}

/// How a binary logs on stderr (filter with RUST_LOG; the default level
/// depends on the command).
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "JOINERY_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

impl Command {
    /// The service name its telemetry reports and its default log filter.
    pub fn service(&self) -> (&'static str, &'static str) {
        match self {
            Self::Gateway(_) => ("joinery-gateway", "info"),
            Self::Agent(_) => ("joinery-agent", "info"),
            Self::Keyholder(_) => ("joinery-keyholder", "info"),
            Self::Demo(_) | Self::Probe(_) | Self::Reference(_) => ("joinery", "warn"),
            _ => ("joinery", "info"),
        }
    }

    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Agent(c) => c.run().await,
            Self::Audit(c) => c.run().await,
            Self::Gateway(c) => c.run().await,
            Self::Keyholder(c) => c.run().await,
            Self::Pki(c) => c.run(),
            Self::Policy(c) => c.run(),
            Self::Query(c) => c.run().await,
            Self::Console(a) => a.run().await,
            Self::Synth(a) => a.run(),
            Self::Demo(a) => a.run().await,
            Self::Probe(a) => a.run().await,
            Self::Reference(c) => c.run(),
        }
    }
}
