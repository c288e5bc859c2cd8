//! One function per subcommand; each resolves its options and calls the
//! engine. Output goes to stdout (results) and stderr (progress, errors).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use peershare::download::{DownloadConfig, DownloadRequest, Output, Progress};
use peershare::store::Entry;
use peershare::{
    ClientConfig, DownloadError, Library, PeerConn, PeerError, Server, ServerConfig, ShareProgress,
    StoreError, Tls,
};
use peershare_proto::{FileId, NodeId, Ticket};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::cli::{
    Cli, Command, GetArgs, LsArgs, ServeArgs, ShareArgs, SharedArgs, TicketArgs, TrustCommand,
    UnshareArgs,
};
use crate::lan;
use crate::progress;
use crate::{Failure, exit};

/// Default TCP port, the prototype's.
pub const DEFAULT_PORT: u16 = 9000;
/// How often `get` asks the LAN again for peers that could join.
const REDISCOVER_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn run(cli: Cli) -> Result<(), Failure> {
    let data_dir = resolve_data_dir(cli.data_dir)?;
    let quiet = cli.quiet;
    match cli.command {
        Command::Share(a) => share(&data_dir, a, quiet).await,
        Command::Unshare(a) => unshare(&data_dir, a),
        Command::Shared(a) => shared(&data_dir, a),
        Command::Serve(a) => serve(&data_dir, a).await,
        Command::Ls(a) => ls(&data_dir, a).await,
        Command::Get(a) => get(&data_dir, a, quiet).await,
        Command::Peers(a) => peers(&data_dir, a).await,
        Command::Id(a) => id(&data_dir, a.json),
        Command::Trust(a) => trust(&data_dir, a),
    }
}

fn resolve_data_dir(given: Option<PathBuf>) -> Result<PathBuf, Failure> {
    match given {
        Some(d) if d.as_os_str().is_empty() => Err(Failure::new(exit::USAGE, "--data-dir must not be empty")),
        Some(d) => Ok(d),
        None => dirs::data_dir().map(|d| d.join("peershare")).ok_or_else(|| {
            Failure::new(
                exit::USAGE,
                "cannot find a data directory (no $HOME or $XDG_DATA_HOME); pass --data-dir DIR",
            )
        }),
    }
}

fn open_library(dir: &Path) -> Result<Library, Failure> {
    Library::open(dir).map_err(store_failure)
}

/// `PEERSHARE_INSECURE_PLAINTEXT=1`: only a build with the
/// `insecure-plaintext` feature asks.
#[cfg(feature = "insecure-plaintext")]
fn plaintext_requested() -> bool {
    std::env::var("PEERSHARE_INSECURE_PLAINTEXT").is_ok_and(|v| v == "1")
}

/// This node's TLS endpoint, from its key in the data dir (created on
/// first use). A build with the `insecure-plaintext` feature (benchmarks
/// only) skips encryption when `PEERSHARE_INSECURE_PLAINTEXT=1`.
fn open_tls(lib: &Library) -> Result<Tls, Failure> {
    let identity = lib.identity().map_err(store_failure)?;
    #[cfg(feature = "insecure-plaintext")]
    if plaintext_requested() {
        eprintln!(
            "peershare: warning: PEERSHARE_INSECURE_PLAINTEXT: connections are NOT encrypted"
        );
        return Ok(Tls::plaintext(&identity));
    }
    Ok(Tls::new(&identity))
}

fn store_failure(e: StoreError) -> Failure {
    let code = match e {
        StoreError::NotShared(_) => exit::NOT_FOUND,
        _ => exit::LOCAL,
    };
    Failure::new(code, e)
}

/// Text that came from a peer (names, error messages), made safe to print:
/// control characters (newlines, escape sequences) are shown escaped, so a
/// peer can neither forge output lines nor drive the terminal.
pub fn printable(s: &str) -> String {
    peershare::error::printable(s).into_owned()
}

/// A path made safe to print, as [`printable`]: local paths can hold
/// control characters too (`-o` names, files from elsewhere).
fn printable_path(p: &Path) -> String {
    printable(&p.display().to_string())
}

/// The name a download from `ticket` is known by: the ticket's, when it is
/// a valid shared name. A ticket is a peer's text, and a name no node may
/// list (control characters, `..`, absolute...) is never used: without
/// `-o` there is then no name to save the file under, and the ticket is
/// refused (status 2); with `-o` (`output`) the download goes on as if
/// given the file ID, and a warning says so.
fn ticket_name(ticket: &Ticket, output: Option<&Path>) -> Result<Option<String>, Failure> {
    let why = match ticket.shared_name() {
        Ok(name) => return Ok(Some(name.to_owned())),
        Err(why) => why,
    };
    let name = &ticket.name;
    if output.is_none() {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "the ticket names the file {name:?}, which {why}: no node lists such a name (the ticket was \
                 made by a broken or hostile program); to download the file anyway, choose where to \
                 save it with -o PATH"
            ),
        ));
    }
    eprintln!(
        "peershare: warning: ignoring the ticket's name {name:?}, which {why}; downloading as if given only the file ID"
    );
    Ok(None)
}

/// Writes to stdout; a closed pipe (`| head`) ends quietly, not as an error.
fn out(text: &str) {
    let mut o = io::stdout().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("peershare: error: writing output: {e}");
        std::process::exit(exit::FAILURE as i32);
    }
}

fn out_json<T: Serialize>(value: &T) {
    out(&(serde_json::to_string_pretty(value).expect("serializable") + "\n"));
}

#[derive(Serialize)]
struct SharedFile {
    id: String,
    name: String,
    size: u64,
    path: PathBuf,
    /// Left out of this node's catalog: only a ticket or the ID finds it.
    unlisted: bool,
    ticket: String,
}

/// Addresses to put in tickets: those given with `--addr`, else this
/// machine's non-loopback addresses, else loopback.
fn ticket_addrs(t: &TicketArgs) -> Vec<SocketAddr> {
    if !t.addrs.is_empty() {
        return t.addrs.clone();
    }
    let port = t.port;
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast())
        .filter(|ip| match ip {
            // Link-local IPv6 needs a scope ID that tickets do not carry.
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => true,
        })
        .collect();
    ips.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    ips.dedup();
    if ips.is_empty() {
        ips.push(IpAddr::from([127, 0, 0, 1]));
    }
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

fn describe(e: &Entry, node: NodeId, addrs: &[SocketAddr]) -> SharedFile {
    let id: FileId = e.id.parse().expect("library holds valid IDs");
    SharedFile {
        id: e.id.clone(),
        name: e.name.clone(),
        size: e.size,
        path: e.path.clone(),
        unlisted: e.unlisted,
        ticket: Ticket {
            id,
            node,
            size: e.size,
            unlisted: e.unlisted,
            name: e.name.clone(),
            addrs: addrs.to_vec(),
        }
        .to_string(),
    }
}

async fn share(dir: &Path, a: ShareArgs, quiet: bool) -> Result<(), Failure> {
    let lib = open_library(dir)?;
    let counters = Arc::new(ShareProgress::default());
    let bar = progress::hashing(counters.clone(), quiet);
    let paths = a.paths.clone();
    let lib2 = lib.clone();
    let c2 = counters.clone();
    let node = lib.node_id().map_err(store_failure)?;
    let unlisted = a.unlisted;
    let result = tokio::task::spawn_blocking(move || lib2.share_as(&paths, &c2, unlisted))
        .await
        .expect("share does not panic");
    bar.finish().await;
    let shared = result.map_err(store_failure)?;
    let addrs = ticket_addrs(&a.ticket);
    if a.json.json {
        let files: Vec<_> = shared
            .iter()
            .map(|s| describe(&s.entry, node, &addrs))
            .collect();
        out_json(&files);
    } else {
        let mut text = String::new();
        for s in &shared {
            text.push_str(&format!(
                "{}  {}{}\n",
                s.entry.id,
                printable(&s.entry.name),
                unlisted_mark(&s.entry)
            ));
        }
        out(&text);
    }
    Ok(())
}

fn unshare(dir: &Path, a: UnshareArgs) -> Result<(), Failure> {
    let lib = open_library(dir)?;
    let removed = lib.unshare(&a.targets).map_err(store_failure)?;
    if a.json.json {
        let files = removed
            .files
            .iter()
            .map(|e| serde_json::json!({"id": e.id, "name": e.name, "path": e.path}));
        let downloads = removed.downloads.iter().map(|(out, d)| {
            serde_json::json!({"id": d.id, "name": d.name, "path": out, "in_progress": true})
        });
        out_json(&files.chain(downloads).collect::<Vec<_>>());
    } else {
        let mut text = String::new();
        for e in &removed.files {
            text.push_str(&format!("unshared {}  {}\n", e.id, printable(&e.name)));
        }
        for (out, d) in &removed.downloads {
            text.push_str(&format!(
                "no longer offering {}  {} (download in progress to {})\n",
                d.id,
                printable(&d.name),
                printable_path(out)
            ));
        }
        out(&text);
    }
    Ok(())
}

fn shared(dir: &Path, a: SharedArgs) -> Result<(), Failure> {
    let lib = open_library(dir)?;
    let snap = lib.snapshot().map_err(store_failure)?;
    let addrs = ticket_addrs(&a.ticket);
    let node = lib.node_id().map_err(store_failure)?;
    let files: Vec<_> = snap
        .files
        .values()
        .map(|e| describe(e, node, &addrs))
        .collect();
    if a.json.json {
        out_json(&files);
    } else {
        let mut text = String::new();
        for (f, e) in files.iter().zip(snap.files.values()) {
            text.push_str(&format!(
                "{}  {:>10}  {}{}\n",
                f.id,
                progress::bytes(f.size),
                printable(&f.name),
                unlisted_mark(e)
            ));
        }
        out(&text);
    }
    Ok(())
}

async fn serve(dir: &Path, a: ServeArgs) -> Result<(), Failure> {
    let lib = open_library(dir)?;
    // Fail early on a damaged library rather than serve nothing.
    lib.snapshot().map_err(store_failure)?;
    let tls = open_tls(&lib)?;
    let node_id = tls.node_id();
    #[cfg(feature = "insecure-plaintext")]
    if a.trusted_only && plaintext_requested() {
        return Err(Failure::new(
            exit::USAGE,
            "--trusted-only needs encryption: without it nobody's node ID is proven",
        ));
    }
    if a.trusted_only {
        let trusted = lib.trusted().map_err(store_failure)?;
        if trusted.is_empty() {
            eprintln!(
                "peershare: warning: --trusted-only with an empty trust list: every peer will be refused (add some with `peershare trust add NODE-ID`)"
            );
        }
    }
    let listener = bind_listener(a.listen).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::AddrInUse {
            " (another program, maybe another peershare, uses it: pick another with --listen)"
        } else {
            ""
        };
        Failure::new(
            exit::LOCAL,
            format!("cannot listen on {}: {e}{hint}", a.listen),
        )
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::new(exit::LOCAL, format!("listener address: {e}")))?;
    let write_timeout = lan::seconds("--write-timeout", a.write_timeout, 3600.0)?;
    let config = ServerConfig {
        write_timeout,
        max_connections: a.max_connections as usize,
        max_pending_handshakes: a.max_pending_handshakes as usize,
        max_connections_per_ip: a.max_connections_per_ip as usize,
        max_upload_rate: a.max_upload_rate,
        trusted_only: a.trusted_only,
        ..ServerConfig::default()
    };
    let interval = lan::seconds("--announce-interval", a.announce_interval, 3600.0)?;
    let discovery = if a.no_discovery {
        None
    } else {
        let cfg = lan::config(&a.discovery, interval);
        match peershare::discovery::Sockets::bind(&cfg, cfg.port) {
            Ok(socket) => Some(peershare::discovery::Discovery::new(
                socket,
                cfg,
                node_id,
                local.port(),
            )),
            Err(e) => {
                // Visible, not fatal: explicit --peer connections still work.
                eprintln!(
                    "peershare: warning: LAN discovery is off: cannot use UDP port {}: {e}",
                    a.discovery.discovery_port
                );
                None
            }
        }
    };
    // Listening on every IPv4 address also means every IPv6 one (same
    // port, an IPv6-only socket), so peers found over IPv6 can connect.
    let listener_v6 = if a.listen.ip() == IpAddr::from([0, 0, 0, 0]) {
        match bind_v6_listener(local.port()) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::info!("not listening on IPv6: {e}");
                None
            }
        }
    } else {
        None
    };
    let server_v6 = listener_v6
        .as_ref()
        .map(|_| Server::new(lib.clone(), tls.clone(), local.port(), config.clone()));
    let server = Server::new(lib.clone(), tls, local.port(), config);
    let shutdown = shutdown_signal()?;
    out(&format!("listening on {local}\n"));
    tracing::info!(node = %node_id, "serving the library in {}", dir.display());
    // One signal stops both the server and discovery.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let discovery_task = discovery.map(|d| {
        let targets = peershare::discovery::lan_targets(&lan::config(&a.discovery, interval));
        if targets.is_empty() {
            eprintln!("peershare: warning: no up network interface to announce this node on");
        } else {
            tracing::info!(
                "announcing on UDP port {} to {targets:?}",
                a.discovery.discovery_port
            );
        }
        let handle = d.handle();
        let dir = dir.to_path_buf();
        let mut stop = stop_rx.clone();
        tokio::spawn(d.run(
            move || lib.snapshot().map_or(0, |s| s.revision),
            move |peers| {
                // File I/O (with fsyncs) stays off the async workers.
                let (dir, peers, now) = (dir.clone(), peers.to_vec(), handle.now());
                tokio::task::spawn_blocking(move || {
                    lan::write_peers_file(&dir, node_id, &peers, now)
                });
            },
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ))
    });
    let mut stop = stop_rx;
    let v6_task = server_v6.zip(listener_v6).map(|(server, listener)| {
        let mut stop = stop.clone();
        tokio::spawn(server.run(listener, async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    });
    let served = server
        .run(listener, async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        })
        .await;
    let _ = stop_tx.send(true);
    if let Some(t) = v6_task
        && let Ok(Err(e)) = t.await
    {
        tracing::warn!("IPv6 listener: {e}");
    }
    if let Some(t) = discovery_task {
        let _ = t.await;
    }
    served.map_err(|e| Failure::new(exit::FAILURE, e))?;
    tracing::info!("stopped");
    Ok(())
}

/// A TCP listener on `[::]:port` that takes IPv6 only (IPv4 has its own).
/// Connections the kernel queues before `serve` accepts them. (tokio's
/// `bind` asks for 128: a burst of connections, hostile or not, then waits
/// for SYN retransmissions, seconds.)
const LISTEN_BACKLOG: i32 = 1024;

fn bind_v6_listener(port: u16) -> io::Result<TcpListener> {
    listen_on(
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
        true,
    )
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    listen_on(addr, false)
}

fn listen_on(addr: SocketAddr, only_v6: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if only_v6 {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(s.into())
}

/// Installs SIGINT and SIGTERM handlers *now* and returns a future that
/// completes when either arrives. Installing them before announcing
/// anything means a signal sent right after `listening on` is handled, not
/// fatal.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind| {
        signal(kind)
            .map_err(|e| Failure::new(exit::FAILURE, format!("cannot install signal handler: {e}")))
    };
    let mut term = install(SignalKind::terminate())?;
    let mut int = install(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// Resolves `HOST:PORT` (or `HOST`, meaning port 9000).
async fn resolve_peer(s: &str) -> Result<SocketAddr, Failure> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let with_port = if s
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        s.to_owned()
    } else {
        format!("{s}:{DEFAULT_PORT}")
    };
    let bad = |why: String| {
        Failure::new(
            exit::USAGE,
            format!("bad peer address {s:?}: {why} (expected HOST:PORT, e.g. 192.168.1.20:9000)"),
        )
    };
    let mut addrs = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| bad(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| bad("the name resolves to no address".into()))
}

async fn resolve_peers(list: &[String]) -> Result<Vec<SocketAddr>, Failure> {
    let mut out = Vec::new();
    for p in list {
        out.push(resolve_peer(p).await?);
    }
    Ok(out)
}

fn peer_failure(e: &PeerError) -> u8 {
    match e {
        PeerError::Connect { .. }
        | PeerError::Timeout { .. }
        | PeerError::Stalled { .. }
        | PeerError::TooSlow { .. } => exit::UNREACHABLE,
        // Refused as busy, and still busy after the retries.
        e if e.is_busy() => exit::UNREACHABLE,
        PeerError::Remote {
            code: peershare_proto::wire::ErrorCode::NotTrusted,
            ..
        }
        | PeerError::Ended {
            code: peershare_proto::wire::ErrorCode::NotTrusted,
            ..
        } => exit::REFUSED,
        _ => exit::FAILURE,
    }
}

#[derive(Serialize)]
struct LsRow {
    id: String,
    name: String,
    size: u64,
    /// The first peer that lists it.
    peer: SocketAddr,
    peers: Vec<SocketAddr>,
    /// How many of the asked peers share it.
    peer_count: usize,
    /// Those of `peers` that hold only part of it (they are downloading it).
    partial_peers: Vec<SocketAddr>,
}

async fn ls(dir: &Path, a: LsArgs) -> Result<(), Failure> {
    let lib = open_library(dir)?;
    let tls = open_tls(&lib)?;
    let node_id = tls.node_id();
    let mut addrs = resolve_peers(&a.peers).await?;
    // Peers found on the LAN must be one of the nodes announced there (a
    // forged announcement beside the real one changes nothing).
    let mut announced: std::collections::HashMap<SocketAddr, Vec<NodeId>> = Default::default();
    if addrs.is_empty() {
        let found = lan::look(dir, node_id, &a.look).await?;
        if found.is_empty() {
            return Err(lan::nothing_found(&a.look));
        }
        addrs = found.iter().map(|f| f.addr).collect();
        for f in &found {
            if let Ok(node) = f.node_id.parse() {
                announced.entry(f.addr).or_default().push(node);
            }
        }
    }
    // A peer given twice is asked once and listed once.
    let mut seen = std::collections::HashSet::new();
    addrs.retain(|a| seen.insert(*a));
    let order = addrs.clone();
    let mut rows: BTreeMap<FileId, LsRow> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    for addr in addrs {
        let tls = tls.clone();
        let nodes = announced.get(&addr).cloned().unwrap_or_default();
        set.spawn(async move {
            let conn = PeerConn::connect(addr, &tls, None, ClientConfig::default()).await?;
            let got = conn.remote().node_id;
            if !nodes.is_empty() && !nodes.contains(&got) {
                return Err(PeerError::WrongNode {
                    addr,
                    expected: nodes[0],
                    got,
                });
            }
            conn.catalog().await.map(|c| (addr, c))
        });
    }
    let mut answered = Vec::new();
    while let Some(r) = set.join_next().await {
        match r.expect("ls task does not panic") {
            Ok(a) => answered.push(a),
            Err(e) => errors.push(e),
        }
    }
    // Stable output: peers in the order given.
    answered.sort_by_key(|(addr, _)| order.iter().position(|o| o == addr));
    for (addr, entries) in answered.iter() {
        for e in entries {
            let row = rows.entry(e.id).or_insert_with(|| LsRow {
                id: e.id.to_string(),
                name: e.name.clone(),
                size: e.size,
                peer: *addr,
                peers: Vec::new(),
                peer_count: 0,
                partial_peers: Vec::new(),
            });
            row.peers.push(*addr);
            if e.is_partial() {
                row.partial_peers.push(*addr);
            }
        }
    }
    for e in &errors {
        eprintln!("peershare: warning: {}", printable(&e.to_string()));
    }
    if answered.is_empty() {
        let code = errors.first().map_or(exit::FAILURE, peer_failure);
        let msg = errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Failure::new(code, format!("no peer answered: {msg}")));
    }
    for r in rows.values_mut() {
        r.peer_count = r.peers.len();
    }
    let words: Vec<String> = a.search.iter().map(|w| w.to_lowercase()).collect();
    let mut rows: Vec<LsRow> = rows
        .into_values()
        .filter(|r| {
            let name = r.name.to_lowercase();
            words.iter().all(|w| name.contains(w.as_str()))
        })
        .collect();
    rows.sort_by(|x, y| x.name.cmp(&y.name).then(x.id.cmp(&y.id)));
    if a.json.json {
        out_json(&rows);
    } else {
        let mut text = String::new();
        for r in &rows {
            let peers: Vec<String> = r
                .peers
                .iter()
                .map(|p| {
                    if r.partial_peers.contains(p) {
                        format!("{p} (partial)")
                    } else {
                        p.to_string()
                    }
                })
                .collect();
            let count = match r.peer_count {
                1 => String::new(),
                n => format!("{n} peers: "),
            };
            text.push_str(&format!(
                "{}  {:>10}  {}  ({count}{})\n",
                r.id,
                progress::bytes(r.size),
                printable(&r.name),
                peers.join(", ")
            ));
        }
        if rows.is_empty() && !a.search.is_empty() {
            eprintln!("peershare: no shared file matches {:?}", a.search.join(" "));
        } else if rows.is_empty() {
            eprintln!("peershare: the peers share no files");
        }
        out(&text);
    }
    Ok(())
}

async fn get(dir: &Path, a: GetArgs, quiet: bool) -> Result<(), Failure> {
    let cancel = shutdown_signal()?;
    tokio::pin!(cancel);
    let mut expect = std::collections::HashMap::new();
    let mut announced = Vec::new();
    let mut unlisted = false;
    let (id, name, mut peers) = match a.what.parse::<FileId>() {
        Ok(id) => (id, None, Vec::new()),
        Err(id_err) => match a.what.parse::<Ticket>() {
            Ok(t) => {
                // The ticket's addresses are its maker's: only that node
                // may answer there.
                expect.extend(t.addrs.iter().map(|a| (*a, t.node)));
                unlisted = t.unlisted;
                (t.id, ticket_name(&t, a.output.as_deref())?, t.addrs)
            }
            Err(t_err) => {
                let why = if a.what.trim_start().starts_with("ps1") {
                    t_err.to_string()
                } else {
                    format!("not a file ID ({id_err}) nor a ticket")
                };
                return Err(Failure::new(exit::USAGE, format!("{:?}: {why}", a.what)));
            }
        },
    };
    peers.extend(resolve_peers(&a.peers).await?);
    let lib = open_library(dir)?;
    let tls = open_tls(&lib)?;
    let node_id = tls.node_id();
    // Without --peer (or with --discover), sources on the LAN join the
    // ticket's and the given ones, now and while the download runs.
    let use_lan = a.discover || (a.peers.is_empty() && !a.no_discovery);
    if use_lan {
        let found = tokio::select! {
            found = lan::look(dir, node_id, &a.look) => found?,
            _ = &mut cancel => return Err(Failure::new(exit::INTERRUPTED, "interrupted")),
        };
        if found.is_empty() && peers.is_empty() {
            return Err(lan::nothing_found(&a.look));
        }
        for f in &found {
            // An announcement names a node: whoever answers there must be
            // one of the nodes announced there.
            if let Ok(node) = f.node_id.parse() {
                announced.push((f.addr, node));
            }
            peers.push(f.addr);
        }
    }
    if let Some(p) = &a.output {
        let parent = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let trailing_slash = p.as_os_str().to_string_lossy().ends_with('/');
        if !parent.is_dir() || (trailing_slash && !p.is_dir()) {
            let missing = if trailing_slash { p.as_path() } else { parent };
            return Err(Failure::new(
                exit::LOCAL,
                format!(
                    "folder {} does not exist; create it first or choose another -o",
                    missing.display()
                ),
            ));
        }
    }
    let output = match a.output {
        Some(p) if p.is_dir() => Output::Dir(p),
        Some(p) => Output::File(p),
        None => Output::Dir(PathBuf::from(".")),
    };
    let (more_peers, lan_watch) = if use_lan {
        let (tx, rx) = tokio::sync::watch::channel(Vec::new());
        let (dir, look) = (dir.to_path_buf(), a.look.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(REDISCOVER_INTERVAL).await;
                if let Ok(found) = lan::look(&dir, node_id, &look).await {
                    tx.send_replace(
                        found
                            .iter()
                            .map(|f| (f.addr, f.node_id.parse().ok()))
                            .collect(),
                    );
                }
            }
        });
        (Some(rx), Some(task))
    } else {
        (None, None)
    };
    let req = DownloadRequest {
        id,
        name,
        peers,
        output,
        force: a.force,
        tls,
        expect,
        announced,
        config: DownloadConfig {
            max_download_rate: a.max_download_rate,
            ..DownloadConfig::default()
        },
        more_peers,
        library: Some(lib.clone()),
        share: !a.no_share,
        unlisted,
        pool: None,
        live: None,
    };
    let counters = Arc::new(Progress::default());
    let display = progress::downloading(counters.clone(), quiet);
    let result = peershare::download(req, counters, cancel.as_mut()).await;
    if let Some(t) = lan_watch {
        t.abort();
    }
    display.finish().await;
    let summary = result.map_err(|e| {
        let code = match &e {
            DownloadError::NoPeers => exit::USAGE,
            DownloadError::AllUnreachable(errs) => {
                errs.first().map_or(exit::UNREACHABLE, peer_failure)
            }
            DownloadError::NotFound { .. } => exit::NOT_FOUND,
            DownloadError::AllSourcesCorrupt => exit::CORRUPT,
            DownloadError::OutputExists(_)
            | DownloadError::InProgress(_)
            | DownloadError::NoSpace { .. }
            | DownloadError::NotAPlainFile { .. }
            | DownloadError::DiskFull { .. }
            | DownloadError::SyncFailed { .. }
            | DownloadError::Disk { .. } => exit::LOCAL,
            DownloadError::UnsafeName(_) => exit::FAILURE,
            DownloadError::AllSourcesFailed(_) => exit::FAILURE,
            DownloadError::Cancelled => exit::INTERRUPTED,
        };
        Failure::new(code, e)
    })?;
    if a.json.json {
        out_json(&summary);
    } else {
        let rate = summary.bytes_received as f64 / summary.seconds.max(1e-6);
        let resumed = if summary.bytes_resumed > 0 {
            format!(", {} resumed", progress::bytes(summary.bytes_resumed))
        } else {
            String::new()
        };
        let shared = if summary.shared {
            "; now shared by this node"
        } else {
            ""
        };
        out(&format!(
            "saved {} ({}, verified) in {:.1} s at {}/s from {} peer{}{resumed}{shared}\n",
            printable_path(&summary.path),
            progress::bytes(summary.size),
            summary.seconds,
            progress::bytes(rate as u64),
            summary.peers.iter().filter(|p| p.chunks > 0).count(),
            if summary.peers.iter().filter(|p| p.chunks > 0).count() == 1 {
                ""
            } else {
                "s"
            },
        ));
        if summary.peers.len() > 1 {
            for p in &summary.peers {
                eprintln!(
                    "peershare:   {}{}: {} in {} chunks",
                    p.addr,
                    if p.partial { " (partial)" } else { "" },
                    progress::bytes(p.bytes),
                    p.chunks
                );
            }
        }
        for p in summary.peers.iter().filter(|p| p.dropped.is_some()) {
            eprintln!(
                "peershare: dropped {}: {}",
                p.addr,
                printable(p.dropped.as_deref().unwrap_or(""))
            );
        }
    }
    Ok(())
}

async fn peers(dir: &Path, a: crate::cli::PeersArgs) -> Result<(), Failure> {
    let lib = open_library(dir)?;
    let node_id = lib.node_id().map_err(store_failure)?;
    let found = lan::look(dir, node_id, &a.look).await?;
    if a.json.json {
        out_json(&found);
        return Ok(());
    }
    if found.is_empty() {
        return Err(lan::nothing_found(&a.look));
    }
    let mut text = String::new();
    for f in &found {
        text.push_str(&format!(
            "{}  {:<22}  {:<8}  seen {} s ago\n",
            printable(&f.node_id),
            f.addr.to_string(),
            printable(&f.found_via),
            f.last_seen_secs
        ));
    }
    out(&text);
    Ok(())
}

fn unlisted_mark(e: &Entry) -> &'static str {
    if e.unlisted { "  (unlisted)" } else { "" }
}

fn trust(dir: &Path, command: TrustCommand) -> Result<(), Failure> {
    let lib = open_library(dir)?;
    let parse = |s: &str| {
        s.parse::<NodeId>().map_err(|e| {
            Failure::new(
                exit::USAGE,
                format!("{s:?} is not a node ID ({e}); `peershare id` prints one"),
            )
        })
    };
    match command {
        TrustCommand::Add { node, name, json } => {
            let node = parse(&node)?;
            let name = name.unwrap_or_default();
            let added = lib.trust(node, &name).map_err(store_failure)?;
            if json.json {
                out_json(
                    &serde_json::json!({"node_id": node.to_string(), "name": name, "changed": added}),
                );
            } else if added {
                out(&format!("trusted {node}\n"));
            } else {
                out(&format!("{node} was already trusted\n"));
            }
        }
        TrustCommand::Rm { node, json } => {
            let node = parse(&node)?;
            if !lib.distrust(node).map_err(store_failure)? {
                return Err(Failure::new(
                    exit::NOT_FOUND,
                    format!("{node} is not on the trust list (`peershare trust ls` shows it)"),
                ));
            }
            if json.json {
                out_json(&serde_json::json!({"node_id": node.to_string(), "changed": true}));
            } else {
                out(&format!("no longer trusted: {node}\n"));
            }
        }
        TrustCommand::Ls(json) => {
            let list = lib.trusted().map_err(store_failure)?;
            if json.json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|(id, t)| serde_json::json!({"node_id": id.to_string(), "name": t.name}))
                    .collect();
                out_json(&rows);
            } else {
                let mut text = String::new();
                for (id, t) in &list {
                    text.push_str(&format!("{id}  {}\n", printable(&t.name)));
                }
                out(&text);
            }
        }
    }
    Ok(())
}

fn id(dir: &Path, json: bool) -> Result<(), Failure> {
    let lib = open_library(dir)?;
    let node_id = lib.node_id().map_err(store_failure)?;
    if json {
        out_json(&serde_json::json!({ "node_id": node_id.to_string() }));
    } else {
        out(&format!("{node_id}\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::printable;

    /// Regression (issue 10.8): a peer still busy after the retries ended
    /// `get` with status 1, not the README's 3 for "no peer could be
    /// reached".
    #[test]
    fn a_peer_that_stays_busy_is_unreachable() {
        use peershare_proto::wire::ErrorCode;
        let addr = "127.0.0.1:9000".parse().unwrap();
        let busy = peershare::PeerError::Remote {
            addr,
            code: ErrorCode::Busy,
            message: "too many connections".into(),
        };
        assert_eq!(super::peer_failure(&busy), crate::exit::UNREACHABLE);
        let silent = peershare::PeerError::Stalled { addr, secs: 8 };
        assert_eq!(super::peer_failure(&silent), crate::exit::UNREACHABLE);
    }

    #[test]
    fn peer_text_cannot_forge_lines_or_drive_the_terminal() {
        assert_eq!(printable("talk.mkv"), "talk.mkv");
        assert_eq!(printable("naïve — ok"), "naïve — ok");
        let evil = "a.txt\n0000 1 GiB fake.iso\x1b]0;pwned\x07";
        let shown = printable(evil);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert_eq!(shown.lines().count(), 1);
        assert!(shown.contains("\\n") && shown.contains("\\u{1b}"));
    }
}
