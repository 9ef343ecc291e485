//! HTTP/JSON for analysts, beside gRPC on the same port and the same mutual
//! TLS: `POST /v1/query` with a query document (YAML or JSON) as the body
//! answers exactly as `joinery.v1.Query/Run` does, as JSON. For tools that
//! speak HTTP but not gRPC (`curl --cert`, a notebook, a BI tool).

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use joinery_crypto::identity::PeerIdentity;
use joinery_proto::v1::RunRequest;

use crate::peer::PeerInfo;
use crate::query::QueryService;

/// The HTTP routes.
pub fn routes(service: Arc<QueryService>) -> axum::Router {
    axum::Router::new()
        .route("/v1/query", axum::routing::post(run))
        .with_state(service)
}

async fn run(
    State(service): State<Arc<QueryService>>,
    peer: Option<Extension<PeerInfo>>,
    body: String,
) -> Response {
    let identity = match peer.map(|Extension(p)| p.identity) {
        Some(Ok(identity @ PeerIdentity::Analyst(_))) => identity,
        Some(Ok(other)) => {
            return error(
                StatusCode::FORBIDDEN,
                &format!(
                    "{other} may not query the linked population; an analyst certificate is required"
                ),
            );
        }
        _ => return error(StatusCode::UNAUTHORIZED, "a client certificate is required"),
    };
    match service.answer(&identity, &RunRequest { query: body }).await {
        Ok(table) => json(StatusCode::OK, &crate::analytics::table_json(&table)),
        Err(status) => {
            let code = match status.code() {
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(code, status.message())
        }
    }
}

fn json(code: StatusCode, value: &serde_json::Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn error(code: StatusCode, message: &str) -> Response {
    json(code, &serde_json::json!({ "error": message }))
}
