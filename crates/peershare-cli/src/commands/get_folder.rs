//! `get` of a folder: a folder ticket, or a folder ID (told apart from a
//! file ID by asking the peers: IDs of the two kinds are hashed apart, so
//! the manifest a peer answers says which it is). The download runs in
//! this process (`peershare::download::folder`), and the finished folder
//! is shared in the data dir's library unless `--no-share`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use peershare::client::{ClientConfig, PeerConn};
use peershare::download::Output;
use peershare::download::folder::{FolderProgress, FolderRequest, FolderSummary, download_folder};
use peershare_proto::folder::verify_folder_manifest;
use peershare_proto::ticket::AnyTicket;
use peershare_proto::wire::Message;
use peershare_proto::{FileId, FolderId, NodeId};

use super::{
    absolute, cwd, kind_status, open_library, open_tls, out, out_json, printable_path,
    resolve_peers,
};
use crate::cli::GetArgs;
use crate::{Failure, exit, lan, progress};

/// A folder to download: its ID, name if known, peers and who they are.
pub struct FolderOrder {
    id: FolderId,
    name: Option<String>,
    peers: Vec<SocketAddr>,
    expect: HashMap<SocketAddr, NodeId>,
}

/// The folder `a.what` names, if it names one: a folder ticket, or an ID
/// some peer answers with a folder's manifest. `None`: a file (or
/// nothing known), for the file download to handle.
pub async fn folder_of(dir: &Path, a: &GetArgs) -> Result<Option<FolderOrder>, Failure> {
    let mut peers = resolve_peers(&a.peers).await?;
    let what = a.what.trim();
    if what.starts_with("ps1") {
        let Ok(AnyTicket::Folder(t)) = what.parse::<AnyTicket>() else {
            return Ok(None);
        };
        let mut expect = HashMap::new();
        for addr in &t.addrs {
            expect.insert(*addr, t.node);
            if !peers.contains(addr) {
                peers.push(*addr);
            }
        }
        return Ok(Some(FolderOrder {
            id: t.id,
            name: Some(t.name.clone()),
            peers,
            expect,
        }));
    }
    let Ok(id) = what.parse::<FolderId>() else {
        return Ok(None);
    };
    let lib = open_library(dir)?;
    let tls = open_tls(&lib)?;
    let mut expect = HashMap::new();
    if peers.is_empty() && !a.no_discovery {
        let me = tls.node_id();
        for f in lan::look(dir, me, &a.look).await? {
            if let Ok(node) = f.node_id.parse::<NodeId>() {
                expect.insert(f.addr, node);
            }
            peers.push(f.addr);
        }
    }
    if !probe(&tls, &peers, &expect, id).await {
        return Ok(None);
    }
    Ok(Some(FolderOrder {
        id,
        name: None,
        peers,
        expect,
    }))
}

/// True when some peer answers `id` with a folder's manifest.
async fn probe(
    tls: &peershare::Tls,
    peers: &[SocketAddr],
    expect: &HashMap<SocketAddr, NodeId>,
    id: FolderId,
) -> bool {
    let mut set = tokio::task::JoinSet::new();
    for &addr in peers {
        let (tls, node) = (tls.clone(), expect.get(&addr).copied());
        set.spawn(async move {
            let conn = PeerConn::connect(addr, &tls, node, ClientConfig::default())
                .await
                .ok()?;
            if !conn.remote().folders() {
                return None;
            }
            let wire = FileId(id.0);
            match conn
                .request(|req_id| Message::GetManifest { req_id, id: wire })
                .await
            {
                Ok(Message::Manifest { bytes, .. }) => verify_folder_manifest(&id, &bytes).ok(),
                _ => None,
            }
        });
    }
    while let Some(r) = set.join_next().await {
        if matches!(r, Ok(Some(_))) {
            return true;
        }
    }
    false
}

/// Downloads the folder, with progress, then prints the summary.
pub async fn get_folder(
    dir: &Path,
    a: &GetArgs,
    order: FolderOrder,
    quiet: bool,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<(), Failure> {
    if a.detach {
        return Err(Failure::new(
            exit::USAGE,
            "--detach does not take folders yet: run the folder `get` without it",
        ));
    }
    let lib = open_library(dir)?;
    let tls = open_tls(&lib)?;
    let output = match &a.output {
        Some(p) => Output::File(absolute(p)?),
        None => Output::Dir(cwd()?),
    };
    let mut req = FolderRequest::new(order.id, output, tls);
    req.name = order.name;
    req.peers = order.peers;
    req.expect = order.expect;
    req.force = a.force;
    req.only = a.only.clone();
    req.library = (!a.no_share).then_some(lib);
    if req.peers.is_empty() {
        return Err(Failure::new(
            exit::UNREACHABLE,
            "no peer to download the folder from: give one with --peer HOST:PORT, or use a ticket",
        ));
    }
    let counters = Arc::new(FolderProgress::default());
    let display = progress::folder(counters.clone(), quiet);
    let result = download_folder(req, counters, cancel).await;
    display.finish().await;
    let summary = result.map_err(|e| Failure::new(kind_status(e.kind()), e))?;
    print_summary(&summary, a.json.json);
    Ok(())
}

fn print_summary(s: &FolderSummary, json: bool) {
    if json {
        out_json(s);
        return;
    }
    let rate = s.bytes_received as f64 / s.seconds.max(1e-6);
    let from = s.peers.iter().filter(|p| p.bytes > 0).count();
    let mut extra = String::new();
    if s.bytes_resumed > 0 {
        extra.push_str(&format!(", {} resumed", progress::bytes(s.bytes_resumed)));
    }
    if s.copies > 0 {
        extra.push_str(&format!(", {} identical files copied locally", s.copies));
    }
    if s.skipped > 0 {
        extra.push_str(&format!(", {} files left out by --only", s.skipped));
    }
    if s.shared {
        extra.push_str("; now shared by this node");
    }
    out(&format!(
        "saved {}/ ({} files, {}, verified) in {:.1} s at {}/s from {} peer{}{extra}\n",
        printable_path(&s.path),
        s.files,
        progress::bytes(s.size),
        s.seconds,
        progress::bytes(rate as u64),
        from,
        if from == 1 { "" } else { "s" },
    ));
}
