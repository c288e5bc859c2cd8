//! A download always ends: a peer that trickles its manifest, a peer that
//! is always busy, and peers that vanish cannot hold it forever, and busy
//! peers are asked again rather than given up at once. (A dead network
//! path and its return: `tests/netns/link.sh`; many downloaders against a
//! busy `serve`: the CLI's `tests/liveness.rs`.)

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use peershare::download::Progress;
use peershare::{DownloadError, ServerConfig};
use peershare_proto::wire::{Hello, MAX_REQUEST_FRAME_LEN, Message, PROTOCOL_VERSION};
use tokio::io::AsyncWriteExt;

/// A peer that completes the handshake, then answers `GetManifest` with a
/// frame declaring 1 MiB and sends it at about 100 bytes a second: above
/// the old floor of 4 KiB a minute, so it was never judged dead.
async fn manifest_trickler() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = peershare::Tls::ephemeral();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok(secured) = tls.accept(s).await else {
                    return;
                };
                let mut w = secured.writer;
                let mut reader =
                    peershare::conn::FrameReader::new(secured.reader, MAX_REQUEST_FRAME_LEN);
                while let Ok(Some(m)) = reader.read().await {
                    match m {
                        Message::Hello(_) => {
                            let hello = Message::Hello(Hello {
                                version: PROTOCOL_VERSION,
                                node_id: tls.node_id(),
                                listen_port: 0,
                                capabilities: 0,
                            });
                            let _ = w.write_all(&hello.to_frame().unwrap()).await;
                            let _ = w.flush().await;
                        }
                        Message::GetManifest { req_id, .. } => {
                            let frame = Message::Manifest {
                                req_id,
                                bytes: vec![0u8; 1 << 20].into(),
                            }
                            .to_frame()
                            .unwrap();
                            for piece in frame.chunks(10) {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                if w.write_all(piece).await.is_err() || w.flush().await.is_err() {
                                    return;
                                }
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    addr
}

/// Regression (issue 10.6): while a join was pending, a download whose
/// peers were all gone was not "stuck", so a peer trickling its manifest
/// held it for as long as the manifest took (34 hours for 8 MiB).
#[tokio::test]
async fn a_trickled_manifest_cannot_keep_a_download_from_ending() {
    let content = data(6 * 1024 * 1024, 401);
    let slow = ServerConfig {
        max_upload_rate: Some(2_000_000),
        ..ServerConfig::default()
    };
    let mut real = Node::start(&[("f", &content)], slow).await;
    let trickler = manifest_trickler().await;
    let out = tempfile::tempdir().unwrap();
    let mut req = request(
        id_of(&content),
        vec![real.addr, trickler],
        &out.path().join("f"),
    );
    req.config.join_timeout = Duration::from_secs(3);
    let progress = Arc::new(Progress::default());
    let dl = tokio::spawn(fetch_with(req, progress.clone()));
    wait_for("some progress", 30, || {
        progress.verified.load(Ordering::Relaxed) > 0
    })
    .await;
    real.shutdown().await;
    let stopped = Instant::now();
    let err = dl.await.unwrap().unwrap_err();
    assert!(
        stopped.elapsed() < Duration::from_secs(20),
        "ended {:?} after its real peer went",
        stopped.elapsed()
    );
    assert!(matches!(err, DownloadError::AllSourcesFailed(_)), "{err}");
    assert!(
        err.to_string().contains("did not answer within 3 s"),
        "{err}"
    );
}

/// Whatever joins or reconnections are pending, a download that receives
/// nothing for `progress_timeout` ends, saying so.
#[tokio::test]
async fn no_data_for_the_progress_timeout_ends_the_download() {
    let content = data(6 * 1024 * 1024, 402);
    let slow = ServerConfig {
        max_upload_rate: Some(2_000_000),
        ..ServerConfig::default()
    };
    let mut real = Node::start(&[("f", &content)], slow).await;
    // Always busy: it is asked again and again, a join always pending.
    let busy = Node::start(
        &[("f", &content)],
        ServerConfig {
            max_connections_per_ip: 0,
            ..ServerConfig::default()
        },
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let mut req = request(
        id_of(&content),
        vec![real.addr, busy.addr],
        &out.path().join("f"),
    );
    req.config.progress_timeout = Duration::from_secs(4);
    let progress = Arc::new(Progress::default());
    let dl = tokio::spawn(fetch_with(req, progress.clone()));
    wait_for("some progress", 30, || {
        progress.verified.load(Ordering::Relaxed) > 0
    })
    .await;
    real.shutdown().await;
    let err = dl.await.unwrap().unwrap_err();
    assert!(
        err.to_string()
            .contains("no peer sent any of the file for 4 s"),
        "{err}"
    );
    let (part, state) = peershare::partial::part_paths(&out.path().join("f"));
    assert!(part.exists() && state.exists(), "progress kept to resume");
}

/// A peer that refuses as busy is asked again, with a backoff, for
/// `retry_busy_for`; then it counts as unreachable (the CLI's status 3).
#[tokio::test]
async fn a_peer_busy_for_too_long_is_unreachable() {
    let content = data(100_000, 403);
    let busy = Node::start(
        &[("f", &content)],
        ServerConfig {
            max_connections_per_ip: 0,
            ..ServerConfig::default()
        },
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let mut req = request(id_of(&content), vec![busy.addr], &out.path().join("f"));
    req.config.retry_busy_for = Duration::from_secs(3);
    let started = Instant::now();
    let err = fetch(req).await.unwrap_err();
    let DownloadError::AllUnreachable(errs) = &err else {
        panic!("{err}");
    };
    assert!(errs[0].is_busy(), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(3), "retried first");
    // Asked once at once, then after about 1 and 2 s (each ± a quarter).
    let tries = busy.stats.refused_busy.load(Ordering::Relaxed);
    assert!((3..=5).contains(&tries), "{tries} tries");
}
