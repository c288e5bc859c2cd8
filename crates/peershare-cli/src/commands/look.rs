//! `ls` and `peers`: what peers share, and who they are. With a node
//! running on the data dir, it asks (over its connections, with its view of
//! the LAN); without, this command asks the LAN and the peers itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use peershare::ops::{self, Listing};
use peershare_proto::NodeId;

use super::{
    kind_status, open_library, open_tls, out, out_json, printable, resolve_peers, running_node,
};
use crate::Failure;
use crate::cli::{LsArgs, PeersArgs};
use crate::lan::{self, Found};
use crate::progress;

pub async fn ls(dir: &Path, a: LsArgs) -> Result<(), Failure> {
    let peers = resolve_peers(&a.peers).await?;
    let listing = match running_node(dir).await {
        Some(node) => node.catalog(&peers, &a.search).await?,
        None => ls_here(dir, &a, peers).await?,
    };
    for w in &listing.warnings {
        eprintln!("peershare: warning: {}", printable(w));
    }
    if a.json.json {
        out_json(&listing.rows);
        return Ok(());
    }
    print_rows(&listing, &a.search);
    Ok(())
}

/// `ls` with no node running: finds the peers on the LAN (without
/// `--peer`) and asks them.
async fn ls_here(dir: &Path, a: &LsArgs, mut peers: Vec<SocketAddr>) -> Result<Listing, Failure> {
    let lib = open_library(dir)?;
    let tls = open_tls(&lib)?;
    // Peers found on the LAN must be one of the nodes announced there (a
    // forged announcement beside the real one changes nothing).
    let mut announced: HashMap<SocketAddr, Vec<NodeId>> = HashMap::new();
    if peers.is_empty() {
        let found = lan::look(dir, tls.node_id(), &a.look).await?;
        if found.is_empty() {
            return Err(lan::nothing_found(&a.look));
        }
        for f in &found {
            if let Ok(node) = f.node_id.parse() {
                announced.entry(f.addr).or_default().push(node);
            }
            peers.push(f.addr);
        }
    }
    ops::catalogs(&tls, None, peers, &announced, &a.search)
        .await
        .map_err(|e| Failure::new(kind_status(e.kind()), e))
}

fn print_rows(listing: &Listing, search: &[String]) {
    let rows = &listing.rows;
    let mut text = String::new();
    for r in rows {
        let peers: Vec<String> = r
            .peers
            .iter()
            .map(|p| {
                if r.partial_peers.contains(p) {
                    format!("{p} (partial)")
                } else {
                    p.to_string()
                }
            })
            .collect();
        let count = match r.peer_count {
            1 => String::new(),
            n => format!("{n} peers: "),
        };
        text.push_str(&format!(
            "{}  {:>10}  {}  ({count}{})\n",
            r.id,
            progress::bytes(r.size),
            printable(&r.name),
            peers.join(", ")
        ));
    }
    if rows.is_empty() && !search.is_empty() {
        eprintln!("peershare: no shared file matches {:?}", search.join(" "));
    } else if rows.is_empty() {
        eprintln!("peershare: the peers share no files");
    }
    out(&text);
}

pub async fn peers(dir: &Path, a: PeersArgs) -> Result<(), Failure> {
    let found: Vec<Found> = match running_node(dir).await {
        Some(node) => node.peers().await?,
        None => {
            let lib = open_library(dir)?;
            let node_id = lib.node_id().map_err(super::store_failure)?;
            lan::look(dir, node_id, &a.look).await?
        }
    };
    if a.json.json {
        out_json(&found);
        return Ok(());
    }
    if found.is_empty() {
        return Err(lan::nothing_found(&a.look));
    }
    let mut text = String::new();
    for f in &found {
        text.push_str(&format!(
            "{}  {:<22}  {:<8}  seen {} s ago\n",
            printable(&f.node_id),
            f.addr.to_string(),
            printable(&f.found_via),
            f.last_seen_secs
        ));
    }
    out(&text);
    Ok(())
}
