//! The peer server: answers catalog, manifest and chunk requests from the
//! library, reading chunks straight from the original shared files.
//!
//! Every connection is TLS 1.3 ([`crate::tls`]); the client's `Hello` must
//! name the node its key proves, and with `trusted_only` that node must be
//! on the library's trust list, or it gets an error and is closed.
//!
//! Bounds: at most `max_connections` connections, and at most
//! `max_connections_per_ip` from one remote address (others get a `Busy`
//! error after the TLS handshake, at most `MAX_REFUSALS_IN_PROGRESS` at
//! once, beyond which they are closed unanswered); per connection, requests
//! are read only while fewer than `max_requests_in_flight` are being
//! answered (queued; plus the one being written and one read but waiting
//! for room), so a client that floods requests without reading answers
//! stalls itself (TCP back-pressure); a frame from a client is at most
//! `MAX_REQUEST_FRAME_LEN` bytes; the TLS handshake and `Hello` together
//! must finish within `handshake_timeout`, and a wait for the next request
//! within `idle_timeout`. A connection that sends anything malformed gets
//! an error frame and is closed; nothing else is affected. Shutdown stops
//! accepting, ends every connection and waits for their tasks, so nothing
//! outlives [`Server::run`].
//!
//! Memory does not grow with the chunk size (up to 8 MiB): a queued chunk
//! answer says where the chunk is (file, offset, length), and the write
//! side reads it from disk a [`SEND_SLICE`] at a time as the client takes
//! it, the next slice read while the current one is sent, into buffers
//! recycled from a budget shared by all connections (`max_buffered_bytes`;
//! an answer waits for a buffer while it is spent). So a connection holds
//! at most two slices, and every write of at most [`WRITE_PIECE`] bytes
//! must be taken within `write_timeout`: a client that takes nothing is
//! closed after that long, a slow one that keeps taking is served for as
//! long as it likes. What is sent is checked as it is read: a shared file
//! must keep the size and mtime it was hashed with (one `fstat` per
//! slice), a chunk of a download in progress is hashed whole before its
//! header goes out and again as it is sent, its last slice held back until
//! it checks. Before the header, a chunk that fails is answered
//! `Unavailable`; after it, the header cannot be taken back, and the
//! connection is closed (the client sees a lost connection, never a frame
//! with bytes this node did not vouch for).
//!
//! File work never runs on an async worker: catalogs, manifests, chunk
//! lookups and reads, `Have` answers and checks, the trust list all run on
//! the blocking pool, a job per answer started only once the answer has a
//! place in its connection's queue (so at most `max_requests_in_flight`
//! per connection, plus the one being sent), and no lock is held across a
//! read. A read that hangs (a stuck disk or network filesystem, a FIFO put
//! in place of a file) holds up its own answer and those queued behind it
//! on that connection, nothing else. Shutdown does not wait for it: the
//! connection's task ends and [`Server::run`] returns; the blocking-pool
//! thread stays in its read (holding that file open) until the read
//! returns, and a tokio runtime dropped meanwhile would wait for it, so
//! the binary shuts its runtime down with a timeout.
//!
//! Besides whole shared files, the server offers the verified chunks of this
//! node's downloads in progress ([`crate::partials`]): they are listed as
//! partial in the catalog, `GetHave` says which chunks are held (and, when
//! subscribed, says it again whenever more are, at most
//! `MAX_HAVE_SUBSCRIPTIONS` per connection, checked every
//! `HAVE_POLL_INTERVAL`), and `Cancel` drops an answer not yet sent.
//! Lookups in the library go by file ID (the database's index), so a
//! request costs the same whatever the library's size; a subscription's
//! check that finds nothing new costs a read of the library's revision and
//! a `stat` of its download's state file, and reads nothing else.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peershare_proto::rate::TokenBucket;
use peershare_proto::wire::{
    CATALOG_PAGE_BUDGET, CatalogEntry, DecodeError, ErrorCode, Hello, Holding,
    MAX_REQUEST_FRAME_LEN, Message, PROTOCOL_VERSION, capability, catalog_entry_len, chunk_header,
    entry_flags,
};
use peershare_proto::{FileId, NodeId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::conn::{FrameReader, FrameWriter, ReadError};
use crate::error::ServeError;
use crate::live::{LiveOffers, Servable};
use crate::node::events::PeerRef;
use crate::partials::{Partials, View};
use crate::store::{Download, Entry, Library, Snapshot};
use crate::tls::{BoxRead, BoxWrite, Tls};

mod answers;
mod catalog;
mod connection;
mod folder;
mod slices;
mod uploads;

use answers::respond;
use catalog::CachedCatalog;
use connection::{ConnState, Connection};

pub use slices::SEND_SLICE;
use slices::{Check, ChunkPlan, Slice, SliceError, SlicePool, Slices};
pub use uploads::{ConnectionUploads, MAX_UPLOADS_PER_CONNECTION, UploadInfo, Uploads};

/// `Have` subscriptions one connection may hold at once; more are refused
/// with `Busy`.
pub const MAX_HAVE_SUBSCRIPTIONS: usize = 16;
/// How often a subscription checks its download for new chunks.
pub const HAVE_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often the server closes the part files of downloads no longer
/// recorded (finished or withdrawn).
pub const PARTIALS_PRUNE_INTERVAL: Duration = Duration::from_secs(2);
/// Connections refused as busy that are told so at once (each costs a TLS
/// handshake); further ones are closed without a word.
pub const MAX_REFUSALS_IN_PROGRESS: usize = 64;

/// Server limits and options; plain data with sane defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once (handshake done); more are refused with
    /// `Busy`.
    pub max_connections: usize,
    /// Connections in their handshake at once; a new one evicts the oldest
    /// (see `Handshaking`), so silent connections cannot lock others out.
    pub max_pending_handshakes: usize,
    /// When every connection slot is taken, a newcomer closes the
    /// connection that has asked nothing for longest, if that is at least
    /// this long; otherwise it is refused as busy.
    pub min_idle_to_evict: Duration,
    /// Connections from one remote IP address at once; more are refused
    /// with `Busy`, so one host cannot take every slot.
    pub max_connections_per_ip: usize,
    /// Requests being answered at once per connection (read, prepared or
    /// being written); the next request is not read until one is done.
    pub max_requests_in_flight: usize,
    /// Serve only nodes on the library's trust list ([`Library::trusted`]);
    /// others get a `NotTrusted` error after the handshake.
    pub trusted_only: bool,
    /// Time a new connection has to send its handshake.
    pub handshake_timeout: Duration,
    /// Time a connection may stay silent between requests (unless it holds
    /// `Have` subscriptions: then it waits for us).
    pub idle_timeout: Duration,
    /// Longest a write of at most [`WRITE_PIECE`] bytes to a connection may
    /// take. A client that stops taking what it asked for is closed this
    /// long after its buffers filled, however much it asked; one that keeps
    /// taking at least a piece per `write_timeout` (2 KiB/s at the default)
    /// is served for as long as it likes, holding only its bounded buffers.
    pub write_timeout: Duration,
    /// Bytes of chunk data buffered at once over all connections, at most
    /// (in slices of [`SEND_SLICE`]; at least one): each connection sending
    /// a chunk holds one or two slices, and waits for one while the budget
    /// is spent (each is held at most `write_timeout` without progress).
    pub max_buffered_bytes: usize,
    /// Time a connection holding `Have` subscriptions may stay silent: a
    /// client that vanished without closing must not hold its slot (and a
    /// poll task) forever. Checked once per `idle_timeout`.
    pub subscribed_idle_timeout: Duration,
    /// Total upload rate over all connections, bytes/s.
    pub max_upload_rate: Option<u64>,
    /// Time connections get to finish after shutdown is requested.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_pending_handshakes: 128,
            min_idle_to_evict: Duration::from_secs(10),
            max_connections_per_ip: 32,
            max_requests_in_flight: 4,
            trusted_only: false,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(30),
            max_buffered_bytes: 64 * 1024 * 1024,
            subscribed_idle_timeout: Duration::from_secs(30 * 60),
            max_upload_rate: None,
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// Counters for tests and status displays.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub connections_active: AtomicU64,
    pub connections_total: AtomicU64,
    pub refused_busy: AtomicU64,
    /// Connections whose TLS handshake failed (not TLS, wrong key type,
    /// closed early).
    pub tls_failed: AtomicU64,
    /// Nodes refused because `trusted_only` is set and they are not trusted.
    pub refused_untrusted: AtomicU64,
    /// Pending handshakes closed to make room for newer connections.
    pub handshakes_evicted: AtomicU64,
    /// Idle established connections closed to make room for newcomers.
    pub idle_evicted: AtomicU64,
    /// Frames read after handshakes (requests and cancels).
    pub requests_received: AtomicU64,
    pub malformed: AtomicU64,
    pub chunks_served: AtomicU64,
    pub bytes_served: AtomicU64,
    /// Chunks served from downloads in progress (counted in `chunks_served`
    /// too).
    pub partial_chunks_served: AtomicU64,
    /// Prepared chunk answers dropped because the client cancelled them.
    pub cancelled: AtomicU64,
    /// Checks made by `Have` subscriptions (each looks every
    /// `HAVE_POLL_INTERVAL`).
    pub have_checks: AtomicU64,
    /// Library entries (shared files and downloads) looked at to answer
    /// requests and to check subscriptions. Lookups go by file ID, so each
    /// looks at the entries of that file only; a subscription check that
    /// finds the library unchanged looks at none, and a catalog looks at
    /// all of them once per library revision.
    pub library_entries_examined: AtomicU64,
}

/// A server ready to run on an already-bound listener.
pub struct Server {
    ctx: Arc<Ctx>,
}

struct Ctx {
    library: Library,
    tls: Tls,
    listen_port: u16,
    config: ServerConfig,
    stats: Arc<ServerStats>,
    established: Established,
    upload: Option<Mutex<TokenBucket>>,
    epoch: Instant,
    catalog: Mutex<Option<CachedCatalog>>,
    partials: Partials,
    /// The chunk buffers of all connections.
    slices: Arc<SlicePool>,
    /// This process's downloads, offered from memory.
    live: LiveOffers,
    /// Offer only `live`, not the library (a `get` that runs without a
    /// node serves only what it downloads).
    only_live: bool,
    /// What peers take from this node.
    uploads: Uploads,
    /// The folders this node shares (PROTOCOL.md, section 15).
    folders: crate::folders::FolderStore,
}

impl Server {
    pub fn new(library: Library, tls: Tls, listen_port: u16, config: ServerConfig) -> Self {
        let epoch = Instant::now();
        let slices = SlicePool::new(config.max_buffered_bytes);
        let upload = config.max_upload_rate.map(|rate| {
            // A burst of a few milliseconds' worth keeps pacing smooth.
            let burst = (rate / 50).max(64 * 1024);
            Mutex::new(TokenBucket::new(rate, burst, Duration::ZERO))
        });
        Self {
            ctx: Arc::new(Ctx {
                folders: crate::folders::FolderStore::new(library.dir()),
                library,
                tls,
                listen_port,
                config,
                stats: Arc::default(),
                established: Established::default(),
                upload,
                epoch,
                catalog: Mutex::new(None),
                partials: Partials::default(),
                slices,
                live: LiveOffers::default(),
                only_live: false,
                uploads: Uploads::default(),
            }),
        }
    }

    fn ctx_mut(&mut self) -> &mut Ctx {
        Arc::get_mut(&mut self.ctx).expect("a server is configured before it runs")
    }

    /// Also offers this process's downloads ([`LiveOffers`]): their
    /// verified chunks at once, and the finished files while it runs.
    pub fn with_live(mut self, live: LiveOffers) -> Self {
        self.ctx_mut().live = live;
        self
    }

    /// Offers only this process's downloads, not the library.
    pub fn only_live(mut self) -> Self {
        self.ctx_mut().only_live = true;
        self
    }

    /// Counts uploads in `uploads` (a node's servers share one, which may
    /// publish events).
    pub fn with_uploads(mut self, uploads: Uploads) -> Self {
        self.ctx_mut().uploads = uploads;
        self
    }

    pub fn stats(&self) -> Arc<ServerStats> {
        self.ctx.stats.clone()
    }

    /// What peers take from this server.
    pub fn uploads(&self) -> Uploads {
        self.ctx.uploads.clone()
    }

    /// Serves until `shutdown` completes, then closes every connection and
    /// returns once all their tasks have ended.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let ctx = self.ctx;
        let slots = Arc::new(Semaphore::new(ctx.config.max_connections));
        let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_PROGRESS));
        let handshaking = Handshaking::default();
        let per_ip: Arc<Mutex<HashMap<std::net::IpAddr, usize>>> = Arc::default();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        let mut housekeeping = tokio::time::interval(PARTIALS_PRUNE_INTERVAL);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                _ = housekeeping.tick() => {
                    let ctx = ctx.clone();
                    tasks.spawn(async move {
                        let _ = tokio::task::spawn_blocking(move || ctx.partials.prune(&ctx.library)).await;
                    });
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = listener.accept() => {
                    let (stream, addr) = match accepted {
                        Ok(a) => a,
                        Err(e) if is_transient_accept_error(&e) => {
                            tracing::warn!("accept: {e}");
                            // Out of descriptors or similar: back off briefly.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        Err(e) => break Err(ServeError::Accept(e)),
                    };
                    ctx.stats.connections_total.fetch_add(1, Ordering::Relaxed);
                    let Some(from_ip) = IpSlot::take(&per_ip, addr.ip(), ctx.config.max_connections_per_ip) else {
                        ctx.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                        // Telling why takes a TLS handshake; only so many
                        // at once, the rest are just closed.
                        if let Ok(turn) = refusals.clone().try_acquire_owned() {
                            let ctx = ctx.clone();
                            tasks.spawn(async move {
                                refuse_busy(&ctx, stream, "from your address").await;
                                drop(turn);
                            });
                        }
                        continue;
                    };
                    // A connection slot is taken only once the handshake is
                    // done: until then it holds a place among the pending
                    // handshakes, and the oldest gives way to a newcomer.
                    let (pending, evicted) = handshaking.join(ctx.config.max_pending_handshakes);
                    if pending.evicted_one {
                        ctx.stats.handshakes_evicted.fetch_add(1, Ordering::Relaxed);
                    }
                    let ctx = ctx.clone();
                    let stop = stop_rx.clone();
                    let slots = slots.clone();
                    tasks.spawn(async move {
                        ctx.stats.connections_active.fetch_add(1, Ordering::Relaxed);
                        let conn = Connection { ctx: ctx.clone(), addr, stop };
                        conn.serve(stream, Admission { slots, pending, evicted }).await;
                        ctx.stats.connections_active.fetch_sub(1, Ordering::Relaxed);
                        drop(from_ip);
                    });
                }
            }
        };
        drop(listener);
        let _ = stop_tx.send(true);
        let grace = ctx.config.shutdown_grace;
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        result
    }
}

fn is_transient_accept_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// What the per-address limit counts by: an IPv4 address, or an IPv6 /64
/// (one host commonly holds a whole /64, so counting its addresses one by
/// one would limit nothing). IPv4-mapped IPv6 addresses count as IPv4.
fn address_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(_) => ip,
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.into(),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                std::net::Ipv6Addr::from(prefix).into()
            }
        },
    }
}

/// One connection counted against its remote address; uncounted on drop.
struct IpSlot {
    table: Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl IpSlot {
    /// A slot for `ip`, unless it already has `max` connections.
    fn take(
        table: &Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
        ip: std::net::IpAddr,
        max: usize,
    ) -> Option<Self> {
        let ip = address_key(ip);
        let mut t = table.lock().expect("per-IP table lock");
        let n = t.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = t.get_mut(&self.ip) {
            *n -= 1;
            // The table holds only addresses with connections: bounded by
            // `max_connections`.
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

fn busy(scope: &str) -> Message {
    Message::Error {
        req_id: 0,
        code: ErrorCode::Busy,
        message: format!("this node is serving too many connections {scope}; try again later"),
    }
}

async fn refuse_busy(ctx: &Ctx, stream: TcpStream, scope: &str) {
    let limit = ctx.config.handshake_timeout;
    let _ = tokio::time::timeout(limit, async {
        let secured = ctx.tls.accept(stream).await?;
        let mut w = FrameWriter::new(secured.writer);
        w.send(&busy(scope)).await?;
        w.shutdown().await
    })
    .await;
}

/// A connection slot: a free one, or one made by closing the established
/// connection idle the longest (at least `min_idle_to_evict`), or none.
async fn take_slot(ctx: &Ctx, slots: &Arc<Semaphore>) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if let Ok(permit) = slots.clone().try_acquire_owned() {
        return Some(permit);
    }
    let min_idle = ctx.config.min_idle_to_evict.as_millis() as u64;
    if !ctx.established.kick_idlest(ctx.now_ms(), min_idle) {
        return None;
    }
    ctx.stats.idle_evicted.fetch_add(1, Ordering::Relaxed);
    // Its task ends at once; another newcomer may take the slot first.
    tokio::time::timeout(Duration::from_secs(1), slots.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

/// One established connection: when it last asked something (ms since
/// the server started) and what closes it.
struct Listed {
    heard: Arc<AtomicU64>,
    kick: Option<tokio::sync::oneshot::Sender<()>>,
}

type EstablishedTable = Arc<Mutex<HashMap<u64, Listed>>>;

/// The established connections, for making room (see [`take_slot`]).
/// Bounded by `max_connections`.
#[derive(Default)]
struct Established {
    table: EstablishedTable,
    next: AtomicU64,
}

/// A connection's entry in [`Established`]; removed on drop.
struct ListedGuard {
    table: EstablishedTable,
    id: u64,
}

impl Established {
    /// Lists a connection heard from at `now`: its entry, its last-heard
    /// clock to update, and what says it was closed for a newcomer.
    fn list(
        &self,
        now: u64,
    ) -> (
        ListedGuard,
        Arc<AtomicU64>,
        tokio::sync::oneshot::Receiver<()>,
    ) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let heard = Arc::new(AtomicU64::new(now));
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.table.lock().expect("established lock").insert(
            id,
            Listed {
                heard: heard.clone(),
                kick: Some(tx),
            },
        );
        let guard = ListedGuard {
            table: self.table.clone(),
            id,
        };
        (guard, heard, rx)
    }

    /// Closes the connection idle the longest, if at least `min_idle` ms;
    /// false when none is.
    fn kick_idlest(&self, now: u64, min_idle: u64) -> bool {
        let mut table = self.table.lock().expect("established lock");
        let idlest = table
            .values_mut()
            .filter(|l| l.kick.is_some())
            .map(|l| (l.heard.load(Ordering::Relaxed), l))
            .filter(|(heard, _)| now.saturating_sub(*heard) >= min_idle)
            .min_by_key(|(heard, _)| *heard);
        match idlest.and_then(|(_, l)| l.kick.take()) {
            Some(kick) => kick.send(()).is_ok(),
            None => false,
        }
    }
}

impl Drop for ListedGuard {
    fn drop(&mut self) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.remove(&self.id);
    }
}

type HandshakeQueue =
    Arc<Mutex<std::collections::VecDeque<(u64, tokio::sync::oneshot::Sender<()>)>>>;

/// Connections still in their handshake, oldest first. When there are
/// `max` of them, a new one evicts the oldest: silent connections
/// (slowloris) then cost an honest client nothing but a handshake that is
/// over in milliseconds, while each silent one lasts only until `max`
/// newer ones have arrived (or its handshake timeout).
#[derive(Default)]
struct Handshaking {
    queue: HandshakeQueue,
    next: AtomicU64,
}

/// One connection's place among the pending handshakes; leaves on drop.
struct PendingHandshake {
    queue: HandshakeQueue,
    id: u64,
    /// Joining evicted the oldest pending handshake.
    evicted_one: bool,
}

impl Handshaking {
    /// A place for a new connection, and what tells it it was evicted.
    fn join(&self, max: usize) -> (PendingHandshake, tokio::sync::oneshot::Receiver<()>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut q = self.queue.lock().expect("handshake queue lock");
        let mut evicted_one = false;
        while q.len() >= max.max(1) {
            // Dropping the sender wakes the evicted connection's task.
            q.pop_front();
            evicted_one = true;
        }
        q.push_back((id, tx));
        (
            PendingHandshake {
                queue: self.queue.clone(),
                id,
                evicted_one,
            },
            rx,
        )
    }
}

impl Drop for PendingHandshake {
    fn drop(&mut self) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = q.iter().position(|(id, _)| *id == self.id) {
            q.remove(i);
        }
    }
}

/// An answer being prepared: ready now, a chunk being found on the
/// blocking pool (its bytes are read as it is sent), or a control answer.
enum Pending {
    Ready(Message),
    Chunk(tokio::task::JoinHandle<Result<ChunkPlan, Message>>),
    /// A control answer computed on the blocking pool.
    Job(tokio::task::JoinHandle<Message>),
    /// Send this, then close the connection.
    Fatal(Message),
    /// No answer (a `Cancel`).
    Nothing,
}

/// What lets a new connection in: its place among the pending handshakes
/// (lost if a newer one evicts it) and, once its TLS handshake is done, a
/// connection slot.
struct Admission {
    slots: Arc<Semaphore>,
    pending: PendingHandshake,
    evicted: tokio::sync::oneshot::Receiver<()>,
}

/// Bytes handed to the TLS session at a time, at most; each piece must be
/// taken within `ServerConfig::write_timeout`.
pub const WRITE_PIECE: usize = 64 * 1024;

/// Bytes sent between two waits of the upload limiter, at most and at
/// least; within these, an eighth of a second's worth at the limit. A slow
/// limit then still sends something every moment (a client judges a peer by
/// its progress, not by whole chunks); a fast one pays nothing.
const MAX_PACING_SLICE: usize = 64 * 1024;
const MIN_PACING_SLICE: usize = 1024;
// A paced piece is one write; a slice is written in whole pieces.
const _: () = assert!(MAX_PACING_SLICE <= WRITE_PIECE && SEND_SLICE.is_multiple_of(WRITE_PIECE));

impl Ctx {
    /// Counts `n` library entries looked at.
    fn examined(&self, n: usize) {
        self.stats
            .library_entries_examined
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Milliseconds since the server started.
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// True when `node` is on the library's trust list. A trust list that
    /// cannot be read trusts nobody.
    async fn trusts(&self, node: NodeId) -> bool {
        let library = self.library.clone();
        match tokio::task::spawn_blocking(move || library.is_trusted(&node)).await {
            Ok(Ok(trusted)) => trusted,
            Ok(Err(e)) => {
                tracing::warn!("cannot read the trust list, so trusting nobody: {e}");
                false
            }
            Err(_) => false,
        }
    }

    /// Bytes of the first pacing slice of a `len`-byte chunk (0 without an
    /// upload limit).
    fn first_slice(&self, len: usize) -> usize {
        match self.config.max_upload_rate {
            None => 0,
            Some(rate) => ((rate / 8) as usize)
                .clamp(MIN_PACING_SLICE, MAX_PACING_SLICE)
                .min(len),
        }
    }

    async fn throttle(&self, bytes: u64) {
        let Some(bucket) = &self.upload else { return };
        let wait = bucket
            .lock()
            .expect("rate limiter lock")
            .take(bytes, self.epoch.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

fn error(req_id: u32, code: ErrorCode, message: impl Into<String>) -> Message {
    Message::Error {
        req_id,
        code,
        message: message.into(),
    }
}

/// The answer for a file this node does not offer.
fn not_here(req_id: u32, id: &FileId) -> Message {
    error(
        req_id,
        ErrorCode::NotFound,
        format!("file {id} is not shared here"),
    )
}

fn internal(req_id: u32, e: impl std::fmt::Display) -> Message {
    tracing::warn!("serving request: {e}");
    error(
        req_id,
        ErrorCode::Internal,
        "the serving node hit an internal error",
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_per_address_limit_counts_ipv4_hosts_and_ipv6_slash_64s() {
        let key = |s: &str| address_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::1"), "::");
    }

    use super::*;
    use catalog::catalog_list;

    /// An entry as an older release's library may hold it.
    fn entry(dir: &std::path::Path, n: usize, name: &str) -> Entry {
        Entry {
            id: FileId([n as u8; 32]).to_string(),
            name: name.into(),
            path: dir.join(format!("f{n}")),
            size: 1,
            mtime_ns: 0,
            unlisted: false,
        }
    }

    /// Regression (review of issue 10.9/10.11): `share` refuses names no
    /// node may list and catalogs over the limit, but a library an older
    /// release wrote may hold them, and the server listed them.
    #[test]
    fn the_catalog_never_lists_a_bad_name_nor_more_than_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::open(dir.path().join("data")).unwrap();
        lib.insert_unchecked(vec![
            entry(dir.path(), 1, "fine.txt"),
            entry(dir.path(), 2, "a\nforged line"),
            entry(dir.path(), 3, "../escape"),
        ])
        .unwrap();
        let server = Server::new(lib, Tls::ephemeral(), 0, ServerConfig::default());
        let list = catalog_list(&server.ctx).unwrap();
        let names: Vec<&str> = list.items.iter().map(|i| i.0.name.as_str()).collect();
        assert_eq!(names, ["fine.txt"]);
    }

    /// Records the folder `root` as the library shares it (what `share DIR`
    /// does), named after its last component.
    fn record_folder(lib: &Library, root: &std::path::Path, unlisted: bool) {
        use peershare_proto::folder::{FolderEntry, FolderManifest};
        let name = root.file_name().unwrap().to_str().unwrap();
        let snap = lib.snapshot().unwrap();
        let entries = snap
            .files
            .values()
            .filter(|e| e.path.starts_with(root))
            .map(|e| {
                let rel = e.name.strip_prefix(&format!("{name}/")).unwrap();
                FolderEntry::file(rel, e.size, e.file_id().unwrap())
            })
            .collect();
        let folder = FolderManifest::new(entries).unwrap();
        crate::folders::FolderStore::new(lib.dir())
            .put(&folder, name, root, unlisted)
            .unwrap();
    }

    /// Issue 12: a content shared at two names was listed once (4096 files
    /// of /usr/share/doc shared, 3457 listed); folders were not listed.
    #[test]
    fn the_catalog_lists_every_name_and_each_listed_folder() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::open(dir.path().join("data")).unwrap();
        let pics = dir.path().join("pics");
        std::fs::create_dir_all(pics.join("sub")).unwrap();
        std::fs::write(pics.join("one.txt"), "same").unwrap();
        std::fs::write(pics.join("two.txt"), "same").unwrap();
        std::fs::write(pics.join("sub/three.txt"), "other").unwrap();
        let loose = dir.path().join("loose.txt");
        std::fs::write(&loose, "same").unwrap();
        lib.share(&[pics.clone(), loose], &Default::default())
            .unwrap();
        let server = Server::new(lib.clone(), Tls::ephemeral(), 0, ServerConfig::default());
        let names = |server: &Server| -> Vec<(String, u8, u64)> {
            let list = catalog_list(&server.ctx).unwrap();
            list.items
                .iter()
                .map(|(e, _)| (e.name.clone(), e.flags, e.size))
                .collect()
        };
        let file = |n: &str, size| (n.to_owned(), 0, size);
        let files = vec![
            file("loose.txt", 4),
            file("pics/one.txt", 4),
            file("pics/sub/three.txt", 5),
            file("pics/two.txt", 4),
        ];
        assert_eq!(names(&server), files, "three names of one content");
        assert_eq!(lib.snapshot().unwrap().listed(), 4, "counted alike");

        // The folder, once recorded, beside its files (the cache sees the
        // folder store change though the library did not).
        record_folder(&lib, &pics, false);
        let mut with_folder = files.clone();
        with_folder.insert(1, ("pics".to_owned(), entry_flags::FOLDER, 13));
        assert_eq!(names(&server), with_folder);
        let list = catalog_list(&server.ctx).unwrap();
        let folder_id = crate::folders::FolderStore::new(lib.dir()).list().unwrap()[0]
            .folder_id()
            .unwrap();
        assert_eq!(list.items[1].0.id, FileId(folder_id.0));

        // Only to a client that understands folder entries.
        let page = |folders| match catalog::catalog(&server.ctx, 1, 0, folders) {
            Message::Catalog { entries, .. } => entries,
            m => panic!("{m:?}"),
        };
        assert_eq!(page(true).len(), 5);
        let old = page(false);
        assert_eq!(old.len(), 4);
        assert!(old.iter().all(|e| !e.is_folder()));

        // Unlisted: its files may still be listed, the folder is not.
        record_folder(&lib, &pics, true);
        assert_eq!(names(&server), files);
        // A folder with a file no longer shared is not offered, nor listed.
        record_folder(&lib, &pics, false);
        lib.unshare(&[pics.join("two.txt").to_str().unwrap().to_owned()])
            .unwrap();
        let names_now = || -> Vec<String> { names(&server).into_iter().map(|n| n.0).collect() };
        assert_eq!(
            names_now(),
            ["loose.txt", "pics", "pics/one.txt", "pics/sub/three.txt"],
            "its content is still shared (one.txt)"
        );
        lib.unshare(&[pics.join("sub/three.txt").to_str().unwrap().to_owned()])
            .unwrap();
        assert_eq!(names_now(), ["loose.txt", "pics/one.txt"]);
    }

    #[test]
    fn a_library_over_the_catalog_limit_is_listed_up_to_it() {
        let limit = peershare_proto::wire::MAX_CATALOG_ENTRIES;
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::open(dir.path().join("data")).unwrap();
        let entries = (0..limit + 3)
            .map(|n| {
                let mut e = entry(dir.path(), 0, &format!("f{n:07}"));
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&(n as u64).to_be_bytes());
                e.id = FileId(id).to_string();
                e.path = dir.path().join(format!("f{n}"));
                e
            })
            .collect();
        lib.insert_unchecked(entries).unwrap();
        let server = Server::new(lib.clone(), Tls::ephemeral(), 0, ServerConfig::default());
        let list = catalog_list(&server.ctx).unwrap();
        assert_eq!(list.items.len(), limit);
        assert_eq!(list.items[limit - 1].0.name, format!("f{:07}", limit - 1));
        // A folder entry counts too: one file more is cut.
        let first = list.items[0].0.clone();
        let folder = peershare_proto::folder::FolderManifest::new(vec![
            peershare_proto::folder::FolderEntry::file("f", first.size, first.id),
        ])
        .unwrap();
        crate::folders::FolderStore::new(lib.dir())
            .put(&folder, "a-folder", &dir.path().join("a-folder"), false)
            .unwrap();
        let list = catalog_list(&server.ctx).unwrap();
        assert_eq!(list.items.len(), limit);
        assert!(list.items[0].0.is_folder());
        assert_eq!(list.items[limit - 1].0.name, format!("f{:07}", limit - 2));
    }
}
