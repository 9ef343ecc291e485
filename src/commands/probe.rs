//! `joinery probe URL`: a container health check without curl in the image.
//! Exit status 0 when `GET URL` answers 200 within five seconds.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// e.g. http://127.0.0.1:9464/readyz
    url: String,
}

impl ProbeArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let status = http_get(&self.url).await?;
        let first = status.lines().next().unwrap_or_default().to_owned();
        println!("{first}");
        Ok(if first.split_whitespace().nth(1) == Some("200") {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

/// `GET url` (plain HTTP, as the operational endpoint serves): the whole
/// response, status line and headers included, within five seconds.
pub async fn http_get(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are probed")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    })
    .await
    .context("timed out")?
    .with_context(|| format!("GET {url}"))
}
