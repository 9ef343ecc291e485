//! HTTP/JSON for analysts, beside gRPC on the same port and the same mutual
//! TLS: `POST /v1/query` with a query document (YAML or JSON) as the body
//! answers exactly as `joinery.v1.Query/Run` does, `POST
//! /v1/extract[?project=ID]` as `Query/Extract` does, and `GET
//! /v1/vocabulary` as `Query/Vocabulary` does, as JSON. For tools that
//! speak HTTP but not gRPC (`curl --cert`, a notebook, a BI tool).

use std::sync::Arc;

use axum::extract::{Extension, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use joinery_crypto::identity::PeerIdentity;
use joinery_proto::v1::{ExtractRequest, RunRequest};

use crate::peer::PeerInfo;
use crate::query::{QueryError, QueryService};

/// The HTTP routes.
pub fn routes(service: Arc<QueryService>) -> axum::Router {
    axum::Router::new()
        .route("/v1/query", axum::routing::post(run))
        .route("/v1/extract", axum::routing::post(extract))
        .route("/v1/vocabulary", axum::routing::get(vocabulary))
        .with_state(service)
}

async fn run(
    State(service): State<Arc<QueryService>>,
    peer: Option<Extension<PeerInfo>>,
    body: String,
) -> Response {
    let identity = match identity(peer) {
        Ok(identity) => identity,
        Err((code, reason)) => return error(code, &reason),
    };
    match service.answer(&identity, &RunRequest { query: body }).await {
        Ok(table) => json(StatusCode::OK, &crate::analytics::table_json(&table)),
        Err(refused) => refusal(&refused),
    }
}

async fn vocabulary(
    State(service): State<Arc<QueryService>>,
    peer: Option<Extension<PeerInfo>>,
) -> Response {
    let identity = match identity(peer) {
        Ok(identity) => identity,
        Err((code, reason)) => return error(code, &reason),
    };
    match service.vocabulary(&identity) {
        Ok(words) => json(
            StatusCode::OK,
            &crate::analytics::shared::Shared::vocabulary_json(&words),
        ),
        Err(refused) => refusal(&refused),
    }
}

#[derive(serde::Deserialize)]
struct ExtractParams {
    #[serde(default)]
    project: String,
}

async fn extract(
    State(service): State<Arc<QueryService>>,
    peer: Option<Extension<PeerInfo>>,
    Query(params): Query<ExtractParams>,
    body: String,
) -> Response {
    let identity = match identity(peer) {
        Ok(identity) => identity,
        Err((code, reason)) => return error(code, &reason),
    };
    let request = ExtractRequest {
        query: body,
        project: params.project,
    };
    match service.extract(&identity, &request).await {
        Ok(e) => {
            let rows: Vec<serde_json::Value> = e
                .rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "person": r.person, "row": r.row, "column": r.column, "value": r.value,
                    })
                })
                .collect();
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "project": e.project,
                    "reference_date": e.reference_date,
                    "explanation": e.explanation,
                    "row_heading": e.row_heading,
                    "column_heading": e.column_heading,
                    "measure": e.measure,
                    "rows": rows,
                }),
            )
        }
        Err(refused) => refusal(&refused),
    }
}

/// Who the client certificate names; the query service decides what they
/// may ask (an agency's certificate is refused there, as over gRPC).
fn identity(peer: Option<Extension<PeerInfo>>) -> Result<PeerIdentity, (StatusCode, String)> {
    match peer.map(|Extension(p)| p.identity) {
        Some(Ok(identity)) => Ok(identity),
        _ => Err((
            StatusCode::UNAUTHORIZED,
            "a client certificate is required".to_owned(),
        )),
    }
}

/// A refusal as its HTTP status and JSON error.
fn refusal(refused: &QueryError) -> Response {
    let code = match refused {
        QueryError::Invalid(_) => StatusCode::BAD_REQUEST,
        QueryError::Forbidden(_) => StatusCode::FORBIDDEN,
        QueryError::BudgetSpent(_) => StatusCode::TOO_MANY_REQUESTS,
        QueryError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        QueryError::Unavailable(_)
        | QueryError::Noise(_)
        | QueryError::Shards(_)
        | QueryError::MovedOn => StatusCode::SERVICE_UNAVAILABLE,
        QueryError::NotAnswering(_) => StatusCode::MISDIRECTED_REQUEST,
    };
    error(code, &refused.to_string())
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
