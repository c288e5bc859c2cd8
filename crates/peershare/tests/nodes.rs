//! Whole nodes in one process: share, serve, download, verify.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::*;
use peershare::download::{Output, Progress};
use peershare::{DownloadError, ServerConfig, ShareProgress};
use peershare_proto::manifest::{MIN_CHUNK_SIZE, chunk_size_for};

async fn round_trip(len: usize) {
    let content = data(len, len as u64);
    let mut node = Node::start(&[("f.bin", &content)], ServerConfig::default()).await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("got.bin");
    let s = fetch(request(id_of(&content), vec![node.addr], &out))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content, "size {len}");
    assert_eq!(s.size, len as u64);
    assert_eq!(s.bytes_received, len as u64);
    assert_eq!(s.bytes_resumed, 0);
    assert_eq!(s.peers[0].bytes, len as u64);
    // Nothing left behind but the file itself.
    let left: Vec<_> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["got.bin"]);
    node.shutdown().await;
    assert_eq!(node.stats.connections_active.load(Ordering::Relaxed), 0);
}

const CHUNK: usize = MIN_CHUNK_SIZE as usize;

#[tokio::test]
async fn size_0() {
    round_trip(0).await;
}
#[tokio::test]
async fn size_1() {
    round_trip(1).await;
}
#[tokio::test]
async fn size_chunk_minus_1() {
    round_trip(CHUNK - 1).await;
}
#[tokio::test]
async fn size_chunk() {
    round_trip(CHUNK).await;
}
#[tokio::test]
async fn size_chunk_plus_1() {
    round_trip(CHUNK + 1).await;
}
#[tokio::test]
async fn size_many_chunks() {
    // Big enough for a larger canonical chunk size and a short last chunk.
    let len = 70 * 1024 * 1024 + 12_345;
    assert!(chunk_size_for(len as u64) > MIN_CHUNK_SIZE);
    round_trip(len).await;
}

#[tokio::test]
async fn saves_under_shared_name_in_directory() {
    let content = data(1000, 1);
    let node = Node::start(&[("talk.mkv", &content)], ServerConfig::default()).await;
    let out_dir = tempfile::tempdir().unwrap();
    let mut req = request(id_of(&content), vec![node.addr], out_dir.path());
    req.output = Output::Dir(out_dir.path().to_path_buf());
    let s = fetch(req).await.unwrap();
    assert_eq!(s.name, "talk.mkv");
    assert_eq!(
        std::fs::read(out_dir.path().join("talk.mkv")).unwrap(),
        content
    );
}

#[tokio::test]
async fn existing_output_is_never_replaced_without_force() {
    let content = data(5000, 2);
    let node = Node::start(&[("a", &content)], ServerConfig::default()).await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("a");
    std::fs::write(&out, b"precious").unwrap();
    let err = fetch(request(id_of(&content), vec![node.addr], &out))
        .await
        .unwrap_err();
    assert!(matches!(err, DownloadError::OutputExists(_)), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let mut req = request(id_of(&content), vec![node.addr], &out);
    req.force = true;
    fetch(req).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content);
}

#[tokio::test]
async fn unknown_file_is_not_found() {
    let node = Node::start(&[("a", b"abc")], ServerConfig::default()).await;
    let out = tempfile::tempdir().unwrap();
    let err = fetch(request(
        id_of(b"other"),
        vec![node.addr],
        &out.path().join("x"),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, DownloadError::NotFound { .. }), "{err}");
    assert!(!out.path().join("x").exists());
}

#[tokio::test]
async fn unreachable_peer_is_reported() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let out = tempfile::tempdir().unwrap();
    let err = fetch(request(id_of(b"x"), vec![port], &out.path().join("x")))
        .await
        .unwrap_err();
    assert!(matches!(err, DownloadError::AllUnreachable(_)), "{err}");
    let err = fetch(request(id_of(b"x"), vec![], &out.path().join("x")))
        .await
        .unwrap_err();
    assert!(matches!(err, DownloadError::NoPeers));
}

#[tokio::test]
async fn chunks_are_spread_over_several_peers() {
    let content = data(8 * 1024 * 1024, 3);
    // Paced, so the peer that answers second joins well before the end.
    let paced = ServerConfig {
        max_upload_rate: Some(8_000_000),
        ..ServerConfig::default()
    };
    let a = Node::start(&[("f", &content)], paced.clone()).await;
    let b = Node::start(&[("f", &content)], paced).await;
    let out = tempfile::tempdir().unwrap();
    let s = fetch(request(
        id_of(&content),
        vec![a.addr, b.addr],
        &out.path().join("f"),
    ))
    .await
    .unwrap();
    assert_eq!(std::fs::read(out.path().join("f")).unwrap(), content);
    assert_eq!(s.peers.len(), 2);
    assert!(
        s.peers.iter().all(|p| p.bytes > 0),
        "both peers served: {:?}",
        s.peers
    );
    assert_eq!(
        s.peers.iter().map(|p| p.bytes).sum::<u64>(),
        content.len() as u64
    );
}

#[tokio::test]
async fn share_after_server_start_is_served_without_restart() {
    let node = Node::start(&[], ServerConfig::default()).await;
    let content = data(3000, 4);
    let p = node.path("late");
    std::fs::write(&p, &content).unwrap();
    // A second handle, as another process would have.
    let other = peershare::Library::open(node.lib.dir()).unwrap();
    other.share(&[p], &ShareProgress::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    fetch(request(
        id_of(&content),
        vec![node.addr],
        &out.path().join("late"),
    ))
    .await
    .unwrap();
    assert_eq!(std::fs::read(out.path().join("late")).unwrap(), content);
}

#[tokio::test]
async fn lying_peer_is_dropped_and_honest_peer_completes() {
    // Larger than one peer's request window (64 chunks of 64 KiB), so the
    // peer that answers second still finds chunks to ask for; the honest
    // one is paced so the download lasts while the liar joins.
    let content = data(12 * 1024 * 1024, 5);
    let paced = ServerConfig {
        max_upload_rate: Some(8_000_000),
        ..ServerConfig::default()
    };
    let honest = Node::start(&[("f", &content)], paced).await;
    let liar = Node::start(&[("f", &content)], ServerConfig::default()).await;
    tamper_keeping_mtime(&liar.path("f"), |bad| {
        bad.iter_mut().for_each(|b| *b ^= 0x5a)
    });
    let out = tempfile::tempdir().unwrap();
    let s = fetch(request(
        id_of(&content),
        vec![liar.addr, honest.addr],
        &out.path().join("f"),
    ))
    .await
    .unwrap();
    assert_eq!(std::fs::read(out.path().join("f")).unwrap(), content);
    let l = s.peers.iter().find(|p| p.addr == liar.addr).unwrap();
    assert_eq!(l.bytes, 0, "no byte from the liar counted");
    assert!(l.corrupt >= 1);
    assert!(
        l.dropped.as_deref().unwrap_or("").contains("corrupt"),
        "{l:?}"
    );
}

#[tokio::test]
async fn only_lying_peers_never_produce_a_file() {
    let content = data(300_000, 6);
    let liar = Node::start(&[("f", &content)], ServerConfig::default()).await;
    tamper_keeping_mtime(&liar.path("f"), |bad| {
        bad[100] ^= 1;
        bad[200_000] ^= 1;
    });
    let out = tempfile::tempdir().unwrap();
    let err = fetch(request(
        id_of(&content),
        vec![liar.addr],
        &out.path().join("f"),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, DownloadError::AllSourcesCorrupt), "{err}");
    assert!(!out.path().join("f").exists());
}

#[tokio::test]
async fn peer_dying_mid_download_hands_its_chunks_to_the_other() {
    let content = data(8 * 1024 * 1024, 7);
    let slow = ServerConfig {
        max_upload_rate: Some(2_000_000),
        ..ServerConfig::default()
    };
    let mut a = Node::start(&[("f", &content)], slow.clone()).await;
    let b = Node::start(&[("f", &content)], slow).await;
    let out = tempfile::tempdir().unwrap();
    let progress = Arc::new(Progress::default());
    let req = request(id_of(&content), vec![a.addr, b.addr], &out.path().join("f"));
    let dl = tokio::spawn(fetch_with(req, progress.clone()));
    wait_for("some progress", 30, || {
        progress.verified.load(Ordering::Relaxed) > 512 * 1024
    })
    .await;
    a.shutdown().await;
    let s = dl.await.unwrap().unwrap();
    assert_eq!(std::fs::read(out.path().join("f")).unwrap(), content);
    let pa = s.peers.iter().find(|p| p.addr == a.addr).unwrap();
    assert!(
        pa.dropped.is_some(),
        "the dead peer is reported dropped: {pa:?}"
    );
    let pb = s.peers.iter().find(|p| p.addr == b.addr).unwrap();
    assert!(pb.bytes > 0);
}

#[tokio::test]
async fn interrupted_download_resumes_without_refetching_verified_chunks() {
    let content = data(6 * 1024 * 1024, 8);
    let slow = ServerConfig {
        max_upload_rate: Some(3_000_000),
        ..ServerConfig::default()
    };
    let mut a = Node::start(&[("f", &content)], slow).await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("f");
    let (part, state) = peershare::partial::part_paths(&out);
    let progress = Arc::new(Progress::default());
    let mut req = request(id_of(&content), vec![a.addr], &out);
    req.config.checkpoint_interval = std::time::Duration::from_millis(50);
    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel::<()>();
    let dl = tokio::spawn(peershare::download(req.clone(), progress.clone(), async {
        let _ = cancel_rx.await;
    }));
    wait_for("a checkpoint", 30, || state.exists()).await;
    cancel_tx.send(()).unwrap();
    let err = dl.await.unwrap().unwrap_err();
    assert!(matches!(err, DownloadError::Cancelled), "{err}");
    assert!(
        part.exists() && !out.exists(),
        "partial data kept, no final file"
    );
    a.shutdown().await;

    let fast = Node::start(&[("f", &content)], ServerConfig::default()).await;
    req.peers = vec![fast.addr];
    let s = fetch(req).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content);
    assert!(s.bytes_resumed > 0, "{s:?}");
    assert!(s.bytes_received < content.len() as u64, "{s:?}");
    assert_eq!(s.bytes_received + s.bytes_resumed, content.len() as u64);
    assert!(!part.exists() && !state.exists());
}

#[tokio::test]
async fn damaged_state_file_restarts_cleanly() {
    let content = data(500_000, 9);
    let node = Node::start(&[("f", &content)], ServerConfig::default()).await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("f");
    let (part, state) = peershare::partial::part_paths(&out);
    // A part file of the right size full of garbage, and a state file that
    // claims everything but fails its checksum: nothing may be trusted.
    std::fs::write(&part, vec![0xEE; content.len()]).unwrap();
    std::fs::write(&state, b"PSRESUME garbage").unwrap();
    let s = fetch(request(id_of(&content), vec![node.addr], &out))
        .await
        .unwrap();
    assert_eq!(s.bytes_resumed, 0);
    assert_eq!(std::fs::read(&out).unwrap(), content);
}

#[tokio::test]
async fn slow_peer_that_keeps_sending_is_not_mistaken_for_dead() {
    // The whole download takes several times the stall timeout, with many
    // requests queued, but bytes keep arriving: it must succeed.
    let content = data(3 * 1024 * 1024, 10);
    let slow = ServerConfig {
        max_upload_rate: Some(1_000_000),
        ..ServerConfig::default()
    };
    let node = Node::start(&[("f", &content)], slow).await;
    let out = tempfile::tempdir().unwrap();
    let mut req = request(id_of(&content), vec![node.addr], &out.path().join("f"));
    req.config.client.stall_timeout = std::time::Duration::from_millis(700);
    req.config.client.progress_window = std::time::Duration::from_millis(700);
    let started = std::time::Instant::now();
    fetch(req).await.unwrap();
    assert!(started.elapsed() > std::time::Duration::from_millis(1400));
    assert_eq!(std::fs::read(out.path().join("f")).unwrap(), content);
}

#[tokio::test]
async fn stalled_peer_is_detected_and_reported() {
    // A peer that completes the handshake and serves the manifest, then
    // never answers a chunk request.
    let content = data(200_000, 11);
    let (addr, chunk_requests) = fake_peer(content.clone(), OnChunk::Ignore).await;
    let out = tempfile::tempdir().unwrap();
    let mut req = request(id_of(&content), vec![addr], &out.path().join("f"));
    req.config.client.stall_timeout = std::time::Duration::from_millis(300);
    // Reconnections reach a listener that never completes a handshake.
    req.config.client.connect_timeout = std::time::Duration::from_millis(300);
    let err = fetch(req).await.unwrap_err();
    assert!(
        matches!(err, DownloadError::AllSourcesFailed(ref r) if r.iter().any(|m| m.contains("went silent"))),
        "{err}"
    );
    assert!(!out.path().join("f").exists());
    assert!(
        chunk_requests.load(Ordering::Relaxed) > 0,
        "chunk requests reached the stalled peer"
    );
}

#[tokio::test]
async fn second_download_to_the_same_output_is_refused_while_the_first_runs() {
    let content = data(4 * 1024 * 1024, 12);
    let slow = ServerConfig {
        max_upload_rate: Some(2_000_000),
        ..ServerConfig::default()
    };
    let node = Node::start(&[("f", &content)], slow).await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("f");
    let progress = Arc::new(Progress::default());
    let first = tokio::spawn(fetch_with(
        request(id_of(&content), vec![node.addr], &out),
        progress.clone(),
    ));
    wait_for("the first download to start", 30, || {
        progress.verified.load(Ordering::Relaxed) > 0
    })
    .await;
    let err = fetch(request(id_of(&content), vec![node.addr], &out))
        .await
        .unwrap_err();
    assert!(matches!(err, DownloadError::InProgress(_)), "{err}");
    first.await.unwrap().unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content);
}

#[tokio::test]
async fn download_survives_its_only_peer_restarting() {
    let content = data(6 * 1024 * 1024, 13);
    let slow = ServerConfig {
        max_upload_rate: Some(3_000_000),
        ..ServerConfig::default()
    };
    let mut a = Node::start(&[("f", &content)], slow.clone()).await;
    let out = tempfile::tempdir().unwrap();
    let progress = Arc::new(Progress::default());
    let dl = tokio::spawn(fetch_with(
        request(id_of(&content), vec![a.addr], &out.path().join("f")),
        progress.clone(),
    ));
    wait_for("some progress", 30, || {
        progress.verified.load(Ordering::Relaxed) > 512 * 1024
    })
    .await;
    a.shutdown().await;
    // The same node comes back on the same address.
    let listener = tokio::net::TcpListener::bind(a.addr).await.unwrap();
    let server = peershare::Server::new(a.lib.clone(), a.tls.clone(), a.addr.port(), slow);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let back = tokio::spawn(server.run(listener, async {
        let _ = stopped.await;
    }));
    let s = dl.await.unwrap().unwrap();
    assert_eq!(std::fs::read(out.path().join("f")).unwrap(), content);
    assert_eq!(s.peers.len(), 1);
    assert_eq!(
        s.peers[0].dropped, None,
        "reconnected, not dropped: {:?}",
        s.peers[0]
    );
    assert_eq!(s.peers[0].bytes, content.len() as u64);
    stop.send(()).unwrap();
    back.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_peer_that_never_comes_back_is_given_up_after_the_reconnections() {
    let content = data(6 * 1024 * 1024, 14);
    let slow = ServerConfig {
        max_upload_rate: Some(3_000_000),
        ..ServerConfig::default()
    };
    let mut a = Node::start(&[("f", &content)], slow).await;
    let out = tempfile::tempdir().unwrap();
    let progress = Arc::new(Progress::default());
    let dl = tokio::spawn(fetch_with(
        request(id_of(&content), vec![a.addr], &out.path().join("f")),
        progress.clone(),
    ));
    wait_for("some progress", 30, || {
        progress.verified.load(Ordering::Relaxed) > 512 * 1024
    })
    .await;
    a.shutdown().await;
    let err = dl.await.unwrap().unwrap_err();
    assert!(
        matches!(err, DownloadError::AllSourcesFailed(ref r) if r.iter().any(|m| m.contains("reconnecting failed"))),
        "{err}"
    );
    // What was verified is kept for a later resume.
    let (part, state) = peershare::partial::part_paths(&out.path().join("f"));
    assert!(part.exists() && state.exists());
}

/// Regression (review finding): a state file left from an earlier run made
/// a later run trust chunks of a part file that had been started over, and
/// `get` saved a corrupt file with success.
#[tokio::test]
async fn a_stale_state_file_never_vouches_for_a_restarted_part_file() {
    let content = data(6 * 1024 * 1024, 15);
    let slow = ServerConfig {
        max_upload_rate: Some(3_000_000),
        ..ServerConfig::default()
    };
    let node = Node::start(&[("f", &content)], slow).await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("f");
    let (part, state) = peershare::partial::part_paths(&out);
    let cancelled_run = |checkpoint: std::time::Duration| {
        let mut req = request(id_of(&content), vec![node.addr], &out);
        req.config.checkpoint_interval = checkpoint;
        let progress = Arc::new(Progress::default());
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(peershare::download(req, progress.clone(), async {
            let _ = cancelled.await;
        }));
        (progress, cancel, run)
    };
    // Run 1 records verified chunks, then stops.
    let (_, cancel, run) = cancelled_run(std::time::Duration::from_millis(50));
    wait_for("a checkpoint", 30, || state.exists()).await;
    cancel.send(()).unwrap();
    assert!(matches!(run.await.unwrap(), Err(DownloadError::Cancelled)));
    // The user deletes the part file; run 2 starts over and dies before
    // any checkpoint of its own.
    std::fs::remove_file(&part).unwrap();
    let (progress, cancel, run) = cancelled_run(std::time::Duration::from_secs(3600));
    wait_for("run 2 to receive data", 30, || {
        progress.received.load(Ordering::Relaxed) > 0
    })
    .await;
    assert!(!state.exists(), "starting over removed the old state");
    cancel.send(()).unwrap();
    let _ = run.await.unwrap();
    // Run 3 must not trust run 1's record of the new part file.
    let s = fetch(request(id_of(&content), vec![node.addr], &out))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content);
    assert_eq!(s.bytes_resumed + s.bytes_received, content.len() as u64);
}

/// Regression (review finding): the upload limiter held back whole chunks,
/// so a chunk slower than the client's stall timeout looked like a dead
/// peer. It must pace bytes instead.
#[tokio::test]
async fn a_slow_upload_limit_never_looks_like_a_stall() {
    let content = data(200_000, 16);
    let slow = ServerConfig {
        // One 64 KiB chunk takes 1.3 s at this rate.
        max_upload_rate: Some(50_000),
        ..ServerConfig::default()
    };
    let node = Node::start(&[("f", &content)], slow).await;
    let out = tempfile::tempdir().unwrap();
    let mut req = request(id_of(&content), vec![node.addr], &out.path().join("f"));
    req.config.client.stall_timeout = std::time::Duration::from_millis(500);
    req.config.client.progress_window = std::time::Duration::from_millis(500);
    let s = fetch(req).await.unwrap();
    assert_eq!(std::fs::read(out.path().join("f")).unwrap(), content);
    assert_eq!(s.peers[0].dropped, None, "{:?}", s.peers[0]);
}

/// What a fake peer does with a chunk request.
#[derive(Clone, Copy)]
enum OnChunk {
    /// Never answers.
    Ignore,
    /// Starts the answer, then sends a byte every 100 ms.
    Trickle,
}

/// A fake peer: completes the handshake and serves the manifest of
/// `content` on every connection; chunk requests get `on_chunk`. Returns
/// its address and a count of the chunk requests it received.
async fn fake_peer(
    content: Vec<u8>,
    on_chunk: OnChunk,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use peershare_proto::wire::{
        Hello, MAX_REQUEST_FRAME_LEN, Message, PROTOCOL_VERSION, chunk_header,
    };
    use tokio::io::AsyncWriteExt;
    let manifest = peershare_proto::Manifest::from_bytes(&content);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let chunk_requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = chunk_requests.clone();
    let tls = peershare::Tls::ephemeral();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let manifest = manifest.clone();
            let counted = counted.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok(secured) = tls.accept(s).await else {
                    return;
                };
                let mut w = secured.writer;
                let mut reader =
                    peershare::conn::FrameReader::new(secured.reader, MAX_REQUEST_FRAME_LEN);
                while let Ok(Some(m)) = reader.read().await {
                    let answer = match m {
                        Message::Hello(_) => Message::Hello(Hello {
                            version: PROTOCOL_VERSION,
                            node_id: tls.node_id(),
                            listen_port: 0,
                            capabilities: 0,
                        }),
                        Message::GetManifest { req_id, .. } => Message::Manifest {
                            req_id,
                            bytes: manifest.encode().into(),
                        },
                        Message::GetChunk { req_id, index, .. } => {
                            counted.fetch_add(1, Ordering::Relaxed);
                            if let OnChunk::Trickle = on_chunk {
                                let len = manifest.chunk_len(index).unwrap();
                                if w.write_all(&chunk_header(req_id, index, len))
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                                loop {
                                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                                    if w.write_all(&[0]).await.is_err() || w.flush().await.is_err()
                                    {
                                        return;
                                    }
                                }
                            }
                            continue;
                        }
                        _ => continue,
                    };
                    if w.write_all(&answer.to_frame().unwrap()).await.is_err()
                        || w.flush().await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, chunk_requests)
}

/// A peer that accepts connections and never says a word.
async fn silent_peer() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

/// Regression (review finding): `get` waited for every peer's answer
/// before starting, so one silent peer delayed it by the connect timeout.
#[tokio::test]
async fn a_silent_peer_does_not_delay_the_download() {
    let content = data(1024 * 1024, 17);
    let good = Node::start(&[("f", &content)], ServerConfig::default()).await;
    let (silent, _task) = silent_peer().await;
    let out = tempfile::tempdir().unwrap();
    let mut req = request(
        id_of(&content),
        vec![silent, good.addr],
        &out.path().join("f"),
    );
    req.config.client.connect_timeout = std::time::Duration::from_secs(30);
    let started = std::time::Instant::now();
    let s = fetch(req).await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(std::fs::read(out.path().join("f")).unwrap(), content);
    assert_eq!(
        s.peers.len(),
        1,
        "the silent peer never joined: {:?}",
        s.peers
    );
}

/// Regression (review finding): cancelling (Ctrl-C) while peers were being
/// contacted was ignored until every one had answered.
#[tokio::test]
async fn cancel_works_while_peers_are_being_contacted() {
    let (silent, _task) = silent_peer().await;
    let out = tempfile::tempdir().unwrap();
    let mut req = request(id_of(b"x"), vec![silent], &out.path().join("f"));
    req.config.client.connect_timeout = std::time::Duration::from_secs(60);
    let started = std::time::Instant::now();
    // Already cancelled: the download must stop at once.
    let err = peershare::download(req, Arc::default(), async {})
        .await
        .unwrap_err();
    assert!(matches!(err, DownloadError::Cancelled), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// Regression (review finding): a peer trickling one byte now and then was
/// never judged dead, holding its chunks forever.
#[tokio::test]
async fn a_trickling_peers_chunks_go_elsewhere() {
    let content = data(1024 * 1024, 18);
    let good = Node::start(
        &[("f", &content)],
        ServerConfig {
            max_upload_rate: Some(400_000),
            ..ServerConfig::default()
        },
    )
    .await;
    let (trickler, _) = fake_peer(content.clone(), OnChunk::Trickle).await;
    let out = tempfile::tempdir().unwrap();
    let mut req = request(
        id_of(&content),
        vec![trickler, good.addr],
        &out.path().join("f"),
    );
    req.config.client.stall_timeout = std::time::Duration::from_millis(400);
    req.config.client.progress_window = std::time::Duration::from_millis(400);
    req.config.client.connect_timeout = std::time::Duration::from_millis(400);
    // Without the progress watchdog the trickler's chunks never arrive and
    // this never completes. (The trickler answers handshakes, so it is
    // reconnected and may still be taking part at the end.)
    let started = std::time::Instant::now();
    let s = fetch(req).await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(std::fs::read(out.path().join("f")).unwrap(), content);
    let t = s
        .peers
        .iter()
        .find(|p| p.addr == trickler)
        .expect("the trickler took part");
    assert_eq!(t.bytes, 0, "nothing counted from the trickler");
}

#[tokio::test]
async fn a_catalog_of_many_pages_is_listed_whole_and_withdrawn_files_are_skipped() {
    let node = Node::start(&[], ServerConfig::default()).await;
    let folder = node.path("many");
    std::fs::create_dir(&folder).unwrap();
    let n = 7000;
    for i in 0..n {
        std::fs::write(
            folder.join(format!("file-with-a-longish-name-{i:05}.txt")),
            i.to_string(),
        )
        .unwrap();
    }
    node.lib
        .share(std::slice::from_ref(&folder), &ShareProgress::default())
        .unwrap();
    // One file changed on disk since sharing: withdrawn.
    std::fs::write(
        folder.join("file-with-a-longish-name-00007.txt"),
        "changed!",
    )
    .unwrap();
    let conn = peershare::PeerConn::connect(
        node.addr,
        &peershare::Tls::ephemeral(),
        None,
        Default::default(),
    )
    .await
    .unwrap();
    let catalog = conn.catalog().await.unwrap();
    assert_eq!(catalog.len(), n - 1);
    let names: std::collections::HashSet<_> = catalog.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names.len(), n - 1);
    assert!(!names.contains("many/file-with-a-longish-name-00007.txt"));
    // More than one page was needed.
    let page_bytes: usize = catalog
        .iter()
        .map(peershare_proto::wire::catalog_entry_len)
        .sum();
    assert!(page_bytes > peershare_proto::wire::CATALOG_PAGE_BUDGET);
}
