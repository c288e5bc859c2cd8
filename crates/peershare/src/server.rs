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
//! Lookups in the library go by file ID (the snapshot's index), so a
//! request costs the same whatever the library's size; a subscription's
//! check that finds nothing new costs two `stat`s (`library.json`, its
//! download's state file) and reads nothing.

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

mod slices;
mod uploads;

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

/// One connection, from its TLS handshake to its close: what every step
/// needs, with the steps as methods. The steps, in order: `handshake` (TLS,
/// a connection slot, the client's first frame), `greet` (its `Hello` and
/// trust checked, ours sent), then `pipeline`: a [`ReadSide`] and a
/// [`WriteSide`] running together until the connection ends.
struct Connection {
    ctx: Arc<Ctx>,
    addr: SocketAddr,
    stop: watch::Receiver<bool>,
}

/// A connection past its TLS handshake, holding a connection slot, with
/// the client's first frame (its `Hello`, if it behaves).
struct Handshaken {
    reader: FrameReader<BoxRead>,
    writer: FrameWriter<BoxWrite>,
    proven: Option<NodeId>,
    first: Result<Option<Message>, ReadError>,
    slot: tokio::sync::OwnedSemaphorePermit,
}

impl Connection {
    async fn serve(mut self, stream: TcpStream, admission: Admission) {
        let _ = stream.set_nodelay(true);
        let Some(Handshaken {
            reader,
            mut writer,
            proven,
            first,
            slot: _slot,
        }) = self.handshake(stream, admission).await
        else {
            return;
        };
        if let Some(peer) = self.greet(&mut writer, first, proven).await {
            self.pipeline(reader, writer, peer).await;
        }
    }

    /// The TLS handshake and the client's `Hello` (the client speaks
    /// first), both within the handshake timeout. A connection slot is
    /// taken between the two: without one, the client is told it is busy.
    /// `None` when the connection is over (failed, evicted, refused,
    /// shutting down).
    async fn handshake(&mut self, stream: TcpStream, admission: Admission) -> Option<Handshaken> {
        let Admission {
            slots,
            pending,
            evicted,
        } = admission;
        let (ctx, addr) = (&self.ctx, self.addr);
        let handshake = async {
            let secured = match ctx.tls.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    ctx.stats.tls_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%addr, "TLS handshake failed: {e}");
                    return None;
                }
            };
            let mut writer = FrameWriter::new(secured.writer);
            let Some(slot) = take_slot(ctx, &slots).await else {
                ctx.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                let _ = writer.send(&busy("in all")).await;
                let _ = writer.shutdown().await;
                return None;
            };
            let mut reader = FrameReader::new(secured.reader, MAX_REQUEST_FRAME_LEN);
            let first = reader.read().await;
            Some(Handshaken {
                reader,
                writer,
                proven: secured.peer,
                first,
                slot,
            })
        };
        let done = tokio::select! {
            r = tokio::time::timeout(ctx.config.handshake_timeout, handshake) => r.ok().flatten(),
            _ = evicted => {
                tracing::debug!(%addr, "handshake evicted by a newer connection");
                None
            }
            _ = self.stop.changed() => None,
        };
        drop(pending);
        done
    }

    /// Checks the client's first frame (a `Hello` naming the node its key
    /// proves) and, with `trusted_only`, that the node is trusted; then
    /// answers with this node's `Hello`. The client's node ID, or `None`
    /// when the connection is to end (the client was told why, when it can
    /// be).
    async fn greet(
        &self,
        writer: &mut FrameWriter<BoxWrite>,
        first: Result<Option<Message>, ReadError>,
        proven: Option<NodeId>,
    ) -> Option<NodeId> {
        let ctx = &self.ctx;
        let addr = self.addr;
        let h = match check_hello(first, proven) {
            Ok(h) => h,
            Err(None) => return None,
            Err(Some(refusal)) => {
                ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
                self.say_and_close(writer, &refusal).await;
                return None;
            }
        };
        if ctx.config.trusted_only && !ctx.trusts(h.node_id).await {
            ctx.stats.refused_untrusted.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%addr, peer = %h.node_id, "refused a node not on the trust list");
            let msg = Message::Error {
                req_id: 0,
                code: ErrorCode::NotTrusted,
                message: format!(
                    "this node serves only the nodes it trusts, and {} is not one of them; \
                     its owner can run `peershare trust add {}`",
                    h.node_id.short(),
                    h.node_id
                ),
            };
            self.say_and_close(writer, &msg).await;
            return None;
        }
        tracing::debug!(%addr, peer = %h.node_id.short(), "handshake");
        let hello = Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            node_id: ctx.tls.node_id(),
            listen_port: ctx.listen_port,
            capabilities: capability::ALL,
        });
        let limit = ctx.config.write_timeout;
        let sent = writer.send_timed(&hello, WRITE_PIECE, limit).await.is_ok();
        sent.then_some(h.node_id)
    }

    /// Sends `msg`, then closes the connection.
    async fn say_and_close(&self, writer: &mut FrameWriter<BoxWrite>, msg: &Message) {
        let _ = writer
            .send_timed(msg, WRITE_PIECE, self.ctx.config.write_timeout)
            .await;
        let _ = tokio::time::timeout(Duration::from_millis(100), writer.shutdown()).await;
    }

    /// Serves requests until the connection ends: the read side reads and
    /// prepares answers, the write side sends them in order.
    ///
    /// The read side ends first on EOF: queued answers drain, then the
    /// write side ends too. If the write side ends first (the peer stopped
    /// reading, or an answer could not be sent), the connection is over:
    /// the read side is dropped with it.
    async fn pipeline(
        &mut self,
        reader: FrameReader<BoxRead>,
        writer: FrameWriter<BoxWrite>,
        peer: NodeId,
    ) {
        let ctx = &self.ctx;
        // Listed among the established connections, so that a newcomer
        // finding every slot taken can close the one idle the longest.
        let (_listed, heard, mut kicked) = ctx.established.list(ctx.now_ms());
        let (tx, rx) = mpsc::channel::<Pending>(ctx.config.max_requests_in_flight.max(1));
        let (push_tx, push_rx) = mpsc::channel::<Message>(MAX_HAVE_SUBSCRIPTIONS);
        let uploads = ctx.uploads.connection(PeerRef {
            node_id: peer.to_string(),
            addr: self.addr,
        });
        let conn = Arc::new(ConnState::new(push_tx, uploads));
        // Subscriptions end with the connection, however it ends.
        let _end_subscriptions = EndSubscriptions(conn.clone());
        let read_side = ReadSide {
            ctx,
            conn: conn.clone(),
            reader,
            tx,
            heard: heard.clone(),
            addr: self.addr,
        };
        // Busy is asking or being answered: a slow client whose next
        // requests wait unread behind its answers is not idle.
        let mut write_side = WriteSide {
            ctx,
            conn,
            writer,
            rx,
            push_rx,
            answered: heard,
        };
        {
            let reading = read_side.run();
            let writing = write_side.run();
            tokio::pin!(reading, writing);
            let mut read_done = false;
            loop {
                tokio::select! {
                    _ = &mut reading, if !read_done => read_done = true,
                    _ = &mut writing => break,
                    _ = self.stop.changed() => break,
                    _ = &mut kicked => {
                        tracing::debug!(addr = %self.addr, "closed, idle, to make room for a newcomer");
                        break;
                    }
                }
            }
        }
        write_side.close().await;
    }
}

/// The client's `Hello`, if its first frame is one naming the node its
/// key proves; otherwise what to tell it (`None`: nothing, just close).
fn check_hello(
    first: Result<Option<Message>, ReadError>,
    proven: Option<NodeId>,
) -> Result<Hello, Option<Message>> {
    let refusal = |code, message: String| {
        Err(Some(Message::Error {
            req_id: 0,
            code,
            message,
        }))
    };
    match first {
        Ok(Some(Message::Hello(h))) => match proven {
            Some(key) if key != h.node_id => refusal(
                ErrorCode::BadRequest,
                format!(
                    "your handshake claims node {} but your key is node {key}",
                    h.node_id
                ),
            ),
            _ => Ok(h),
        },
        Err(ReadError::Decode(DecodeError::UnsupportedVersion(v))) => refusal(
            ErrorCode::UnsupportedVersion,
            format!(
                "this node speaks peershare protocol version {PROTOCOL_VERSION}, you sent version {v}; \
                 use the same peershare release on both sides"
            ),
        ),
        Ok(None) | Err(ReadError::Io(_) | ReadError::Truncated | ReadError::Idle(_)) => Err(None),
        Err(ReadError::Decode(e)) => refusal(
            ErrorCode::BadRequest,
            format!("expected a peershare handshake: {e}"),
        ),
        Ok(Some(_)) => refusal(
            ErrorCode::BadRequest,
            "expected a peershare handshake first".into(),
        ),
    }
}

/// A connection's read side: reads requests, starts preparing their
/// answers and queues them for the write side, at most
/// `max_requests_in_flight` at once; while the queue is full it reads
/// nothing more, so TCP back-pressure stalls a client that does not read.
/// Owns the queue's sender: when it ends, the write side drains what is
/// queued and stops.
struct ReadSide<'a> {
    ctx: &'a Arc<Ctx>,
    conn: Arc<ConnState>,
    reader: FrameReader<BoxRead>,
    tx: mpsc::Sender<Pending>,
    /// When the client last asked something (ms since the server started).
    heard: Arc<AtomicU64>,
    addr: SocketAddr,
}

impl ReadSide<'_> {
    async fn run(mut self) {
        let mut last_heard = Instant::now();
        while let Some(msg) = self.next_request(last_heard).await {
            last_heard = Instant::now();
            self.heard.store(self.ctx.now_ms(), Ordering::Relaxed);
            self.ctx
                .stats
                .requests_received
                .fetch_add(1, Ordering::Relaxed);
            // Room in the queue first, then the answer is started: its
            // blocking-pool job (if any) runs only once it has a place, so
            // a connection has at most `max_requests_in_flight` of them
            // queued (and the one being answered). A `Cancel` is answered
            // by nothing and needs no room.
            let room = match msg {
                Message::Cancel { .. } => None,
                _ => match self.tx.reserve().await {
                    Ok(room) => Some(room),
                    Err(_) => return,
                },
            };
            let pending = respond(self.ctx, &self.conn, msg);
            let fatal = matches!(pending, Pending::Fatal(_));
            if let Some(room) = room {
                room.send(pending);
            }
            if fatal {
                return;
            }
        }
    }

    /// The next frame from the client; `None` when reading is over: end of
    /// stream, silence past the idle timeout, or a malformed frame (its
    /// error is queued for the write side first).
    async fn next_request(&mut self, last_heard: Instant) -> Option<Message> {
        let ctx = self.ctx;
        loop {
            return match tokio::time::timeout(ctx.config.idle_timeout, self.reader.read()).await {
                // A client that subscribed to announcements may have
                // nothing to ask for a long time: it is waiting for us.
                // (`read` keeps what it buffered: calling again is safe.)
                Err(_)
                    if self.conn.has_subscriptions()
                        && last_heard.elapsed() < ctx.config.subscribed_idle_timeout =>
                {
                    continue;
                }
                Err(_) | Ok(Ok(None)) => None,
                Ok(Err(ReadError::Decode(e))) => {
                    ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(addr = %self.addr, "malformed frame: {e}");
                    let _ = self
                        .tx
                        .send(Pending::Fatal(Message::Error {
                            req_id: 0,
                            code: ErrorCode::BadRequest,
                            message: format!("malformed frame: {e}"),
                        }))
                        .await;
                    None
                }
                Ok(Err(_)) => None,
                Ok(Ok(Some(m))) => Some(m),
            };
        }
    }
}

/// A connection's write side: sends the queued answers in order, and the
/// updates of its `Have` subscriptions between them.
struct WriteSide<'a> {
    ctx: &'a Arc<Ctx>,
    conn: Arc<ConnState>,
    writer: FrameWriter<BoxWrite>,
    rx: mpsc::Receiver<Pending>,
    push_rx: mpsc::Receiver<Message>,
    /// When the client was last answered (ms since the server started).
    answered: Arc<AtomicU64>,
}

impl WriteSide<'_> {
    /// Sends answers until the queue is closed and drained, or one cannot
    /// be sent.
    async fn run(&mut self) {
        while let Some(pending) = self.next_answer().await {
            if !self.answer(pending).await {
                return;
            }
        }
    }

    /// The next answer: a queued one first, else a subscription's update;
    /// `None` once the read side is gone and the queue is drained.
    async fn next_answer(&mut self) -> Option<Pending> {
        tokio::select! {
            biased;
            p = self.rx.recv() => p,
            Some(update) = self.push_rx.recv() => Some(Pending::Ready(update)),
        }
    }

    /// Waits for one answer and sends it; false when the connection should
    /// end.
    async fn answer(&mut self, pending: Pending) -> bool {
        match pending {
            Pending::Ready(m) => self.send(&m).await,
            Pending::Job(job) => match job.await {
                Ok(m) => self.send(&m).await,
                Err(_) => false,
            },
            Pending::Fatal(m) => {
                self.send(&m).await;
                false
            }
            Pending::Nothing => true,
            Pending::Chunk(job) => match job.await {
                Ok(Ok(plan)) => self.send_chunk(plan).await,
                Ok(Err(m)) => {
                    self.conn.take_cancelled(m.req_id());
                    self.send(&m).await
                }
                Err(_) => false,
            },
        }
    }

    /// Sends one message, each [`WRITE_PIECE`] of it within the write
    /// timeout; false if it could not.
    async fn send(&mut self, msg: &Message) -> bool {
        let limit = self.ctx.config.write_timeout;
        let ok = self
            .writer
            .send_timed(msg, WRITE_PIECE, limit)
            .await
            .is_ok();
        if ok {
            self.answered.store(self.ctx.now_ms(), Ordering::Relaxed);
        }
        ok
    }

    /// Writes `bytes`, each [`WRITE_PIECE`] of them within the write
    /// timeout; false if it could not.
    async fn write(&mut self, bytes: &[u8]) -> bool {
        let limit = self.ctx.config.write_timeout;
        self.writer
            .send_raw_timed(bytes, WRITE_PIECE, limit)
            .await
            .is_ok()
    }

    /// [`WriteSide::write`] under the upload limit: pieces of the pacing
    /// slice, each waiting for its tokens, but the first piece of a chunk
    /// when `paid` (its tokens were taken before the header: see
    /// [`WriteSide::send_chunk`]).
    async fn write_paced(&mut self, bytes: &[u8], paid: &mut bool) -> bool {
        if self.ctx.upload.is_none() {
            return self.write(bytes).await;
        }
        for piece in bytes.chunks(self.ctx.first_slice(usize::MAX).max(1)) {
            if !std::mem::replace(paid, false) {
                self.ctx.throttle(piece.len() as u64).await;
            }
            if !self.write(piece).await {
                return false;
            }
        }
        true
    }

    /// Sends a chunk answer, read from disk a slice at a time
    /// ([`Slices`]) as the client takes it, unless the client cancelled it
    /// before its first byte went out; false when the connection should
    /// end.
    ///
    /// Before the frame's header: a slice buffer from the server's budget
    /// (waiting for one if need be), a download's chunk verified whole, the
    /// first slice read, the upload limit's first piece. Until then a
    /// chunk that cannot be sent is answered with an error. After it, the
    /// header cannot be taken back: a file that changes, or a chunk that no
    /// longer hashes right (checked before its last slice goes out), closes
    /// the connection, which the client treats as lost.
    async fn send_chunk(&mut self, plan: ChunkPlan) -> bool {
        let ctx = self.ctx;
        let req_id = plan.req_id;
        if self.conn.is_cancelled(req_id) {
            return self.drop_cancelled(req_id);
        }
        let plan = Arc::new(plan);
        let (slices, first) = match self.open_chunk(&plan).await {
            Ok(opened) => opened,
            Err(go_on) => return go_on,
        };
        // Under an upload limit, wait for the first piece's turn before
        // committing to the frame: a request cancelled meanwhile costs no
        // upload at all.
        ctx.throttle(ctx.first_slice(plan.len) as u64).await;
        if self.conn.take_cancelled(req_id) {
            return self.drop_cancelled(req_id);
        }
        if !self.stream_chunk(&plan, slices, first).await {
            return false;
        }
        ctx.stats.chunks_served.fetch_add(1, Ordering::Relaxed);
        ctx.stats
            .bytes_served
            .fetch_add(plan.len as u64, Ordering::Relaxed);
        self.conn
            .uploads
            .sent(plan.id, &plan.name, plan.of_chunks, plan.len as u64);
        if matches!(plan.check, Check::Hash(_)) {
            ctx.stats
                .partial_chunks_served
                .fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Gets a chunk answer ready to send: a slice buffer, the chunk
    /// verified whole if it is a download's, its first slice read. `Err`
    /// when it cannot be sent, with what [`WriteSide::send_chunk`] returns
    /// (it was answered with why, or the connection is to end).
    async fn open_chunk(&mut self, plan: &Arc<ChunkPlan>) -> Result<(Slices, Slice), bool> {
        let ctx = self.ctx;
        let mut slice = ctx.slices.take().await;
        if matches!(plan.check, Check::Hash(_)) {
            let p = plan.clone();
            let verified = tokio::task::spawn_blocking(move || {
                let verified = p.verify(&mut slice);
                (slice, verified)
            })
            .await;
            slice = match verified {
                Ok((slice, Ok(()))) => slice,
                Ok((_, Err(e))) => return Err(self.refuse_chunk(plan, e).await),
                Err(_) => return Err(false),
            };
        }
        let mut slices = Slices::new(plan.clone(), ctx.slices.clone(), slice);
        match slices.next().await {
            Some(Ok(first)) => Ok((slices, first)),
            Some(Err(e)) => Err(self.refuse_chunk(plan, e).await),
            None => Err(false),
        }
    }

    /// Sends a chunk's frame: its header, then `first` and the rest of
    /// `slices` as they are read; false when the connection should end (a
    /// write not taken in time, or a slice that failed its check once the
    /// header was out).
    async fn stream_chunk(&mut self, plan: &ChunkPlan, mut slices: Slices, first: Slice) -> bool {
        let header = chunk_header(plan.req_id, plan.index, plan.len as u32);
        if !self.write(&header).await {
            return false;
        }
        let (mut current, mut paid) = (first, true);
        loop {
            if !self.write_paced(current.data(), &mut paid).await {
                return false;
            }
            // Being answered: not idle, however long the chunk takes.
            self.answered.store(self.ctx.now_ms(), Ordering::Relaxed);
            slices.sent(current);
            current = match slices.next().await {
                None => return true,
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    tracing::warn!(
                        "closing a connection in the middle of chunk {} of {}: {e:?}",
                        plan.index,
                        plan.id
                    );
                    self.conn.forget_file(&plan.id);
                    return false;
                }
            };
        }
    }

    /// Forgets a chunk request the client cancelled; its answer is not sent.
    fn drop_cancelled(&mut self, req_id: u32) -> bool {
        self.conn.take_cancelled(req_id);
        self.ctx.stats.cancelled.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Answers a chunk request whose bytes cannot be sent (nothing of its
    /// frame went out yet) with why; false when the connection should end.
    async fn refuse_chunk(&mut self, plan: &ChunkPlan, e: SliceError) -> bool {
        let (req_id, index, id) = (plan.req_id, plan.index, plan.id);
        self.conn.take_cancelled(req_id);
        let why = match (&plan.check, e) {
            (_, SliceError::Lost) => return false,
            (Check::Unchanged(_), _) => {
                self.conn.forget_file(&id);
                format!("file {id} changed on disk since it was shared")
            }
            (Check::Hash(_), SliceError::Io(e)) => {
                format!("the download of {id} cannot be read here: {e}")
            }
            (Check::Hash(_), _) => {
                format!("chunk {index} of the download of {id} is not verified here")
            }
        };
        self.send(&error(req_id, ErrorCode::Unavailable, why)).await
    }

    /// Closes the connection (what was sent is flushed first, briefly).
    async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(100), self.writer.shutdown()).await;
    }
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

/// Open shared files of one connection, by file ID.
type OpenFiles = HashMap<FileId, (Arc<File>, Entry)>;

/// What one connection's request handlers share.
struct ConnState {
    files: Mutex<OpenFiles>,
    /// Chunk and `GetHave` requests read and not yet answered, and whether
    /// each was cancelled meanwhile. Bounded by the answers a connection
    /// may have prepared.
    open_requests: Mutex<HashMap<u32, bool>>,
    /// `Have` subscriptions by request ID.
    subscriptions: Mutex<Subscriptions>,
    /// Where subscriptions send their updates (to the write side).
    push: mpsc::Sender<Message>,
    /// What the peer took on this connection.
    uploads: ConnectionUploads,
}

#[derive(Default)]
struct Subscriptions {
    tasks: HashMap<u32, tokio::task::AbortHandle>,
    /// The connection ended: no new subscription may start.
    closed: bool,
}

/// Aborts a connection's subscriptions when dropped.
struct EndSubscriptions(Arc<ConnState>);

impl Drop for EndSubscriptions {
    fn drop(&mut self) {
        let mut subs = self.0.subscriptions.lock().expect("subscriptions lock");
        subs.closed = true;
        for (_, task) in subs.tasks.drain() {
            task.abort();
        }
    }
}

impl ConnState {
    fn new(push: mpsc::Sender<Message>, uploads: ConnectionUploads) -> Self {
        Self {
            files: Mutex::default(),
            open_requests: Mutex::default(),
            subscriptions: Mutex::default(),
            push,
            uploads,
        }
    }

    /// Request `req_id` is read and will be answered (or cancelled).
    fn open(&self, req_id: u32) {
        self.open_requests
            .lock()
            .expect("requests lock")
            .insert(req_id, false);
    }

    /// True if the client cancelled chunk request `req_id` (still open).
    fn is_cancelled(&self, req_id: u32) -> bool {
        self.open_requests
            .lock()
            .expect("requests lock")
            .get(&req_id)
            .copied()
            .unwrap_or(false)
    }

    /// Forgets chunk request `req_id` as it is answered; true if the client
    /// cancelled it (the answer is to be dropped).
    fn take_cancelled(&self, req_id: u32) -> bool {
        self.open_requests
            .lock()
            .expect("requests lock")
            .remove(&req_id)
            .unwrap_or(false)
    }

    fn has_subscriptions(&self) -> bool {
        !self
            .subscriptions
            .lock()
            .expect("subscriptions lock")
            .tasks
            .is_empty()
    }

    /// The client cancelled `req_id`: a subscription ends; a chunk answer
    /// not yet sent is dropped. Unknown IDs are ignored (already answered).
    fn cancel(&self, req_id: u32) {
        // Lock order: subscriptions, then open requests (as in `have`).
        let mut subs = self.subscriptions.lock().expect("subscriptions lock");
        if let Some(task) = subs.tasks.remove(&req_id) {
            task.abort();
            return;
        }
        if let Some(c) = self
            .open_requests
            .lock()
            .expect("requests lock")
            .get_mut(&req_id)
        {
            *c = true;
        }
    }

    /// Forgets the open file of `id` (it changed on disk): the next
    /// request opens whatever is shared then.
    fn forget_file(&self, id: &FileId) {
        self.files.lock().expect("open files lock").remove(id);
    }
}

/// Builds the answer to one request.
fn respond(ctx: &Arc<Ctx>, conn: &Arc<ConnState>, msg: Message) -> Pending {
    match msg {
        Message::GetCatalog { req_id, cursor } => {
            // Building a catalog stats every shared file: never on an async
            // worker.
            let ctx = ctx.clone();
            Pending::Job(tokio::task::spawn_blocking(move || {
                catalog(&ctx, req_id, cursor)
            }))
        }
        Message::GetManifest { req_id, id } => {
            // Reads (up to `MAX_MANIFEST_LEN` bytes) and hashes a file, and
            // may re-read the library: never on an async worker.
            let ctx = ctx.clone();
            Pending::Job(tokio::task::spawn_blocking(move || {
                manifest(&ctx, req_id, id)
            }))
        }
        Message::GetChunk { req_id, id, index } => {
            conn.open(req_id);
            let ctx = ctx.clone();
            let conn = conn.clone();
            Pending::Chunk(tokio::task::spawn_blocking(move || {
                plan_chunk(&ctx, &conn, req_id, id, index)
            }))
        }
        Message::GetHave {
            req_id,
            id,
            subscribe,
        } => {
            conn.open(req_id);
            let ctx = ctx.clone();
            let conn = conn.clone();
            Pending::Job(tokio::task::spawn_blocking(move || {
                have(&ctx, &conn, req_id, id, subscribe)
            }))
        }
        Message::Cancel { req_id } => {
            conn.cancel(req_id);
            Pending::Nothing
        }
        Message::Hello(_)
        | Message::Error { .. }
        | Message::Catalog { .. }
        | Message::Manifest { .. }
        | Message::Chunk { .. }
        | Message::Have { .. } => Pending::Fatal(error(
            0,
            ErrorCode::BadRequest,
            "unexpected message from a client",
        )),
    }
}

/// What this node offers of a file, best first.
enum Offer {
    /// A shared copy unchanged on disk (or a finished download of this
    /// process: the same thing).
    Shared(Entry),
    /// This process's download in progress, and its shared name.
    Live(View, String),
    /// A download recorded in the library (another process's, through its
    /// state file).
    Recorded(Download),
}

/// What this node offers of `id` (blocking: it may `stat` and `open`).
fn offer(ctx: &Ctx, id: &FileId) -> Option<Offer> {
    if !ctx.only_live
        && let Some(e) = shared_entry(ctx, id)
    {
        return Some(Offer::Shared(e));
    }
    if let Some(live) = ctx.live.get(id) {
        match live.servable() {
            Some(Servable::Complete(e)) if unchanged(&e) => return Some(Offer::Shared(e)),
            Some(Servable::Partial(view)) => return Some(Offer::Live(view, live.name.clone())),
            _ => {}
        }
    }
    if !ctx.only_live
        && let Some(d) = partial_download(ctx, id)
    {
        return Some(Offer::Recorded(d));
    }
    None
}

/// True when the file an entry names is as it was when recorded.
fn unchanged(e: &Entry) -> bool {
    std::fs::metadata(&e.path).is_ok_and(|m| e.matches(&m))
}

/// The answer to `GetManifest`: the manifest of a file offered here
/// (shared, or a download in progress), or `NotFound`.
fn manifest(ctx: &Ctx, req_id: u32, id: FileId) -> Message {
    let Some(offer) = offer(ctx, &id) else {
        return not_here(req_id, &id);
    };
    // This process's download (finished or not): its manifest is in memory.
    let in_memory = match &offer {
        Offer::Live(view, _) => Some(view.manifest.clone()),
        _ => ctx.live.get(&id).map(|l| l.manifest.clone()),
    };
    if let Some(m) = in_memory {
        return Message::Manifest {
            req_id,
            bytes: m.encode().into(),
        };
    }
    match ctx.library.manifest_bytes(&id) {
        Ok(Some(bytes)) => Message::Manifest {
            req_id,
            bytes: bytes.into(),
        },
        Ok(None) => not_here(req_id, &id),
        Err(e) => internal(req_id, e),
    }
}

/// An entry for `id` whose file is unchanged on disk, if any.
fn shared_entry(ctx: &Ctx, id: &FileId) -> Option<Entry> {
    shared_entry_in(ctx, &*ctx.library.snapshot().ok()?, id)
}

/// [`shared_entry`] in `snap`: looks at the entries of `id` only.
fn shared_entry_in(ctx: &Ctx, snap: &Snapshot, id: &FileId) -> Option<Entry> {
    snap.by_id(&id.to_string())
        .inspect(|_| ctx.examined(1))
        .find(|e| std::fs::metadata(&e.path).is_ok_and(|m| e.matches(&m)))
        .cloned()
}

/// This node's download of `id` in progress (its part file there), if any.
/// Callers prefer a whole shared copy when there is one.
fn partial_download(ctx: &Ctx, id: &FileId) -> Option<Download> {
    partial_download_in(ctx, &*ctx.library.snapshot().ok()?, id)
}

/// [`partial_download`] in `snap`: looks at the downloads of `id` only.
fn partial_download_in(ctx: &Ctx, snap: &Snapshot, id: &FileId) -> Option<Download> {
    snap.downloads_of(&id.to_string())
        .inspect(|_| ctx.examined(1))
        .find(|d| d.part.exists())
        .cloned()
}

/// Which chunks of `id` this node offers: all of a shared file (or of a
/// download that has every chunk), the verified ones of a download in
/// progress, or `None`.
fn holding(ctx: &Ctx, id: &FileId) -> Option<Holding> {
    match offer(ctx, id)? {
        Offer::Shared(_) => Some(Holding::All),
        Offer::Live(view, _) => Some(partial_holding(&view)),
        Offer::Recorded(d) => Some(partial_holding(&ctx.partials.view(&ctx.library, &d)?)),
    }
}

/// What a view of a download in progress offers.
fn partial_holding(view: &crate::partials::View) -> Holding {
    if view.have.is_full() {
        Holding::All
    } else {
        Holding::Some((*view.have).clone())
    }
}

/// The answer to `GetHave`: every chunk of a shared file, the verified
/// chunks of a download in progress (and, with `subscribe`, a task that
/// sends them again whenever they grow), or `NotFound`.
fn have(
    ctx: &Arc<Ctx>,
    conn: &Arc<ConnState>,
    req_id: u32,
    id: FileId,
    subscribe: bool,
) -> Message {
    let (answer, known) = match holding(ctx, &id) {
        None => (not_here(req_id, &id), None),
        Some(holding) => {
            let known = match &holding {
                Holding::All => None,
                Holding::Some(b) => Some(b.count()),
            };
            (Message::Have { req_id, holding }, known)
        }
    };
    // Lock order: subscriptions, then open requests (as in `cancel`): a
    // `Cancel` either marked this request already, or finds the
    // subscription once it is in place.
    let mut subs = conn.subscriptions.lock().expect("subscriptions lock");
    let cancelled = conn.take_cancelled(req_id);
    let (true, false, false, Some(known)) = (subscribe, cancelled, subs.closed, known) else {
        return answer;
    };
    if subs.tasks.len() >= MAX_HAVE_SUBSCRIPTIONS && !subs.tasks.contains_key(&req_id) {
        return error(
            req_id,
            ErrorCode::Busy,
            format!("at most {MAX_HAVE_SUBSCRIPTIONS} have subscriptions per connection"),
        );
    }
    let task = tokio::runtime::Handle::current().spawn(subscription(
        ctx.clone(),
        conn.clone(),
        req_id,
        id,
        known,
    ));
    if let Some(old) = subs.tasks.insert(req_id, task.abort_handle()) {
        old.abort();
    }
    answer
}

/// Sends `Have` for download `id` whenever it holds more than `known`
/// chunks, until it is whole (a last `Have` of all), gone (an `Error`), or
/// the client cancels or disconnects (the task is aborted).
async fn subscription(
    ctx: Arc<Ctx>,
    conn: Arc<ConnState>,
    req_id: u32,
    id: FileId,
    mut known: u32,
) {
    let mut tick = tokio::time::interval(HAVE_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut watch = Watch::new(id);
    loop {
        tick.tick().await;
        let c = ctx.clone();
        let Ok((w, seen)) = tokio::task::spawn_blocking(move || {
            let seen = watch.check(&c);
            (watch, seen)
        })
        .await
        else {
            break;
        };
        watch = w;
        let Some(now) = seen else { continue };
        let (msg, last) = match now {
            None => (
                error(
                    req_id,
                    ErrorCode::Unavailable,
                    format!("the download of {id} stopped here"),
                ),
                true,
            ),
            Some(Holding::All) => (
                Message::Have {
                    req_id,
                    holding: Holding::All,
                },
                true,
            ),
            Some(Holding::Some(b)) if b.count() > known => {
                known = b.count();
                (
                    Message::Have {
                        req_id,
                        holding: Holding::Some(b),
                    },
                    false,
                )
            }
            Some(Holding::Some(_)) => continue,
        };
        if conn.push.send(msg).await.is_err() || last {
            break;
        }
    }
    conn.subscriptions
        .lock()
        .expect("subscriptions lock")
        .tasks
        .remove(&req_id);
}

/// What a `Have` subscription has seen of its download, so that a check
/// that finds nothing new costs two `stat`s (`library.json`, through the
/// library's cache, and the download's state file) whatever the library's
/// size: the download is looked up again (by ID) only when the library
/// changed, and its state file read again only when its stamp did.
struct Watch {
    id: FileId,
    /// The library revision the download was last looked up at.
    revision: Option<u64>,
    /// The download's record then (`None`: gone).
    download: Option<Download>,
    /// Its state file's stamp when last read.
    stamp: Option<crate::partials::Stamp>,
    /// The live offer's set last seen.
    live_seen: Option<Arc<peershare_proto::bitmap::Bitmap>>,
}

impl Watch {
    fn new(id: FileId) -> Self {
        Self {
            id,
            revision: None,
            download: None,
            stamp: None,
            live_seen: None,
        }
    }

    /// `None` when nothing changed since the last check; otherwise what
    /// this node holds of the file now (`Some(None)`: nothing, the
    /// download is gone).
    fn check(&mut self, ctx: &Ctx) -> Option<Option<Holding>> {
        ctx.stats.have_checks.fetch_add(1, Ordering::Relaxed);
        // This process's download: in memory, no file looked at.
        if let Some(live) = ctx.live.get(&self.id) {
            return match live.have() {
                None => Some(Some(Holding::All)),
                Some(have)
                    if self
                        .live_seen
                        .as_ref()
                        .is_some_and(|s| Arc::ptr_eq(s, &have)) =>
                {
                    None
                }
                Some(have) => {
                    self.live_seen = Some(have.clone());
                    Some(Some(Holding::Some((*have).clone())))
                }
            };
        }
        if ctx.only_live {
            return Some(None);
        }
        let Ok(snap) = ctx.library.snapshot() else {
            return Some(None);
        };
        if self.revision != Some(snap.revision) {
            self.revision = Some(snap.revision);
            self.stamp = None;
            // Finished (and shared), or withdrawn?
            if shared_entry_in(ctx, &snap, &self.id).is_some() {
                return Some(Some(Holding::All));
            }
            self.download = partial_download_in(ctx, &snap, &self.id);
        }
        let Some(d) = self.download.as_ref() else {
            return Some(None);
        };
        let stamp = crate::partials::state_stamp(&d.state);
        if self.stamp == Some(stamp) {
            return None;
        }
        self.stamp = Some(stamp);
        Some(
            ctx.partials
                .view(&ctx.library, d)
                .map(|v| partial_holding(&v)),
        )
    }
}

/// The library's files as a catalog lists them: sorted by name, one item
/// per file ID, with every library entry holding that content. Cached per
/// library revision; whether a file is unchanged on disk is checked only
/// for the page being answered, so a request costs O(page), not O(library).
fn catalog_list(ctx: &Ctx) -> Result<CachedCatalog, crate::error::StoreError> {
    let snap = if ctx.only_live {
        Arc::new(Snapshot::default())
    } else {
        ctx.library.snapshot()?
    };
    let (live_revision, live) = ctx.live.list();
    let revision = (snap.revision, live_revision);
    let mut cache = ctx.catalog.lock().expect("catalog cache lock");
    if let Some(c) = cache.as_ref()
        && c.revision == revision
    {
        return Ok(c.clone());
    }
    ctx.examined(snap.files.len() + snap.downloads.len());
    let mut by_id: HashMap<FileId, (CatalogEntry, Source)> = HashMap::new();
    // Unlisted files are served to whoever names their ID, never listed
    // (nor their downloads in progress).
    let mut unlisted = std::collections::HashSet::new();
    // A library an older release wrote may hold names no node may list:
    // never listed (still served by ID).
    let listable = |name: &str| peershare_proto::wire::check_shared_name(name).is_ok();
    // This process's downloads first: their offer is the freshest.
    for o in live.iter().filter(|o| listable(&o.name)) {
        if o.unlisted {
            unlisted.insert(o.id);
            continue;
        }
        let flags = if o.is_complete() {
            0
        } else {
            entry_flags::PARTIAL
        };
        let entry = CatalogEntry {
            id: o.id,
            size: o.size(),
            flags,
            name: o.name.clone(),
        };
        by_id.insert(o.id, (entry, Source::Live(o.clone())));
    }
    for e in snap.files.values() {
        if !listable(&e.name) {
            continue;
        }
        if e.unlisted {
            unlisted.extend(e.file_id());
            continue;
        }
        let Some(id) = e.file_id() else { continue };
        if unlisted.contains(&id) {
            continue;
        }
        let item = by_id.entry(id).or_insert_with(|| {
            let entry = CatalogEntry {
                id,
                size: e.size,
                flags: 0,
                name: e.name.clone(),
            };
            (entry, Source::Files(Vec::new()))
        });
        match item {
            (_, Source::Files(paths)) => paths.push(e.clone()),
            // A whole copy beats a download in progress.
            (entry, source @ Source::Live(_)) => {
                entry.flags = 0;
                *source = Source::Files(vec![e.clone()]);
            }
            _ => {}
        }
    }
    // Downloads in progress, unless a whole copy is shared.
    for d in snap.downloads.values() {
        if !listable(&d.name) {
            continue;
        }
        let Some(id) = d.file_id() else { continue };
        if d.unlisted || unlisted.contains(&id) {
            continue;
        }
        by_id.entry(id).or_insert_with(|| {
            let entry = CatalogEntry {
                id,
                size: d.size,
                flags: entry_flags::PARTIAL,
                name: d.name.clone(),
            };
            (entry, Source::Partial(d.clone()))
        });
    }
    let mut items: Vec<_> = by_id.into_values().collect();
    items.sort_by(|a, b| a.0.name.cmp(&b.0.name).then(a.0.id.cmp(&b.0.id)));
    // `share` refuses to list more, but a library an older release wrote may
    // hold more: no catalog of ours is longer than a client keeps.
    let limit = peershare_proto::wire::MAX_CATALOG_ENTRIES;
    if items.len() > limit {
        tracing::warn!(
            "the library lists {} files, more than the {limit} a catalog holds; listing the first {limit} by name",
            items.len()
        );
        items.truncate(limit);
    }
    let built = CachedCatalog {
        revision,
        items: Arc::new(items),
    };
    *cache = Some(built.clone());
    Ok(built)
}

#[derive(Clone)]
struct CachedCatalog {
    /// The library's revision and the live offers' it was built at.
    revision: (u64, u64),
    items: Arc<Vec<(CatalogEntry, Source)>>,
}

/// Where a catalog item's bytes are.
#[derive(Clone)]
enum Source {
    /// Shared files with this content (any unchanged one will do).
    Files(Vec<Entry>),
    /// This node's download in progress (recorded in the library).
    Partial(Download),
    /// This process's download (in progress, or finished while it runs).
    Live(Arc<crate::live::LiveOffer>),
}

impl Source {
    /// Servable now: some file unchanged since hashed, or the part file there.
    fn is_live(&self) -> bool {
        match self {
            Source::Files(paths) => paths
                .iter()
                .any(|e| std::fs::metadata(&e.path).is_ok_and(|m| e.matches(&m))),
            Source::Partial(d) => d.part.exists(),
            Source::Live(o) => match o.servable() {
                Some(Servable::Complete(e)) => unchanged(&e),
                Some(Servable::Partial(_)) => true,
                None => false,
            },
        }
    }
}

fn catalog(ctx: &Ctx, req_id: u32, cursor: u32) -> Message {
    let list = match catalog_list(ctx) {
        Ok(c) => c,
        Err(e) => return internal(req_id, e),
    };
    let all = &list.items;
    let mut entries = Vec::new();
    let mut used = 0;
    let mut i = cursor as usize;
    while i < all.len() {
        let (entry, source) = &all[i];
        // Withdrawn (changed on disk) unless some copy is still as hashed.
        if !source.is_live() {
            i += 1;
            continue;
        }
        let len = catalog_entry_len(entry);
        if !entries.is_empty() && used + len > CATALOG_PAGE_BUDGET {
            break;
        }
        used += len;
        entries.push(entry.clone());
        i += 1;
    }
    Message::Catalog {
        req_id,
        revision: list.revision.0 + list.revision.1,
        next: (i < all.len()).then_some(i as u32),
        entries,
    }
}

/// Where the bytes of chunk `index` of `id` are, for the write side to
/// read as it sends them: a shared file unchanged since it was hashed (or,
/// with none, a download in progress that verified it). Only `stat`s and
/// an `open` here; nothing of the chunk is read.
fn plan_chunk(
    ctx: &Ctx,
    conn: &ConnState,
    req_id: u32,
    id: FileId,
    index: u32,
) -> Result<ChunkPlan, Message> {
    let files = &conn.files;
    let cached = files.lock().expect("open files lock").get(&id).cloned();
    let (file, entry) = match cached {
        Some(c) => c,
        None => {
            let entry = match offer(ctx, &id) {
                None => return Err(not_here(req_id, &id)),
                Some(Offer::Shared(entry)) => entry,
                Some(Offer::Live(view, name)) => {
                    return plan_partial_chunk(req_id, id, index, &view, &name);
                }
                Some(Offer::Recorded(d)) => {
                    let Some(view) = ctx.partials.view(&ctx.library, &d) else {
                        return Err(not_here(req_id, &id));
                    };
                    return plan_partial_chunk(req_id, id, index, &view, &d.name);
                }
            };
            let file = File::open(&entry.path).map_err(|e| internal(req_id, e))?;
            let mut open = files.lock().expect("open files lock");
            // A handful of files per connection at most; start over rather
            // than grow without bound.
            if open.len() >= 16 {
                open.clear();
            }
            let c = (Arc::new(file), entry);
            open.insert(id, c.clone());
            c
        }
    };
    let (start, len) = chunk_span(req_id, &id, entry.size, index)?;
    // The file must still be what was hashed: same size and mtime (and so
    // again after every slice read).
    if !file.metadata().is_ok_and(|m| entry.matches(&m)) {
        conn.forget_file(&id);
        return Err(error(
            req_id,
            ErrorCode::Unavailable,
            format!("file {id} changed on disk since it was shared"),
        ));
    }
    Ok(ChunkPlan {
        req_id,
        index,
        id,
        file,
        start,
        len,
        name: entry.name.as_str().into(),
        of_chunks: chunks_of(entry.size),
        check: Check::Unchanged(entry),
    })
}

/// Chunks in a file of `size` bytes.
fn chunks_of(size: u64) -> u32 {
    peershare_proto::manifest::chunk_count(size, peershare_proto::manifest::chunk_size_for(size))
        as u32
}

/// Where chunk `index` of file `id`, `size` bytes, lies: its offset and
/// length (canonical chunk size), or the `OutOfRange` answer.
fn chunk_span(req_id: u32, id: &FileId, size: u64, index: u32) -> Result<(u64, usize), Message> {
    let chunk_size = peershare_proto::manifest::chunk_size_for(size) as u64;
    let start = index as u64 * chunk_size;
    if start >= size {
        return Err(error(
            req_id,
            ErrorCode::OutOfRange,
            format!("file {id} has no chunk {index}"),
        ));
    }
    Ok((start, chunk_size.min(size - start) as usize))
}

/// [`plan_chunk`] for a download in progress (`view` of it, shared as
/// `name`): a chunk it verified, to be checked against the manifest as it
/// is read (the part file may have changed under us: a download started
/// over).
fn plan_partial_chunk(
    req_id: u32,
    id: FileId,
    index: u32,
    view: &View,
    name: &str,
) -> Result<ChunkPlan, Message> {
    let (start, len) = chunk_span(req_id, &id, view.size, index)?;
    let hash = view.manifest.hashes().get(index as usize);
    let (true, Some(hash)) = (view.have.get(index), hash) else {
        return Err(error(
            req_id,
            ErrorCode::Unavailable,
            format!("this node is still downloading {id} and does not hold chunk {index} yet"),
        ));
    };
    Ok(ChunkPlan {
        req_id,
        index,
        id,
        file: view.part.clone(),
        start,
        len,
        check: Check::Hash(*hash),
        name: name.into(),
        of_chunks: view.manifest.chunk_count(),
    })
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
        let server = Server::new(lib, Tls::ephemeral(), 0, ServerConfig::default());
        let list = catalog_list(&server.ctx).unwrap();
        assert_eq!(list.items.len(), limit);
        assert_eq!(list.items[limit - 1].0.name, format!("f{:07}", limit - 1));
    }
}
