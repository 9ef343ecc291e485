//! `joinery console`: the analysts' web console, on this machine's
//! loopback, asking the gateway with the analyst's own certificate.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;
use joinery_console::Console;
use joinery_proto::v1::query_client::QueryClient;

use crate::commands::query::GatewayArgs;

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Where the console listens: a loopback address only, so the page is
    /// for this machine's browser.
    #[arg(long, default_value = "127.0.0.1:7450")]
    listen: SocketAddr,
    #[command(flatten)]
    gateway: GatewayArgs,
}

impl ConsoleArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let client = QueryClient::new(self.gateway.channel().await?);
        serve(self.listen, client, self.gateway.address()).await?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Serves the console until Ctrl-C, printing the address to open.
pub async fn serve(
    listen: SocketAddr,
    client: QueryClient<tonic::transport::Channel>,
    gateway: &str,
) -> anyhow::Result<()> {
    let (console, url) = Console::bind(listen, client, gateway).await?;
    println!("Console: open {url}");
    println!(
        "(this address carries a one-time token: keep it to yourself; Ctrl-C stops the console)"
    );
    console
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
