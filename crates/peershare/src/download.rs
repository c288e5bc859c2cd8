//! The download driver: the async shell around [`Scheduler`].
//!
//! ```text
//!  connect to every given peer ──► fetch manifest, check it hashes to the ID
//!        │
//!        ▼
//!  Scheduler::poll_request(peer) ──► task: GetChunk ─► bytes ─► blocking pool:
//!        ▲                                            SHA-256 check, pwrite at offset
//!        └──── handle_verified / handle_failed / handle_peer_lost ◄──┘
//!  every second: snapshot written chunks ─► fdatasync part ─► replace state file
//!  all chunks done: fsync ─► link part to the final name (never replacing) ─► fsync dir
//! ```
//!
//! Every peer that has the file takes part at once: its `Have` (which
//! chunks it holds; a downloader holds some) and its have-announcements feed
//! the scheduler, which picks the rarest chunks first, sizes each peer's
//! window by its measured throughput, and in endgame asks a second peer for
//! the last chunks: the first verified copy wins and the other request is
//! cancelled (its fetch task aborted, a `Cancel` sent). Peers given later
//! (`DownloadRequest::more_peers`, e.g. from discovery) join the running
//! download. With `DownloadRequest::library` and `share`, the download is
//! recorded in the library while it runs, so a server on that data directory offers its
//! verified chunks, and the finished file is shared.
//!
//! Memory is bounded by the number of requests in flight: a window per
//! peer of at most `window_bytes`, and `max_in_flight_bytes` for all peers
//! together (plus one fair share per peer), whatever the file size. A chunk counts only
//! once its hash matched; a chunk in the state file is on disk (see
//! [`crate::partial`]); a file under the final name is always complete and
//! verified.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use peershare_proto::manifest::Manifest;
use peershare_proto::rate::TokenBucket;
use peershare_proto::schedule::{DropReason, Failure, PeerKey, Scheduler, SchedulerConfig, Status};
use peershare_proto::ticket::safe_file_name;
use peershare_proto::wire::Holding;
use peershare_proto::{FileId, NodeId};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};

use crate::client::{ClientConfig, HaveWatch, PeerConn};
use crate::error::{DownloadError, PeerError};
use crate::partial::{Bitmap, load_state, part_paths, store_state};
use crate::store::{Download, Library};
use crate::tls::Tls;

/// Where to save.
#[derive(Debug, Clone)]
pub enum Output {
    /// Exactly this path.
    File(PathBuf),
    /// This directory, under the file's shared name.
    Dir(PathBuf),
}

/// Download tuning; plain data with sane defaults.
#[derive(Debug, Clone)]
pub struct DownloadConfig {
    pub client: ClientConfig,
    pub scheduler: SchedulerConfig,
    /// Most bytes requested but not yet received, per peer: the scheduler's
    /// largest window is this divided by the chunk size, within 2..=64
    /// requests (the window itself follows the peer's throughput).
    pub window_bytes: u64,
    /// Bytes requested but not yet received from all peers together (at
    /// least two chunks): what bounds memory with many peers. Past it, a
    /// peer below its fair share (this divided among the live peers, at
    /// least one chunk) may still ask, so slow peers cannot starve a fast
    /// one.
    pub max_in_flight_bytes: u64,
    /// How long a download may wait while its live peers hold none of the
    /// missing chunks (they are downloading too) before it gives up.
    pub starved_timeout: Duration,
    /// Longest time between durable progress records.
    pub checkpoint_interval: Duration,
    /// Most bytes verified but not yet recorded durably.
    pub checkpoint_bytes: u64,
    /// Total download rate, bytes/s.
    pub max_download_rate: Option<u64>,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        Self {
            client: ClientConfig::default(),
            scheduler: SchedulerConfig::default(),
            window_bytes: 16 * 1024 * 1024,
            max_in_flight_bytes: 32 * 1024 * 1024,
            starved_timeout: Duration::from_secs(120),
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_bytes: 256 * 1024 * 1024,
            max_download_rate: None,
        }
    }
}

/// Peers learned while a download runs: each address, with the node
/// announced there when known.
pub type Reported = Vec<(SocketAddr, Option<NodeId>)>;

/// What to download, from whom, to where.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    pub id: FileId,
    /// The shared name, if known (tickets carry it); otherwise it is looked
    /// up in the peers' catalogs.
    pub name: Option<String>,
    pub peers: Vec<SocketAddr>,
    pub output: Output,
    /// Replace an existing file at the output path.
    pub force: bool,
    /// This node's TLS endpoint (and so its node ID).
    pub tls: Tls,
    /// The node expected at an address (a ticket names its node): a peer
    /// there that proves another identity is refused.
    pub expect: HashMap<SocketAddr, NodeId>,
    pub config: DownloadConfig,
    /// Addresses learned while the download runs (e.g. by discovery), with
    /// the node announced there if known: any not yet tried joins the
    /// download, and must be that node (unless `expect` names another).
    pub more_peers: Option<watch::Receiver<Reported>>,
    /// This node's library. With `share`, the download is recorded there
    /// while it runs (a server on the same data directory then offers its
    /// verified chunks) and the finished file is shared there; without,
    /// any record of an earlier run to the same output is withdrawn.
    pub library: Option<Library>,
    pub share: bool,
    /// Keep the download, and the finished file, out of the library's
    /// catalog (the ticket said the file is unlisted).
    pub unlisted: bool,
}

/// Live counters a UI can poll.
#[derive(Debug, Default)]
pub struct Progress {
    /// File size; 0 until the manifest is known.
    pub total: AtomicU64,
    /// Bytes verified so far, resumed ones included.
    pub verified: AtomicU64,
    /// Bytes received from the network in this run.
    pub received: AtomicU64,
    /// Peers currently taking part.
    pub peers: AtomicU64,
    /// Per peer: verified bytes delivered so far in this run.
    pub per_peer: std::sync::Mutex<Vec<PeerProgress>>,
}

/// One peer's share of a running download, for per-peer rates.
#[derive(Debug, Clone)]
pub struct PeerProgress {
    pub addr: SocketAddr,
    pub bytes: u64,
    /// Still taking part.
    pub live: bool,
    /// Held only part of the file when it joined (a downloader itself).
    pub partial: bool,
    /// Why it no longer takes part, when it does not.
    pub dropped: Option<String>,
}

/// What one peer contributed.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    pub addr: SocketAddr,
    pub node_id: Option<String>,
    /// Verified bytes it delivered.
    pub bytes: u64,
    pub chunks: u32,
    /// Chunks from it that failed verification.
    pub corrupt: u32,
    /// It held only part of the file when it joined (it was downloading it).
    pub partial: bool,
    /// Why it stopped taking part, if it did.
    pub dropped: Option<String>,
}

/// The result of a finished download.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadSummary {
    pub id: String,
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub chunks: u32,
    /// Bytes received from the network in this run (including any that
    /// failed verification).
    pub bytes_received: u64,
    /// Bytes already verified on disk from an earlier run.
    pub bytes_resumed: u64,
    pub seconds: f64,
    pub peers: Vec<PeerReport>,
    /// Endgame requests: chunks asked of a second peer near the end.
    pub duplicate_requests: u64,
    /// Most requests in flight at once, all peers together.
    pub peak_in_flight: usize,
    /// Whether the finished file is now shared by this node.
    pub shared: bool,
}

enum Outcome {
    Verified,
    Corrupt,
    Peer(PeerError),
    Disk(io::Error),
}

struct Event {
    slot: usize,
    /// The scheduler key the request was made under: after a reconnection
    /// the slot has a new key, and late results of the old connection must
    /// only ever touch the old one.
    key: PeerKey,
    index: u32,
    outcome: Outcome,
}

struct Slot {
    conn: Arc<PeerConn>,
    key: PeerKey,
    report: PeerReport,
    /// The latest error from this peer, for the report if it is dropped.
    last_error: Option<String>,
    /// Reconnections tried after its connection was lost.
    reconnects: u32,
    /// A reconnection is under way.
    reconnecting: bool,
}

impl Slot {
    fn new(conn: Arc<PeerConn>, key: PeerKey, partial: bool) -> Self {
        Slot {
            report: PeerReport {
                addr: conn.addr(),
                node_id: Some(conn.remote().node_id.to_string()),
                bytes: 0,
                chunks: 0,
                corrupt: 0,
                partial,
                dropped: None,
            },
            conn,
            key,
            last_error: None,
            reconnects: 0,
            reconnecting: false,
        }
    }
}

/// How a peer's first contact ended.
enum Joined {
    /// Connected, and has (some of) the file: its manifest, checked against
    /// the ID, which chunks it holds, and its announcements if partial.
    Ready(Arc<PeerConn>, Manifest, Holding, Option<HaveWatch>),
    /// Connected, but does not share the file.
    NotFound,
    /// It is this node (found by discovery): never a source.
    Myself,
    /// Could not connect.
    Unreachable(PeerError),
    /// Connected, then failed (bad manifest, protocol error, silence).
    Failed(PeerError),
}

async fn join_peer(
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
        Ok((holding, have)) => Joined::Ready(Arc::new(conn), manifest, holding, have),
        Err(e) if e.is_not_found() => Joined::NotFound,
        Err(e) => Joined::Failed(e),
    }
}

/// [`join_peer`] for `addr`, tagged with it; the node there must be
/// `expect`, when given.
fn join_at(
    addr: SocketAddr,
    expect: Option<NodeId>,
    req: &DownloadRequest,
) -> impl Future<Output = (SocketAddr, Joined)> + Send + 'static {
    let (id, tls, config) = (req.id, req.tls.clone(), req.config.client.clone());
    async move { (addr, join_peer(addr, id, tls, expect, config).await) }
}

/// A partial peer's announcement for the driver: its slot and key, and its
/// latest set, or `None` once its announcements ended (its connection
/// closed, or its own download stopped).
type HaveUpdate = (usize, PeerKey, Option<Holding>);

/// Forwards a partial peer's `Have` updates to the driver until its
/// connection ends, and then says so: a peer the driver asks nothing of
/// would otherwise be lost without anyone noticing.
async fn forward_haves(
    mut have: HaveWatch,
    slot: usize,
    key: PeerKey,
    to: mpsc::Sender<HaveUpdate>,
) {
    while have.changed().await.is_ok() {
        let latest = have.borrow_and_update().clone();
        if let Some(h) = latest
            && to.send((slot, key, Some(h))).await.is_err()
        {
            return;
        }
    }
    let _ = to.send((slot, key, None)).await;
}

/// A peer's connection (or its announcements) ended: its chunks go to the
/// others, and it is reconnected, once per loss, while it has
/// reconnections left.
#[allow(clippy::too_many_arguments)]
fn lose_peer(
    slot: &mut Slot,
    slot_no: usize,
    key: PeerKey,
    why: String,
    sched: &mut Scheduler,
    reconnecting: &mut JoinSet<(usize, Joined)>,
    in_flight: &mut InFlight,
    req: &DownloadRequest,
    now: Duration,
) {
    // A late failure of a replaced connection says nothing about the
    // current one.
    let first = key == slot.key && sched.dropped(key).is_none();
    sched.handle_peer_lost(key, now);
    // Its requests went back to the scheduler: stop waiting for them (the
    // connection may still be up, e.g. when only its announcements ended).
    in_flight.retain(|(k, _), task| {
        if *k == key {
            task.abort();
        }
        *k != key
    });
    if first && !slot.reconnecting && slot.reconnects < MAX_RECONNECTS {
        tracing::info!("{why}; reconnecting");
        reconnecting.spawn(slot.reconnect(slot_no, req));
    } else if first {
        tracing::warn!("{why}");
    }
    if first {
        slot.last_error = Some(why);
    }
}

/// Fetch tasks under way, by scheduler key and chunk.
type InFlight = std::collections::HashMap<(PeerKey, u32), AbortHandle>;

/// Records, once, why a peer was dropped.
fn note_drop(slot: &mut Slot, sched: &Scheduler) {
    if slot.report.dropped.is_some() {
        return;
    }
    let Some(reason) = sched.dropped(slot.key) else {
        return;
    };
    let last = slot.last_error.clone();
    slot.report.dropped = Some(match reason {
        DropReason::CorruptData => format!(
            "sent {} chunks that failed verification (corrupt data)",
            slot.report.corrupt
        ),
        DropReason::TooManyErrors => last.unwrap_or_else(|| "too many failed requests".into()),
        DropReason::Disconnected => last.unwrap_or_else(|| "disconnected".into()),
        DropReason::BadHave => "announced chunks of a file of another size".into(),
    });
}

/// An address that answered "not here" (or failed) is asked again the next
/// time discovery reports it; after a second such answer it waits this
/// long, doubling per answer, to `MAX_REJOIN_BACKOFF`.
pub const REJOIN_BACKOFF: Duration = Duration::from_secs(5);
/// Longest wait between two askings of the same address.
pub const MAX_REJOIN_BACKOFF: Duration = Duration::from_secs(60);

/// Per address: when it may be asked again, and the wait after that.
type RetryAt = std::collections::HashMap<SocketAddr, (Duration, Duration)>;

fn backoff(retry_at: &mut RetryAt, addr: SocketAddr, now: Duration) {
    let next = match retry_at.get(&addr) {
        None => (now, REJOIN_BACKOFF),
        Some((_, wait)) => (now + *wait, (*wait * 2).min(MAX_REJOIN_BACKOFF)),
    };
    retry_at.insert(addr, next);
}

/// Times a lost peer is reconnected during one download, at most.
pub const MAX_RECONNECTS: u32 = 3;
/// Wait before the first reconnection; doubles for each further one.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

impl Slot {
    /// The lost peer of this slot is back on `conn` (a reconnection, or a
    /// rejoin after it was given up on): a new scheduler key that keeps
    /// its failures, and a task forwarding its announcements.
    #[allow(clippy::too_many_arguments)]
    fn resume(
        &mut self,
        slot_no: usize,
        conn: Arc<PeerConn>,
        holding: Holding,
        have: Option<HaveWatch>,
        sched: &mut Scheduler,
        watchers: &mut JoinSet<()>,
        have_tx: &mpsc::Sender<HaveUpdate>,
        now: Duration,
    ) {
        self.conn = conn;
        self.key = sched.rejoin(self.key, holding, now);
        self.reconnecting = false;
        self.report.dropped = None;
        if let Some(h) = have {
            watchers.spawn(forward_haves(h, slot_no, self.key, have_tx.clone()));
        }
    }

    /// The next reconnection of this (lost) peer: after its backoff, the
    /// same first contact as any peer's ([`join_peer`]). (Another node at
    /// the address is accepted unless the request names the node there: a
    /// restarted peer may have been replaced.)
    fn reconnect(
        &mut self,
        slot_no: usize,
        req: &DownloadRequest,
    ) -> impl Future<Output = (usize, Joined)> + Send + 'static {
        let delay = RECONNECT_BACKOFF * 2u32.pow(self.reconnects);
        self.reconnects += 1;
        self.reconnecting = true;
        let (addr, id, tls) = (self.report.addr, req.id, req.tls.clone());
        let expect = req.expect.get(&addr).copied();
        let config = req.config.client.clone();
        async move {
            tokio::time::sleep(delay).await;
            (slot_no, join_peer(addr, id, tls, expect, config).await)
        }
    }
}

/// Downloads, verifies and saves one file. `cancel` completing stops the
/// download after recording durable progress, so the same request resumes.
pub async fn download(
    req: DownloadRequest,
    progress: Arc<Progress>,
    cancel: impl Future<Output = ()>,
) -> Result<DownloadSummary, DownloadError> {
    let start = Instant::now();
    let mut addrs = req.peers.clone();
    let mut seen = std::collections::HashSet::new();
    addrs.retain(|a| seen.insert(*a));
    if addrs.is_empty() {
        return Err(DownloadError::NoPeers);
    }

    tokio::pin!(cancel);
    // Every peer at once: connect, then ask for the manifest (checked
    // against the ID). The first that has the file starts the download;
    // the others join it as they answer, so a slow or silent peer delays
    // nothing.
    let mut joining: JoinSet<(SocketAddr, Joined)> = JoinSet::new();
    // Addresses being asked, and those that are (or were) sources or are
    // this node: never asked again. Others that answered no are asked
    // again whenever `more_peers` reports them (a node whose own download
    // had not started yet may have the file a moment later).
    let mut trying: std::collections::HashSet<SocketAddr> = addrs.iter().copied().collect();
    let mut settled: std::collections::HashSet<SocketAddr> = std::collections::HashSet::new();
    let mut failed_once: std::collections::HashSet<SocketAddr> = std::collections::HashSet::new();
    // When an address that said no may be asked again, and its backoff.
    let mut retry_at: RetryAt = RetryAt::new();
    for addr in addrs.iter().copied() {
        joining.spawn(join_at(addr, req.expect.get(&addr).copied(), &req));
    }
    let mut conns: Vec<(Arc<PeerConn>, Holding, Option<HaveWatch>)> = Vec::new();
    let mut manifest = None;
    let mut unreachable = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut not_found = 0;
    while manifest.is_none() {
        let next = tokio::select! {
            j = joining.join_next() => j,
            _ = &mut cancel => return Err(DownloadError::Cancelled),
        };
        let Some(joined) = next else { break };
        let (addr, joined) = joined.expect("join task does not panic");
        trying.remove(&addr);
        match joined {
            Joined::Ready(c, m, holding, have) => {
                settled.insert(addr);
                conns.push((c, holding, have));
                manifest = Some(m);
            }
            Joined::Myself => {
                settled.insert(addr);
                not_found += 1;
            }
            Joined::NotFound => {
                backoff(&mut retry_at, addr, start.elapsed());
                not_found += 1;
            }
            Joined::Unreachable(e) => {
                tracing::info!("{e}");
                backoff(&mut retry_at, addr, start.elapsed());
                failed_once.insert(addr);
                unreachable.push(e);
            }
            Joined::Failed(e) => {
                backoff(&mut retry_at, addr, start.elapsed());
                failed_once.insert(addr);
                failures.push(e.to_string());
            }
        }
    }
    let Some(manifest) = manifest else {
        return Err(if failures.is_empty() && not_found > 0 {
            // Peers that could not be reached do not change the answer of
            // those that could.
            DownloadError::NotFound { id: req.id }
        } else if failures.is_empty() {
            DownloadError::AllUnreachable(unreachable)
        } else {
            failures.extend(unreachable.iter().map(|e| e.to_string()));
            DownloadError::AllSourcesFailed(failures)
        });
    };
    let size = manifest.size();
    progress.total.store(size, Ordering::Relaxed);

    // Where to write.
    let (name, out) = match &req.output {
        Output::File(p) => {
            let name = req.name.clone().unwrap_or_else(|| {
                p.file_name()
                    .map_or_else(|| req.id.to_string(), |n| n.to_string_lossy().into())
            });
            (name, p.clone())
        }
        Output::Dir(d) => {
            let name = match &req.name {
                Some(n) => n.clone(),
                None => lookup_name(
                    &conns.iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
                    req.id,
                )
                .await
                .unwrap_or_else(|| req.id.to_string()),
            };
            let base = safe_file_name(&name)?.to_owned();
            (name, d.join(base))
        }
    };
    if !req.force && out.symlink_metadata().is_ok() {
        return Err(DownloadError::OutputExists(out));
    }
    let (part_path, state_path) = part_paths(&out);
    let disk = |path: &Path| {
        let path = path.to_path_buf();
        move |source: io::Error| DownloadError::Disk { path, source }
    };

    // Resume if the state file is for this file and the part is whole.
    let n = manifest.chunk_count();
    let part_len = std::fs::metadata(&part_path).map(|m| m.len()).ok();
    let resumed = if part_len == Some(size) {
        load_state(&state_path, &req.id, size, n)
    } else {
        None
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&part_path)
        .map_err(disk(&part_path))?;
    // One download per output: a second `get` to the same place must not
    // share the part file. The lock ends with the process, crash included.
    if file.try_lock().is_err() {
        return Err(DownloadError::InProgress(out));
    }
    let done = match resumed {
        Some(d) => d,
        None => {
            // Starting over: first make sure no older state file can ever
            // vouch for this part file's (new, empty) chunks, durably,
            // before the part file changes.
            match std::fs::remove_file(&state_path) {
                Ok(()) => sync_dir(&state_path).map_err(disk(&state_path))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(disk(&state_path)(e)),
            }
            file.set_len(0).map_err(disk(&part_path))?;
            if let Err(e) = allocate(&file, size) {
                // Nothing of ours is worth keeping: leave no empty part behind.
                let _ = std::fs::remove_file(&part_path);
                return Err(no_space_or(e, &out, size, &part_path));
            }
            Bitmap::new(n)
        }
    };
    let file = Arc::new(PartFile::new(file, &part_path));
    let resumed_bytes: u64 = (0..n)
        .filter(|&i| done.get(i))
        .map(|i| manifest.chunk_len(i).unwrap_or(0) as u64)
        .sum();
    progress.verified.store(resumed_bytes, Ordering::Relaxed);
    if resumed_bytes > 0 {
        tracing::info!("resuming: {resumed_bytes} bytes already verified");
    }
    if let (Some(lib), false) = (req.library.clone(), req.share) {
        // Keep it to ourselves: withdraw any record an earlier run left.
        let out = out.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || lib.end_download(&out, false)).await
        {
            tracing::warn!("cannot withdraw an earlier offer of this download: {e}");
        }
    }
    if let (Some(lib), true) = (req.library.clone(), req.share) {
        // Offer the verified chunks to others while this runs. A failure
        // here costs only that, not the download.
        let record = Download {
            id: req.id.to_string(),
            name: name.clone(),
            size,
            part: std::path::absolute(&part_path).unwrap_or_else(|_| part_path.clone()),
            state: std::path::absolute(&state_path).unwrap_or_else(|_| state_path.clone()),
            unlisted: req.unlisted,
        };
        let (out, m) = (out.clone(), manifest.clone());
        let published =
            tokio::task::spawn_blocking(move || lib.begin_download(&out, &m, record)).await;
        if let Ok(Err(e)) = published {
            tracing::warn!("cannot offer this download's chunks to others: {e}");
        }
    }

    let max_window = (req.config.window_bytes / manifest.chunk_size() as u64).clamp(2, 64) as u32;
    let mut sched = Scheduler::new(
        SchedulerConfig {
            max_window,
            ..req.config.scheduler.clone()
        },
        size,
        manifest.chunk_size(),
        |i| done.get(i),
    );
    let (have_tx, mut have_rx) = mpsc::channel::<HaveUpdate>(64);
    let mut watchers: JoinSet<()> = JoinSet::new();
    let mut slots: Vec<Slot> = Vec::new();
    for (conn, holding, have) in conns {
        add_slot(
            &mut slots,
            &mut sched,
            &mut watchers,
            &have_tx,
            conn,
            holding,
            have,
            start.elapsed(),
        );
    }
    progress.peers.store(slots.len() as u64, Ordering::Relaxed);
    let mut more_peers = req.more_peers.clone();
    // The node expected at each address: the request's, then the first
    // node reported there.
    let mut pins = req.expect.clone();
    let mut starved_since: Option<Duration> = None;
    let mut in_flight: InFlight = InFlight::new();
    let budget = (req.config.max_in_flight_bytes / manifest.chunk_size() as u64).max(2) as usize;
    let mut peak_in_flight = 0;
    let mut turn = 0usize;

    let manifest = Arc::new(manifest);
    let mut written = done;
    let mut tasks: JoinSet<Event> = JoinSet::new();
    let mut reconnecting: JoinSet<(usize, Joined)> = JoinSet::new();
    let mut bucket = req
        .config
        .max_download_rate
        .map(|r| TokenBucket::new(r, (r / 50).max(64 * 1024), Duration::ZERO));
    let mut paced_until = Duration::ZERO;
    let mut checkpoint: Option<tokio::task::JoinHandle<Result<(), DownloadError>>> = None;
    let mut last_checkpoint = Instant::now();
    let mut unsynced = 0u64;

    let failure = loop {
        let now = start.elapsed();
        // Fill the peers' windows, one request each in turn, within the
        // total budget: memory stays bounded however many peers there are.
        // Whoever goes first changes each time, so no peer is favoured
        // when the budget is what limits.
        // Past the budget, a peer below its fair share of it may still ask:
        // slow peers holding the budget must not starve a fast one (nor
        // keep it from endgame). So at most the budget plus one fair share
        // per peer is in flight.
        let live = slots
            .iter()
            .filter(|s| sched.dropped(s.key).is_none())
            .count();
        let fair = (budget / live.max(1)).max(1) as u32;
        let mut asked = true;
        turn = turn.wrapping_add(1);
        while asked && now >= paced_until {
            asked = false;
            for k in 0..slots.len() {
                if now < paced_until {
                    break;
                }
                let slot_no = (turn + k) % slots.len();
                let slot = &slots[slot_no];
                if in_flight.len() >= budget && sched.in_flight(slot.key) >= fair {
                    continue;
                }
                let Some(index) = sched.poll_request(slot.key, now) else {
                    continue;
                };
                asked = true;
                if let Some(b) = bucket.as_mut() {
                    let len = manifest.chunk_len(index).unwrap_or(0) as u64;
                    paced_until = now + b.take(len, now);
                }
                let task = tasks.spawn(fetch(
                    (slot_no, slot.key),
                    index,
                    req.id,
                    slot.conn.clone(),
                    manifest.clone(),
                    file.clone(),
                    progress.clone(),
                ));
                in_flight.insert((slot.key, index), task);
            }
        }
        peak_in_flight = peak_in_flight.max(in_flight.len());
        let status = sched.status();
        if status != Status::Starved {
            starved_since = None;
        }
        match status {
            Status::Complete => break None,
            Status::Starved => {
                // Live peers are downloading too and hold nothing we lack
                // yet: wait for their announcements, within reason.
                let since = *starved_since.get_or_insert(now);
                if now - since >= req.config.starved_timeout {
                    break Some(DownloadError::AllSourcesFailed(vec![format!(
                        "the peers still taking part hold only parts of the file, and none gained a missing chunk for {} s",
                        req.config.starved_timeout.as_secs()
                    )]));
                }
            }
            // Not stuck while a lost peer may come back.
            Status::Stuck if !reconnecting.is_empty() || !joining.is_empty() => {}
            Status::Stuck => {
                let all_corrupt = slots
                    .iter()
                    .all(|s| sched.dropped(s.key) == Some(DropReason::CorruptData));
                break Some(if all_corrupt && !slots.is_empty() {
                    DownloadError::AllSourcesCorrupt
                } else {
                    let mut reasons: Vec<String> = failures.clone();
                    reasons.extend(slots.iter().filter_map(|s| {
                        s.report
                            .dropped
                            .as_ref()
                            .map(|d| format!("{}: {d}", s.report.addr))
                    }));
                    DownloadError::AllSourcesFailed(reasons)
                });
            }
            Status::InProgress => {}
        }
        // Start a durable checkpoint when due.
        if checkpoint.is_none()
            && unsynced > 0
            && (last_checkpoint.elapsed() >= req.config.checkpoint_interval
                || unsynced >= req.config.checkpoint_bytes)
        {
            checkpoint = Some(spawn_checkpoint(
                &file,
                &state_path,
                req.id,
                size,
                written.clone(),
            ));
            last_checkpoint = Instant::now();
            unsynced = 0;
        }
        let wake = [
            sched.poll_timeout(now),
            (paced_until > now).then_some(paced_until),
            starved_since.map(|t| t + req.config.starved_timeout),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                let ev = match joined {
                    Ok(ev) => ev,
                    // An endgame loser, aborted: already accounted for.
                    Err(e) if e.is_cancelled() => continue,
                    Err(e) => panic!("fetch task panicked: {e}"),
                };
                in_flight.remove(&(ev.key, ev.index));
                let now = start.elapsed();
                let slot = &mut slots[ev.slot];
                match ev.outcome {
                    Outcome::Verified => {
                        if let Some(losers) = sched.handle_verified(ev.key, ev.index, now) {
                            let len = manifest.chunk_len(ev.index).unwrap_or(0) as u64;
                            written.set(ev.index);
                            unsynced += len;
                            progress.verified.fetch_add(len, Ordering::Relaxed);
                            slot.report.bytes += len;
                            slot.report.chunks += 1;
                            if ev.key == slot.key {
                                // It works again: its reconnections are
                                // for the next loss.
                                slot.reconnects = 0;
                            }
                            // Their requests for this chunk are moot: the
                            // client sends `Cancel` as each is dropped.
                            for loser in losers {
                                if let Some(task) = in_flight.remove(&(loser, ev.index)) {
                                    task.abort();
                                }
                            }
                        }
                    }
                    Outcome::Corrupt => {
                        tracing::warn!(peer = %slot.report.addr, chunk = ev.index, "chunk failed SHA-256 verification");
                        slot.report.corrupt += 1;
                        sched.handle_failed(ev.key, ev.index, Failure::Corrupt, now);
                    }
                    // "Not here" is not a bad answer but news: the peer no
                    // longer offers the file as it did (unshared, or a
                    // download that just finished under another name).
                    // Reconnecting finds out what it offers now.
                    Outcome::Peer(e) if e.is_not_found() => lose_peer(slot, ev.slot, ev.key, e.to_string(), &mut sched, &mut reconnecting, &mut in_flight, &req, now),
                    Outcome::Peer(e @ PeerError::Remote { .. }) => {
                        tracing::warn!(chunk = ev.index, "{e}");
                        sched.handle_failed(ev.key, ev.index, Failure::Refused, now);
                        slot.last_error = Some(e.to_string());
                    }
                    // Every request in flight on the lost connection reports
                    // it; `lose_peer` acts once.
                    Outcome::Peer(e) => lose_peer(slot, ev.slot, ev.key, e.to_string(), &mut sched, &mut reconnecting, &mut in_flight, &req, now),
                    Outcome::Disk(e) => break Some(no_space_or(e, &out, size, &part_path)),
                }
                note_drop(slot, &sched);
                publish_progress(&progress, &slots, &sched);
            }
            Some((slot_no, key, update)) = have_rx.recv() => {
                let now = start.elapsed();
                let slot = &mut slots[slot_no];
                // Keys of replaced connections are dropped in the scheduler:
                // their late news changes nothing there.
                match update {
                    // A partial peer verified more chunks.
                    // (A bitmap of another length drops it: `note_drop`
                    // says so below.)
                    Some(holding) => {
                        sched.handle_holding(key, holding, now);
                    }
                    None => {
                        let why = format!("{}: its announcements stopped (connection closed, or its download stopped)", slot.report.addr);
                        lose_peer(slot, slot_no, key, why, &mut sched, &mut reconnecting, &mut in_flight, &req, now);
                    }
                }
                note_drop(slot, &sched);
                publish_progress(&progress, &slots, &sched);
            }
            Ok(()) = async { more_peers.as_mut().expect("guarded").changed().await }, if more_peers.is_some() => {
                let reported: Vec<SocketAddr> = more_peers
                    .as_mut()
                    .expect("guarded")
                    .borrow_and_update()
                    .iter()
                    .map(|&(addr, node)| {
                        if let Some(node) = node {
                            pins.entry(addr).or_insert(node);
                        }
                        addr
                    })
                    .collect();
                // The peers given at the start too: one that said no may
                // have the file by now. Each is asked again at most once per
                // its backoff (doubling from REJOIN_BACKOFF).
                let now = start.elapsed();
                for addr in reported.into_iter().chain(req.peers.iter().copied()) {
                    let due = retry_at.get(&addr).is_none_or(|(t, _)| *t <= now);
                    if settled.contains(&addr) || !due || !trying.insert(addr) {
                        continue;
                    }
                    tracing::debug!(peer = %addr, "asking it to join");
                    joining.spawn(join_at(addr, pins.get(&addr).copied(), &req));
                }
            }
            r = async { checkpoint.as_mut().expect("guarded").await }, if checkpoint.is_some() => {
                checkpoint = None;
                if let Some(e) = r.expect("checkpoint task does not panic").err() {
                    break Some(e);
                }
            }
            _ = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(start + t)).await,
                    None => std::future::pending().await,
                }
            } => {}
            Some(joined) = reconnecting.join_next(), if !reconnecting.is_empty() => {
                let (slot_no, result) = joined.expect("reconnect task does not panic");
                let slot = &mut slots[slot_no];
                let result = match result {
                    Joined::Ready(conn, _, holding, have) => Ok((conn, holding, have)),
                    Joined::NotFound | Joined::Myself => Err("it no longer shares the file".to_owned()),
                    Joined::Unreachable(e) | Joined::Failed(e) => Err(e.to_string()),
                };
                match result {
                    Ok((conn, holding, have)) => {
                        tracing::info!(peer = %slot.report.addr, "reconnected");
                        slot.resume(slot_no, conn, holding, have, &mut sched, &mut watchers, &have_tx, start.elapsed());
                    }
                    Err(e) if slot.reconnects < MAX_RECONNECTS => {
                        slot.last_error = Some(e);
                        reconnecting.spawn(slot.reconnect(slot_no, &req));
                    }
                    Err(e) => {
                        tracing::warn!("{e}; giving up on this peer");
                        slot.reconnecting = false;
                        slot.report.dropped = Some(format!("disconnected, and {MAX_RECONNECTS} reconnections failed: {e}"));
                        slot.last_error = Some(e);
                        // Should discovery report it again, it may rejoin.
                        settled.remove(&slot.report.addr);
                    }
                }
                publish_progress(&progress, &slots, &sched);
            }
            Some(joined) = joining.join_next(), if !joining.is_empty() => {
                let (addr, joined) = joined.expect("join task does not panic");
                trying.remove(&addr);
                let now = start.elapsed();
                match joined {
                    Joined::Ready(c, m, holding, have) => {
                        settled.insert(addr);
                        retry_at.remove(&addr);
                        let given_up = slots.iter().position(|s| {
                            s.report.addr == addr && !s.reconnecting && sched.dropped(s.key).is_some()
                        });
                        debug_assert_eq!(m.id(), req.id, "join_peer checks the manifest");
                        if let Some(slot_no) = given_up {
                            // A peer given up on is back: the same slot (and
                            // report), its failures kept.
                            tracing::info!(peer = %addr, "rejoined the download");
                            let slot = &mut slots[slot_no];
                            slot.resume(slot_no, c, holding, have, &mut sched, &mut watchers, &have_tx, now);
                            slot.reconnects = 0;
                            publish_progress(&progress, &slots, &sched);
                        } else {
                            tracing::info!(peer = %addr, "joined the download");
                            add_slot(&mut slots, &mut sched, &mut watchers, &have_tx, c, holding, have, now);
                            publish_progress(&progress, &slots, &sched);
                        }
                    }
                    Joined::Myself => {
                        settled.insert(addr);
                    }
                    Joined::NotFound => backoff(&mut retry_at, addr, now),
                    Joined::Unreachable(e) | Joined::Failed(e) => {
                        tracing::info!("{e}");
                        backoff(&mut retry_at, addr, now);
                        // Reported once per address, however often retried.
                        if failed_once.insert(addr) {
                            failures.push(e.to_string());
                        }
                    }
                }
            }
            _ = &mut cancel => break Some(DownloadError::Cancelled),
        }
    };

    // Stop fetching; record what is on disk whatever happens next.
    tasks.abort_all();
    reconnecting.abort_all();
    joining.abort_all();
    watchers.abort_all();
    while tasks.join_next().await.is_some() {}
    if let Some(c) = checkpoint.take() {
        c.await.expect("checkpoint task does not panic")?;
    }
    if let Some(err) = failure {
        let (f, p) = (file.clone(), state_path.clone());
        let w = written.clone();
        let id = req.id;
        tokio::task::spawn_blocking(move || {
            // Aborted fetches' writes may still be queued on the blocking
            // pool, each holding the file: none lands after this, and the
            // lock goes now, so running the same command again at once
            // is not told a download is in progress.
            f.close();
            let recorded = if w.count() > 0 {
                f.file.sync_data().map_err(disk(&p)).and_then(|()| {
                    store_state(&p, &id, size, &w).map_err(|e| DownloadError::Disk {
                        path: p.clone(),
                        source: io::Error::other(e.to_string()),
                    })
                })
            } else {
                Ok(())
            };
            let _ = f.file.unlock();
            recorded
        })
        .await
        .expect("checkpoint does not panic")?;
        return Err(err);
    }

    // Complete: make it durable, then give it its final name, and share
    // it (before the part and state files go, so a server never sees it
    // neither partial nor whole).
    let force = req.force;
    let final_out = out.clone();
    let library = req.library.clone().filter(|_| req.share);
    let shared = tokio::task::spawn_blocking(move || {
        // Endgame losers' writes may still be queued: none lands after this.
        file.close();
        let mut shared = false;
        finish(
            &file.file,
            &part_path,
            &state_path,
            &final_out,
            force,
            || {
                if let Some(lib) = library {
                    match lib.end_download(&final_out, true) {
                        Ok(entry) => shared = entry.is_some(),
                        Err(e) => {
                            tracing::warn!("the file is complete but could not be shared: {e}")
                        }
                    }
                }
            },
        )?;
        Ok::<bool, DownloadError>(shared)
    })
    .await
    .expect("finish does not panic")?;
    let received = progress.received.load(Ordering::Relaxed);
    Ok(DownloadSummary {
        id: req.id.to_string(),
        name,
        path: out,
        size,
        chunks: n,
        bytes_received: received,
        bytes_resumed: resumed_bytes,
        seconds: start.elapsed().as_secs_f64(),
        peers: slots.into_iter().map(|s| s.report).collect(),
        duplicate_requests: sched.duplicate_requests(),
        peak_in_flight,
        shared,
    })
}

/// A peer that has (some of) the file joins: a scheduler key, a slot, and
/// a task forwarding its announcements if it is partial.
#[allow(clippy::too_many_arguments)]
fn add_slot(
    slots: &mut Vec<Slot>,
    sched: &mut Scheduler,
    watchers: &mut JoinSet<()>,
    have_tx: &mpsc::Sender<HaveUpdate>,
    conn: Arc<PeerConn>,
    holding: Holding,
    have: Option<HaveWatch>,
    now: Duration,
) {
    let partial = matches!(holding, Holding::Some(_));
    let key = sched.add_peer(holding, now);
    if let Some(h) = have {
        watchers.spawn(forward_haves(h, slots.len(), key, have_tx.clone()));
    }
    slots.push(Slot::new(conn, key, partial));
}

/// Live peer count and per-peer bytes, for the display.
fn publish_progress(progress: &Progress, slots: &[Slot], sched: &Scheduler) {
    let live = slots
        .iter()
        .filter(|s| sched.dropped(s.key).is_none())
        .count();
    progress.peers.store(live as u64, Ordering::Relaxed);
    let mut per = progress.per_peer.lock().expect("progress lock");
    per.clear();
    per.extend(slots.iter().map(|s| PeerProgress {
        addr: s.report.addr,
        bytes: s.report.bytes,
        live: sched.dropped(s.key).is_none(),
        partial: s.report.partial,
        dropped: s.report.dropped.clone(),
    }));
}

async fn fetch(
    (slot, key): (usize, PeerKey),
    index: u32,
    id: FileId,
    conn: Arc<PeerConn>,
    manifest: Arc<Manifest>,
    file: Arc<PartFile>,
    progress: Arc<Progress>,
) -> Event {
    let outcome = match conn.chunk(id, index).await {
        Err(e) => Outcome::Peer(e),
        Ok(data) => {
            progress
                .received
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            tokio::task::spawn_blocking(move || {
                if !manifest.verify_chunk(index, &data) {
                    return Outcome::Corrupt;
                }
                let offset = manifest.chunk_range(index).expect("verified index").start;
                match file.write_at(&data, offset) {
                    Ok(()) => Outcome::Verified,
                    Err(e) => Outcome::Disk(e),
                }
            })
            .await
            .unwrap_or_else(|e| Outcome::Disk(io::Error::other(e)))
        }
    };
    Event {
        slot,
        key,
        index,
        outcome,
    }
}

fn spawn_checkpoint(
    file: &Arc<PartFile>,
    state_path: &Path,
    id: FileId,
    size: u64,
    snapshot: Bitmap,
) -> tokio::task::JoinHandle<Result<(), DownloadError>> {
    let file = file.clone();
    let path = state_path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        // Order matters: the chunks in `snapshot` were written before this
        // sync started, so after it they are on disk.
        file.file
            .sync_data()
            .map_err(|source| DownloadError::Disk {
                path: path.clone(),
                source,
            })?;
        store_state(&path, &id, size, &snapshot).map_err(|e| DownloadError::Disk {
            path: path.clone(),
            source: io::Error::other(e.to_string()),
        })
    })
}

/// Syncs the part file, gives it its final name (never replacing a file
/// unless `force`), calls `linked` while the part and state files are still
/// there, then removes them.
fn finish(
    file: &File,
    part: &Path,
    state: &Path,
    out: &Path,
    force: bool,
    linked: impl FnOnce(),
) -> Result<(), DownloadError> {
    let disk = |path: &Path| {
        let path = path.to_path_buf();
        move |source: io::Error| DownloadError::Disk { path, source }
    };
    file.sync_all().map_err(disk(part))?;
    if force {
        // (A rename leaves no moment with both names: a server on this
        // data dir may answer "not here" until `linked` has run.)
        std::fs::rename(part, out).map_err(disk(out))?;
        linked();
    } else {
        // A hard link never replaces an existing file: if something
        // appeared under the final name meanwhile, it is left alone.
        match std::fs::hard_link(part, out) {
            // The file is complete under its final name: a part link that
            // cannot be removed is a leftover to report, not a failure.
            Ok(()) => {
                linked();
                if let Err(e) = std::fs::remove_file(part) {
                    tracing::warn!("could not remove {}: {e}", part.display());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(DownloadError::OutputExists(out.to_path_buf()));
            }
            Err(_) => {
                // No hard links on this filesystem: check, then rename.
                if out.symlink_metadata().is_ok() {
                    return Err(DownloadError::OutputExists(out.to_path_buf()));
                }
                std::fs::rename(part, out).map_err(disk(out))?;
                linked();
            }
        }
    }
    sync_dir(out).map_err(disk(out))?;
    match std::fs::remove_file(state) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DownloadError::Disk {
            path: state.to_path_buf(),
            source: e,
        }),
    }
}

/// Fsyncs the directory holding `path` (a bare name's directory is ".").
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Reserves the file's blocks up front, so a full disk fails now, not at
/// 99 %, and so that direct writes land in allocated (unwritten) extents,
/// which ext4 lets several writers fill at once. Falls back to a free-space
/// check and a sparse length where the filesystem cannot preallocate.
fn allocate(file: &File, size: u64) -> io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    // SAFETY: posix_fallocate reads no memory of ours; the fd is open.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) } {
        0 => return Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => {}
        e => return Err(io::Error::from_raw_os_error(e)),
    }
    // SAFETY: fstatvfs writes only into `st`, which is ours and sized for it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } == 0 {
        let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
        if free < size {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
    }
    file.set_len(size)
}

/// Alignment `O_DIRECT` needs for offsets, lengths and memory, bytes.
const DIRECT_ALIGN: usize = 4096;

thread_local! {
    /// Per blocking-pool thread: an aligned bounce buffer for direct writes.
    static BOUNCE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The part file.
///
/// Whole, aligned chunks (every chunk but a short last one: chunk sizes are
/// powers of two of at least 64 KiB) are written with `O_DIRECT` where the
/// filesystem allows it, several at once. A download ends in fsync anyway;
/// skipping the page cache saves the copy into it, which was the largest
/// single cost of `get` (more than SHA-256), and most of the final fsync.
/// Everything else, and every filesystem without `O_DIRECT` (tmpfs), goes
/// through the page cache one write at a time: concurrent buffered
/// `pwrite`s to one file contend on the inode lock, where the kernel spins
/// rather than sleeps (measured: a tenth of `get`'s CPU).
struct PartFile {
    file: File,
    direct: Option<File>,
    buffered_lock: std::sync::Mutex<()>,
    /// Writers hold it shared; `close` takes it exclusively and sets it, so
    /// that no write (an aborted endgame loser's, still queued on the
    /// blocking pool) lands after the file is finished.
    closed: std::sync::RwLock<bool>,
}

impl PartFile {
    fn new(file: File, path: &Path) -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Self {
            file,
            direct,
            buffered_lock: std::sync::Mutex::new(()),
            closed: std::sync::RwLock::new(false),
        }
    }

    /// Waits for writes under way, then refuses any later one.
    fn close(&self) {
        *self.closed.write().unwrap_or_else(|e| e.into_inner()) = true;
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let closed = self.closed.read().unwrap_or_else(|e| e.into_inner());
        if *closed {
            return Err(io::Error::other("the download is finished"));
        }
        let aligned =
            offset.is_multiple_of(DIRECT_ALIGN as u64) && data.len().is_multiple_of(DIRECT_ALIGN);
        if let (Some(direct), true) = (&self.direct, aligned && !data.is_empty()) {
            let done = BOUNCE.with_borrow_mut(|bounce| {
                // An aligned window inside a plain Vec: no unsafe allocation.
                if bounce.len() < data.len() + DIRECT_ALIGN {
                    *bounce = vec![0; data.len() + DIRECT_ALIGN];
                }
                let start = bounce.as_ptr().align_offset(DIRECT_ALIGN);
                let window = &mut bounce[start..start + data.len()];
                window.copy_from_slice(data);
                direct.write_all_at(window, offset)
            });
            match done {
                Ok(()) => return Ok(()),
                // The filesystem wants another alignment: use the page cache.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        let _one_writer = self.buffered_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.file.write_all_at(data, offset)
    }
}

fn no_space_or(e: io::Error, out: &Path, needed: u64, path: &Path) -> DownloadError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        DownloadError::NoSpace {
            path: out.to_path_buf(),
            needed,
        }
    } else {
        DownloadError::Disk {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// The shared name of `id` from the first catalog that lists it.
async fn lookup_name(conns: &[Arc<PeerConn>], id: FileId) -> Option<String> {
    for c in conns {
        if let Ok(entries) = c.catalog().await
            && let Some(e) = entries.into_iter().find(|e| e.id == id)
        {
            return Some(e.name);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_part_file_takes_no_more_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.part");
        let file = File::create(&path).unwrap();
        let part = PartFile::new(file, &path);
        part.write_at(b"before", 0).unwrap();
        part.close();
        assert!(part.write_at(b"after!", 0).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"before");
    }

    #[test]
    fn part_file_writes_aligned_and_unaligned_chunks_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.part");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let size = 3 * 65536 + 777;
        allocate(&file, size).unwrap();
        let part = PartFile::new(file, &path);
        let data: Vec<u8> = (0..size as usize).map(|i| (i % 253) as u8).collect();
        // Out of order, the short unaligned tail first.
        for (start, end) in [
            (3 * 65536, size as usize),
            (65536, 131072),
            (0, 65536),
            (131072, 196608),
        ] {
            part.write_at(&data[start..end], start as u64).unwrap();
        }
        part.file.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }
}
