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
use crate::tls::Tls;

/// An address that answered "not here" (or failed) is asked again the next
/// time discovery reports it; after a second such answer it waits this
/// long, doubling per answer, to `MAX_REJOIN_BACKOFF`.
pub const REJOIN_BACKOFF: Duration = Duration::from_secs(5);
/// Longest wait between two askings of the same address.
pub const MAX_REJOIN_BACKOFF: Duration = Duration::from_secs(60);

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

pub(super) async fn join_peer(
    addr: SocketAddr,
    id: FileId,
    tls: Tls,
    expect: Option<NodeId>,
    config: ClientConfig,
) -> Joined {
    let conn = match PeerConn::connect(addr, &tls, expect, config).await {
        Ok(c) => c,
        // Someone else answers there: asking again will not help.
        Err(e @ PeerError::WrongNode { .. }) => return Joined::Failed(e),
        Err(e) => return Joined::Unreachable(e),
    };
    if conn.remote().node_id == tls.node_id() {
        // Our own server (found by discovery): it holds nothing we lack.
        return Joined::Myself;
    }
    let manifest = match conn.manifest(id).await {
        Ok(m) => m,
        Err(e) if e.is_not_found() => return Joined::NotFound,
        Err(e) => return Joined::Failed(e),
    };
    match conn.have(id, true).await {
        Ok((holding, have)) => Joined::Ready(Ready {
            conn: Arc::new(conn),
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
    /// The node expected at each address: the request's, then the first
    /// node reported there.
    pins: HashMap<SocketAddr, NodeId>,
    /// Why peers that connected could not take part, once per address.
    pub failures: Vec<String>,
    /// Why peers could not be reached, once per address.
    pub unreachable: Vec<PeerError>,
    /// Answers of "not here" (or "that is this node").
    pub not_found: usize,
}

impl Joins {
    pub fn new(req: &DownloadRequest) -> Self {
        Self {
            joining: JoinSet::new(),
            trying: HashSet::new(),
            settled: HashSet::new(),
            failed_once: HashSet::new(),
            retry_at: RetryAt::new(),
            pins: req.expect.clone(),
            failures: Vec::new(),
            unreachable: Vec::new(),
            not_found: 0,
        }
    }

    /// Asks `addr` to join, unless it is being asked already.
    pub fn ask(&mut self, addr: SocketAddr, req: &DownloadRequest) {
        if !self.trying.insert(addr) {
            return;
        }
        let expect = self.pins.get(&addr).copied();
        let (id, tls, config) = (req.id, req.tls.clone(), req.config.client.clone());
        self.joining
            .spawn(tagged(addr, join_peer(addr, id, tls, expect, config)));
    }

    /// True while some address is being asked.
    pub fn pending(&self) -> bool {
        !self.joining.is_empty()
    }

    /// Records how `addr`'s contact ended; a ready peer is handed back.
    pub fn settle(&mut self, addr: SocketAddr, joined: Joined, now: Duration) -> Option<Ready> {
        self.trying.remove(&addr);
        match joined {
            Joined::Ready(r) => {
                self.settled.insert(addr);
                self.retry_at.remove(&addr);
                return Some(r);
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
                self.backoff(addr, now);
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
                self.pins.entry(addr).or_insert(node);
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

    /// A source given up on may be asked again when it is reported again.
    pub fn unsettle(&mut self, addr: SocketAddr) {
        self.settled.remove(&addr);
    }

    fn backoff(&mut self, addr: SocketAddr, now: Duration) {
        let next = match self.retry_at.get(&addr) {
            None => (now, REJOIN_BACKOFF),
            Some((_, wait)) => (now + *wait, (*wait * 2).min(MAX_REJOIN_BACKOFF)),
        };
        self.retry_at.insert(addr, next);
    }

    /// Every reason peers could not take part, for an error message.
    pub fn reasons(&self) -> Vec<String> {
        let mut out = self.failures.clone();
        out.extend(self.unreachable.iter().map(|e| e.to_string()));
        out
    }
}

async fn tagged<T>(addr: SocketAddr, f: impl Future<Output = T>) -> (SocketAddr, T) {
    (addr, f.await)
}
