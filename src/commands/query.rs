//! `joinery query`: disclosure-controlled answers from the gateway.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::commands::TlsArgs;
use joinery_crypto::tls::TlsFiles;
use joinery_proto::v1::query_client::QueryClient;
use joinery_proto::v1::{
    AgencyOverlapRequest, AgencyOverlapResponse, CountsRequest, CountsResponse, cell,
};
use tonic::transport::Channel;

#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// Batches and records stored per organisation and dataset.
    Counts(GatewayArgs),
    /// Children known to 1, 2 or 3+ agencies by age band (disclosure-controlled).
    Overlap {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// Date at which ages are computed (YYYY-MM-DD; default today).
        #[arg(long)]
        reference_date: Option<String>,
    },
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

impl QueryCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Counts(gateway) => {
                let counts = QueryClient::new(gateway.channel().await?)
                    .counts(CountsRequest {})
                    .await?
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
                    .await?
                    .into_inner();
                print_overlap(&overlap);
            }
        }
        Ok(ExitCode::SUCCESS)
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
            let text = match c.value {
                Some(cell::Value::Count(n)) => n.to_string(),
                Some(cell::Value::Suppressed(_)) => "*".to_owned(),
                None => "-".to_owned(),
            };
            print!(" {text:>12}");
        }
        println!();
    }
    println!("Note: {}.", overlap.disclosure_note);
}
