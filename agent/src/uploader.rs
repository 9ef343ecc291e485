//! The gRPC transport ([`Grpc`]): one delivery session with the gateway over
//! `joinery.v1.Ingest/Stream`, mutual TLS.
//!
//! The uploader keeps at most `window` batches unacknowledged: sending waits
//! for acks when the window is full. An ack arrives only after the gateway has
//! committed the batch, so a batch counts as delivered only then.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use joinery_proto::v1::ingest_client::IngestClient;
use joinery_proto::v1::{
    AgentMessage, Batch, GatewayMessage, Hello, agent_message, gateway_message,
};
use rustls::ClientConfig;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

use crate::config::GatewayEndpoint;
use crate::transport::{Acked, Session, Transport, UploadError};

/// How long a finishing session waits for the gateway to end its side.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

fn from_status(status: tonic::Status, opening: bool) -> UploadError {
    let message = joinery_proto::channel::reason(&status);
    let code = status.code();
    if opening {
        UploadError::Refused { code, message }
    } else {
        UploadError::Ended { code, message }
    }
}

/// The real transport: a mutual-TLS connection to the gateway per session.
pub struct Grpc {
    pub gateway: GatewayEndpoint,
    pub tls: ClientConfig,
    pub hello: Hello,
    /// Batches sent but not yet acknowledged, at most.
    pub window: usize,
}

impl Transport for Grpc {
    type Session = Uploader;

    async fn open(&self) -> Result<Uploader, UploadError> {
        let channel = joinery_proto::channel::connect(
            &self.gateway.address,
            self.gateway.server_name(),
            self.tls.clone(),
        )
        .await?;
        Uploader::open(
            channel,
            self.hello.clone(),
            self.window,
            self.gateway.compress,
        )
        .await
    }
}

pub struct Uploader {
    outbound: mpsc::Sender<AgentMessage>,
    inbound: Streaming<GatewayMessage>,
    pending: HashMap<String, (usize, usize, Instant)>,
    window: usize,
    max_batch_bytes: usize,
}

impl Uploader {
    /// Opens a session: sends `hello` and waits for the gateway's welcome.
    /// With `compress`, batches go gzip-compressed.
    async fn open(
        channel: Channel,
        hello: Hello,
        window: usize,
        compress: bool,
    ) -> Result<Self, UploadError> {
        let (outbound, rx) = mpsc::channel(window.max(1));
        outbound
            .send(AgentMessage {
                kind: Some(agent_message::Kind::Hello(hello)),
            })
            .await
            .map_err(|_| UploadError::Protocol("session closed before Hello"))?;
        let mut client = IngestClient::new(channel)
            .max_decoding_message_size(4 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        if compress {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        joinery_proto::trace_context::inject_current(request.metadata_mut());
        let mut inbound = client
            .stream(request)
            .await
            .map_err(|s| from_status(s, true))?
            .into_inner();
        let welcome = match inbound.message().await {
            Ok(Some(GatewayMessage {
                kind: Some(gateway_message::Kind::Welcome(welcome)),
            })) => welcome,
            Ok(_) => return Err(UploadError::Protocol("expected Welcome")),
            Err(status) => return Err(from_status(status, true)),
        };
        Ok(Self {
            outbound,
            inbound,
            pending: HashMap::new(),
            window: window.max(1),
            max_batch_bytes: usize::try_from(welcome.max_batch_bytes).unwrap_or(usize::MAX),
        })
    }

    async fn next_ack(&mut self) -> Result<Acked, UploadError> {
        match self.inbound.message().await {
            Ok(Some(GatewayMessage {
                kind: Some(gateway_message::Kind::Ack(ack)),
            })) => {
                let (tag, records, sent) = self
                    .pending
                    .remove(&ack.batch_id)
                    .ok_or(UploadError::Protocol("ack for a batch not sent"))?;
                Ok(Acked {
                    tag,
                    records,
                    ack,
                    latency: sent.elapsed(),
                })
            }
            Ok(Some(_)) => Err(UploadError::Protocol("expected Ack")),
            Ok(None) => Err(UploadError::Closed(self.pending.len())),
            Err(status) => Err(from_status(status, false)),
        }
    }
}

impl Session for Uploader {
    fn max_batch_bytes(&self) -> usize {
        self.max_batch_bytes
    }

    /// Collects acks first while the window is full.
    async fn send(&mut self, tag: usize, batch: Batch) -> Result<Vec<Acked>, UploadError> {
        let mut acked = Vec::new();
        while self.pending.len() >= self.window {
            acked.push(self.next_ack().await?);
        }
        let records = batch.body.as_ref().map_or(0, |b| b.records.len());
        self.pending
            .insert(batch.batch_id.clone(), (tag, records, Instant::now()));
        if self
            .outbound
            .send(AgentMessage {
                kind: Some(agent_message::Kind::Batch(batch)),
            })
            .await
            .is_err()
        {
            // The stream is gone; the reason arrives on the inbound side.
            acked.push(self.next_ack().await?);
        }
        Ok(acked)
    }

    /// The request stream is closed, and the gateway's end of the response
    /// stream awaited (briefly), so it sees a session end, not a dropped
    /// connection.
    async fn finish(mut self) -> Result<Vec<Acked>, UploadError> {
        let mut acked = Vec::new();
        while !self.pending.is_empty() {
            acked.push(self.next_ack().await?);
        }
        drop(self.outbound);
        let closing = async { while let Ok(Some(_)) = self.inbound.message().await {} };
        let _ = tokio::time::timeout(CLOSE_WAIT, closing).await;
        Ok(acked)
    }
}
