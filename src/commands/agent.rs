//! `joinery agent run`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use joinery_agent::summary::{EXIT_OK, EXIT_QUARANTINED, EXIT_REJECTED};
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
        /// No progress: no bar on a terminal, and no progress lines in the
        /// log elsewhere.
        #[arg(long)]
        no_progress: bool,
        /// While running, serve GET /metrics (Prometheus), /healthz and /readyz here.
        #[arg(long, env = "JOINERY_AGENT_METRICS_LISTEN")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Direct care: this agency's local ids of the children in a cohort (a
    /// query file), on standard output, where an agreement allows it. The
    /// local ids never leave the agency.
    Resolve {
        /// Agent configuration file (agent.yaml).
        #[arg(long, env = "JOINERY_AGENT_CONFIG")]
        config: PathBuf,
        /// The query file whose cohort to resolve.
        #[arg(long)]
        query: PathBuf,
        /// The agreement allowing it (needed only when several do).
        #[arg(long)]
        agreement: Option<String>,
    },
    /// Show the spool: batches waiting for an ack, the last ack and error,
    /// and where reading of each source has got to.
    Status {
        /// Agent configuration file (agent.yaml).
        #[arg(long, env = "JOINERY_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Send sources again from the start on the next run (as after moving
    /// to a new gateway, whose store is empty): lists what will be sent
    /// again, and forgets where reading got to only with --yes. Run it while
    /// the agent is not running.
    Resend {
        /// Agent configuration file (agent.yaml).
        #[arg(long, env = "JOINERY_AGENT_CONFIG")]
        config: PathBuf,
        /// Only these sources, as `joinery agent status` names them
        /// [default: every source].
        #[arg(long = "source")]
        sources: Vec<String>,
        /// Forget them (without it, only say what would be sent again).
        #[arg(long)]
        yes: bool,
    },
}

impl AgentCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let (config, no_progress, metrics_listen) = match self {
            Self::Run {
                config,
                no_progress,
                metrics_listen,
            } => (config, no_progress, metrics_listen),
            Self::Status { config } => return status(&AgentConfig::load(&config)?),
            Self::Resend {
                config,
                sources,
                yes,
            } => return resend(&AgentConfig::load(&config)?, &sources, yes),
            Self::Resolve {
                config,
                query,
                agreement,
            } => return resolve(&AgentConfig::load(&config)?, &query, agreement.as_deref()).await,
        };
        if let Some(address) = metrics_listen {
            let recorder = crate::observe::install()?;
            crate::observe::serve(address, recorder, crate::observe::always_ready()).await?;
        }
        let config = AgentConfig::load(&config)?;
        // A bar for a person at a terminal; elsewhere (systemd, a pipe) a
        // line every few seconds, so a long read is not silence.
        let progress = if no_progress {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            Progress::Bar
        } else {
            Progress::Lines(joinery_agent::progress::LINE_EVERY)
        };
        let summary = joinery_agent::run(&config, progress).await?;
        print_summary(&config.organisation, &summary);
        Ok(ExitCode::from(summary.exit_code() as u8))
    }
}

fn status(config: &AgentConfig) -> anyhow::Result<ExitCode> {
    let (batches, bytes, state, checkpoints) = joinery_agent::spool::inspect(&config.spool_dir)?;
    println!(
        "spool {}: {batches} batches ({bytes} bytes) waiting for an acknowledgement",
        config.spool_dir.display()
    );
    println!(
        "last acknowledgement: {}",
        state.last_ack_at.as_deref().unwrap_or("never")
    );
    match (&state.last_error, &state.last_error_at) {
        (Some(error), Some(at)) => println!("last error: {at}: {error}"),
        _ => println!("last error: none"),
    }
    for (source, c) in &checkpoints {
        let progress = if c.complete {
            "read completely".to_owned()
        } else {
            format!("read up to line {}", c.at.line)
        };
        println!(
            "source {source}: {progress}; next batch sequence {}",
            c.sequence
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn resend(config: &AgentConfig, sources: &[String], yes: bool) -> anyhow::Result<ExitCode> {
    let (_, _, _, checkpoints) = joinery_agent::spool::inspect(&config.spool_dir)?;
    if let Some(unknown) = sources.iter().find(|s| !checkpoints.contains_key(*s)) {
        anyhow::bail!(
            "the spool {} has no source {unknown}; `joinery agent status` lists them",
            config.spool_dir.display()
        );
    }
    let chosen: Vec<&String> = checkpoints
        .keys()
        .filter(|k| sources.is_empty() || sources.contains(k))
        .collect();
    if chosen.is_empty() {
        println!("nothing to send again: no source has been read yet");
        return Ok(ExitCode::SUCCESS);
    }
    if !yes {
        println!("the next run would read these sources from the start and send them again:");
        for source in &chosen {
            println!("  {source}");
        }
        println!("nothing changed: add --yes to do it");
        return Ok(ExitCode::FAILURE);
    }
    let spool = joinery_agent::spool::Spool::open(&config.spool_dir)?;
    for source in spool.forget_checkpoints(sources)? {
        println!("{source}: will be read from the start and sent again on the next run");
    }
    Ok(ExitCode::SUCCESS)
}

/// The run summary, as printed by `joinery agent run` and the demo.
/// Prints the cohort's local ids (standard output) and what was checked
/// (standard error).
async fn resolve(
    config: &AgentConfig,
    query: &std::path::Path,
    agreement: Option<&str>,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(query).with_context(|| format!("reading {}", query.display()))?;
    let resolved = joinery_agent::resolve::resolve(config, &text, agreement).await?;
    eprintln!("{}", resolved.explanation);
    eprintln!(
        "Under agreement {}: {} of this agency's {} local ids are in the cohort ({} rows quarantined, not checked).",
        resolved.agreement,
        resolved.in_cohort.len(),
        resolved.local_ids_read,
        resolved.rows_quarantined
    );
    println!("local_id");
    for local in &resolved.in_cohort {
        println!("{local}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn print_summary(organisation: &str, summary: &RunSummary) {
    for (dataset, retired) in &summary.snapshots {
        println!(
            "{organisation}: the full snapshot of {dataset} replaced the earlier ones at the gateway ({retired} records retired)"
        );
    }
    if let Some(kept) = summary.checkpoints {
        println!(
            "{organisation}: kept {} new signed audit checkpoints of the gateway ({} in all, in the spool directory's audit-checkpoints.jsonl)",
            kept.new, kept.kept
        );
    }
    if summary.replayed_batches > 0 {
        println!(
            "{organisation}: resent {} batches ({} records) left in the spool by an interrupted run",
            summary.replayed_batches, summary.replayed_records
        );
    }
    if summary.reconnections > 0 {
        println!(
            "{organisation}: reconnected to the gateway {} times",
            summary.reconnections
        );
    }
    for s in &summary.sources {
        // The dataset, and which of its files when it has several.
        let name = s
            .source
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let label = if summary
            .sources
            .iter()
            .filter(|o| o.dataset == s.dataset)
            .count()
            > 1
        {
            format!("{} ({name})", s.dataset)
        } else {
            s.dataset.clone()
        };
        if s.already_delivered {
            println!(
                "{organisation} {label}: already delivered (the extract has not changed since; `joinery agent resend` sends it again)"
            );
            continue;
        }
        if let Some(line) = s.resumed_at_line {
            println!("{organisation} {label}: resumed an interrupted read at line {line}");
        }
        println!(
            "{organisation} {label}: {} rows read, {} sent, {} stored, {} already stored, {} rejected, {} quarantined",
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
