//! The node: one long-running peer. It owns the library, its identity
//! (TLS), the listeners (IPv4 and IPv6), LAN discovery and the peers it
//! hears, the connections to peers (one per node: [`PeerPool`]), and a
//! download manager whose downloads seed while they run ([`LiveOffers`]);
//! what happens is published as typed events ([`events`]). Every face of
//! the node (the local API, the CLI, tests) goes through its methods.
//!
//! ```text
//!            Node::start(library, tls, config, bound sockets)
//!   ┌───────────────────────────────────────────────────────────────┐
//!   │ servers (one per listener) ── LiveOffers ── Manager (sessions) │
//!   │        │ uploads                 ▲ offers        │ PeerPool     │
//!   │        └──────────── Events ◄────┴───────────────┘              │
//!   │ Discovery ── NodeLan (peers view, peers.json, peer events)     │
//!   └───────────────────────────────────────────────────────────────┘
//!            Node::shutdown(): every task ended, every socket closed
//! ```
//!
//! Like the rest of the engine it never reads the environment and takes
//! its sockets already bound ([`Bound`]), so tests run whole nodes in one
//! process.

pub mod events;
pub mod lan;
pub mod status;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::discovery::{Discovery, DiscoveryConfig, Sockets};
use crate::download::manager::{
    DownloadInfo, Lan, Manager, ManagerConfig, ManagerError, ManagerParts,
};
use crate::download::order::Order;
use crate::error::StoreError;
use crate::live::LiveOffers;
use crate::pool::PeerPool;
use crate::server::{Server, ServerConfig, ServerStats, UploadInfo, Uploads};
use crate::store::Library;
use crate::tls::Tls;
use events::{DownloadId, Event, Events};
use lan::NodeLan;

/// Node settings; plain data with sane defaults.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub server: ServerConfig,
    /// Offer only this node's own downloads, not the library (a `get` run
    /// without a node serves what it downloads, nothing else).
    pub only_downloads: bool,
    /// LAN discovery (with its sockets in [`Bound`]); `None`: off.
    pub discovery: Option<DiscoveryConfig>,
    /// How long a LAN query of the node waits for replies.
    pub discovery_wait: Duration,
    pub manager: ManagerConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            only_downloads: false,
            discovery: None,
            discovery_wait: Duration::from_millis(1500),
            manager: ManagerConfig::default(),
        }
    }
}

/// The sockets a node takes, already bound.
#[derive(Default)]
pub struct Bound {
    /// TCP listeners for peers (one per address family, typically).
    pub listeners: Vec<TcpListener>,
    /// Discovery's UDP sockets, when `NodeConfig::discovery` is set.
    pub discovery: Option<Sockets>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Manager(#[from] ManagerError),
    #[error("listener address: {0}")]
    Listener(std::io::Error),
}

/// A running node; cheap to clone. [`Node::shutdown`] stops it.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    library: Library,
    tls: Tls,
    config: NodeConfig,
    events: Events,
    pool: PeerPool,
    live: LiveOffers,
    uploads: Uploads,
    manager: Manager,
    lan: Option<Arc<NodeLan>>,
    listening: Vec<SocketAddr>,
    stats: Vec<Arc<ServerStats>>,
    started: Instant,
    api: Mutex<Option<SocketAddr>>,
    stop: watch::Sender<bool>,
    tasks: tokio::sync::Mutex<JoinSet<()>>,
}

impl Node {
    /// Starts serving on `bound`'s listeners, discovery on its sockets, and
    /// the download manager (which takes up the downloads an earlier run
    /// left). Must be called inside a tokio runtime.
    pub async fn start(
        library: Library,
        tls: Tls,
        config: NodeConfig,
        bound: Bound,
    ) -> Result<Node, NodeError> {
        let events = Events::default();
        let live = LiveOffers::default();
        let uploads = Uploads::with_events(events.clone());
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut listening = Vec::new();
        let mut stats = Vec::new();
        let port = match bound.listeners.first() {
            Some(l) => l.local_addr().map_err(NodeError::Listener)?.port(),
            None => 0,
        };
        for listener in bound.listeners {
            listening.push(listener.local_addr().map_err(NodeError::Listener)?);
            let mut server = Server::new(library.clone(), tls.clone(), port, config.server.clone())
                .with_live(live.clone())
                .with_uploads(uploads.clone());
            if config.only_downloads {
                server = server.only_live();
            }
            stats.push(server.stats());
            let mut stop = stopped.clone();
            tasks.spawn(async move {
                let until = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = server.run(listener, until).await {
                    tracing::error!("server stopped: {e}");
                }
            });
        }
        let lan = config.discovery.clone().map(|mut cfg| {
            cfg.only_ip = only_ip(&listening);
            let service = bound
                .discovery
                .map(|sockets| Discovery::new(sockets, cfg.clone(), tls.node_id(), port));
            let lan = NodeLan::new(
                cfg,
                tls.node_id(),
                config.discovery_wait,
                service.as_ref().map(Discovery::handle),
                events.clone(),
            );
            if let Some(d) = service {
                tasks.spawn(run_discovery(
                    d,
                    lan.clone(),
                    library.clone(),
                    stopped.clone(),
                ));
            }
            lan
        });
        let pool = PeerPool::default();
        let manager = Manager::start(ManagerParts {
            library: library.clone(),
            tls: tls.clone(),
            pool: pool.clone(),
            live: Some(live.clone()),
            events: events.clone(),
            lan: lan.clone().map(|l| l as Arc<dyn Lan>),
            config: config.manager.clone(),
        })?;
        tasks.spawn(watch_library(
            library.clone(),
            events.clone(),
            stopped.clone(),
        ));
        Ok(Node {
            inner: Arc::new(Inner {
                library,
                tls,
                config,
                events,
                pool,
                live,
                uploads,
                manager,
                lan,
                listening,
                stats,
                started: Instant::now(),
                api: Mutex::new(None),
                stop,
                tasks: tokio::sync::Mutex::new(tasks),
            }),
        })
    }

    /// Stops everything: downloads (their progress recorded; they are taken
    /// up at the next start), servers (every connection closed), discovery;
    /// returns when every task of the node has ended.
    pub async fn shutdown(&self) {
        self.inner.manager.shutdown().await;
        let _ = self.inner.stop.send(true);
        let mut tasks = self.inner.tasks.lock().await;
        while tasks.join_next().await.is_some() {}
    }

    pub fn library(&self) -> &Library {
        &self.inner.library
    }

    pub fn tls(&self) -> &Tls {
        &self.inner.tls
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    pub fn events(&self) -> &Events {
        &self.inner.events
    }

    /// Where peers can connect.
    pub fn listening(&self) -> &[SocketAddr] {
        &self.inner.listening
    }

    /// The API's address, once [`Node::set_api`] told it.
    pub fn api(&self) -> Option<SocketAddr> {
        *self.inner.api.lock().expect("api lock")
    }

    /// Records where the node's API listens (for `status`).
    pub fn set_api(&self, addr: Option<SocketAddr>) {
        *self.inner.api.lock().expect("api lock") = addr;
    }

    pub fn lan(&self) -> Option<&Arc<NodeLan>> {
        self.inner.lan.as_ref()
    }

    pub fn pool(&self) -> &PeerPool {
        &self.inner.pool
    }

    pub fn live(&self) -> &LiveOffers {
        &self.inner.live
    }

    /// Uploads in progress.
    pub fn uploads(&self) -> Vec<UploadInfo> {
        self.inner.uploads.list()
    }

    /// The servers' counters, one per listener.
    pub fn server_stats(&self) -> &[Arc<ServerStats>] {
        &self.inner.stats
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Bytes sent to peers since the node started.
    pub fn uploaded(&self) -> u64 {
        self.inner.uploads.total_bytes()
    }

    /// Adds a download (relative paths of `order` from `cwd`).
    pub fn download(&self, order: Order, cwd: &Path) -> Result<DownloadInfo, ManagerError> {
        self.inner.manager.add(order, cwd)
    }

    pub fn downloads(&self) -> Vec<DownloadInfo> {
        self.inner.manager.list()
    }

    pub fn download_info(&self, id: DownloadId) -> Option<DownloadInfo> {
        self.inner.manager.get(id)
    }

    pub fn pause(&self, id: DownloadId) -> Result<DownloadInfo, ManagerError> {
        self.inner.manager.pause(id)
    }

    pub fn resume(&self, id: DownloadId) -> Result<DownloadInfo, ManagerError> {
        self.inner.manager.resume(id)
    }

    pub fn cancel(&self, id: DownloadId) -> Result<DownloadInfo, ManagerError> {
        self.inner.manager.cancel(id)
    }

    /// Becomes true when [`Node::shutdown`] has stopped the downloads (the
    /// API's event streams end then).
    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.inner.stop.subscribe()
    }
}

/// Whether process `pid` is alive on this machine (files a running node
/// leaves in its data dir name its pid; one whose process is gone says
/// nothing about now).
pub(crate) fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The one address every listener is bound to, if they share one that is
/// not a wildcard: discovery then announces only there.
fn only_ip(listening: &[SocketAddr]) -> Option<std::net::IpAddr> {
    let ip = listening.first()?.ip();
    (!ip.is_unspecified() && listening.iter().all(|a| a.ip() == ip)).then_some(ip)
}

/// Runs the discovery service until the node stops; every change of its
/// peers goes to the LAN view (downloads, events) and to `peers.json`.
async fn run_discovery(
    d: Discovery,
    lan: Arc<NodeLan>,
    library: Library,
    mut stopped: watch::Receiver<bool>,
) {
    let handle = d.handle();
    let revision_lib = library.clone();
    let dir = library.dir().to_path_buf();
    let me = lan.me;
    d.run(
        move || revision_lib.revision().unwrap_or(0),
        move |peers| {
            lan.changed(peers);
            // File I/O (with fsyncs) stays off the async workers.
            let (dir, peers, now) = (dir.clone(), peers.to_vec(), handle.now());
            tokio::task::spawn_blocking(move || lan::write_peers_file(&dir, me, &peers, now));
        },
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    )
    .await;
}

/// How often the node looks whether its library changed (an edit by
/// another process on the data dir, such as `peershare share`).
pub const LIBRARY_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Publishes `LibraryChanged` whenever the library's revision moves.
async fn watch_library(library: Library, events: Events, mut stopped: watch::Receiver<bool>) {
    let mut seen = None;
    let mut tick = tokio::time::interval(LIBRARY_WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let lib = library.clone();
        let revision = tokio::task::spawn_blocking(move || lib.revision())
            .await
            .ok()
            .and_then(Result::ok);
        if let Some(r) = revision
            && seen.replace(r).is_some_and(|before| before != r)
        {
            events.emit(Event::LibraryChanged { revision: r });
        }
    }
}

/// The node's totals since it started.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Totals {
    pub uptime_secs: f64,
    /// Bytes of chunks sent to peers.
    pub uploaded_bytes: u64,
    /// Bytes received in downloads (this run of each).
    pub downloaded_bytes: u64,
    pub downloads_finished: u64,
}
