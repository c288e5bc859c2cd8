//! `get` keeps going where it used to give up: many downloaders against a
//! busy `serve`, and a forged discovery reply beside the real one.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use common::*;
use peershare_proto::NodeId;
use peershare_proto::discovery::{Kind, PACKET_LEN, Packet};

/// Regression (issue 10.8): 100 downloaders against a default `serve` from
/// one address: 68 exited 1 on "too many connections from your address",
/// with no retry. Here 24 downloaders at once against a serve that takes 3
/// connections from an address: every one must finish, verified.
#[test]
fn downloaders_refused_as_busy_retry_until_they_are_served() {
    let sb = Sandbox::new();
    let content = random_bytes(2 * MIB, 301);
    let file = sb.write("src/f.bin", &content);
    let server = sb.data("server");
    let id = sb.share_one(&server, &file);
    let serve = sb.serve(
        &server,
        &[
            "--no-discovery",
            "--max-connections-per-ip",
            "3",
            "--max-upload-rate",
            "20MB",
        ],
    );
    let peer = serve.peer();
    let kids: Vec<(Kid, std::path::PathBuf)> = (0..24)
        .map(|n| {
            let out = sb.path(&format!("out{n}.bin"));
            let client = sb.data(&format!("client{n}"));
            let args = get_args(&client, &id, &[&peer], Some(&out), &["--no-discovery"]);
            let mut cmd = sb.cmd(&args);
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            (Kid::spawn(cmd), out)
        })
        .collect();
    for (mut kid, out) in kids {
        let status = kid.wait_deadline(COMMAND_DEADLINE);
        let mut err = String::new();
        if let Some(mut e) = kid.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        assert!(status.success(), "{}: {status:?}\n{err}", out.display());
        assert_same_file(&out, &content);
    }
}

/// Sends, from the discovery port on loopback, a forged reply to every
/// query it hears: node 00…00 at the real node's TCP port, so the forged
/// node sits at the real node's address. Stops when the flag is set;
/// counts the replies forged.
fn forge_replies(discovery_port: u16, tcp_port: u16, stop: Arc<AtomicBool>) -> Arc<AtomicU64> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.bind(&SocketAddr::from(([0, 0, 0, 0], discovery_port)).into())
        .unwrap();
    let socket: std::net::UdpSocket = s.into();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let forged = Arc::new(AtomicU64::new(0));
    let count = forged.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let Ok(p) = Packet::decode(&buf[..n]) else {
                continue;
            };
            if p.kind != Kind::Query {
                continue;
            }
            let reply = Packet {
                kind: Kind::Reply,
                node_id: NodeId([0; 32]),
                tcp_port,
                revision: 0,
            }
            .encode();
            assert_eq!(reply.len(), PACKET_LEN);
            if socket.send_to(&reply, from).is_ok() {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    forged
}

/// Regression (issue 10.10): `get` pinned the first node seen at an
/// address, sorted by node ID, so a forged reply naming node 00…00 at the
/// sharer's address won, and the real sharer then failed as the wrong node,
/// treated as hopeless. One packet stopped the download (and `ls`).
#[test]
fn a_spoofed_discovery_reply_cannot_stop_a_download_or_a_listing() {
    let sb = Sandbox::new();
    let content = random_bytes(MIB + 3, 302);
    let file = sb.write("src/f.bin", &content);
    let (server, client) = (sb.data("server"), sb.data("client"));
    let id = sb.share_one(&server, &file);
    let serve = sb.serve(&server, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let forged = forge_replies(sb.discovery_port, serve.addr.port(), stop.clone());

    let ls = sb.run_on(&client, &["ls", "--json"]);
    ls.ok();
    let rows = ls.json();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(str_field(&rows[0], "id"), id);

    let out = sb.path("f.bin");
    let got = sb.run_on(&client, &["get", &id, "-o", path_str(&out)]);
    got.ok();
    assert_same_file(&out, &content);
    stop.store(true, Ordering::Relaxed);
    assert!(
        forged.load(Ordering::Relaxed) >= 2,
        "the forger answered both commands' queries"
    );
}
