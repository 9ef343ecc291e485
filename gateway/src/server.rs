//! Assembling and running the gateway: storage, key, TLS listener and the
//! gRPC services (`Ingest`, `Query`, `grpc.health.v1`), with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use joinery_crypto::keys::SecretKey;
use joinery_crypto::signing::SigningKey;
use joinery_policies::SignedAgreement;
use joinery_proto::v1::audit_server::AuditServer;
use joinery_proto::v1::ingest_server::IngestServer;
use joinery_proto::v1::query_server::QueryServer;
use joinery_proto::v1::shard_server::ShardServer;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;

use crate::agreements::{Agreements, LiveAgreements};
use crate::audit::{AuditRecord, AuditService};
use crate::config::{Answering, GatewayConfig};
use crate::ingest::IngestService;
use crate::listener;
use crate::query::{QueryService, Source};
use crate::rekey::Rekeyer;
use crate::storage::{Backend, Storage, StorageError};
use crate::tls_reload::TlsReloader;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Key(#[from] joinery_crypto::keys::KeyError),
    #[error(transparent)]
    Agreements(#[from] crate::agreements::AgreementsError),
    #[error(transparent)]
    AuditKey(#[from] joinery_crypto::signing::SigningError),
    #[error(transparent)]
    Tls(#[from] joinery_crypto::tls::TlsError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(
        "--holds-shard and --answer-from-shards need every gateway on one PostgreSQL database (--database-url postgres://…): a SQLite store is one gateway's own, and has no snapshot to share between gateways"
    )]
    ShardsOnSqlite,
}

/// How long a stopping gateway waits for background work under way.
const BACKGROUND_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether a gateway can do its job.
#[derive(Clone)]
pub struct Readiness {
    storage: Storage,
    agreements: LiveAgreements,
    linkage_failures_before_unready: u64,
    admission: Arc<listener::Admission>,
}

impl Readiness {
    pub async fn check(&self) -> Result<(), String> {
        self.storage
            .ping()
            .await
            .map_err(|_| "the database does not answer".to_owned())?;
        if self.agreements.current().is_empty() {
            return Err("no signed agreement is loaded".to_owned());
        }
        if let Some(saturated) = self.admission.saturation() {
            return Err(format!("saturated: {saturated}"));
        }
        let linkage = self
            .storage
            .linkage_status()
            .await
            .map_err(|_| "the database does not answer".to_owned())?;
        if linkage.failures >= self.linkage_failures_before_unready {
            return Err(format!(
                "degraded: the last {} linkage runs failed (see the gateway's log); answers come from links as of {}",
                linkage.failures,
                crate::linker::linked_as_of(&linkage)
            ));
        }
        Ok(())
    }
}

/// How often the agreements directory is checked for changes.
const AGREEMENTS_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Audits that `signed` is in force at this gateway.
async fn audit_loaded(storage: &Storage, signed: &SignedAgreement) -> Result<(), StorageError> {
    let path = signed.path.display().to_string();
    storage
        .append_audit(&AuditRecord::agreement_loaded(
            &signed.agreement.reference(),
            &signed.digest,
            &path,
        ))
        .await?;
    Ok(())
}

/// While serving: puts a changed agreements directory in force (new
/// versions signed and dropped in need no restart), auditing each
/// agreement it adds; a directory that does not load whole is logged and
/// the agreements in force are kept.
async fn reload_agreements(
    storage: Storage,
    agreements: LiveAgreements,
    mut stopping: crate::background::Stopping,
) {
    let mut ticks = tokio::time::interval(AGREEMENTS_CHECK_EVERY);
    while stopping.tick(&mut ticks).await {
        match agreements.reload() {
            Ok(added) => {
                for signed in added {
                    tracing::info!(agreement = %signed.agreement.id, version = signed.agreement.version, digest = %signed.digest, "agreement put in force without a restart");
                    if let Err(e) = audit_loaded(&storage, &signed).await {
                        tracing::error!(error = %e, "could not audit an agreement loaded");
                    }
                }
            }
            Err(e) => tracing::error!(
                error = %e,
                "the agreements directory changed but does not load; keeping the agreements in force"
            ),
        }
    }
}

/// A gateway bound to its address, ready to serve.
pub struct Gateway {
    config: GatewayConfig,
    listener: TcpListener,
    tls: Arc<TlsReloader>,
    storage: Storage,
    rekeyer: Rekeyer,
    agreements: LiveAgreements,
    audit_key: Arc<SigningKey>,
    /// The listener's overload manager (readiness reads its saturation).
    admission: Arc<listener::Admission>,
    /// Where answers read the linked population.
    population: crate::query::Source,
}

impl Gateway {
    /// Opens storage (running migrations), loads or creates the gateway key,
    /// loads the TLS material and binds the listener.
    pub async fn bind(config: GatewayConfig) -> Result<Self, GatewayError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| GatewayError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let agreements = Agreements::load_dir(&config.agreements_dir())?;
        if agreements.is_empty() {
            tracing::warn!(directory = %config.agreements_dir().display(), "no signed agreements loaded: every ingest session will be refused");
        }
        // Refused before a SQLite store is made for it.
        let url = config.database_url();
        if !matches!(config.answering, Answering::Whole)
            && Backend::of_url(&url) == Some(Backend::Sqlite)
        {
            return Err(GatewayError::ShardsOnSqlite);
        }
        let storage = Storage::open(&url).await?;
        let key = SecretKey::load_or_create(&config.key_file())?;
        let audit_key = Arc::new(SigningKey::load_or_create(&config.audit_key_file())?);
        for signed in agreements.iter() {
            audit_loaded(&storage, signed).await?;
        }
        let agreements = LiveAgreements::new(&config.agreements_dir(), agreements);
        let tls = Arc::new(TlsReloader::new(config.tls.clone())?);
        let population = Source::new(&config.answering)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| GatewayError::Bind {
                    address: config.listen,
                    source,
                })?;
        Ok(Self {
            tls,
            rekeyer: Rekeyer::new(&key),
            admission: listener::Admission::new(config.limits),
            config,
            listener,
            storage,
            agreements,
            audit_key,
            population,
        })
    }

    /// A probe for readiness endpoints: the database answers, at least one
    /// agreement is loaded, no connection budget is nearly spent, and
    /// linkage has not failed too often in a row.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            storage: self.storage.clone(),
            agreements: self.agreements.clone(),
            linkage_failures_before_unready: self.config.linkage_failures_before_unready,
            admission: Arc::clone(&self.admission),
        }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Serves until `shutdown` completes, then stops accepting and lets open
    /// streams finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        let limits = self.config.limits;
        let address = self.local_addr();
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<IngestServer<IngestService>>().await;
        health.set_serving::<QueryServer<QueryService>>().await;
        health.set_serving::<ShardServer<QueryService>>().await;

        let ingest = IngestServer::new(IngestService::new(
            self.storage.clone(),
            self.rekeyer.clone(),
            self.agreements.clone(),
            &limits,
        ))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limits.max_message_bytes);
        let query_service = Arc::new(QueryService::new(
            self.storage.clone(),
            self.agreements.clone(),
            self.rekeyer.clone(),
            self.population,
        ));
        let query = QueryServer::from_arc(Arc::clone(&query_service));
        let shard = ShardServer::from_arc(Arc::clone(&query_service));
        let incoming = listener::incoming(self.listener, self.tls, Arc::clone(&self.admission));
        let mut background = crate::background::Supervisor::default();
        let (storage, agreements) = (self.storage.clone(), self.agreements.clone());
        let interval = self.config.retention_interval;
        background.spawn("retention", move |stopping| {
            crate::retention::every(storage, agreements, interval, stopping)
        });
        let (storage, agreements) = (self.storage.clone(), self.agreements.clone());
        let interval = self.config.linkage_interval;
        background.spawn("linkage", move |stopping| {
            crate::linker::every(storage, agreements, interval, stopping)
        });
        let (storage, agreements) = (self.storage.clone(), self.agreements.clone());
        background.spawn("agreements", move |stopping| {
            reload_agreements(storage, agreements, stopping)
        });
        let (storage, key) = (self.storage.clone(), self.audit_key.clone());
        let interval = self.config.checkpoint_interval;
        background.spawn("audit checkpoints", move |stopping| {
            crate::audit::every(storage, key, interval, stopping)
        });
        let audit = AuditServer::new(AuditService::new(self.storage.clone()));
        tracing::info!(%address, database = ?self.storage.backend(), "gateway serving");
        // gRPC services and the analysts' HTTP/JSON route on one port.
        let routes = tonic::service::Routes::new(health_service)
            .add_service(ingest)
            .add_service(query)
            .add_service(shard)
            .add_service(audit)
            .into_axum_router()
            .merge(crate::http::routes(query_service));
        Server::builder()
            .concurrency_limit_per_connection(limits.max_streams_per_connection as usize)
            .max_concurrent_streams(Some(limits.max_streams_per_connection))
            .tcp_nodelay(true)
            .accept_http1(true)
            .add_routes(tonic::service::Routes::from(routes))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        // Let a linkage run or retention pass under way finish.
        background.shutdown(BACKGROUND_GRACE).await;
        // Sign the head once more, so a clean stop leaves the whole log covered.
        if let Err(e) = crate::audit::checkpoint(&self.storage, &self.audit_key).await {
            tracing::error!(error = %e, "final audit checkpoint failed");
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn readiness_turns_degraded_after_so_many_linkage_failures_in_a_row() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&Storage::sqlite_url(dir.path()))
            .await
            .unwrap();
        let example: joinery_policies::model::Agreement = serde_saphyr::from_str(include_str!(
            "../../policies/examples/children-at-risk-stratification.yaml"
        ))
        .unwrap();
        let signed = SignedAgreement {
            agreement: example,
            digest: String::new(),
            path: "example.yaml".into(),
        };
        let ready = Readiness {
            storage: storage.clone(),
            agreements: LiveAgreements::fixed(Agreements::from_verified(vec![signed])),
            linkage_failures_before_unready: 2,
            admission: listener::Admission::new(crate::config::Limits::default()),
        };
        assert!(ready.check().await.is_ok());
        storage.record_linkage_outcome(false).await.unwrap();
        assert!(
            ready.check().await.is_ok(),
            "one failure is not yet degraded"
        );
        storage.record_linkage_outcome(false).await.unwrap();
        let degraded = ready.check().await.unwrap_err();
        assert!(
            degraded.contains("degraded") && degraded.contains("never"),
            "{degraded}"
        );
        storage.record_linkage_outcome(true).await.unwrap();
        assert!(ready.check().await.is_ok(), "a success clears it");
        let status = storage.linkage_status().await.unwrap();
        assert_eq!(status.failures, 0);
        assert!(crate::linker::linked_as_of(&status).contains("0 minutes ago"));
    }
}
