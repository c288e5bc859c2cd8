//! Downloads: one file from every peer that has it, verified, resumable.
//!
//! ```text
//!  join ──► connect to every given peer, fetch the manifest, check it hashes to the ID
//!    │
//!    ▼
//!  part_file::open ──► the part file (never through a symlink), locked; resumed
//!    │                 chunks re-verified against the manifest before they count
//!    ▼
//!  Session (session.rs): Scheduler::poll_request(peer) ──► task: GetChunk ─► bytes ─►
//!    ▲        blocking pool: SHA-256 check, pwrite at offset                     │
//!    └──────── handle_verified / handle_failed / handle_peer_lost ◄──────────────┘
//!    every second: snapshot written chunks ─► fdatasync part ─► replace state file
//!    ▼
//!  part_file::finish ──► fsync, link to the final name (never replacing), library,
//!                        remove the part and state files (recoverable at every step)
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
//! verified. The states of a download and what moves it between them are
//! in `STATE.md` beside this file.

pub mod folder;
mod join;
pub mod manager;
pub mod order;
mod part_file;
mod session;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use peershare_proto::schedule::SchedulerConfig;
use peershare_proto::{FileId, NodeId};
use serde::Serialize;
use tokio::sync::watch;

use crate::client::ClientConfig;
use crate::error::DownloadError;
use crate::live::LiveOffers;
use crate::pool::PeerPool;
use crate::store::Library;
use crate::tls::Tls;

pub use join::{
    BUSY_BACKOFF, MAX_ANNOUNCED_PER_ADDR, MAX_BUSY_BACKOFF, MAX_KNOWN_ADDRS, MAX_REJOIN_BACKOFF,
    REJOIN_BACKOFF,
};
pub use session::{
    MAX_FRUITLESS_RECONNECTS, MAX_RECONNECT_BACKOFF, MAX_REFUSED_RECONNECTS, RECONNECT_BACKOFF,
    RECONNECT_CONNECT_TIMEOUT,
};

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
    /// Time a peer's first contact (connect, manifest, which chunks it
    /// holds) may take; a peer that trickles its manifest is dropped.
    pub join_timeout: Duration,
    /// The download fails when no peer has delivered a byte of the file
    /// for this long (whatever joins or reconnections are pending).
    pub progress_timeout: Duration,
    /// A lost peer is reconnected (backoff from `RECONNECT_BACKOFF` to
    /// `MAX_RECONNECT_BACKOFF`) for this long after it was lost, unless
    /// nothing listens there any more (`MAX_REFUSED_RECONNECTS`).
    pub reconnect_for: Duration,
    /// A peer that refuses the connection as busy is asked again (backoff
    /// from `BUSY_BACKOFF` to `MAX_BUSY_BACKOFF`) for this long.
    pub retry_busy_for: Duration,
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
            join_timeout: Duration::from_secs(60),
            progress_timeout: Duration::from_secs(180),
            reconnect_for: Duration::from_secs(180),
            retry_busy_for: Duration::from_secs(180),
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
    /// Nodes announced at addresses (LAN discovery; an address may appear
    /// with several): a peer there must prove one of them, unless `expect`
    /// names the node there.
    pub announced: Vec<(SocketAddr, NodeId)>,
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
    /// The node's connections, shared with its other downloads (`None`:
    /// this download's own).
    pub pool: Option<PeerPool>,
    /// With `share`: where this process's server looks for downloads in
    /// progress, so their verified chunks are offered at once (and the
    /// finished file while the process runs).
    pub live: Option<LiveOffers>,
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
    /// Its connection was lost (silent, closed) and it is being
    /// reconnected: since how long.
    pub reconnecting: Option<Duration>,
}

/// What one peer contributed.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
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

/// Downloads, verifies and saves one file. `cancel` completing stops the
/// download after recording durable progress, so the same request resumes.
pub async fn download(
    req: DownloadRequest,
    progress: Arc<Progress>,
    cancel: impl Future<Output = ()>,
) -> Result<DownloadSummary, DownloadError> {
    tokio::pin!(cancel);
    session::run(req, progress, cancel).await
}
