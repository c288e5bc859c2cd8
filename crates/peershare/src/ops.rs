//! What a person or a program asks of a node, as functions over the
//! node's parts: share and unshare, what this node shares (with tickets),
//! the catalogs of peers. The local API's handlers call them on a running
//! node ([`crate::node::Node`]); the CLI calls them itself when no node
//! runs. One behaviour either way, and one JSON shape (these types are what
//! `--json` prints and what the API answers).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use peershare_proto::folder::{FolderEntry, FolderManifest};
use peershare_proto::ticket::{MAX_TICKET_ADDRS, TicketTarget};
use peershare_proto::{FileId, FolderId, NodeId, Ticket};
use serde::{Deserialize, Serialize};

use crate::client::{ClientConfig, PeerConn};
use crate::error::{PeerError, StoreError};
use crate::folders::{FolderRecord, FolderStore};
use crate::pool::PeerPool;
use crate::store::{Entry, Library, ShareProgress};
use crate::tls::Tls;

/// A shared file, with a ticket for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedFile {
    pub id: String,
    pub name: String,
    pub size: u64,
    pub path: PathBuf,
    /// Left out of this node's catalog: only a ticket or the ID finds it.
    pub unlisted: bool,
    pub ticket: String,
}

/// A shared folder, with a ticket for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedFolder {
    /// Hex folder ID.
    pub id: String,
    pub name: String,
    /// Total size of its files, bytes.
    pub size: u64,
    /// Its files (a content at two paths counts twice).
    pub files: usize,
    /// The folder on disk.
    pub path: PathBuf,
    pub unlisted: bool,
    pub ticket: String,
}

/// One thing `share` and `shared` report: a file or a folder. In JSON, an
/// object with `"kind": "file"` or `"kind": "folder"` and the fields of
/// [`SharedFile`] or [`SharedFolder`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SharedItem {
    File(SharedFile),
    Folder(SharedFolder),
}

impl SharedItem {
    pub fn id(&self) -> &str {
        match self {
            Self::File(f) => &f.id,
            Self::Folder(f) => &f.id,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::File(f) => &f.name,
            Self::Folder(f) => &f.name,
        }
    }

    pub fn size(&self) -> u64 {
        match self {
            Self::File(f) => f.size,
            Self::Folder(f) => f.size,
        }
    }

    pub fn unlisted(&self) -> bool {
        match self {
            Self::File(f) => f.unlisted,
            Self::Folder(f) => f.unlisted,
        }
    }

    pub fn ticket(&self) -> &str {
        match self {
            Self::File(f) => &f.ticket,
            Self::Folder(f) => &f.ticket,
        }
    }

    /// Its ticket made again, naming `node` at `addrs`.
    pub fn retarget(&mut self, node: NodeId, addrs: &[SocketAddr]) {
        match self {
            Self::File(f) => {
                if let Ok(id) = f.id.parse::<FileId>() {
                    f.ticket = ticket_text(id, f.size, f.unlisted, &f.name, node, addrs);
                }
            }
            Self::Folder(f) => {
                if let Ok(id) = f.id.parse::<FolderId>() {
                    f.ticket = ticket_text(id, f.size, f.unlisted, &f.name, node, addrs);
                }
            }
        }
    }
}

/// The text of a ticket for `id` (a file or a folder) naming `node` at
/// `addrs`.
fn ticket_text<I: TicketTarget>(
    id: I,
    size: u64,
    unlisted: bool,
    name: &str,
    node: NodeId,
    addrs: &[SocketAddr],
) -> String {
    Ticket {
        id,
        node,
        size,
        unlisted,
        name: name.to_owned(),
        addrs: addrs.to_vec(),
    }
    .to_string()
}

/// Folder `r` with a ticket naming `node` at `addrs`.
pub fn describe_folder(r: &FolderRecord, node: NodeId, addrs: &[SocketAddr]) -> SharedFolder {
    let id: FolderId = r.id.parse().expect("the folder store holds valid IDs");
    SharedFolder {
        id: r.id.clone(),
        name: r.name.clone(),
        size: r.size,
        files: r.files,
        path: r.root.clone(),
        unlisted: r.unlisted,
        ticket: ticket_text(id, r.size, r.unlisted, &r.name, node, addrs),
    }
}

/// What `share` shared: the files, then the folders.
#[derive(Debug, Clone, Default)]
pub struct ShareOutcome {
    pub files: Vec<Entry>,
    pub folders: Vec<FolderRecord>,
}

impl ShareOutcome {
    /// Files then folders, with tickets naming `node` at `addrs`.
    pub fn describe(&self, node: NodeId, addrs: &[SocketAddr]) -> Vec<SharedItem> {
        let files = self
            .files
            .iter()
            .map(|e| SharedItem::File(describe(e, node, addrs)));
        let folders = self
            .folders
            .iter()
            .map(|r| SharedItem::Folder(describe_folder(r, node, addrs)));
        files.chain(folders).collect()
    }
}

/// `e` with a ticket naming `node` at `addrs`.
pub fn describe(e: &Entry, node: NodeId, addrs: &[SocketAddr]) -> SharedFile {
    let id: FileId = e.id.parse().expect("library holds valid IDs");
    SharedFile {
        id: e.id.clone(),
        name: e.name.clone(),
        size: e.size,
        path: e.path.clone(),
        unlisted: e.unlisted,
        ticket: ticket_text(id, e.size, e.unlisted, &e.name, node, addrs),
    }
}

/// This machine's addresses that a ticket may carry: up interfaces, no
/// multicast, no IPv6 link-local (it needs a scope a ticket cannot carry),
/// loopback last; `with_loopback` keeps loopback ones.
fn machine_ips(v4: bool, v6: bool, with_loopback: bool) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| (ip.is_ipv4() && v4) || (ip.is_ipv6() && v6))
        .filter(|ip| with_loopback || !ip.is_loopback())
        .filter(|ip| !ip.is_unspecified() && !ip.is_multicast())
        .filter(|ip| match ip {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => true,
        })
        .collect();
    ips.sort_by_key(|ip| (ip.is_loopback(), ip.is_ipv6(), *ip));
    ips.dedup();
    ips
}

/// Addresses for tickets of a node that is not running: this machine's
/// non-loopback addresses with `port`, else loopback.
pub fn machine_addrs(port: u16) -> Vec<SocketAddr> {
    let mut ips = machine_ips(true, true, false);
    if ips.is_empty() {
        ips.push(IpAddr::from([127, 0, 0, 1]));
    }
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// Addresses for tickets of a node listening on `listening`: where it
/// really listens, loopback included when it listens there (a wildcard
/// listener stands for every address of its family), at most
/// `MAX_TICKET_ADDRS`, loopback last.
pub fn listening_addrs(listening: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for l in listening {
        let ips = match l.ip() {
            ip if !ip.is_unspecified() => vec![ip],
            IpAddr::V4(_) => machine_ips(true, false, true),
            IpAddr::V6(_) => machine_ips(false, true, true),
        };
        out.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, l.port())));
    }
    out.sort_by_key(|a| (a.ip().is_loopback(), a.is_ipv6()));
    out.dedup();
    out.truncate(MAX_TICKET_ADDRS);
    out
}

/// Shares `paths` (folders recursively), listed or not: the files, and
/// each folder given as a folder (its tree recorded in the folder store, a
/// new version replacing the one shared before from that path). An entry
/// that cannot be in a folder (two names that differ only in case, say) is
/// still shared as a file, and left out of the folder with a warning.
pub fn share(
    lib: &Library,
    paths: &[PathBuf],
    unlisted: bool,
    progress: &ShareProgress,
) -> Result<ShareOutcome, StoreError> {
    let walked = crate::walk::find(paths, crate::store::valid_name)?;
    walked.warn_symlinks();
    for dir in &walked.folders {
        if let Err(why) = peershare_proto::folder::check_folder_name(&dir.name) {
            return Err(StoreError::BadFolder {
                path: dir.root.clone(),
                why: format!("its name {:?} {why}", dir.name),
            });
        }
    }
    let dirs = walked.folders.clone();
    let shared = lib.share_found(walked, progress, unlisted)?;
    let files: Vec<Entry> = shared.into_iter().map(|s| s.entry).collect();
    let store = FolderStore::new(lib.dir());
    let mut folders = Vec::new();
    for dir in &dirs {
        let folder = folder_of(dir, &files)?;
        folders.push(store.put(&folder, &dir.name, &dir.root, unlisted)?);
    }
    Ok(ShareOutcome { files, folders })
}

/// The folder of `dir` from the entries `share` made of its files.
fn folder_of(
    dir: &crate::walk::FoundFolder,
    files: &[Entry],
) -> Result<FolderManifest, StoreError> {
    let mut candidates: Vec<FolderEntry> = Vec::new();
    for e in files {
        let Ok(rel) = e.path.strip_prefix(&dir.root) else {
            continue;
        };
        let (Some(rel), Some(id)) = (rel.to_str(), e.file_id()) else {
            tracing::warn!(path = ?e.path, "not in folder {:?}: its path is not UTF-8", dir.name);
            continue;
        };
        candidates.push(FolderEntry::file(rel, e.size, id));
    }
    candidates.extend(dir.empty_dirs.iter().map(|d| FolderEntry::dir(d.as_str())));
    let built = FolderManifest::build(candidates);
    for s in built.skipped.iter().take(MAX_SKIP_WARNINGS) {
        tracing::warn!("folder {:?}: {s}; shared as a file only", dir.name);
    }
    if built.skipped.len() > MAX_SKIP_WARNINGS {
        tracing::warn!(
            "folder {:?}: {} more entries left out of the folder",
            dir.name,
            built.skipped.len() - MAX_SKIP_WARNINGS
        );
    }
    Ok(built.manifest)
}

/// Most entries left out of one folder that `share` names one by one.
const MAX_SKIP_WARNINGS: usize = 20;

/// Something `unshare` removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unshared {
    pub id: String,
    pub name: String,
    /// The shared file, or the output of the download in progress.
    pub path: PathBuf,
    /// A download in progress no longer offered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_progress: bool,
    /// A file (or a download of one), or a folder no longer offered (its
    /// ID is then a folder ID and `path` the folder on disk).
    pub kind: ItemKind,
}

/// What an ID names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    File,
    Folder,
}

/// Removes entries and withdraws downloads in progress (by ID or path).
/// A folder ID unshares the folder and every file under it; unsharing a
/// file of a folder (or a path holding one) withdraws the folder too.
pub fn unshare(lib: &Library, targets: &[String]) -> Result<Vec<Unshared>, StoreError> {
    let store = FolderStore::new(lib.dir());
    let mut targets = targets.to_vec();
    for t in &mut targets {
        if let Ok(id) = t.parse::<FolderId>()
            && let Some(r) = store.get(&id)?
        {
            *t = r.root.to_string_lossy().into_owned();
        }
    }
    let removed = lib.unshare(&targets)?;
    let mut folders = Vec::new();
    let mut touched: Vec<&std::path::Path> =
        removed.files.iter().map(|e| e.path.as_path()).collect();
    let paths: Vec<PathBuf> = targets.iter().map(PathBuf::from).collect();
    touched.extend(
        paths
            .iter()
            .filter(|p| p.is_absolute())
            .map(PathBuf::as_path),
    );
    for path in touched {
        folders.extend(store.remove_touching(path)?);
    }
    let files = removed.files.into_iter().map(|e| Unshared {
        id: e.id,
        name: e.name,
        path: e.path,
        in_progress: false,
        kind: ItemKind::File,
    });
    let downloads = removed.downloads.into_iter().map(|(out, d)| Unshared {
        id: d.id,
        name: d.name,
        path: out,
        in_progress: true,
        kind: ItemKind::File,
    });
    let folders = folders.into_iter().map(|r| Unshared {
        id: r.id,
        name: r.name,
        path: r.root,
        in_progress: false,
        kind: ItemKind::Folder,
    });
    Ok(files.chain(downloads).chain(folders).collect())
}

/// What this node shares, with tickets naming `node` at `addrs`: the
/// files by path, then the folders by name.
pub fn shared(
    lib: &Library,
    node: NodeId,
    addrs: &[SocketAddr],
) -> Result<Vec<SharedItem>, StoreError> {
    let snap = lib.snapshot()?;
    let mut folders = FolderStore::new(lib.dir()).list()?;
    folders.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    let outcome = ShareOutcome {
        files: snap.files.values().cloned().collect(),
        folders,
    };
    Ok(outcome.describe(node, addrs))
}

/// What a catalog row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowKind {
    File,
    Folder,
}

/// One shared name (a file's path, or a folder) of peers' catalogs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LsRow {
    pub kind: RowKind,
    /// File ID, or a folder's folder ID.
    pub id: String,
    /// The path the peers list it under (a folder: its name; a file of a
    /// folder: `NAME/` and its path in the folder).
    pub name: String,
    /// Bytes (a folder: all of its files together).
    pub size: u64,
    /// A folder: how many files the first peer (`peer`) lists under
    /// `NAME/`; 0 for a file.
    pub files: usize,
    /// The first peer that lists it.
    pub peer: SocketAddr,
    pub peers: Vec<SocketAddr>,
    /// How many of the asked peers list it.
    pub peer_count: usize,
    /// Those of `peers` that hold only part of it (they are downloading it).
    pub partial_peers: Vec<SocketAddr>,
}

impl LsRow {
    pub fn is_folder(&self) -> bool {
        self.kind == RowKind::Folder
    }
}

/// What the peers list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub rows: Vec<LsRow>,
    /// Peers that did not answer, and why (the others' rows stand).
    pub warnings: Vec<String>,
}

/// No peer answered a listing.
#[derive(Debug, thiserror::Error)]
#[error("no peer answered: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct NoneAnswered(pub Vec<PeerError>);

impl NoneAnswered {
    /// As [`PeerError::kind`] of the first peer's failure.
    pub fn kind(&self) -> &'static str {
        self.0.first().map_or("failed", PeerError::kind)
    }
}

/// The catalogs of `peers` together, one row per name and ID (one content
/// shared under two names is two rows, a name two peers list with the same
/// content one), those whose name (path) holds every word of `search`
/// (case-insensitive), sorted by name. A peer at an address in `announced`
/// must prove one of the nodes announced there.
pub async fn catalogs(
    tls: &Tls,
    pool: Option<&PeerPool>,
    mut peers: Vec<SocketAddr>,
    announced: &HashMap<SocketAddr, Vec<NodeId>>,
    search: &[String],
) -> Result<Listing, NoneAnswered> {
    // A peer given twice is asked once and listed once.
    let mut seen = HashSet::new();
    peers.retain(|a| seen.insert(*a));
    let mut set = tokio::task::JoinSet::new();
    for &addr in &peers {
        let (tls, pool) = (tls.clone(), pool.cloned());
        let nodes = announced.get(&addr).cloned().unwrap_or_default();
        set.spawn(async move {
            let config = ClientConfig::default();
            let conn = match pool {
                Some(p) => p.connect(addr, &tls, None, config).await?,
                None => Arc::new(PeerConn::connect(addr, &tls, None, config).await?),
            };
            let got = conn.remote().node_id;
            if !nodes.is_empty() && !nodes.contains(&got) {
                return Err(PeerError::WrongNode {
                    addr,
                    expected: nodes[0],
                    got,
                });
            }
            conn.catalog().await.map(|c| (addr, c))
        });
    }
    let (mut answered, mut errors) = (Vec::new(), Vec::new());
    while let Some(r) = set.join_next().await {
        match r.expect("a catalog task does not panic") {
            Ok(a) => answered.push(a),
            Err(e) => errors.push(e),
        }
    }
    if answered.is_empty() {
        return Err(NoneAnswered(errors));
    }
    // Stable output: peers in the order given.
    answered.sort_by_key(|(addr, _)| peers.iter().position(|o| o == addr));
    let mut rows: BTreeMap<(String, RowKind, FileId), LsRow> = BTreeMap::new();
    for (addr, entries) in &answered {
        for e in entries {
            let kind = if e.is_folder() {
                RowKind::Folder
            } else {
                RowKind::File
            };
            let key = (e.name.clone(), kind, e.id);
            let row = rows.entry(key).or_insert_with(|| LsRow {
                kind,
                id: e.id.to_string(),
                name: e.name.clone(),
                size: e.size,
                files: 0,
                peer: *addr,
                peers: Vec::new(),
                peer_count: 0,
                partial_peers: Vec::new(),
            });
            row.peers.push(*addr);
            if e.is_partial() && !e.is_folder() {
                row.partial_peers.push(*addr);
            }
        }
    }
    // Each folder's files, as its first peer lists them.
    let mut in_folder: HashMap<(&str, SocketAddr), usize> = HashMap::new();
    for r in rows.values().filter(|r| !r.is_folder()) {
        if let Some((top, _)) = r.name.split_once('/') {
            for p in &r.peers {
                *in_folder.entry((top, *p)).or_default() += 1;
            }
        }
    }
    let counts: Vec<usize> = rows
        .values()
        .map(|r| match r.is_folder() {
            true => in_folder
                .get(&(r.name.as_str(), r.peer))
                .copied()
                .unwrap_or(0),
            false => 0,
        })
        .collect();
    for (r, n) in rows.values_mut().zip(counts) {
        r.files = n;
    }
    let words: Vec<String> = search.iter().map(|w| w.to_lowercase()).collect();
    let mut rows: Vec<LsRow> = rows
        .into_values()
        .map(|mut r| {
            r.peer_count = r.peers.len();
            r
        })
        .filter(|r| {
            let name = r.name.to_lowercase();
            words.iter().all(|w| name.contains(w.as_str()))
        })
        .collect();
    rows.sort_by(|x, y| (&x.name, x.kind, &x.id).cmp(&(&y.name, y.kind, &y.id)));
    Ok(Listing {
        rows,
        warnings: errors.iter().map(|e| e.to_string()).collect(),
    })
}
