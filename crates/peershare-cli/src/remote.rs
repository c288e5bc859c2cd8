//! The node running on a data dir, reached through its local API
//! (`docs/API.md`): found through `<data-dir>/node.json`, authenticated
//! with `<data-dir>/api.token`. Each method is one request; the answers are
//! the engine's own types, so a command prints the same whether it asked a
//! node or did the work itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as Http;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use peershare::api::NodeFile;
use peershare::download::manager::DownloadInfo;
use peershare::download::order::Order;
use peershare::node::events::{DownloadId, Event};
use peershare::node::lan::Found;
use peershare::node::status::NodeStatus;
use peershare::ops::{Listing, SharedItem, Unshared};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::commands::kind_status;
use crate::{Failure, exit};

/// How long finding a node may take: a `node.json` whose node does not
/// answer this fast is treated as stale.
const FIND_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for one answer of the API (a `share` of a large folder
/// hashes first).
const CALL_TIMEOUT: Duration = Duration::from_secs(3600);

/// A running node's API.
pub struct Client {
    addr: SocketAddr,
    token: String,
    http: Http<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// The node running on `dir`, if its `node.json` names one that answers.
    pub async fn find(dir: &Path) -> Option<Client> {
        let file = NodeFile::read(dir)?;
        let addr = file
            .api
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .ok()?;
        let token = peershare::api::ApiToken::load(dir).ok()?;
        let client = Client {
            addr,
            token: token.as_str().to_owned(),
            http: Http::builder(TokioExecutor::new()).build_http(),
        };
        let alive = tokio::time::timeout(
            FIND_TIMEOUT,
            client.call::<Value>(Method::GET, "/api/v1/status", None),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        alive.then_some(client)
    }

    /// The API's base URL.
    pub fn base(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Request<Full<Bytes>> {
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("host", self.addr.to_string())
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(bytes))
            .expect("a valid request")
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<hyper::Response<Incoming>, Failure> {
        let req = self.request(method, path, body);
        self.http.request(req).await.map_err(|e| {
            Failure::new(
                exit::UNREACHABLE,
                format!("the node's API at {} does not answer: {e}", self.base()),
            )
        })
    }

    /// One request and its answer, as `T`; an error answer as the failure
    /// its kind means.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, Failure> {
        let answer = async {
            let resp = self.send(method, path, body.as_ref()).await?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| {
                    Failure::new(exit::FAILURE, format!("reading the node's answer: {e}"))
                })?
                .to_bytes();
            if !status.is_success() {
                return Err(api_error(status, &bytes));
            }
            serde_json::from_slice(&bytes).map_err(|e| {
                Failure::new(
                    exit::FAILURE,
                    format!("the node's answer is not what this release expects: {e}"),
                )
            })
        };
        tokio::time::timeout(CALL_TIMEOUT, answer)
            .await
            .unwrap_or_else(|_| {
                Err(Failure::new(
                    exit::UNREACHABLE,
                    "the node's API took too long to answer",
                ))
            })
    }

    pub async fn status(&self) -> Result<NodeStatus, Failure> {
        self.call(Method::GET, "/api/v1/status", None).await
    }

    pub async fn library(&self) -> Result<Vec<SharedItem>, Failure> {
        self.call(Method::GET, "/api/v1/library", None).await
    }

    pub async fn share(
        &self,
        paths: &[PathBuf],
        unlisted: bool,
    ) -> Result<Vec<SharedItem>, Failure> {
        let body = json!({ "paths": paths, "unlisted": unlisted });
        self.call(Method::POST, "/api/v1/library/share", Some(body))
            .await
    }

    pub async fn unshare(&self, targets: &[String]) -> Result<Vec<Unshared>, Failure> {
        let body = json!({ "targets": targets });
        self.call(Method::POST, "/api/v1/library/unshare", Some(body))
            .await
    }

    pub async fn peers(&self) -> Result<Vec<Found>, Failure> {
        self.call(Method::GET, "/api/v1/peers", None).await
    }

    pub async fn catalog(
        &self,
        peers: &[SocketAddr],
        search: &[String],
    ) -> Result<Listing, Failure> {
        let mut query: Vec<String> = peers
            .iter()
            .map(|p| format!("peer={}", encode(&p.to_string())))
            .collect();
        query.extend(search.iter().map(|w| format!("search={}", encode(w))));
        let path = if query.is_empty() {
            "/api/v1/catalog".to_owned()
        } else {
            format!("/api/v1/catalog?{}", query.join("&"))
        };
        self.call(Method::GET, &path, None).await
    }

    pub async fn download(&self, order: &Order, cwd: &Path) -> Result<DownloadInfo, Failure> {
        let body = json!({ "order": order, "cwd": cwd });
        self.call(Method::POST, "/api/v1/downloads", Some(body))
            .await
    }

    pub async fn download_info(&self, id: DownloadId) -> Result<DownloadInfo, Failure> {
        self.call(Method::GET, &format!("/api/v1/downloads/{id}"), None)
            .await
    }

    pub async fn cancel(&self, id: DownloadId) -> Result<DownloadInfo, Failure> {
        self.call(
            Method::POST,
            &format!("/api/v1/downloads/{id}/cancel"),
            None,
        )
        .await
    }

    /// The node's events from now on.
    pub async fn events(&self) -> Result<Events, Failure> {
        let resp = self.send(Method::GET, "/api/v1/events", None).await?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        Ok(Events {
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }
}

/// An error answer of the API as the failure its kind means.
fn api_error(status: StatusCode, body: &[u8]) -> Failure {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let kind = v["error"]["kind"].as_str().unwrap_or("failed");
    let message = v["error"]["message"]
        .as_str()
        .map_or_else(|| format!("the node answered {status}"), str::to_owned);
    Failure::new(kind_status(kind), message)
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The node's event stream (Server-Sent Events), read as events.
pub struct Events {
    body: Incoming,
    buf: Vec<u8>,
}

/// Longest event line accepted from the node (its events are small).
const MAX_EVENT_BYTES: usize = 1 << 20;

impl Events {
    /// The next event; `None` when the stream ends (the node stopped).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.take_event() {
                match event {
                    Some(e) => return Some(e),
                    None => continue,
                }
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
                if self.buf.len() > MAX_EVENT_BYTES {
                    return None;
                }
            }
        }
    }

    /// One whole event block out of the buffer, if there is one: `Some(None)`
    /// for a block that is not an event of this release (a keep-alive, a
    /// `lagged` notice).
    fn take_event(&mut self) -> Option<Option<Event>> {
        let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
        let block: Vec<u8> = self.buf.drain(..end + 2).collect();
        let text = String::from_utf8_lossy(&block);
        let data: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n");
        Some(serde_json::from_str(&data).ok())
    }
}
