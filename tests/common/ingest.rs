//! Speaking the ingest protocol directly, as a hand-built client would:
//! for tests of what the gateway accepts and refuses.

use joinery_crypto::tls::TlsFiles;
use joinery_proto::v1::ingest_client::IngestClient;
use joinery_proto::v1::{
    Ack, AgentMessage, Batch, BatchBody, GatewayMessage, Hello, Record, agent_message,
    gateway_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

use super::Deployment;

pub fn files(d: &Deployment, cert: (std::path::PathBuf, std::path::PathBuf)) -> TlsFiles {
    TlsFiles {
        ca: d.ca(),
        cert: cert.0,
        key: cert.1,
        crl: None,
    }
}

pub async fn channel(address: &str, config: rustls::ClientConfig) -> Result<Channel, String> {
    joinery_proto::channel::connect(address, "localhost", config)
        .await
        .map_err(|e| e.to_string())
}

/// An honest Hello for `org` under the deployment's signed agreement.
pub fn hello(d: &Deployment, org: &str) -> Hello {
    let signed = joinery_policies::SignedAgreement::load(&d.agreement()).unwrap();
    Hello {
        organisation: org.to_owned(),
        agreement_id: signed.agreement.id.clone(),
        agreement_version: signed.agreement.version,
        agent_version: "test".to_owned(),
        agreement_digest: signed.digest,
    }
}

/// A batch of `records` records for `dataset`, each with a birth month.
pub fn batch_for(dataset: &str, seed: u8, records: usize) -> Batch {
    let body = BatchBody {
        dataset: dataset.to_owned(),
        source: format!("{dataset}.csv"),
        snapshot: String::new(),
        sequence: u64::from(seed),
        records: (0..records)
            .map(|i| Record {
                source_row: i as u64 + 2,
                local_pseudonym: {
                    let mut p = vec![seed; 32];
                    p[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    p
                },
                nhs_pseudonym: vec![],
                attributes: [("birth_month".to_owned(), "2015-04".to_owned())].into(),
                events: vec![],
                linkage: None,
            })
            .collect(),
    };
    Batch {
        batch_id: body.digest(),
        body: Some(body),
    }
}

/// A batch of speech and language therapy records.
pub fn batch(seed: u8, records: usize) -> Batch {
    batch_for("salt_contacts", seed, records)
}

/// An open ingest session: send batches, read acks.
pub struct Session {
    tx: mpsc::Sender<AgentMessage>,
    rx: tonic::Streaming<GatewayMessage>,
}

impl Session {
    pub async fn open(
        address: &str,
        config: rustls::ClientConfig,
        hello: Hello,
    ) -> Result<Self, (Code, String)> {
        let channel = channel(address, config)
            .await
            .map_err(|e| (Code::Unavailable, e))?;
        let (tx, rx) = mpsc::channel(8);
        tx.send(AgentMessage {
            kind: Some(agent_message::Kind::Hello(hello)),
        })
        .await
        .unwrap();
        let mut stream = IngestClient::new(channel)
            .max_encoding_message_size(usize::MAX)
            .stream(ReceiverStream::new(rx))
            .await
            .map_err(|s| (s.code(), s.message().to_owned()))?
            .into_inner();
        match stream.message().await {
            Ok(Some(GatewayMessage {
                kind: Some(gateway_message::Kind::Welcome(_)),
            })) => Ok(Self { tx, rx: stream }),
            Ok(other) => panic!("expected Welcome, got {other:?}"),
            Err(s) => Err((s.code(), s.message().to_owned())),
        }
    }

    pub async fn send(&mut self, batch: Batch) -> Result<Ack, (Code, String)> {
        self.tx
            .send(AgentMessage {
                kind: Some(agent_message::Kind::Batch(batch)),
            })
            .await
            .map_err(|_| (Code::Cancelled, "stream closed".to_owned()))?;
        match self.rx.message().await {
            Ok(Some(GatewayMessage {
                kind: Some(gateway_message::Kind::Ack(ack)),
            })) => Ok(ack),
            Ok(other) => panic!("expected Ack, got {other:?}"),
            Err(s) => Err((s.code(), s.message().to_owned())),
        }
    }
}

pub fn org_config(d: &Deployment, org: &str) -> rustls::ClientConfig {
    joinery_crypto::tls::client_config(&files(d, d.org_cert(org))).unwrap()
}
