//! The console's local HTTP server.
//!
//! Routes: `/` (the page), `/assets/*` (its script, charts and styles) and
//! the JSON API the page calls — `GET /api/library` (the built-in
//! indicators and stratifications, from this binary), `GET
//! /api/vocabulary` (what the agreements in force share, from the gateway),
//! `POST /api/explain` (a query document in words, checked here; nothing
//! is sent) and `POST /api/run` (the document sent to the gateway's `Run`;
//! its disclosure-controlled table back as JSON).
//!
//! The console holds the analyst's certificate, so whoever can call its API
//! asks as the analyst. Three guards keep that to the analyst's browser:
//! it listens on loopback only; a request must name the console itself as
//! `Host` (a web page that rebinds its own name to 127.0.0.1 cannot call
//! it); and the API needs the cookie set when the start-up address, with
//! its random token, was opened — `SameSite=Strict`, so no other site's
//! page can send it.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use joinery_gateway::analytics::library::{indicators, stratifications};
use joinery_gateway::analytics::model::AnalystQuery;
use joinery_gateway::analytics::shared::Shared;
use joinery_proto::v1::query_client::QueryClient;
use joinery_proto::v1::{RunRequest, VocabularyRequest};
use tonic::transport::Channel;

use crate::assets;

/// The cookie that carries the start-up token.
const COOKIE: &str = "joinery_console";

/// What the browser may load and run: this console's own assets only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self' blob:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("the console may listen on a loopback address only (127.0.0.1 or ::1), not {0}")]
    NotLoopback(SocketAddr),
    #[error("listening on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("no random source for the console's token")]
    Random,
    #[error("serving the console: {0}")]
    Serve(std::io::Error),
}

/// A console bound to its local address, ready to serve.
pub struct Console {
    listener: tokio::net::TcpListener,
    state: ConsoleState,
}

#[derive(Clone)]
struct ConsoleState {
    gateway: QueryClient<Channel>,
    /// The gateway's address, as the page shows it.
    gateway_address: String,
    /// SHA-256 of the start-up token (compared as digests, so the time a
    /// comparison takes says nothing about the token).
    token_digest: Vec<u8>,
    /// The `Host` values that name this console.
    hosts: Vec<String>,
}

impl Console {
    /// Binds `listen` (loopback only) for a console asking `gateway`.
    pub async fn bind(
        listen: SocketAddr,
        gateway: QueryClient<Channel>,
        gateway_address: &str,
    ) -> Result<(Self, String), ConsoleError> {
        if !listen.ip().is_loopback() {
            return Err(ConsoleError::NotLoopback(listen));
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ConsoleError::Listen {
                address: listen,
                source,
            })?;
        let address = listener
            .local_addr()
            .map_err(|source| ConsoleError::Listen {
                address: listen,
                source,
            })?;
        let mut token = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut token)
            .map_err(|_| ConsoleError::Random)?;
        let token = hex::encode(token);
        let port = address.port();
        let hosts = vec![
            address.to_string(),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ];
        let state = ConsoleState {
            gateway,
            gateway_address: gateway_address.to_owned(),
            token_digest: digest(&token),
            hosts,
        };
        let url = format!("http://{address}/?token={token}");
        Ok((Self { listener, state }, url))
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ConsoleError> {
        axum::serve(self.listener, routes(self.state))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(ConsoleError::Serve)
    }
}

fn routes(state: ConsoleState) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/", get(page))
        .route("/assets/{name}", get(asset))
        .route("/api/library", get(library))
        .route("/api/vocabulary", get(vocabulary))
        .route("/api/explain", post(explain))
        .route("/api/run", post(run))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

fn digest(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

/// The guards (see the module doc), and the headers every answer carries.
async fn guard(State(state): State<ConsoleState>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !state.hosts.iter().any(|h| h == host) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "this console answers only to its own address (127.0.0.1 or localhost)",
        );
    }
    let path = request.uri().path();
    let has_cookie = cookie(request.headers()).is_some_and(|t| digest(t) == state.token_digest);
    if path == "/" {
        let offered = request
            .uri()
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|pair| pair.strip_prefix("token="));
        if let Some(offered) = offered {
            if digest(offered) != state.token_digest {
                return refuse(StatusCode::FORBIDDEN, NOT_THE_ADDRESS);
            }
            // Into a cookie, and off the address bar and the history.
            let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
            let value = format!("{COOKIE}={offered}; Path=/; HttpOnly; SameSite=Strict");
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            return secured(response);
        }
        if !has_cookie {
            return refuse(StatusCode::FORBIDDEN, NOT_THE_ADDRESS);
        }
    }
    if path.starts_with("/api/") && !has_cookie {
        return refuse(StatusCode::FORBIDDEN, NOT_THE_ADDRESS);
    }
    secured(next.run(request).await)
}

const NOT_THE_ADDRESS: &str = "open the address `joinery console` printed when it started (it carries a one-time token); reopen it if the console was restarted";

/// The console's token from the request's cookies.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn refuse(code: StatusCode, reason: &str) -> Response {
    secured(json(code, &serde_json::json!({ "error": reason })))
}

fn json(code: StatusCode, value: &serde_json::Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn page() -> Response {
    asset_response(assets::PAGE)
}

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match assets::named(&name) {
        Some(asset) => asset_response(asset),
        None => refuse(StatusCode::NOT_FOUND, "no such asset"),
    }
}

fn asset_response(asset: &assets::Asset) -> Response {
    ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
}

/// The built-in indicators, grouped by the question each answers, and the
/// stratifications: compiled into this binary as into the gateway.
async fn library() -> Response {
    let indicators: Vec<serde_json::Value> = indicators()
        .iter()
        .map(|i| {
            serde_json::json!({
                "name": i.name,
                "title": i.title,
                "question": i.question.words(),
                "source": i.source,
                "definition": i.definition,
                "better": i.better.map(|b| b.word()),
            })
        })
        .collect();
    let stratifications: Vec<serde_json::Value> = stratifications()
        .iter()
        .map(|s| {
            serde_json::json!({
                "reference": format!("{}@{}", s.name, s.version),
                "factors": s.factors.iter().map(|f| &f.name).collect::<Vec<_>>(),
                "tiers": s.tiers.iter().map(|t| &t.name).collect::<Vec<_>>(),
            })
        })
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({ "indicators": indicators, "stratifications": stratifications }),
    )
}

async fn vocabulary(State(state): State<ConsoleState>) -> Response {
    let mut gateway = state.gateway.clone();
    match gateway.vocabulary(VocabularyRequest {}).await {
        Ok(words) => {
            let mut words = Shared::vocabulary_json(&words.into_inner());
            words["gateway"] = serde_json::json!(state.gateway_address);
            json(StatusCode::OK, &words)
        }
        Err(status) => gateway_refusal(&status),
    }
}

/// A query document in words, or what is wrong with it (checked here;
/// nothing is sent).
async fn explain(body: String) -> Response {
    match AnalystQuery::parse(&body) {
        Ok(query) => json(
            StatusCode::OK,
            &serde_json::json!({ "explanation": joinery_gateway::analytics::explain(&query) }),
        ),
        Err(reason) => refuse(StatusCode::BAD_REQUEST, &reason),
    }
}

async fn run(State(state): State<ConsoleState>, body: String) -> Response {
    if let Err(reason) = AnalystQuery::parse(&body) {
        return refuse(StatusCode::BAD_REQUEST, &reason);
    }
    let mut gateway = state.gateway.clone();
    match gateway.run(RunRequest { query: body }).await {
        Ok(table) => {
            let table = table.into_inner();
            let mut answer = joinery_gateway::analytics::table_json(&table);
            answer["gateway"] = serde_json::json!(state.gateway_address);
            json(StatusCode::OK, &answer)
        }
        Err(status) => gateway_refusal(&status),
    }
}

/// The gateway's "no" (or a failure to reach it) as the page shows it.
fn gateway_refusal(status: &tonic::Status) -> Response {
    let words = joinery_proto::channel::in_words(status.code());
    let reason = joinery_proto::channel::reason(status);
    let code = match status.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => StatusCode::FORBIDDEN,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::BAD_GATEWAY,
    };
    refuse(code, &format!("the gateway refused ({words}): {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// A console whose gateway is never reached (the guard answers first).
    async fn console() -> (axum::Router, String, String) {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let (console, url) = Console::bind(
            "127.0.0.1:0".parse().unwrap(),
            QueryClient::new(channel),
            "gateway.example:7443",
        )
        .await
        .unwrap();
        let host = console.listener.local_addr().unwrap().to_string();
        let token = url.split("token=").nth(1).unwrap().to_owned();
        (routes(console.state), host, token)
    }

    async fn ask(
        router: &axum::Router,
        method: &str,
        path: &str,
        host: &str,
        cookie: Option<&str>,
        body: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host);
        if let Some(token) = cookie {
            request = request.header(header::COOKIE, format!("other=1; {COOKIE}={token}"));
        }
        let response = router
            .clone()
            .oneshot(
                request
                    .body(axum::body::Body::from(body.to_owned()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    #[tokio::test]
    async fn only_the_browser_holding_the_token_at_the_consoles_own_address_gets_in() {
        let (router, host, token) = console().await;
        // The start-up address sets the cookie and drops the token from
        // the address bar.
        let (status, headers, _) =
            ask(&router, "GET", &format!("/?token={token}"), &host, None, "").await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let cookie = headers[header::SET_COOKIE].to_str().unwrap();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        assert!(
            headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        // With the cookie: the page and the API.
        let (status, _, page) = ask(&router, "GET", "/", &host, Some(&token), "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("Joinery console"));
        let (status, _, library) =
            ask(&router, "GET", "/api/library", &host, Some(&token), "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            library.contains("cp-repeat-plans") && library.contains("\"better\":\"lower\""),
            "{library}"
        );
        let (status, _, explained) = ask(
            &router,
            "POST",
            "/api/explain",
            &host,
            Some(&token),
            "rows: segment\n",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{explained}");
        assert!(explained.contains("life-course segment"), "{explained}");
        let (status, _, refused) = ask(
            &router,
            "POST",
            "/api/run",
            &host,
            Some(&token),
            "rows: age_band\n",
        )
        .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "checked before it is sent: {refused}"
        );

        // Attacks: no cookie, a wrong token, another site's name for
        // 127.0.0.1 (DNS rebinding), a wrong token in the address.
        for (path, host, cookie) in [
            ("/api/library", host.as_str(), None),
            ("/api/run", host.as_str(), Some("0".repeat(64))),
            ("/", host.as_str(), None),
            ("/api/library", "attacker.example", Some(token.clone())),
            ("/", "attacker.example", Some(token.clone())),
        ] {
            let (status, _, body) = ask(&router, "POST", path, host, cookie.as_deref(), "").await;
            let (get_status, _, _) = ask(&router, "GET", path, host, cookie.as_deref(), "").await;
            assert!(
                status.is_client_error() && get_status.is_client_error(),
                "{path} at {host} with {cookie:?}: {status} {get_status} {body}"
            );
            assert!(!body.contains("cp-repeat-plans"), "{body}");
        }
        let (status, headers, _) = ask(
            &router,
            "GET",
            &format!("/?token={}", "f".repeat(64)),
            &host,
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(headers.get(header::SET_COOKIE).is_none());
        // The assets are served (they hold nothing about anyone).
        for name in ["console.js", "charts.js", "query.js", "console.css"] {
            let (status, _, _) =
                ask(&router, "GET", &format!("/assets/{name}"), &host, None, "").await;
            assert_eq!(status, StatusCode::OK, "{name}");
        }
    }

    #[tokio::test]
    async fn the_console_listens_on_loopback_only() {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let refused = Console::bind("0.0.0.0:0".parse().unwrap(), QueryClient::new(channel), "g")
            .await
            .err()
            .expect("refused");
        assert!(matches!(refused, ConsoleError::NotLoopback(_)), "{refused}");
    }
}
