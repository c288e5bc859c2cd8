//! One download as a struct: the async shell around [`Scheduler`]. Each
//! event (a chunk fetched, a peer's announcement, a peer joining or coming
//! back, a checkpoint done, a timer) has a handler method; the loop in
//! [`Session::drive`] only waits for the next one. `STATE.md` beside this
//! file names the states and transitions.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use peershare_proto::manifest::Manifest;
use peershare_proto::rate::TokenBucket;
use peershare_proto::schedule::{DropReason, Failure, PeerKey, Scheduler, SchedulerConfig, Status};
use peershare_proto::ticket::safe_file_name;
use peershare_proto::wire::Holding;
use peershare_proto::{FileId, NodeId};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use super::join::{Expect, Joined, Joins, Ready, join_peer};
use super::part_file::{self, PartFile, Target, finish, spawn_checkpoint, write_error};
use super::{
    DownloadRequest, DownloadSummary, Output, PeerProgress, PeerReport, Progress, Reported,
};
use crate::client::{HaveWatch, PeerConn};
use crate::error::{DownloadError, PeerError};
use crate::live::LiveHandle;
use crate::partial::Bitmap;
use crate::store::{Download, Entry};

/// Wait before the first reconnection of a lost peer; doubles for each
/// further one, to `MAX_RECONNECT_BACKOFF`.
pub const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between two reconnections: a path that comes back is used
/// again within about this (plus a connect), however long it was down.
pub const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(2);
/// Reconnections in a row that find nobody there (connection refused, or
/// a peer that no longer has the file) before a peer is given up on.
pub const MAX_REFUSED_RECONNECTS: u32 = 5;
/// How often this process's live offer of a download is updated with the
/// chunks verified meanwhile, at most.
pub const OFFER_UPDATE_INTERVAL: Duration = Duration::from_millis(100);
/// Reconnections that succeed but are lost again before the peer delivers
/// a chunk (it stalls whenever asked) before it is given up on.
pub const MAX_FRUITLESS_RECONNECTS: u32 = 3;
/// Connect timeout of a reconnection (at most the configured one): while a
/// path is down, attempts follow each other instead of waiting on TCP.
pub const RECONNECT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

enum Outcome {
    Verified,
    Corrupt,
    Peer(PeerError),
    Disk(io::Error),
}

/// A fetch task's result.
struct Event {
    slot: usize,
    /// The scheduler key the request was made under: after a reconnection
    /// the slot has a new key, and late results of the old connection must
    /// only ever touch the old one.
    key: PeerKey,
    index: u32,
    outcome: Outcome,
}

/// A partial peer's announcement for the driver: its slot and key, and its
/// latest set, or `None` once its announcements ended (its connection
/// closed, or its own download stopped).
type HaveUpdate = (usize, PeerKey, Option<Holding>);

/// Fetch tasks under way, by scheduler key and chunk.
type InFlight = std::collections::HashMap<(PeerKey, u32), AbortHandle>;

/// How the loop goes on after an event.
type Next = std::ops::ControlFlow<Option<DownloadError>>;

/// One peer taking part.
struct Slot {
    conn: Arc<PeerConn>,
    key: PeerKey,
    report: PeerReport,
    /// The latest error from this peer, for the report if it is dropped.
    last_error: Option<String>,
    /// Reconnections tried since it last delivered a chunk (for backoff).
    reconnects: u32,
    /// Of those, the ones in a row that found nobody there.
    refused: u32,
    /// Of those, the ones that succeeded (it was lost again since).
    fruitless: u32,
    /// When it was lost, if it has not delivered a chunk since.
    lost_at: Option<Duration>,
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
            refused: 0,
            fruitless: 0,
            lost_at: None,
            reconnecting: false,
        }
    }

    /// Whether a lost peer is worth another reconnection at `now`.
    fn may_reconnect(&self, now: Duration, req: &DownloadRequest) -> bool {
        let lost_for = self
            .lost_at
            .map_or(Duration::ZERO, |t| now.saturating_sub(t));
        self.refused < MAX_REFUSED_RECONNECTS
            && self.fruitless < MAX_FRUITLESS_RECONNECTS
            && lost_for < req.config.reconnect_for
    }

    /// It delivered a verified chunk: its reconnections are for the next loss.
    fn delivered(&mut self) {
        self.reconnects = 0;
        self.refused = 0;
        self.fruitless = 0;
        self.lost_at = None;
    }

    /// Records, once, why the peer was dropped.
    fn note_drop(&mut self, sched: &Scheduler) {
        if self.report.dropped.is_some() {
            return;
        }
        let Some(reason) = sched.dropped(self.key) else {
            return;
        };
        let last = self.last_error.clone();
        self.report.dropped = Some(match reason {
            DropReason::CorruptData => format!(
                "sent {} chunks that failed verification (corrupt data)",
                self.report.corrupt
            ),
            DropReason::TooManyErrors => last.unwrap_or_else(|| "too many failed requests".into()),
            DropReason::Disconnected => last.unwrap_or_else(|| "disconnected".into()),
            DropReason::BadHave => "announced chunks of a file of another size".into(),
        });
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
        let delay = RECONNECT_BACKOFF
            .saturating_mul(2u32.saturating_pow(self.reconnects))
            .min(MAX_RECONNECT_BACKOFF);
        self.reconnects += 1;
        self.reconnecting = true;
        let (addr, id, tls) = (self.report.addr, req.id, req.tls.clone());
        let expect = req
            .expect
            .get(&addr)
            .map_or(Expect::Any, |n| Expect::Node(*n));
        let mut config = req.config.client.clone();
        config.connect_timeout = config.connect_timeout.min(RECONNECT_CONNECT_TIMEOUT);
        let (deadline, pool) = (req.config.join_timeout, req.pool.clone());
        async move {
            tokio::time::sleep(delay).await;
            let joined = join_peer(addr, id, tls, expect, config, deadline, pool).await;
            (slot_no, joined)
        }
    }
}

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

/// Downloads, verifies and saves one file (see [`super::download`]).
pub(super) async fn run<C: Future<Output = ()> + ?Sized>(
    req: DownloadRequest,
    progress: Arc<Progress>,
    mut cancel: Pin<&mut C>,
) -> Result<DownloadSummary, DownloadError> {
    let start = Instant::now();
    // A run killed while finishing left the complete file: when this node
    // knows the manifest and the output's name, no peer is needed for it.
    if let Some((target, manifest)) = local_target(&req).await
        && let Some(done) = finish_interrupted(&req, &target, &manifest, &progress, start).await?
    {
        return Ok(done);
    }
    let mut joins = Joins::new(&req);
    let mut addrs = req.peers.clone();
    let mut seen = std::collections::HashSet::new();
    addrs.retain(|a| seen.insert(*a));
    if addrs.is_empty() {
        return Err(DownloadError::NoPeers);
    }
    // Every peer at once: connect, then ask for the manifest (checked
    // against the ID). The first that has the file starts the download;
    // the others join it as they answer, so a slow or silent peer delays
    // nothing.
    for addr in addrs {
        joins.ask(addr, &req);
    }
    let first = loop {
        let next = tokio::select! {
            j = joins.joining.join_next() => j,
            _ = &mut cancel => return Err(DownloadError::Cancelled),
        };
        let Some(joined) = next else { break None };
        let (addr, joined) = joined.expect("join task does not panic");
        if let Some(ready) = joins.settle(addr, joined, start.elapsed(), &req) {
            break Some(ready);
        }
    };
    let Some(first) = first else {
        return Err(if joins.failures.is_empty() && joins.not_found > 0 {
            // Peers that could not be reached do not change the answer of
            // those that could.
            DownloadError::NotFound { id: req.id }
        } else if joins.failures.is_empty() {
            DownloadError::AllUnreachable(std::mem::take(&mut joins.unreachable))
        } else {
            DownloadError::AllSourcesFailed(joins.reasons())
        });
    };
    let manifest = first.manifest.clone();
    progress.total.store(manifest.size(), Ordering::Relaxed);
    let target = target(&req, &first.conn).await?;
    if let Some(done) = finish_interrupted(&req, &target, &manifest, &progress, start).await? {
        return Ok(done);
    }
    if !req.force && target.out.symlink_metadata().is_ok() {
        return Err(DownloadError::OutputExists(target.out));
    }
    let opened = {
        let (t, id, m) = (target.clone(), req.id, manifest.clone());
        tokio::task::spawn_blocking(move || part_file::open(&t, &id, &m))
            .await
            .expect("opening the part file does not panic")?
    };
    let mut session = Session::new(req, progress, start, joins, manifest, target, opened);
    session.record_in_library().await;
    session.offer_live();
    session.add_slot(first);
    session.drive(cancel).await
}

/// Where to write: `-o FILE` as given, or the shared name (the request's,
/// else the first source's catalog's) inside `-o DIR`.
async fn target(req: &DownloadRequest, source: &PeerConn) -> Result<Target, DownloadError> {
    match &req.output {
        Output::File(p) => {
            let name = req.name.clone().unwrap_or_else(|| {
                p.file_name()
                    .map_or_else(|| req.id.to_string(), |n| n.to_string_lossy().into())
            });
            Ok(Target::new(name, p.clone()))
        }
        Output::Dir(d) => {
            let name = match &req.name {
                Some(n) => n.clone(),
                None => lookup_name(source, req.id)
                    .await
                    .unwrap_or_else(|| req.id.to_string()),
            };
            let base = safe_file_name(&name)?.to_owned();
            Ok(Target::new(name, d.join(base)))
        }
    }
}

/// The output and manifest of the request as far as this node knows them
/// without asking a peer: the library's stored manifest, and the output's
/// name when `-o FILE` or the request gives it.
async fn local_target(req: &DownloadRequest) -> Option<(Target, Manifest)> {
    let lib = req.library.clone()?;
    let id = req.id;
    let manifest = tokio::task::spawn_blocking(move || lib.manifest(&id))
        .await
        .ok()?
        .ok()??;
    let target = match (&req.output, &req.name) {
        (Output::File(p), name) => {
            let name = name.clone().unwrap_or_else(|| {
                p.file_name()
                    .map_or_else(|| req.id.to_string(), |n| n.to_string_lossy().into())
            });
            Target::new(name, p.clone())
        }
        (Output::Dir(d), Some(name)) => {
            let base = safe_file_name(name).ok()?;
            Target::new(name.clone(), d.join(base))
        }
        (Output::Dir(_), None) => return None,
    };
    Some((target, manifest))
}

/// Completes a download whose finishing step was interrupted (see
/// [`part_file::recover`]): the library is brought up to date, and the
/// summary says the whole file was already there. `None` when the output
/// is not such a file.
async fn finish_interrupted(
    req: &DownloadRequest,
    target: &Target,
    manifest: &Manifest,
    progress: &Progress,
    start: Instant,
) -> Result<Option<DownloadSummary>, DownloadError> {
    let (lib, share) = (req.library.clone(), req.share);
    let (t, m, id, unlisted) = (target.clone(), manifest.clone(), req.id, req.unlisted);
    let shared = tokio::task::spawn_blocking(move || {
        // The library vouches for a file it shares at that path as this
        // download's, unchanged since.
        let vouched = lib.as_ref().is_some_and(|l| {
            let path = std::fs::canonicalize(&t.out).ok();
            let snap = l.snapshot().ok();
            let entry = path.and_then(|p| snap.and_then(|s| s.files.get(&p).cloned()));
            let meta = std::fs::metadata(&t.out).ok();
            entry.is_some_and(|e| e.id == id.to_string() && meta.is_some_and(|m| e.matches(&m)))
        });
        if !part_file::recover(&t, &m, vouched)? {
            return Ok::<_, DownloadError>(None);
        }
        let Some(lib) = lib else {
            return Ok(Some(false));
        };
        let record = Download {
            id: id.to_string(),
            name: t.name.clone(),
            size: m.size(),
            part: std::path::absolute(&t.part).unwrap_or_else(|_| t.part.clone()),
            state: std::path::absolute(&t.state).unwrap_or_else(|_| t.state.clone()),
            unlisted,
        };
        let published = if !share {
            lib.end_download(&t.out, false).map(|_| false)
        } else if vouched {
            lib.end_download(&t.out, true).map(|_| true)
        } else {
            lib.begin_download(&t.out, &m, record)
                .and_then(|()| lib.end_download(&t.out, true))
                .map(|e| e.is_some())
        };
        Ok(Some(published.unwrap_or_else(|e| {
            tracing::warn!("the file is complete but could not be shared: {e}");
            false
        })))
    })
    .await
    .expect("recovery does not panic")?;
    let Some(shared) = shared else {
        return Ok(None);
    };
    progress.total.store(manifest.size(), Ordering::Relaxed);
    progress.verified.store(manifest.size(), Ordering::Relaxed);
    Ok(Some(DownloadSummary {
        id: req.id.to_string(),
        name: target.name.clone(),
        path: target.out.clone(),
        size: manifest.size(),
        chunks: manifest.chunk_count(),
        bytes_received: 0,
        bytes_resumed: manifest.size(),
        seconds: start.elapsed().as_secs_f64(),
        peers: Vec::new(),
        duplicate_requests: 0,
        peak_in_flight: 0,
        shared,
    }))
}

/// The shared name of `id` in a peer's catalog.
async fn lookup_name(conn: &PeerConn, id: FileId) -> Option<String> {
    let entries = conn.catalog().await.ok()?;
    entries.into_iter().find(|e| e.id == id).map(|e| e.name)
}

/// A running download.
struct Session {
    req: DownloadRequest,
    progress: Arc<Progress>,
    start: Instant,
    joins: Joins,
    more_peers: Option<watch::Receiver<Reported>>,
    manifest: Arc<Manifest>,
    target: Target,
    file: Arc<PartFile>,
    /// Chunks verified and written (not all durable yet: see `unsynced`).
    written: Bitmap,
    resumed_bytes: u64,
    sched: Scheduler,
    slots: Vec<Slot>,
    /// Tasks forwarding partial peers' announcements.
    watchers: JoinSet<()>,
    have_tx: mpsc::Sender<HaveUpdate>,
    have_rx: mpsc::Receiver<HaveUpdate>,
    reconnecting: JoinSet<(usize, Joined)>,
    tasks: JoinSet<Event>,
    in_flight: InFlight,
    /// Requests in flight, all peers together, at most (past it, a peer
    /// below its fair share may still ask).
    budget: usize,
    peak_in_flight: usize,
    /// Who is asked first when windows are filled; changes every time.
    turn: usize,
    bucket: Option<TokenBucket>,
    paced_until: Duration,
    starved_since: Option<Duration>,
    checkpoint: Option<JoinHandle<Result<(), DownloadError>>>,
    last_checkpoint: Instant,
    /// Bytes verified since the last checkpoint started.
    unsynced: u64,
    /// Bytes received from peers as last seen, and when that count last
    /// grew: the progress watchdog.
    received_mark: (u64, Duration),
    /// This process's offer of the download (verified chunks, at once).
    offer: Option<LiveHandle>,
    /// Chunks verified since the offer was last updated, and when it was.
    offer_stale: (bool, Instant),
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    fn new(
        req: DownloadRequest,
        progress: Arc<Progress>,
        start: Instant,
        joins: Joins,
        manifest: Manifest,
        target: Target,
        opened: part_file::Opened,
    ) -> Self {
        let part_file::Opened { file, done } = opened;
        let size = manifest.size();
        let chunk_size = manifest.chunk_size();
        let max_window = (req.config.window_bytes / chunk_size as u64).clamp(2, 64) as u32;
        let sched = Scheduler::new(
            SchedulerConfig {
                max_window,
                ..req.config.scheduler.clone()
            },
            size,
            chunk_size,
            |i| done.get(i),
        )
        .shuffled(random_seed());
        let resumed_bytes: u64 = done
            .iter()
            .map(|i| manifest.chunk_len(i).unwrap_or(0) as u64)
            .sum();
        progress.verified.store(resumed_bytes, Ordering::Relaxed);
        if resumed_bytes > 0 {
            tracing::info!("resuming: {resumed_bytes} bytes already verified");
        }
        let budget = (req.config.max_in_flight_bytes / chunk_size as u64).max(2) as usize;
        let bucket = req
            .config
            .max_download_rate
            .map(|r| TokenBucket::new(r, (r / 50).max(64 * 1024), Duration::ZERO));
        let (have_tx, have_rx) = mpsc::channel::<HaveUpdate>(64);
        Self {
            more_peers: req.more_peers.clone(),
            req,
            progress,
            start,
            joins,
            manifest: Arc::new(manifest),
            target,
            file: Arc::new(file),
            written: done,
            resumed_bytes,
            sched,
            slots: Vec::new(),
            watchers: JoinSet::new(),
            have_tx,
            have_rx,
            reconnecting: JoinSet::new(),
            tasks: JoinSet::new(),
            in_flight: InFlight::new(),
            budget,
            peak_in_flight: 0,
            turn: 0,
            bucket,
            paced_until: Duration::ZERO,
            starved_since: None,
            checkpoint: None,
            last_checkpoint: Instant::now(),
            unsynced: 0,
            received_mark: (0, start.elapsed()),
            offer: None,
            offer_stale: (false, Instant::now()),
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn size(&self) -> u64 {
        self.manifest.size()
    }

    /// With the library and `share`, offers the verified chunks to others
    /// while this runs (a failure costs only that, not the download);
    /// without `share`, withdraws any record an earlier run left.
    async fn record_in_library(&self) {
        let Some(lib) = self.req.library.clone() else {
            return;
        };
        let out = self.target.out.clone();
        if !self.req.share {
            if let Ok(Err(e)) =
                tokio::task::spawn_blocking(move || lib.end_download(&out, false)).await
            {
                tracing::warn!("cannot withdraw an earlier offer of this download: {e}");
            }
            return;
        }
        let t = &self.target;
        let record = Download {
            id: self.req.id.to_string(),
            name: t.name.clone(),
            size: self.size(),
            part: std::path::absolute(&t.part).unwrap_or_else(|_| t.part.clone()),
            state: std::path::absolute(&t.state).unwrap_or_else(|_| t.state.clone()),
            unlisted: self.req.unlisted,
        };
        let m = (*self.manifest).clone();
        let published =
            tokio::task::spawn_blocking(move || lib.begin_download(&out, &m, record)).await;
        if let Ok(Err(e)) = published {
            tracing::warn!("cannot offer this download's chunks to others: {e}");
        }
    }

    /// With `share` and a registry of live offers, offers the verified
    /// chunks to this process's server from now on.
    fn offer_live(&mut self) {
        let (Some(live), true) = (&self.req.live, self.req.share) else {
            return;
        };
        self.offer = Some(live.offer(
            self.manifest.clone(),
            self.target.name.clone(),
            self.req.unlisted,
            &self.target.part,
            self.written.clone(),
        ));
    }

    /// Updates the live offer with the chunks verified, at most every
    /// `OFFER_UPDATE_INTERVAL` (a bitmap copy each time).
    fn refresh_offer(&mut self) {
        let (stale, at) = self.offer_stale;
        if let Some(offer) = &self.offer
            && stale
            && at.elapsed() >= OFFER_UPDATE_INTERVAL
        {
            offer.update(&self.written);
            self.offer_stale = (false, Instant::now());
        }
    }

    /// The slot of the peer that is node `node`, if one is.
    fn slot_of(&self, node: NodeId) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.conn.remote().node_id == node)
    }

    /// A peer that has (some of) the file joins: a scheduler key, a slot,
    /// and a task forwarding its announcements if it is partial.
    fn add_slot(&mut self, ready: Ready) {
        let partial = matches!(ready.holding, Holding::Some(_));
        let key = self.sched.add_peer(ready.holding, self.now());
        if let Some(h) = ready.have {
            let tx = self.have_tx.clone();
            self.watchers
                .spawn(forward_haves(h, self.slots.len(), key, tx));
        }
        self.slots.push(Slot::new(ready.conn, key, partial));
        self.publish_progress();
    }

    /// The lost peer of slot `slot_no` is back (a reconnection, or a rejoin
    /// after it was given up on): a new scheduler key that keeps its
    /// failures, and a task forwarding its announcements.
    fn resume_slot(&mut self, slot_no: usize, ready: Ready) {
        let now = self.now();
        let slot = &mut self.slots[slot_no];
        slot.conn = ready.conn;
        slot.key = self.sched.rejoin(slot.key, ready.holding, now);
        slot.reconnecting = false;
        slot.report.dropped = None;
        if let Some(h) = ready.have {
            let tx = self.have_tx.clone();
            self.watchers.spawn(forward_haves(h, slot_no, slot.key, tx));
        }
    }

    /// Waits for events and handles them until the download completes,
    /// fails or is cancelled; then winds down.
    async fn drive<C: Future<Output = ()> + ?Sized>(
        mut self,
        mut cancel: Pin<&mut C>,
    ) -> Result<DownloadSummary, DownloadError> {
        let failure = loop {
            let now = self.now();
            self.joins.retry_due(now, &self.req);
            self.refresh_offer();
            self.fill_windows(now);
            if let Next::Break(end) = self.check_status(now) {
                break end;
            }
            self.maybe_checkpoint();
            let wake = self.wake_at(now);
            let start = self.start;
            let more = &mut self.more_peers;
            let checkpoint = &mut self.checkpoint;
            let next = tokio::select! {
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => match joined {
                    Ok(ev) => self.on_fetched(ev),
                    // An endgame loser, aborted: already accounted for.
                    Err(e) if e.is_cancelled() => Next::Continue(()),
                    Err(e) => panic!("fetch task panicked: {e}"),
                },
                Some((slot, key, update)) = self.have_rx.recv() => self.on_have(slot, key, update),
                Ok(()) = async { more.as_mut().expect("guarded").changed().await }, if more.is_some() => {
                    self.on_reported()
                }
                r = async { checkpoint.as_mut().expect("guarded").await }, if checkpoint.is_some() => {
                    self.checkpoint = None;
                    match r.expect("checkpoint task does not panic") {
                        Ok(()) => Next::Continue(()),
                        Err(e) => Next::Break(Some(e)),
                    }
                }
                _ = async {
                    match wake {
                        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(start + t)).await,
                        None => std::future::pending().await,
                    }
                } => Next::Continue(()),
                Some(joined) = self.reconnecting.join_next(), if !self.reconnecting.is_empty() => {
                    let (slot, result) = joined.expect("reconnect task does not panic");
                    self.on_reconnected(slot, result)
                }
                Some(joined) = self.joins.joining.join_next(), if self.joins.pending() => {
                    let (addr, joined) = joined.expect("join task does not panic");
                    self.on_joined(addr, joined)
                }
                _ = &mut cancel => Next::Break(Some(DownloadError::Cancelled)),
            };
            if let Next::Break(end) = next {
                break end;
            }
        };
        self.wind_down(failure).await
    }

    /// Fills the peers' windows, one request each in turn, within the total
    /// budget: memory stays bounded however many peers there are. Whoever
    /// goes first changes each time, so no peer is favoured when the budget
    /// is what limits. Past the budget, a peer below its fair share of it
    /// may still ask: slow peers holding the budget must not starve a fast
    /// one (nor keep it from endgame). So at most the budget plus one fair
    /// share per peer is in flight.
    fn fill_windows(&mut self, now: Duration) {
        let live = self
            .slots
            .iter()
            .filter(|s| self.sched.dropped(s.key).is_none())
            .count();
        let fair = (self.budget / live.max(1)).max(1) as u32;
        let mut asked = true;
        self.turn = self.turn.wrapping_add(1);
        while asked && now >= self.paced_until {
            asked = false;
            for k in 0..self.slots.len() {
                if now < self.paced_until {
                    break;
                }
                let slot_no = (self.turn + k) % self.slots.len();
                let key = self.slots[slot_no].key;
                if self.in_flight.len() >= self.budget && self.sched.in_flight(key) >= fair {
                    continue;
                }
                let Some(index) = self.sched.poll_request(key, now) else {
                    continue;
                };
                asked = true;
                if let Some(b) = self.bucket.as_mut() {
                    let len = self.manifest.chunk_len(index).unwrap_or(0) as u64;
                    self.paced_until = now + b.take(len, now);
                }
                let task = self.tasks.spawn(fetch(
                    (slot_no, key),
                    index,
                    self.req.id,
                    self.slots[slot_no].conn.clone(),
                    self.manifest.clone(),
                    self.file.clone(),
                    self.progress.clone(),
                ));
                self.in_flight.insert((key, index), task);
            }
        }
        self.peak_in_flight = self.peak_in_flight.max(self.in_flight.len());
    }

    /// Whether the download is complete, or cannot go on.
    fn check_status(&mut self, now: Duration) -> Next {
        let status = self.sched.status();
        let received = self.progress.received.load(Ordering::Relaxed);
        if received != self.received_mark.0 {
            self.received_mark = (received, now);
        }
        let timeout = self.req.config.progress_timeout;
        if status != Status::Complete && now.saturating_sub(self.received_mark.1) >= timeout {
            // Whatever joins or reconnections are pending: nothing came.
            let mut reasons = vec![format!(
                "no peer sent any of the file for {} s",
                timeout.as_secs()
            )];
            reasons.extend(self.reasons());
            return Next::Break(Some(DownloadError::AllSourcesFailed(reasons)));
        }
        if status != Status::Starved {
            self.starved_since = None;
        }
        match status {
            Status::Complete => Next::Break(None),
            Status::Starved => {
                // Live peers are downloading too and hold nothing we lack
                // yet: wait for their announcements, within reason.
                let timeout = self.req.config.starved_timeout;
                let since = *self.starved_since.get_or_insert(now);
                if now - since >= timeout {
                    return Next::Break(Some(DownloadError::AllSourcesFailed(vec![format!(
                        "the peers still taking part hold only parts of the file, and none gained a missing chunk for {} s",
                        timeout.as_secs()
                    )])));
                }
                Next::Continue(())
            }
            // Not stuck while a lost peer may come back.
            Status::Stuck if !self.reconnecting.is_empty() || self.joins.pending() => {
                Next::Continue(())
            }
            Status::Stuck => Next::Break(Some(self.stuck_error())),
            Status::InProgress => Next::Continue(()),
        }
    }

    /// Why no peer is left: all corrupt, or each one's reason.
    fn stuck_error(&self) -> DownloadError {
        let all_corrupt = self
            .slots
            .iter()
            .all(|s| self.sched.dropped(s.key) == Some(DropReason::CorruptData));
        if all_corrupt && !self.slots.is_empty() {
            return DownloadError::AllSourcesCorrupt;
        }
        DownloadError::AllSourcesFailed(self.reasons())
    }

    /// Why peers could not take part, or stopped taking part.
    fn reasons(&self) -> Vec<String> {
        let mut reasons = self.joins.reasons();
        reasons.extend(self.slots.iter().filter_map(|s| {
            s.report
                .dropped
                .as_ref()
                .map(|d| format!("{}: {d}", s.report.addr))
        }));
        reasons
    }

    /// Starts a durable checkpoint when one is due.
    fn maybe_checkpoint(&mut self) {
        let config = &self.req.config;
        if self.checkpoint.is_some()
            || self.unsynced == 0
            || (self.last_checkpoint.elapsed() < config.checkpoint_interval
                && self.unsynced < config.checkpoint_bytes)
        {
            return;
        }
        self.checkpoint = Some(spawn_checkpoint(
            &self.file,
            &self.target.state,
            self.req.id,
            self.size(),
            self.written.clone(),
        ));
        self.last_checkpoint = Instant::now();
        self.unsynced = 0;
    }

    /// When the loop must wake up with nothing else happening: a
    /// scheduler timer, the pacing of the download limit, the starvation
    /// deadline.
    fn wake_at(&self, now: Duration) -> Option<Duration> {
        [
            self.sched.poll_timeout(now),
            (self.paced_until > now).then_some(self.paced_until),
            self.starved_since
                .map(|t| t + self.req.config.starved_timeout),
            Some(self.received_mark.1 + self.req.config.progress_timeout),
            self.joins.next_retry(),
            self.offer_stale
                .0
                .then(|| now + OFFER_UPDATE_INTERVAL.saturating_sub(self.offer_stale.1.elapsed())),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A fetch task ended: a verified chunk, a corrupt one, or a failure.
    fn on_fetched(&mut self, ev: Event) -> Next {
        self.in_flight.remove(&(ev.key, ev.index));
        let now = self.now();
        match ev.outcome {
            Outcome::Verified => self.on_verified(ev.slot, ev.key, ev.index, now),
            Outcome::Corrupt => {
                let slot = &mut self.slots[ev.slot];
                tracing::warn!(peer = %slot.report.addr, chunk = ev.index, "chunk failed SHA-256 verification");
                slot.report.corrupt += 1;
                self.sched
                    .handle_failed(ev.key, ev.index, Failure::Corrupt, now);
            }
            // "Not here" is not a bad answer but news: the peer no longer
            // offers the file as it did (unshared, or a download that just
            // finished under another name). Reconnecting finds out what it
            // offers now.
            Outcome::Peer(e) if e.is_not_found() => {
                self.lose_peer(ev.slot, ev.key, e.to_string(), now)
            }
            Outcome::Peer(e @ PeerError::Remote { .. }) => {
                tracing::warn!(chunk = ev.index, "{e}");
                self.sched
                    .handle_failed(ev.key, ev.index, Failure::Refused, now);
                self.slots[ev.slot].last_error = Some(e.to_string());
            }
            // Every request in flight on the lost connection reports it;
            // `lose_peer` acts once.
            Outcome::Peer(e) => self.lose_peer(ev.slot, ev.key, e.to_string(), now),
            Outcome::Disk(e) => return Next::Break(Some(write_error(&self.target.part, e))),
        }
        self.slots[ev.slot].note_drop(&self.sched);
        self.publish_progress();
        Next::Continue(())
    }

    fn on_verified(&mut self, slot_no: usize, key: PeerKey, index: u32, now: Duration) {
        let Some(losers) = self.sched.handle_verified(key, index, now) else {
            return;
        };
        let len = self.manifest.chunk_len(index).unwrap_or(0) as u64;
        self.written.set(index);
        self.offer_stale.0 = true;
        self.unsynced += len;
        self.progress.verified.fetch_add(len, Ordering::Relaxed);
        let slot = &mut self.slots[slot_no];
        slot.report.bytes += len;
        slot.report.chunks += 1;
        if key == slot.key {
            slot.delivered();
        }
        // Their requests for this chunk are moot: the client sends
        // `Cancel` as each is dropped.
        for loser in losers {
            if let Some(task) = self.in_flight.remove(&(loser, index)) {
                task.abort();
            }
        }
    }

    /// A partial peer verified more chunks, or its announcements ended.
    fn on_have(&mut self, slot_no: usize, key: PeerKey, update: Option<Holding>) -> Next {
        let now = self.now();
        // Keys of replaced connections are dropped in the scheduler: their
        // late news changes nothing there. (A bitmap of another length
        // drops the peer: `note_drop` says so below.)
        match update {
            Some(holding) => {
                self.sched.handle_holding(key, holding, now);
            }
            None => {
                let why = format!(
                    "{}: its announcements stopped (connection closed, or its download stopped)",
                    self.slots[slot_no].report.addr
                );
                self.lose_peer(slot_no, key, why, now);
            }
        }
        self.slots[slot_no].note_drop(&self.sched);
        self.publish_progress();
        Next::Continue(())
    }

    /// Peers were reported (discovery): the new ones, and those whose
    /// backoff is over, are asked to join.
    fn on_reported(&mut self) -> Next {
        let reported = self
            .more_peers
            .as_mut()
            .expect("guarded")
            .borrow_and_update()
            .clone();
        let now = self.now();
        self.joins.reported(&reported, &self.req, now);
        Next::Continue(())
    }

    /// A peer's connection (or its announcements) ended: its chunks go to
    /// the others, and it is reconnected, once per loss, while it has
    /// reconnections left.
    fn lose_peer(&mut self, slot_no: usize, key: PeerKey, why: String, now: Duration) {
        let slot = &mut self.slots[slot_no];
        // A late failure of a replaced connection says nothing about the
        // current one.
        let first = key == slot.key && self.sched.dropped(key).is_none();
        self.sched.handle_peer_lost(key, now);
        // Its requests went back to the scheduler: stop waiting for them
        // (the connection may still be up, e.g. when only its
        // announcements ended).
        self.in_flight.retain(|(k, _), task| {
            if *k == key {
                task.abort();
            }
            *k != key
        });
        if first {
            slot.lost_at.get_or_insert(now);
        }
        if first && !slot.reconnecting && slot.may_reconnect(now, &self.req) {
            tracing::warn!("{why}; reconnecting");
            self.reconnecting.spawn(slot.reconnect(slot_no, &self.req));
        } else if first {
            tracing::warn!("{why}");
        }
        if first {
            slot.last_error = Some(why);
        }
    }

    /// A reconnection attempt ended. One that found nobody there counts
    /// towards `MAX_REFUSED_RECONNECTS`; others (a dead path, a busy peer)
    /// go on while the peer has been lost for less than `reconnect_for`.
    fn on_reconnected(&mut self, slot_no: usize, result: Joined) -> Next {
        let now = self.now();
        let slot = &mut self.slots[slot_no];
        let e = match result {
            Joined::Ready(ready) => {
                tracing::info!(peer = %slot.report.addr, "reconnected");
                slot.fruitless += 1;
                slot.refused = 0;
                self.resume_slot(slot_no, ready);
                self.publish_progress();
                return Next::Continue(());
            }
            Joined::NotFound | Joined::Myself => {
                slot.refused += 1;
                "it no longer shares the file".to_owned()
            }
            Joined::Unreachable(e) if e.is_refused() => {
                slot.refused += 1;
                e.to_string()
            }
            Joined::Failed(e) => {
                slot.refused += 1;
                e.to_string()
            }
            Joined::Unreachable(e) | Joined::Busy(e) => {
                slot.refused = 0;
                e.to_string()
            }
        };
        if slot.may_reconnect(now, &self.req) {
            slot.last_error = Some(e);
            self.reconnecting.spawn(slot.reconnect(slot_no, &self.req));
        } else {
            tracing::warn!("{e}; giving up on this peer");
            let lost_for = slot.lost_at.map_or(0, |t| now.saturating_sub(t).as_secs());
            slot.reconnecting = false;
            slot.report.dropped = Some(format!(
                "disconnected, and reconnecting failed for {lost_for} s ({} tries): {e}",
                slot.reconnects
            ));
            slot.last_error = Some(e);
            // Should discovery report it again, it may rejoin.
            let addr = slot.report.addr;
            self.joins.unsettle(addr);
        }
        self.publish_progress();
        Next::Continue(())
    }

    /// A peer asked to join answered.
    fn on_joined(&mut self, addr: SocketAddr, joined: Joined) -> Next {
        let now = self.now();
        let Some(ready) = self.joins.settle(addr, joined, now, &self.req) else {
            return Next::Continue(());
        };
        debug_assert_eq!(
            ready.manifest.id(),
            self.req.id,
            "join_peer checks the manifest"
        );
        // One peer per node, whatever address it was reached at.
        let node = ready.conn.remote().node_id;
        if let Some(slot_no) = self.slot_of(node) {
            let slot = &self.slots[slot_no];
            if slot.reconnecting || self.sched.dropped(slot.key).is_none() {
                tracing::debug!(peer = %addr, "the same node as {}", slot.report.addr);
                return Next::Continue(());
            }
        }
        let given_up = self.slots.iter().position(|s| {
            (s.report.addr == addr || s.conn.remote().node_id == node)
                && !s.reconnecting
                && self.sched.dropped(s.key).is_some()
        });
        match given_up {
            Some(slot_no) => {
                // A peer given up on is back: the same slot (and report),
                // its failures kept.
                tracing::info!(peer = %addr, "rejoined the download");
                self.resume_slot(slot_no, ready);
                self.slots[slot_no].delivered();
                self.publish_progress();
            }
            None => {
                tracing::info!(peer = %addr, "joined the download");
                self.add_slot(ready);
            }
        }
        Next::Continue(())
    }

    /// Live peer count and per-peer bytes, for the display.
    fn publish_progress(&self) {
        let now = self.now();
        let live = |s: &Slot| self.sched.dropped(s.key).is_none();
        let n = self.slots.iter().filter(|s| live(s)).count();
        self.progress.peers.store(n as u64, Ordering::Relaxed);
        let mut per = self.progress.per_peer.lock().expect("progress lock");
        per.clear();
        per.extend(self.slots.iter().map(|s| {
            PeerProgress {
                addr: s.report.addr,
                bytes: s.report.bytes,
                live: live(s),
                partial: s.report.partial,
                dropped: s.report.dropped.clone(),
                reconnecting: s
                    .reconnecting
                    .then(|| now.saturating_sub(s.lost_at.unwrap_or(now))),
            }
        }));
    }

    /// Stops fetching and records what is on disk, whatever happens next;
    /// then, complete, gives the file its final name.
    async fn wind_down(
        mut self,
        failure: Option<DownloadError>,
    ) -> Result<DownloadSummary, DownloadError> {
        self.tasks.abort_all();
        self.reconnecting.abort_all();
        self.joins.joining.abort_all();
        self.watchers.abort_all();
        while self.tasks.join_next().await.is_some() {}
        if let Some(c) = self.checkpoint.take() {
            c.await.expect("checkpoint task does not panic")?;
        }
        match failure {
            Some(err) => {
                self.record_progress().await?;
                Err(err)
            }
            None => self.complete().await,
        }
    }

    /// The download stopped short: the part file is closed (aborted
    /// fetches' writes may still be queued on the blocking pool, each
    /// holding the file: none lands after this) and its lock released, so
    /// running the same command again at once is not told a download is in
    /// progress; what was written is recorded for the next run.
    async fn record_progress(&self) -> Result<(), DownloadError> {
        let (f, p) = (self.file.clone(), self.target.state.clone());
        let w = self.written.clone();
        let (id, size) = (self.req.id, self.size());
        tokio::task::spawn_blocking(move || {
            f.close();
            // After a failed sync nothing is recorded (the state file is
            // gone): the next run starts from what it can verify.
            let recorded = if w.count() > 0 && !f.sync_failed() {
                f.checkpoint(&p, &id, size, &w)
            } else {
                Ok(())
            };
            let _ = f.file.unlock();
            recorded
        })
        .await
        .expect("checkpoint does not panic")
    }

    /// Complete: make it durable, then give it its final name, and share
    /// it (before the part and state files go, so a server never sees it
    /// neither partial nor whole).
    async fn complete(mut self) -> Result<DownloadSummary, DownloadError> {
        let offer = self.offer.take();
        let force = self.req.force;
        let target = self.target.clone();
        let file = self.file.clone();
        let library = self.req.library.clone().filter(|_| self.req.share);
        let shared = tokio::task::spawn_blocking(move || {
            // Endgame losers' writes may still be queued: none lands after this.
            file.close();
            let mut shared = false;
            finish(&file, &target, force, || {
                if let Some(lib) = library {
                    match lib.end_download(&target.out, true) {
                        Ok(entry) => shared = entry.is_some(),
                        Err(e) => {
                            tracing::warn!("the file is complete but could not be shared: {e}")
                        }
                    }
                }
            })?;
            Ok::<bool, DownloadError>(shared)
        })
        .await
        .expect("finish does not panic")?;
        if let Some(offer) = offer {
            self.keep_offering(offer).await;
        }
        Ok(self.summary(shared))
    }

    /// The finished file stays offered by this process while it runs, as
    /// it is now (served while unchanged).
    async fn keep_offering(&self, offer: LiveHandle) {
        let (out, id, name, unlisted) = (
            self.target.out.clone(),
            self.req.id.to_string(),
            self.target.name.clone(),
            self.req.unlisted,
        );
        let entry = tokio::task::spawn_blocking(move || {
            let path = std::fs::canonicalize(&out).ok()?;
            let meta = std::fs::metadata(&path).ok()?;
            Some(Entry::of(id, name, path, &meta, unlisted))
        })
        .await
        .ok()
        .flatten();
        if let Some(entry) = entry {
            offer.complete(entry);
        }
    }

    fn summary(self, shared: bool) -> DownloadSummary {
        DownloadSummary {
            id: self.req.id.to_string(),
            name: self.target.name,
            path: self.target.out,
            size: self.manifest.size(),
            chunks: self.manifest.chunk_count(),
            bytes_received: self.progress.received.load(Ordering::Relaxed),
            bytes_resumed: self.resumed_bytes,
            seconds: self.start.elapsed().as_secs_f64(),
            duplicate_requests: self.sched.duplicate_requests(),
            peak_in_flight: self.peak_in_flight,
            peers: self.slots.into_iter().map(|s| s.report).collect(),
            shared,
        }
    }
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

/// The seed of this download's fresh order (`Scheduler::shuffled`): at
/// random, so that nodes fetching one file at once ask its seeders for
/// different chunks and can trade them. An unlucky draw only costs sharing.
fn random_seed() -> u64 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 8];
    // The system's generator does not fail on Linux; if it ever did, the
    // zero seed still gives a correct download.
    let _ = SystemRandom::new().fill(&mut bytes);
    u64::from_le_bytes(bytes)
}
