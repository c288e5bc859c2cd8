//! `ls` and `peers`: what peers share (folders, and files by path), and
//! who they are. With a node
//! running on the data dir, it asks (over its connections, with its view of
//! the LAN); without, this command asks the LAN and the peers itself.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;

use peershare::ops::{self, Listing, LsRow};
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
    let view = View::of(&a);
    if a.json.json {
        let rows: Vec<&LsRow> = match &view {
            View::Inside(prefix) => listing
                .rows
                .iter()
                .filter(|r| r.name.starts_with(prefix.as_str()))
                .collect(),
            View::Top | View::Tree => listing.rows.iter().collect(),
        };
        out_json(&rows);
        return Ok(());
    }
    print_rows(&listing, &a.search, &view);
    Ok(())
}

/// What `ls` prints.
enum View {
    /// The folders, and the files in none of them.
    Top,
    /// The files under this path prefix (ending in `/`), by full path.
    Inside(String),
    /// Each folder followed by its files, then the other files.
    Tree,
}

impl View {
    fn of(a: &LsArgs) -> Self {
        match a.folder.as_deref().map(|f| f.trim_end_matches('/')) {
            Some(f) if !f.is_empty() => View::Inside(format!("{f}/")),
            _ if a.tree => View::Tree,
            _ => View::Top,
        }
    }
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

fn print_rows(listing: &Listing, search: &[String], view: &View) {
    let rows = &listing.rows;
    let folders: HashSet<&str> = rows
        .iter()
        .filter(|r| r.is_folder())
        .map(|r| r.name.as_str())
        .collect();
    // The folder a file row is shown under, if a folder row holds it.
    let folder_of = |r: &LsRow| -> Option<String> {
        r.name
            .split_once('/')
            .map(|(top, _)| top)
            .filter(|top| !r.is_folder() && folders.contains(top))
            .map(str::to_owned)
    };
    let mut text = String::new();
    let mut shown = 0;
    match view {
        View::Top => {
            for r in rows.iter().filter(|r| folder_of(r).is_none()) {
                line(&mut text, r, "");
                shown += 1;
            }
        }
        View::Inside(prefix) => {
            for r in rows.iter().filter(|r| r.name.starts_with(prefix.as_str())) {
                line(&mut text, r, "");
                shown += 1;
            }
        }
        View::Tree => {
            let mut inside: HashMap<String, Vec<&LsRow>> = HashMap::new();
            let mut top = Vec::new();
            for r in rows {
                match folder_of(r) {
                    Some(f) => inside.entry(f).or_default().push(r),
                    None => top.push(r),
                }
            }
            for r in top {
                line(&mut text, r, "");
                shown += 1;
                // A folder's files once, under the first row of its name.
                if r.is_folder()
                    && let Some(files) = inside.remove(&r.name)
                {
                    for f in files {
                        line(&mut text, f, "  ");
                        shown += 1;
                    }
                }
            }
        }
    }
    if shown == 0 {
        match view {
            View::Inside(prefix) if search.is_empty() => {
                eprintln!(
                    "peershare: the peers share nothing under {:?}",
                    printable(prefix)
                )
            }
            View::Inside(prefix) => eprintln!(
                "peershare: nothing under {:?} matches {:?}",
                printable(prefix),
                search.join(" ")
            ),
            _ if !search.is_empty() => {
                eprintln!("peershare: no shared file matches {:?}", search.join(" "))
            }
            _ => eprintln!("peershare: the peers share no files"),
        }
    }
    out(&text);
}

/// One row as a line: ID, size, name (a folder's with `/` and its file
/// count), peers.
fn line(text: &mut String, r: &LsRow, indent: &str) {
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
    let (slash, files) = match (r.is_folder(), r.files) {
        (false, _) => ("", String::new()),
        (true, 1) => ("/", "1 file; ".to_owned()),
        (true, n) => ("/", format!("{n} files; ")),
    };
    text.push_str(&format!(
        "{}  {:>10}  {indent}{}{slash}  ({files}{count}{})\n",
        r.id,
        progress::bytes(r.size),
        printable(&r.name),
        peers.join(", ")
    ));
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
