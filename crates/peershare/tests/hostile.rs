//! A misbehaving client loses its own connection and nothing else. The
//! clients here complete a real TLS handshake (with a throwaway key) and
//! then misbehave inside it, except where the TLS layer itself is abused.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use peershare::{ServerConfig, Tls};
use peershare_proto::wire::{
    ErrorCode, Hello, Holding, MAX_FRAME_LEN, Message, PROTOCOL_VERSION, decode_frame,
};
use peershare_proto::{FileId, NodeId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Stream = tokio_rustls::client::TlsStream<TcpStream>;

fn hello_as(node_id: NodeId, version: u16) -> BytesMut {
    Message::Hello(Hello {
        version,
        node_id,
        listen_port: 0,
        capabilities: 0,
    })
    .to_frame()
    .unwrap()
}

/// A TLS connection to `addr` (no `Hello` yet) and the node it proves.
async fn tls_connect(addr: std::net::SocketAddr) -> (Stream, NodeId) {
    let tls = Tls::ephemeral();
    let tcp = TcpStream::connect(addr).await.unwrap();
    (tls.client_stream(tcp).await.unwrap(), tls.node_id())
}

/// A TLS connection whose `Hello` (of `version`) is sent.
async fn hello_sent(addr: std::net::SocketAddr, version: u16) -> Stream {
    let (mut s, me) = tls_connect(addr).await;
    s.write_all(&hello_as(me, version)).await.unwrap();
    s
}

/// Handshakes on a new connection and waits for the server's whole hello.
async fn handshaken(addr: std::net::SocketAddr) -> Stream {
    let mut s = hello_sent(addr, PROTOCOL_VERSION).await;
    let mut b = vec![0u8; hello_as(NodeId([0; 32]), PROTOCOL_VERSION).len()];
    s.read_exact(&mut b).await.unwrap();
    s
}

/// Reads frames until the server closes; returns them. Fails after 10 s.
async fn read_until_closed<S: AsyncRead + Unpin>(s: &mut S) -> Vec<Message> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let deadline = Duration::from_secs(10);
    loop {
        while let Some(m) =
            decode_frame(&mut buf, MAX_FRAME_LEN).expect("server sends valid frames")
        {
            out.push(m);
        }
        let n = tokio::time::timeout(deadline, s.read_buf(&mut buf))
            .await
            .expect("server closes the connection")
            .unwrap_or(0);
        if n == 0 {
            return out;
        }
    }
}

/// An honest download still works.
async fn honest_download_works(node: &Node, content: &[u8]) {
    let out = tempfile::tempdir().unwrap();
    fetch(request(
        id_of(content),
        vec![node.addr],
        &out.path().join("f"),
    ))
    .await
    .expect("honest client is served");
    assert_eq!(std::fs::read(out.path().join("f")).unwrap(), content);
}

#[tokio::test]
async fn garbage_closes_only_that_connection() {
    let content = data(200_000, 1);
    let node = Node::start(&[("f", &content)], ServerConfig::default()).await;
    // Garbage instead of a TLS handshake: closed, nothing said.
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    s.write_all(&data(10_000, 2)).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("server closes the connection");
    assert_eq!(node.stats.tls_failed.load(Ordering::Relaxed), 1);
    // Garbage instead of a handshake, inside TLS.
    let (mut s, _) = tls_connect(node.addr).await;
    s.write_all(&data(10_000, 2)).await.unwrap();
    let got = read_until_closed(&mut s).await;
    assert!(
        got.iter().all(|m| matches!(
            m,
            Message::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        )),
        "{got:?}"
    );
    // Garbage after a valid handshake, while an honest client holds a connection.
    let mut s = hello_sent(node.addr, PROTOCOL_VERSION).await;
    s.write_all(&[0, 0, 0, 9, 0xEE, 1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .unwrap();
    let got = read_until_closed(&mut s).await;
    assert!(matches!(got.first(), Some(Message::Hello(_))), "{got:?}");
    assert!(
        matches!(
            got.last(),
            Some(Message::Error {
                req_id: 0,
                code: ErrorCode::BadRequest,
                ..
            })
        ),
        "{got:?}"
    );
    honest_download_works(&node, &content).await;
    assert!(node.stats.malformed.load(Ordering::Relaxed) >= 2);
}

#[tokio::test]
async fn oversized_length_prefix_is_refused_before_buffering() {
    let content = data(100_000, 3);
    let node = Node::start(&[("f", &content)], ServerConfig::default()).await;
    for first in [true, false] {
        let (mut s, me) = tls_connect(node.addr).await;
        if !first {
            s.write_all(&hello_as(me, PROTOCOL_VERSION)).await.unwrap();
        }
        // Declares a 4 GiB frame, then trickles a byte at a time: the
        // server must not wait for (or reserve) the rest.
        s.write_all(&[0xFF, 0xFF, 0xFF, 0xFF]).await.unwrap();
        let started = Instant::now();
        let trickle = async {
            for b in 0..50u8 {
                if s.write_all(&[b]).await.is_err() || s.flush().await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), trickle).await;
        let got = read_until_closed(&mut s).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(got.last(), Some(Message::Error { code: ErrorCode::BadRequest, message, .. }) if message.contains("exceeds")),
            "{got:?}"
        );
    }
    honest_download_works(&node, &content).await;
}

#[tokio::test]
async fn wrong_version_gets_a_clear_refusal() {
    let node = Node::start(&[], ServerConfig::default()).await;
    let mut s = hello_sent(node.addr, PROTOCOL_VERSION + 1).await;
    let got = read_until_closed(&mut s).await;
    match got.as_slice() {
        [
            Message::Error {
                req_id: 0,
                code: ErrorCode::UnsupportedVersion,
                message,
            },
        ] => {
            assert!(message.contains("version 1"), "{message}");
        }
        other => panic!("expected one version refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn silent_connection_is_closed_after_the_handshake_timeout() {
    let config = ServerConfig {
        handshake_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let content = data(1000, 4);
    let node = Node::start(&[("f", &content)], config).await;
    // Silent before TLS, and silent after TLS without a Hello: both are
    // closed once the handshake timeout has passed.
    let mut idle = TcpStream::connect(node.addr).await.unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut idle).await;
    assert!(got.is_empty());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let started = Instant::now();
    let (mut quiet, _) = tls_connect(node.addr).await;
    let got = read_until_closed(&mut quiet).await;
    assert!(got.is_empty());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    honest_download_works(&node, &content).await;
}

#[tokio::test]
async fn connection_limit_refuses_with_busy_and_frees_slots() {
    let config = ServerConfig {
        max_connections: 2,
        ..ServerConfig::default()
    };
    let content = data(1000, 5);
    let node = Node::start(&[("f", &content)], config).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        // The server's whole hello: the slot is taken.
        held.push(handshaken(node.addr).await);
    }
    let (mut third, _) = tls_connect(node.addr).await;
    let got = read_until_closed(&mut third).await;
    assert!(
        matches!(
            got.as_slice(),
            [Message::Error {
                code: ErrorCode::Busy,
                ..
            }]
        ),
        "{got:?}"
    );
    assert_eq!(node.stats.refused_busy.load(Ordering::Relaxed), 1);
    drop(held);
    wait_for("slots to free", 10, || {
        node.stats.connections_active.load(Ordering::Relaxed) == 0
    })
    .await;
    honest_download_works(&node, &content).await;
}

#[tokio::test]
async fn request_flood_without_reading_does_not_starve_others() {
    let content = data(4 * 1024 * 1024, 6);
    let node = Node::start(&[("f", &content)], ServerConfig::default()).await;
    let id = id_of(&content);
    let mut flood = hello_sent(node.addr, PROTOCOL_VERSION).await;
    // Requests for whole chunks, never reading an answer. Writing stops
    // when the server stops reading (back-pressure): bounded in time here.
    let mut frames = BytesMut::new();
    for i in 0..20_000u32 {
        Message::GetChunk {
            req_id: i + 1,
            id,
            index: i % 64,
        }
        .encode(&mut frames)
        .unwrap();
    }
    let writer = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(3), flood.write_all(&frames)).await;
        flood
    });
    honest_download_works(&node, &content).await;
    // The flooder is held by back-pressure with a bounded number of answers
    // prepared, not served in full.
    let served = node.stats.chunks_served.load(Ordering::Relaxed);
    assert!(
        served < 20_000,
        "flooder was not throttled by back-pressure: {served}"
    );
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn shutdown_ends_every_connection() {
    let mut node = Node::start(&[("f", b"abc")], ServerConfig::default()).await;
    let mut conns = Vec::new();
    for _ in 0..5 {
        conns.push(handshaken(node.addr).await);
    }
    wait_for("connections", 10, || {
        node.stats.connections_active.load(Ordering::Relaxed) == 5
    })
    .await;
    node.shutdown().await;
    assert_eq!(node.stats.connections_active.load(Ordering::Relaxed), 0);
    for mut c in conns {
        // Every client sees its connection end.
        read_until_closed(&mut c).await;
    }
    assert!(
        TcpStream::connect(node.addr).await.is_err(),
        "listener closed"
    );
}

/// Regression (review finding): a peer whose catalog never ends made a
/// client allocate gigabytes. The client keeps a bounded prefix.
#[tokio::test]
async fn an_endless_catalog_is_cut_at_the_limit() {
    use peershare::client::{ClientConfig, PeerConn};
    use peershare_proto::FileId;
    use peershare_proto::wire::{CatalogEntry, MAX_CATALOG_ENTRIES, MAX_REQUEST_FRAME_LEN};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let evil = Tls::ephemeral();
    let evil_id = evil.node_id();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let secured = evil.accept(s).await.unwrap();
        let mut w = secured.writer;
        let mut reader = peershare::conn::FrameReader::new(secured.reader, MAX_REQUEST_FRAME_LEN);
        let mut n: u64 = 0;
        while let Ok(Some(m)) = reader.read().await {
            let answer = match m {
                Message::Hello(_) => hello_as(evil_id, PROTOCOL_VERSION),
                Message::GetCatalog { req_id, cursor } => {
                    let entries = (0..120_000)
                        .map(|_| {
                            n += 1;
                            let mut id = [0u8; 32];
                            id[..8].copy_from_slice(&n.to_be_bytes());
                            CatalogEntry {
                                id: FileId(id),
                                size: 1,
                                flags: 0,
                                name: format!("f{n}"),
                            }
                        })
                        .collect();
                    Message::Catalog {
                        req_id,
                        revision: 0,
                        next: Some(cursor + 1),
                        entries,
                    }
                    .to_frame()
                    .unwrap()
                }
                _ => continue,
            };
            if w.write_all(&answer).await.is_err() || w.flush().await.is_err() {
                return;
            }
        }
    });
    let conn = PeerConn::connect(addr, &Tls::ephemeral(), None, ClientConfig::default())
        .await
        .unwrap();
    let catalog = conn.catalog().await.unwrap();
    assert_eq!(catalog.len(), MAX_CATALOG_ENTRIES);
}

/// A TLS connection to `to` from the loopback address `from` (any of 127/8).
async fn connect_from(from: &str, to: std::net::SocketAddr) -> (Stream, NodeId) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let tcp = sock.connect(to).await.unwrap();
    let tls = Tls::ephemeral();
    (tls.client_stream(tcp).await.unwrap(), tls.node_id())
}

/// Handshakes on `s` and waits for the server's whole hello.
async fn handshake(s: &mut Stream, me: NodeId) {
    s.write_all(&hello_as(me, PROTOCOL_VERSION)).await.unwrap();
    let mut b = vec![0u8; hello_as(me, PROTOCOL_VERSION).len()];
    s.read_exact(&mut b).await.unwrap();
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let config = ServerConfig {
        max_connections_per_ip: 2,
        ..ServerConfig::default()
    };
    let content = data(1000, 9);
    let node = Node::start(&[("f", &content)], config).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let (mut s, me) = connect_from("127.0.0.1", node.addr).await;
        handshake(&mut s, me).await;
        held.push(s);
    }
    // A third from the same address is refused, saying why.
    let (mut third, _) = connect_from("127.0.0.1", node.addr).await;
    let got = read_until_closed(&mut third).await;
    assert!(
        matches!(
            got.as_slice(),
            [Message::Error { code: ErrorCode::Busy, message, .. }] if message.contains("from your address")
        ),
        "{got:?}"
    );
    // Another address is served meanwhile.
    let (mut other, me) = connect_from("127.0.0.2", node.addr).await;
    handshake(&mut other, me).await;
    // Slots come back as connections end.
    drop(held);
    wait_for("the address's slots to free", 10, || {
        node.stats.connections_active.load(Ordering::Relaxed) == 1
    })
    .await;
    honest_download_works(&node, &content).await;
    assert_eq!(node.stats.refused_busy.load(Ordering::Relaxed), 1);
}

/// A client that sends requests without reading answers gets exactly
/// `max_requests_in_flight` of them queued (plus the one being written and
/// the one read but waiting for room); the rest stay unread in its socket.
#[tokio::test]
async fn a_connection_has_at_most_max_requests_in_flight_read() {
    // Chunks of 128 KiB, more than the limiter's initial burst (64 KiB):
    // not even the first answer is finished, so what the server read is
    // exactly the bound, with no race against a first chunk's end.
    let content = data(65 * 1024 * 1024, 12);
    let id = id_of(&content);
    let config = ServerConfig {
        max_requests_in_flight: 3,
        // So slow that the first answer is never finished: the writer is
        // stuck on it for the whole test.
        max_upload_rate: Some(1),
        ..ServerConfig::default()
    };
    let mut node = Node::start(&[("f", &content)], config).await;
    let mut s = handshaken(node.addr).await;
    let mut frames = BytesMut::new();
    for i in 0..100u32 {
        Message::GetChunk {
            req_id: i + 1,
            id,
            index: i % 16,
        }
        .encode(&mut frames)
        .unwrap();
    }
    // 100 small frames: all in the socket at once, readable at once.
    s.write_all(&frames).await.unwrap();
    s.flush().await.unwrap();
    // Read: the one being written, the 3 queued, and one read but waiting
    // for room in the queue.
    let bound = 3 + 2;
    wait_for("the server to read what it may", 10, || {
        node.stats.requests_received.load(Ordering::Relaxed) >= bound
    })
    .await;
    // Had it read more than that, it would have read them all by now: they
    // arrived together. Stopping the server freezes the counts.
    node.shutdown().await;
    assert_eq!(node.stats.chunks_served.load(Ordering::Relaxed), 0);
    assert_eq!(node.stats.requests_received.load(Ordering::Relaxed), bound);
    drop(s);
}

/// Telling a refused connection why costs a TLS handshake, so only
/// `MAX_REFUSALS_IN_PROGRESS` are told at once; beyond that a refused
/// connection is closed without a word, at once.
#[tokio::test]
async fn refusals_in_progress_are_bounded() {
    use peershare::server::MAX_REFUSALS_IN_PROGRESS;
    // Over the per-address limit, a connection is refused before its
    // handshake (and told so after it).
    let config = ServerConfig {
        max_connections_per_ip: 1,
        // Refusals wait this long for a handshake that never comes.
        handshake_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    };
    let node = Node::start(&[("f", b"x")], config).await;
    let _held = handshaken(node.addr).await;
    // Silent connections: each holds a refusal, waiting for its handshake.
    let mut silent = Vec::new();
    for _ in 0..MAX_REFUSALS_IN_PROGRESS {
        silent.push(TcpStream::connect(node.addr).await.unwrap());
    }
    wait_for("every refusal to be under way", 10, || {
        node.stats.refused_busy.load(Ordering::Relaxed) == MAX_REFUSALS_IN_PROGRESS as u64
    })
    .await;
    // One more is closed at once, long before any handshake timeout.
    let started = Instant::now();
    let mut extra = TcpStream::connect(node.addr).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), extra.read_to_end(&mut rest))
        .await
        .expect("closed at once")
        .unwrap();
    assert!(rest.is_empty(), "nothing said");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        node.stats.refused_busy.load(Ordering::Relaxed),
        MAX_REFUSALS_IN_PROGRESS as u64 + 1
    );
    // When those give up, refusals are told again (their tasks end as they
    // see the close: retried until then).
    drop(silent);
    let mut told = Vec::new();
    for _ in 0..100 {
        let tls = Tls::ephemeral();
        let tcp = TcpStream::connect(node.addr).await.unwrap();
        let Ok(mut s) = tls.client_stream(tcp).await else {
            continue;
        };
        s.write_all(&hello_as(tls.node_id(), PROTOCOL_VERSION))
            .await
            .unwrap();
        told = read_until_closed(&mut s).await;
        break;
    }
    assert!(
        matches!(
            told.as_slice(),
            [Message::Error {
                code: ErrorCode::Busy,
                message,
                ..
            }] if message.contains("from your address")
        ),
        "a busy refusal with its reason: {told:?}"
    );
}

/// Silent connections cannot lock honest ones out: past
/// `max_pending_handshakes`, a newcomer evicts the oldest silent one, and
/// the connection slots go only to finished handshakes.
#[tokio::test]
async fn silent_connections_give_way_to_newcomers() {
    let config = ServerConfig {
        max_pending_handshakes: 4,
        max_connections: 4,
        handshake_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    };
    let content = data(300_000, 13);
    let node = Node::start(&[("f", &content)], config).await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(node.addr).await.unwrap());
    }
    wait_for("four pending handshakes", 10, || {
        node.stats.connections_active.load(Ordering::Relaxed) == 4
    })
    .await;
    assert_eq!(node.stats.handshakes_evicted.load(Ordering::Relaxed), 0);
    // A fifth evicts the oldest, which is closed long before its timeout.
    silent.push(TcpStream::connect(node.addr).await.unwrap());
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), silent[0].read_to_end(&mut rest))
        .await
        .expect("the oldest silent connection is closed at once")
        .unwrap();
    assert_eq!(node.stats.handshakes_evicted.load(Ordering::Relaxed), 1);
    // Honest clients still get through, while silent ones keep coming.
    honest_download_works(&node, &content).await;
    assert!(node.stats.handshakes_evicted.load(Ordering::Relaxed) >= 2);
    assert_eq!(node.stats.refused_busy.load(Ordering::Relaxed), 0);
    drop(silent);
}

/// After its handshake, a connection that asks nothing is closed once
/// `idle_timeout` has passed, freeing its slot.
#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let config = ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let node = Node::start(&[("f", b"x")], config).await;
    let mut s = handshaken(node.addr).await;
    let started = Instant::now();
    let got = read_until_closed(&mut s).await;
    assert!(got.is_empty(), "{got:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    wait_for("the slot to free", 10, || {
        node.stats.connections_active.load(Ordering::Relaxed) == 0
    })
    .await;
}

/// With every slot taken, a newcomer closes the established connection
/// that has been idle the longest (past `min_idle_to_evict`), so
/// connections that handshake and then idle cannot lock others out; one
/// that is busy is never closed for it.
#[tokio::test]
async fn an_idle_connection_makes_room_for_a_newcomer() {
    let config = ServerConfig {
        max_connections: 2,
        min_idle_to_evict: Duration::ZERO,
        ..ServerConfig::default()
    };
    let content = data(300_000, 14);
    let node = Node::start(&[("f", &content)], config).await;
    let mut oldest = handshaken(node.addr).await;
    let _newer = handshaken(node.addr).await;
    // A third client: the idlest (the first) is closed, the third served.
    honest_download_works(&node, &content).await;
    assert!(read_until_closed(&mut oldest).await.is_empty());
    assert_eq!(node.stats.idle_evicted.load(Ordering::Relaxed), 1);
    assert_eq!(node.stats.refused_busy.load(Ordering::Relaxed), 0);
}

/// Writes one frame and flushes it out of the TLS session.
async fn send_frame(s: &mut Stream, msg: Message) {
    s.write_all(&msg.to_frame().unwrap()).await.unwrap();
    s.flush().await.unwrap();
}

/// The next frame the server sends; fails after 10 s.
async fn next_frame(s: &mut Stream) -> Message {
    let mut buf = BytesMut::new();
    loop {
        if let Some(m) = decode_frame(&mut buf, MAX_FRAME_LEN).expect("a valid frame") {
            return m;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read_buf(&mut buf))
            .await
            .expect("a frame within 10 s")
            .unwrap();
        assert_ne!(n, 0, "closed before a whole frame");
    }
}

/// A FIFO put in place of a file: a read of it blocks, as a read from a
/// stuck disk or a hung network filesystem would, until this is dropped.
/// It is held open for writing (which never blocks with `O_RDWR`), so a
/// reader's `open` succeeds and its `read` waits: its descriptor shows in
/// `/proc/self/fd` ([`StuckFile::readers`]).
struct StuckFile {
    path: std::path::PathBuf,
    _writer: std::fs::File,
}

impl StuckFile {
    fn replace(path: &std::path::Path) -> Self {
        use std::os::unix::ffi::OsStrExt;
        let _ = std::fs::remove_file(path);
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a plain syscall on a NUL-terminated path.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
        let writer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        Self {
            path: std::fs::canonicalize(path).unwrap(),
            _writer: writer,
        }
    }

    /// Descriptors of this process open on the FIFO besides ours: reads
    /// stuck in it (or about to be).
    fn readers(&self) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == self.path))
            .count()
            .saturating_sub(1)
    }
}

/// Regression (issue #10): `GetManifest` read the manifest on an async
/// worker. With the server on a single worker thread, one manifest read
/// that never returned (a FIFO in place of the manifest file) stopped every
/// connection. Now another client is served in full meanwhile, and
/// shutdown does not wait for the stuck read.
#[test]
fn a_stuck_manifest_read_holds_up_no_other_connection() {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Runtime::new().unwrap();
    let (stuck, other) = (data(100_000, 20), data(300_000, 21));
    let mut node = server_rt.block_on(Node::start(
        &[("stuck", &stuck), ("other", &other)],
        ServerConfig::default(),
    ));
    let id = id_of(&stuck);
    let manifest = node.lib.dir().join(format!("manifests/{id}.manifest"));
    // Dropped (and so unblocked) before the runtimes, even on a panic.
    let fifo = StuckFile::replace(&manifest);
    client_rt.block_on(async {
        let mut s = handshaken(node.addr).await;
        send_frame(&mut s, Message::GetManifest { req_id: 1, id }).await;
        wait_for("the server to be stuck reading the manifest", 10, || {
            fifo.readers() == 1
        })
        .await;
        tokio::time::timeout(
            Duration::from_secs(30),
            honest_download_works(&node, &other),
        )
        .await
        .expect("another client is served while a manifest read is stuck");
        let started = Instant::now();
        node.shutdown().await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
        assert_eq!(fifo.readers(), 1, "the read is still stuck");
    });
    drop(fifo);
    server_rt.shutdown_timeout(Duration::from_secs(10));
}

/// A download in progress recorded in `node`'s library, its part file
/// holding `content` and no state file yet (nothing verified): its file ID
/// and state file.
fn in_progress(node: &Node, name: &str, content: &[u8]) -> (FileId, std::path::PathBuf) {
    let m = peershare_proto::Manifest::from_bytes(content);
    let out = node.path(name);
    let (part, state) = peershare::partial::part_paths(&out);
    std::fs::write(&part, content).unwrap();
    let record = peershare::store::Download {
        id: m.id().to_string(),
        name: name.into(),
        size: content.len() as u64,
        part,
        state: state.clone(),
        unlisted: false,
    };
    node.lib.begin_download(&out, &m, record).unwrap();
    (m.id(), state)
}

/// Regression (issue #10): the partials' cache lock was held across the
/// read of a download's state file, so one read that never returned (a
/// FIFO in place of the state file) stopped the `GetHave` and partial
/// chunks of every download. Now another download is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_state_file_read_holds_up_no_other_download() {
    let mut node = Node::start(&[], ServerConfig::default()).await;
    let (stuck, stuck_state) = in_progress(&node, "stuck", &data(100_000, 22));
    let (fine, _) = in_progress(&node, "fine", &data(100_000, 23));
    let fifo = StuckFile::replace(&stuck_state);
    let have = |id| Message::GetHave {
        req_id: 1,
        id,
        subscribe: false,
    };
    let mut a = handshaken(node.addr).await;
    send_frame(&mut a, have(stuck)).await;
    wait_for("the server to be stuck reading the state file", 10, || {
        fifo.readers() == 1
    })
    .await;
    let mut b = handshaken(node.addr).await;
    send_frame(&mut b, have(fine)).await;
    let got = next_frame(&mut b).await;
    assert!(
        matches!(&got, Message::Have { req_id: 1, holding: Holding::Some(h) } if h.count() == 0),
        "{got:?}"
    );
    node.shutdown().await;
    assert_eq!(fifo.readers(), 1, "the read is still stuck");
}

/// Adds `n` shared files and `n` downloads in progress of other content to
/// `lib`, none of them on disk: a large library. (Inserted unchecked:
/// sharing that many files would hash and sync each one.)
fn add_unrelated(lib: &peershare::Library, n: usize) {
    let (mut files, mut downloads) = (Vec::new(), Vec::new());
    for i in 0..n {
        let id = format!("{:064x}", i + 1);
        let path = lib.dir().join(format!("absent/{i}"));
        files.push(peershare::store::Entry {
            id: id.clone(),
            name: format!("file {i}"),
            path: path.clone(),
            size: 1000,
            mtime_ns: 0,
            unlisted: false,
        });
        let download = peershare::store::Download {
            id,
            name: format!("download {i}"),
            size: 1000,
            part: path.with_extension("part"),
            state: path.with_extension("state"),
            unlisted: false,
        };
        downloads.push((path.with_extension("out"), download));
    }
    lib.insert_unchecked(files).unwrap();
    lib.insert_downloads_unchecked(downloads).unwrap();
}

/// Regression (issue #10): every check of a `Have` subscription (each
/// subscription, every `HAVE_POLL_INTERVAL`) scanned the whole library, so
/// a client holding subscriptions on a large library cost the server CPU
/// in proportion. Now a check that finds nothing new looks at no library
/// entry, a change of the library costs a lookup by file ID, and a new
/// state file is still announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_have_subscription_check_costs_the_same_whatever_the_library_size() {
    const UNRELATED: usize = 5_000;
    const CHECKS: u64 = 8;
    let node = Node::start(&[], ServerConfig::default()).await;
    add_unrelated(&node.lib, UNRELATED);
    let content = data(1024 * 1024, 24);
    let (id, state) = in_progress(&node, "dl", &content);
    let chunks = peershare_proto::Manifest::from_bytes(&content).chunk_count();
    let stats = node.stats.clone();
    let examined = || stats.library_entries_examined.load(Ordering::Relaxed);
    let checks = || stats.have_checks.load(Ordering::Relaxed);
    let mut s = handshaken(node.addr).await;
    send_frame(
        &mut s,
        Message::GetHave {
            req_id: 1,
            id,
            subscribe: true,
        },
    )
    .await;
    let got = next_frame(&mut s).await;
    assert!(
        matches!(&got, Message::Have { req_id: 1, holding: Holding::Some(h) } if h.count() == 0),
        "{got:?}"
    );
    // The first check looks the download up (the library is new to it).
    wait_for("a first check", 10, || checks() >= 1).await;
    let (before, at) = (examined(), checks());
    wait_for("more checks", 10, || checks() >= at + CHECKS).await;
    let per_check = (examined() - before) as f64 / (checks() - at) as f64;
    assert_eq!(
        examined(),
        before,
        "{per_check} entries looked at per check of an unchanged library of {} entries",
        2 * UNRELATED + 1
    );
    // The download verifies a chunk: announced, without a library lookup.
    let mut done = peershare::partial::Bitmap::new(chunks);
    done.set(0);
    let record = peershare::partial::encode_state(&id, content.len() as u64, &done);
    peershare::store::write_atomic(&state, &record).unwrap();
    let got = next_frame(&mut s).await;
    assert!(
        matches!(&got, Message::Have { req_id: 1, holding: Holding::Some(h) } if h.count() == 1),
        "{got:?}"
    );
    assert_eq!(
        examined(),
        before,
        "the state file changed, not the library"
    );
    // The library changes (another download begins): the next check looks
    // up this download again, by its ID only.
    in_progress(&node, "another", &data(1000, 25));
    let at = checks();
    wait_for("checks after the change", 10, || checks() >= at + 2).await;
    let looked = examined() - before;
    assert!(
        (1..=2).contains(&looked),
        "{looked} entries looked at after a library change"
    );
}

/// A node sharing one sparse file of `len` bytes (all zeros, so hashing it
/// reads no disk), and its file ID.
async fn sparse_node(len: u64, config: ServerConfig) -> (Node, FileId) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    std::fs::File::create(&path).unwrap().set_len(len).unwrap();
    let lib = peershare::Library::open(dir.path().join("data")).unwrap();
    let shared = tokio::task::spawn_blocking({
        let lib = lib.clone();
        move || lib.share(&[path], &peershare::ShareProgress::default())
    })
    .await
    .unwrap()
    .unwrap();
    let id = shared[0].entry.id.parse().unwrap();
    (Node::serve(dir, lib, config).await, id)
}

/// Bytes of a file with the largest chunks (8 MiB): just over 4 GiB.
const LARGE_CHUNKS_FILE: u64 = (4 << 30) + 1;

/// A TLS connection to `addr`, handshaken, over a socket shaped like a LAN
/// peer's rather than loopback's: Ethernet-sized segments and a small
/// receive buffer. (Loopback's 64 KiB segments let the kernel buffer some
/// 4 MB for one connection and wake a blocked writer only once more than a
/// megabyte was taken.)
async fn lan_like(addr: std::net::SocketAddr) -> Stream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    socket2::SockRef::from(&sock).set_tcp_mss(1448).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let tls = Tls::ephemeral();
    let mut s = tls.client_stream(tcp).await.unwrap();
    handshake(&mut s, tls.node_id()).await;
    s
}

/// Requests for chunks `0..n` of `id` (request IDs 1..=n), in one write.
async fn ask_chunks(s: &mut Stream, id: FileId, n: u32) {
    let mut frames = BytesMut::new();
    for i in 0..n {
        Message::GetChunk {
            req_id: i + 1,
            id,
            index: i,
        }
        .encode(&mut frames)
        .unwrap();
    }
    s.write_all(&frames).await.unwrap();
    s.flush().await.unwrap();
}

/// Issue #10, item 4: the write timeout bounds each piece of a chunk, not
/// the chunk. A client reading slowly (about 300 KB/s) from a file with
/// 8 MiB chunks keeps being served long past the write timeout (a whole
/// chunk takes it half a minute), while one that reads nothing is closed
/// once the write timeout has passed since its buffers filled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_served_past_the_write_timeout_and_a_non_reader_is_not() {
    const WRITE_TIMEOUT: Duration = Duration::from_secs(4);
    /// Bytes per read, and reads per second, of the slow reader.
    const READ: usize = 16 * 1024;
    const READS_PER_SECOND: u64 = 19;
    let observed = WRITE_TIMEOUT * 2;
    let config = ServerConfig {
        write_timeout: WRITE_TIMEOUT,
        ..ServerConfig::default()
    };
    let (node, id) = sparse_node(LARGE_CHUNKS_FILE, config).await;
    let chunk = peershare_proto::manifest::chunk_size_for(LARGE_CHUNKS_FILE) as usize;
    assert_eq!(chunk, peershare_proto::manifest::MAX_CHUNK_SIZE as usize);
    let mut slow = lan_like(node.addr).await;
    let mut still = lan_like(node.addr).await;
    ask_chunks(&mut slow, id, 2).await;
    ask_chunks(&mut still, id, 2).await;
    let started = Instant::now();
    let reading = async {
        let (mut head, mut got) = (Vec::new(), 0);
        let mut buf = vec![0u8; READ];
        let pace = Duration::from_secs(1) / READS_PER_SECOND as u32;
        while started.elapsed() < observed {
            let n = tokio::time::timeout(WRITE_TIMEOUT, slow.read(&mut buf))
                .await
                .expect("the slow reader keeps receiving")
                .unwrap_or(0);
            assert_ne!(
                n,
                0,
                "the slow reader was closed after {got} bytes, {:?} in",
                started.elapsed()
            );
            got += n;
            if head.len() < 64 {
                head.extend_from_slice(&buf[..n]);
            }
            // The reader's pace is the behaviour under test.
            tokio::time::sleep(pace).await;
        }
        (head, got)
    };
    let stats = node.stats.clone();
    let closing = async {
        wait_for("the non-reader to be closed", 30, || {
            stats.connections_active.load(Ordering::Relaxed) == 1
        })
        .await;
        started.elapsed()
    };
    let ((head, got), closed_after) = tokio::join!(reading, closing);
    // Seen from the server: the slow reader's connection is still open and
    // being served. (Its client alone cannot tell: after a close it would
    // go on reading what the kernels buffered for seconds.)
    assert_eq!(
        node.stats.connections_active.load(Ordering::Relaxed),
        1,
        "the server closed the slow reader within {observed:?}"
    );
    let header = peershare_proto::wire::chunk_header(1, 0, chunk as u32);
    assert_eq!(head[..header.len()], header, "chunk 0 is coming");
    assert!(
        closed_after >= WRITE_TIMEOUT && closed_after < WRITE_TIMEOUT + Duration::from_secs(5),
        "the non-reader was closed after {closed_after:?}"
    );
    // The one closed is the one that did not read.
    read_until_closed(&mut still).await;
    assert_eq!(node.stats.chunks_served.load(Ordering::Relaxed), 0);
    eprintln!(
        "slow reader: {got} bytes in {observed:?} (reading at most {} KB/s), still served; \
         non-reader closed after {closed_after:?} (write timeout {WRITE_TIMEOUT:?})",
        READ as u64 * READS_PER_SECOND / 1000
    );
    assert!(
        got < chunk,
        "held back by its reading, not served from buffers"
    );
}

/// A shared file that changes in the middle of a chunk being sent, after
/// the chunk's header went out: the header cannot be taken back, so the
/// connection is closed before the frame is complete (the client sees a
/// lost connection, never a whole chunk of changed bytes); asked again,
/// the file is withdrawn. (The whole chunk used to be read before sending,
/// so a change while it was sent went unseen.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_changes_in_the_middle_of_a_chunk_ends_the_connection() {
    /// 1 MiB chunks: four slices each.
    const LEN: u64 = (512 << 20) + 1;
    let chunk = peershare_proto::manifest::chunk_size_for(LEN) as usize;
    assert!(chunk >= 3 * peershare::server::SEND_SLICE);
    let config = ServerConfig {
        // A chunk takes some 4 s: its third slice is read long after the
        // header went out.
        max_upload_rate: Some(chunk as u64 / 4),
        ..ServerConfig::default()
    };
    let (node, id) = sparse_node(LEN, config).await;
    let mut s = handshaken(node.addr).await;
    ask_chunks(&mut s, id, 1).await;
    let header = peershare_proto::wire::chunk_header(1, 0, chunk as u32);
    let mut got = vec![0u8; header.len()];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(got, header);
    let file = std::fs::File::options()
        .write(true)
        .open(node.path("big"))
        .unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(1))
        .unwrap();
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection");
    assert!(
        rest.len() < chunk,
        "{} bytes of a {chunk}-byte chunk, then {end:?}",
        rest.len()
    );
    assert_eq!(node.stats.chunks_served.load(Ordering::Relaxed), 0);
    let mut again = handshaken(node.addr).await;
    ask_chunks(&mut again, id, 1).await;
    let answer = next_frame(&mut again).await;
    assert!(
        matches!(
            &answer,
            Message::Error {
                req_id: 1,
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{answer:?}"
    );
}

/// With a budget of a single slice for all connections, answers wait
/// their turn: two downloads at once both complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_of_one_slice_serves_every_connection_in_turn() {
    let config = ServerConfig {
        max_buffered_bytes: 1,
        ..ServerConfig::default()
    };
    let content = data(3 * 1024 * 1024, 26);
    let node = Node::start(&[("f", &content)], config).await;
    tokio::join!(
        honest_download_works(&node, &content),
        honest_download_works(&node, &content)
    );
    assert!(node.stats.chunks_served.load(Ordering::Relaxed) >= 2 * 48);
}

/// A client whose `Hello` lacks `FOLDERS` (a build from before folders,
/// which ignores unknown entry flags and would take a folder for a file
/// whose manifest fails its ID) gets no folder entry, only the folder's
/// files; a client with it gets the folder too (PROTOCOL.md, 6.4).
#[tokio::test]
async fn folder_entries_go_only_to_clients_that_understand_them() {
    let mut node = Node::start(&[], ServerConfig::default()).await;
    let pics = node.path("pics");
    std::fs::create_dir_all(&pics).unwrap();
    std::fs::write(pics.join("a.jpg"), b"same").unwrap();
    std::fs::write(pics.join("b.jpg"), b"same").unwrap();
    peershare::ops::share(&node.lib, &[pics], false, &Default::default()).unwrap();

    // `handshaken` sends capabilities 0.
    let mut old = handshaken(node.addr).await;
    send_frame(
        &mut old,
        Message::GetCatalog {
            req_id: 1,
            cursor: 0,
        },
    )
    .await;
    let Message::Catalog { entries, next, .. } = next_frame(&mut old).await else {
        panic!("not a catalog")
    };
    assert_eq!(next, None);
    let names: Vec<(bool, String)> = entries
        .into_iter()
        .map(|e| (e.is_folder(), e.name))
        .collect();
    assert_eq!(
        names,
        [
            (false, "pics/a.jpg".to_owned()),
            (false, "pics/b.jpg".to_owned())
        ]
    );
    let conn = peershare::PeerConn::connect(node.addr, &Tls::ephemeral(), None, Default::default())
        .await
        .unwrap();
    let names: Vec<(bool, String)> = conn
        .catalog()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.is_folder(), e.name))
        .collect();
    assert_eq!(
        names,
        [
            (true, "pics".to_owned()),
            (false, "pics/a.jpg".to_owned()),
            (false, "pics/b.jpg".to_owned())
        ]
    );
    node.shutdown().await;
}
