//! `joinery agent run`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use joinery_agent::run::{EXIT_OK, EXIT_QUARANTINED, EXIT_REJECTED};
use joinery_agent::{AgentConfig, Progress, RunSummary};

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Read every configured source once and deliver it.
    #[command(after_help = format!(
        "Exit status: {EXIT_OK} everything delivered; {EXIT_QUARANTINED} rows quarantined, the rest delivered; {EXIT_REJECTED} the gateway rejected a batch; 1 the run failed."
    ))]
    Run {
        /// Agent configuration file (agent.yaml).
        #[arg(long, env = "JOINERY_AGENT_CONFIG")]
        config: PathBuf,
        /// No progress bar, even on a terminal.
        #[arg(long)]
        no_progress: bool,
        /// While running, serve GET /metrics (Prometheus), /healthz and /readyz here.
        #[arg(long, env = "JOINERY_AGENT_METRICS_LISTEN")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
}

impl AgentCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let Self::Run {
            config,
            no_progress,
            metrics_listen,
        } = self;
        if let Some(address) = metrics_listen {
            crate::observe::serve(address, crate::observe::always_ready()).await?;
        }
        let config = AgentConfig::load(&config)?;
        let progress = if no_progress || !std::io::stderr().is_terminal() {
            Progress::Quiet
        } else {
            Progress::Bar
        };
        let summary = joinery_agent::run(&config, progress).await?;
        print_summary(&config.organisation, &summary);
        Ok(ExitCode::from(summary.exit_code() as u8))
    }
}

/// The run summary, as printed by `joinery agent run` and the demo.
pub fn print_summary(organisation: &str, summary: &RunSummary) {
    for s in &summary.sources {
        println!(
            "{organisation} {}: {} rows read, {} sent, {} stored, {} already stored, {} rejected, {} quarantined",
            s.dataset,
            s.rows_read,
            s.records_sent,
            s.records_stored,
            s.records_already_stored,
            s.records_rejected,
            s.quarantined_rows()
        );
        for (reason, count) in &s.quarantined {
            println!("    quarantined {count:>6}  {reason}");
        }
        for (reason, count) in &s.warnings {
            println!("    warning     {count:>6}  {reason}");
        }
        if s.opted_out > 0 {
            println!("    withheld {:>6}  National Data Opt-out", s.opted_out);
        }
        if !s.withheld_fields.is_empty() {
            println!(
                "    not sent (the agreement does not allow them): {}",
                s.withheld_fields.join(", ")
            );
        }
        for (reason, count) in &s.batches_rejected {
            println!("    rejected batches {count:>3}  {reason}");
        }
        if s.quarantined_rows() > 0 || !s.warnings.is_empty() {
            println!("    report: {}", s.quarantine_report.display());
        }
    }
}
