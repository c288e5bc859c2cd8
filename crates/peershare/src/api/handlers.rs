//! The handlers: each turns a request into one [`Node`] method call and its
//! answer into JSON, nothing more. Methods that read or write files (the
//! library, downloads.json) run on the blocking pool.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use super::{ApiError, ApiState, DownloadBody, JsonBody, SSE_KEEP_ALIVE, ShareBody, UnshareBody};
use crate::download::manager::{DownloadInfo, ManagerError};
use crate::node::Node;
use crate::node::events::{DownloadId, Event};
use crate::node::lan::Found;
use crate::node::status::NodeStatus;
use crate::ops::{Listing, SharedItem, Unshared};
use crate::store::ShareProgress;

type Answer<T> = Result<Json<T>, ApiError>;

/// `f(node)` on the blocking pool.
async fn blocking<T, E>(
    node: &Node,
    f: impl FnOnce(&Node) -> Result<T, E> + Send + 'static,
) -> Answer<T>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    let node = node.clone();
    match tokio::task::spawn_blocking(move || f(&node)).await {
        Ok(result) => result.map(Json).map_err(Into::into),
        Err(e) => Err(ApiError::new(
            "internal",
            format!("the request's task failed: {e}"),
        )),
    }
}

/// Refuses a relative path: the node has no working folder of the
/// client's to take it from.
fn absolute(what: &str, path: &Path) -> Result<(), ApiError> {
    if path.is_absolute() {
        return Ok(());
    }
    Err(ApiError::usage(format!(
        "{what} {} is not an absolute path (the node cannot know the folder it is relative to)",
        path.display()
    )))
}

/// A download ID from the URL.
fn download_id(id: Result<UrlPath<String>, PathRejection>) -> Result<DownloadId, ApiError> {
    let UrlPath(id) = id.map_err(|e| ApiError::usage(e.body_text()))?;
    id.parse()
        .map_err(|_| ApiError::usage(format!("{id:?} is not a download ID (a number)")))
}

pub(super) async fn status(State(s): State<ApiState>) -> Answer<NodeStatus> {
    blocking(&s.node, Node::status).await
}

pub(super) async fn library(State(s): State<ApiState>) -> Answer<Vec<SharedItem>> {
    blocking(&s.node, Node::shared).await
}

pub(super) async fn share(
    State(s): State<ApiState>,
    JsonBody(body): JsonBody<ShareBody>,
) -> Answer<Vec<SharedItem>> {
    for p in &body.paths {
        absolute("path", p)?;
    }
    blocking(&s.node, move |n| {
        n.share(&body.paths, body.unlisted, &ShareProgress::default())
    })
    .await
}

pub(super) async fn unshare(
    State(s): State<ApiState>,
    JsonBody(body): JsonBody<UnshareBody>,
) -> Answer<Vec<Unshared>> {
    blocking(&s.node, move |n| n.unshare(&body.targets)).await
}

pub(super) async fn peers(State(s): State<ApiState>) -> Answer<Vec<Found>> {
    s.node
        .peers()
        .await
        .map(Json)
        .map_err(|e| ApiError::new("failed", format!("cannot ask the LAN for peers: {e}")))
}

pub(super) async fn catalog(
    State(s): State<ApiState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer<Listing> {
    let Query(pairs) = query.map_err(|e| ApiError::usage(e.body_text()))?;
    let (mut peers, mut search) = (Vec::new(), Vec::new());
    for (key, value) in pairs {
        match key.as_str() {
            "peer" => peers.push(value.parse::<SocketAddr>().map_err(|_| {
                ApiError::usage(format!("peer {value:?} is not an address (IP:PORT)"))
            })?),
            "search" => search.push(value),
            _ => {
                return Err(ApiError::usage(format!(
                    "unknown query parameter {key:?} (the catalog takes peer and search)"
                )));
            }
        }
    }
    Ok(Json(s.node.catalog(peers, &search).await?))
}

pub(super) async fn downloads(State(s): State<ApiState>) -> Json<Vec<DownloadInfo>> {
    Json(s.node.downloads())
}

pub(super) async fn add_download(
    State(s): State<ApiState>,
    JsonBody(body): JsonBody<DownloadBody>,
) -> Result<(StatusCode, Json<DownloadInfo>), ApiError> {
    absolute("cwd", &body.cwd)?;
    let info = blocking(&s.node, move |n| n.download(body.order, &body.cwd)).await?;
    Ok((StatusCode::CREATED, info))
}

pub(super) async fn download(
    State(s): State<ApiState>,
    id: Result<UrlPath<String>, PathRejection>,
) -> Answer<DownloadInfo> {
    let id = download_id(id)?;
    s.node
        .download_info(id)
        .map(Json)
        .ok_or_else(|| ManagerError::Unknown(id).into())
}

pub(super) async fn pause(
    State(s): State<ApiState>,
    id: Result<UrlPath<String>, PathRejection>,
) -> Answer<DownloadInfo> {
    let id = download_id(id)?;
    blocking(&s.node, move |n| n.pause(id)).await
}

pub(super) async fn resume(
    State(s): State<ApiState>,
    id: Result<UrlPath<String>, PathRejection>,
) -> Answer<DownloadInfo> {
    let id = download_id(id)?;
    blocking(&s.node, move |n| n.resume(id)).await
}

pub(super) async fn cancel(
    State(s): State<ApiState>,
    id: Result<UrlPath<String>, PathRejection>,
) -> Answer<DownloadInfo> {
    let id = download_id(id)?;
    blocking(&s.node, move |n| n.cancel(id)).await
}

/// The node's events as Server-Sent Events, named by their `type`, until
/// the API or the node shuts down.
pub(super) async fn events(
    State(s): State<ApiState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = s.node.subscribe();
    let stops = (s.node.stopping(), s.stop);
    let stream = futures_util::stream::unfold(
        (rx, stops),
        |(mut rx, (mut node_stop, mut api_stop))| async move {
            let next = tokio::select! {
                // Events already published go out before the end.
                biased;
                next = rx.recv() => next,
                _ = until_true(Some(&mut node_stop)) => return None,
                _ = until_true(api_stop.as_mut()) => return None,
            };
            let sse = match next {
                Ok(event) => sse_event(&event),
                Err(RecvError::Lagged(missed)) => SseEvent::default()
                    .event("lagged")
                    .data(serde_json::json!({ "missed": missed }).to_string()),
                Err(RecvError::Closed) => return None,
            };
            Some((Ok(sse), (rx, (node_stop, api_stop))))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
}

/// Completes when `stop` is (or its sender is gone); never without one.
async fn until_true(stop: Option<&mut watch::Receiver<bool>>) {
    match stop {
        Some(stop) => {
            let _ = stop.wait_for(|s| *s).await;
        }
        None => std::future::pending().await,
    }
}

/// `event: <type>` and the event as one line of JSON.
fn sse_event(event: &Event) -> SseEvent {
    let json = serde_json::to_value(event).expect("events serialize");
    let kind = json["type"]
        .as_str()
        .expect("events are tagged by type")
        .to_owned();
    SseEvent::default().event(kind).data(json.to_string())
}

/// No route for this path.
pub(super) async fn no_endpoint(req: Request) -> ApiError {
    ApiError::new(
        "not_found",
        format!(
            "no endpoint {} {} (see docs/API.md)",
            req.method(),
            req.uri().path()
        ),
    )
}

/// A route for this path, not for this method.
pub(super) async fn no_endpoint_405(req: Request) -> ApiError {
    ApiError::new(
        "method_not_allowed",
        format!(
            "{} does not take {} (see docs/API.md)",
            req.uri().path(),
            req.method()
        ),
    )
}
