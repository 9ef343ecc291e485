//! How a client (an agent, or an analyst's `joinery query`) reaches the
//! gateway: HTTP/2 over a rustls connection built by `joinery_crypto::tls`,
//! so the client side also uses ring only and TLS 1.3 only.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("gateway address {0:?} is not host:port")]
    Address(String),
    #[error("TLS server name {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
    #[error("cannot connect to the gateway at {address}: {source}")]
    Transport {
        address: String,
        source: tonic::transport::Error,
    },
}

/// Opens a channel to the gateway at `address` (`host:port`), verifying the
/// gateway's certificate for `server_name`.
pub async fn connect(
    address: &str,
    server_name: &str,
    tls: ClientConfig,
) -> Result<Channel, ConnectError> {
    let uri: Uri = format!("http://{address}")
        .parse()
        .map_err(|_| ConnectError::Address(address.to_owned()))?;
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|_| ConnectError::ServerName(server_name.to_owned()))?;
    let connector = TlsConnector::from(Arc::new(tls));
    let dial = tower::service_fn(move |uri: Uri| {
        let connector = connector.clone();
        let name = name.clone();
        async move {
            let host = uri.host().unwrap_or("localhost").to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Endpoint::from(uri)
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .connect_with_connector(dial)
        .await
        .map_err(|source| ConnectError::Transport {
            address: address.to_owned(),
            source,
        })
}
