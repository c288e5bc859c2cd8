//! The node's local HTTP JSON API (axum): the one way the CLI talking to a
//! running node, the web UI and scripts reach it. `docs/API.md` specifies
//! every endpoint; `tests/api_docs.rs` runs its examples.
//!
//! ```text
//!   request ──► checks (auth.rs, in this order, before routing):
//!                 1. Host is a loopback name or address      else 403 forbidden
//!                 2. not GET/HEAD: Origin absent or our own  else 403 forbidden
//!                    (OPTIONS: always 403, no CORS ever)
//!                 3. Bearer token or peershare_token cookie  else 401 unauthorized
//!                 4. Content-Length at most MAX_BODY_BYTES   else 413 too_large
//!           ──► routes (ENDPOINTS) ──► handlers.rs: thin, one Node method each
//!                                      (blocking ones on the blocking pool)
//! ```
//!
//! [`router`] is the whole API as a tower service: tests drive it without a
//! socket (`tower::ServiceExt::oneshot`). [`serve`] runs it on a listener
//! (HTTP/1.1, hyper) until shutdown, and ends the event streams then, and
//! any connection still open after a grace period, so that shutdown is
//! complete whatever the clients do. Errors are always `{"error": {"kind": ..., "message": ...}}`
//! ([`ErrorBody`]), the kind deciding the status ([`status_of`]).

pub mod auth;
mod handlers;
pub mod nodefile;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use auth::{ApiToken, TOKEN_COOKIE, TOKEN_FILE, is_loopback_host};
pub use nodefile::{NODE_FILE, NodeFile};

use crate::download::manager::ManagerError;
use crate::download::order::Order;
use crate::error::StoreError;
use crate::node::Node;
use crate::ops::NoneAnswered;

/// Largest request body taken, bytes; a larger one is answered 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How often an idle event stream sends a keep-alive comment.
pub const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Declares the endpoints once: [`ENDPOINTS`] (what `docs/API.md` must
/// document) and the routes are the same list.
macro_rules! endpoints {
    ($($method:ident $path:literal => $handler:path;)*) => {
        /// Every endpoint, as (method, path) with `{id}` for a download ID.
        pub const ENDPOINTS: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        fn routes() -> Router<ApiState> {
            Router::new()$(.route($path, on(MethodFilter::$method, $handler)))*
        }
    };
}

endpoints! {
    GET "/api/v1/status" => handlers::status;
    GET "/api/v1/library" => handlers::library;
    POST "/api/v1/library/share" => handlers::share;
    POST "/api/v1/library/unshare" => handlers::unshare;
    GET "/api/v1/peers" => handlers::peers;
    GET "/api/v1/catalog" => handlers::catalog;
    GET "/api/v1/downloads" => handlers::downloads;
    POST "/api/v1/downloads" => handlers::add_download;
    GET "/api/v1/downloads/{id}" => handlers::download;
    POST "/api/v1/downloads/{id}/pause" => handlers::pause;
    POST "/api/v1/downloads/{id}/resume" => handlers::resume;
    POST "/api/v1/downloads/{id}/cancel" => handlers::cancel;
    GET "/api/v1/events" => handlers::events;
}

/// What the handlers work with.
#[derive(Clone)]
struct ApiState {
    node: Node,
    /// Becomes true when [`serve`] shuts down (`None`: a bare [`router`]),
    /// ending the event streams.
    stop: Option<watch::Receiver<bool>>,
}

/// The whole API over `node`, every request checked against `token`
/// (see the module's diagram). Event streams end when the node shuts down.
pub fn router(node: Node, token: ApiToken) -> Router {
    app(node, token, None)
}

fn app(node: Node, token: ApiToken, stop: Option<watch::Receiver<bool>>) -> Router {
    let routes = routes()
        .fallback(handlers::no_endpoint)
        .method_not_allowed_fallback(handlers::no_endpoint_405)
        .with_state(ApiState { node, stop });
    // The checks wrap the routes as one service, so they run before
    // routing: an unchecked request learns nothing of the paths.
    Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(token),
            auth::checks,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// How long a client has to send a request's head (its first one, or the
/// next on a kept-alive connection) before its connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long requests in progress have to finish once [`serve`] is told to
/// shut down; then their connections are closed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the API on `listener` (HTTP/1.1) until `shutdown` completes,
/// then stops gracefully: no new connection, event streams ended, idle
/// connections closed, requests in progress given [`SHUTDOWN_GRACE`] to
/// finish; returns when every connection's task has ended. While it runs
/// the node's status names its address ([`Node::set_api`]).
pub async fn serve(
    node: Node,
    listener: TcpListener,
    token: ApiToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let app = app(node.clone(), token, Some(stopped.clone()));
    node.set_api(Some(addr));
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, app.clone(), stopped.clone()));
                }
                Err(e) => {
                    // Out of descriptors, typically: let some close.
                    tracing::warn!("API: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop.send(true);
    let all_ended = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, all_ended)
        .await
        .is_err()
    {
        tracing::warn!(
            "API: closing {} connections still busy after {SHUTDOWN_GRACE:?}",
            connections.len()
        );
        connections.shutdown().await;
    }
    node.set_api(None);
    Ok(())
}

/// One client's connection, until it closes or `stopped` (then as soon as
/// the request in progress, if any, is answered).
async fn serve_connection(stream: TcpStream, app: Router, mut stopped: watch::Receiver<bool>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = stopped.wait_for(|s| *s) => connection.as_mut().graceful_shutdown(),
    }
    let _ = connection.await;
}

/// Every error answer: `{"error": {"kind": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorInfo,
}

/// What went wrong: a kind a program acts on ([`status_of`] gives its HTTP
/// status), and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub kind: String,
    pub message: String,
}

/// The HTTP status of an error kind (an unknown kind is a 500).
pub fn status_of(kind: &str) -> StatusCode {
    match kind {
        "usage" => StatusCode::BAD_REQUEST,
        "unauthorized" => StatusCode::UNAUTHORIZED,
        "forbidden" => StatusCode::FORBIDDEN,
        "not_found" => StatusCode::NOT_FOUND,
        "method_not_allowed" => StatusCode::METHOD_NOT_ALLOWED,
        "conflict" => StatusCode::CONFLICT,
        "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "local" => StatusCode::UNPROCESSABLE_ENTITY,
        "unreachable" | "refused" => StatusCode::BAD_GATEWAY,
        "busy" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error answer.
#[derive(Debug)]
struct ApiError {
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    fn usage(message: impl Into<String>) -> Self {
        Self::new("usage", message)
    }

    fn too_large() -> Self {
        Self::new(
            "too_large",
            format!("the request body is larger than the {MAX_BODY_BYTES} bytes the API takes"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.kind);
        let body = ErrorBody {
            error: ErrorInfo {
                kind: self.kind.into(),
                message: self.message,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let kind = match e {
            StoreError::NotShared(_) => "not_found",
            _ => "local",
        };
        Self::new(kind, e.to_string())
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        Self::new(e.kind(), e.to_string())
    }
}

impl From<NoneAnswered> for ApiError {
    fn from(e: NoneAnswered) -> Self {
        Self::new(e.kind(), e.to_string())
    }
}

/// The body of `POST /api/v1/library/share`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareBody {
    /// Absolute paths of files or folders (the node resolves nothing
    /// against a working folder of its own).
    pub paths: Vec<PathBuf>,
    /// Left out of the catalog: found only by ticket or ID.
    #[serde(default)]
    pub unlisted: bool,
}

/// The body of `POST /api/v1/library/unshare`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnshareBody {
    /// File IDs or absolute paths.
    pub targets: Vec<String>,
}

/// The body of `POST /api/v1/downloads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadBody {
    pub order: Order,
    /// The absolute folder the order's relative output is taken from (the
    /// client's working folder).
    pub cwd: PathBuf,
}

/// A JSON request body, at most [`MAX_BODY_BYTES`], whatever its
/// `Content-Type`; one that does not parse is a `usage` error saying why.
struct JsonBody<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large()
            } else {
                ApiError::usage(format!("cannot read the request body: {}", e.body_text()))
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::usage(format!("the request body is not as documented: {e}")))
    }
}
