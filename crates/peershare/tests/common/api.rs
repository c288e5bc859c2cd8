//! The local API in tests: requests as a client sends them, through the
//! router (no socket) or by hand over real HTTP/1.1, and event streams
//! read either way.

use std::net::SocketAddr;
use std::path::Path;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use futures_util::StreamExt;
use peershare::api::{self, ApiToken};
use peershare::node::{Node, NodeConfig};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

/// The `Host` of requests through the router (no socket: any loopback one).
pub const HOST: &str = "127.0.0.1:7423";

/// A node as in `node`, with its data dir's API token and its router.
pub async fn api_node(
    dir: &Path,
    name: &str,
    files: &[(&str, &[u8])],
    config: NodeConfig,
) -> (Node, ApiToken, Router) {
    let node = super::node(dir, name, files, config).await;
    let token = ApiToken::load_or_create(node.library().dir()).unwrap();
    let app = api::router(node.clone(), token.clone());
    (node, token, app)
}

/// A request as the CLI sends it: loopback `Host`, the bearer token, a
/// JSON body if any.
pub fn api_request(
    method: &str,
    path: &str,
    token: &ApiToken,
    body: Option<&Value>,
) -> Request<Body> {
    let builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, HOST)
        .header(header::AUTHORIZATION, format!("Bearer {}", token.as_str()));
    match body {
        Some(json) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json.to_string())),
        None => builder.body(Body::empty()),
    }
    .unwrap()
}

/// An answer, its body as JSON (`Value::Null` if empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The error kind of an error answer, after checking its shape.
    pub fn kind(&self) -> &str {
        let error = self.body["error"].as_object().expect("an error body");
        assert_eq!(error.len(), 2, "kind and message only: {:?}", self.body);
        assert!(error["message"].is_string(), "{:?}", self.body);
        error["kind"].as_str().expect("a kind")
    }
}

/// Sends `req` through `app`, without a socket.
pub async fn call(app: &Router, req: Request<Body>) -> Answer {
    let response = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// `call` of `api_request(method, path, token, body)`.
pub async fn ask(
    app: &Router,
    method: &str,
    path: &str,
    token: &ApiToken,
    body: Option<Value>,
) -> Answer {
    call(app, api_request(method, path, token, body.as_ref())).await
}

/// One Server-Sent Event: its `event:` name and its `data:` as JSON.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub data: Value,
    /// The event's text as sent (without the blank line ending it).
    pub text: String,
}

/// Takes the first whole event out of `text`, skipping comments
/// (keep-alives); `None` until one is whole.
pub fn take_sse(text: &mut String) -> Option<Sse> {
    loop {
        let end = text.find("\n\n")?;
        let block: String = text.drain(..end + 2).collect();
        let block = block.trim_end_matches('\n').to_owned();
        let (mut event, mut data) = (None, None);
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                assert!(event.replace(e.to_owned()).is_none(), "one name: {block}");
            } else if let Some(d) = line.strip_prefix("data: ") {
                assert!(data.is_none(), "one line of data: {block}");
                data = Some(serde_json::from_str(d).expect("data is JSON"));
            } else {
                assert!(line.starts_with(':'), "only comments besides: {block:?}");
            }
        }
        match (event, data) {
            (Some(event), Some(data)) => {
                return Some(Sse {
                    event,
                    data,
                    text: block,
                });
            }
            (None, None) => continue, // a keep-alive comment
            _ => panic!("an event has a name and data: {block:?}"),
        }
    }
}

/// An event stream read through the router.
pub struct RouterEvents {
    body: axum::body::BodyDataStream,
    text: String,
}

impl RouterEvents {
    /// `GET /api/v1/events` through `app`.
    pub async fn open(app: &Router, token: &ApiToken) -> RouterEvents {
        let response = app
            .clone()
            .oneshot(api_request("GET", "/api/v1/events", token, None))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        RouterEvents {
            body: response.into_body().into_data_stream(),
            text: String::new(),
        }
    }

    /// The next event; `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(e) = take_sse(&mut self.text) {
                return Some(e);
            }
            let bytes = self.body.next().await?.unwrap();
            self.text.push_str(std::str::from_utf8(&bytes).unwrap());
        }
    }

    /// Events until one named `name` (30 s at most); all of them.
    pub async fn until(&mut self, name: &str) -> Vec<Sse> {
        collect_until(name, async || self.next().await).await
    }
}

async fn collect_until(name: &str, mut next: impl AsyncFnMut() -> Option<Sse>) -> Vec<Sse> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout_at(deadline, next())
            .await
            .unwrap_or_else(|_| panic!("no {name} event within 30 s: {seen:?}"))
            .unwrap_or_else(|| panic!("the stream ended before {name}: {seen:?}"));
        let done = event.event == name;
        seen.push(event);
        if done {
            return seen;
        }
    }
}

/// A response read off a real socket.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Writes `head` (request line and headers, without the blank line; a
/// `Connection: close` is added) and `body` to `addr`, reads the whole
/// response (within 10 s).
pub async fn http(addr: SocketAddr, head: &str, body: &[u8]) -> HttpAnswer {
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        http_exchange(addr, head, body),
    )
    .await
    .unwrap_or_else(|_| panic!("no whole answer within 10 s to {head:?}"))
}

async fn http_exchange(addr: SocketAddr, head: &str, body: &[u8]) -> HttpAnswer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // In one write: a server that answers (403, 413) without reading the
    // body then finds it in its buffer, not unread in the socket (closing
    // with unread bytes would reset the connection under the answer).
    let mut request = format!("{head}\r\nConnection: close\r\n\r\n").into_bytes();
    request.extend_from_slice(body);
    s.write_all(&request).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let (mut answer, rest) = parse_head(&raw).expect("a whole response head");
    answer.body = if answer.header("transfer-encoding") == Some("chunked") {
        let mut rest = rest.to_vec();
        let mut body = Vec::new();
        while let Some(Some(chunk)) = take_chunk(&mut rest) {
            body.extend(chunk);
        }
        body
    } else {
        rest.to_vec()
    };
    answer
}

/// The status line and headers at the start of `raw`, and what follows.
fn parse_head(raw: &[u8]) -> Option<(HttpAnswer, &[u8])> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let answer = HttpAnswer {
        status,
        headers,
        body: Vec::new(),
    };
    Some((answer, &raw[end + 4..]))
}

/// Takes one chunk of a chunked body off `raw`: `None` until it is whole,
/// `Some(None)` for the last (empty) chunk.
fn take_chunk(raw: &mut Vec<u8>) -> Option<Option<Vec<u8>>> {
    let line = raw.windows(2).position(|w| w == b"\r\n")?;
    let size =
        usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap().trim(), 16).unwrap();
    if raw.len() < line + 2 + size + 2 {
        return None;
    }
    let chunk = raw[line + 2..line + 2 + size].to_vec();
    raw.drain(..line + 2 + size + 2);
    Some((size > 0).then_some(chunk))
}

/// An event stream read over a real connection.
pub struct HttpEvents {
    stream: TcpStream,
    raw: Vec<u8>,
    text: String,
    ended: bool,
}

impl HttpEvents {
    /// `GET /api/v1/events` on `addr`.
    pub async fn open(addr: SocketAddr, token: &ApiToken) -> HttpEvents {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
            token.as_str()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let (answer, rest) = loop {
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed before the response");
            raw.extend_from_slice(&buf[..n]);
            if let Some((answer, rest)) = parse_head(&raw) {
                break (answer, rest.to_vec());
            }
        };
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.header("content-type"), Some("text/event-stream"));
        assert_eq!(answer.header("transfer-encoding"), Some("chunked"));
        HttpEvents {
            stream,
            raw: rest,
            text: String::new(),
            ended: false,
        }
    }

    /// The next event; `None` when the stream ends (its last chunk came).
    pub async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(e) = take_sse(&mut self.text) {
                return Some(e);
            }
            if self.ended {
                return None;
            }
            match take_chunk(&mut self.raw) {
                Some(Some(chunk)) => self.text.push_str(std::str::from_utf8(&chunk).unwrap()),
                Some(None) => self.ended = true,
                None => {
                    let mut buf = [0u8; 4096];
                    let n = self.stream.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the connection closed in the middle of the stream");
                    self.raw.extend_from_slice(&buf[..n]);
                }
            }
        }
    }

    /// Events until one named `name` (30 s at most); all of them.
    pub async fn until(&mut self, name: &str) -> Vec<Sse> {
        collect_until(name, async || self.next().await).await
    }

    /// Whether the server closes the connection (after the stream ended).
    pub async fn closed(mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(self.stream.read(&mut buf).await, Ok(0) | Err(_))
    }
}
