//! `share`, `unshare`, `shared`, `id`, `trust`: the library and identity
//! of this node. With a node running on the data dir, `share`, `unshare`
//! and `shared` ask it (its tickets carry where it really listens); without,
//! they work on the data dir by themselves, as the node would.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use peershare::ShareProgress;
use peershare::ops::{self, SharedItem, Unshared};
use peershare_proto::NodeId;

use super::{
    absolute, open_library, out, out_json, printable, printable_path, running_node, store_failure,
};
use crate::cli::{ShareArgs, SharedArgs, TicketArgs, TrustCommand, UnshareArgs};
use crate::progress;
use crate::{Failure, exit};

/// Addresses for tickets made without a running node: `--addr`, else this
/// machine's addresses with `--port`.
fn ticket_addrs(t: &TicketArgs) -> Vec<SocketAddr> {
    if t.addrs.is_empty() {
        ops::machine_addrs(t.port)
    } else {
        t.addrs.clone()
    }
}

/// Tickets naming `node` at `addrs` instead (`--addr` given with a running
/// node: a port-forward on the router, say).
fn retarget(items: &mut [SharedItem], node: NodeId, addrs: &[SocketAddr]) {
    for item in items {
        item.retarget(node, addrs);
    }
}

/// One line of `share` (`sizes` false: ID and name) or `shared` (ID, size,
/// name). A folder's name ends in `/` and is followed by its file count
/// (and, for `share`, its size): one line per item, whatever its kind, so
/// a script can read the ID as the first word.
fn item_line(item: &SharedItem, sizes: bool) -> String {
    let size = |n: u64| {
        if sizes {
            format!("{:>10}  ", progress::bytes(n))
        } else {
            String::new()
        }
    };
    match item {
        SharedItem::File(f) => format!(
            "{}  {}{}{}\n",
            f.id,
            size(f.size),
            printable(&f.name),
            unlisted_mark(f.unlisted)
        ),
        SharedItem::Folder(d) => {
            let total = if sizes {
                String::new()
            } else {
                format!(", {}", progress::bytes(d.size))
            };
            format!(
                "{}  {}{}/  (folder: {} file{}{total}){}\n",
                d.id,
                size(d.size),
                printable(&d.name),
                d.files,
                if d.files == 1 { "" } else { "s" },
                unlisted_mark(d.unlisted)
            )
        }
    }
}

fn unlisted_mark(unlisted: bool) -> &'static str {
    if unlisted { "  (unlisted)" } else { "" }
}

pub async fn share(dir: &Path, a: ShareArgs, quiet: bool) -> Result<(), Failure> {
    let files = match running_node(dir).await {
        Some(node) => {
            let paths = a
                .paths
                .iter()
                .map(|p| absolute(p))
                .collect::<Result<Vec<_>, _>>()?;
            let mut files = node.share(&paths, a.unlisted).await?;
            if !a.ticket.addrs.is_empty() {
                let me = open_library(dir)?.node_id().map_err(store_failure)?;
                retarget(&mut files, me, &a.ticket.addrs);
            }
            files
        }
        None => share_here(dir, &a, quiet).await?,
    };
    if a.json.json {
        out_json(&files);
    } else {
        out(&files
            .iter()
            .map(|i| item_line(i, false))
            .collect::<String>());
    }
    Ok(())
}

/// `share` with no node running: hashes here, with a progress bar.
async fn share_here(dir: &Path, a: &ShareArgs, quiet: bool) -> Result<Vec<SharedItem>, Failure> {
    let lib = open_library(dir)?;
    let counters = Arc::new(ShareProgress::default());
    let bar = progress::hashing(counters.clone(), quiet);
    let (paths, unlisted) = (a.paths.clone(), a.unlisted);
    let (lib2, c2) = (lib.clone(), counters.clone());
    let result = tokio::task::spawn_blocking(move || ops::share(&lib2, &paths, unlisted, &c2))
        .await
        .expect("share does not panic");
    bar.finish().await;
    let outcome = result.map_err(store_failure)?;
    let node = lib.node_id().map_err(store_failure)?;
    Ok(outcome.describe(node, &ticket_addrs(&a.ticket)))
}

pub async fn unshare(dir: &Path, a: UnshareArgs) -> Result<(), Failure> {
    let removed: Vec<Unshared> = match running_node(dir).await {
        Some(node) => {
            // Paths as this command sees them: the node's folder is not ours.
            let targets = a
                .targets
                .iter()
                .map(|t| match t.parse::<peershare_proto::FileId>() {
                    Ok(_) => Ok(t.clone()),
                    Err(_) => absolute(Path::new(t)).map(|p| p.to_string_lossy().into_owned()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            node.unshare(&targets).await?
        }
        None => {
            let lib = open_library(dir)?;
            ops::unshare(&lib, &a.targets).map_err(store_failure)?
        }
    };
    if a.json.json {
        out_json(&removed);
        return Ok(());
    }
    let mut text = String::new();
    for u in &removed {
        if u.kind == ops::ItemKind::Folder {
            text.push_str(&format!(
                "no longer offering folder {}  {}/\n",
                u.id,
                printable(&u.name)
            ));
        } else if u.in_progress {
            text.push_str(&format!(
                "no longer offering {}  {} (download in progress to {})\n",
                u.id,
                printable(&u.name),
                printable_path(&u.path)
            ));
        } else {
            text.push_str(&format!("unshared {}  {}\n", u.id, printable(&u.name)));
        }
    }
    out(&text);
    Ok(())
}

pub async fn shared(dir: &Path, a: SharedArgs) -> Result<(), Failure> {
    let files = match running_node(dir).await {
        Some(node) => {
            let mut files = node.library().await?;
            if !a.ticket.addrs.is_empty() {
                let me = open_library(dir)?.node_id().map_err(store_failure)?;
                retarget(&mut files, me, &a.ticket.addrs);
            }
            files
        }
        None => {
            let lib = open_library(dir)?;
            let node = lib.node_id().map_err(store_failure)?;
            ops::shared(&lib, node, &ticket_addrs(&a.ticket)).map_err(store_failure)?
        }
    };
    if a.json.json {
        out_json(&files);
    } else {
        out(&files.iter().map(|i| item_line(i, true)).collect::<String>());
    }
    Ok(())
}

pub fn trust(dir: &Path, command: TrustCommand) -> Result<(), Failure> {
    let lib = open_library(dir)?;
    let parse = |s: &str| {
        s.parse::<NodeId>().map_err(|e| {
            Failure::new(
                exit::USAGE,
                format!("{s:?} is not a node ID ({e}); `peershare id` prints one"),
            )
        })
    };
    match command {
        TrustCommand::Add { node, name, json } => {
            let node = parse(&node)?;
            let name = name.unwrap_or_default();
            let added = lib.trust(node, &name).map_err(store_failure)?;
            if json.json {
                out_json(
                    &serde_json::json!({"node_id": node.to_string(), "name": name, "changed": added}),
                );
            } else if added {
                out(&format!("trusted {node}\n"));
            } else {
                out(&format!("{node} was already trusted\n"));
            }
        }
        TrustCommand::Rm { node, json } => {
            let node = parse(&node)?;
            if !lib.distrust(node).map_err(store_failure)? {
                return Err(Failure::new(
                    exit::NOT_FOUND,
                    format!("{node} is not on the trust list (`peershare trust ls` shows it)"),
                ));
            }
            if json.json {
                out_json(&serde_json::json!({"node_id": node.to_string(), "changed": true}));
            } else {
                out(&format!("no longer trusted: {node}\n"));
            }
        }
        TrustCommand::Ls(json) => {
            let list = lib.trusted().map_err(store_failure)?;
            if json.json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|(id, t)| serde_json::json!({"node_id": id.to_string(), "name": t.name}))
                    .collect();
                out_json(&rows);
            } else {
                let mut text = String::new();
                for (id, t) in &list {
                    text.push_str(&format!("{id}  {}\n", printable(&t.name)));
                }
                out(&text);
            }
        }
    }
    Ok(())
}

pub fn id(dir: &Path, json: bool) -> Result<(), Failure> {
    let lib = open_library(dir)?;
    let node_id = lib.node_id().map_err(store_failure)?;
    if json {
        out_json(&serde_json::json!({ "node_id": node_id.to_string() }));
    } else {
        out(&format!("{node_id}\n"));
    }
    Ok(())
}
