//! A node on its LAN: the discovery service's view of the peers it hears
//! (kept in `<data-dir>/peers.json` for commands that run without the
//! node's API, and published as events), and how the node's downloads ask
//! the LAN for sources ([`NodeLan`], the manager's [`Lan`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use peershare_proto::NodeId;
use peershare_proto::discovery::PeerInfo;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::events::{Event, Events, PeerRef};
use crate::discovery::{DiscoveryConfig, DiscoveryHandle, discover};
use crate::download::Reported;
use crate::download::manager::Lan;

/// The file a running node writes its peers to.
pub const PEERS_FILE: &str = "peers.json";

/// A peer as the commands and the API show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Found {
    pub node_id: String,
    pub addr: SocketAddr,
    /// "reply" (answered a query just now), or how the node heard it
    /// ("announce", "reply", "query").
    pub found_via: String,
    /// Seconds since it was last heard.
    pub last_seen_secs: u64,
}

/// What a running node writes whenever the set of peers it knows changes.
#[derive(Debug, Serialize, Deserialize)]
struct PeersFile {
    pid: u32,
    node_id: String,
    written_unix: u64,
    peers: Vec<Found>,
}

/// Now, in seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn found(p: &PeerInfo, now: Duration) -> Found {
    Found {
        node_id: p.node_id.to_string(),
        addr: p.addr,
        found_via: p.via.as_str().to_owned(),
        last_seen_secs: now.saturating_sub(p.last_seen).as_secs(),
    }
}

/// Records the peers a node knows in its data dir. Best effort: a failure
/// to write is logged, never fatal.
pub fn write_peers_file(dir: &Path, me: NodeId, peers: &[PeerInfo], now: Duration) {
    let file = PeersFile {
        pid: std::process::id(),
        node_id: me.to_string(),
        written_unix: unix_now(),
        peers: peers.iter().map(|p| found(p, now)).collect(),
    };
    let json = serde_json::to_vec_pretty(&file).expect("serializable");
    if let Err(e) = crate::store::write_atomic(&dir.join(PEERS_FILE), &json) {
        tracing::warn!("recording peers: {e}");
    }
}

/// The peers the node running on this data dir knows, if one runs.
pub fn read_peers_file(dir: &Path) -> Vec<Found> {
    let Ok(bytes) = std::fs::read(dir.join(PEERS_FILE)) else {
        return Vec::new();
    };
    let Ok(file) = serde_json::from_slice::<PeersFile>(&bytes) else {
        return Vec::new();
    };
    // A file left by a node that is gone says nothing about now.
    if !super::process_alive(file.pid) {
        return Vec::new();
    }
    let age = unix_now().saturating_sub(file.written_unix);
    file.peers
        .into_iter()
        // A node writes node IDs; anything else is not one of its records.
        .filter(|f| f.node_id.parse::<NodeId>().is_ok())
        .map(|mut f| {
            f.last_seen_secs += age;
            f
        })
        .collect()
}

/// A node's way to the LAN: its discovery service's view, and fresh
/// queries with the same settings.
pub struct NodeLan {
    pub config: DiscoveryConfig,
    pub me: NodeId,
    /// How long a query waits for replies.
    pub wait: Duration,
    pub handle: Option<DiscoveryHandle>,
    reported: watch::Sender<Reported>,
    known: Mutex<BTreeMap<NodeId, SocketAddr>>,
    events: Events,
}

impl NodeLan {
    pub fn new(
        config: DiscoveryConfig,
        me: NodeId,
        wait: Duration,
        handle: Option<DiscoveryHandle>,
        events: Events,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            me,
            wait,
            handle,
            reported: watch::channel(Vec::new()).0,
            known: Mutex::default(),
            events,
        })
    }

    /// The discovery service saw the set of peers change: downloads hear of
    /// them, and events say who came and went.
    pub fn changed(&self, peers: &[PeerInfo]) {
        self.reported
            .send_replace(peers.iter().map(|p| (p.addr, Some(p.node_id))).collect());
        let now: BTreeMap<NodeId, SocketAddr> = peers.iter().map(|p| (p.node_id, p.addr)).collect();
        let mut known = self.known.lock().expect("known peers lock");
        let peer = |id: &NodeId, addr: &SocketAddr| PeerRef {
            node_id: id.to_string(),
            addr: *addr,
        };
        for (id, addr) in known.iter().filter(|(id, _)| !now.contains_key(id)) {
            self.events.emit(Event::PeerLost {
                peer: peer(id, addr),
            });
        }
        for (id, addr) in now.iter().filter(|(id, a)| known.get(id) != Some(a)) {
            self.events.emit(Event::PeerFound {
                peer: peer(id, addr),
            });
        }
        *known = now;
    }

    /// The peers the service knows now, as shown.
    pub fn heard(&self) -> Vec<Found> {
        let Some(h) = &self.handle else {
            return Vec::new();
        };
        let now = h.now();
        h.peers().iter().map(|p| found(p, now)).collect()
    }

    /// Asks the LAN now, and adds what the service knows: one entry per
    /// node ID, fresh answers first.
    pub async fn look_found(&self) -> std::io::Result<Vec<Found>> {
        let live = discover(&self.config, self.me, self.wait).await?;
        let mut out: Vec<Found> = live
            .iter()
            .map(|p| Found {
                node_id: p.node_id.to_string(),
                addr: p.addr,
                found_via: "reply".into(),
                last_seen_secs: 0,
            })
            .collect();
        for f in self.heard() {
            if !out.iter().any(|o| o.node_id == f.node_id) {
                out.push(f);
            }
        }
        Ok(out)
    }
}

impl Lan for NodeLan {
    fn look(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reported> + Send + '_>> {
        Box::pin(async move {
            match self.look_found().await {
                Ok(found) => found
                    .iter()
                    .map(|f| (f.addr, f.node_id.parse().ok()))
                    .collect(),
                Err(e) => {
                    tracing::warn!("cannot ask the LAN for peers: {e}");
                    Vec::new()
                }
            }
        })
    }

    fn watch(&self) -> watch::Receiver<Reported> {
        self.reported.subscribe()
    }

    fn nobody(&self) -> String {
        nothing_found(&self.config, self.wait)
    }
}

/// Why asking the LAN with `config` for `wait` found nobody: what was tried,
/// why it may fail, what to do instead.
pub fn nothing_found(config: &DiscoveryConfig, wait: Duration) -> String {
    let targets = crate::discovery::lan_targets(config);
    let tried = if targets.is_empty() {
        "there is no up network interface to broadcast on".to_owned()
    } else {
        let list: Vec<String> = targets.iter().map(|t| t.ip().to_string()).collect();
        format!(
            "asked {} on UDP port {} and waited {} s",
            list.join(", "),
            config.port,
            wait.as_secs_f64()
        )
    };
    format!(
        "no peers found on the LAN ({tried}); they may not be running `peershare serve`, a firewall may \
         block UDP port {}, or the network (e.g. Wi-Fi client isolation, a VPN) may not pass broadcasts: \
         connect directly with --peer HOST:PORT",
        config.port
    )
}
