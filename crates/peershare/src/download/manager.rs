//! Many downloads in one node: a bounded number run at once (the rest wait
//! in order), each can be paused, resumed and cancelled, their list is kept
//! in `<data-dir>/downloads.json` so a restarted node takes up again those
//! that were queued or running (resuming from their part files, nothing
//! verified fetched again), and what happens is published as events.
//!
//! ```text
//!            add                  a place is free            done
//!   (none) ──────► Queued ───────────────────────► Active ─────────► Finished
//!                   │  ▲                             │ │ failed ───► Failed
//!             pause │  │ resume               pause  │ │ cancel ───► Cancelled
//!                   ▼  │                             ▼ │
//!                  Paused ◄──────────────────────────┘ │
//!   Queued, Paused ──────────── cancel ────────────────┴─────────► Cancelled
//! ```
//!
//! Invariants: at most `max_active` downloads are `Active`; a download is
//! `Active` exactly while its task runs; what is on disk (downloads.json)
//! is every download not finished, failed or cancelled, as of its last
//! change; a node shutting down stops its active downloads with their
//! progress recorded and keeps them `Queued` on disk. Events about
//! downloads are published under the jobs lock, as the change they tell
//! is made, so a subscriber sees them in the order of the changes (never
//! a progress before its download's start or after its end).
//!
//! Bounded: at most `MAX_QUEUED` downloads not over, the `MAX_DONE_KEPT`
//! newest of those over; `downloads.json` holds records of at most
//! `MAX_RECORD_BYTES` (an order that would take more is refused), so the
//! node never writes more than `MAX_QUEUE_FILE_BYTES`, and refuses to
//! read more.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::order::{Order, OrderError, Resolved, resolve};
use super::{DownloadConfig, DownloadRequest, DownloadSummary, Progress, Reported, download};
use crate::error::{DownloadError, StoreError};
use crate::live::LiveOffers;
use crate::node::events::{DownloadId, Event, Events, Failure};
use crate::pool::PeerPool;
use crate::store::{Library, write_atomic};
use crate::tls::Tls;

/// The file in the data dir that lists the downloads not yet over.
pub const QUEUE_FILE: &str = "downloads.json";
const QUEUE_FORMAT: u32 = 1;
/// Finished, failed and cancelled downloads kept in memory for `status`
/// and the API, at most (the oldest go first).
pub const MAX_DONE_KEPT: usize = 256;
/// Downloads waiting or paused in a node, at most; more are refused.
pub const MAX_QUEUED: usize = 10_000;
/// Largest download ID: 2^53 - 1, the largest integer a JSON number holds
/// exactly in a browser (the web UI). A node that reached it refuses more
/// downloads instead of wrapping round onto IDs in use; a queue file with
/// a larger one is refused.
pub const MAX_DOWNLOAD_ID: DownloadId = (1 << 53) - 1;
/// Bytes of JSON a download takes in `downloads.json` (its order, the
/// folder it was given from...), at most: room for a ticket of
/// `MAX_TICKET_LEN`, paths and peers. `add` refuses a larger order.
pub const MAX_RECORD_BYTES: usize = 8 * 1024;
/// Bytes of `downloads.json` besides its records, at most.
const QUEUE_HEADER_BYTES: usize = 128;
/// Bytes of `downloads.json`, at most: what the node writes for
/// `MAX_QUEUED` downloads of `MAX_RECORD_BYTES` (and a comma each). A
/// larger file is refused unread.
pub const MAX_QUEUE_FILE_BYTES: usize = QUEUE_HEADER_BYTES + MAX_QUEUED * (MAX_RECORD_BYTES + 1);
/// What to do about a damaged `downloads.json`.
const QUEUE_REMEDY: &str = "move it away: the downloads it lists are then forgotten (their part files stay, and the same `get` resumes them)";
/// How often a running download's progress is published.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// Where a download is in its life (see the module's diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Active,
    Paused,
    Finished,
    Failed,
    Cancelled,
}

impl State {
    /// Over: it will not run again.
    pub fn is_over(self) -> bool {
        matches!(self, State::Finished | State::Failed | State::Cancelled)
    }
}

/// A download as the node lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownloadInfo {
    pub id: DownloadId,
    pub state: State,
    /// The order it was given (its output made absolute).
    pub order: Order,
    pub file_id: String,
    /// The shared name, when known.
    pub name: Option<String>,
    /// File size; 0 until the manifest is known.
    pub size: u64,
    /// Bytes verified so far, resumed ones included.
    pub verified: u64,
    /// Bytes received in its current (or last) run.
    pub received: u64,
    /// Bytes per second received lately (0 unless active).
    pub rate: u64,
    /// Peers taking part now.
    pub peers: Vec<PeerState>,
    /// What to tell the person about it (an ignored name...).
    pub warnings: Vec<String>,
    pub summary: Option<DownloadSummary>,
    pub error: Option<Failure>,
    /// When it was added, seconds since the Unix epoch.
    pub added_unix: u64,
}

/// One peer of a running download.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerState {
    pub addr: std::net::SocketAddr,
    /// Verified bytes it delivered in this run.
    pub bytes: u64,
    pub live: bool,
    pub partial: bool,
    pub dropped: Option<String>,
    /// Seconds since it was lost, while it is being reconnected.
    pub reconnecting_secs: Option<f64>,
}

/// How a node finds peers on the LAN for its downloads.
pub trait Lan: Send + Sync + 'static {
    /// The nodes heard on the LAN, asked afresh (a short query).
    fn look(&self) -> std::pin::Pin<Box<dyn Future<Output = Reported> + Send + '_>>;
    /// The nodes heard, updated as they come and go.
    fn watch(&self) -> watch::Receiver<Reported>;
    /// Why a look found nobody: what was asked, where, and what to try.
    fn nobody(&self) -> String;
}

use std::future::Future;

/// What the manager works with; plain data.
#[derive(Clone)]
pub struct ManagerParts {
    pub library: Library,
    pub tls: Tls,
    pub pool: PeerPool,
    /// With `share`, downloads offer their chunks here (the node's server
    /// reads it).
    pub live: Option<LiveOffers>,
    pub events: Events,
    pub lan: Option<Arc<dyn Lan>>,
    pub config: ManagerConfig,
}

/// Manager settings; plain data with sane defaults.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Downloads running at once.
    pub max_active: usize,
    /// The settings of each download (an order's `max_rate` applies on top).
    pub download: DownloadConfig,
    /// Keep the list of downloads in the data dir, and take up those an
    /// earlier run left.
    pub persist: bool,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            max_active: 4,
            download: DownloadConfig::default(),
            persist: true,
        }
    }
}

/// Why the manager refused a request.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error("no download {0} here")]
    Unknown(DownloadId),
    #[error("download {id} is {state:?}: it cannot be {what}")]
    Wrong {
        id: DownloadId,
        state: State,
        what: &'static str,
    },
    #[error("{0} downloads are waiting already; let some finish or cancel them first")]
    Full(usize),
    #[error(
        "this node has given out every download ID up to {0}: stop it and move {QUEUE_FILE} \
         away to number downloads from 1 again (their part files stay, and the same `get` \
         resumes them)"
    )]
    OutOfIds(DownloadId),
    /// The download cannot be recorded in `downloads.json` as given.
    #[error(
        "this download takes {bytes} bytes to record, more than the {max} one may; give fewer peers or a shorter path"
    )]
    TooLarge { bytes: usize, max: usize },
    #[error("this download cannot be recorded: {0}; give its output and folder as UTF-8 paths")]
    Unrecordable(String),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ManagerError {
    /// `usage` (the order, or a download too large to record), `local` (an
    /// order's output or the data dir), `not_found` (no such
    /// download), `conflict` (not in a state for it), `busy`.
    pub fn kind(&self) -> &'static str {
        match self {
            ManagerError::Order(e) => e.kind(),
            ManagerError::TooLarge { .. } | ManagerError::Unrecordable(_) => "usage",
            ManagerError::Unknown(_) => "not_found",
            ManagerError::Wrong { .. } => "conflict",
            ManagerError::Full(_) | ManagerError::ShuttingDown => "busy",
            ManagerError::Store(_) | ManagerError::OutOfIds(_) => "local",
        }
    }
}

/// Why a running download is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Pause,
    Cancel,
    /// The node stops: the download stays queued, on disk.
    Shutdown,
}

struct Job {
    id: DownloadId,
    state: State,
    order: Order,
    /// Where a relative output of the order was given from.
    cwd: PathBuf,
    resolved: Resolved,
    progress: Arc<Progress>,
    stop: Option<oneshot::Sender<Stop>>,
    /// Bytes received at the last progress tick, and when.
    rate_mark: (u64, Instant),
    rate: u64,
    summary: Option<DownloadSummary>,
    error: Option<Failure>,
    added_unix: u64,
}

#[derive(Default)]
struct Jobs {
    jobs: BTreeMap<DownloadId, Job>,
    next_id: DownloadId,
    shutting_down: bool,
}

/// The download manager; cheap to clone.
#[derive(Clone)]
pub struct Manager {
    parts: Arc<ManagerParts>,
    jobs: Arc<Mutex<Jobs>>,
    /// The downloads' tasks.
    tasks: Arc<Mutex<JoinSet<()>>>,
    /// The progress ticker's.
    ticker: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// One download as kept in `downloads.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    id: DownloadId,
    state: State,
    order: Order,
    cwd: PathBuf,
    added_unix: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct QueueFile {
    format: u32,
    next_id: DownloadId,
    downloads: Vec<Record>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Manager {
    /// A manager; with `persist`, it takes up the downloads an earlier run
    /// left (queued or running: queued again; paused: paused), and starts
    /// what it can. Must be called inside a tokio runtime.
    pub fn start(parts: ManagerParts) -> Result<Self, ManagerError> {
        let m = Self {
            parts: Arc::new(parts),
            jobs: Arc::default(),
            tasks: Arc::new(Mutex::new(JoinSet::new())),
            ticker: Arc::default(),
        };
        if m.parts.config.persist {
            m.load()?;
        }
        *m.ticker.lock().expect("ticker lock") = Some(tokio::spawn(m.clone().tick_progress()));
        m.schedule();
        Ok(m)
    }

    fn queue_path(&self) -> PathBuf {
        self.parts.library.dir().join(QUEUE_FILE)
    }

    /// Takes up the downloads on disk. A file larger than
    /// `MAX_QUEUE_FILE_BYTES` or listing more than `MAX_QUEUED` downloads is
    /// refused (left as it is). A record whose order no longer resolves
    /// (its folder is gone), or that is larger than a download may be, is
    /// not taken up, with why.
    fn load(&self) -> Result<(), ManagerError> {
        let path = self.queue_path();
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
            remedy: QUEUE_REMEDY,
        };
        let Some(bytes) = read_queue_file(&path)? else {
            return Ok(());
        };
        let file: QueueFile = serde_json::from_slice(&bytes)
            .ok()
            .filter(|f: &QueueFile| f.format == QUEUE_FORMAT)
            .ok_or_else(|| corrupt("not a list of downloads of this release".into()))?;
        if file.downloads.len() > MAX_QUEUED {
            return Err(corrupt(format!(
                "it lists {} downloads, more than the {MAX_QUEUED} a node takes",
                file.downloads.len()
            ))
            .into());
        }
        let past = std::iter::once(file.next_id)
            .chain(file.downloads.iter().map(|r| r.id))
            .find(|id| *id > MAX_DOWNLOAD_ID);
        if let Some(id) = past {
            return Err(corrupt(format!(
                "it holds download ID {id}, larger than the largest, {MAX_DOWNLOAD_ID}"
            ))
            .into());
        }
        let mut jobs = self.jobs.lock().expect("jobs lock");
        jobs.next_id = file.next_id;
        for r in file.downloads {
            let state = match r.state {
                State::Paused => State::Paused,
                _ => State::Queued,
            };
            if let Err(e) = check_record(&r) {
                tracing::warn!("download {} cannot be taken up: {e}", r.id);
                continue;
            }
            match resolve(&r.order, &r.cwd) {
                Ok(resolved) => {
                    let job = new_job(r.id, state, r.order, r.cwd, resolved, r.added_unix);
                    jobs.next_id = jobs.next_id.max(r.id + 1);
                    jobs.jobs.insert(r.id, job);
                }
                Err(e) => tracing::warn!("download {} cannot be taken up: {e}", r.id),
            }
        }
        Ok(())
    }

    /// Writes the downloads not yet over to disk (under the jobs lock, so
    /// writes follow the changes in order).
    fn persist(&self, jobs: &Jobs) {
        if !self.parts.config.persist {
            return;
        }
        let downloads = jobs
            .jobs
            .values()
            .filter(|j| !j.state.is_over())
            .map(|j| Record {
                id: j.id,
                // A running one is queued again after a restart.
                state: if j.state == State::Active {
                    State::Queued
                } else {
                    j.state
                },
                order: j.order.clone(),
                cwd: j.cwd.clone(),
                added_unix: j.added_unix,
            })
            .collect();
        let file = QueueFile {
            format: QUEUE_FORMAT,
            next_id: jobs.next_id,
            downloads,
        };
        // Compact, so that the file is at most its records (each checked to
        // be at most `MAX_RECORD_BYTES`) and a comma each, besides its header.
        let json = serde_json::to_vec(&file).expect("checked: each record serializes");
        if let Err(e) = write_atomic(&self.queue_path(), &json) {
            tracing::error!("cannot record the list of downloads: {e}");
        }
    }

    fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().expect("tasks lock");
        // Finished tasks are reaped as new ones come.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(f);
    }

    /// Adds a download (`order`, relative paths from `cwd`); it starts when
    /// a place is free.
    pub fn add(&self, order: Order, cwd: &Path) -> Result<DownloadInfo, ManagerError> {
        let resolved = resolve(&order, cwd)?;
        let mut order = order;
        // Kept as given, but with an absolute output: it means the same
        // after a restart, whatever the node's working folder.
        order.output = Some(match &resolved.output {
            super::Output::File(p) | super::Output::Dir(p) => p.clone(),
        });
        let info = {
            let mut jobs = self.jobs.lock().expect("jobs lock");
            if jobs.shutting_down {
                return Err(ManagerError::ShuttingDown);
            }
            let waiting = waiting(&jobs);
            if waiting >= MAX_QUEUED {
                return Err(ManagerError::Full(waiting));
            }
            let id = jobs.next_id.max(1);
            if id > MAX_DOWNLOAD_ID {
                return Err(ManagerError::OutOfIds(MAX_DOWNLOAD_ID));
            }
            let added_unix = unix_now();
            check_record(&Record {
                id,
                state: State::Queued,
                order: order.clone(),
                cwd: cwd.to_path_buf(),
                added_unix,
            })?;
            jobs.next_id = id + 1;
            let job = new_job(
                id,
                State::Queued,
                order,
                cwd.to_path_buf(),
                resolved,
                added_unix,
            );
            let info = info(&job);
            jobs.jobs.insert(id, job);
            self.persist(&jobs);
            self.parts.events.emit(Event::DownloadQueued {
                id: info.id,
                file_id: info.file_id.clone(),
                name: info.name.clone(),
            });
            info
        };
        self.schedule();
        Ok(self.get(info.id).unwrap_or(info))
    }

    /// Every download the node knows, oldest first.
    pub fn list(&self) -> Vec<DownloadInfo> {
        let jobs = self.jobs.lock().expect("jobs lock");
        jobs.jobs.values().map(info).collect()
    }

    /// One download.
    pub fn get(&self, id: DownloadId) -> Option<DownloadInfo> {
        self.jobs.lock().expect("jobs lock").jobs.get(&id).map(info)
    }

    /// Pauses a download: a running one stops with its progress recorded.
    pub fn pause(&self, id: DownloadId) -> Result<DownloadInfo, ManagerError> {
        self.change(
            id,
            "paused",
            |job, _| {
                Ok(match job.state {
                    State::Queued => {
                        job.state = State::Paused;
                        Some(Event::DownloadPaused { id })
                    }
                    State::Active => {
                        if let Some(stop) = job.stop.take() {
                            let _ = stop.send(Stop::Pause);
                        }
                        None
                    }
                    _ => unreachable!("checked"),
                })
            },
            &[State::Queued, State::Active],
        )
    }

    /// Queues a paused (or failed) download again.
    pub fn resume(&self, id: DownloadId) -> Result<DownloadInfo, ManagerError> {
        let info = self.change(
            id,
            "resumed",
            |job, waiting| {
                // A failed one is over: queued again, it counts once more.
                if job.state.is_over() && waiting >= MAX_QUEUED {
                    return Err(ManagerError::Full(waiting));
                }
                job.state = State::Queued;
                job.error = None;
                Ok(None)
            },
            &[State::Paused, State::Failed],
        )?;
        self.schedule();
        Ok(self.get(id).unwrap_or(info))
    }

    /// Cancels a download: a running one stops, its part file kept (the
    /// same download, added again, resumes from it).
    pub fn cancel(&self, id: DownloadId) -> Result<DownloadInfo, ManagerError> {
        self.change(
            id,
            "cancelled",
            |job, _| {
                Ok(match job.state {
                    State::Active => {
                        if let Some(stop) = job.stop.take() {
                            let _ = stop.send(Stop::Cancel);
                        }
                        None
                    }
                    _ => {
                        job.state = State::Cancelled;
                        Some(Event::DownloadCancelled { id })
                    }
                })
            },
            &[State::Queued, State::Active, State::Paused, State::Failed],
        )
    }

    /// Applies `f` to download `id` if it is in one of `allowed` states
    /// (`f` is told how many downloads are waiting).
    fn change(
        &self,
        id: DownloadId,
        what: &'static str,
        f: impl FnOnce(&mut Job, usize) -> Result<Option<Event>, ManagerError>,
        allowed: &[State],
    ) -> Result<DownloadInfo, ManagerError> {
        let mut jobs = self.jobs.lock().expect("jobs lock");
        let waiting = waiting(&jobs);
        let job = jobs.jobs.get_mut(&id).ok_or(ManagerError::Unknown(id))?;
        if !allowed.contains(&job.state) {
            return Err(ManagerError::Wrong {
                id,
                state: job.state,
                what,
            });
        }
        let event = f(job, waiting)?;
        let info = info(job);
        // A download cancelled while it did not run is over now.
        forget_old(&mut jobs);
        self.persist(&jobs);
        if let Some(e) = event {
            self.parts.events.emit(e);
        }
        Ok(info)
    }

    /// Starts queued downloads, oldest first, while places are free.
    fn schedule(&self) {
        let mut started = Vec::new();
        {
            let mut jobs = self.jobs.lock().expect("jobs lock");
            if jobs.shutting_down {
                return;
            }
            let active = jobs
                .jobs
                .values()
                .filter(|j| j.state == State::Active)
                .count();
            let free = self.parts.config.max_active.saturating_sub(active);
            let next: Vec<DownloadId> = jobs
                .jobs
                .values()
                .filter(|j| j.state == State::Queued)
                .take(free)
                .map(|j| j.id)
                .collect();
            for id in next {
                let job = jobs.jobs.get_mut(&id).expect("listed");
                let (tx, rx) = oneshot::channel();
                job.state = State::Active;
                job.stop = Some(tx);
                job.progress = Arc::default();
                job.rate_mark = (0, Instant::now());
                job.summary = None;
                job.error = None;
                started.push((
                    id,
                    job.resolved.clone(),
                    job.order.clone(),
                    job.progress.clone(),
                    rx,
                ));
            }
            if !started.is_empty() {
                self.persist(&jobs);
            }
            for (id, ..) in &started {
                self.parts.events.emit(Event::DownloadStarted { id: *id });
            }
        }
        for (id, resolved, order, progress, stop) in started {
            let m = self.clone();
            self.spawn(async move {
                let outcome = m.run(&resolved, &order, progress, stop).await;
                m.finished(id, outcome);
            });
        }
    }

    /// Runs one download until it ends or is stopped.
    async fn run(
        &self,
        resolved: &Resolved,
        order: &Order,
        progress: Arc<Progress>,
        stop: oneshot::Receiver<Stop>,
    ) -> (Result<DownloadSummary, DownloadError>, Option<Stop>) {
        let parts = &self.parts;
        let mut peers = resolved.peers.clone();
        let mut announced = Vec::new();
        let lan = parts.lan.as_ref().filter(|_| order.uses_lan());
        if let Some(lan) = lan {
            for (addr, node) in lan.look().await {
                if !peers.contains(&addr) {
                    peers.push(addr);
                }
                if let Some(node) = node {
                    announced.push((addr, node));
                }
            }
        }
        if peers.is_empty()
            && let Some(lan) = lan
        {
            return (Err(DownloadError::NoPeersOnLan(lan.nobody())), None);
        }
        let mut config = parts.config.download.clone();
        if order.max_rate.is_some() {
            config.max_download_rate = order.max_rate;
        }
        let req = DownloadRequest {
            id: resolved.id,
            name: resolved.name.clone(),
            peers,
            output: resolved.output.clone(),
            force: order.force,
            tls: parts.tls.clone(),
            expect: resolved.expect.clone(),
            announced,
            config,
            more_peers: lan.map(|l| l.watch()),
            library: Some(parts.library.clone()),
            share: order.share,
            unlisted: resolved.unlisted,
            pool: Some(parts.pool.clone()),
            live: parts.live.clone(),
        };
        let why = Arc::new(Mutex::new(None));
        let seen = why.clone();
        let result = download(req, progress, async move {
            let reason = stop.await.unwrap_or(Stop::Shutdown);
            *seen.lock().expect("stop lock") = Some(reason);
        })
        .await;
        let stopped = *why.lock().expect("stop lock");
        (result, stopped)
    }

    /// A download's task ended: its new state, an event, the next ones.
    fn finished(
        &self,
        id: DownloadId,
        (result, stopped): (Result<DownloadSummary, DownloadError>, Option<Stop>),
    ) {
        {
            let mut jobs = self.jobs.lock().expect("jobs lock");
            let Some(job) = jobs.jobs.get_mut(&id) else {
                return;
            };
            job.stop = None;
            job.rate = 0;
            let event = match (result, stopped) {
                (Ok(summary), _) => {
                    job.state = State::Finished;
                    job.summary = Some(summary.clone());
                    Event::DownloadFinished { id, summary }
                }
                (Err(DownloadError::Cancelled), Some(Stop::Pause)) => {
                    job.state = State::Paused;
                    Event::DownloadPaused { id }
                }
                (Err(DownloadError::Cancelled), Some(Stop::Cancel)) => {
                    job.state = State::Cancelled;
                    Event::DownloadCancelled { id }
                }
                (Err(DownloadError::Cancelled), _) => {
                    // The node is stopping: taken up at the next start.
                    job.state = State::Queued;
                    Event::DownloadPaused { id }
                }
                (Err(e), _) => {
                    job.state = State::Failed;
                    let error = Failure {
                        kind: e.kind().into(),
                        message: e.to_string(),
                    };
                    job.error = Some(error.clone());
                    Event::DownloadFailed { id, error }
                }
            };
            if !jobs.shutting_down {
                self.persist(&jobs);
            }
            forget_old(&mut jobs);
            self.parts.events.emit(event);
        }
        self.schedule();
    }

    /// Publishes every running download's progress, twice a second.
    async fn tick_progress(self) {
        let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut jobs = self.jobs.lock().expect("jobs lock");
            if jobs.shutting_down {
                return;
            }
            for j in jobs.jobs.values_mut().filter(|j| j.state == State::Active) {
                let p = &j.progress;
                let received = p.received.load(Ordering::Relaxed);
                let (before, at) = j.rate_mark;
                let secs = at.elapsed().as_secs_f64().max(1e-3);
                j.rate = (received.saturating_sub(before) as f64 / secs) as u64;
                j.rate_mark = (received, Instant::now());
                self.parts.events.emit(Event::DownloadProgress {
                    id: j.id,
                    size: p.total.load(Ordering::Relaxed),
                    verified: p.verified.load(Ordering::Relaxed),
                    received,
                    rate: j.rate,
                    peers: p.peers.load(Ordering::Relaxed),
                });
            }
        }
    }

    /// Stops every running download (progress recorded; they stay queued
    /// on disk) and waits for all the manager's tasks to end.
    pub async fn shutdown(&self) {
        {
            let mut jobs = self.jobs.lock().expect("jobs lock");
            jobs.shutting_down = true;
            for job in jobs.jobs.values_mut() {
                if let Some(stop) = job.stop.take() {
                    let _ = stop.send(Stop::Shutdown);
                }
            }
        }
        let ticker = self.ticker.lock().expect("ticker lock").take();
        if let Some(t) = ticker {
            t.abort();
            let _ = t.await;
        }
        // Each stops after recording its progress.
        let mut tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        while tasks.join_next().await.is_some() {}
        let jobs = self.jobs.lock().expect("jobs lock");
        self.persist(&jobs);
    }
}

fn new_job(
    id: DownloadId,
    state: State,
    order: Order,
    cwd: PathBuf,
    resolved: Resolved,
    added_unix: u64,
) -> Job {
    Job {
        id,
        state,
        order,
        cwd,
        resolved,
        progress: Arc::default(),
        stop: None,
        rate_mark: (0, Instant::now()),
        rate: 0,
        summary: None,
        error: None,
        added_unix,
    }
}

/// Downloads not over: queued, active or paused.
fn waiting(jobs: &Jobs) -> usize {
    jobs.jobs.values().filter(|j| !j.state.is_over()).count()
}

/// Whether `record` can be kept in `downloads.json`: it serializes (its
/// paths are UTF-8), in at most `MAX_RECORD_BYTES`.
fn check_record(record: &Record) -> Result<(), ManagerError> {
    let bytes = serde_json::to_vec(record)
        .map_err(|e| ManagerError::Unrecordable(e.to_string()))?
        .len();
    if bytes > MAX_RECORD_BYTES {
        return Err(ManagerError::TooLarge {
            bytes,
            max: MAX_RECORD_BYTES,
        });
    }
    Ok(())
}

/// The bytes of `downloads.json` at `path`, or `None` if there is none; a
/// file over `MAX_QUEUE_FILE_BYTES` is refused without reading it.
fn read_queue_file(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    use std::io::Read;
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let too_large = |len: u64| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: format!(
            "{len} bytes, more than the {MAX_QUEUE_FILE_BYTES} a list of downloads may take"
        ),
        remedy: QUEUE_REMEDY,
    };
    let len = file.metadata().map_err(io)?.len();
    if len > MAX_QUEUE_FILE_BYTES as u64 {
        return Err(too_large(len));
    }
    // It may grow while read: never more than one byte past the limit.
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_QUEUE_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > MAX_QUEUE_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(Some(bytes))
}

/// Keeps at most `MAX_DONE_KEPT` downloads that are over.
fn forget_old(jobs: &mut Jobs) {
    let over: Vec<DownloadId> = jobs
        .jobs
        .values()
        .filter(|j| j.state.is_over())
        .map(|j| j.id)
        .collect();
    for id in over.iter().take(over.len().saturating_sub(MAX_DONE_KEPT)) {
        jobs.jobs.remove(id);
    }
}

fn info(job: &Job) -> DownloadInfo {
    let p = &job.progress;
    let peers = p
        .per_peer
        .lock()
        .map(|per| {
            per.iter()
                .map(|x| PeerState {
                    addr: x.addr,
                    bytes: x.bytes,
                    live: x.live,
                    partial: x.partial,
                    dropped: x.dropped.clone(),
                    reconnecting_secs: x.reconnecting.map(|d| d.as_secs_f64()),
                })
                .collect()
        })
        .unwrap_or_default();
    DownloadInfo {
        id: job.id,
        state: job.state,
        order: job.order.clone(),
        file_id: job.resolved.id.to_string(),
        name: job
            .summary
            .as_ref()
            .map(|s| s.name.clone())
            .or_else(|| job.resolved.name.clone()),
        size: p.total.load(Ordering::Relaxed),
        verified: p.verified.load(Ordering::Relaxed),
        received: p.received.load(Ordering::Relaxed),
        rate: job.rate,
        peers,
        warnings: job.resolved.warnings.clone(),
        summary: job.summary.clone(),
        error: job.error.clone(),
        added_unix: job.added_unix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: DownloadId, what: &str) -> Record {
        Record {
            id,
            state: State::Paused,
            order: Order::new(what),
            cwd: "/home/someone".into(),
            added_unix: u64::MAX,
        }
    }

    /// `MAX_QUEUE_FILE_BYTES` holds what `persist` writes: the header, at
    /// its longest, and each record with a comma.
    #[test]
    fn the_queue_file_is_its_header_and_its_records() {
        let file = |downloads| QueueFile {
            format: QUEUE_FORMAT,
            next_id: DownloadId::MAX,
            downloads,
        };
        let header = serde_json::to_vec(&file(Vec::new())).unwrap().len();
        assert!(header <= QUEUE_HEADER_BYTES, "{header}");
        let (one, two) = (record(1, "a"), record(DownloadId::MAX, &"b".repeat(100)));
        let lens: usize = [&one, &two]
            .iter()
            .map(|r| serde_json::to_vec(r).unwrap().len() + 1)
            .sum();
        let both = serde_json::to_vec(&file(vec![one, two])).unwrap().len();
        assert_eq!(both, header + lens - 1);
    }
}
