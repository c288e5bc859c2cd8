//! Hostile clients against the real `peershare serve` binary, with an
//! honest `peershare get` that must be served during the attack or right
//! after it: a thousand silent connections (slowloris), a 4 GiB length
//! prefix followed by a trickle, a request flood that never reads its
//! answers, requests for 8 MiB chunks that are never read, random garbage
//! both instead of TLS and inside it, and a manifest read that never
//! returns (a FIFO in place of the file).
//!
//! Besides what the clients see, the server process is watched from
//! `/proc`: its resident memory (`VmRSS`, and the peak `VmHWM`) against
//! [`RSS_BOUND`], its peak address space against [`ADDRESS_SPACE_BOUND`],
//! and the connections it holds on its port, which show that attack
//! connections were accepted (not left in the kernel's backlog) and held,
//! and that every one was released afterwards. The figures are printed
//! (`--nocapture` shows them).
//!
//! Attack connections come from 127.0.0.3 and up (all of 127/8 is
//! loopback), spread so that each address stays under the server's
//! per-address limit. The honest `get` connects to the server's 127.0.0.1
//! and so comes from 127.0.0.1 (the kernel's source address for a loopback
//! destination), which no attacker uses: the per-address limit never
//! refuses it.
//!
//! Synchronisation is by the clients' own reads (an end of stream under a
//! tokio timeout), by process exits, or by polling `/proc` under a hard
//! deadline. The only sleep paces the trickle of the length-prefix attack,
//! which is the attack itself.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use peershare::ServerConfig;
use peershare::Tls;
use peershare::tls::{BoxRead, BoxWrite};
use peershare_proto::manifest::{chunk_count, chunk_size_for};
use peershare_proto::wire::{
    ErrorCode, Hello, MAX_FRAME_LEN, Message, PROTOCOL_VERSION, decode_frame,
};
use peershare_proto::{FileId, NodeId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Resident memory the server may gain from one attack (over what it held
/// just before), bytes.
const RSS_BOUND: u64 = 64 * MIB as u64;
/// Address space the server may gain from one attack, bytes: a single
/// reservation of a declared 4 GiB frame breaks it.
const ADDRESS_SPACE_BOUND: u64 = 1024 * MIB as u64;
/// Time the server gets, past its handshake timeout, to close a connection
/// that never sent a byte.
const CLOSE_MARGIN: Duration = Duration::from_secs(5);
/// Time a connection that sent something malformed may stay open.
const PROMPTLY: Duration = Duration::from_secs(5);
/// Time the server gets to release the sockets of ended connections.
const RELEASE_DEADLINE: Duration = Duration::from_secs(15);
/// Size of the shared file, bytes: many chunks.
const FILE_LEN: usize = 4 * MIB;

// ---------------------------------------------------------------- helpers

/// Raises this process's soft limit on open files to its hard limit (the
/// `serve` started afterwards inherits it); returns the limit now in force.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
    }
    lim.rlim_cur
}

/// A process's memory figures from `/proc/<pid>/status`, bytes.
#[derive(Debug, Clone, Copy)]
struct Mem {
    /// Resident now (`VmRSS`).
    rss: u64,
    /// Highest resident so far (`VmHWM`).
    hwm: u64,
    /// Address space now (`VmSize`).
    size: u64,
    /// Highest address space so far (`VmPeak`).
    peak: u64,
}

impl Mem {
    fn of(pid: u32) -> Self {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
        let field = |name: &str| -> u64 {
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"));
            let kib = line.trim().strip_suffix(" kB").expect("a figure in kB");
            kib.trim().parse::<u64>().expect("a number of kB") * 1024
        };
        Self {
            rss: field("VmRSS"),
            hwm: field("VmHWM"),
            size: field("VmSize"),
            peak: field("VmPeak"),
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// Connections the process `pid` holds open on its local `port` (its
/// listener aside): sockets of the process, by inode, that
/// `/proc/net/tcp` shows on that port in any state but listening.
fn connections(pid: u32, port: u16) -> usize {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let inodes: HashSet<String> = dir
        .filter_map(Result::ok)
        // An fd closed meanwhile is not counted.
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            // sl local_address rem_address st ... inode: see proc_net_tcp(5).
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 9 && f[1].ends_with(&port) && f[3] != "0A" && inodes.contains(f[9])
        })
        .count()
}

/// Polls `cond` until it holds, failing the test after `limit`.
#[track_caller]
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The `n`th attacker address: 127.0.0.3 and up.
fn attacker(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, u8::try_from(3 + n).expect("a loopback address"))
}

/// A TCP connection to `to` from `from`, with the send buffer set to
/// `send_buffer` bytes when given (fixed, no autotuning).
async fn tcp_from(
    from: Ipv4Addr,
    to: SocketAddr,
    send_buffer: Option<u32>,
) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(n) = send_buffer {
        sock.set_send_buffer_size(n)?;
    }
    sock.bind(SocketAddr::from((from, 0)))?;
    sock.connect(to).await
}

/// A TLS connection (a throwaway key, no `Hello` yet) to `to` from `from`:
/// its halves and the node ID it proves.
async fn tls_from(
    from: Ipv4Addr,
    to: SocketAddr,
    send_buffer: Option<u32>,
) -> Result<(BoxRead, BoxWrite, NodeId), String> {
    let tls = Tls::ephemeral();
    let tcp = tcp_from(from, to, send_buffer)
        .await
        .map_err(|e| format!("connect from {from}: {e}"))?;
    let s = tls
        .connect(tcp)
        .await
        .map_err(|e| format!("TLS handshake from {from}: {e}"))?;
    Ok((s.reader, s.writer, tls.node_id()))
}

fn hello(node_id: NodeId) -> BytesMut {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        node_id,
        listen_port: 0,
        capabilities: 0,
    })
    .to_frame()
    .expect("a Hello encodes")
}

/// Writes `bytes` and flushes them out of the TLS session.
async fn send<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// The server ended the connection: after it closes with our bytes still
/// unread, its kernel answers with a reset, and a TLS stream may end
/// without `close_notify`.
fn is_closed(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
    )
}

/// Messages, with chunk payloads shown by length only.
fn summary(msgs: &[Message]) -> String {
    let one = |m: &Message| match m {
        Message::Chunk {
            req_id,
            index,
            data,
        } => format!(
            "Chunk {{ req_id: {req_id}, index: {index}, {} bytes }}",
            data.len()
        ),
        other => format!("{other:?}"),
    };
    format!("[{}]", msgs.iter().map(one).collect::<Vec<_>>().join(", "))
}

/// Every frame the server sends until it ends the connection. Fails if
/// the connection is still open after `limit`, or on a malformed frame.
async fn frames_until_closed<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: Duration,
) -> Result<Vec<Message>, String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    loop {
        while let Some(m) = decode_frame(&mut buf, MAX_FRAME_LEN)
            .map_err(|e| format!("the server sent a malformed frame: {e}"))?
        {
            got.push(m);
        }
        match tokio::time::timeout_at(deadline, r.read_buf(&mut buf)).await {
            Err(_) => {
                return Err(format!(
                    "still open after {limit:?}, having sent {}",
                    summary(&got)
                ));
            }
            Ok(Ok(0)) if buf.is_empty() => return Ok(got),
            Ok(Ok(0)) => return Err("the server ended in the middle of a frame".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) if is_closed(&e) => return Ok(got),
            Ok(Err(e)) => return Err(format!("read: {e}")),
        }
    }
}

/// The next `n` frames the server sends, within `limit`.
async fn frames<R: AsyncRead + Unpin>(
    r: &mut R,
    n: usize,
    limit: Duration,
) -> Result<Vec<Message>, String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    while got.len() < n {
        if let Some(m) = decode_frame(&mut buf, MAX_FRAME_LEN)
            .map_err(|e| format!("the server sent a malformed frame: {e}"))?
        {
            got.push(m);
            continue;
        }
        match tokio::time::timeout_at(deadline, r.read_buf(&mut buf)).await {
            Err(_) => return Err(format!("only {} frames within {limit:?}", got.len())),
            Ok(Ok(0)) => return Err(format!("closed after {}", summary(&got))),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("read: {e}")),
        }
    }
    Ok(got)
}

/// Is `m` the server's `BadRequest` about the connection (`req_id` 0)
/// whose message contains `text`?
fn is_bad_request(m: &Message, text: &str) -> bool {
    matches!(m, Message::Error { req_id: 0, code: ErrorCode::BadRequest, message } if message.contains(text))
}

/// A `peershare serve` sharing one file of [`FILE_LEN`] random bytes, and
/// an honest client for it.
struct Target {
    // Declared first: killed before the sandbox is removed.
    serve: Serve,
    sb: Sandbox,
    content: Vec<u8>,
    id: String,
    client: PathBuf,
}

impl Target {
    fn start(seed: u64, serve_args: &[&str]) -> Self {
        let sb = Sandbox::new();
        let content = random_bytes(FILE_LEN, seed);
        let file = sb.write("shared.bin", &content);
        let data = sb.data("srv");
        let id = sb.share_one(&data, &file);
        assert_eq!(id, expected_id(&content));
        let serve = sb.serve(&data, serve_args);
        let client = sb.data("client");
        Self {
            serve,
            sb,
            content,
            id,
            client,
        }
    }

    fn pid(&self) -> u32 {
        self.serve.kid.pid()
    }

    fn addr(&self) -> SocketAddr {
        self.serve.addr
    }

    fn file_id(&self) -> FileId {
        self.id.parse().expect("a file ID")
    }

    /// `peershare get` of the shared file into a new path: it must succeed
    /// with the right bytes. Returns how long it took.
    #[track_caller]
    fn honest_get(&self, label: &str) -> Duration {
        let out = self.sb.path(&format!("got-{label}.bin"));
        let started = Instant::now();
        let res = self.sb.get(
            &self.client,
            &self.id,
            &[&self.serve.peer()],
            Some(&out),
            &[],
        );
        let took = started.elapsed();
        assert!(
            res.status.success(),
            "the honest get ({label}) failed: {:?}\n{}\nserve log:\n{}",
            res.status,
            res.stderr,
            self.serve.log()
        );
        assert_same_file(&out, &self.content);
        took
    }

    /// A first honest transfer, so that what serving allocates once
    /// (worker threads, their allocator arenas, buffers) is in a baseline
    /// taken afterwards; returns once the server has released it.
    fn warm_up(&self) -> Duration {
        let took = self.honest_get("warm-up");
        wait_until(
            "the warm-up connection to be released",
            RELEASE_DEADLINE,
            || connections(self.pid(), self.addr().port()) == 0,
        );
        took
    }

    /// The server is still running and logged no panic.
    #[track_caller]
    fn assert_alive(&mut self) {
        assert_eq!(
            self.serve.kid.try_status(),
            None,
            "serve exited; log:\n{}",
            self.serve.log()
        );
        let log = self.serve.log();
        assert!(!log.contains("panicked"), "serve panicked:\n{log}");
    }
}

// ------------------------------------------------------------------ tests

/// Slowloris: a thousand connections that never send a byte, from 40
/// addresses. The server accepts and holds them all at little cost,
/// serves an honest client meanwhile, closes each once its handshake
/// timeout has passed, and releases every one.
#[test]
fn slowloris_a_thousand_silent_connections_are_cheap_and_closed_after_the_handshake_timeout() {
    const IDLE: usize = 1000;
    // Under the default per-address limit, so every one is accepted and
    // held rather than refused as busy: the costly case for the server.
    const PER_ADDRESS: usize = 25;
    // Opened this many at a time, each batch once the last is accepted, so
    // the listener's backlog never overflows (a burst beyond it makes the
    // kernel drop handshakes that complete only after retransmissions,
    // seconds later). The point here is what holding them all costs.
    const BATCH: usize = 50;
    let defaults = ServerConfig::default();
    assert!(PER_ADDRESS < defaults.max_connections_per_ip);
    let limit = raise_fd_limit();
    assert!(
        limit >= 2 * IDLE as u64 + 512,
        "open-file limit {limit} is too low for {IDLE} connections at both ends"
    );
    // By default at most 128 handshakes are pending, a newcomer closing the
    // oldest (the next test): room for all of them here, to measure what
    // holding them costs. The default per-address limit stays.
    let max_pending = (IDLE + 100).to_string();
    let mut t = Target::start(1, &["--max-pending-handshakes", &max_pending]);
    let (pid, addr) = (t.pid(), t.addr());
    let held = || connections(pid, addr.port());
    let warm = t.warm_up();
    let before = Mem::of(pid);

    let rt = runtime();
    let hs = defaults.handshake_timeout;
    let deadline = hs + CLOSE_MARGIN;
    let started = Instant::now();
    let idle = open_silent(&rt, addr, IDLE, PER_ADDRESS, BATCH, deadline, |opened| {
        // Accepted by the server, not just queued by the kernel.
        wait_until(
            "the server to accept the silent connections",
            hs / 4,
            || held() >= opened,
        );
    });
    let opened_in = started.elapsed();
    let holding = Mem::of(pid);

    let took = t.honest_get("under-slowloris");
    let still = held();
    assert!(
        still >= IDLE,
        "the silent connections were not all held while the honest get ran: {still} left"
    );
    let during = Mem::of(pid);

    let closed = all_closed(&rt, idle);
    wait_until(
        "the server to release every silent connection",
        RELEASE_DEADLINE,
        || held() == 0,
    );
    let after = Mem::of(pid);
    t.assert_alive();

    eprintln!(
        "slowloris: {IDLE} silent connections from {} addresses, all open and accepted within {opened_in:?}; \
         each closed by the server {:?} to {:?} after it opened (handshake timeout {hs:?}); \
         honest get {took:?} while all were held ({warm:?} before)",
        IDLE.div_ceil(PER_ADDRESS),
        closed.iter().min().expect("some"),
        closed.iter().max().expect("some"),
    );
    eprintln!(
        "slowloris: serve VmRSS {:.1} MiB before, {:.1} MiB holding them, {:.1} MiB after the get, \
         {:.1} MiB after; VmHWM {:.1} MiB; VmSize {:.1} -> {:.1} MiB",
        mib(before.rss),
        mib(holding.rss),
        mib(during.rss),
        mib(after.rss),
        mib(after.hwm),
        mib(before.size),
        mib(during.size)
    );
    assert!(
        after.hwm.saturating_sub(before.rss) < RSS_BOUND,
        "holding {IDLE} silent connections took the server from {:.1} MiB to a peak of {:.1} MiB",
        mib(before.rss),
        mib(after.hwm)
    );
}

/// Slowloris with the default limits: a thousand silent connections from
/// 40 addresses, more than every default limit but the per-address one.
/// Past `max_pending_handshakes` (128) each newcomer closes the oldest
/// silent one, so the server never holds more than that many, an honest
/// client is served while the attack goes on, and every silent connection
/// is closed well within the handshake timeout.
#[test]
fn slowloris_with_default_limits_cannot_lock_an_honest_client_out() {
    const IDLE: usize = 1000;
    const PER_ADDRESS: usize = 25;
    const BATCH: usize = 50;
    let defaults = ServerConfig::default();
    assert!(IDLE > defaults.max_connections + defaults.max_pending_handshakes);
    let limit = raise_fd_limit();
    assert!(
        limit >= 2 * IDLE as u64 + 512,
        "open-file limit {limit} too low"
    );
    let t = Target::start(5, &[]);
    let (pid, addr) = (t.pid(), t.addr());
    let held = || connections(pid, addr.port());
    t.warm_up();
    let before = Mem::of(pid);
    let rt = runtime();
    let hs = defaults.handshake_timeout;
    let mut most_held = 0;
    let idle = open_silent(
        &rt,
        addr,
        IDLE,
        PER_ADDRESS,
        BATCH,
        hs + CLOSE_MARGIN,
        |_| {
            most_held = most_held.max(held());
        },
    );
    // The attack goes on: every silent connection is open on its side.
    let took = t.honest_get("under-default-slowloris");
    let during = Mem::of(pid);
    let closed = all_closed(&rt, idle);
    wait_until(
        "the server to release every silent connection",
        RELEASE_DEADLINE,
        || held() == 0,
    );
    let after = Mem::of(pid);
    eprintln!(
        "default slowloris: {IDLE} silent connections; server held at most {most_held}; \
         honest get {took:?}; closed {:?} to {:?} after opening; VmRSS {:.1} -> {:.1} MiB, VmHWM {:.1} MiB",
        closed.iter().min().expect("some"),
        closed.iter().max().expect("some"),
        mib(before.rss),
        mib(during.rss),
        mib(after.hwm)
    );
    // (Evicted connections take a moment to close: a batch's worth of
    // slack. Without eviction it would hold all of them.)
    assert!(
        most_held <= defaults.max_pending_handshakes + BATCH,
        "the server held {most_held} silent connections"
    );
    assert!(
        after.hwm.saturating_sub(before.rss) < RSS_BOUND,
        "the attack took the server from {:.1} MiB to a peak of {:.1} MiB",
        mib(before.rss),
        mib(after.hwm)
    );
}

/// Opens `n` silent connections to `to`, `per_address` from each attacker
/// address, `batch` at a time, each watched by a task (see [`silent`]) that
/// expects the server to close it within `limit`; `after_batch` runs with
/// the count opened so far once each batch is open.
fn open_silent(
    rt: &tokio::runtime::Runtime,
    to: SocketAddr,
    n: usize,
    per_address: usize,
    batch: usize,
    limit: Duration,
    mut after_batch: impl FnMut(usize),
) -> Vec<tokio::task::JoinHandle<Result<Duration, String>>> {
    let mut idle = Vec::with_capacity(n);
    while idle.len() < n {
        let (opened_tx, opened_rx) = mpsc::channel();
        let range = idle.len()..(idle.len() + batch).min(n);
        for i in range.clone() {
            let from = attacker(i / per_address);
            idle.push(rt.spawn(silent(i, from, to, limit, opened_tx.clone())));
        }
        drop(opened_tx);
        for _ in range {
            opened_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("every silent connection is opened")
                .unwrap_or_else(|e| panic!("{e}"));
        }
        after_batch(idle.len());
    }
    idle
}

/// Waits for every silent connection's task: how long after opening the
/// server closed each (a task that saw otherwise fails the test).
fn all_closed(
    rt: &tokio::runtime::Runtime,
    idle: Vec<tokio::task::JoinHandle<Result<Duration, String>>>,
) -> Vec<Duration> {
    rt.block_on(async {
        let mut closed = Vec::with_capacity(idle.len());
        for task in idle {
            closed.push(
                task.await
                    .expect("connection task")
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        closed
    })
}

/// Silent connection `i`, from `from`: says on `opened` that it is open,
/// then waits for the server to end it, at most `limit`. Returns how long
/// after opening that was.
async fn silent(
    i: usize,
    from: Ipv4Addr,
    to: SocketAddr,
    limit: Duration,
    opened: mpsc::Sender<Result<(), String>>,
) -> Result<Duration, String> {
    let mut s = match tcp_from(from, to, None).await {
        Ok(s) => s,
        Err(e) => {
            let e = format!("silent connection #{i} from {from}: {e}");
            let _ = opened.send(Err(e.clone()));
            return Err(e);
        }
    };
    let since = Instant::now();
    let _ = opened.send(Ok(()));
    let mut got = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut got)).await {
        Err(_) => Err(format!(
            "silent connection #{i} from {from} still open {limit:?} after it was opened"
        )),
        Ok(Err(e)) if !is_closed(&e) => Err(format!("silent connection #{i}: read: {e}")),
        Ok(_) if !got.is_empty() => Err(format!(
            "the server sent {} bytes to silent connection #{i}",
            got.len()
        )),
        Ok(_) => Ok(since.elapsed()),
    }
}

/// A frame declared 4 GiB long (`ff ff ff ff`), then a trickle of bytes, as
/// the first frame and after a valid `Hello`, from 64 connections at once:
/// each is answered with an error about the length and closed at once,
/// the server reserves nothing for the declared length, and an honest
/// client is served afterwards.
#[test]
fn a_4_gib_length_prefix_is_refused_at_once_and_costs_nothing() {
    const CONNS: usize = 64;
    const PER_ADDRESS: usize = 16;
    let mut t = Target::start(2, &[]);
    let pid = t.pid();
    let addr = t.addr();
    t.warm_up();
    let before = Mem::of(pid);
    let rt = runtime();
    let attacks: Vec<_> = (0..CONNS)
        .map(|i| {
            let after_hello = i % 2 == 0;
            rt.spawn(async move {
                let (mut r, mut w, me) = tls_from(attacker(i / PER_ADDRESS), addr, None).await?;
                if after_hello {
                    send(&mut w, &hello(me))
                        .await
                        .map_err(|e| format!("send Hello: {e}"))?;
                }
                send(&mut w, &[0xFF; 4])
                    .await
                    .map_err(|e| format!("send the length: {e}"))?;
                let sent = Instant::now();
                // The "rest of the frame", a byte at a time, until the
                // server stops taking it.
                let trickle = tokio::spawn(async move {
                    for b in 0..=u8::MAX {
                        if send(&mut w, &[b]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
                let got = frames_until_closed(&mut r, PROMPTLY).await;
                let took = sent.elapsed();
                trickle.abort();
                let got = got?;
                let answered = match got.as_slice() {
                    [Message::Hello(_), e] if after_hello => is_bad_request(e, "exceeds"),
                    [e] if !after_hello => is_bad_request(e, "exceeds"),
                    _ => false,
                };
                if !answered {
                    return Err(format!(
                        "expected {}a BadRequest about the frame's length, got {}",
                        if after_hello { "Hello, then " } else { "" },
                        summary(&got)
                    ));
                }
                Ok(took)
            })
        })
        .collect();
    let took: Vec<Duration> = rt.block_on(async {
        let mut took = Vec::new();
        for a in attacks {
            took.push(
                a.await
                    .expect("attack task")
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        took
    });
    wait_until(
        "the server to release the attack connections",
        RELEASE_DEADLINE,
        || connections(pid, addr.port()) == 0,
    );
    // Measured before the honest get, whose chunk reads may start threads
    // (and their allocator arenas) that have nothing to do with this.
    let after = Mem::of(pid);
    let took_get = t.honest_get("after-4-gib-prefixes");
    t.assert_alive();
    eprintln!(
        "4 GiB prefix: {CONNS} connections closed {:?} to {:?} after the prefix; honest get {took_get:?} after",
        took.iter().min().expect("some"),
        took.iter().max().expect("some")
    );
    eprintln!(
        "4 GiB prefix: serve VmRSS {:.1} -> {:.1} MiB (VmHWM {:.1} MiB); VmSize {:.1} -> {:.1} MiB \
         (VmPeak {:.1} -> {:.1} MiB)",
        mib(before.rss),
        mib(after.rss),
        mib(after.hwm),
        mib(before.size),
        mib(after.size),
        mib(before.peak),
        mib(after.peak)
    );
    assert!(
        after.hwm.saturating_sub(before.rss) < RSS_BOUND,
        "resident memory went from {:.1} MiB to a peak of {:.1} MiB",
        mib(before.rss),
        mib(after.hwm)
    );
    assert!(
        after.peak.saturating_sub(before.peak) < ADDRESS_SPACE_BOUND,
        "the server's peak address space went from {:.1} MiB to {:.1} MiB: room reserved for a declared length?",
        mib(before.peak),
        mib(after.peak)
    );
}

/// Clients that send 20,000 chunk requests each and never read an answer:
/// TCP back-pressure stops them (the server reads a request only while
/// fewer than `max_requests_in_flight` are being answered), an honest
/// client is served meanwhile, the server's memory stays bounded, and the
/// answers it did send are the right chunks in order.
#[test]
fn a_request_flood_that_never_reads_is_stopped_by_back_pressure() {
    const FLOODERS: usize = 4;
    const REQUESTS: u32 = 20_000;
    /// The flooders' send buffer, bytes, fixed so that the kernel cannot
    /// soak up the flood: what a flooder gets written beyond the kernel's
    /// buffers, the server has read.
    const FLOOD_SEND_BUFFER: u32 = 64 * 1024;
    /// Written by each flooder before the honest get starts, bytes: far
    /// more requests than are ever answered at once.
    const FLOOD_UNDER_WAY: u64 = 32 * 1024;
    let mut t = Target::start(3, &[]);
    let pid = t.pid();
    let addr = t.addr();
    let id = t.file_id();
    let chunk = chunk_size_for(FILE_LEN as u64) as usize;
    let chunks = chunk_count(FILE_LEN as u64, chunk as u32) as u32;
    let mut requests = BytesMut::new();
    for i in 0..REQUESTS {
        Message::GetChunk {
            req_id: i + 1,
            id,
            index: i % chunks,
        }
        .encode(&mut requests)
        .expect("a request encodes");
    }
    let requests = requests.freeze();
    t.warm_up();
    let before = Mem::of(pid);
    let rt = runtime();

    let mut readers = Vec::new();
    let mut writers = Vec::new();
    let mut progress = Vec::new();
    for _ in 0..FLOODERS {
        let (r, mut w, me) = rt
            .block_on(tls_from(attacker(0), addr, Some(FLOOD_SEND_BUFFER)))
            .unwrap_or_else(|e| panic!("{e}"));
        let sent = Arc::new(AtomicU64::new(0));
        let (requests, counter) = (requests.clone(), sent.clone());
        writers.push(rt.spawn(async move {
            send(&mut w, &hello(me)).await?;
            for piece in requests.chunks(4096) {
                send(&mut w, piece).await?;
                counter.fetch_add(piece.len() as u64, Ordering::Relaxed);
            }
            Ok::<_, std::io::Error>(w)
        }));
        readers.push(r);
        progress.push(sent);
    }
    wait_until("the flood to be under way", Duration::from_secs(10), || {
        progress
            .iter()
            .all(|p| p.load(Ordering::Relaxed) >= FLOOD_UNDER_WAY)
    });
    let took = t.honest_get("under-flood");
    let during = Mem::of(pid);
    let sent: Vec<u64> = progress.iter().map(|p| p.load(Ordering::Relaxed)).collect();
    let total = requests.len() as u64;
    eprintln!(
        "flood: {FLOODERS} clients x {REQUESTS} chunk requests ({total} bytes each), never reading; \
         written when the honest get ({took:?}) ended: {sent:?}"
    );
    eprintln!(
        "flood: serve VmRSS {:.1} -> {:.1} MiB (VmHWM {:.1} MiB); chunk {chunk} bytes",
        mib(before.rss),
        mib(during.rss),
        mib(during.hwm)
    );
    for (n, s) in sent.iter().enumerate() {
        assert!(
            *s < total,
            "flooder {n} got all {total} bytes of requests written without reading an answer: \
             the server kept reading requests it could not answer"
        );
    }
    assert!(
        during.hwm.saturating_sub(before.rss) < RSS_BOUND,
        "the flood took the server from {:.1} MiB to a peak of {:.1} MiB",
        mib(before.rss),
        mib(during.hwm)
    );

    // What the server did answer is right, in order: a flooder that starts
    // reading gets its first chunks.
    const CHECKED: usize = 16;
    let got = rt
        .block_on(frames(
            &mut readers[0],
            1 + CHECKED,
            Duration::from_secs(10),
        ))
        .unwrap_or_else(|e| panic!("the first flooder's answers: {e}"));
    assert!(matches!(got[0], Message::Hello(_)), "{}", summary(&got));
    for (k, m) in got[1..].iter().enumerate() {
        let index = k as u32 % chunks;
        let start = index as usize * chunk;
        let want = &t.content[start..(start + chunk).min(FILE_LEN)];
        assert!(
            matches!(m, Message::Chunk { req_id, index: i, data }
                if *req_id == k as u32 + 1 && *i == index && data[..] == *want),
            "answer {k}: expected chunk {index} of request {}, got {}",
            k + 1,
            summary(std::slice::from_ref(m))
        );
    }

    // Gone flooders free their connections on the server.
    for w in &writers {
        w.abort();
    }
    rt.block_on(async {
        for w in writers {
            let _ = w.await;
        }
    });
    drop(readers);
    wait_until(
        "the server to release the flood connections",
        RELEASE_DEADLINE,
        || connections(pid, addr.port()) == 0,
    );
    t.assert_alive();
}

/// Random garbage, on 180 connections one after the other: raw on TCP
/// (it fails the TLS handshake), inside TLS instead of a `Hello`, and
/// inside TLS after a valid `Hello`. Each is closed promptly, the TLS ones
/// with a `BadRequest`; an honest client is served during and after, and
/// the server does not die.
#[test]
fn random_garbage_ends_only_its_own_connection() {
    const ROUNDS: usize = 60;
    const ADDRESSES: usize = 8;
    let mut t = Target::start(4, &[]);
    let pid = t.pid();
    let addr = t.addr();
    let rt = runtime();
    let barrage = rt.spawn(async move {
        let mut alerts = 0;
        let mut slowest = Duration::ZERO;
        for i in 0..ROUNDS * 3 {
            let from = attacker(i % ADDRESSES);
            let seed = 100 + i as u64;
            let started = Instant::now();
            match i % 3 {
                0 => {
                    // Not TLS at all. Longer than the largest TLS record,
                    // so the server never waits for more.
                    let mut s = tcp_from(from, addr, None)
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    let _ = send(&mut s, &random_bytes(20 * 1024, seed)).await;
                    let mut got = Vec::new();
                    match tokio::time::timeout(PROMPTLY, s.read_to_end(&mut got)).await {
                        Err(_) => {
                            return Err(format!("raw garbage #{i}: still open after {PROMPTLY:?}"));
                        }
                        Ok(Err(e)) if !is_closed(&e) => {
                            return Err(format!("raw garbage #{i}: {e}"));
                        }
                        Ok(_) => {}
                    }
                    // At most a TLS alert record, never a peershare frame.
                    match got.first() {
                        None => {}
                        Some(0x15) => alerts += 1,
                        Some(_) => {
                            return Err(format!(
                                "raw garbage #{i}: the server answered {:02x?}",
                                &got[..got.len().min(16)]
                            ));
                        }
                    }
                }
                kind => {
                    let after_hello = kind == 2;
                    let (mut r, mut w, me) = tls_from(from, addr, None).await?;
                    if after_hello {
                        send(&mut w, &hello(me))
                            .await
                            .map_err(|e| format!("send Hello: {e}"))?;
                    }
                    // At least one whole frame of any declared length the
                    // server accepts: it never waits for more.
                    let _ = send(&mut w, &random_bytes(10 * 1024, seed)).await;
                    let got = frames_until_closed(&mut r, PROMPTLY)
                        .await
                        .map_err(|e| format!("TLS garbage #{i}: {e}"))?;
                    let refused = match got.as_slice() {
                        [Message::Hello(_), e] if after_hello => {
                            is_bad_request(e, "malformed frame")
                        }
                        [e] if !after_hello => is_bad_request(e, "expected a peershare handshake"),
                        _ => false,
                    };
                    if !refused {
                        return Err(format!(
                            "TLS garbage #{i} ({}): expected a BadRequest, got {}",
                            if after_hello {
                                "after Hello"
                            } else {
                                "instead of Hello"
                            },
                            summary(&got)
                        ));
                    }
                }
            }
            slowest = slowest.max(started.elapsed());
        }
        Ok::<_, String>((alerts, slowest))
    });
    let during = t.honest_get("during-garbage");
    let (alerts, slowest) = rt
        .block_on(barrage)
        .expect("garbage task")
        .unwrap_or_else(|e| panic!("{e}"));
    let after = t.honest_get("after-garbage");
    t.assert_alive();
    wait_until(
        "the server to release the garbage connections",
        RELEASE_DEADLINE,
        || connections(pid, addr.port()) == 0,
    );
    let mem = Mem::of(pid);
    eprintln!(
        "garbage: {} connections, slowest {slowest:?}, {alerts} of {ROUNDS} raw ones answered with a TLS alert; \
         honest get {during:?} during, {after:?} after; serve VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        ROUNDS * 3,
        mib(mem.rss),
        mib(mem.hwm)
    );
}

/// Clients that ask for chunks of 8 MiB (a shared file over 4 GiB) and
/// never read the answers, 32 connections from one address (the default
/// per-address limit), 20 requests each. Regression (issue #10): each
/// connection held the chunks of its answers in memory, six of them with
/// the default `max_requests_in_flight`, so this took `serve` from 7 MB to
/// 1.5 GB and held it, the write timeout covering a whole chunk. Now a
/// connection buffers at most two slices of a chunk, each connection is
/// closed once it has taken nothing for the write timeout, and an honest
/// client is served meanwhile.
#[test]
fn clients_that_ask_for_large_chunks_and_never_read_hold_little_and_are_closed() {
    const CONNS: usize = 32;
    const REQUESTS: u32 = 20;
    /// Just over 4 GiB: the largest chunks. Sparse, so it costs no disk.
    const BIG: u64 = (4 << 30) + 1;
    const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
    assert_eq!(CONNS, ServerConfig::default().max_connections_per_ip);
    let chunk = chunk_size_for(BIG);
    assert_eq!(chunk, peershare_proto::manifest::MAX_CHUNK_SIZE);
    let sb = Sandbox::new();
    let big = sb.path("big.bin");
    fs::File::create(&big)
        .and_then(|f| f.set_len(BIG))
        .expect("a sparse file");
    let content = random_bytes(FILE_LEN, 6);
    let small = sb.write("shared.bin", &content);
    let data = sb.data("srv");
    let shared = sb.share(&data, &[&big, &small], None);
    let (big_id, id): (FileId, String) = (
        str_field(&shared[0], "id").parse().expect("a file ID"),
        str_field(&shared[1], "id").to_owned(),
    );
    assert_eq!(id, expected_id(&content));
    let timeout = WRITE_TIMEOUT.as_secs().to_string();
    let serve = sb.serve(&data, &["--write-timeout", &timeout]);
    let client = sb.data("client");
    let mut t = Target {
        serve,
        sb,
        content,
        id,
        client,
    };
    let (pid, addr) = (t.pid(), t.addr());
    let held = || connections(pid, addr.port());
    t.warm_up();
    let before = Mem::of(pid);

    let mut requests = BytesMut::new();
    for i in 0..REQUESTS {
        Message::GetChunk {
            req_id: i + 1,
            id: big_id,
            index: i,
        }
        .encode(&mut requests)
        .expect("a request encodes");
    }
    let rt = runtime();
    // Kept, never read, until the end of the test.
    let attackers: Vec<(BoxRead, BoxWrite)> = rt.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..CONNS {
            let (r, mut w, me) = tls_from(attacker(0), addr, None)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            send(&mut w, &hello(me)).await.expect("send Hello");
            send(&mut w, &requests).await.expect("send the requests");
            conns.push((r, w));
        }
        conns
    });
    let asked = Instant::now();
    wait_until(
        "the server to hold every attack connection",
        Duration::from_secs(10),
        || held() >= CONNS,
    );
    let took = t.honest_get("under-non-readers");
    let during = Mem::of(pid);
    let peak = during.hwm.saturating_sub(before.rss);
    assert!(
        peak < RSS_BOUND,
        "{CONNS} connections asking for 8 MiB chunks without reading took the server from \
         {:.1} MiB to a peak of {:.1} MiB",
        mib(before.rss),
        mib(during.hwm)
    );
    wait_until(
        "the server to close every attack connection",
        WRITE_TIMEOUT + CLOSE_MARGIN,
        || held() == 0,
    );
    let closed_after = asked.elapsed();
    let after = Mem::of(pid);
    let took_after = t.honest_get("after-non-readers");
    t.assert_alive();
    drop(attackers);
    eprintln!(
        "non-readers: {CONNS} connections x {REQUESTS} requests for {} MiB chunks, never reading; \
         all closed {closed_after:?} after asking (write timeout {WRITE_TIMEOUT:?}); honest get \
         {took:?} during, {took_after:?} after",
        chunk / MIB as u32
    );
    eprintln!(
        "non-readers: serve VmRSS {:.1} MiB before, {:.1} MiB holding them, {:.1} MiB after; \
         VmHWM {:.1} MiB",
        mib(before.rss),
        mib(during.rss),
        mib(after.rss),
        mib(after.hwm)
    );
    assert!(
        closed_after >= WRITE_TIMEOUT,
        "closed after {closed_after:?}: before the write timeout"
    );
    assert!(
        after.hwm.saturating_sub(before.rss) < RSS_BOUND,
        "the server's resident memory went from {:.1} MiB to a peak of {:.1} MiB",
        mib(before.rss),
        mib(after.hwm)
    );
}

/// A manifest read that never returns (a FIFO nobody writes in place of
/// the manifest file, as a hung disk or network filesystem would behave)
/// keeps neither another client from being served nor `serve` from
/// exiting on SIGTERM: the read is on the blocking pool, `Server::run`
/// does not wait for it, and the binary's runtime is shut down with a
/// timeout rather than waiting for it forever.
#[test]
fn a_stuck_manifest_read_does_not_keep_serve_from_exiting() {
    use std::os::unix::ffi::OsStrExt;
    let mut t = Target::start(7, &[]);
    let (pid, addr) = (t.pid(), t.addr());
    let stuck = random_bytes(100_000, 8);
    let file = t.sb.write("stuck.bin", &stuck);
    let data = t.sb.data("srv");
    let id = t.sb.share_one(&data, &file);
    let manifest = data.join(format!("manifests/{id}.manifest"));
    fs::remove_file(&manifest).expect("remove the manifest");
    let c = std::ffi::CString::new(manifest.as_os_str().as_bytes()).expect("a path");
    // SAFETY: a plain syscall on a NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
    // Held open for writing (O_RDWR never blocks on a FIFO), so the
    // server's open succeeds and its read waits.
    let _writer = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&manifest)
        .expect("open the FIFO");
    let fifo = fs::canonicalize(&manifest).expect("the FIFO's path");
    let rt = runtime();
    let conn = rt.block_on(async {
        let (r, mut w, me) = tls_from(attacker(0), addr, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        send(&mut w, &hello(me)).await.expect("send Hello");
        let ask = Message::GetManifest {
            req_id: 1,
            id: id.parse().expect("a file ID"),
        };
        send(&mut w, &ask.to_frame().expect("encodes"))
            .await
            .expect("send GetManifest");
        (r, w)
    });
    let reading_fifo = || {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| fs::read_link(e.path()).is_ok_and(|l| l == fifo))
            })
            .unwrap_or(false)
    };
    wait_until(
        "serve to be stuck reading the manifest",
        Duration::from_secs(10),
        reading_fifo,
    );
    t.honest_get("while-a-read-is-stuck");
    t.assert_alive();
    let Target { serve, .. } = t;
    let started = Instant::now();
    let log = serve.log();
    let (status, _) = serve.stop("TERM");
    let took = started.elapsed();
    assert!(
        status.success(),
        "serve exited with {status:?} on SIGTERM; log:\n{log}"
    );
    eprintln!("stuck read: serve exited {took:?} after SIGTERM");
    drop(conn);
}
