//! `joinery query`: disclosure-controlled answers from the gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use joinery_gateway::analytics::model::AnalystQuery;

use clap::{Args, Subcommand};

use crate::commands::TlsArgs;
use joinery_crypto::tls::TlsFiles;
use joinery_proto::v1::query_client::QueryClient;
use joinery_proto::v1::{
    AgencyOverlapRequest, AgencyOverlapResponse, CountsRequest, CountsResponse, ExtractRequest,
    ExtractResponse, RunRequest, TableResponse, VocabularyRequest, VocabularyResponse, cell,
};
use tonic::transport::Channel;

#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// Your agency's own batches and records stored, per dataset (with the
    /// agency's certificate; analysts are refused: see docs/disclosure.md).
    Counts(GatewayArgs),
    /// Children known to 1, 2 or 3+ agencies by age band (disclosure-controlled).
    Overlap {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// Date at which ages are computed (YYYY-MM-DD; default today).
        #[arg(long)]
        reference_date: Option<String>,
    },
    /// Run a query file (a cohort and its breakdown, YAML or JSON): a
    /// disclosure-controlled table with totals.
    Run {
        /// The query file.
        file: PathBuf,
        /// How to print the table.
        #[arg(long, value_enum, default_value_t = TableFormat::Table)]
        format: TableFormat,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Row-level: the query's cohort as CSV on standard output, one row per
    /// person under the project's pseudonyms (needs a row_level role in the
    /// agreement; audited). What it holds goes to standard error.
    Extract {
        /// The query file.
        file: PathBuf,
        /// The agreement id whose row-level role to use (needed only when
        /// the analyst holds one in several agreements).
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// What the agreements in force share: the organisations, datasets,
    /// event types and attributes a query may use.
    Vocabulary(GatewayArgs),
    /// Say in words who a query file counts, and check it (nothing is sent).
    Explain {
        /// The query file.
        file: PathBuf,
    },
    /// Print the JSON Schema of query files (for editors; checked in as
    /// docs/queries/query.schema.json).
    Schema,
}

/// Output formats of a query's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TableFormat {
    /// Aligned columns for the terminal.
    Table,
    Csv,
    Json,
}

/// How to reach the gateway as an analyst.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Gateway address, host:port.
    #[arg(long, env = "JOINERY_GATEWAY")]
    gateway: String,
    /// Name on the gateway's certificate (default: the host of --gateway).
    #[arg(long)]
    server_name: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

impl GatewayArgs {
    /// The gateway's address, host:port.
    pub fn address(&self) -> &str {
        &self.gateway
    }

    /// A channel to the gateway over mutual TLS with these credentials.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let host = self
            .gateway
            .rsplit_once(':')
            .map_or(self.gateway.as_str(), |(host, _)| host);
        let tls = self.tls.files(None);
        channel(
            &self.gateway,
            self.server_name.as_deref().unwrap_or(host),
            &tls,
        )
        .await
    }
}

/// A channel to the gateway at `address` over mutual TLS.
pub async fn channel(address: &str, server_name: &str, tls: &TlsFiles) -> anyhow::Result<Channel> {
    let config = joinery_crypto::tls::client_config(tls)?;
    Ok(joinery_proto::channel::connect(address, server_name, config).await?)
}

/// A Query client over mutual TLS.
pub async fn connect(
    address: &str,
    server_name: &str,
    tls: &TlsFiles,
) -> anyhow::Result<QueryClient<Channel>> {
    Ok(QueryClient::new(channel(address, server_name, tls).await?))
}

/// A gateway's "no" as a person reads it: the gateway's reason and what kind
/// of refusal it is (tonic's own text prints the raw status with its
/// metadata); a transport failure also says what failed.
fn refusal(status: tonic::Status) -> anyhow::Error {
    let words = joinery_proto::channel::in_words(status.code());
    let reason = joinery_proto::channel::reason(&status);
    match std::error::Error::source(&status) {
        Some(_) => anyhow::anyhow!("the gateway did not answer ({words}): {reason}"),
        None => anyhow::anyhow!("the gateway refused ({words}): {reason}"),
    }
}

impl QueryCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Counts(gateway) => {
                let counts = QueryClient::new(gateway.channel().await?)
                    .counts(CountsRequest {})
                    .await
                    .map_err(refusal)?
                    .into_inner();
                print_counts(&counts);
            }
            Self::Overlap {
                gateway,
                reference_date,
            } => {
                let overlap = QueryClient::new(gateway.channel().await?)
                    .agency_overlap(AgencyOverlapRequest {
                        reference_date: reference_date.unwrap_or_default(),
                    })
                    .await
                    .map_err(refusal)?
                    .into_inner();
                print_overlap(&overlap);
            }
            Self::Run {
                file,
                format,
                gateway,
            } => {
                let (text, _) = read_query(&file)?;
                let table = QueryClient::new(gateway.channel().await?)
                    .run(RunRequest { query: text })
                    .await
                    .map_err(refusal)?
                    .into_inner();
                print_table(&table, format)?;
            }
            Self::Extract {
                file,
                project,
                gateway,
            } => {
                let (text, _) = read_query(&file)?;
                let extract = QueryClient::new(gateway.channel().await?)
                    .extract(ExtractRequest {
                        query: text,
                        project: project.unwrap_or_default(),
                    })
                    .await
                    .map_err(refusal)?
                    .into_inner();
                print_extract(&extract)?;
            }
            Self::Vocabulary(gateway) => {
                let words = QueryClient::new(gateway.channel().await?)
                    .vocabulary(VocabularyRequest {})
                    .await
                    .map_err(refusal)?
                    .into_inner();
                print_vocabulary(&words);
            }
            Self::Explain { file } => {
                let (_, query) = read_query(&file)?;
                println!("{}", joinery_gateway::analytics::explain(&query));
            }
            Self::Schema => print!("{}", AnalystQuery::schema()),
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn print_vocabulary(words: &VocabularyResponse) {
    println!("Organisations (known_to: {{ organisation: CODE }}):");
    for o in &words.organisations {
        println!("  {:<12} {} — sends {}", o.code, o.name, o.sends.join(", "));
    }
    println!("Datasets (known_to: {{ dataset: NAME }}, has: {{ dataset: NAME }}):");
    for d in &words.datasets {
        println!("  {}", d.name);
        println!("    events:     {}", d.events.join(", "));
        println!("    attributes: {}", d.attributes.join(", "));
    }
}

pub fn print_counts(counts: &CountsResponse) {
    println!(
        "{:<12} {:<18} {:>8} {:>10}",
        "organisation", "dataset", "batches", "records"
    );
    for c in &counts.datasets {
        println!(
            "{:<12} {:<18} {:>8} {:>10}",
            c.organisation, c.dataset, c.batches, c.records
        );
    }
}

pub fn print_overlap(overlap: &AgencyOverlapResponse) {
    println!(
        "Children known to 1, 2 or 3+ agencies, by age on {}",
        overlap.reference_date
    );
    print!("{:<10}", "age band");
    for column in &overlap.columns {
        print!(" {column:>12}");
    }
    println!();
    for row in &overlap.rows {
        print!("{:<10}", row.age_band);
        for c in &row.cells {
            print!(" {:>12}", cell_text(c));
        }
        println!();
    }
    println!("Note: {}.", overlap.disclosure_note);
    print_dash_legend(overlap.rows.iter().flat_map(|r| &r.cells));
}

/// What `-` means, under a table that shows one (`*` is in every note).
fn print_dash_legend<'c>(cells: impl IntoIterator<Item = &'c joinery_proto::v1::Cell>) {
    if cells.into_iter().any(|c| c.value.is_none()) {
        println!("-: {}.", joinery_gateway::analytics::table::NOTHING_MEANS);
    }
}

/// A query file's text, checked.
fn read_query(file: &std::path::Path) -> anyhow::Result<(String, AnalystQuery)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let query =
        AnalystQuery::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok((text, query))
}

fn cell_text(c: &joinery_proto::v1::Cell) -> String {
    match c.value {
        Some(cell::Value::Count(n)) => n.to_string(),
        Some(cell::Value::Suppressed(_)) => "*".to_owned(),
        Some(cell::Value::Number(v)) => format!("{v:.1}"),
        None => "-".to_owned(),
    }
}

/// Prints a row-level extract as CSV (standard output), what it holds on
/// standard error.
fn print_extract(extract: &ExtractResponse) -> anyhow::Result<()> {
    eprintln!("{}", extract.explanation);
    eprintln!(
        "{} rows; people under project {} pseudonyms.",
        extract.rows.len(),
        extract.project
    );
    let name = |heading: &str, fallback: &'static str| match heading {
        "" => fallback.to_owned(),
        h => h.to_owned(),
    };
    let mut out = csv::Writer::from_writer(std::io::stdout());
    out.write_record([
        "person".to_owned(),
        name(&extract.row_heading, "row"),
        name(&extract.column_heading, "column"),
        name(&extract.measure, "value"),
    ])?;
    for row in &extract.rows {
        let value = row.value.map_or_else(String::new, |v| v.to_string());
        out.write_record([&row.person, &row.row, &row.column, &value])?;
    }
    out.flush()?;
    Ok(())
}

/// Prints a query's table as aligned text, CSV or JSON.
pub fn print_table(table: &TableResponse, format: TableFormat) -> anyhow::Result<()> {
    // On standard error whatever the format, so a CSV stays a CSV.
    for warning in &table.warnings {
        eprintln!("warning: {warning}");
    }
    if table.newer_data_pending {
        eprintln!(
            "warning: {}",
            joinery_gateway::analytics::table::NEWER_DATA_MEANS
        );
    }
    let heading = if table.row_heading.is_empty() {
        ""
    } else {
        table.row_heading.as_str()
    };
    match format {
        TableFormat::Table => {
            println!("{}", table.explanation);
            println!("Cells: {}.", table.measure);
            let width = table
                .rows
                .iter()
                .map(|r| r.label.len())
                .chain([heading.len()])
                .max()
                .unwrap_or(0);
            let column = table
                .columns
                .iter()
                .map(String::len)
                .max()
                .unwrap_or(0)
                .max(7);
            if !table.column_heading.is_empty() {
                println!("{:width$}  columns: {}", "", table.column_heading);
            }
            print!("{heading:<width$}");
            for c in &table.columns {
                print!("  {c:>column$}");
            }
            println!();
            for row in &table.rows {
                print!("{:<width$}", row.label);
                for c in &row.cells {
                    print!("  {:>column$}", cell_text(c));
                }
                println!();
            }
            println!("Note: {}.", table.disclosure_note);
            print_dash_legend(table.rows.iter().flat_map(|r| &r.cells));
        }
        TableFormat::Csv => {
            let mut out = csv::Writer::from_writer(std::io::stdout());
            out.write_record(
                std::iter::once(heading).chain(table.columns.iter().map(String::as_str)),
            )?;
            for row in &table.rows {
                out.write_record(
                    std::iter::once(row.label.clone()).chain(row.cells.iter().map(cell_text)),
                )?;
            }
            out.flush()?;
        }
        TableFormat::Json => {
            let document = joinery_gateway::analytics::table_json(table);
            println!("{}", serde_json::to_string_pretty(&document)?);
        }
    }
    Ok(())
}
