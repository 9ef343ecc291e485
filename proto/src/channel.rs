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
    #[error("cannot connect to the gateway at {address}: {}", with_causes(source))]
    Transport {
        address: String,
        source: tonic::transport::Error,
    },
}

/// An error and its sources in one line. tonic's and hyper's own messages
/// say little ("transport error"); what failed (connection refused, an
/// unknown certificate, a name that does not resolve) is in their sources.
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// A status's message with what caused it (a transport failure's status
/// says only "transport error"; its sources say what failed). Not the
/// status's own `Display`, which prints its metadata too.
pub fn reason(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(cause) => format!("{}: {}", status.message(), with_causes(cause)),
        None => status.message().to_owned(),
    }
}

/// A gRPC status code as words ("permission denied"), for messages people
/// read.
pub fn in_words(code: tonic::Code) -> String {
    let mut words = String::new();
    for c in format!("{code:?}").chars() {
        if c.is_uppercase() && !words.is_empty() {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    words
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
    let checked_as = server_name.to_owned();
    let dial = tower::service_fn(move |uri: Uri| {
        let connector = connector.clone();
        let name = name.clone();
        let checked_as = checked_as.clone();
        async move {
            let host = uri.host().unwrap_or("localhost").to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| with_name_hint(e, &checked_as))?;
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

/// A handshake refused because the gateway's certificate does not carry the
/// name it was checked against (as when dialling an IP address the
/// certificate does not list): says which name, and how to give the right
/// one.
fn with_name_hint(error: std::io::Error, checked_as: &str) -> std::io::Error {
    use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
    let wrong_name = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(NotValidForName | NotValidForNameContext { .. })
            )
        });
    if !wrong_name {
        return error;
    }
    std::io::Error::new(
        error.kind(),
        format!(
            "{error}; it was checked against the name {checked_as:?}: give the name the gateway's certificate carries with --server-name (gateway.server_name in an agent's configuration; for a shard, as the host of its address in --answer-from-shards)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::with_causes;

    /// An error with a message and a source, as a `thiserror` variant is.
    #[derive(Debug)]
    struct Reading(String, std::io::Error);

    impl std::fmt::Display for Reading {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Reading {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    #[test]
    fn a_cause_the_message_already_quotes_is_not_repeated() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let quoting = Reading(
            "cannot read key file k: No such file or directory".into(),
            io(),
        );
        assert_eq!(
            with_causes(&quoting),
            "cannot read key file k: No such file or directory"
        );
        let plain = Reading("reading k".into(), io());
        assert_eq!(with_causes(&plain), "reading k: No such file or directory");
    }
}
