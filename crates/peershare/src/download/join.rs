//! A peer's first contact with a download, and the bookkeeping of which
//! addresses were asked, which answered what, and when one that said no
//! may be asked again.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use peershare_proto::manifest::Manifest;
use peershare_proto::wire::Holding;
use peershare_proto::{FileId, NodeId};
use tokio::task::JoinSet;

use super::DownloadRequest;
use crate::client::{ClientConfig, HaveWatch, PeerConn};
use crate::error::PeerError;
use crate::pool::PeerPool;
use crate::tls::Tls;

/// An address that answered "not here" (or could not be reached) is asked
/// again after this long, the wait doubling per answer to
/// `MAX_REJOIN_BACKOFF`, for as long as the download runs: a peer whose own
/// download had not started when first asked is a source a moment later.
pub const REJOIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between two askings of the same address.
pub const MAX_REJOIN_BACKOFF: Duration = Duration::from_secs(30);

/// Retries of an address that answered busy wait this long at first,
/// doubling (with jitter) to `MAX_BUSY_BACKOFF`.
pub const BUSY_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between two tries of a busy address.
pub const MAX_BUSY_BACKOFF: Duration = Duration::from_secs(16);
/// Addresses a download remembers to ask again, at most (reports beyond
/// it are still asked once).
pub const MAX_KNOWN_ADDRS: usize = 1024;
/// Node IDs remembered as announced at one address (a spoofed flood of
/// announcements must not grow memory).
pub const MAX_ANNOUNCED_PER_ADDR: usize = 8;

/// Who must answer at an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Expect {
    /// Anyone (an address given by hand).
    Any,
    /// Exactly this node (a ticket names it): another is refused before a
    /// word is sent.
    Node(NodeId),
    /// One of the nodes announced there. Announcements are unauthenticated,
    /// so a forged one may sit beside the real one: any of them proven is
    /// accepted, and a node that is none of them is refused for now but
    /// asked again when reported again (no single packet can stop it).
    OneOf(Vec<NodeId>),
}

/// How a peer's first contact ended.
pub(super) enum Joined {
    /// Connected, and has (some of) the file: its manifest, checked against
    /// the ID, which chunks it holds, and its announcements if partial.
    Ready(Ready),
    /// Connected, but does not share the file.
    NotFound,
    /// It is this node (found by discovery): never a source.
    Myself,
    /// Could not connect.
    Unreachable(PeerError),
    /// Refused as busy (it serves too many connections): asked again.
    Busy(PeerError),
    /// Connected, then failed (bad manifest, protocol error, silence).
    Failed(PeerError),
}

/// A peer that has (some of) the file.
pub(super) struct Ready {
    pub conn: Arc<PeerConn>,
    pub manifest: Manifest,
    pub holding: Holding,
    pub have: Option<HaveWatch>,
}

/// A peer's first contact: connect (the node there as `pin` says), check
/// it is not this node, then its manifest (checked against `id`) and which
/// chunks it holds, all within `deadline`: a peer that trickles its
/// manifest must not hold a download.
pub(super) async fn join_peer(
    addr: SocketAddr,
    id: FileId,
    tls: Tls,
    expect: Expect,
    config: ClientConfig,
    deadline: Duration,
    pool: Option<PeerPool>,
) -> Joined {
    let contacting = contact(addr, id, tls, expect, config, pool);
    match tokio::time::timeout(deadline, contacting).await {
        Ok(joined) => joined,
        Err(_) => Joined::Failed(PeerError::Timeout {
            addr,
            secs: deadline.as_secs(),
        }),
    }
}

async fn contact(
    addr: SocketAddr,
    id: FileId,
    tls: Tls,
    expect: Expect,
    config: ClientConfig,
    pool: Option<PeerPool>,
) -> Joined {
    let node = match &expect {
        Expect::Node(n) => Some(*n),
        Expect::Any | Expect::OneOf(_) => None,
    };
    let connected = match &pool {
        Some(pool) => pool.connect(addr, &tls, node, config).await,
        None => PeerConn::connect(addr, &tls, node, config)
            .await
            .map(Arc::new),
    };
    let conn = match connected {
        Ok(c) => c,
        // Someone else answers there: asking again will not help.
        Err(e @ PeerError::WrongNode { .. }) => return Joined::Failed(e),
        Err(e) if e.is_busy() => return Joined::Busy(e),
        Err(e) => return Joined::Unreachable(e),
    };
    let proven = conn.remote().node_id;
    if proven == tls.node_id() {
        // Our own server (found by discovery): it holds nothing we lack.
        return Joined::Myself;
    }
    if let Expect::OneOf(announced) = &expect
        && !announced.contains(&proven)
    {
        return Joined::Failed(PeerError::WrongNode {
            addr,
            expected: announced[0],
            got: proven,
        });
    }
    let manifest = match conn.manifest(id).await {
        Ok(m) => m,
        Err(e) if e.is_not_found() => return Joined::NotFound,
        Err(e) => return Joined::Failed(e),
    };
    match conn.have(id, true).await {
        Ok((holding, have)) => Joined::Ready(Ready {
            conn,
            manifest,
            holding,
            have,
        }),
        Err(e) if e.is_not_found() => Joined::NotFound,
        Err(e) => Joined::Failed(e),
    }
}

/// Per address: when it may be asked again, and the wait after that.
type RetryAt = HashMap<SocketAddr, (Duration, Duration)>;

/// The addresses a download asks to join it: those being asked, those that
/// are (or were) sources or are this node (never asked again), and, for
/// the others that answered no, when they may be asked again (a node whose
/// own download had not started yet may have the file a moment later).
pub(super) struct Joins {
    pub joining: JoinSet<(SocketAddr, Joined)>,
    trying: HashSet<SocketAddr>,
    settled: HashSet<SocketAddr>,
    failed_once: HashSet<SocketAddr>,
    retry_at: RetryAt,
    /// The node each address must be (a ticket's)...
    expect: HashMap<SocketAddr, NodeId>,
    /// ...or else one of the nodes announced there.
    announced: HashMap<SocketAddr, Vec<NodeId>>,
    /// Busy addresses: when they first said so, and the next wait.
    busy: HashMap<SocketAddr, (Duration, Duration)>,
    /// How long busy addresses are retried.
    retry_busy_for: Duration,
    /// Every address given or reported: those that said no are asked
    /// again when their backoff is over.
    known: HashSet<SocketAddr>,
    /// Why peers that connected could not take part, once per address.
    pub failures: Vec<String>,
    /// Why peers could not be reached, once per address.
    pub unreachable: Vec<PeerError>,
    /// Answers of "not here" (or "that is this node").
    pub not_found: usize,
}

impl Joins {
    pub fn new(req: &DownloadRequest) -> Self {
        let mut joins = Self {
            joining: JoinSet::new(),
            trying: HashSet::new(),
            settled: HashSet::new(),
            failed_once: HashSet::new(),
            retry_at: RetryAt::new(),
            expect: req.expect.clone(),
            announced: HashMap::new(),
            busy: HashMap::new(),
            retry_busy_for: req.config.retry_busy_for,
            known: req.peers.iter().copied().collect(),
            failures: Vec::new(),
            unreachable: Vec::new(),
            not_found: 0,
        };
        for &(addr, node) in &req.announced {
            joins.announce(addr, node);
        }
        joins
    }

    /// `node` was announced at `addr`.
    fn announce(&mut self, addr: SocketAddr, node: NodeId) {
        let nodes = self.announced.entry(addr).or_default();
        if !nodes.contains(&node) && nodes.len() < MAX_ANNOUNCED_PER_ADDR {
            nodes.push(node);
        }
    }

    /// Who must answer at `addr`.
    pub fn expected(&self, addr: SocketAddr) -> Expect {
        match (self.expect.get(&addr), self.announced.get(&addr)) {
            (Some(n), _) => Expect::Node(*n),
            (None, Some(nodes)) if !nodes.is_empty() => Expect::OneOf(nodes.clone()),
            _ => Expect::Any,
        }
    }

    /// Asks `addr` to join, unless it is being asked already.
    pub fn ask(&mut self, addr: SocketAddr, req: &DownloadRequest) {
        self.ask_after(addr, Duration::ZERO, req);
    }

    /// Asks `addr` to join after `delay`.
    fn ask_after(&mut self, addr: SocketAddr, delay: Duration, req: &DownloadRequest) {
        if !self.trying.insert(addr) {
            return;
        }
        let expect = self.expected(addr);
        let (id, tls, config) = (req.id, req.tls.clone(), req.config.client.clone());
        let (deadline, pool) = (req.config.join_timeout, req.pool.clone());
        self.joining.spawn(tagged(addr, async move {
            tokio::time::sleep(delay).await;
            join_peer(addr, id, tls, expect, config, deadline, pool).await
        }));
    }

    /// True while some address is being asked.
    pub fn pending(&self) -> bool {
        !self.joining.is_empty()
    }

    /// Records how `addr`'s contact ended; a ready peer is handed back. A
    /// busy one is asked again after a backoff, for `retry_busy_for`.
    pub fn settle(
        &mut self,
        addr: SocketAddr,
        joined: Joined,
        now: Duration,
        req: &DownloadRequest,
    ) -> Option<Ready> {
        self.trying.remove(&addr);
        match joined {
            Joined::Ready(r) => {
                self.settled.insert(addr);
                self.retry_at.remove(&addr);
                self.busy.remove(&addr);
                return Some(r);
            }
            Joined::Busy(e) => {
                let (since, wait) = *self.busy.entry(addr).or_insert((now, BUSY_BACKOFF));
                if now.saturating_sub(since) < self.retry_busy_for {
                    tracing::info!("{e}; asking again in about {} s", wait.as_secs());
                    self.busy
                        .insert(addr, (since, (wait * 2).min(MAX_BUSY_BACKOFF)));
                    self.ask_after(addr, jitter(wait), req);
                } else {
                    self.busy.remove(&addr);
                    self.backoff(addr, now);
                    if self.failed_once.insert(addr) {
                        self.unreachable.push(e);
                    }
                }
            }
            Joined::Myself => {
                self.settled.insert(addr);
                self.not_found += 1;
            }
            Joined::NotFound => {
                self.backoff(addr, now);
                self.not_found += 1;
            }
            Joined::Unreachable(e) => {
                tracing::info!("{e}");
                self.backoff(addr, now);
                if self.failed_once.insert(addr) {
                    self.unreachable.push(e);
                }
            }
            Joined::Failed(e) => {
                tracing::info!("{e}");
                // Another node than a ticket names: asking again will not
                // help. (One not among those announced may be, later.)
                if matches!(e, PeerError::WrongNode { .. })
                    && matches!(self.expected(addr), Expect::Node(_))
                {
                    self.settled.insert(addr);
                } else {
                    self.backoff(addr, now);
                }
                if self.failed_once.insert(addr) {
                    self.failures.push(e.to_string());
                }
            }
        }
        None
    }

    /// Peers reported while the download runs (the pins they come with
    /// apply unless one is set), and the request's own: each that is not a
    /// source and whose backoff is over is asked again.
    pub fn reported(
        &mut self,
        reported: &[(SocketAddr, Option<NodeId>)],
        req: &DownloadRequest,
        now: Duration,
    ) {
        for &(addr, node) in reported {
            if let Some(node) = node {
                self.announce(addr, node);
            }
            if self.known.len() < MAX_KNOWN_ADDRS {
                self.known.insert(addr);
            }
        }
        let all = reported
            .iter()
            .map(|r| r.0)
            .chain(req.peers.iter().copied());
        for addr in all.collect::<Vec<_>>() {
            let due = self.retry_at.get(&addr).is_none_or(|(t, _)| *t <= now);
            if self.settled.contains(&addr) || !due || self.trying.contains(&addr) {
                continue;
            }
            tracing::debug!(peer = %addr, "asking it to join");
            self.ask(addr, req);
        }
    }

    /// When the next address that said no may be asked again.
    pub fn next_retry(&self) -> Option<Duration> {
        self.known
            .iter()
            .filter(|a| !self.settled.contains(a) && !self.trying.contains(a))
            .filter_map(|a| self.retry_at.get(a).map(|(t, _)| *t))
            .min()
    }

    /// Asks again every address that said no whose backoff is over.
    pub fn retry_due(&mut self, now: Duration, req: &DownloadRequest) {
        let due: Vec<SocketAddr> = self
            .known
            .iter()
            .filter(|a| !self.settled.contains(a) && !self.trying.contains(a))
            .filter(|a| self.retry_at.get(a).is_some_and(|(t, _)| *t <= now))
            .copied()
            .collect();
        for addr in due {
            tracing::debug!(peer = %addr, "asking it again");
            self.ask(addr, req);
        }
    }

    /// A source given up on may be asked again when it is reported again.
    pub fn unsettle(&mut self, addr: SocketAddr) {
        self.settled.remove(&addr);
    }

    fn backoff(&mut self, addr: SocketAddr, now: Duration) {
        let wait = self.retry_at.get(&addr).map_or(REJOIN_BACKOFF, |(_, w)| *w);
        self.retry_at
            .insert(addr, (now + wait, (wait * 2).min(MAX_REJOIN_BACKOFF)));
    }

    /// Every reason peers could not take part, for an error message.
    pub fn reasons(&self) -> Vec<String> {
        let mut out = self.failures.clone();
        out.extend(self.unreachable.iter().map(|e| e.to_string()));
        out
    }
}

/// `wait`, give or take a quarter, so that many downloaders refused at
/// once do not all come back at the same instant.
fn jitter(wait: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    let r = (h.finish() % 1000) as f64 / 1000.0; // 0..1
    wait.mul_f64(0.75 + r / 2.0)
}

async fn tagged<T>(addr: SocketAddr, f: impl Future<Output = T>) -> (SocketAddr, T) {
    (addr, f.await)
}
