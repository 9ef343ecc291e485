//! Accepting connections: TCP, then a TLS 1.3 handshake with a required
//! client certificate, each admitted by the gateway's overload manager
//! ([`Admission`]), in the manner of Envoy's:
//!
//! - **Handshakes** run in their own tasks, each bounded by the handshake
//!   timeout; at most `max_handshakes` at once, and a quarter of them from
//!   one source address. When a new connection arrives with its address's
//!   share (or every slot) taken, that address's oldest unfinished
//!   handshake (or the oldest of all) is shed: a flood of connections that
//!   never finish cannot keep a real client from starting one, a flood from
//!   one address sheds only its own, and accepting never stops.
//! - **Established connections** are admitted by the certificate's
//!   identity: agencies and analysts draw on separate budgets (analysts at
//!   most a quarter of `max_connections`), and one identity holds at most
//!   `max_connections_per_identity`; a connection beyond either is closed
//!   at once. Neither class can starve the other, nor one certificate its
//!   peers.
//! - **Idle connections** — no byte either way for `idle_timeout` — are
//!   closed.
//!
//! [`Admission::saturation`] says when any budget is nearly spent, for
//! readiness.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use joinery_crypto::identity::PeerIdentity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::config::Limits;
use crate::metrics;
use crate::peer::PeerInfo;
use crate::tls_reload::TlsReloader;

/// Who a connection is, for its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Class {
    Agency,
    Analyst,
}

/// The overload manager's state: pending handshakes, and established
/// connections by class and identity.
pub struct Admission {
    limits: Limits,
    state: Mutex<AdmissionState>,
}

#[derive(Default)]
struct AdmissionState {
    /// Unfinished handshakes, oldest first, by number and source address.
    handshakes: VecDeque<(u64, IpAddr, AbortHandle)>,
    next_handshake: u64,
    by_class: HashMap<Class, usize>,
    by_identity: HashMap<String, usize>,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AdmissionState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn class_budget(&self, class: Class) -> usize {
        let analysts = (self.limits.max_connections / 4).max(1);
        match class {
            Class::Analyst => analysts,
            Class::Agency => self.limits.max_connections.saturating_sub(analysts).max(1),
        }
    }

    /// Starts `handshake` (given its number) as a task for a connection from
    /// `from`, shedding that address's oldest unfinished handshake when it
    /// holds its share of the slots, or the oldest of all when every slot
    /// is taken.
    fn start_handshake<F>(&self, from: IpAddr, handshake: impl FnOnce(u64) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut state = self.state();
        let share = (self.limits.max_handshakes / 4).max(1);
        let from_there = state
            .handshakes
            .iter()
            .filter(|(_, a, _)| *a == from)
            .count();
        let shed = if from_there >= share {
            state.handshakes.iter().position(|(_, a, _)| *a == from)
        } else if state.handshakes.len() >= self.limits.max_handshakes.max(1) {
            Some(0)
        } else {
            None
        };
        if let Some((_, _, oldest)) = shed.and_then(|at| state.handshakes.remove(at)) {
            oldest.abort();
            metrics::turned_away("shed");
        }
        state.next_handshake += 1;
        let number = state.next_handshake;
        // Tracked before the task can finish: it must take this lock first.
        let task = tokio::spawn(handshake(number)).abort_handle();
        state.handshakes.push_back((number, from, task));
    }

    fn end_handshake(&self, number: u64) {
        self.state().handshakes.retain(|(n, _, _)| *n != number);
    }

    /// Admits an established connection of `identity`, or says why not.
    fn admit(self: &Arc<Self>, identity: &PeerInfo) -> Result<Admitted, &'static str> {
        let (class, key) = match &identity.identity {
            Ok(PeerIdentity::Organisation(code)) => (Class::Agency, format!("org:{code}")),
            Ok(PeerIdentity::Analyst(name)) => (Class::Analyst, format!("analyst:{name}")),
            // An answering gateway asking for a shard's part: with the
            // agencies, so a crowd of analysts cannot shut out the path
            // their own answers take.
            Ok(PeerIdentity::Gateway(name)) => (Class::Agency, format!("gateway:{name}")),
            // Refused on its first request; counted with analysts meanwhile.
            Err(_) => (Class::Analyst, "unnamed".to_owned()),
        };
        let mut state = self.state();
        if state.by_class.get(&class).copied().unwrap_or(0) >= self.class_budget(class) {
            return Err(match class {
                Class::Agency => "every agency connection slot is taken",
                Class::Analyst => "every analyst connection slot is taken",
            });
        }
        if state.by_identity.get(&key).copied().unwrap_or(0)
            >= self.limits.max_connections_per_identity
        {
            return Err("this certificate holds as many connections as one may");
        }
        *state.by_class.entry(class).or_default() += 1;
        *state.by_identity.entry(key.clone()).or_default() += 1;
        Ok(Admitted {
            admission: Arc::clone(self),
            class,
            key,
        })
    }

    /// Which budget is nearly spent (nine tenths or more), if any.
    pub fn saturation(&self) -> Option<String> {
        let state = self.state();
        let full = |used: usize, budget: usize| used * 10 >= budget * 9;
        if full(state.handshakes.len(), self.limits.max_handshakes) {
            return Some(format!(
                "{} of {} handshake slots are taken",
                state.handshakes.len(),
                self.limits.max_handshakes
            ));
        }
        for (class, name) in [(Class::Agency, "agency"), (Class::Analyst, "analyst")] {
            let used = state.by_class.get(&class).copied().unwrap_or(0);
            if full(used, self.class_budget(class)) {
                return Some(format!(
                    "{used} of {} {name} connection slots are taken",
                    self.class_budget(class)
                ));
            }
        }
        None
    }
}

/// An established connection's place in its budgets, given back on drop.
struct Admitted {
    admission: Arc<Admission>,
    class: Class,
    key: String,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut state = self.admission.state();
        if let Some(n) = state.by_class.get_mut(&self.class) {
            *n = n.saturating_sub(1);
        }
        if let Some(n) = state.by_identity.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.by_identity.remove(&self.key);
            }
        }
    }
}

/// An established, authenticated, admitted connection, closed when idle.
pub struct Connection {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
    _admitted: Admitted,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
}

impl Connection {
    /// Something moved: the idle clock starts again.
    fn active(&mut self) {
        let deadline = Instant::now() + self.idle_timeout;
        self.idle.as_mut().reset(deadline);
    }
}

/// Starts accepting under `admission`; the returned stream yields
/// authenticated, admitted connections.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<TlsReloader>,
    admission: Arc<Admission>,
) -> ReceiverStream<io::Result<Connection>> {
    let (tx, rx) = mpsc::channel(64);
    let limits = admission.limits;
    tokio::spawn(async move {
        loop {
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
            let acceptor = tls.current();
            let tx = tx.clone();
            let admitting = Arc::clone(&admission);
            admission.start_handshake(remote.ip(), move |number| async move {
                let handshake =
                    tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await;
                admitting.end_handshake(number);
                match handshake {
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
                        match admitting.admit(&info) {
                            Ok(admitted) => {
                                let _ = tx
                                    .send(Ok(Connection {
                                        stream,
                                        info,
                                        _admitted: admitted,
                                        idle_timeout: limits.idle_timeout,
                                        idle: Box::pin(tokio::time::sleep(limits.idle_timeout)),
                                    }))
                                    .await;
                            }
                            Err(why) => {
                                metrics::turned_away("over_budget");
                                tracing::info!(%remote, reason = why, "connection closed by the overload manager");
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        metrics::turned_away("refused");
                        tracing::info!(%remote, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        metrics::turned_away("timeout");
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
    /// Reads, or ends the connection (end of stream) once it has been idle
    /// for the idle timeout.
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    metrics::turned_away("idle");
                    Poll::Ready(Ok(()))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.active();
        }
        written
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
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.active();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flood_from_one_address_sheds_its_own_handshakes_first() {
        let admission = Admission::new(Limits {
            max_handshakes: 8,
            ..Limits::default()
        });
        let (flood, other): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        // Handshakes that never finish: number 1 from another address, then
        // twenty from one.
        admission.start_handshake(other, |_| std::future::pending());
        for _ in 0..20 {
            admission.start_handshake(flood, |_| std::future::pending());
        }
        let pending: Vec<(u64, IpAddr)> = admission
            .state()
            .handshakes
            .iter()
            .map(|(n, a, _)| (*n, *a))
            .collect();
        assert_eq!(
            pending,
            [(1, other), (20, flood), (21, flood)],
            "the flood keeps only its share (a quarter of 8), the other address its own"
        );
    }
}
