//! LAN discovery over UDP: the async shell around
//! [`peershare_proto::discovery::DiscoveryTracker`].
//!
//! A serving node binds the discovery port on all addresses (with
//! `SO_REUSEADDR`, so several nodes on one machine share it: broadcasts
//! reach them all), broadcasts a query and an announcement at start, then
//! an announcement every `interval`, and answers queries with one reply to
//! the asker. Broadcasts go to the broadcast address of every up IPv4
//! interface, and to `127.255.255.255` for nodes on the same machine.
//! `--discovery-interface` limits them to named interfaces.
//!
//! A command that only looks (`ls`, `get`, `peers`) sends queries from an
//! ephemeral port and collects replies for a short while: [`discover`].

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peershare_proto::NodeId;
use peershare_proto::discovery::{
    DiscoveryStats, DiscoveryTracker, Kind, PACKET_LEN, Packet, PeerInfo,
};
use tokio::net::UdpSocket;

/// Default UDP port, the same number as the TCP port.
pub const DEFAULT_DISCOVERY_PORT: u16 = 9000;
/// Receive buffer: larger datagrams are cut, then rejected by length.
const RECV_BUF: usize = 512;
/// Broadcast targets at most (interfaces on one machine).
pub const MAX_TARGETS: usize = 64;

/// Discovery options; plain data with sane defaults.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    pub port: u16,
    /// Time between announcements.
    pub interval: Duration,
    /// Peers silent for longer are forgotten.
    pub ttl: Duration,
    /// Only these interfaces (by name); `None`: every up interface.
    pub interfaces: Option<Vec<String>>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            port: DEFAULT_DISCOVERY_PORT,
            interval: Duration::from_secs(5),
            ttl: Duration::from_secs(16),
            interfaces: None,
        }
    }
}

/// Where broadcasts go: one broadcast address per up IPv4 interface (the
/// loopback's is `127.255.255.255`), filtered by `config.interfaces`.
pub fn broadcast_targets(config: &DiscoveryConfig) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for i in if_addrs::get_if_addrs().unwrap_or_default() {
        if !i.is_oper_up() && !i.is_loopback() {
            continue;
        }
        if let Some(names) = &config.interfaces
            && !names.contains(&i.name)
        {
            continue;
        }
        let if_addrs::IfAddr::V4(v4) = &i.addr else {
            continue;
        };
        let target = if v4.ip.is_loopback() {
            Some(Ipv4Addr::new(127, 255, 255, 255))
        } else {
            v4.broadcast
        };
        if let Some(t) = target
            && !out.contains(&t)
            && out.len() < MAX_TARGETS
        {
            out.push(t);
        }
    }
    out
}

/// A UDP socket on `port` (0: any) that may send broadcasts and shares its
/// port with other peershare processes on this machine.
pub fn bind(port: u16) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())?;
    UdpSocket::from_std(s.into())
}

/// What a running discovery service knows; cheap to clone.
#[derive(Clone)]
pub struct DiscoveryHandle {
    tracker: Arc<Mutex<DiscoveryTracker>>,
    epoch: Instant,
}

impl DiscoveryHandle {
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.tracker.lock().expect("discovery lock").peers()
    }
    pub fn stats(&self) -> DiscoveryStats {
        self.tracker.lock().expect("discovery lock").stats()
    }
    /// Time since the service started, the clock of `PeerInfo` times.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
}

/// The serving side of discovery.
pub struct Discovery {
    socket: UdpSocket,
    config: DiscoveryConfig,
    me: NodeId,
    tcp_port: u16,
    handle: DiscoveryHandle,
}

impl Discovery {
    pub fn new(socket: UdpSocket, config: DiscoveryConfig, me: NodeId, tcp_port: u16) -> Self {
        let handle = DiscoveryHandle {
            tracker: Arc::new(Mutex::new(DiscoveryTracker::new(me, config.ttl))),
            epoch: Instant::now(),
        };
        Self {
            socket,
            config,
            me,
            tcp_port,
            handle,
        }
    }

    pub fn handle(&self) -> DiscoveryHandle {
        self.handle.clone()
    }

    async fn broadcast(&self, kind: Kind, revision: u64) {
        let p = Packet {
            kind,
            node_id: self.me,
            tcp_port: self.tcp_port,
            revision,
        }
        .encode();
        for ip in broadcast_targets(&self.config) {
            if let Err(e) = self.socket.send_to(&p, (ip, self.config.port)).await {
                tracing::debug!("discovery broadcast to {ip}: {e}");
            }
        }
    }

    /// Runs until `shutdown` completes. `revision` gives the library's
    /// current revision; `on_change` is called with the peers whenever the
    /// set changes (new, gone, moved).
    pub async fn run(
        self,
        revision: impl Fn() -> u64,
        mut on_change: impl FnMut(&[PeerInfo]),
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        self.broadcast(Kind::Query, revision()).await;
        self.broadcast(Kind::Announce, revision()).await;
        let mut tick = tokio::time::interval(self.config.interval);
        tick.tick().await;
        let mut buf = [0u8; RECV_BUF];
        let mut known: Vec<(NodeId, SocketAddr)> = Vec::new();
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {
                    self.broadcast(Kind::Announce, revision()).await;
                    let now = self.handle.now();
                    for gone in self.handle.tracker.lock().expect("discovery lock").expire(now) {
                        tracing::info!(peer = %gone.node_id.short(), addr = %gone.addr, "peer went silent");
                    }
                }
                r = self.socket.recv_from(&mut buf) => {
                    let Ok((n, src)) = r else { continue };
                    let now = self.handle.now();
                    let reply = self.handle.tracker.lock().expect("discovery lock").handle_datagram(src, &buf[..n], now);
                    if let Some(to) = reply {
                        let p = Packet { kind: Kind::Reply, node_id: self.me, tcp_port: self.tcp_port, revision: revision() };
                        let _ = self.socket.send_to(&p.encode(), to).await;
                    }
                }
            }
            let peers = self.handle.peers();
            let now_known: Vec<_> = peers.iter().map(|p| (p.node_id, p.addr)).collect();
            if now_known != known {
                known = now_known;
                on_change(&peers);
            }
        }
    }
}

/// Asks the LAN who is there: sends a query from an ephemeral port (again,
/// up to three times in all, while nobody has answered) and collects
/// replies for `wait`.
pub async fn discover(
    config: &DiscoveryConfig,
    me: NodeId,
    wait: Duration,
) -> io::Result<Vec<PeerInfo>> {
    let socket = bind(0)?;
    let targets = broadcast_targets(config);
    let mut tracker = DiscoveryTracker::new(me, wait + config.ttl);
    let query = Packet {
        kind: Kind::Query,
        node_id: me,
        tcp_port: 0,
        revision: 0,
    }
    .encode();
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + wait;
    let mut sends = 0;
    let mut buf = [0u8; RECV_BUF];
    loop {
        // Resend (against loss) only while nobody has answered.
        if sends > 0 && sends < 3 && !tracker.peers().is_empty() {
            sends = 3;
        }
        if sends < 3 && start.elapsed() >= wait / 4 * sends {
            for ip in &targets {
                let _ = socket.send_to(&query, (*ip, config.port)).await;
            }
            sends += 1;
        }
        let next_send = tokio::time::Instant::from_std(start + wait / 4 * sends);
        let until = if sends < 3 {
            next_send.min(deadline)
        } else {
            deadline
        };
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, src)) = r {
                    // Replies come here; the tracker keeps only serving peers.
                    if n == PACKET_LEN {
                        tracker.handle_datagram(src, &buf[..n], start.elapsed());
                    }
                }
            }
        }
    }
    Ok(tracker.peers())
}
