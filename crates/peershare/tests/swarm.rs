//! The swarm parts of the engine with whole nodes in one process on
//! 127.0.0.1: partial sources (a download in progress offering its verified
//! chunks, `Have` and its updates), `Cancel`, peers joining a running
//! download, and endgame taking the tail away from a slow peer.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use peershare::download::Progress;
use peershare::partial::{Bitmap, part_paths, store_state};
use peershare::store::Download;
use peershare::{ClientConfig, PeerConn, PeerError, ServerConfig, Tls};
use peershare_proto::Manifest;
use peershare_proto::wire::{ErrorCode, Holding};

const CHUNK: usize = 64 * 1024;

/// A node "downloading" `content`: its part file holds all the bytes, but
/// its state file vouches only for the chunks in `held`.
async fn partial_node(content: &[u8], held: &[u32]) -> (Node, Manifest, std::path::PathBuf) {
    partial_node_with(content, held, ServerConfig::default()).await
}

/// [`partial_node`] with its own server configuration.
async fn partial_node_with(
    content: &[u8],
    held: &[u32],
    config: ServerConfig,
) -> (Node, Manifest, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let lib = peershare::Library::open(dir.path().join("data")).unwrap();
    let manifest = Manifest::from_bytes(content);
    let out = dir.path().join("in-progress.bin");
    let (part, state) = part_paths(&out);
    std::fs::write(&part, content).unwrap();
    let mut have = Bitmap::new(manifest.chunk_count());
    held.iter().for_each(|&i| {
        have.set(i);
    });
    store_state(&state, &manifest.id(), content.len() as u64, &have).unwrap();
    lib.begin_download(
        &out,
        &manifest,
        Download {
            id: manifest.id().to_string(),
            name: "in-progress.bin".into(),
            size: content.len() as u64,
            part,
            state,
            unlisted: false,
        },
    )
    .unwrap();
    let node = Node::serve(dir, lib, config).await;
    (node, manifest, out)
}

/// A node sharing `content` as `f.bin`, uploading at most `rate` bytes/s.
async fn seeder(content: &[u8], rate: Option<u64>) -> Node {
    let config = ServerConfig {
        max_upload_rate: rate,
        ..ServerConfig::default()
    };
    Node::start(&[("f.bin", content)], config).await
}

async fn connect(node: &Node) -> PeerConn {
    PeerConn::connect(node.addr, &Tls::ephemeral(), None, ClientConfig::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn partial_source_lists_says_and_serves_only_its_verified_chunks() {
    let content = data(4 * CHUNK, 1);
    let (node, manifest, _out) = partial_node(&content, &[0, 2]).await;
    let id = manifest.id();
    let conn = connect(&node).await;
    assert!(conn.remote().swarm());

    let catalog = conn.catalog().await.unwrap();
    assert_eq!(catalog.len(), 1);
    assert!(catalog[0].is_partial());
    assert_eq!(catalog[0].name, "in-progress.bin");
    assert_eq!(conn.manifest(id).await.unwrap(), manifest);

    let (holding, _) = conn.have(id, false).await.unwrap();
    let Holding::Some(bits) = holding else {
        panic!("a partial source says it holds everything")
    };
    assert_eq!(bits.iter().collect::<Vec<_>>(), vec![0, 2]);

    let c0 = conn.chunk(id, 0).await.unwrap();
    assert_eq!(&c0[..], &content[..CHUNK]);
    let c2 = conn.chunk(id, 2).await.unwrap();
    assert_eq!(&c2[..], &content[2 * CHUNK..3 * CHUNK]);
    match conn.chunk(id, 1).await {
        Err(PeerError::Remote {
            code: ErrorCode::Unavailable,
            ..
        }) => {}
        other => panic!("an unverified chunk was not refused: {other:?}"),
    }
    assert_eq!(node.stats.partial_chunks_served.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn have_subscription_reports_new_chunks_then_the_whole_file() {
    let content = data(4 * CHUNK, 2);
    let (node, manifest, out) = partial_node(&content, &[1]).await;
    let id = manifest.id();
    let conn = connect(&node).await;
    let (first, watch) = conn.have(id, true).await.unwrap();
    let mut watch = watch.expect("a subscription");
    assert!(matches!(first, Holding::Some(ref b) if b.count() == 1));

    // The downloader verifies two more chunks (its next checkpoint).
    let mut have = Bitmap::new(4);
    for i in [1, 2, 3] {
        have.set(i);
    }
    let (part, state) = part_paths(&out);
    store_state(&state, &id, content.len() as u64, &have).unwrap();
    let update = tokio::time::timeout(Duration::from_secs(10), watch.changed())
        .await
        .expect("an update within 10 s");
    update.unwrap();
    let latest = watch.borrow_and_update().clone();
    assert!(
        matches!(latest, Some(Holding::Some(ref b)) if b.iter().collect::<Vec<_>>() == vec![1, 2, 3]),
        "{latest:?}"
    );

    // It finishes: the file under its final name, shared.
    std::fs::rename(&part, &out).unwrap();
    std::fs::remove_file(&state).unwrap();
    assert!(node.lib.end_download(&out, true).unwrap().is_some());
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            watch.changed().await.expect("subscription still open");
            if matches!(*watch.borrow_and_update(), Some(Holding::All)) {
                break;
            }
        }
    })
    .await
    .expect("a final Have(All) within 10 s");
    // And it is now an ordinary shared file.
    let catalog = conn.catalog().await.unwrap();
    assert!(!catalog[0].is_partial());
    assert_eq!(conn.have(id, false).await.unwrap().0, Holding::All);
}

#[tokio::test]
async fn cancelled_chunk_requests_cost_the_server_no_upload() {
    // 64 kB/s: the first 64 KiB chunk goes at once (the burst), the second
    // takes about a second, during which the client gives up on the third.
    let content = data(4 * CHUNK, 3);
    let node = seeder(&content, Some(64_000)).await;
    let id = id_of(&content);
    let conn = Arc::new(connect(&node).await);
    let ask = |i: u32| {
        let c = conn.clone();
        tokio::spawn(async move { c.chunk(id, i).await })
    };
    let (c0, c1, c2) = (ask(0), ask(1), ask(2));
    assert_eq!(&c0.await.unwrap().unwrap()[..], &content[..CHUNK]);
    c2.abort();
    assert!(c2.await.unwrap_err().is_cancelled());
    assert_eq!(&c1.await.unwrap().unwrap()[..], &content[CHUNK..2 * CHUNK]);
    // Chunk 3 is answered after where chunk 2's answer would have been.
    let c3 = conn.chunk(id, 3).await.unwrap();
    assert_eq!(&c3[..], &content[3 * CHUNK..]);
    assert_eq!(node.stats.cancelled.load(Ordering::Relaxed), 1);
    assert_eq!(node.stats.chunks_served.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn peers_learned_later_join_a_running_download() {
    let content = data(64 * CHUNK, 4);
    let id = id_of(&content);
    let slow = seeder(&content, Some(500_000)).await;
    let fast = seeder(&content, None).await;
    let out = slow.path("got.bin");
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    let mut req = request(id, vec![slow.addr], &out);
    req.more_peers = Some(rx);
    let progress = Arc::new(Progress::default());
    let dl = tokio::spawn(fetch_with(req, progress.clone()));
    wait_for("first verified bytes", 30, || {
        progress.verified.load(Ordering::Relaxed) > 0
    })
    .await;
    // Discovery hears of the fast node (and the slow one again).
    tx.send_replace(vec![
        (slow.addr, None),
        (fast.addr, Some(fast.tls.node_id())),
    ]);
    let summary = dl.await.unwrap().unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content);
    assert_eq!(summary.peers.len(), 2, "a peer joined twice: {summary:?}");
    let from = |a| summary.peers.iter().find(|p| p.addr == a).unwrap().bytes;
    assert!(from(slow.addr) > 0 && from(fast.addr) > 0, "{summary:?}");
}

#[tokio::test]
async fn own_server_is_never_a_source() {
    let content = data(3 * CHUNK, 5);
    let id = id_of(&content);
    let me = seeder(&content, None).await;
    let other = seeder(&content, None).await;
    let out = me.path("got.bin");
    let mut req = request(id, vec![me.addr, other.addr], &out);
    req.tls = me.tls.clone();
    let summary = fetch(req).await.unwrap();
    assert_eq!(summary.peers.len(), 1, "{summary:?}");
    assert_eq!(summary.peers[0].addr, other.addr);
}

#[tokio::test]
async fn endgame_takes_the_tail_from_a_slow_peer() {
    // 16 chunks; the slow peer sends one chunk a second after the first.
    let content = data(16 * CHUNK, 6);
    let id = id_of(&content);
    let slow = seeder(&content, Some(64_000)).await;
    let fast = seeder(&content, None).await;
    let out = fast.path("got.bin");
    let summary = fetch(request(id, vec![slow.addr, fast.addr], &out))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content);
    assert!(summary.duplicate_requests >= 1, "{summary:?}");
    let slow_report = summary.peers.iter().find(|p| p.addr == slow.addr).unwrap();
    // The slow peer was asked for several chunks at once (its first
    // window) but delivered fewer: the fast one finished them.
    let served = slow.stats.chunks_served.load(Ordering::Relaxed);
    assert!(
        (slow_report.chunks as u64) < 4 && served < 4,
        "the slow peer held the tail: {summary:?}"
    );
    // (Its copies still queued are cancelled as the download ends; the
    // connection closing with it may overtake the `Cancel`, so the server
    // side of cancelling is tested on its own above.)
}

#[tokio::test]
async fn have_subscriptions_per_connection_are_capped() {
    let content = data(4 * CHUNK, 7);
    let (node, manifest, _out) = partial_node(&content, &[0]).await;
    let conn = connect(&node).await;
    let mut kept = Vec::new();
    for _ in 0..peershare::server::MAX_HAVE_SUBSCRIPTIONS {
        kept.push(conn.have(manifest.id(), true).await.unwrap().1);
    }
    match conn.have(manifest.id(), true).await {
        Err(PeerError::Remote {
            code: ErrorCode::Busy,
            ..
        }) => {}
        other => panic!("subscription over the cap: {other:?}"),
    }
    // A plain question is still answered.
    assert!(matches!(
        conn.have(manifest.id(), false).await.unwrap().0,
        Holding::Some(_)
    ));
}

#[tokio::test]
async fn download_from_peers_that_hold_only_parts_gives_up_when_starved() {
    let content = data(4 * CHUNK, 8);
    let (node, manifest, _out) = partial_node(&content, &[0, 1]).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("got.bin");
    let mut req = request(manifest.id(), vec![node.addr], &out);
    req.config.starved_timeout = Duration::from_secs(1);
    let progress = Arc::new(Progress::default());
    match fetch_with(req, progress.clone()).await {
        Err(peershare::DownloadError::AllSourcesFailed(why)) => {
            assert!(why[0].contains("hold only parts"), "{why:?}")
        }
        other => panic!("expected a starved download to fail: {other:?}"),
    }
    // What it could get, it got, and kept for a resume.
    assert_eq!(progress.verified.load(Ordering::Relaxed), 2 * CHUNK as u64);
    let (_, state) = part_paths(&out);
    assert!(state.exists());
}

/// Regression (review): a partial peer the downloader asks nothing of is
/// still watched: when its announcements stop (its node went away), it is
/// treated as lost and reconnected, and a node back at that address with
/// the whole file finishes the download.
#[tokio::test]
async fn a_quiet_partial_peer_that_goes_away_is_reconnected() {
    let content = data(4 * CHUNK, 9);
    let (mut node, manifest, _out) = partial_node(&content, &[0, 1]).await;
    let addr = node.addr;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("got.bin");
    let mut req = request(manifest.id(), vec![addr], &out);
    req.config.starved_timeout = Duration::from_secs(50);
    let progress = Arc::new(Progress::default());
    let dl = tokio::spawn(fetch_with(req, progress.clone()));
    wait_for("the two chunks it holds", 10, || {
        progress.verified.load(Ordering::Relaxed) == 2 * CHUNK as u64
    })
    .await;
    // Nothing is in flight to it now. It stops; a node with the whole file
    // takes its place.
    node.shutdown().await;
    let whole = tempfile::tempdir().unwrap();
    let lib = peershare::Library::open(whole.path().join("data")).unwrap();
    std::fs::write(whole.path().join("f.bin"), &content).unwrap();
    lib.share(
        &[whole.path().join("f.bin")],
        &peershare::ShareProgress::default(),
    )
    .unwrap();
    let _back = Node::serve_at(whole, lib, ServerConfig::default(), addr).await;
    let summary = dl.await.unwrap().unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content);
    assert_eq!(summary.peers.len(), 1);
    assert_eq!(summary.peers[0].bytes, content.len() as u64);
}

/// Regression (review): a peer that did not have the file when first asked
/// is asked again when discovery reports it again, and joins.
#[tokio::test]
async fn a_peer_without_the_file_at_first_joins_once_it_has_it() {
    let content = data(24 * CHUNK, 10);
    let id = id_of(&content);
    let slow = seeder(&content, Some(256_000)).await;
    let late = Node::start(&[], ServerConfig::default()).await;
    let late_file = late.path("f.bin");
    std::fs::write(&late_file, &content).unwrap();
    let out = slow.path("got.bin");
    let (tx, rx) = tokio::sync::watch::channel(vec![(slow.addr, None), (late.addr, None)]);
    let mut req = request(id, vec![slow.addr, late.addr], &out);
    req.more_peers = Some(rx);
    let progress = Arc::new(Progress::default());
    let dl = tokio::spawn(fetch_with(req, progress.clone()));
    wait_for("first verified bytes", 30, || {
        progress.verified.load(Ordering::Relaxed) > 0
    })
    .await;
    // It has the file now; discovery reports the same peers again.
    late.lib
        .share(&[late_file], &peershare::ShareProgress::default())
        .unwrap();
    tx.send_replace(vec![(slow.addr, None), (late.addr, None)]);
    let summary = dl.await.unwrap().unwrap();
    let late_bytes = summary.peers.iter().find(|p| p.addr == late.addr);
    assert!(
        late_bytes.is_some_and(|p| p.bytes > 0),
        "the node that has the file now never joined: {summary:?}"
    );
}

/// Regression (review): `--no-share` resuming a download an earlier run
/// offered withdraws that offer.
#[tokio::test]
async fn keeping_a_download_private_withdraws_an_earlier_offer() {
    let content = data(4 * CHUNK, 11);
    let id = id_of(&content);
    let seeder = seeder(&content, None).await;
    let (me, manifest, out) = partial_node(&content, &[0, 1]).await;
    assert_eq!(manifest.id(), id);
    let mut req = request(id, vec![seeder.addr], &out);
    req.library = Some(me.lib.clone());
    req.share = false;
    let summary = fetch(req).await.unwrap();
    assert!(!summary.shared);
    assert_eq!(std::fs::read(&out).unwrap(), content);
    let snap = me.lib.snapshot().unwrap();
    assert!(
        snap.downloads.is_empty() && snap.files.is_empty(),
        "{snap:?}"
    );
}

/// A node downloading a file offers it as it goes, and says `Have(All)` to
/// its subscribers when it is done (it never looks gone in between).
#[tokio::test]
async fn a_downloader_offers_its_chunks_and_announces_the_whole_file() {
    let content = data(32 * CHUNK, 12);
    let id = id_of(&content);
    let seeder = seeder(&content, Some(1_000_000)).await;
    let me = Node::start(&[], ServerConfig::default()).await;
    let out = me.path("got.bin");
    let mut req = request(id, vec![seeder.addr], &out);
    req.library = Some(me.lib.clone());
    req.tls = me.tls.clone();
    req.config.checkpoint_interval = Duration::from_millis(200);
    let progress = Arc::new(Progress::default());
    let dl = tokio::spawn(fetch_with(req, progress.clone()));
    // A third node asks the downloader while it downloads.
    let conn = connect(&me).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut watch = loop {
        if let Ok((Holding::Some(_), Some(w))) = conn.have(id, true).await {
            break w;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the download was never offered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let last = tokio::time::timeout(Duration::from_secs(30), async {
        let mut last = None;
        while watch.changed().await.is_ok() {
            last = watch.borrow_and_update().clone();
            if matches!(last, Some(Holding::All)) {
                break;
            }
        }
        last
    })
    .await
    .expect("the subscription ends within 30 s");
    assert_eq!(last, Some(Holding::All));
    let summary = dl.await.unwrap().unwrap();
    assert!(summary.shared);
    assert_eq!(me.lib.snapshot().unwrap().files.len(), 1);
}

/// Regression (review): a chunk a partial source's state file vouches for
/// but whose bytes do not verify (its part file changed under it) is
/// refused, not sent as if verified.
#[tokio::test]
async fn a_partial_source_never_serves_bytes_that_do_not_verify() {
    let content = data(4 * CHUNK, 13);
    let (node, manifest, out) = partial_node(&content, &[0, 1]).await;
    let (part, _) = part_paths(&out);
    let mut damaged = content.clone();
    damaged[CHUNK + 7] ^= 1;
    std::fs::write(&part, &damaged).unwrap();
    let conn = connect(&node).await;
    assert_eq!(
        &conn.chunk(manifest.id(), 0).await.unwrap()[..],
        &content[..CHUNK]
    );
    match conn.chunk(manifest.id(), 1).await {
        Err(PeerError::Remote {
            code: ErrorCode::Unavailable,
            ..
        }) => {}
        other => panic!("damaged chunk served: {other:?}"),
    }
}

/// Regression (review): the server closes the part file of a download that
/// is no longer recorded, so deleting it gives its space back.
#[tokio::test]
async fn a_withdrawn_download_part_file_is_not_held_open() {
    let content = data(4 * CHUNK, 14);
    let (node, manifest, out) = partial_node(&content, &[0]).await;
    let conn = connect(&node).await;
    conn.chunk(manifest.id(), 0).await.unwrap();
    let (part, state) = part_paths(&out);
    std::fs::remove_file(&part).unwrap();
    std::fs::remove_file(&state).unwrap();
    node.lib.unshare(&[manifest.id().to_string()]).unwrap();
    let name = part.to_string_lossy().into_owned();
    wait_for("the deleted part file to be closed", 15, || {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .all(|l| !l.to_string_lossy().starts_with(name.as_str()))
    })
    .await;
}

/// Requests in flight are capped for all peers together, and the cap is
/// shared among them: every peer still gets work.
#[tokio::test]
async fn requests_in_flight_are_bounded_across_all_peers() {
    let content = data(48 * CHUNK, 15);
    let id = id_of(&content);
    let mut seeders = Vec::new();
    for _ in 0..3 {
        seeders.push(seeder(&content, Some(2_000_000)).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("got.bin");
    let mut req = request(id, seeders.iter().map(|n| n.addr).collect(), &out);
    req.config.max_in_flight_bytes = 4 * CHUNK as u64;
    let summary = fetch(req).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content);
    // The budget, plus at most one request per peer below its fair share
    // of it (see the next test).
    assert!(
        (3..=4 + 3).contains(&summary.peak_in_flight),
        "peak {}",
        summary.peak_in_flight
    );
    for p in &summary.peers {
        assert!(
            p.bytes > 0,
            "a peer got no share of the budget: {summary:?}"
        );
    }
}

/// Regression (review): when slow peers hold the whole in-flight budget, a
/// fast peer still gets its fair share of it, and so most of the work.
#[tokio::test]
async fn slow_peers_holding_the_budget_do_not_starve_a_fast_one() {
    let content = data(16 * CHUNK, 16);
    let id = id_of(&content);
    let a = seeder(&content, Some(8_000)).await;
    let b = seeder(&content, Some(8_000)).await;
    let fast = seeder(&content, None).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("got.bin");
    let mut req = request(id, vec![a.addr, b.addr, fast.addr], &out);
    req.config.window_bytes = 2 * CHUNK as u64;
    req.config.max_in_flight_bytes = 4 * CHUNK as u64;
    let summary = fetch(req).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content);
    let from_fast = summary.peers.iter().find(|p| p.addr == fast.addr).unwrap();
    assert!(from_fast.chunks >= 12, "the fast peer starved: {summary:?}");
    // Within the budget plus one request per peer below its fair share.
    assert!(
        summary.peak_in_flight <= 4 + 3,
        "{}",
        summary.peak_in_flight
    );
}

/// Regression (review): a peer given up on after its reconnections failed
/// rejoins, in the same slot, when discovery reports it again.
#[tokio::test]
async fn a_peer_given_up_on_rejoins_when_it_is_back() {
    let content = data(96 * CHUNK, 17);
    let id = id_of(&content);
    let paced = ServerConfig {
        max_upload_rate: Some(600_000),
        ..ServerConfig::default()
    };
    let a = seeder(&content, Some(600_000)).await;
    let mut b = seeder(&content, Some(600_000)).await;
    let b_addr = b.addr;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("got.bin");
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    let mut req = request(id, vec![a.addr, b_addr], &out);
    req.more_peers = Some(rx);
    let progress = Arc::new(Progress::default());
    let dl = tokio::spawn(fetch_with(req, progress.clone()));
    let b_bytes = |p: &Progress| {
        let per = p.per_peer.lock().unwrap();
        per.iter()
            .find(|x| x.addr == b_addr)
            .map(|x| (x.bytes, x.dropped.clone()))
    };
    wait_for("B delivers", 20, || {
        b_bytes(&progress).is_some_and(|(n, _)| n > 0)
    })
    .await;
    b.shutdown().await;
    wait_for("B given up on", 20, || {
        b_bytes(&progress)
            .and_then(|(_, d)| d)
            .is_some_and(|d| d.contains("reconnecting failed"))
    })
    .await;
    let before = b_bytes(&progress).unwrap().0;
    // B is back at its address, and discovery reports it.
    let b_back = Node::serve_at(tempfile::tempdir().unwrap(), b.lib.clone(), paced, b_addr).await;
    tx.send_replace(vec![(b_back.addr, None)]);
    let summary = dl.await.unwrap().unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content);
    assert_eq!(summary.peers.len(), 2, "{summary:?}");
    let b_report = summary.peers.iter().find(|p| p.addr == b_addr).unwrap();
    assert!(b_report.dropped.is_none(), "{b_report:?}");
    assert!(b_report.bytes > before, "B did not deliver after rejoining");
}

/// Regression (review): a subscribed client that goes silent is closed
/// after `subscribed_idle_timeout`, not kept forever.
#[tokio::test]
async fn a_silent_subscriber_is_closed_in_the_end() {
    let content = data(4 * CHUNK, 18);
    let config = ServerConfig {
        idle_timeout: Duration::from_millis(200),
        subscribed_idle_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let (node, manifest, _out) = partial_node_with(&content, &[], config).await;
    let conn = connect(&node).await;
    let (_, watch) = conn.have(manifest.id(), true).await.unwrap();
    let mut watch = watch.unwrap();
    let started = std::time::Instant::now();
    // Kept past the plain idle timeout, closed after the subscribed one.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while watch.changed().await.is_ok() {}
    })
    .await;
    assert!(closed.is_ok(), "the subscribed connection was never closed");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}, before the subscribed idle timeout"
    );
    assert!(conn.is_closed());
}
