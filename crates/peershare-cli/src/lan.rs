//! LAN discovery for the commands: resolving options into a
//! `DiscoveryConfig`, asking the LAN, the local `serve`'s view of peers in
//! `<data-dir>/peers.json`, and saying clearly when nothing is found.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use peershare::discovery::{DiscoveryConfig, discover, lan_targets};
use peershare_proto::NodeId;
use peershare_proto::discovery::PeerInfo;
use serde::{Deserialize, Serialize};

use crate::cli::{DiscoveryArgs, Family, LookArgs};
use crate::{Failure, exit};

const PEERS_FILE: &str = "peers.json";
/// Longest accepted `--discovery-wait`, seconds.
pub const MAX_DISCOVERY_WAIT_SECS: f64 = 60.0;

pub fn config(d: &DiscoveryArgs, interval: Duration) -> DiscoveryConfig {
    DiscoveryConfig {
        port: d.discovery_port,
        interval,
        // Three missed announcements, plus slack for a late one.
        ttl: interval * 3 + interval / 5,
        interfaces: (!d.interfaces.is_empty()).then(|| d.interfaces.clone()),
        ipv4: d.discovery_family != Family::Ipv6,
        ipv6: d.discovery_family != Family::Ipv4,
        only_ip: None,
    }
}

/// Seconds given on the command line as a duration, within `0..=max`.
pub fn seconds(what: &str, s: f64, max: f64) -> Result<Duration, Failure> {
    if !(s.is_finite() && s > 0.0 && s <= max) {
        return Err(Failure::new(
            exit::USAGE,
            format!("{what} must be between 0 and {max} seconds, not {s}"),
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

/// A peer as the commands show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Found {
    pub node_id: String,
    pub addr: SocketAddr,
    /// "reply" (answered our query now), or how the local `serve` heard it
    /// ("announce", "reply", "query").
    pub found_via: String,
    /// Seconds since it was last heard.
    pub last_seen_secs: u64,
}

/// What a running `serve` writes whenever the set of peers it knows changes.
#[derive(Debug, Serialize, Deserialize)]
struct PeersFile {
    pid: u32,
    node_id: String,
    written_unix: u64,
    peers: Vec<Found>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Called by `serve` on every change of its peer set. Best effort: a
/// failure to write is logged, never fatal.
pub fn write_peers_file(dir: &Path, me: NodeId, peers: &[PeerInfo], now: Duration) {
    let file = PeersFile {
        pid: std::process::id(),
        node_id: me.to_string(),
        written_unix: unix_now(),
        peers: peers
            .iter()
            .map(|p| Found {
                node_id: p.node_id.to_string(),
                addr: p.addr,
                found_via: p.via.as_str().to_owned(),
                last_seen_secs: now.saturating_sub(p.last_seen).as_secs(),
            })
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&file).expect("serializable");
    if let Err(e) = peershare::store::write_atomic(&dir.join(PEERS_FILE), &json) {
        tracing::warn!("recording peers: {e}");
    }
}

/// The peers the `serve` running on this data dir knows, if one runs.
fn local_view(dir: &Path) -> Vec<Found> {
    let Ok(bytes) = std::fs::read(dir.join(PEERS_FILE)) else {
        return Vec::new();
    };
    let Ok(file) = serde_json::from_slice::<PeersFile>(&bytes) else {
        return Vec::new();
    };
    // A file left by a serve that is gone says nothing about now.
    if !Path::new(&format!("/proc/{}", file.pid)).exists() {
        return Vec::new();
    }
    let age = unix_now().saturating_sub(file.written_unix);
    file.peers
        .into_iter()
        // serve writes node IDs; anything else is not one of its records.
        .filter(|f| f.node_id.parse::<NodeId>().is_ok())
        .map(|mut f| {
            f.last_seen_secs += age;
            f
        })
        .collect()
}

/// Asks the LAN and the local serve; one entry per node ID, live answers first.
pub async fn look(dir: &Path, me: NodeId, a: &LookArgs) -> Result<Vec<Found>, Failure> {
    let wait = seconds(
        "--discovery-wait",
        a.discovery_wait,
        MAX_DISCOVERY_WAIT_SECS,
    )?;
    let cfg = config(&a.discovery, Duration::from_secs(5));
    let live = discover(&cfg, me, wait)
        .await
        .map_err(|e| Failure::new(exit::LOCAL, format!("cannot send discovery queries: {e}")))?;
    let mut out: Vec<Found> = live
        .iter()
        .map(|p| Found {
            node_id: p.node_id.to_string(),
            addr: p.addr,
            found_via: "reply".into(),
            last_seen_secs: 0,
        })
        .collect();
    for f in local_view(dir) {
        if f.node_id != me.to_string() && !out.iter().any(|o| o.node_id == f.node_id) {
            out.push(f);
        }
    }
    Ok(out)
}

/// The error when nothing answered: what was tried, why it may fail, what
/// to do instead.
pub fn nothing_found(a: &LookArgs) -> Failure {
    let cfg = config(&a.discovery, Duration::from_secs(5));
    let targets = lan_targets(&cfg);
    let tried = if targets.is_empty() {
        "there is no up network interface to broadcast on".to_owned()
    } else {
        let list: Vec<String> = targets.iter().map(|t| t.ip().to_string()).collect();
        format!(
            "asked {} on UDP port {} and waited {} s",
            list.join(", "),
            cfg.port,
            a.discovery_wait
        )
    };
    Failure::new(
        exit::UNREACHABLE,
        format!(
            "no peers found on the LAN ({tried}); they may not be running `peershare serve`, a firewall may \
             block UDP port {}, or the network (e.g. Wi-Fi client isolation, a VPN) may not pass broadcasts: \
             connect directly with --peer HOST:PORT",
            cfg.port
        ),
    )
}
