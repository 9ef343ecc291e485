//! The operational HTTP endpoint of a running gateway or agent
//! (`--metrics-listen ADDR`): `GET /metrics` (Prometheus text format),
//! `GET /healthz` (the process is up) and `GET /readyz` (it can do its job:
//! for the gateway, the database answers and agreements are loaded).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Answers whether the process is ready; `Err` says why not.
pub type Readiness =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Installs the Prometheus recorder (once per process) and describes every
/// metric the agent and gateway record. Install it before the work starts
/// (a gateway's agreements and certificates publish their expiry as they
/// load); serve it once the process can answer readiness.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_latency_seconds".to_owned()),
            joinery_gateway::metrics::ACK_LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(joinery_gateway::metrics::COMMIT_GROUP_BATCHES.to_owned()),
            joinery_gateway::metrics::COMMIT_GROUP_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(joinery_gateway::metrics::LINKAGE_SECONDS.to_owned()),
            joinery_gateway::metrics::LINKAGE_SECONDS_BUCKETS,
        )?
        .install_recorder()?;
    joinery_gateway::metrics::describe();
    joinery_agent::metrics::describe();
    Ok(handle)
}

/// Binds `address` and serves the endpoint, with the metrics `handle`
/// holds, in the background.
pub async fn serve(
    address: SocketAddr,
    handle: PrometheusHandle,
    ready: Readiness,
) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready().await {
                        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {address}: {e}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    });
    Ok(bound)
}

/// Readiness that is always met (a process that is up can work).
pub fn always_ready() -> Readiness {
    Arc::new(|| Box::pin(async { Ok(()) }))
}
