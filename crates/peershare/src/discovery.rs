//! LAN discovery over UDP: the async shell around
//! [`peershare_proto::discovery::DiscoveryTracker`].
//!
//! A serving node binds the discovery port on all addresses (with
//! `SO_REUSEADDR`, so several nodes on one machine share it: broadcasts and
//! multicasts reach them all), sends a query and an announcement at start,
//! then an announcement every `interval`, and answers queries with one
//! reply to the asker.
//!
//! - IPv4: packets go to the broadcast address of every up interface, and
//!   to `127.255.255.255` for nodes on the same machine.
//! - IPv6: a second socket joins the link-local group [`MULTICAST_V6`] on
//!   every up interface, and packets go to that group on each of them.
//!
//! `--discovery-interface` limits both to named interfaces.
//!
//! A command that only looks (`ls`, `get`, `peers`) sends queries from an
//! ephemeral port and collects replies for a short while: [`discover`].

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peershare_proto::NodeId;
use peershare_proto::discovery::{
    DiscoveryStats, DiscoveryTracker, Kind, PACKET_LEN, Packet, PeerInfo,
};
use tokio::net::UdpSocket;

/// Default UDP port, the same number as the TCP port.
pub const DEFAULT_DISCOVERY_PORT: u16 = 9000;
/// The IPv6 link-local multicast group of discovery ("ps").
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x7073);
/// Receive buffer: larger datagrams are cut, then rejected by length.
const RECV_BUF: usize = 512;
/// Targets of one family at most (interfaces on one machine).
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
    /// Use IPv4 broadcast.
    pub ipv4: bool,
    /// Use IPv6 link-local multicast.
    pub ipv6: bool,
    /// Announce only on the interface holding this address (a server that
    /// listens on one address is reachable only there: announcing it on
    /// every interface would make peers record an address where nobody
    /// listens). `None`: every chosen interface.
    pub only_ip: Option<std::net::IpAddr>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            port: DEFAULT_DISCOVERY_PORT,
            interval: Duration::from_secs(5),
            ttl: Duration::from_secs(16),
            interfaces: None,
            ipv4: true,
            ipv6: true,
            only_ip: None,
        }
    }
}

fn chosen_interfaces(config: &DiscoveryConfig) -> Vec<if_addrs::Interface> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.is_oper_up() || i.is_loopback())
        .filter(|i| {
            config
                .interfaces
                .as_ref()
                .is_none_or(|names| names.contains(&i.name))
        })
        .filter(|i| config.only_ip.is_none_or(|ip| i.ip() == ip))
        .collect()
}

/// Where IPv4 broadcasts go: one broadcast address per up interface (the
/// loopback's is `127.255.255.255`), filtered by `config.interfaces`.
pub fn broadcast_targets(config: &DiscoveryConfig) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    if !config.ipv4 {
        return out;
    }
    for i in chosen_interfaces(config) {
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

/// Indexes of the up, non-loopback interfaces with IPv6 (multicast on the
/// loopback is off on Linux; IPv4 covers this machine), filtered by
/// `config.interfaces`.
pub fn multicast_interfaces(config: &DiscoveryConfig) -> Vec<u32> {
    let mut out = Vec::new();
    if !config.ipv6 {
        return out;
    }
    for i in chosen_interfaces(config) {
        if i.is_loopback() || !matches!(i.addr, if_addrs::IfAddr::V6(_)) {
            continue;
        }
        if let Some(idx) = i.index
            && !out.contains(&idx)
            && out.len() < MAX_TARGETS
        {
            out.push(idx);
        }
    }
    out
}

/// Every address a packet for the whole LAN goes to.
pub fn lan_targets(config: &DiscoveryConfig) -> Vec<SocketAddr> {
    let v4 = broadcast_targets(config)
        .into_iter()
        .map(|ip| SocketAddr::from(SocketAddrV4::new(ip, config.port)));
    let v6 = multicast_interfaces(config)
        .into_iter()
        .map(|idx| SocketAddr::from(SocketAddrV6::new(MULTICAST_V6, config.port, 0, idx)));
    v4.chain(v6).collect()
}

/// An IPv4 UDP socket on `port` (0: any) that may send broadcasts and
/// shares its port with other peershare processes on this machine.
pub fn bind(port: u16) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())?;
    UdpSocket::from_std(s.into())
}

/// An IPv6 UDP socket on `port` (0: any) sharing its port with other
/// peershare processes, joined to [`MULTICAST_V6`] on the `join` interfaces.
pub fn bind_v6(port: u16, join: &[u32]) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0)).into())?;
    for idx in join {
        if let Err(e) = s.join_multicast_v6(&MULTICAST_V6, *idx) {
            tracing::debug!("joining {MULTICAST_V6} on interface {idx}: {e}");
        }
    }
    UdpSocket::from_std(s.into())
}

/// The sockets of one discovery endpoint, one per address family in use.
pub struct Sockets {
    pub v4: Option<UdpSocket>,
    pub v6: Option<UdpSocket>,
}

impl Sockets {
    /// Binds `port` (0: any) for each family `config` enables. A family
    /// that cannot be bound is logged and left out; fails only when no
    /// family could be bound.
    pub fn bind(config: &DiscoveryConfig, port: u16) -> io::Result<Sockets> {
        let mut first_err: Option<io::Error> = None;
        let mut keep = |r: io::Result<UdpSocket>, family: &str| match r {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::info!("{family} discovery unavailable: {e}");
                first_err.get_or_insert(e);
                None
            }
        };
        let v4 = config.ipv4.then(|| keep(bind(port), "IPv4")).flatten();
        let v6 = if config.ipv6 {
            // Only a listening endpoint joins the group; an asker gets
            // unicast replies.
            let join = if port == 0 {
                Vec::new()
            } else {
                multicast_interfaces(config)
            };
            keep(bind_v6(port, &join), "IPv6")
        } else {
            None
        };
        if v4.is_none() && v6.is_none() {
            return Err(first_err.unwrap_or_else(|| {
                io::Error::other("no address family is enabled for discovery")
            }));
        }
        Ok(Sockets { v4, v6 })
    }

    async fn send_to(&self, packet: &[u8], to: SocketAddr) {
        let socket = if to.is_ipv4() { &self.v4 } else { &self.v6 };
        if let Some(s) = socket
            && let Err(e) = s.send_to(packet, to).await
        {
            tracing::debug!("discovery send to {to}: {e}");
        }
    }

    async fn send_to_lan(&self, packet: &[u8], config: &DiscoveryConfig) {
        for to in lan_targets(config) {
            self.send_to(packet, to).await;
        }
    }

    /// The next datagram from either socket, copied into `buf`.
    async fn recv(&self, buf: &mut [u8; RECV_BUF]) -> io::Result<(usize, SocketAddr)> {
        async fn on(s: &Option<UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
            match s {
                Some(s) => s.recv_from(buf).await,
                None => std::future::pending().await,
            }
        }
        let mut b6 = [0u8; RECV_BUF];
        tokio::select! {
            r = on(&self.v4, buf) => r,
            r = on(&self.v6, &mut b6) => {
                let (n, from) = r?;
                buf[..n].copy_from_slice(&b6[..n]);
                Ok((n, from))
            }
        }
    }
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
    sockets: Sockets,
    config: DiscoveryConfig,
    me: NodeId,
    tcp_port: u16,
    handle: DiscoveryHandle,
}

impl Discovery {
    pub fn new(sockets: Sockets, config: DiscoveryConfig, me: NodeId, tcp_port: u16) -> Self {
        let handle = DiscoveryHandle {
            tracker: Arc::new(Mutex::new(DiscoveryTracker::new(me, config.ttl))),
            epoch: Instant::now(),
        };
        Self {
            sockets,
            config,
            me,
            tcp_port,
            handle,
        }
    }

    pub fn handle(&self) -> DiscoveryHandle {
        self.handle.clone()
    }

    fn packet(&self, kind: Kind, revision: u64) -> [u8; PACKET_LEN] {
        Packet {
            kind,
            node_id: self.me,
            tcp_port: self.tcp_port,
            revision,
        }
        .encode()
    }

    /// Runs until `shutdown` completes. `revision` gives the library's
    /// current revision; `on_change` is called with the peers when the set
    /// has changed (new, gone, moved), checked once per interval.
    pub async fn run(
        self,
        revision: impl Fn() -> u64,
        mut on_change: impl FnMut(&[PeerInfo]),
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let cfg = &self.config;
        self.sockets
            .send_to_lan(&self.packet(Kind::Query, revision()), cfg)
            .await;
        self.sockets
            .send_to_lan(&self.packet(Kind::Announce, revision()), cfg)
            .await;
        let mut tick = tokio::time::interval(cfg.interval);
        tick.tick().await;
        let mut buf = [0u8; RECV_BUF];
        let mut known: Vec<(NodeId, SocketAddr)> = Vec::new();
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {
                    self.sockets.send_to_lan(&self.packet(Kind::Announce, revision()), cfg).await;
                    let now = self.handle.now();
                    let gone = self.handle.tracker.lock().expect("discovery lock").expire(now);
                    for p in gone {
                        tracing::info!(peer = %p.node_id.short(), addr = %p.addr, "peer went silent");
                    }
                    // Changes are reported once per interval at most: a
                    // flood of (spoofed) packets cannot drive the callback.
                    let peers = self.handle.peers();
                    let now_known: Vec<_> = peers.iter().map(|p| (p.node_id, p.addr)).collect();
                    if now_known != known {
                        known = now_known;
                        on_change(&peers);
                    }
                }
                r = self.sockets.recv(&mut buf) => {
                    let Ok((n, src)) = r else { continue };
                    let now = self.handle.now();
                    let reply = self
                        .handle
                        .tracker
                        .lock()
                        .expect("discovery lock")
                        .handle_datagram(src, &buf[..n], now);
                    if let Some(to) = reply {
                        self.sockets.send_to(&self.packet(Kind::Reply, revision()), to).await;
                    }
                }
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
    let sockets = Sockets::bind(config, 0)?;
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
            sockets.send_to_lan(&query, config).await;
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
            r = sockets.recv(&mut buf) => {
                // Replies come here; the tracker keeps only serving peers.
                if let Ok((n, src)) = r {
                    tracker.handle_datagram(src, &buf[..n], start.elapsed());
                }
            }
        }
    }
    Ok(tracker.peers())
}
