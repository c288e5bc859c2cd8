//! A node run by this process (`serve`, `send`, a `get` with no node
//! running): its sockets bound, the engine's [`Node`] started on them, its
//! local API served (and found by other commands through `node.json`), and
//! stopped completely at the end.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use peershare::api::{ApiToken, NodeFile};
use peershare::discovery::{DiscoveryConfig, Sockets};
use peershare::node::{Bound, Node, NodeConfig};
use peershare::{Library, Tls};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::store_failure;
use crate::{Failure, exit};

/// Connections the kernel queues before the node accepts them. (tokio's
/// `bind` asks for 128: a burst of connections, hostile or not, then waits
/// for SYN retransmissions, seconds.)
pub const LISTEN_BACKLOG: i32 = 1024;

/// What to run.
pub struct HostConfig {
    /// Where peers connect (`None`: nowhere; the node only downloads).
    /// Every IPv4 address also means every IPv6 one, same port.
    pub listen: Option<SocketAddr>,
    /// LAN discovery: its settings (queries of the node's downloads and
    /// `peers` use them).
    pub discovery: Option<DiscoveryConfig>,
    /// Announce the node and answer queries (its discovery sockets bound
    /// here), not just ask.
    pub announce: bool,
    pub node: NodeConfig,
    /// Where the local API listens (`None`: no API).
    pub api: Option<SocketAddr>,
}

/// A node running in this process.
pub struct Hosted {
    pub node: Node,
    /// The API's address, when it serves one.
    pub api: Option<SocketAddr>,
    api_stop: Option<(watch::Sender<bool>, tokio::task::JoinHandle<io::Result<()>>)>,
    dir: PathBuf,
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

/// The listeners for `addr`: it, and on a wildcard IPv4 address the IPv6
/// wildcard on the same port too (an IPv6-only socket), so peers found over
/// IPv6 can connect.
fn listeners(addr: SocketAddr) -> Result<Vec<TcpListener>, Failure> {
    let first = listen_on(addr, false).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::AddrInUse {
            " (another program, maybe another peershare, uses it: pick another with --listen)"
        } else {
            ""
        };
        Failure::new(exit::LOCAL, format!("cannot listen on {addr}: {e}{hint}"))
    })?;
    let mut out = vec![first];
    if addr.ip() == IpAddr::from([0, 0, 0, 0]) {
        let port = out[0].local_addr().map_or(addr.port(), |a| a.port());
        match listen_on(
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
            true,
        ) {
            Ok(l) => out.push(l),
            Err(e) => tracing::info!("not listening on IPv6: {e}"),
        }
    }
    Ok(out)
}

/// The API's listener: `addr`, or any free port of its address when that
/// port is taken (another node, on another data dir, has 9001): `node.json`
/// says where it is. Only loopback addresses are accepted.
async fn api_listener(addr: SocketAddr) -> Result<TcpListener, Failure> {
    if !addr.ip().is_loopback() {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "--api-listen {addr}: the local API listens on a loopback address only (127.0.0.1 or ::1); \
                 it controls this node"
            ),
        ));
    }
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse && addr.port() != 0 => {
            let any = SocketAddr::new(addr.ip(), 0);
            let l = TcpListener::bind(any)
                .await
                .map_err(|e| Failure::new(exit::LOCAL, format!("cannot listen on {any}: {e}")))?;
            eprintln!(
                "peershare: warning: port {} of the local API is taken; it listens on {} instead",
                addr.port(),
                l.local_addr()
                    .map_or_else(|_| "?".into(), |a| a.to_string())
            );
            Ok(l)
        }
        Err(e) => Err(Failure::new(
            exit::LOCAL,
            format!(
                "cannot listen on {addr} for the local API: {e} (choose another with --api-listen)"
            ),
        )),
    }
}

/// Binds the sockets and starts the node (and its API).
pub async fn host(dir: &Path, lib: Library, tls: Tls, cfg: HostConfig) -> Result<Hosted, Failure> {
    let mut bound = Bound::default();
    if let Some(addr) = cfg.listen {
        bound.listeners = listeners(addr)?;
    }
    let mut node_config = cfg.node;
    node_config.discovery = cfg.discovery.clone();
    if let Some(d) = cfg.discovery.as_ref().filter(|_| cfg.announce) {
        match Sockets::bind(d, d.port) {
            Ok(s) => bound.discovery = Some(s),
            // Visible, not fatal: explicit --peer connections still work.
            Err(e) => eprintln!(
                "peershare: warning: LAN discovery is off: cannot use UDP port {}: {e}",
                d.port
            ),
        }
    }
    let api_listener = match cfg.api {
        Some(a) => Some(api_listener(a).await?),
        None => None,
    };
    let node = Node::start(lib.clone(), tls, node_config, bound)
        .await
        .map_err(|e| Failure::new(exit::LOCAL, e))?;
    let mut hosted = Hosted {
        node: node.clone(),
        api: None,
        api_stop: None,
        dir: dir.to_path_buf(),
    };
    if let Some(listener) = api_listener {
        let addr = listener
            .local_addr()
            .map_err(|e| Failure::new(exit::LOCAL, format!("API address: {e}")))?;
        let token = ApiToken::load_or_create(lib.dir()).map_err(store_failure)?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(peershare::api::serve(
            node.clone(),
            listener,
            token,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ));
        node.set_api(Some(addr));
        hosted.api = Some(addr);
        hosted.api_stop = Some((stop, task));
        let file = NodeFile::new(&node, addr);
        if let Err(e) = file.write(dir) {
            eprintln!("peershare: warning: other commands will not find this node: {e}");
        }
    }
    Ok(hosted)
}

impl Hosted {
    /// Stops the API (and removes `node.json`), then the node.
    pub async fn stop(mut self) {
        if let Some((stop, task)) = self.api_stop.take() {
            if let Err(e) = NodeFile::remove(&self.dir) {
                tracing::warn!("{e}");
            }
            let _ = stop.send(true);
            match task.await {
                Ok(Err(e)) => tracing::warn!("the local API: {e}"),
                Err(e) => tracing::warn!("the local API: {e}"),
                Ok(Ok(())) => {}
            }
        }
        self.node.shutdown().await;
    }
}
