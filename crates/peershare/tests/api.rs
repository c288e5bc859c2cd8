//! The node's local API: every endpoint through the router (no socket),
//! the security checks in their order (Host, Origin, token, body size),
//! the event stream, and a real HTTP server on 127.0.0.1:0 whose shutdown
//! ends its event streams and leaves no task behind; the token file and
//! node.json.

mod common;

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::api::*;
use common::*;
use peershare::api::{self, ApiToken, MAX_BODY_BYTES, NODE_FILE, NodeFile, TOKEN_FILE};
use peershare::download::manager::{ManagerConfig, State};
use peershare::error::StoreError;
use peershare::node::NodeConfig;
use peershare::node::events::{EVENT_BUFFER, Event};
use serde_json::{Value, json};

const SECRET_FILE: &str = "mine.bin";

fn one_at_a_time() -> NodeConfig {
    NodeConfig {
        manager: ManagerConfig {
            max_active: 1,
            ..ManagerConfig::default()
        },
        ..NodeConfig::default()
    }
}

fn path_str(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_library_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mine = data(1000, 1);
    let (a, token, app) = api_node(
        dir.path(),
        "a",
        &[(SECRET_FILE, &mine)],
        NodeConfig::default(),
    )
    .await;

    let r = ask(&app, "GET", "/api/v1/status", &token, None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["node_id"], a.tls().node_id().to_string());
    assert_eq!(r.body["listening"], json!([a.listening()[0].to_string()]));
    assert_eq!(r.body["library"]["files"], 1);
    assert_eq!(r.body["api"], Value::Null, "no server: no address");

    let r = ask(&app, "GET", "/api/v1/library", &token, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    assert_eq!(r.body[0]["id"], id_of(&mine).to_string());
    assert_eq!(r.body[0]["name"], SECRET_FILE);

    let new = dir.path().join("new.bin");
    std::fs::write(&new, data(2000, 2)).unwrap();
    let hidden = dir.path().join("hidden.bin");
    std::fs::write(&hidden, data(3000, 3)).unwrap();
    let share = |paths: Vec<String>, unlisted: Option<bool>| {
        let mut body = json!({ "paths": paths });
        if let Some(u) = unlisted {
            body["unlisted"] = json!(u);
        }
        ask(&app, "POST", "/api/v1/library/share", &token, Some(body))
    };
    let r = share(vec![path_str(&new)], None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body[0]["name"], "new.bin");
    assert_eq!(r.body[0]["unlisted"], false, "listed unless asked");
    assert!(r.body[0]["ticket"].as_str().unwrap().starts_with("ps1"));
    let new_id = r.body[0]["id"].as_str().unwrap().to_owned();
    let r = share(vec![path_str(&hidden)], Some(true)).await;
    assert_eq!(r.body[0]["unlisted"], true);
    let r = ask(&app, "GET", "/api/v1/library", &token, None).await;
    assert_eq!(r.body.as_array().unwrap().len(), 3);

    let r = share(vec!["new.bin".into()], None).await;
    assert_eq!((r.status, r.kind()), (StatusCode::BAD_REQUEST, "usage"));
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("absolute")
    );
    let r = share(vec![path_str(&dir.path().join("missing"))], None).await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::UNPROCESSABLE_ENTITY, "local")
    );
    let mistyped = json!({ "paths": [path_str(&new)], "unlist": true });
    let r = ask(
        &app,
        "POST",
        "/api/v1/library/share",
        &token,
        Some(mistyped),
    )
    .await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::BAD_REQUEST, "usage"),
        "an unknown field is refused, not ignored"
    );
    let mut req = api_request("POST", "/api/v1/library/share", &token, None);
    *req.body_mut() = Body::from("{\"paths\": [");
    let r = call(&app, req).await;
    assert_eq!((r.status, r.kind()), (StatusCode::BAD_REQUEST, "usage"));
    assert!(
        r.body["error"]["message"].as_str().unwrap().contains("EOF"),
        "{r:?}"
    );

    let unshare = |targets: Vec<String>| {
        ask(
            &app,
            "POST",
            "/api/v1/library/unshare",
            &token,
            Some(json!({ "targets": targets })),
        )
    };
    let r = unshare(vec![new_id.clone()]).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        r.body,
        json!([{ "id": new_id, "name": "new.bin", "path": path_str(&new), "kind": "file" }])
    );
    let r = unshare(vec![path_str(&hidden)]).await;
    assert_eq!(r.body[0]["name"], "hidden.bin", "by path too");
    let r = unshare(vec![new_id]).await;
    assert_eq!((r.status, r.kind()), (StatusCode::NOT_FOUND, "not_found"));

    let r = ask(&app, "GET", "/api/v1/peers", &token, None).await;
    assert_eq!(
        (r.status, r.body),
        (StatusCode::OK, json!([])),
        "no discovery: none heard"
    );

    let r = ask(&app, "GET", "/api/v1/nothing", &token, None).await;
    assert_eq!((r.status, r.kind()), (StatusCode::NOT_FOUND, "not_found"));
    let r = ask(&app, "DELETE", "/api/v1/status", &token, None).await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let r = ask(&app, "GET", "/api/v1/library/share", &token, None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    a.shutdown().await;
}

#[tokio::test]
async fn every_endpoint_is_routed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, token, app) = api_node(dir.path(), "a", &[], NodeConfig::default()).await;
    for (method, path) in api::ENDPOINTS {
        if *path == "/api/v1/events" {
            continue; // a stream that does not end: the tests below read it
        }
        let path = path.replace("{id}", "1");
        let r = ask(&app, method, &path, &token, Some(json!({}))).await;
        let message = r.body["error"]["message"].as_str().unwrap_or("");
        assert!(
            r.status != StatusCode::METHOD_NOT_ALLOWED && !message.starts_with("no endpoint"),
            "{method} {path}: {r:?}"
        );
    }
    a.shutdown().await;
}

#[tokio::test]
async fn the_catalog_of_peers_given_by_repeated_keys() {
    let dir = tempfile::tempdir().unwrap();
    let talk = data(5000, 4);
    let s1 = node(
        dir.path(),
        "s1",
        &[("talk.mkv", &talk), ("other.txt", b"x")],
        NodeConfig::default(),
    )
    .await;
    std::fs::create_dir_all(dir.path().join("s2-dir")).unwrap();
    let s2 = node(
        dir.path(),
        "s2",
        // Its own files (one path shared twice would change under the
        // first); `other.txt` under the name and with the content of s1's.
        &[("copy-of-talk.mkv", &talk), ("s2-dir/other.txt", b"x")],
        NodeConfig::default(),
    )
    .await;
    let (a, token, app) = api_node(dir.path(), "a", &[], NodeConfig::default()).await;
    let (p1, p2) = (s1.listening()[0], s2.listening()[0]);

    let r = ask(
        &app,
        "GET",
        &format!("/api/v1/catalog?peer={p1}&peer={p2}&search=TALK&search=mkv"),
        &token,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    // One content, two names: a row each (issue 12), each with its peer.
    let rows = r.body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{r:?}");
    for (row, name, peer) in [
        (&rows[0], "copy-of-talk.mkv", p2),
        (&rows[1], "talk.mkv", p1),
    ] {
        assert_eq!(row["name"], name);
        assert_eq!(row["kind"], "file");
        assert_eq!(row["id"], id_of(&talk).to_string());
        assert_eq!(row["peer_count"], 1, "{r:?}");
        assert_eq!(row["peers"], json!([peer.to_string()]));
    }
    assert_eq!(r.body["warnings"], json!([]));
    // One name and content at two peers: one row with both.
    let r = ask(
        &app,
        "GET",
        &format!("/api/v1/catalog?peer={p1}&peer={p2}&search=other"),
        &token,
        None,
    )
    .await;
    assert_eq!(r.body["rows"].as_array().unwrap().len(), 1, "{r:?}");
    let row = &r.body["rows"][0];
    assert_eq!(row["peer_count"], 2, "{r:?}");
    assert_eq!(row["peers"], json!([p1.to_string(), p2.to_string()]));
    let r = ask(
        &app,
        "GET",
        &format!("/api/v1/catalog?peer={p1}"),
        &token,
        None,
    )
    .await;
    assert_eq!(
        r.body["rows"].as_array().unwrap().len(),
        2,
        "no search: all"
    );
    let r = ask(
        &app,
        "GET",
        &format!("/api/v1/catalog?peer={p1}&search=nothing"),
        &token,
        None,
    )
    .await;
    assert_eq!(r.body["rows"], json!([]));

    let r = ask(
        &app,
        "GET",
        "/api/v1/catalog?peer=s1.example:9000",
        &token,
        None,
    )
    .await;
    assert_eq!((r.status, r.kind()), (StatusCode::BAD_REQUEST, "usage"));
    let r = ask(
        &app,
        "GET",
        &format!("/api/v1/catalog?peer={p1}&serch=talk"),
        &token,
        None,
    )
    .await;
    assert_eq!((r.status, r.kind()), (StatusCode::BAD_REQUEST, "usage"));
    // A port nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let r = ask(
        &app,
        "GET",
        &format!("/api/v1/catalog?peer={closed}"),
        &token,
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::BAD_GATEWAY, "unreachable")
    );
    let r = ask(
        &app,
        "GET",
        &format!("/api/v1/catalog?peer={p1}&peer={closed}"),
        &token,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "one answered");
    assert_eq!(r.body["warnings"].as_array().unwrap().len(), 1);
    for n in [a, s1, s2] {
        n.shutdown().await;
    }
}

/// Issue 12: the catalog of a folder with duplicate-content files lists
/// every path, and the folder as a row of kind `folder`.
#[tokio::test]
async fn the_catalog_lists_a_folder_and_every_path_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let same = data(3000, 7);
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for p in ["a.bin", "b.bin", "sub/c.bin"] {
        std::fs::write(tree.join(p), &same).unwrap();
    }
    let s = node(dir.path(), "s", &[], NodeConfig::default()).await;
    let (a, token, app) = api_node(dir.path(), "a", &[], NodeConfig::default()).await;
    // Shared the way the API does (`share DIR`): the folder recorded with
    // its files.
    let body = json!({ "paths": [path_str(&tree)] });
    let (s_token, s_app) = {
        let t = ApiToken::load_or_create(s.library().dir()).unwrap();
        (t.clone(), api::router(s.clone(), t))
    };
    let r = ask(
        &s_app,
        "POST",
        "/api/v1/library/share",
        &s_token,
        Some(body),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let folder = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "folder")
        .unwrap();
    let fid = folder["id"].as_str().unwrap().to_owned();

    let p = s.listening()[0];
    let r = ask(
        &app,
        "GET",
        &format!("/api/v1/catalog?peer={p}"),
        &token,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let rows: Vec<(&str, &str, &str, u64, u64)> = r.body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["name"].as_str().unwrap(),
                row["kind"].as_str().unwrap(),
                row["id"].as_str().unwrap(),
                row["size"].as_u64().unwrap(),
                row["files"].as_u64().unwrap(),
            )
        })
        .collect();
    let id = id_of(&same).to_string();
    let n = same.len() as u64;
    assert_eq!(
        rows,
        [
            ("tree", "folder", fid.as_str(), 3 * n, 3),
            ("tree/a.bin", "file", id.as_str(), n, 0),
            ("tree/b.bin", "file", id.as_str(), n, 0),
            ("tree/sub/c.bin", "file", id.as_str(), n, 0),
        ]
    );
    // `search` matches paths.
    let r = ask(
        &app,
        "GET",
        &format!("/api/v1/catalog?peer={p}&search=SUB"),
        &token,
        None,
    )
    .await;
    assert_eq!(r.body["rows"].as_array().unwrap().len(), 1, "{r:?}");
    assert_eq!(r.body["rows"][0]["name"], "tree/sub/c.bin");
    for n in [a, s] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_download_added_listed_and_finished() {
    let dir = tempfile::tempdir().unwrap();
    let talk = data(300 * 1024, 5);
    let s = node(
        dir.path(),
        "s",
        &[("talk.mkv", &talk)],
        NodeConfig::default(),
    )
    .await;
    let (a, token, app) = api_node(dir.path(), "a", &[], NodeConfig::default()).await;
    let cwd = path_str(dir.path());
    let body = |order: Value, cwd: &str| Some(json!({ "order": order, "cwd": cwd }));
    let what = id_of(&talk).to_string();
    let peer = s.listening()[0].to_string();

    let order = json!({ "what": what, "peers": [peer], "output": "got.mkv" });
    let r = ask(&app, "POST", "/api/v1/downloads", &token, body(order, &cwd)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let id = r.body["id"].as_u64().unwrap();
    assert_eq!(r.body["file_id"], what);
    assert_eq!(
        r.body["order"]["output"],
        path_str(&dir.path().join("got.mkv")),
        "made absolute"
    );
    assert!(["queued", "active"].contains(&r.body["state"].as_str().unwrap()));
    let r = ask(&app, "GET", "/api/v1/downloads", &token, None).await;
    assert_eq!(r.body[0]["id"], id);

    assert_eq!(finished(&a, id).await.state, State::Finished);
    assert_eq!(std::fs::read(dir.path().join("got.mkv")).unwrap(), talk);
    let r = ask(
        &app,
        "GET",
        &format!("/api/v1/downloads/{id}"),
        &token,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["state"], "finished");
    assert_eq!(r.body["summary"]["size"], talk.len());
    for action in ["pause", "resume", "cancel"] {
        let r = ask(
            &app,
            "POST",
            &format!("/api/v1/downloads/{id}/{action}"),
            &token,
            None,
        )
        .await;
        assert_eq!(
            (r.status, r.kind()),
            (StatusCode::CONFLICT, "conflict"),
            "{action} a finished one"
        );
    }
    let r = ask(&app, "GET", "/api/v1/downloads/999", &token, None).await;
    assert_eq!((r.status, r.kind()), (StatusCode::NOT_FOUND, "not_found"));
    let r = ask(&app, "POST", "/api/v1/downloads/999/pause", &token, None).await;
    assert_eq!((r.status, r.kind()), (StatusCode::NOT_FOUND, "not_found"));
    let r = ask(&app, "GET", "/api/v1/downloads/first", &token, None).await;
    assert_eq!((r.status, r.kind()), (StatusCode::BAD_REQUEST, "usage"));

    let order = json!({ "what": what, "peers": [peer] });
    let r = ask(
        &app,
        "POST",
        "/api/v1/downloads",
        &token,
        body(order.clone(), "relative/dir"),
    )
    .await;
    assert_eq!((r.status, r.kind()), (StatusCode::BAD_REQUEST, "usage"));
    let r = ask(
        &app,
        "POST",
        "/api/v1/downloads",
        &token,
        body(json!({ "what": "nonsense" }), &cwd),
    )
    .await;
    assert_eq!((r.status, r.kind()), (StatusCode::BAD_REQUEST, "usage"));
    let missing = json!({ "what": what, "peers": [peer], "output": "missing/got.mkv" });
    let r = ask(
        &app,
        "POST",
        "/api/v1/downloads",
        &token,
        body(missing, &cwd),
    )
    .await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::UNPROCESSABLE_ENTITY, "local")
    );
    let r = ask(
        &app,
        "POST",
        "/api/v1/downloads",
        &token,
        Some(json!({ "order": order })),
    )
    .await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::BAD_REQUEST, "usage"),
        "cwd is required"
    );
    assert_eq!(a.downloads().len(), 1, "none of those was added");
    a.shutdown().await;
    s.shutdown().await;
}

#[tokio::test]
async fn pause_resume_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let (big1, big2) = (data(3 << 20, 6), data(3 << 20, 7));
    let s = node(
        dir.path(),
        "s",
        &[("big1", &big1), ("big2", &big2)],
        paced(200_000),
    )
    .await;
    let (a, token, app) = api_node(dir.path(), "a", &[], one_at_a_time()).await;
    let add = async |content: &[u8], out: &str| {
        let order = order(content, &[&s], &dir.path().join(out));
        let body = json!({ "order": order, "cwd": path_str(dir.path()) });
        let r = ask(&app, "POST", "/api/v1/downloads", &token, Some(body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        (
            r.body["id"].as_u64().unwrap(),
            r.body["state"].as_str().unwrap().to_owned(),
        )
    };
    let act = async |id: u64, action: &str| {
        let r = ask(
            &app,
            "POST",
            &format!("/api/v1/downloads/{id}/{action}"),
            &token,
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{action} {id}: {r:?}");
        r.body["state"].as_str().unwrap().to_owned()
    };
    let (d1, state1) = add(&big1, "got1").await;
    let (d2, state2) = add(&big2, "got2").await;
    assert_eq!(
        (state1.as_str(), state2.as_str()),
        ("active", "queued"),
        "one at a time"
    );

    assert_eq!(act(d2, "pause").await, "paused");
    assert_eq!(a.download_info(d2).unwrap().state, State::Paused);
    assert_eq!(act(d2, "resume").await, "queued");
    // A running one stops with its progress recorded, then the next runs.
    act(d1, "pause").await;
    until(&a, d1, "d1 paused", |d| d.state == State::Paused).await;
    until(&a, d2, "d2 running", |d| d.state == State::Active).await;
    assert_eq!(act(d1, "resume").await, "queued");
    assert_eq!(act(d1, "cancel").await, "cancelled");
    act(d2, "cancel").await;
    until(&a, d2, "d2 cancelled", |d| d.state == State::Cancelled).await;
    let r = ask(
        &app,
        "POST",
        &format!("/api/v1/downloads/{d2}/cancel"),
        &token,
        None,
    )
    .await;
    assert_eq!((r.status, r.kind()), (StatusCode::CONFLICT, "conflict"));
    a.shutdown().await;
    s.shutdown().await;
}

#[tokio::test]
async fn events_through_the_router() {
    let dir = tempfile::tempdir().unwrap();
    let talk = data(200 * 1024, 8);
    let s = node(
        dir.path(),
        "s",
        &[("talk.mkv", &talk)],
        NodeConfig::default(),
    )
    .await;
    let (a, token, app) = api_node(dir.path(), "a", &[], NodeConfig::default()).await;
    let mut events = RouterEvents::open(&app, &token).await;
    let order = order(&talk, &[&s], &dir.path().join("got"));
    let body = json!({ "order": order, "cwd": path_str(dir.path()) });
    let r = ask(&app, "POST", "/api/v1/downloads", &token, Some(body)).await;
    let id = r.body["id"].clone();
    let seen = events.until("download_finished").await;
    let names: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names[..2],
        ["download_queued", "download_started"],
        "{names:?}"
    );
    for e in &seen {
        assert_eq!(e.data["type"], e.event.as_str(), "named by its type");
        assert_eq!(
            e.text,
            format!("event: {}\ndata: {}", e.event, e.data),
            "two lines"
        );
    }
    let done = seen.last().unwrap();
    assert_eq!(done.data["id"], id);
    assert_eq!(done.data["summary"]["size"], talk.len());
    // The stream ends when the node shuts down.
    a.shutdown().await;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while events.next().await.is_some() {}
    });
    end.await.expect("the stream ends with the node");
    s.shutdown().await;
}

#[tokio::test]
async fn a_lagging_subscriber_is_told_how_many_events_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, token, app) = api_node(dir.path(), "a", &[], NodeConfig::default()).await;
    let mut events = RouterEvents::open(&app, &token).await;
    let missed = 10;
    for revision in 0..(EVENT_BUFFER + missed) as u64 {
        a.events().emit(Event::LibraryChanged { revision });
    }
    let first = events.next().await.unwrap();
    assert_eq!(
        first.text,
        format!("event: lagged\ndata: {{\"missed\":{missed}}}")
    );
    let next = events.next().await.unwrap();
    assert_eq!(next.event, "library_changed");
    assert_eq!(
        next.data["revision"], missed,
        "and goes on with the oldest kept"
    );
    a.shutdown().await;
}

/// A request to `path` with the given `Host` (none: `None`) and the token
/// if `with_token`.
fn with_host(
    method: &str,
    path: &str,
    host: Option<&str>,
    token: Option<&ApiToken>,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(h) = host {
        b = b.header(header::HOST, h);
    }
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {}", t.as_str()));
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn a_forged_host_is_refused_before_anything_else() {
    let dir = tempfile::tempdir().unwrap();
    let (a, token, app) = api_node(dir.path(), "a", &[], NodeConfig::default()).await;
    for host in [
        "evil.example",
        "evil.example:7423",
        "localhost.evil.example:7423",
        "127.0.0.1.nip.io:7423",
        "192.168.1.10:7423",
        "0.0.0.0:7423",
        "[::2]:7423",
        "localhost:7423:7423",
    ] {
        for (path, token) in [
            ("/api/v1/status", Some(&token)),
            ("/api/v1/status", None),
            ("/api/v1/nothing", None),
        ] {
            let r = call(&app, with_host("GET", path, Some(host), token)).await;
            assert_eq!(
                (r.status, r.kind()),
                (StatusCode::FORBIDDEN, "forbidden"),
                "{host} {path} {token:?}"
            );
            assert!(
                r.body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("loopback")
            );
        }
    }
    let r = call(&app, with_host("GET", "/api/v1/status", None, Some(&token))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "no Host at all");
    let mut twice = with_host("GET", "/api/v1/status", Some("localhost"), Some(&token));
    twice
        .headers_mut()
        .append(header::HOST, "evil.example".parse().unwrap());
    assert_eq!(
        call(&app, twice).await.status,
        StatusCode::FORBIDDEN,
        "two Hosts"
    );
    let absolute = with_host(
        "GET",
        "http://evil.example/api/v1/status",
        Some("localhost"),
        Some(&token),
    );
    assert_eq!(
        call(&app, absolute).await.status,
        StatusCode::FORBIDDEN,
        "a foreign target authority"
    );
    for host in [
        "localhost",
        "localhost:7423",
        "127.0.0.1",
        "127.9.8.7:1",
        "[::1]:7423",
    ] {
        let r = call(
            &app,
            with_host("GET", "/api/v1/status", Some(host), Some(&token)),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{host}");
    }
    a.shutdown().await;
}

#[tokio::test]
async fn a_foreign_origin_changes_nothing_and_there_is_no_cors() {
    let dir = tempfile::tempdir().unwrap();
    let (a, token, app) = api_node(dir.path(), "a", &[], NodeConfig::default()).await;
    let file = dir.path().join("f.bin");
    std::fs::write(&file, data(100, 9)).unwrap();
    let share = |origin: Option<&str>| {
        let mut req = api_request(
            "POST",
            "/api/v1/library/share",
            &token,
            Some(&json!({ "paths": [path_str(&file)] })),
        );
        if let Some(o) = origin {
            req.headers_mut().insert(header::ORIGIN, o.parse().unwrap());
        }
        call(&app, req)
    };
    for origin in [
        "http://evil.example",
        "null",
        "https://127.0.0.1:7423",
        "http://localhost:7423",
        "http://127.0.0.1:7424",
        "http://127.0.0.1:7423/",
    ] {
        let r = share(Some(origin)).await;
        assert_eq!(
            (r.status, r.kind()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{origin}"
        );
    }
    assert_eq!(a.shared().unwrap().len(), 0, "nothing was shared");
    let mut pause = api_request("POST", "/api/v1/downloads/1/pause", &token, None);
    pause
        .headers_mut()
        .insert(header::ORIGIN, "http://evil.example".parse().unwrap());
    assert_eq!(call(&app, pause).await.status, StatusCode::FORBIDDEN);
    // A foreign page's GET is not checked: without CORS it cannot read the answer.
    let mut get = api_request("GET", "/api/v1/library", &token, None);
    get.headers_mut()
        .insert(header::ORIGIN, "http://evil.example".parse().unwrap());
    let r = call(&app, get).await;
    assert_eq!(r.status, StatusCode::OK);
    // The page's own origin, exactly http:// and its Host.
    let r = share(Some(&format!("http://{HOST}"))).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(a.shared().unwrap().len(), 1);
    let r = share(None).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "no Origin: not a browser's cross-site request"
    );

    let mut preflight = api_request("OPTIONS", "/api/v1/library/share", &token, None);
    preflight
        .headers_mut()
        .insert(header::ORIGIN, "http://evil.example".parse().unwrap());
    preflight
        .headers_mut()
        .insert("access-control-request-method", "POST".parse().unwrap());
    let r = call(&app, preflight).await;
    assert_eq!((r.status, r.kind()), (StatusCode::FORBIDDEN, "forbidden"));
    let r2 = call(&app, api_request("OPTIONS", "/api/v1/status", &token, None)).await;
    assert_eq!(
        r2.status,
        StatusCode::FORBIDDEN,
        "OPTIONS, even without an Origin"
    );
    for answer in [
        r,
        r2,
        ask(&app, "GET", "/api/v1/status", &token, None).await,
    ] {
        assert!(
            !answer
                .headers
                .keys()
                .any(|k| k.as_str().starts_with("access-control-")),
            "{:?}",
            answer.headers
        );
    }
    a.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_401() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.bin");
    std::fs::write(&file, data(100, 10)).unwrap();
    let (a, token, app) = api_node(dir.path(), "a", &[], NodeConfig::default()).await;
    let with = |auth: Option<(&str, String)>, path: &str| {
        let method = if path.ends_with("share") {
            "POST"
        } else {
            "GET"
        };
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, HOST);
        if let Some((name, value)) = auth {
            b = b.header(name, value);
        }
        let body = json!({ "paths": [path_str(&file)] }).to_string();
        call(&app, b.body(Body::from(body)).unwrap())
    };
    let t = token.as_str();
    let mut wrong = t.to_owned();
    wrong.replace_range(..1, if t.starts_with('0') { "1" } else { "0" });
    for auth in [
        None,
        Some(("authorization", format!("Bearer {wrong}"))),
        Some(("authorization", format!("Basic {t}"))),
        Some(("authorization", t.to_owned())),
        Some(("authorization", format!("Bearer {}", &t[..63]))),
        Some(("cookie", format!("peershare_token={wrong}"))),
        Some(("cookie", format!("other_token={t}"))),
    ] {
        for path in ["/api/v1/status", "/api/v1/nothing", "/api/v1/library/share"] {
            let r = with(auth.clone(), path).await;
            assert_eq!(
                (r.status, r.kind()),
                (StatusCode::UNAUTHORIZED, "unauthorized"),
                "{auth:?} {path}"
            );
            assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
        }
    }
    assert_eq!(a.shared().unwrap().len(), 0, "nothing was shared");
    for auth in [
        ("authorization", format!("Bearer {t}")),
        ("authorization", format!("bearer {t}")),
        ("cookie", format!("peershare_token={t}")),
        (
            "cookie",
            format!("theme=dark; peershare_token={t}; lang=en"),
        ),
    ] {
        let r = with(Some(auth.clone()), "/api/v1/status").await;
        assert_eq!(r.status, StatusCode::OK, "{auth:?}");
    }
    a.shutdown().await;
}

#[tokio::test]
async fn a_body_over_64_kib_is_413() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.bin");
    std::fs::write(&file, data(100, 11)).unwrap();
    let (a, token, app) = api_node(dir.path(), "a", &[], NodeConfig::default()).await;
    // A valid body padded with spaces to `len` bytes.
    let body = |len: usize| {
        let mut b = json!({ "paths": [path_str(&file)] }).to_string();
        b.push_str(&" ".repeat(len - b.len()));
        b
    };
    let post = |body: Body, token: &ApiToken| {
        let mut req = api_request("POST", "/api/v1/library/share", token, None);
        *req.body_mut() = body;
        call(&app, req)
    };
    let r = post(Body::from(body(MAX_BODY_BYTES + 1)), &token).await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );
    // Without a length: cut as it is read.
    let chunks: Vec<Result<String, Infallible>> = body(MAX_BODY_BYTES + 1)
        .as_bytes()
        .chunks(1000)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let r = post(
        Body::from_stream(futures_util::stream::iter(chunks)),
        &token,
    )
    .await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );
    assert_eq!(a.shared().unwrap().len(), 0, "nothing was shared");
    // The token is checked first.
    let elsewhere = tempfile::tempdir().unwrap();
    let stranger = ApiToken::load_or_create(elsewhere.path()).unwrap();
    let r = post(Body::from(body(MAX_BODY_BYTES + 1)), &stranger).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = post(Body::from(body(MAX_BODY_BYTES)), &token).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "exactly the limit is taken: {r:?}"
    );
    a.shutdown().await;
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_real_http_with_events_and_a_complete_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let talk = data(200 * 1024, 12);
    let tasks = alive_tasks();
    let s = node(
        dir.path(),
        "s",
        &[("talk.mkv", &talk)],
        NodeConfig::default(),
    )
    .await;
    let (a, token, _) = api_node(dir.path(), "a", &[], NodeConfig::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(a.clone(), listener, token.clone(), async {
        let _ = stopped.await;
    }));
    let auth = format!("Authorization: Bearer {}", token.as_str());

    let r = http(
        addr,
        &format!("GET /api/v1/status HTTP/1.1\r\nHost: {addr}\r\n{auth}"),
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json()["api"],
        format!("http://{addr}/"),
        "the status names the API"
    );
    let r = http(
        addr,
        &format!(
            "GET /api/v1/status HTTP/1.1\r\nHost: evil.example:{}",
            addr.port()
        ),
        b"",
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["kind"].clone()),
        (403, json!("forbidden"))
    );
    let r = http(
        addr,
        &format!("GET /api/v1/status HTTP/1.1\r\nHost: {addr}"),
        b"",
    )
    .await;
    assert_eq!(
        (r.status, r.header("www-authenticate")),
        (401, Some("Bearer"))
    );
    let share = json!({ "paths": [path_str(&dir.path().join("talk.mkv"))] }).to_string();
    let head = format!(
        "POST /api/v1/library/share HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\nOrigin: http://evil.example\r\nContent-Type: application/json\r\nContent-Length: {}",
        share.len()
    );
    assert_eq!(http(addr, &head, share.as_bytes()).await.status, 403);
    let head = format!(
        "POST /api/v1/library/share HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\nContent-Length: {}",
        MAX_BODY_BYTES + 1
    );
    // Refused on its head alone: the body is never read.
    let r = http(addr, &head, b"").await;
    assert_eq!(
        (r.status, r.json()["error"]["kind"].clone()),
        (413, json!("too_large"))
    );

    // A download started through the API, followed on its event stream.
    let mut events = HttpEvents::open(addr, &token).await;
    let order = order(&talk, &[&s], &dir.path().join("got"));
    let body = json!({ "order": order, "cwd": path_str(dir.path()) }).to_string();
    let head = format!(
        "POST /api/v1/downloads HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\nOrigin: http://{addr}\r\nContent-Type: application/json\r\nContent-Length: {}",
        body.len()
    );
    let r = http(addr, &head, body.as_bytes()).await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.json()["id"].clone();
    let seen = events.until("download_finished").await;
    assert_eq!(seen.last().unwrap().data["id"], id);
    assert_eq!(std::fs::read(dir.path().join("got")).unwrap(), talk);

    // Shutdown ends the stream (it would keep the server waiting until its
    // grace is over), closes the connection, and the server returns.
    stop.send(()).unwrap();
    tokio::time::timeout(api::SHUTDOWN_GRACE / 2, server)
        .await
        .expect("the server stops at once with an event stream open")
        .unwrap()
        .unwrap();
    assert!(events.next().await.is_none(), "the stream ended");
    assert!(events.closed().await);
    assert_eq!(a.api(), None);
    a.shutdown().await;
    s.shutdown().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while alive_tasks() != tasks && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(alive_tasks(), tasks, "tasks left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_send_nothing_or_half_a_request_do_not_hold_up_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let tasks = alive_tasks();
    let (a, token, _) = api_node(dir.path(), "a", &[], NodeConfig::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(a.clone(), listener, token.clone(), async {
        let _ = stopped.await;
    }));
    let connect = || tokio::net::TcpStream::connect(addr);
    let silent = connect().await.unwrap();
    let mut half = connect().await.unwrap();
    half.write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    // A request whose body never comes whole: in progress at shutdown.
    let mut stuck = connect().await.unwrap();
    let head = format!(
        "POST /api/v1/library/share HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n{{\"paths\"",
        token.as_str()
    );
    stuck.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let closed = async |mut s: tokio::net::TcpStream| {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        tokio::time::Instant::now()
    };
    let start = tokio::time::Instant::now();
    stop.send(()).unwrap();
    let all = async { tokio::join!(closed(silent), closed(half), closed(stuck), server) };
    let (silent_at, half_at, stuck_at, served) = tokio::time::timeout(api::SHUTDOWN_GRACE * 2, all)
        .await
        .expect("the server stops, every connection closed");
    served.unwrap().unwrap();
    assert!(
        silent_at - start < Duration::from_secs(1),
        "an idle connection is closed at once"
    );
    // Half a head, or a body that never comes whole: a request in
    // progress, given its grace, no more.
    for (what, at) in [("half a head", half_at), ("half a body", stuck_at)] {
        let waited = at - start;
        assert!(
            waited >= api::SHUTDOWN_GRACE && waited < api::SHUTDOWN_GRACE + Duration::from_secs(2),
            "{what}: closed after {waited:?}"
        );
    }
    a.shutdown().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while alive_tasks() != tasks && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(alive_tasks(), tasks, "tasks left");
}

#[test]
fn the_token_file_is_private_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let a = ApiToken::load_or_create(dir.path()).unwrap();
    let path = dir.path().join(TOKEN_FILE);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, format!("{}\n", a.as_str()));
    assert_eq!(a.as_str().len(), 64);
    assert!(
        a.as_str()
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    let b = ApiToken::load_or_create(dir.path()).unwrap();
    assert_eq!(a.as_str(), b.as_str(), "kept");
    assert_eq!(ApiToken::load(dir.path()).unwrap().as_str(), a.as_str());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );
    let other = tempfile::tempdir().unwrap();
    assert_ne!(
        ApiToken::load_or_create(other.path()).unwrap().as_str(),
        a.as_str(),
        "random"
    );
    assert!(
        matches!(
            ApiToken::load(&other.path().join("none")),
            Err(StoreError::Io { .. })
        ),
        "load never creates"
    );
}

#[test]
fn racing_creators_end_up_with_one_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokens: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    ApiToken::load_or_create(dir.path())
                        .unwrap()
                        .as_str()
                        .to_owned()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );
}

#[test]
fn a_token_file_others_may_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    ApiToken::load_or_create(dir.path()).unwrap();
    let path = dir.path().join(TOKEN_FILE);
    for mode in [0o640, 0o604, 0o620, 0o601] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = ApiToken::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::TokenPermissions { mode: m, .. } if m == mode),
            "{mode:o}: {err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    // A symbolic link, even to a private token, is refused and left alone.
    let elsewhere = tempfile::tempdir().unwrap();
    ApiToken::load_or_create(elsewhere.path()).unwrap();
    let linked = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        elsewhere.path().join(TOKEN_FILE),
        linked.path().join(TOKEN_FILE),
    )
    .unwrap();
    assert!(matches!(
        ApiToken::load_or_create(linked.path()),
        Err(StoreError::Io { .. })
    ));
    assert!(
        std::fs::symlink_metadata(linked.path().join(TOKEN_FILE))
            .unwrap()
            .is_symlink()
    );
    // A damaged one is reported, not replaced.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, "not a token\n").unwrap();
    let err = ApiToken::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a token\n");
}

#[tokio::test]
async fn node_json_says_where_a_live_node_is() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), "a", &[], NodeConfig::default()).await;
    let data_dir = a.library().dir().to_path_buf();
    assert_eq!(NodeFile::read(&data_dir), None, "none yet");
    let api: std::net::SocketAddr = "127.0.0.1:7423".parse().unwrap();
    let file = NodeFile::new(&a, api);
    assert_eq!(file.pid, std::process::id());
    assert_eq!(file.node_id, a.tls().node_id().to_string());
    assert_eq!(file.api, "http://127.0.0.1:7423/");
    assert_eq!(file.listening, a.listening());
    file.write(&data_dir).unwrap();
    assert_eq!(NodeFile::read(&data_dir), Some(file.clone()), "round trip");

    // Another live process's file is not ours to remove.
    let init = NodeFile {
        pid: 1,
        ..file.clone()
    };
    init.write(&data_dir).unwrap();
    assert!(!NodeFile::remove(&data_dir).unwrap());
    assert_eq!(NodeFile::read(&data_dir), Some(init));
    // A process that is gone: no node.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    NodeFile {
        pid: dead,
        ..file.clone()
    }
    .write(&data_dir)
    .unwrap();
    assert_eq!(NodeFile::read(&data_dir), None, "pid {dead} is gone");
    std::fs::write(data_dir.join(NODE_FILE), "{\"pid\": ").unwrap();
    assert_eq!(NodeFile::read(&data_dir), None, "unparsable");
    file.write(&data_dir).unwrap();
    assert!(NodeFile::remove(&data_dir).unwrap(), "ours");
    assert!(!data_dir.join(NODE_FILE).exists());
    assert!(
        !NodeFile::remove(&data_dir).unwrap(),
        "nothing left to remove"
    );
    a.shutdown().await;
}
