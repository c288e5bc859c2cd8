//! Identity, encryption and access: who a peer is is proven, what travels
//! is unreadable, and who may ask is the server's choice.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use peershare::{ClientConfig, PeerConn, PeerError, ServerConfig, ShareProgress, Tls};
use peershare_proto::NodeId;
use peershare_proto::wire::{ErrorCode, Hello, MAX_FRAME_LEN, Message, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn connect(addr: SocketAddr, expect: Option<NodeId>) -> Result<PeerConn, PeerError> {
    PeerConn::connect(addr, &Tls::ephemeral(), expect, ClientConfig::default()).await
}

#[tokio::test]
async fn a_peer_proving_another_node_than_expected_is_refused() {
    let node = Node::start(&[("f", b"hello")], ServerConfig::default()).await;
    let stranger = Tls::ephemeral().node_id();
    match connect(node.addr, Some(stranger)).await {
        Err(PeerError::WrongNode { expected, got, .. }) => {
            assert_eq!(expected, stranger);
            assert_eq!(got, node.tls.node_id());
        }
        Err(e) => panic!("expected WrongNode, got {e}"),
        Ok(_) => panic!("an impostor was accepted"),
    }
    // The node it is, expected, is accepted, and is what its Hello says.
    let conn = connect(node.addr, Some(node.tls.node_id())).await.unwrap();
    assert_eq!(conn.remote().node_id, node.tls.node_id());
    assert_eq!(node.tls.node_id(), node.lib.node_id().unwrap());
}

#[tokio::test]
async fn a_download_refuses_a_ticket_peer_that_is_not_the_tickets_node() {
    let content = data(300_000, 1);
    let node = Node::start(&[("f", &content)], ServerConfig::default()).await;
    let out = tempfile::tempdir().unwrap();
    let mut req = request(id_of(&content), vec![node.addr], &out.path().join("f"));
    req.expect.insert(node.addr, Tls::ephemeral().node_id());
    let err = fetch(req).await.unwrap_err();
    assert!(err.to_string().contains("refusing it"), "{err}");
    assert!(!out.path().join("f").exists());
    assert_eq!(node.stats.chunks_served.load(Ordering::Relaxed), 0);
    // Naming the right node, the same download works.
    let mut req = request(id_of(&content), vec![node.addr], &out.path().join("f"));
    req.expect.insert(node.addr, node.tls.node_id());
    fetch(req).await.unwrap();
    assert_eq!(std::fs::read(out.path().join("f")).unwrap(), content);
}

fn hello_frame(node_id: NodeId) -> bytes::BytesMut {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        node_id,
        listen_port: 0,
        capabilities: 0,
    })
    .to_frame()
    .unwrap()
}

#[tokio::test]
async fn a_client_claiming_a_node_whose_key_it_lacks_is_refused() {
    let node = Node::start(&[("f", b"hello")], ServerConfig::default()).await;
    let me = Tls::ephemeral();
    let victim = Tls::ephemeral().node_id();
    let tcp = TcpStream::connect(node.addr).await.unwrap();
    let mut s = me.client_stream(tcp).await.unwrap();
    s.write_all(&hello_frame(victim)).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let _ = s.read_to_end(&mut buf).await;
    })
    .await
    .expect("the server closes");
    let mut b = bytes::BytesMut::from(&buf[..]);
    let got = peershare_proto::wire::decode_frame(&mut b, MAX_FRAME_LEN).unwrap();
    match got {
        Some(Message::Error {
            req_id: 0,
            code: ErrorCode::BadRequest,
            message,
        }) => assert!(
            message.contains(&victim.to_string()) && message.contains(&me.node_id().to_string()),
            "{message}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_claiming_a_node_whose_key_it_lacks_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let evil = Tls::ephemeral();
    let victim = Tls::ephemeral().node_id();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let evil = evil.clone();
            tokio::spawn(async move {
                let Ok(mut secured) = evil.accept(tcp).await else {
                    return;
                };
                let mut first = [0u8; 64];
                let _ = secured.reader.read(&mut first).await;
                let _ = secured.writer.write_all(&hello_frame(victim)).await;
                let _ = secured.writer.flush().await;
                // Hold the connection until the client gives up on it.
                let _ = secured.reader.read(&mut first).await;
            });
        }
    });
    // A Hello must name the node the key proves, expected or not.
    let err = connect(addr, None).await.err().expect("refused");
    assert!(
        matches!(&err, PeerError::Handshake { reason, .. } if reason.contains("claims to be node")),
        "{err}"
    );
    // Expecting the claimed node, the key alone already gives it away.
    let err = connect(addr, Some(victim)).await.err().expect("refused");
    assert!(
        matches!(&err, PeerError::WrongNode { expected, .. } if *expected == victim),
        "{err}"
    );
}

/// Forwards connections to `to`, recording every byte in both directions.
async fn recording_proxy(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(to).await.unwrap();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, record.clone()));
            tokio::spawn(pump(sr, cw, record.clone()));
        }
    });
    (addr, seen)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    record: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        record.lock().unwrap().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// True when any 16-byte block of `content` (at a multiple of 16) appears
/// anywhere in `haystack`.
fn leaks(content: &[u8], haystack: &[u8]) -> bool {
    let blocks: HashSet<&[u8]> = content.chunks_exact(16).collect();
    haystack.windows(16).any(|w| blocks.contains(w))
}

#[tokio::test]
async fn traffic_on_the_wire_holds_no_plaintext() {
    let content = data(2 * 1024 * 1024, 7);
    let name = "secret-plans.txt";
    let node = Node::start(&[(name, &content)], ServerConfig::default()).await;
    let (proxy, seen) = recording_proxy(node.addr).await;
    let out = tempfile::tempdir().unwrap();
    // Through the proxy, naming the node behind it: TLS is end to end.
    let mut req = request(id_of(&content), vec![proxy], &out.path().join("f"));
    req.expect.insert(proxy, node.tls.node_id());
    fetch(req).await.unwrap();
    assert_eq!(std::fs::read(out.path().join("f")).unwrap(), content);
    let conn = connect(proxy, Some(node.tls.node_id())).await.unwrap();
    assert_eq!(conn.catalog().await.unwrap()[0].name, name);
    drop(conn);
    let wire = seen.lock().unwrap().clone();
    // Everything went through the proxy...
    assert!(wire.len() > content.len(), "captured {} bytes", wire.len());
    // ...and none of it is readable: not the file, nor its name.
    assert!(!leaks(&content, &wire), "file bytes on the wire");
    assert!(
        !wire.windows(name.len()).any(|w| w == name.as_bytes()),
        "file name on the wire"
    );
    // The detector does find content sent in the clear (at any offset).
    let mut clear = data(1000, 8);
    clear.extend_from_slice(&content[4096 + 3..4096 + 100]);
    assert!(leaks(&content, &clear));
}

#[tokio::test]
async fn trusted_only_refuses_strangers_and_serves_friends() {
    let content = data(200_000, 3);
    let config = ServerConfig {
        trusted_only: true,
        ..ServerConfig::default()
    };
    let node = Node::start(&[("f", &content)], config).await;
    let friend = Tls::ephemeral();
    let refused = |r: Result<PeerConn, PeerError>| match r {
        Err(PeerError::Remote {
            code: ErrorCode::NotTrusted,
            message,
            ..
        }) => message,
        Err(e) => panic!("expected NotTrusted, got {e}"),
        Ok(_) => panic!("an untrusted node was served"),
    };
    let cfg = ClientConfig::default;
    let message = refused(PeerConn::connect(node.addr, &friend, None, cfg()).await);
    assert!(
        message.contains(&format!("peershare trust add {}", friend.node_id())),
        "{message}"
    );
    assert_eq!(node.stats.refused_untrusted.load(Ordering::Relaxed), 1);

    // Trusted while the server runs: served at the next connection.
    assert!(node.lib.trust(friend.node_id(), "laptop").unwrap());
    let conn = PeerConn::connect(node.addr, &friend, None, cfg())
        .await
        .unwrap();
    assert_eq!(conn.catalog().await.unwrap().len(), 1);
    let out = tempfile::tempdir().unwrap();
    let mut req = request(id_of(&content), vec![node.addr], &out.path().join("f"));
    req.tls = friend.clone();
    fetch(req).await.unwrap();
    assert_eq!(std::fs::read(out.path().join("f")).unwrap(), content);

    // Others are still refused; and once removed, so is the friend.
    refused(connect(node.addr, None).await);
    assert!(node.lib.distrust(friend.node_id()).unwrap());
    refused(PeerConn::connect(node.addr, &friend, None, cfg()).await);
    assert_eq!(node.stats.refused_untrusted.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn without_trusted_only_anyone_is_served() {
    let node = Node::start(&[("f", b"hello")], ServerConfig::default()).await;
    let conn = connect(node.addr, None).await.unwrap();
    assert_eq!(conn.catalog().await.unwrap().len(), 1);
    assert_eq!(node.stats.refused_untrusted.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn unlisted_files_are_served_by_id_but_never_listed() {
    let listed = data(100_000, 4);
    let hidden = data(150_000, 5);
    let mut node = Node::start(&[("listed.bin", &listed)], ServerConfig::default()).await;
    let path = node.path("hidden.bin");
    std::fs::write(&path, &hidden).unwrap();
    let shared = node
        .lib
        .share_as(std::slice::from_ref(&path), &ShareProgress::default(), true)
        .unwrap();
    assert!(shared[0].entry.unlisted);
    let conn = connect(node.addr, None).await.unwrap();
    let names: Vec<_> = conn
        .catalog()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["listed.bin"]);
    // Whoever knows the ID gets it.
    let out = tempfile::tempdir().unwrap();
    fetch(request(
        id_of(&hidden),
        vec![node.addr],
        &out.path().join("h"),
    ))
    .await
    .unwrap();
    assert_eq!(std::fs::read(out.path().join("h")).unwrap(), hidden);
    // Sharing it again without --unlisted lists it (no re-hashing).
    let again = node
        .lib
        .share(std::slice::from_ref(&path), &ShareProgress::default())
        .unwrap();
    assert!(!again[0].hashed && !again[0].entry.unlisted);
    let conn = connect(node.addr, None).await.unwrap();
    assert_eq!(conn.catalog().await.unwrap().len(), 2);
    node.shutdown().await;
    // The flag is kept in the library file.
    node.lib
        .share_as(std::slice::from_ref(&path), &ShareProgress::default(), true)
        .unwrap();
    let snap = node.lib.snapshot().unwrap();
    assert!(
        snap.files
            .values()
            .any(|e| e.unlisted && e.name == "hidden.bin")
    );
}

#[tokio::test]
async fn a_peer_reported_mid_download_must_be_the_node_reported() {
    let content = data(4 * 1024 * 1024, 9);
    let slow = Node::start(
        &[("f", &content)],
        ServerConfig {
            max_upload_rate: Some(2_000_000),
            ..ServerConfig::default()
        },
    )
    .await;
    let other = Node::start(&[("f", &content)], ServerConfig::default()).await;
    let out = tempfile::tempdir().unwrap();
    let mut req = request(id_of(&content), vec![slow.addr], &out.path().join("f"));
    // Discovery says another node is at `other`'s address: it is refused.
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    req.more_peers = Some(rx);
    tx.send_replace(vec![(other.addr, Some(Tls::ephemeral().node_id()))]);
    let s = fetch(req).await.unwrap();
    assert_eq!(std::fs::read(out.path().join("f")).unwrap(), content);
    assert_eq!(other.stats.chunks_served.load(Ordering::Relaxed), 0);
    assert!(
        s.peers.iter().all(|p| p.addr != other.addr || p.bytes == 0),
        "{s:?}"
    );
    drop(tx);
}

#[tokio::test]
async fn an_unlisted_download_stays_unlisted_where_it_lands() {
    let content = data(2 * 1024 * 1024, 10);
    let source = Node::start(
        &[("secret.bin", &content)],
        ServerConfig {
            max_upload_rate: Some(2_000_000),
            ..ServerConfig::default()
        },
    )
    .await;
    let me = Node::start(&[], ServerConfig::default()).await;
    let out = me.path("secret.bin");
    let mut req = request(id_of(&content), vec![source.addr], &out);
    req.library = Some(me.lib.clone());
    req.tls = me.tls.clone();
    req.unlisted = true;
    req.config.checkpoint_interval = Duration::from_millis(100);
    let progress = Arc::new(peershare::Progress::default());
    let dl = tokio::spawn(fetch_with(req, progress.clone()));
    wait_for("some chunks", 20, || {
        progress.verified.load(Ordering::Relaxed) > 256 * 1024
    })
    .await;
    // While it downloads, it is recorded (and served by ID), not listed.
    let snap = me.lib.snapshot().unwrap();
    assert!(snap.downloads.values().all(|d| d.unlisted));
    assert_eq!(snap.downloads.len(), 1);
    let conn = connect(me.addr, None).await.unwrap();
    assert!(conn.catalog().await.unwrap().is_empty());
    let (holding, _) = conn.have(id_of(&content), false).await.unwrap();
    assert!(!matches!(holding, peershare_proto::wire::Holding::All));
    dl.await.unwrap().unwrap();
    // Done: shared, unlisted.
    let snap = me.lib.snapshot().unwrap();
    assert!(snap.files.values().all(|e| e.unlisted) && snap.files.len() == 1);
    let conn = connect(me.addr, None).await.unwrap();
    assert!(conn.catalog().await.unwrap().is_empty());
    let out2 = tempfile::tempdir().unwrap();
    fetch(request(
        id_of(&content),
        vec![me.addr],
        &out2.path().join("f"),
    ))
    .await
    .unwrap();
}
