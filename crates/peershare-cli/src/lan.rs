//! LAN discovery for the commands: resolving options into a
//! `DiscoveryConfig`, asking the LAN (with the view of a node running on
//! the data dir, `<data-dir>/peers.json`), and saying clearly when nothing
//! is found.

use std::path::Path;
use std::time::Duration;

use peershare::discovery::{DiscoveryConfig, discover};
pub use peershare::node::lan::Found;
use peershare_proto::NodeId;

use crate::cli::{DiscoveryArgs, Family, LookArgs};
use crate::{Failure, exit};

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
    for f in peershare::node::lan::read_peers_file(dir) {
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
    let wait = Duration::from_secs_f64(a.discovery_wait.clamp(0.0, MAX_DISCOVERY_WAIT_SECS));
    Failure::new(
        exit::UNREACHABLE,
        peershare::node::lan::nothing_found(&cfg, wait),
    )
}
