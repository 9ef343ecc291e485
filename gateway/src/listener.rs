//! Accepting connections: TCP, then a TLS 1.3 handshake with a required
//! client certificate, bounded in time and in number.
//!
//! Handshakes run in their own tasks so a client that never finishes one
//! cannot hold up anyone else; it is dropped at the handshake timeout. At most
//! `max_connections` connections are open at once; beyond that, new TCP
//! connections wait in the kernel backlog.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use joinery_crypto::identity::PeerIdentity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::metrics;
use crate::peer::PeerInfo;
use crate::tls_reload::TlsReloader;

/// An established, authenticated connection.
pub struct Connection {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
    _slot: OwnedSemaphorePermit,
}

/// Starts accepting; the returned stream yields authenticated connections.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<TlsReloader>,
    handshake_timeout: Duration,
    max_connections: usize,
) -> ReceiverStream<io::Result<Connection>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let identity = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .map(|leaf| PeerIdentity::from_certificate(leaf.as_ref()))
                            .unwrap_or(Err(joinery_crypto::identity::IdentityError::UriSanCount(
                                0,
                            )));
                        let info = PeerInfo { remote, identity };
                        let _ = tx
                            .send(Ok(Connection {
                                stream,
                                info,
                                _slot: slot,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => {
                        metrics::handshake_failed("refused");
                        tracing::info!(%remote, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        metrics::handshake_failed("timeout");
                        tracing::info!(%remote, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

impl Connected for Connection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
