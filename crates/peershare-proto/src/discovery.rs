//! LAN discovery, free of I/O: the UDP packet codec and the bookkeeping of
//! which peers were heard, when, and whom to answer.
//!
//! Every packet has one fixed layout (big-endian), specified in
//! `docs/PROTOCOL.md`:
//!
//! ```text
//! [u8; 4]   magic "PSDS"
//! u8        discovery version (= DISCOVERY_VERSION)
//! u8        kind: 1 announce, 2 query, 3 reply
//! [u8; 32]  sender's node ID
//! u16       sender's TCP port (0: not serving)
//! u64       sender's catalog revision (changes when its library changes)
//! ```
//!
//! Anti-amplification: a reply goes only to the source of a query, is
//! exactly as long as the query (all packets are `PACKET_LEN` bytes, and a
//! packet of any other length is ignored), at most one per query, and
//! replies to one source IP are rate-limited by a token bucket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::id::{ID_LEN, NodeId};
use crate::rate::TokenBucket;

/// Magic that opens every discovery packet.
pub const DISCOVERY_MAGIC: [u8; 4] = *b"PSDS";
/// Version of the discovery packet layout.
pub const DISCOVERY_VERSION: u8 = 1;
/// Length of every discovery packet, bytes.
pub const PACKET_LEN: usize = 4 + 1 + 1 + ID_LEN + 2 + 8;
/// Peers remembered at most; news from more are dropped (and counted).
pub const MAX_TRACKED_PEERS: usize = 1024;
/// Source addresses with a reply budget remembered at most.
pub const MAX_LIMITED_SOURCES: usize = 1024;
/// Replies one source IP may get in a burst.
pub const REPLY_BURST: u64 = 16;
/// Replies per second one source IP may get after its burst.
pub const REPLIES_PER_SECOND: u64 = 4;

/// What a packet says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Periodic "I am here", broadcast.
    Announce = 1,
    /// "Who is there?", broadcast; answered with a reply to the sender.
    Query = 2,
    /// The answer to a query, unicast.
    Reply = 3,
}

/// One discovery packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub kind: Kind,
    pub node_id: NodeId,
    pub tcp_port: u16,
    pub revision: u64,
}

/// Why bytes are not a discovery packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet of {0} bytes (discovery packets are {PACKET_LEN})")]
    Length(usize),
    #[error("not a peershare discovery packet")]
    Foreign,
    #[error("discovery version {0} is not spoken here")]
    Version(u8),
    #[error("unknown packet kind {0}")]
    Kind(u8),
}

impl Packet {
    pub fn encode(&self) -> [u8; PACKET_LEN] {
        let mut b = [0u8; PACKET_LEN];
        b[..4].copy_from_slice(&DISCOVERY_MAGIC);
        b[4] = DISCOVERY_VERSION;
        b[5] = self.kind as u8;
        b[6..38].copy_from_slice(self.node_id.as_bytes());
        b[38..40].copy_from_slice(&self.tcp_port.to_be_bytes());
        b[40..48].copy_from_slice(&self.revision.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, PacketError> {
        if b.get(..4) != Some(&DISCOVERY_MAGIC[..]) {
            return Err(PacketError::Foreign);
        }
        if b.len() != PACKET_LEN {
            return Err(PacketError::Length(b.len()));
        }
        if b[4] != DISCOVERY_VERSION {
            return Err(PacketError::Version(b[4]));
        }
        let kind = match b[5] {
            1 => Kind::Announce,
            2 => Kind::Query,
            3 => Kind::Reply,
            k => return Err(PacketError::Kind(k)),
        };
        Ok(Packet {
            kind,
            node_id: NodeId(b[6..38].try_into().expect("32 bytes")),
            tcp_port: u16::from_be_bytes([b[38], b[39]]),
            revision: u64::from_be_bytes(b[40..48].try_into().expect("8 bytes")),
        })
    }
}

/// How a peer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundVia {
    Announce,
    Reply,
    Query,
}

impl FoundVia {
    pub fn as_str(&self) -> &'static str {
        match self {
            FoundVia::Announce => "announce",
            FoundVia::Reply => "reply",
            FoundVia::Query => "query",
        }
    }
}

/// A peer heard on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub node_id: NodeId,
    /// Source IP of its packets, with its TCP port.
    pub addr: SocketAddr,
    pub via: FoundVia,
    pub first_seen: Duration,
    pub last_seen: Duration,
    pub revision: u64,
}

/// Counters, for `peers --json` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscoveryStats {
    pub received: u64,
    pub malformed: u64,
    pub foreign: u64,
    pub own: u64,
    pub replies_sent: u64,
    pub rate_limited: u64,
    pub peers_dropped_full: u64,
}

/// Peers heard and reply budgets. Time is passed in.
#[derive(Debug)]
pub struct DiscoveryTracker {
    me: NodeId,
    /// Peers silent for longer than this are forgotten.
    ttl: Duration,
    peers: HashMap<NodeId, PeerInfo>,
    budgets: HashMap<IpAddr, TokenBucket>,
    stats: DiscoveryStats,
}

impl DiscoveryTracker {
    pub fn new(me: NodeId, ttl: Duration) -> Self {
        Self {
            me,
            ttl,
            peers: HashMap::new(),
            budgets: HashMap::new(),
            stats: DiscoveryStats::default(),
        }
    }

    /// A datagram from `src` at `now`. Returns where to send a reply, if
    /// one is due (only for queries, only to their source, within budget).
    pub fn handle_datagram(
        &mut self,
        src: SocketAddr,
        bytes: &[u8],
        now: Duration,
    ) -> Option<SocketAddr> {
        self.stats.received += 1;
        let p = match Packet::decode(bytes) {
            Ok(p) => p,
            Err(PacketError::Foreign) => {
                self.stats.foreign += 1;
                return None;
            }
            Err(_) => {
                self.stats.malformed += 1;
                return None;
            }
        };
        if p.node_id == self.me {
            self.stats.own += 1;
            return None;
        }
        let via = match p.kind {
            Kind::Announce => FoundVia::Announce,
            Kind::Reply => FoundVia::Reply,
            Kind::Query => FoundVia::Query,
        };
        // A querier that serves is a peer too; one that does not (port 0,
        // e.g. `peershare ls`) is not.
        if p.tcp_port != 0 {
            // The source address with the TCP port: an IPv6 link-local
            // source keeps its scope (interface), which TCP needs.
            let mut addr = src;
            addr.set_port(p.tcp_port);
            self.note_peer(p, addr, via, now);
        }
        if p.kind != Kind::Query {
            return None;
        }
        if self.take_reply_budget(src.ip(), now) {
            self.stats.replies_sent += 1;
            Some(src)
        } else {
            self.stats.rate_limited += 1;
            None
        }
    }

    fn note_peer(&mut self, p: Packet, addr: SocketAddr, via: FoundVia, now: Duration) {
        if let Some(e) = self.peers.get_mut(&p.node_id) {
            // A node heard over IPv4 and IPv6 keeps the family it was
            // first heard on, rather than flapping between the two.
            if e.addr.is_ipv4() == addr.is_ipv4() {
                e.addr = addr;
            }
            e.last_seen = now;
            e.revision = p.revision;
            return;
        }
        if self.peers.len() >= MAX_TRACKED_PEERS {
            self.stats.peers_dropped_full += 1;
            return;
        }
        self.peers.insert(
            p.node_id,
            PeerInfo {
                node_id: p.node_id,
                addr,
                via,
                first_seen: now,
                last_seen: now,
                revision: p.revision,
            },
        );
    }

    fn take_reply_budget(&mut self, ip: IpAddr, now: Duration) -> bool {
        if !self.budgets.contains_key(&ip) && self.budgets.len() >= MAX_LIMITED_SOURCES {
            // Forget sources whose budget has refilled: they lose nothing.
            self.budgets.retain(|_, b| !b.is_full(now));
            if self.budgets.len() >= MAX_LIMITED_SOURCES {
                return false;
            }
        }
        let bucket = self
            .budgets
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(REPLIES_PER_SECOND, REPLY_BURST, now));
        // One token per reply: a bucket counted in replies, not bytes.
        if bucket.take(1, now).is_zero() {
            true
        } else {
            // Undo the debt: a refused reply must not cost future ones.
            bucket.give_back(1);
            false
        }
    }

    /// Forgets peers silent for longer than the TTL; returns them.
    pub fn expire(&mut self, now: Duration) -> Vec<PeerInfo> {
        let ttl = self.ttl;
        let mut gone = Vec::new();
        self.peers.retain(|_, p| {
            let keep = now.saturating_sub(p.last_seen) <= ttl;
            if !keep {
                gone.push(p.clone());
            }
            keep
        });
        gone
    }

    /// Known peers, in node ID order.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut v: Vec<_> = self.peers.values().cloned().collect();
        v.sort_by_key(|p| p.node_id);
        v
    }

    pub fn stats(&self) -> DiscoveryStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::ZERO;
    const ME: NodeId = NodeId([1; 32]);

    fn pkt(kind: Kind, id: u8, port: u16) -> [u8; PACKET_LEN] {
        Packet {
            kind,
            node_id: NodeId([id; 32]),
            tcp_port: port,
            revision: 7,
        }
        .encode()
    }

    fn src(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 77, 0, last], 9000))
    }

    #[test]
    fn packet_round_trip_and_golden_bytes() {
        let p = Packet {
            kind: Kind::Announce,
            node_id: NodeId([0xAB; 32]),
            tcp_port: 9000,
            revision: 0x0102_0304_0506_0708,
        };
        let b = p.encode();
        assert_eq!(PACKET_LEN, 48);
        assert_eq!(&b[..6], b"PSDS\x01\x01");
        assert_eq!(&b[38..40], &[0x23, 0x28]);
        assert_eq!(&b[40..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(Packet::decode(&b), Ok(p));
    }

    #[test]
    fn decoder_rejects_garbage_truncated_foreign_oversized() {
        let good = pkt(Kind::Query, 2, 0);
        assert_eq!(Packet::decode(b""), Err(PacketError::Foreign));
        assert_eq!(Packet::decode(b"HTTP/1.1 200"), Err(PacketError::Foreign));
        assert_eq!(Packet::decode(&good[..20]), Err(PacketError::Length(20)));
        let mut big = good.to_vec();
        big.extend_from_slice(&[0; 1000]);
        assert_eq!(
            Packet::decode(&big),
            Err(PacketError::Length(PACKET_LEN + 1000))
        );
        let mut v = good;
        v[4] = 9;
        assert_eq!(Packet::decode(&v), Err(PacketError::Version(9)));
        let mut k = good;
        k[5] = 0;
        assert_eq!(Packet::decode(&k), Err(PacketError::Kind(0)));
        // Every prefix and every single-byte change: no panic.
        for n in 0..=PACKET_LEN {
            let _ = Packet::decode(&good[..n]);
        }
        for i in 0..PACKET_LEN {
            for x in [0u8, 1, 0x80, 0xFF] {
                let mut b = good;
                b[i] ^= x;
                let _ = Packet::decode(&b);
            }
        }
    }

    #[test]
    fn announce_adds_peer_with_source_ip_and_tcp_port() {
        let mut t = DiscoveryTracker::new(ME, Duration::from_secs(15));
        assert_eq!(
            t.handle_datagram(src(2), &pkt(Kind::Announce, 2, 9001), T0),
            None
        );
        let peers = t.peers();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].addr, SocketAddr::from(([10, 77, 0, 2], 9001)));
        assert_eq!(peers[0].via, FoundVia::Announce);
        assert_eq!(peers[0].revision, 7);
    }

    #[test]
    fn own_foreign_and_malformed_packets_are_ignored_and_counted() {
        let mut t = DiscoveryTracker::new(ME, Duration::from_secs(15));
        assert_eq!(
            t.handle_datagram(src(1), &pkt(Kind::Query, 1, 9000), T0),
            None
        );
        assert_eq!(t.handle_datagram(src(3), b"not ours", T0), None);
        assert_eq!(
            t.handle_datagram(src(3), &pkt(Kind::Query, 3, 0)[..47], T0),
            None
        );
        let s = t.stats();
        assert_eq!(
            (s.own, s.foreign, s.malformed, s.replies_sent),
            (1, 1, 1, 0)
        );
        assert!(t.peers().is_empty());
    }

    #[test]
    fn query_gets_one_reply_to_its_source_only() {
        let mut t = DiscoveryTracker::new(ME, Duration::from_secs(15));
        assert_eq!(
            t.handle_datagram(src(5), &pkt(Kind::Query, 5, 0), T0),
            Some(src(5))
        );
        // A non-serving querier is not a peer; a serving one is.
        assert!(t.peers().is_empty());
        assert_eq!(
            t.handle_datagram(src(6), &pkt(Kind::Query, 6, 9000), T0),
            Some(src(6))
        );
        assert_eq!(t.peers()[0].via, FoundVia::Query);
        // Announcements and replies are never answered.
        assert_eq!(
            t.handle_datagram(src(7), &pkt(Kind::Announce, 7, 9000), T0),
            None
        );
        assert_eq!(
            t.handle_datagram(src(8), &pkt(Kind::Reply, 8, 9000), T0),
            None
        );
    }

    #[test]
    fn query_burst_from_one_source_is_rate_limited() {
        let mut t = DiscoveryTracker::new(ME, Duration::from_secs(15));
        let answered = (0..100)
            .filter(|_| {
                t.handle_datagram(src(9), &pkt(Kind::Query, 9, 0), T0)
                    .is_some()
            })
            .count();
        assert_eq!(answered as u64, REPLY_BURST);
        assert_eq!(t.stats().rate_limited, 100 - REPLY_BURST);
        // Another source is unaffected.
        assert!(
            t.handle_datagram(src(10), &pkt(Kind::Query, 10, 0), T0)
                .is_some()
        );
        // The budget refills at REPLIES_PER_SECOND.
        let later = Duration::from_secs(1);
        let refilled = (0..100)
            .filter(|_| {
                t.handle_datagram(src(9), &pkt(Kind::Query, 9, 0), later)
                    .is_some()
            })
            .count();
        assert_eq!(refilled as u64, REPLIES_PER_SECOND);
    }

    #[test]
    fn reply_budgets_are_bounded_in_number() {
        let mut t = DiscoveryTracker::new(ME, Duration::from_secs(15));
        for i in 0..(MAX_LIMITED_SOURCES as u32 + 10) {
            let ip = std::net::Ipv4Addr::from(0x0A00_0000 + i);
            let _ = t.handle_datagram(SocketAddr::new(ip.into(), 1), &pkt(Kind::Query, 2, 0), T0);
        }
        assert!(t.budgets.len() <= MAX_LIMITED_SOURCES);
    }

    #[test]
    fn peers_are_bounded_in_number() {
        let mut t = DiscoveryTracker::new(ME, Duration::from_secs(15));
        for i in 0..(MAX_TRACKED_PEERS + 5) {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(i as u64 + 100).to_be_bytes());
            let p = Packet {
                kind: Kind::Announce,
                node_id: NodeId(id),
                tcp_port: 1,
                revision: 0,
            };
            t.handle_datagram(src(2), &p.encode(), T0);
        }
        assert_eq!(t.peers().len(), MAX_TRACKED_PEERS);
        assert_eq!(t.stats().peers_dropped_full, 5);
    }

    #[test]
    fn ipv6_scope_is_kept_and_family_does_not_flap() {
        let mut t = DiscoveryTracker::new(ME, Duration::from_secs(15));
        let v6: SocketAddr = "[fe80::1%3]:9000".parse().unwrap();
        t.handle_datagram(v6, &pkt(Kind::Announce, 2, 9005), T0);
        let got = t.peers()[0].addr;
        assert_eq!(got, "[fe80::1%3]:9005".parse::<SocketAddr>().unwrap());
        let SocketAddr::V6(a) = got else { panic!() };
        assert_eq!(a.scope_id(), 3);
        // Heard over IPv4 too: the address stays IPv6, the peer stays fresh.
        t.handle_datagram(
            src(2),
            &pkt(Kind::Announce, 2, 9005),
            Duration::from_secs(9),
        );
        assert_eq!(t.peers()[0].addr, got);
        assert_eq!(t.peers()[0].last_seen, Duration::from_secs(9));
    }

    #[test]
    fn silent_peers_age_out() {
        let ttl = Duration::from_secs(3);
        let mut t = DiscoveryTracker::new(ME, ttl);
        t.handle_datagram(src(2), &pkt(Kind::Announce, 2, 9000), T0);
        t.handle_datagram(src(3), &pkt(Kind::Announce, 3, 9000), T0);
        // Node 3 keeps announcing; node 2 falls silent.
        t.handle_datagram(
            src(3),
            &pkt(Kind::Announce, 3, 9000),
            Duration::from_secs(3),
        );
        assert!(t.expire(ttl).is_empty(), "exactly the TTL is still alive");
        let gone = t.expire(Duration::from_secs(4));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].node_id, NodeId([2; 32]));
        assert_eq!(t.peers().len(), 1);
    }
}
