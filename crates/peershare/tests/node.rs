//! Whole nodes in one process: the download manager (several at once, the
//! queue, pause, resume, cancel, a restart taking up where it stopped),
//! downloads that seed while they run and after, and one peer reached at
//! several addresses.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use peershare::StoreError;
use peershare::download::manager::{
    MAX_DONE_KEPT, MAX_DOWNLOAD_ID, MAX_QUEUE_FILE_BYTES, MAX_QUEUED, MAX_RECORD_BYTES,
    ManagerConfig, ManagerError, QUEUE_FILE, State,
};
use peershare::download::order::Order;
use peershare::node::events::{DownloadId, Event};
use peershare::node::{Bound, Node, NodeConfig, NodeError};
use peershare::server::MAX_UPLOADS_PER_CONNECTION;
use peershare::{ClientConfig, Library, PeerConn, Tls};
use peershare_proto::FileId;
use serde_json::{Value, json};
use tokio::net::TcpListener;

#[tokio::test]
async fn downloads_run_a_few_at_a_time_and_the_rest_wait_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<Vec<u8>> = (0..3).map(|i| data(3 * 1024 * 1024, 500 + i)).collect();
    let named: Vec<(String, &[u8])> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("f{i}"), f.as_slice()))
        .collect();
    let shared: Vec<(&str, &[u8])> = named.iter().map(|(n, f)| (n.as_str(), *f)).collect();
    let seeder = node(dir.path(), "seed", &shared, paced(4_000_000)).await;
    let config = NodeConfig {
        manager: ManagerConfig {
            max_active: 2,
            ..ManagerConfig::default()
        },
        ..NodeConfig::default()
    };
    let b = node(dir.path(), "b", &[], config).await;
    let ids: Vec<DownloadId> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let out = dir.path().join(format!("got{i}"));
            b.download(order(f, &[&seeder], &out), dir.path())
                .unwrap()
                .id
        })
        .collect();
    let states = |b: &Node| -> Vec<State> {
        ids.iter()
            .map(|i| b.download_info(*i).unwrap().state)
            .collect()
    };
    assert_eq!(states(&b), [State::Active, State::Active, State::Queued]);
    for (i, id) in ids.iter().enumerate() {
        let info = finished(&b, *id).await;
        assert_eq!(info.state, State::Finished, "{info:?}");
        assert_eq!(
            std::fs::read(dir.path().join(format!("got{i}"))).unwrap(),
            files[i]
        );
        // Never more than two at once.
        let active = states(&b).iter().filter(|s| **s == State::Active).count();
        assert!(active <= 2);
    }
    b.shutdown().await;
    seeder.shutdown().await;
}

#[tokio::test]
async fn a_download_can_be_paused_resumed_and_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let content = data(6 * 1024 * 1024, 510);
    let seeder = node(dir.path(), "seed", &[("f", &content)], paced(2_000_000)).await;
    let b = node(dir.path(), "b", &[], NodeConfig::default()).await;
    let out = dir.path().join("got");
    let id = b
        .download(order(&content, &[&seeder], &out), dir.path())
        .unwrap()
        .id;
    until(&b, id, "some progress", |d| d.verified > 0).await;
    b.pause(id).unwrap();
    let paused = until(&b, id, "the pause", |d| d.state == State::Paused).await;
    assert!(!out.exists());
    b.resume(id).unwrap();
    let done = finished(&b, id).await;
    assert_eq!(done.state, State::Finished, "{done:?}");
    let summary = done.summary.unwrap();
    assert!(
        summary.bytes_resumed >= paused.verified.min(summary.bytes_resumed),
        "{summary:?}"
    );
    assert!(
        summary.bytes_resumed > 0,
        "the resumed run kept what the paused one verified"
    );
    assert_eq!(std::fs::read(&out).unwrap(), content);

    // Cancelled while running: stops, keeps its part file, never finishes.
    let out2 = dir.path().join("got2");
    let id2 = b
        .download(order(&content, &[&seeder], &out2), dir.path())
        .unwrap()
        .id;
    until(&b, id2, "some progress", |d| d.verified > 0).await;
    b.cancel(id2).unwrap();
    let c = until(&b, id2, "the cancel", |d| d.state == State::Cancelled).await;
    assert!(c.summary.is_none());
    assert!(!out2.exists());
    assert!(b.resume(id2).is_err(), "a cancelled download is over");
    b.shutdown().await;
    seeder.shutdown().await;
}

#[tokio::test]
async fn a_restarted_node_takes_up_its_queued_and_half_done_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (data(6 * 1024 * 1024, 520), data(2 * 1024 * 1024, 521));
    let seeder = node(
        dir.path(),
        "seed",
        &[("one", &one), ("two", &two)],
        paced(2_000_000),
    )
    .await;
    let config = NodeConfig {
        manager: ManagerConfig {
            max_active: 1,
            ..ManagerConfig::default()
        },
        ..NodeConfig::default()
    };
    let b = node(dir.path(), "b", &[], config.clone()).await;
    let (out1, out2) = (dir.path().join("got1"), dir.path().join("got2"));
    let id1 = b
        .download(order(&one, &[&seeder], &out1), dir.path())
        .unwrap()
        .id;
    let id2 = b
        .download(order(&two, &[&seeder], &out2), dir.path())
        .unwrap()
        .id;
    let half = until(&b, id1, "a checkpoint", |d| d.verified >= 2 * 1024 * 1024).await;
    let (_, state) = peershare::partial::part_paths(&out1);
    wait_for("a state file", 30, || state.exists()).await;
    assert_eq!(b.download_info(id2).unwrap().state, State::Queued);
    b.shutdown().await;
    assert!(!out1.exists());

    // The same data dir again: both are taken up, the first resumed.
    let lib = Library::open(dir.path().join("data-b")).unwrap();
    let tls = Tls::new(&lib.identity().unwrap());
    let bound = Bound {
        listeners: vec![TcpListener::bind("127.0.0.1:0").await.unwrap()],
        discovery: None,
    };
    let again = Node::start(lib, tls, config, bound).await.unwrap();
    let d1 = finished(&again, id1).await;
    let d2 = finished(&again, id2).await;
    assert_eq!((d1.state, d2.state), (State::Finished, State::Finished));
    let s1 = d1.summary.unwrap();
    assert!(
        s1.bytes_resumed > 0 && s1.bytes_resumed <= half.size,
        "{s1:?}"
    );
    assert_eq!(
        s1.bytes_resumed + s1.bytes_received,
        one.len() as u64,
        "nothing verified fetched again"
    );
    assert_eq!(std::fs::read(&out1).unwrap(), one);
    assert_eq!(std::fs::read(&out2).unwrap(), two);
    again.shutdown().await;
    seeder.shutdown().await;
}

/// Downloads seed: while B's download from A runs (A rate-limited), C gets
/// chunks from B; once A is gone, D gets the whole file from B alone.
#[tokio::test]
async fn a_download_seeds_while_it_runs_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let content = data(8 * 1024 * 1024, 530);
    let a = node(dir.path(), "a", &[("f", &content)], paced(2_000_000)).await;
    let b = node(dir.path(), "b", &[], NodeConfig::default()).await;
    let c = node(dir.path(), "c", &[], NodeConfig::default()).await;
    let id_b = b
        .download(
            order(&content, &[&a], &dir.path().join("b.bin")),
            dir.path(),
        )
        .unwrap()
        .id;
    until(&b, id_b, "B to hold some chunks", |d| {
        d.verified >= 1024 * 1024
    })
    .await;
    // C asks A and B; B is still downloading.
    let id_c = c
        .download(
            order(&content, &[&a, &b], &dir.path().join("c.bin")),
            dir.path(),
        )
        .unwrap()
        .id;
    let done_c = finished(&c, id_c).await;
    let s = done_c.summary.expect("C finished");
    let from_b = s
        .peers
        .iter()
        .find(|p| p.addr == b.listening()[0])
        .expect("B took part");
    assert!(from_b.partial, "B was still downloading");
    assert!(
        from_b.bytes > 0,
        "C received chunks from B while B downloaded: {s:?}"
    );
    assert_eq!(std::fs::read(dir.path().join("c.bin")).unwrap(), content);
    finished(&b, id_b).await;
    a.shutdown().await;

    let d = node(dir.path(), "d", &[], NodeConfig::default()).await;
    let id_d = d
        .download(
            order(&content, &[&b], &dir.path().join("d.bin")),
            dir.path(),
        )
        .unwrap()
        .id;
    let done = finished(&d, id_d).await;
    assert_eq!(done.state, State::Finished, "{done:?}");
    assert_eq!(std::fs::read(dir.path().join("d.bin")).unwrap(), content);
    let served: u64 = b
        .server_stats()
        .iter()
        .map(|s| s.bytes_served.load(Ordering::Relaxed))
        .sum();
    assert!(served >= content.len() as u64, "B served D the whole file");
    for n in [b, c, d] {
        n.shutdown().await;
    }
}

/// A peer that holds nothing when a download starts (its own download has
/// not begun) is asked again, not forgotten: C downloads slowly from A and
/// is told of B, which has nothing yet; B then downloads from a fast seeder
/// and runs ahead, and C gets chunks from B.
#[tokio::test]
async fn a_peer_with_nothing_at_first_is_asked_again() {
    let dir = tempfile::tempdir().unwrap();
    let content = data(6 * 1024 * 1024, 540);
    let slow = node(dir.path(), "slow", &[("f", &content)], paced(1_000_000)).await;
    let fast = node(
        dir.path(),
        "fast",
        &[("f2", &content)],
        NodeConfig::default(),
    )
    .await;
    let b = node(dir.path(), "b", &[], NodeConfig::default()).await;
    let c = node(dir.path(), "c", &[], NodeConfig::default()).await;
    let id_c = c
        .download(
            order(&content, &[&slow, &b], &dir.path().join("c.bin")),
            dir.path(),
        )
        .unwrap()
        .id;
    until(&c, id_c, "C to start", |d| d.verified > 0).await;
    b.download(
        order(&content, &[&fast], &dir.path().join("b.bin")),
        dir.path(),
    )
    .unwrap();
    let s = finished(&c, id_c).await.summary.expect("finished");
    let from_b = s.peers.iter().find(|p| p.addr == b.listening()[0]);
    assert!(
        from_b.is_some_and(|p| p.bytes > 0),
        "B joined C's download later: {s:?}"
    );
    assert_eq!(std::fs::read(dir.path().join("c.bin")).unwrap(), content);
    for n in [slow, fast, b, c] {
        n.shutdown().await;
    }
}

/// One node reached at 127.0.0.1 and ::1 is one peer: one connection kept,
/// no chunk asked twice outside endgame.
#[tokio::test]
async fn one_node_at_two_addresses_is_one_peer() {
    let dir = tempfile::tempdir().unwrap();
    let content = data(4 * 1024 * 1024, 550);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let v4 = format!("127.0.0.1:{port}");
    let v6 = format!("[::1]:{port}");
    let a = node_at(
        dir.path(),
        "a",
        &[("f", &content)],
        paced(4_000_000),
        &[&v4, &v6],
    )
    .await;
    let b = node(dir.path(), "b", &[], NodeConfig::default()).await;
    let mut o = order(&content, &[], &dir.path().join("got"));
    o.peers = vec![v4.parse::<SocketAddr>().unwrap(), v6.parse().unwrap()];
    let id = b.download(o, dir.path()).unwrap().id;
    let s = finished(&b, id).await.summary.expect("finished");
    assert_eq!(s.peers.len(), 1, "one peer: {s:?}");
    assert_eq!(s.duplicate_requests, 0, "{s:?}");
    assert_eq!(s.bytes_received, content.len() as u64, "no chunk twice");
    assert_eq!(std::fs::read(dir.path().join("got")).unwrap(), content);
    b.shutdown().await;
    a.shutdown().await;
}

/// The sharer sees its uploads: an event when a peer takes a file's first
/// chunk, and one with what it took when it stops.
#[tokio::test]
async fn uploads_are_reported_as_they_start_and_end() {
    let dir = tempfile::tempdir().unwrap();
    let content = data(2 * 1024 * 1024, 560);
    let a = node(dir.path(), "a", &[("f", &content)], NodeConfig::default()).await;
    let mut events = a.subscribe();
    let b = node(dir.path(), "b", &[], NodeConfig::default()).await;
    let id = b
        .download(order(&content, &[&a], &dir.path().join("got")), dir.path())
        .unwrap()
        .id;
    finished(&b, id).await;
    let (mut started, mut ended) = (None, None);
    while ended.is_none() {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Ok(e @ Event::UploadStarted { .. })) => started = Some(e),
            Ok(Ok(e @ Event::UploadFinished { .. })) => ended = Some(e),
            Ok(_) => {}
            Err(_) => panic!("no upload event"),
        }
    }
    let Some(Event::UploadStarted { peer, name, .. }) = started else {
        panic!("no start event");
    };
    assert_eq!(peer.node_id, b.tls().node_id().to_string());
    assert_eq!(name, "f");
    let Some(Event::UploadFinished {
        bytes, complete, ..
    }) = ended
    else {
        unreachable!()
    };
    assert_eq!(bytes, content.len() as u64);
    assert!(complete);
    b.shutdown().await;
    a.shutdown().await;
}

/// One connection taking one chunk of each of more files than
/// `MAX_UPLOADS_PER_CONNECTION`: every file is served, the first
/// `MAX_UPLOADS_PER_CONNECTION` are tracked (listed, with their events),
/// the rest are not.
#[tokio::test]
async fn a_connection_has_at_most_max_uploads_per_connection_tracked() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..MAX_UPLOADS_PER_CONNECTION + 1)
        .map(|i| (format!("f{i}"), data(1000 + i, 570 + i as u64)))
        .collect();
    let shared: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, f)| (n.as_str(), f.as_slice()))
        .collect();
    let a = node(dir.path(), "a", &shared, NodeConfig::default()).await;
    let mut events = a.subscribe();
    let tls = Tls::ephemeral();
    let conn = PeerConn::connect(
        a.listening()[0],
        &tls,
        Some(a.tls().node_id()),
        ClientConfig::default(),
    )
    .await
    .unwrap();
    for (_, content) in &files {
        let got = conn.chunk(id_of(content), 0).await.unwrap();
        assert_eq!(&got[..], &content[..], "every file is served");
    }
    // The server answers a connection in order, and counts a chunk's upload
    // once it is sent: with this answer, every chunk before it is counted.
    conn.manifest(id_of(&files[0].1)).await.unwrap();
    let total: usize = files.iter().map(|(_, f)| f.len()).sum();
    assert_eq!(a.uploaded(), total as u64, "all sent, tracked or not");
    let mut tracked: Vec<String> = a.uploads().into_iter().map(|u| u.name).collect();
    tracked.sort_by_key(|n| n[1..].parse::<usize>().unwrap());
    let first: Vec<String> = files[..MAX_UPLOADS_PER_CONNECTION]
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(tracked, first, "the first ones taken");
    let mut started = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let Event::UploadStarted { name, .. } = e {
            started.push(name);
        }
    }
    assert_eq!(started, first);
    drop(conn);
    let mut ended = 0;
    while ended < MAX_UPLOADS_PER_CONNECTION {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Ok(Event::UploadFinished { name, .. })) => {
                assert_ne!(name, files[MAX_UPLOADS_PER_CONNECTION].0);
                ended += 1;
            }
            Ok(Ok(_)) => {}
            other => panic!("{ended} uploads ended, then {other:?}"),
        }
    }
    // Its uploads leave the list before their ends are told.
    assert!(a.uploads().is_empty());
    a.shutdown().await;
}

// The manager's limits, at their sizes.

/// Nothing runs: downloads stay queued.
fn none_run() -> NodeConfig {
    NodeConfig {
        manager: ManagerConfig {
            max_active: 0,
            ..ManagerConfig::default()
        },
        ..NodeConfig::default()
    }
}

/// An order for a file nobody shares (`i` tells them apart), from
/// `peers`, saved in `dir`.
fn order_for(i: usize, peers: &[SocketAddr], dir: &Path) -> Order {
    let mut id = [0; 32];
    id[..8].copy_from_slice(&(i as u64).to_le_bytes());
    let mut o = Order::new(FileId(id).to_string());
    o.peers = peers.to_vec();
    o.output = Some(dir.join(format!("out{i}")));
    o
}

/// `downloads.json` as a node writes it: download `i + 1` is `orders[i]`,
/// in its state (`queued`, `paused`), given from `cwd`.
fn queue_file(orders: &[(Order, &str)], cwd: &Path) -> Vec<u8> {
    let downloads: Vec<Value> = orders
        .iter()
        .enumerate()
        .map(|(i, (order, state))| {
            json!({
                "id": i + 1,
                "state": state,
                "order": order,
                "cwd": cwd,
                "added_unix": 1_700_000_000 + i,
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "format": 1,
        "next_id": orders.len() + 1,
        "downloads": downloads,
    }))
    .unwrap()
}

/// Where nobody listens (TEST-NET-1); never dialed by a node whose
/// downloads do not run.
fn nobody() -> SocketAddr {
    "192.0.2.1:9".parse().unwrap()
}

fn refused_as_corrupt(started: Result<Node, NodeError>) -> String {
    match started {
        Err(NodeError::Manager(ManagerError::Store(e @ StoreError::Corrupt { .. }))) => {
            e.to_string()
        }
        Err(e) => panic!("refused, but not as damaged: {e}"),
        Ok(_) => panic!("started"),
    }
}

#[tokio::test]
async fn a_node_takes_up_max_queued_downloads_and_refuses_one_more() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let orders: Vec<(Order, &str)> = (0..MAX_QUEUED)
        .map(|i| (order_for(i, &[nobody()], dir.path()), "queued"))
        .collect();
    std::fs::write(data.join(QUEUE_FILE), queue_file(&orders, dir.path())).unwrap();
    let b = start_on(&data, none_run()).await.unwrap();
    let listed = b.downloads();
    assert_eq!(listed.len(), MAX_QUEUED);
    assert!(listed.iter().all(|d| d.state == State::Queued));
    assert_eq!(listed[MAX_QUEUED - 1].order, orders[MAX_QUEUED - 1].0);

    let err = b
        .download(order_for(MAX_QUEUED, &[nobody()], dir.path()), dir.path())
        .unwrap_err();
    assert!(
        matches!(err, ManagerError::Full(n) if n == MAX_QUEUED),
        "{err}"
    );
    assert_eq!(err.kind(), "busy");
    assert_eq!(b.downloads().len(), MAX_QUEUED);
    // A place freed is taken again, and that is all.
    b.cancel(1).unwrap();
    let added = b
        .download(order_for(MAX_QUEUED, &[nobody()], dir.path()), dir.path())
        .unwrap();
    assert_eq!(added.id, MAX_QUEUED as DownloadId + 1);
    let err = b
        .download(
            order_for(MAX_QUEUED + 1, &[nobody()], dir.path()),
            dir.path(),
        )
        .unwrap_err();
    assert!(
        matches!(err, ManagerError::Full(n) if n == MAX_QUEUED),
        "{err}"
    );
    b.shutdown().await;

    // The file the node wrote for as many as it takes, it takes up.
    let written = std::fs::read(data.join(QUEUE_FILE)).unwrap();
    assert!(written.len() <= MAX_QUEUE_FILE_BYTES);
    // Compact (what MAX_QUEUE_FILE_BYTES counts on): no byte to spare.
    let value: Value = serde_json::from_slice(&written).unwrap();
    assert_eq!(written.len(), serde_json::to_vec(&value).unwrap().len());
    assert_eq!(value["downloads"].as_array().unwrap().len(), MAX_QUEUED);
    let again = start_on(&data, none_run()).await.unwrap();
    let listed = again.downloads();
    assert_eq!(listed.len(), MAX_QUEUED);
    assert_eq!(listed[MAX_QUEUED - 1].id, added.id);
    again.shutdown().await;
}

#[tokio::test]
async fn a_queue_file_listing_more_than_max_queued_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let orders: Vec<(Order, &str)> = (0..=MAX_QUEUED)
        .map(|i| (order_for(i, &[nobody()], dir.path()), "queued"))
        .collect();
    let file = queue_file(&orders, dir.path());
    assert!(file.len() <= MAX_QUEUE_FILE_BYTES, "refused for its count");
    std::fs::write(data.join(QUEUE_FILE), &file).unwrap();
    let why = refused_as_corrupt(start_on(&data, none_run()).await);
    assert!(
        why.contains(&format!("{} downloads", MAX_QUEUED + 1)) && why.contains("move it away"),
        "{why}"
    );
    assert_eq!(std::fs::read(data.join(QUEUE_FILE)).unwrap(), file, "kept");
}

/// Download IDs are at most `MAX_DOWNLOAD_ID` (exact as a JSON number in
/// a browser): a queue file past it, in its next ID or in a record, is
/// refused and kept; one at it is taken up, and the next `add` is refused
/// rather than wrapping round onto an existing ID.
#[tokio::test]
async fn download_ids_past_max_download_id_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let path = data.join(QUEUE_FILE);
    let one = [(order_for(0, &[nobody()], dir.path()), "queued")];
    let with_ids = |id: u64, next_id: u64| {
        let mut v: Value = serde_json::from_slice(&queue_file(&one, dir.path())).unwrap();
        v["downloads"][0]["id"] = json!(id);
        v["next_id"] = json!(next_id);
        serde_json::to_vec(&v).unwrap()
    };
    for (id, next) in [
        (1, MAX_DOWNLOAD_ID + 1),
        (MAX_DOWNLOAD_ID + 1, 2),
        (u64::MAX, u64::MAX),
    ] {
        let file = with_ids(id, next);
        std::fs::write(&path, &file).unwrap();
        let why = refused_as_corrupt(start_on(&data, none_run()).await);
        assert!(why.contains("download ID"), "{why}");
        assert_eq!(std::fs::read(&path).unwrap(), file, "kept");
    }
    std::fs::write(&path, with_ids(MAX_DOWNLOAD_ID, MAX_DOWNLOAD_ID)).unwrap();
    let node = start_on(&data, none_run()).await.unwrap();
    assert_eq!(node.downloads().len(), 1);
    let refused = node.download(order_for(1, &[nobody()], dir.path()), dir.path());
    assert!(
        matches!(refused, Err(ManagerError::OutOfIds(MAX_DOWNLOAD_ID))),
        "{refused:?}"
    );
    assert_eq!(node.downloads().len(), 1, "nothing replaced");
    node.shutdown().await;
}

#[tokio::test]
async fn a_queue_file_over_max_queue_file_bytes_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let path = data.join(QUEUE_FILE);
    // One download, and blanks (which JSON allows) up to one byte past the
    // limit.
    let mut file = queue_file(
        &[(order_for(0, &[nobody()], dir.path()), "queued")],
        dir.path(),
    );
    file.resize(MAX_QUEUE_FILE_BYTES + 1, b' ');
    std::fs::write(&path, &file).unwrap();
    let why = refused_as_corrupt(start_on(&data, none_run()).await);
    assert!(
        why.contains(&format!("{} bytes", MAX_QUEUE_FILE_BYTES + 1))
            && why.contains("move it away"),
        "{why}"
    );
    assert!(std::fs::read(&path).unwrap() == file, "kept as it was");
    // At the limit, it is read.
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(MAX_QUEUE_FILE_BYTES as u64)
        .unwrap();
    let b = start_on(&data, none_run()).await.unwrap();
    assert_eq!(b.downloads().len(), 1);
    b.shutdown().await;
}

/// Regression: a failed download was queued again by `resume` whatever the
/// number waiting, so a node could hold (and write) more than it takes up.
#[tokio::test]
async fn a_failed_download_is_not_resumed_past_max_queued() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // Connections to it are never answered: a download from it runs on.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_at = silent.local_addr().unwrap();
    // 1 fails at once (no peer at all), 2 then runs on, the rest wait paused.
    let mut fails = order_for(0, &[], dir.path());
    fails.discover = Some(false);
    let mut orders = vec![
        (fails, "queued"),
        (order_for(1, &[silent_at], dir.path()), "queued"),
    ];
    orders.extend((2..MAX_QUEUED).map(|i| (order_for(i, &[nobody()], dir.path()), "paused")));
    std::fs::write(data.join(QUEUE_FILE), queue_file(&orders, dir.path())).unwrap();
    let config = NodeConfig {
        manager: ManagerConfig {
            max_active: 1,
            ..ManagerConfig::default()
        },
        ..NodeConfig::default()
    };
    let b = start_on(&data, config.clone()).await.unwrap();
    let failed = until(&b, 1, "the first to fail", |d| d.state == State::Failed).await;
    assert_eq!(failed.error.unwrap().kind, "usage");
    // One more waiting makes as many as the node takes.
    let last = b
        .download(order_for(MAX_QUEUED, &[silent_at], dir.path()), dir.path())
        .unwrap();
    let err = b.resume(1).unwrap_err();
    assert!(
        matches!(err, ManagerError::Full(n) if n == MAX_QUEUED),
        "{err}"
    );
    assert_eq!(b.download_info(1).unwrap().state, State::Failed);
    b.cancel(last.id).unwrap();
    b.resume(1).unwrap();
    b.shutdown().await;
    let again = start_on(&data, config).await.unwrap();
    assert_eq!(again.downloads().len(), MAX_QUEUED);
    again.shutdown().await;
    drop(silent);
}

/// Regression: a download cancelled while it did not run was never
/// forgotten.
#[tokio::test]
async fn only_the_newest_max_done_kept_downloads_over_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let over = MAX_DONE_KEPT + 50;
    let orders: Vec<(Order, &str)> = (0..=over)
        .map(|i| (order_for(i, &[nobody()], dir.path()), "queued"))
        .collect();
    std::fs::write(data.join(QUEUE_FILE), queue_file(&orders, dir.path())).unwrap();
    let b = start_on(&data, none_run()).await.unwrap();
    // All but the last are cancelled, oldest first.
    for id in 1..=over as DownloadId {
        b.cancel(id).unwrap();
    }
    let listed = b.downloads();
    let ids: Vec<DownloadId> = listed.iter().map(|d| d.id).collect();
    let newest: Vec<DownloadId> = (over - MAX_DONE_KEPT + 1..=over + 1)
        .map(|i| i as DownloadId)
        .collect();
    assert_eq!(ids, newest, "the newest over, and the one not over");
    assert!(
        listed[..MAX_DONE_KEPT]
            .iter()
            .all(|d| d.state == State::Cancelled)
    );
    assert_eq!(listed[MAX_DONE_KEPT].state, State::Queued);
    b.shutdown().await;
}

/// Downloads that ran and ended (here cancelled while they run) are
/// forgotten past `MAX_DONE_KEPT` too, oldest first.
#[tokio::test]
async fn downloads_that_ran_count_towards_max_done_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // Connections to it are never answered: a download from it runs on.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_at = silent.local_addr().unwrap();
    let over = MAX_DONE_KEPT + 50;
    let orders: Vec<(Order, &str)> = (0..over)
        .map(|i| (order_for(i, &[silent_at], dir.path()), "queued"))
        .collect();
    std::fs::write(data.join(QUEUE_FILE), queue_file(&orders, dir.path())).unwrap();
    let config = NodeConfig {
        manager: ManagerConfig {
            max_active: over,
            ..ManagerConfig::default()
        },
        ..NodeConfig::default()
    };
    let b = start_on(&data, config).await.unwrap();
    assert!(b.downloads().iter().all(|d| d.state == State::Active));
    let mut events = b.subscribe();
    for id in 1..=over as DownloadId {
        b.cancel(id).unwrap();
    }
    // Each ends in its own time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let listed = b.downloads();
        if listed.len() == MAX_DONE_KEPT && listed.iter().all(|d| d.state.is_over()) {
            break listed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} listed, {} over",
            listed.len(),
            listed.iter().filter(|d| d.state.is_over()).count()
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), events.recv()).await;
    };
    let ids: Vec<DownloadId> = listed.iter().map(|d| d.id).collect();
    let newest: Vec<DownloadId> = (over - MAX_DONE_KEPT + 1..=over)
        .map(|i| i as DownloadId)
        .collect();
    assert_eq!(ids, newest);
    assert!(listed.iter().all(|d| d.state == State::Cancelled));
    b.shutdown().await;
    drop(silent);
}

#[tokio::test]
async fn an_order_too_large_to_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = node(dir.path(), "b", &[], none_run()).await;
    let mut o = order_for(0, &[nobody()], dir.path());
    let named = |o: &mut Order, len: usize| o.output = Some(dir.path().join("x".repeat(len)));
    named(&mut o, MAX_RECORD_BYTES);
    let Err(ManagerError::TooLarge { bytes, max }) = b.download(o.clone(), dir.path()) else {
        panic!("taken");
    };
    assert_eq!(max, MAX_RECORD_BYTES);
    // Exactly the limit is taken, a byte more is not.
    let fits = MAX_RECORD_BYTES - (bytes - MAX_RECORD_BYTES);
    named(&mut o, fits);
    b.download(o.clone(), dir.path()).unwrap();
    named(&mut o, fits + 1);
    let err = b.download(o, dir.path()).unwrap_err();
    assert!(
        matches!(err, ManagerError::TooLarge { bytes, .. } if bytes == MAX_RECORD_BYTES + 1),
        "{err}"
    );
    assert_eq!(err.kind(), "usage");
    assert_eq!(b.downloads().len(), 1);
    b.shutdown().await;
}

/// Regression: a path that is not UTF-8 cannot be written in JSON, and the
/// node panicked recording the list of downloads (holding its lock).
#[tokio::test]
async fn a_download_saved_under_a_path_not_in_utf8_is_refused_and_the_node_goes_on() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let b = node(dir.path(), "b", &[], none_run()).await;
    let mut o = order_for(0, &[nobody()], dir.path());
    o.output = Some(dir.path().join(std::ffi::OsStr::from_bytes(b"got\xff")));
    let err = b.download(o, dir.path()).unwrap_err();
    assert!(matches!(err, ManagerError::Unrecordable(_)), "{err}");
    assert_eq!(err.kind(), "usage");
    let fine = b
        .download(order_for(1, &[nobody()], dir.path()), dir.path())
        .unwrap();
    assert_eq!(b.downloads(), [fine]);
    b.shutdown().await;
}
