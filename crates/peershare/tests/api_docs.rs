//! `docs/API.md` is pinned: its endpoints are exactly the router's, every
//! example is valid for the engine's type (it deserializes and serializes
//! back the same), and every documented request, run against real nodes
//! through the router, is answered with the documented status and an
//! answer of the documented shape (the same keys, recursively, and the
//! same JSON types; values such as IDs, times, paths and ports may
//! differ). The error table is `api::status_of`, the events documented are
//! every kind of event.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use common::api::*;
use common::*;
use peershare::api::{
    self, ApiToken, DownloadBody, ErrorBody, NodeFile, ShareBody, UnshareBody, status_of,
};
use peershare::download::manager::DownloadInfo;
use peershare::node::NodeConfig;
use peershare::node::events::Event;
use peershare::node::lan::Found;
use peershare::node::status::NodeStatus;
use peershare::ops::{Listing, SharedItem, Unshared};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const DOC: &str = include_str!("../../../docs/API.md");

/// A fenced block and the line of text before it.
#[derive(Debug, Clone)]
struct Block {
    label: String,
    info: String,
    text: String,
}

/// One endpoint's section.
#[derive(Debug, Clone)]
struct Documented {
    method: String,
    path: String,
    /// The request line's target (path and query).
    target: String,
    body: Option<Value>,
    status: u16,
    response: Block,
}

/// The fenced blocks of `doc`, each with the heading it is under.
fn blocks(doc: &str) -> Vec<(String, Block)> {
    let mut out = Vec::new();
    let (mut heading, mut label) = (String::new(), String::new());
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if line.starts_with('#') {
            heading = line.to_owned();
        } else if let Some(info) = line.strip_prefix("```") {
            let mut text = String::new();
            for l in lines.by_ref() {
                if l == "```" {
                    break;
                }
                text.push_str(l);
                text.push('\n');
            }
            let block = Block {
                label: label.clone(),
                info: info.to_owned(),
                text,
            };
            out.push((heading.clone(), block));
        } else if !line.trim().is_empty() {
            label = line.trim().to_owned();
        }
    }
    out
}

/// The endpoints documented, by "METHOD /path".
fn endpoints(doc: &str) -> BTreeMap<String, Documented> {
    let mut sections: BTreeMap<String, Vec<Block>> = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("### ")) {
        let title = &line[4..];
        if title.starts_with("GET ") || title.starts_with("POST ") {
            let (_, path) = title.split_once(' ').unwrap();
            assert!(
                path.starts_with("/api/v1/") && !path.contains(char::is_whitespace),
                "a heading of the form `### GET /path`: {line:?}"
            );
            assert!(
                sections.insert(title.to_owned(), Vec::new()).is_none(),
                "twice: {title}"
            );
        }
    }
    for (heading, block) in blocks(doc) {
        if let Some(s) = heading
            .strip_prefix("### ")
            .and_then(|t| sections.get_mut(t))
        {
            s.push(block);
        }
    }
    sections
        .into_iter()
        .map(|(title, blocks)| {
            let (method, path) = title.split_once(' ').unwrap();
            let request = blocks
                .iter()
                .find(|b| b.label == "Request:" && b.info == "http")
                .unwrap_or_else(|| panic!("{title}: no ```http block after \"Request:\""));
            let (req_method, target) = request.text.trim().split_once(' ').unwrap();
            assert_eq!(req_method, method, "{title}: the request's method");
            let target_path = target.split('?').next().unwrap();
            assert!(
                matches_path(path, target_path),
                "{title}: the request's path {target}"
            );
            let body = blocks.iter().find(|b| b.label == "Request body:").map(|b| {
                assert_eq!(b.info, "json", "{title}");
                serde_json::from_str(&b.text)
                    .unwrap_or_else(|e| panic!("{title}: the request body is not JSON: {e}"))
            });
            let response = blocks
                .iter()
                .find(|b| b.label.starts_with("Response `"))
                .unwrap_or_else(|| panic!("{title}: no block after \"Response `STATUS`:\""))
                .clone();
            let status = response.label["Response `".len()..][..3].parse().unwrap();
            let documented = Documented {
                method: method.into(),
                path: path.into(),
                target: target.into(),
                body,
                status,
                response,
            };
            (title, documented)
        })
        .collect()
}

/// Whether `target` is `pattern` with each `{id}` a number.
fn matches_path(pattern: &str, target: &str) -> bool {
    let (p, t): (Vec<&str>, Vec<&str>) =
        (pattern.split('/').collect(), target.split('/').collect());
    p.len() == t.len()
        && p.iter().zip(&t).all(|(p, t)| {
            p == t || (*p == "{id}" && !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        })
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `real` has `doc`'s shape: the same JSON type, objects the same keys
/// (recursively); every element of an array the shape of the documented
/// array's first.
fn same_shape(doc: &Value, real: &Value, at: &str) -> Result<(), String> {
    match (doc, real) {
        (Value::Object(d), Value::Object(r)) => {
            let (dk, rk): (BTreeSet<&String>, BTreeSet<&String>) =
                (d.keys().collect(), r.keys().collect());
            if dk != rk {
                return Err(format!("{at}: keys {dk:?} documented, {rk:?} answered"));
            }
            d.iter()
                .try_for_each(|(k, v)| same_shape(v, &r[k], &format!("{at}.{k}")))
        }
        // Each element against the first documented one of its `kind`
        // (arrays of files and folders), or the first.
        (Value::Array(d), Value::Array(r)) => match d.first() {
            Some(first) => d.iter().chain(r).enumerate().try_for_each(|(i, v)| {
                let like = d
                    .iter()
                    .find(|e| e.get("kind").is_some() && e.get("kind") == v.get("kind"))
                    .unwrap_or(first);
                same_shape(like, v, &format!("{at}[{i}]"))
            }),
            None => Ok(()),
        },
        _ if json_type(doc) == json_type(real) => Ok(()),
        _ => Err(format!(
            "{at}: {} documented ({doc}), {} answered ({real})",
            json_type(doc),
            json_type(real)
        )),
    }
}

/// `example` read as a `T` and written back.
fn written_back<T: DeserializeOwned + Serialize>(example: &Value, what: &str) -> Value {
    let typed: T = serde_json::from_value(example.clone()).unwrap_or_else(|e| {
        panic!(
            "{what}: the example is not a {}: {e}",
            std::any::type_name::<T>()
        )
    });
    serde_json::to_value(&typed).unwrap()
}

/// `example` is a `T`: it deserializes, and serializes back to itself.
fn is_a<T: DeserializeOwned + Serialize>(example: &Value, what: &str) {
    let back = written_back::<T>(example, what);
    assert_eq!(
        &back, example,
        "{what}: the example as the engine writes it"
    );
}

/// `example` is a `T` given with some of its defaults left out: what it
/// says, `T` keeps.
fn is_within<T: DeserializeOwned + Serialize>(example: &Value, what: &str) {
    fn within(part: &Value, whole: &Value) -> bool {
        match (part, whole) {
            (Value::Object(p), Value::Object(w)) => p
                .iter()
                .all(|(k, v)| w.get(k).is_some_and(|x| within(v, x))),
            _ => part == whole,
        }
    }
    let back = written_back::<T>(example, what);
    assert!(
        within(example, &back),
        "{what}: {example} is not within {back}"
    );
}

/// Every kind of event, by its `type` (the match fails to compile when a
/// kind is added: document it, then list it here).
fn event_types() -> BTreeSet<&'static str> {
    let name = |e: &Event| match e {
        Event::DownloadQueued { .. } => "download_queued",
        Event::DownloadStarted { .. } => "download_started",
        Event::DownloadProgress { .. } => "download_progress",
        Event::DownloadFinished { .. } => "download_finished",
        Event::DownloadFailed { .. } => "download_failed",
        Event::DownloadPaused { .. } => "download_paused",
        Event::DownloadCancelled { .. } => "download_cancelled",
        Event::UploadStarted { .. } => "upload_started",
        Event::UploadFinished { .. } => "upload_finished",
        Event::PeerFound { .. } => "peer_found",
        Event::PeerLost { .. } => "peer_lost",
        Event::LibraryChanged { .. } => "library_changed",
    };
    let _ = name;
    [
        "download_queued",
        "download_started",
        "download_progress",
        "download_finished",
        "download_failed",
        "download_paused",
        "download_cancelled",
        "upload_started",
        "upload_finished",
        "peer_found",
        "peer_lost",
        "library_changed",
    ]
    .into()
}

/// The documented events, by name.
fn documented_events(block: &Block) -> BTreeMap<String, Value> {
    assert_eq!(block.info, "text", "the event stream's example");
    let mut text = block.text.clone();
    let mut out = BTreeMap::new();
    while let Some(e) = take_sse(&mut text) {
        out.insert(e.event, e.data);
    }
    assert_eq!(text.trim(), "", "every event ends with a blank line");
    out
}

#[test]
fn the_documented_endpoints_are_the_routers() {
    let documented: BTreeSet<String> = endpoints(DOC).into_keys().collect();
    let routed: BTreeSet<String> = api::ENDPOINTS
        .iter()
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert_eq!(documented, routed);
}

#[test]
fn every_example_is_what_the_engine_writes() {
    for (title, d) in endpoints(DOC) {
        let what = title.as_str();
        if let Some(body) = &d.body {
            match what {
                "POST /api/v1/library/share" => is_a::<ShareBody>(body, what),
                "POST /api/v1/library/unshare" => is_a::<UnshareBody>(body, what),
                // An order as given, its defaults left out.
                "POST /api/v1/downloads" => is_within::<DownloadBody>(body, what),
                _ => panic!("{what} takes no body"),
            }
        }
        if d.response.info == "text" {
            assert_eq!(what, "GET /api/v1/events");
            let events = documented_events(&d.response);
            let mut types = event_types();
            types.insert("lagged");
            assert_eq!(
                events.keys().map(String::as_str).collect::<BTreeSet<_>>(),
                types
            );
            for (name, data) in &events {
                if name == "lagged" {
                    assert!(
                        data["missed"].is_u64() && data.as_object().unwrap().len() == 1,
                        "{data}"
                    );
                } else {
                    assert_eq!(data["type"], name.as_str(), "named by its type");
                    is_a::<Event>(data, name);
                }
            }
            continue;
        }
        let example: Value = serde_json::from_str(&d.response.text)
            .unwrap_or_else(|e| panic!("{what}: the response is not JSON: {e}"));
        match what {
            "GET /api/v1/status" => is_a::<NodeStatus>(&example, what),
            "GET /api/v1/library" | "POST /api/v1/library/share" => {
                is_a::<Vec<SharedItem>>(&example, what)
            }
            "POST /api/v1/library/unshare" => is_a::<Vec<Unshared>>(&example, what),
            "GET /api/v1/peers" => is_a::<Vec<Found>>(&example, what),
            "GET /api/v1/catalog" => is_a::<Listing>(&example, what),
            "GET /api/v1/downloads" => is_a::<Vec<DownloadInfo>>(&example, what),
            _ => is_a::<DownloadInfo>(&example, what),
        }
    }
}

#[test]
fn the_error_table_and_the_general_examples() {
    let mut kinds = 0;
    for line in DOC.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let [_, kind, status, _, _] = cells[..]
            && let Some(kind) = kind.strip_prefix('`').and_then(|k| k.strip_suffix('`'))
        {
            assert_eq!(status_of(kind).as_u16().to_string(), status, "{kind}");
            kinds += 1;
        }
    }
    assert_eq!(kinds, 13, "every kind in the table");
    let general: Vec<Block> = blocks(DOC)
        .into_iter()
        .filter(|(h, _)| !h.starts_with("### "))
        .map(|(_, b)| b)
        .collect();
    let json_of = |b: &Block| serde_json::from_str::<Value>(&b.text).unwrap();
    let node_file = general
        .iter()
        .find(|b| b.info == "json" && b.text.contains("\"pid\""))
        .unwrap();
    is_a::<NodeFile>(&json_of(node_file), "node.json");
    let error = general
        .iter()
        .find(|b| b.info == "json" && b.text.contains("\"error\""))
        .unwrap();
    let error = json_of(error);
    is_a::<ErrorBody>(&error, "the error shape");
    let bearer = general
        .iter()
        .find(|b| b.text.starts_with("Authorization: Bearer "))
        .unwrap();
    let token = bearer.text.trim().rsplit(' ').next().unwrap();
    assert!(
        token.len() == 64
            && token
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
}

/// Runs `d`'s request (its target, or `target`; its body, or `body`)
/// through `app`; checks the documented status and shape.
async fn run(
    app: &axum::Router,
    token: &ApiToken,
    d: &Documented,
    target: &str,
    body: Option<Value>,
) -> Answer {
    let r = ask(app, &d.method, target, token, body).await;
    let what = format!("{} {}", d.method, d.path);
    assert_eq!(
        r.status,
        StatusCode::from_u16(d.status).unwrap(),
        "{what}: {r:?}"
    );
    let doc: Value = serde_json::from_str(&d.response.text).unwrap();
    if let Err(e) = same_shape(&doc, &r.body, &what) {
        panic!("{e}\nanswered: {:#}", r.body);
    }
    r
}

/// `s` with `from` replaced by `to`, which must be in it.
fn replace(s: &str, from: &str, to: &str) -> String {
    assert!(s.contains(from), "{from} in {s}");
    s.replace(from, to)
}

/// `target` naming download `id` instead of the documented one.
fn for_download(target: &str, id: u64) -> String {
    let (before, after) = target.split_once("/downloads/").unwrap();
    let rest = after.trim_start_matches(|c: char| c.is_ascii_digit());
    format!("{before}/downloads/{id}{rest}")
}

#[tokio::test]
async fn every_documented_request_runs_against_a_real_node() {
    let docs = endpoints(DOC);
    let doc = |key: &str| docs.get(key).unwrap_or_else(|| panic!("{key} documented"));
    let mut ran = BTreeSet::new();
    let dir = tempfile::tempdir().unwrap();
    let talk = data((3 << 20) + 5, 1);
    let fast = node(
        dir.path(),
        "fast",
        &[("talk.mkv", &talk)],
        NodeConfig::default(),
    )
    .await;
    let (big1, big2) = (data(4 << 20, 2), data(4 << 20, 3));
    let slow = node(
        dir.path(),
        "slow",
        &[("big1.iso", &big1), ("big2.iso", &big2)],
        paced(100_000),
    )
    .await;
    let config = NodeConfig {
        manager: peershare::download::manager::ManagerConfig {
            max_active: 1,
            ..Default::default()
        },
        ..NodeConfig::default()
    };
    let (a, token, app) = api_node(dir.path(), "a", &[("notes.txt", b"hello notes")], config).await;
    // As `serve` does.
    a.set_api(Some("127.0.0.1:7423".parse().unwrap()));

    for key in [
        "GET /api/v1/status",
        "GET /api/v1/library",
        "GET /api/v1/peers",
    ] {
        let d = doc(key);
        run(&app, &token, d, &d.target, None).await;
        ran.insert(key.to_string());
    }

    let key = "POST /api/v1/library/share";
    let d = doc(key);
    let talks = dir.path().join("talks");
    std::fs::create_dir_all(talks.join("drafts")).unwrap();
    std::fs::write(talks.join("slides.pdf"), data(700_000, 4)).unwrap();
    let mut body = d.body.clone().unwrap();
    body["paths"] = json!([talks]);
    let shared = run(&app, &token, d, &d.target, Some(body)).await;
    let kinds: Vec<&Value> = shared
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["kind"])
        .collect();
    assert_eq!(kinds, ["file", "folder"], "{:#}", shared.body);
    ran.insert(key.to_string());

    // Unsharing the folder's file withdraws the folder too.
    let key = "POST /api/v1/library/unshare";
    let d = doc(key);
    let mut body = d.body.clone().unwrap();
    body["targets"] = json!([shared.body[0]["id"]]);
    let r = run(&app, &token, d, &d.target, Some(body)).await;
    assert_eq!(r.body[1]["id"], shared.body[1]["id"], "{:#}", r.body);
    ran.insert(key.to_string());

    let key = "GET /api/v1/catalog";
    let d = doc(key);
    let target = replace(
        &d.target,
        "192.168.1.20:9000",
        &fast.listening()[0].to_string(),
    );
    let r = run(&app, &token, d, &target, None).await;
    assert_eq!(
        r.body["rows"][0]["name"], "talk.mkv",
        "the documented search finds it"
    );
    ran.insert(key.to_string());

    // The event stream, followed while the documented download runs.
    let key = "GET /api/v1/events";
    assert_eq!(doc(key).target, "/api/v1/events");
    let mut events = RouterEvents::open(&app, &token).await;
    ran.insert(key.to_string());

    let key = "POST /api/v1/downloads";
    let d = doc(key);
    let downloads = dir.path().join("Downloads");
    std::fs::create_dir(&downloads).unwrap();
    let ticket = fast.shared().unwrap()[0].ticket().to_owned();
    let mut body = d.body.clone().unwrap();
    body["order"]["what"] = json!(ticket);
    body["cwd"] = json!(downloads);
    let r = run(&app, &token, d, &d.target, Some(body)).await;
    let id = r.body["id"].as_u64().unwrap();
    ran.insert(key.to_string());

    let seen = events.until("download_finished").await;
    let documented = documented_events(&doc("GET /api/v1/events").response);
    let mut compared = BTreeSet::new();
    for e in &seen {
        if let Some(doc) = documented.get(&e.event) {
            if let Err(err) = same_shape(doc, &e.data, &e.event) {
                panic!("{err}\nsent: {}", e.text);
            }
            compared.insert(e.event.as_str());
        }
    }
    for name in ["download_queued", "download_started", "download_finished"] {
        assert!(compared.contains(name), "{name} compared: {seen:?}");
    }
    assert_eq!(std::fs::read(downloads.join("talk.mkv")).unwrap(), talk);

    let key = "GET /api/v1/downloads";
    let d = doc(key);
    run(&app, &token, d, &d.target, None).await;
    ran.insert(key.to_string());
    let key = "GET /api/v1/downloads/{id}";
    let d = doc(key);
    run(&app, &token, d, &for_download(&d.target, id), None).await;
    ran.insert(key.to_string());

    // One download running (from a slow peer), one waiting: the one
    // waiting is paused, resumed and cancelled as documented.
    let running = a
        .download(
            order(&big1, &[&slow], &downloads.join("big1.iso")),
            &downloads,
        )
        .unwrap();
    let waiting = a
        .download(
            order(&big2, &[&slow], &downloads.join("big.iso")),
            &downloads,
        )
        .unwrap();
    assert_eq!(waiting.state, peershare::download::manager::State::Queued);
    for (action, state) in [
        ("pause", "paused"),
        ("resume", "queued"),
        ("cancel", "cancelled"),
    ] {
        let key = format!("POST /api/v1/downloads/{{id}}/{action}");
        let d = doc(&key);
        let r = run(&app, &token, d, &for_download(&d.target, waiting.id), None).await;
        assert_eq!(r.body["state"], state, "{key}");
        ran.insert(key);
    }
    a.cancel(running.id).unwrap();

    let all: BTreeSet<String> = docs.keys().cloned().collect();
    assert_eq!(ran, all, "every documented request ran");
    a.shutdown().await;
    fast.shutdown().await;
    slow.shutdown().await;
}
