//! Folder downloads: a whole shared folder, every file verified, from every
//! peer that shares it at once, placed atomically.
//!
//! ```text
//!  connect every peer (FOLDERS capability) ─► GetManifest(folder ID): checked
//!  against the folder ID ─► the encoding's chunks, each verified ─► decoded
//!  (every path checked: FolderManifest::decode) ─► the plan: distinct
//!  contents of the selected files (--only)
//!    │
//!    ▼
//!  <target>.peershare-part/        mode 0700, ours alone
//!     folder-id                    which folder is being built here
//!     tree/                        the folder as it grows
//!    │   resume: whatever is in tree/ is verified again (a small file whole
//!    │   against its file ID, a large one chunk by chunk against its
//!    │   manifest); only what fails is fetched
//!    ▼
//!  one work queue for all files and all peers: a small file is one
//!  GetChunk(file ID, 0), verified by hashing it into its manifest (no
//!  manifest round trip); a large file is its manifest, then its chunks.
//!  Each peer keeps up to `requests_per_peer` requests in flight (and at
//!  most `bytes_per_peer`); a failed item goes back to the queue for
//!  another peer.
//!    │
//!    ▼
//!  duplicates copied, empty directories made ─► syncfs ─► rename tree/ to
//!  the target ─► fsync the parent ─► the part directory removed
//! ```
//!
//! Invariants: nothing is written outside the part directory until the
//! final rename, and the target either does not exist or is the complete,
//! verified folder (with `--force`, the old target is moved into the part
//! directory first and removed after). A part directory built for another
//! folder ID is cleared, never mixed with this one. Files are created with
//! `O_NOFOLLOW` inside directories this download created, so no symbolic
//! link is ever written through.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use peershare_proto::folder::{
    FolderEntry, FolderManifest, check_folder_name, verify_folder_manifest,
};
use peershare_proto::{FileId, FolderId, Manifest, NodeId};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::Output;
use crate::client::{ClientConfig, PeerConn};
use crate::error::{DownloadError, PeerError};
use crate::store::Library;
use crate::tls::Tls;

/// Suffix of the part directory beside the target.
pub const FOLDER_PART_SUFFIX: &str = ".peershare-part";
/// Requests one peer has in flight at most (many small files are fetched
/// many at a time, not one round trip each).
pub const REQUESTS_PER_PEER: usize = 32;
/// Bytes one peer has requested and not yet delivered, at most (one
/// request always fits, whatever its size).
pub const BYTES_PER_PEER: u64 = 16 << 20;
/// Times one item may fail before the download gives up on it.
pub const MAX_ITEM_FAILURES: u32 = 8;
/// Most `--only` patterns.
pub const MAX_ONLY_PATTERNS: usize = 256;
/// Most peers one folder download uses at once (the rest are left out).
pub const MAX_FOLDER_PEERS: usize = 64;

/// What to download, from whom, to where.
#[derive(Debug, Clone)]
pub struct FolderRequest {
    pub id: FolderId,
    /// The folder's name, if known (a ticket carries it); otherwise it is
    /// looked up in the peers' catalogs.
    pub name: Option<String>,
    pub peers: Vec<SocketAddr>,
    /// The node expected at an address (a ticket names its node).
    pub expect: HashMap<SocketAddr, NodeId>,
    /// `File(p)`: exactly `p` (which must not exist, unless `force`);
    /// `Dir(d)`: `d/NAME`.
    pub output: Output,
    /// Replace an existing target.
    pub force: bool,
    /// Glob patterns: only files matching one are downloaded (all without).
    pub only: Vec<String>,
    pub tls: Tls,
    pub client: ClientConfig,
    pub requests_per_peer: usize,
    pub bytes_per_peer: u64,
    /// Share the finished folder (files and folder) in this library.
    pub library: Option<Library>,
    pub unlisted: bool,
}

impl FolderRequest {
    pub fn new(id: FolderId, output: Output, tls: Tls) -> Self {
        Self {
            id,
            name: None,
            peers: Vec::new(),
            expect: HashMap::new(),
            output,
            force: false,
            only: Vec::new(),
            tls,
            client: ClientConfig::default(),
            requests_per_peer: REQUESTS_PER_PEER,
            bytes_per_peer: BYTES_PER_PEER,
            library: None,
            unlisted: false,
        }
    }
}

/// Live counters a UI can poll.
#[derive(Debug, Default)]
pub struct FolderProgress {
    /// Selected files (every path), known once the folder is.
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
    /// Bytes of the selected distinct contents.
    pub bytes_total: AtomicU64,
    /// Verified bytes, resumed ones included.
    pub bytes_done: AtomicU64,
    /// Bytes received from the network in this run.
    pub received: AtomicU64,
    pub peers: AtomicU64,
}

/// What one peer contributed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FolderPeerReport {
    pub addr: SocketAddr,
    pub node_id: String,
    /// Verified bytes it delivered (chunks of the encoding included).
    pub bytes: u64,
    pub requests: u64,
    /// Requests that failed or whose data failed verification.
    pub failed: u64,
}

/// The result of a finished folder download.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FolderSummary {
    /// Always `"folder"`.
    pub kind: String,
    pub id: String,
    pub name: String,
    pub path: PathBuf,
    /// Files placed (every path), and of them copies of a content fetched
    /// once for another path.
    pub files: u64,
    pub copies: u64,
    pub empty_dirs: u64,
    /// Files of the folder left out by `--only`.
    pub skipped: u64,
    /// Total size of the files placed.
    pub size: u64,
    /// Bytes of the files' chunks received in this run (the folder's own
    /// encoding not counted).
    pub bytes_received: u64,
    /// Bytes found verified in the part directory from an earlier run.
    pub bytes_resumed: u64,
    pub seconds: f64,
    pub peers: Vec<FolderPeerReport>,
    /// The folder is now shared by this node.
    pub shared: bool,
}

/// Downloads folder `req.id`. `cancel` completing stops it; what is
/// verified stays in the part directory, and the same request resumes.
pub async fn download_folder(
    req: FolderRequest,
    progress: Arc<FolderProgress>,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<FolderSummary, DownloadError> {
    tokio::pin!(cancel);
    let start = Instant::now();
    let peers = tokio::select! {
        r = connect_all(&req) => r?,
        _ = &mut cancel => return Err(DownloadError::Cancelled),
    };
    progress.peers.store(peers.len() as u64, Ordering::Relaxed);
    let stats: Vec<Arc<PeerStats>> = peers.iter().map(|_| Arc::default()).collect();
    let folder = tokio::select! {
        r = fetch_folder(&peers, &stats, req.id) => r?,
        _ = &mut cancel => return Err(DownloadError::Cancelled),
    };
    let target = target_path(&req, &peers).await?;
    let layout = Layout::new(&target);
    if let Some(summary) = layout.finished_before(req.id, &target)? {
        return Ok(summary_of(summary, &req, &target, start, &stats, &peers));
    }

    let plan = Plan::new(&folder, &req.only)?;
    layout.prepare(req.id, req.force)?;
    progress.files_total.store(plan.files, Ordering::Relaxed);
    progress.bytes_total.store(plan.bytes, Ordering::Relaxed);
    let jobs = Arc::new(plan.jobs(&layout.tree)?);
    let resumed = tokio::task::spawn_blocking({
        let jobs = jobs.clone();
        move || resume_small(&jobs)
    })
    .await
    .expect("resume does not panic")?;
    let run = Run::new(jobs.clone(), progress.clone(), resumed);
    tokio::select! {
        r = run.fetch(&peers, &stats, &req) => r?,
        _ = &mut cancel => return Err(DownloadError::Cancelled),
    }
    let placed = {
        let (plan, layout, target, force) =
            (plan.clone(), layout.clone(), target.clone(), req.force);
        tokio::task::spawn_blocking(move || layout.finish(&plan, &jobs, &target, force))
            .await
            .expect("finishing does not panic")?
    };
    let mut summary = Placed {
        resumed: run.resumed.load(Ordering::Relaxed),
        received: progress.received.load(Ordering::Relaxed),
        ..placed
    };
    summary.shared = share_result(&req, &target).await;
    Ok(summary_of(summary, &req, &target, start, &stats, &peers))
}

/// Counts of what was placed, before the summary is made.
#[derive(Debug, Clone, Default)]
struct Placed {
    files: u64,
    copies: u64,
    empty_dirs: u64,
    skipped: u64,
    size: u64,
    resumed: u64,
    received: u64,
    shared: bool,
}

fn summary_of(
    p: Placed,
    req: &FolderRequest,
    target: &Path,
    start: Instant,
    stats: &[Arc<PeerStats>],
    peers: &[Arc<PeerConn>],
) -> FolderSummary {
    let reports: Vec<FolderPeerReport> = peers
        .iter()
        .zip(stats)
        .map(|(c, s)| FolderPeerReport {
            addr: c.addr(),
            node_id: c.remote().node_id.to_string(),
            bytes: s.bytes.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
        })
        .collect();
    FolderSummary {
        kind: "folder".into(),
        id: req.id.to_string(),
        name: target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: target.to_path_buf(),
        files: p.files,
        copies: p.copies,
        empty_dirs: p.empty_dirs,
        skipped: p.skipped,
        size: p.size,
        bytes_received: p.received,
        bytes_resumed: p.resumed,
        seconds: start.elapsed().as_secs_f64(),
        peers: reports,
        shared: p.shared,
    }
}

/// Shares the placed folder in the request's library; false (with a
/// warning) if that fails: the folder is there either way.
async fn share_result(req: &FolderRequest, target: &Path) -> bool {
    let Some(lib) = req.library.clone() else {
        return false;
    };
    let (target, unlisted) = (target.to_path_buf(), req.unlisted);
    let r = tokio::task::spawn_blocking(move || {
        crate::ops::share(
            &lib,
            std::slice::from_ref(&target),
            unlisted,
            &Default::default(),
        )
    })
    .await
    .expect("share does not panic");
    match r {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!("the folder is saved, but could not be shared: {e}");
            false
        }
    }
}

/// Per peer counters.
#[derive(Debug, Default)]
struct PeerStats {
    bytes: AtomicU64,
    requests: AtomicU64,
    failed: AtomicU64,
}

/// Connects to every peer at once; keeps those that share folders.
async fn connect_all(req: &FolderRequest) -> Result<Vec<Arc<PeerConn>>, DownloadError> {
    if req.peers.is_empty() {
        return Err(DownloadError::NoPeers);
    }
    let mut set = tokio::task::JoinSet::new();
    for (i, &addr) in req.peers.iter().enumerate() {
        let (tls, config, expect) = (
            req.tls.clone(),
            req.client.clone(),
            req.expect.get(&addr).copied(),
        );
        set.spawn(async move { (i, PeerConn::connect(addr, &tls, expect, config).await) });
    }
    let (mut conns, mut errors) = (Vec::new(), Vec::new());
    while let Some(r) = set.join_next().await {
        match r.expect("a connect task does not panic") {
            (i, Ok(c)) if c.remote().folders() => conns.push((i, Arc::new(c))),
            (_, Ok(c)) => {
                tracing::warn!(addr = %c.addr(), "the peer runs a peershare that does not share folders; leaving it out")
            }
            (_, Err(e)) => errors.push(e),
        }
    }
    if conns.is_empty() {
        if errors.is_empty() {
            return Err(DownloadError::NotFoundFolder { id: req.id });
        }
        return Err(DownloadError::AllUnreachable(errors));
    }
    conns.sort_by_key(|(i, _)| *i);
    if conns.len() > MAX_FOLDER_PEERS {
        tracing::warn!(
            "{} peers share the folder; using the first {MAX_FOLDER_PEERS}",
            conns.len()
        );
        conns.truncate(MAX_FOLDER_PEERS);
    }
    Ok(conns.into_iter().map(|(_, c)| c).collect())
}

/// The folder, from the first peer that has it: its manifest checked
/// against the folder ID, its encoding fetched chunk by chunk (each
/// verified, any peer), decoded with every path checked.
async fn fetch_folder(
    peers: &[Arc<PeerConn>],
    stats: &[Arc<PeerStats>],
    id: FolderId,
) -> Result<FolderManifest, DownloadError> {
    let wire_id = FileId(id.0);
    let mut manifest = None;
    let mut failures = Vec::new();
    for (p, s) in peers.iter().zip(stats) {
        match p
            .request(|req_id| peershare_proto::wire::Message::GetManifest {
                req_id,
                id: wire_id,
            })
            .await
        {
            Ok(peershare_proto::wire::Message::Manifest { bytes, .. }) => {
                match verify_folder_manifest(&id, &bytes) {
                    Ok(m) => {
                        manifest = Some(m);
                        break;
                    }
                    Err(e) => {
                        s.failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{}: {e}", p.addr()));
                    }
                }
            }
            Ok(_) => failures.push(format!("{}: an unexpected answer", p.addr())),
            Err(e) if e.is_not_found() => {}
            Err(e) => failures.push(e.to_string()),
        }
    }
    let Some(manifest) = manifest else {
        if failures.is_empty() {
            return Err(DownloadError::NotFoundFolder { id });
        }
        return Err(DownloadError::AllSourcesFailed(failures));
    };
    let mut encoding = Vec::with_capacity(manifest.size() as usize);
    for index in 0..manifest.chunk_count() {
        let mut got = None;
        for (p, s) in peers.iter().zip(stats) {
            match p.chunk(wire_id, index).await {
                Ok(data) if manifest.verify_chunk(index, &data) => {
                    s.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    got = Some(data);
                    break;
                }
                Ok(_) => {
                    s.failed.fetch_add(1, Ordering::Relaxed);
                    failures.push(format!(
                        "{}: chunk {index} of the folder failed verification",
                        p.addr()
                    ));
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        let Some(data) = got else {
            return Err(DownloadError::AllSourcesFailed(failures));
        };
        encoding.extend_from_slice(&data);
    }
    let folder = FolderManifest::decode(&encoding).map_err(|e| DownloadError::BadFolder {
        id,
        why: e.to_string(),
    })?;
    debug_assert_eq!(folder.id(), id, "verified chunks of a verified manifest");
    Ok(folder)
}

/// Where the folder goes: `-o PATH` exactly when it does not exist, inside
/// it when it is a directory, else `DIR/NAME`.
async fn target_path(
    req: &FolderRequest,
    peers: &[Arc<PeerConn>],
) -> Result<PathBuf, DownloadError> {
    let dir = match &req.output {
        Output::File(p) if !p.is_dir() => return Ok(p.clone()),
        Output::File(p) | Output::Dir(p) => p.clone(),
    };
    let name = match &req.name {
        Some(n) => n.clone(),
        None => name_from_catalogs(peers, req.id).await?,
    };
    check_folder_name(&name).map_err(|e| DownloadError::BadFolder {
        id: req.id,
        why: format!("its name {name:?}: the path {e}"),
    })?;
    Ok(dir.join(name))
}

/// The folder's name as the first peer that lists it does.
async fn name_from_catalogs(
    peers: &[Arc<PeerConn>],
    id: FolderId,
) -> Result<String, DownloadError> {
    for p in peers {
        if let Ok(entries) = p.catalog().await
            && let Some(e) = entries.iter().find(|e| e.id.0 == id.0)
        {
            return Ok(e.name.trim_end_matches('/').to_owned());
        }
    }
    Err(DownloadError::FolderNameUnknown { id })
}

/// The selected part of a folder.
#[derive(Debug, Clone)]
struct Plan {
    /// Distinct contents to fetch: ID, size, every selected path.
    contents: Vec<(FileId, u64, Vec<String>)>,
    dirs: Vec<String>,
    files: u64,
    bytes: u64,
    skipped: u64,
}

impl Plan {
    fn new(folder: &FolderManifest, only: &[String]) -> Result<Self, DownloadError> {
        let filter = Only::new(only)?;
        let mut contents = Vec::new();
        let (mut files, mut bytes, mut skipped) = (0, 0, 0);
        for d in folder.distinct_files() {
            let paths: Vec<String> = d
                .paths
                .iter()
                .filter(|p| filter.matches(p))
                .map(|p| p.to_string())
                .collect();
            skipped += (d.paths.len() - paths.len()) as u64;
            if paths.is_empty() {
                continue;
            }
            files += paths.len() as u64;
            bytes += d.size;
            contents.push((d.id, d.size, paths));
        }
        let dirs = folder
            .entries()
            .iter()
            .filter(|e| matches!(e, FolderEntry::Dir { .. }) && filter.matches(e.path()))
            .map(|e| e.path().to_owned())
            .collect();
        if !only.is_empty() && files == 0 {
            return Err(DownloadError::NothingSelected);
        }
        Ok(Self {
            contents,
            dirs,
            files,
            bytes,
            skipped,
        })
    }

    fn jobs(&self, tree: &Path) -> Result<Vec<Job>, DownloadError> {
        Ok(self
            .contents
            .iter()
            .map(|(id, size, paths)| Job {
                id: *id,
                size: *size,
                path: tree.join(&paths[0]),
                chunks: peershare_proto::manifest::chunk_count(
                    *size,
                    peershare_proto::manifest::chunk_size_for(*size),
                ) as u32,
                manifest: Mutex::new(None),
                left: AtomicU32::new(u32::MAX),
                paths: paths.len() as u64,
            })
            .collect())
    }
}

/// `--only` patterns: a pattern with no `/` matches a file or folder name
/// at any depth; one with `/` matches a path from the folder's top. A file
/// is selected when its path or a folder it is in matches.
struct Only(Option<globset::GlobSet>);

impl Only {
    fn new(patterns: &[String]) -> Result<Self, DownloadError> {
        if patterns.is_empty() {
            return Ok(Self(None));
        }
        if patterns.len() > MAX_ONLY_PATTERNS {
            return Err(DownloadError::BadPattern {
                pattern: format!("{} patterns", patterns.len()),
                why: format!("at most {MAX_ONLY_PATTERNS} --only patterns"),
            });
        }
        let mut set = globset::GlobSetBuilder::new();
        for p in patterns {
            let trimmed = p.trim_matches('/');
            let full = if trimmed.contains('/') {
                trimmed.to_owned()
            } else {
                format!("**/{trimmed}")
            };
            let glob = globset::GlobBuilder::new(&full)
                .literal_separator(true)
                .build()
                .map_err(|e| DownloadError::BadPattern {
                    pattern: p.clone(),
                    why: e.kind().to_string(),
                })?;
            set.add(glob);
        }
        let set = set.build().map_err(|e| DownloadError::BadPattern {
            pattern: patterns.join(" "),
            why: e.to_string(),
        })?;
        Ok(Self(Some(set)))
    }

    fn matches(&self, path: &str) -> bool {
        let Some(set) = &self.0 else { return true };
        let mut at = path;
        loop {
            if set.is_match(at) {
                return true;
            }
            match at.rsplit_once('/') {
                Some((parent, _)) => at = parent,
                None => return false,
            }
        }
    }
}

/// One distinct content to fetch, written at its first path.
#[derive(Debug)]
struct Job {
    id: FileId,
    size: u64,
    path: PathBuf,
    chunks: u32,
    /// A large file's manifest, once fetched.
    manifest: Mutex<Option<Arc<Manifest>>>,
    /// Chunks still to verify; `u32::MAX` until known.
    left: AtomicU32,
    /// Selected paths holding it.
    paths: u64,
}

impl Job {
    fn small(&self) -> bool {
        self.chunks <= 1
    }
}

/// The part directory of a target, and its tree.
#[derive(Debug, Clone)]
struct Layout {
    part: PathBuf,
    tree: PathBuf,
    marker: PathBuf,
    old: PathBuf,
}

impl Layout {
    fn new(target: &Path) -> Self {
        let mut name = target.file_name().unwrap_or_default().to_os_string();
        name.push(FOLDER_PART_SUFFIX);
        let part = target.with_file_name(name);
        Self {
            tree: part.join("tree"),
            marker: part.join("folder-id"),
            old: part.join("replaced"),
            part,
        }
    }

    /// A run killed after its final rename: the target is this folder and
    /// the part directory holds only the marker (and the replaced one).
    fn finished_before(
        &self,
        id: FolderId,
        target: &Path,
    ) -> Result<Option<Placed>, DownloadError> {
        if self.marker_id()? != Some(id) || self.tree.exists() || !target.is_dir() {
            return Ok(None);
        }
        remove_all(&self.part)?;
        Ok(Some(Placed::default()))
    }

    fn marker_id(&self) -> Result<Option<FolderId>, DownloadError> {
        match fs::symlink_metadata(&self.part) {
            Ok(m) if m.is_dir() && m.uid() == current_uid() => {}
            Ok(_) => {
                return Err(DownloadError::NotAPlainFile {
                    path: self.part.clone(),
                    why: "is not a directory of this user's".into(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(disk(&self.part, e)),
        }
        let mut text = String::new();
        match open_nofollow(&self.marker) {
            Ok(f) => {
                f.take(128)
                    .read_to_string(&mut text)
                    .map_err(|e| disk(&self.marker, e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(disk(&self.marker, e)),
        }
        Ok(text.trim().parse().ok())
    }

    /// Makes the part directory ready for folder `id`: one of another
    /// folder (or none recognisable) is cleared. Refuses an existing target
    /// without `force`.
    fn prepare(&self, id: FolderId, force: bool) -> Result<(), DownloadError> {
        let target = self.target();
        if !force && fs::symlink_metadata(&target).is_ok() {
            return Err(DownloadError::OutputExists(target));
        }
        if self.marker_id()? != Some(id) && self.part.exists() {
            tracing::info!(part = ?self.part, "clearing a part directory of another folder");
            remove_all(&self.part)?;
        }
        if !self.part.exists() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&self.part)
                .map_err(|e| disk(&self.part, e))?;
            let mut f = File::create(&self.marker).map_err(|e| disk(&self.marker, e))?;
            writeln!(f, "{id}").map_err(|e| disk(&self.marker, e))?;
            f.sync_all().map_err(|e| disk(&self.marker, e))?;
        }
        if !self.tree.exists() {
            fs::create_dir(&self.tree).map_err(|e| disk(&self.tree, e))?;
        }
        Ok(())
    }

    fn target(&self) -> PathBuf {
        let name = self.part.file_name().unwrap_or_default().to_string_lossy();
        let base = name
            .strip_suffix(FOLDER_PART_SUFFIX)
            .unwrap_or(&name)
            .to_owned();
        self.part.with_file_name(base)
    }

    /// Copies, empty directories, one sync, the rename into place.
    fn finish(
        &self,
        plan: &Plan,
        jobs: &[Job],
        target: &Path,
        force: bool,
    ) -> Result<Placed, DownloadError> {
        let mut placed = Placed {
            skipped: plan.skipped,
            ..Placed::default()
        };
        for ((_, size, paths), job) in plan.contents.iter().zip(jobs) {
            if *size == 0 {
                create_file(&job.path)?;
            }
            for p in &paths[1..] {
                let to = self.tree.join(p);
                if !verified_copy(&to, job)? {
                    make_parents(&to)?;
                    let _ = fs::remove_file(&to);
                    copy_nofollow(&job.path, &to)?;
                }
                placed.copies += 1;
            }
            placed.files += paths.len() as u64;
            placed.size += size * paths.len() as u64;
        }
        for d in &plan.dirs {
            let p = self.tree.join(d);
            fs::create_dir_all(&p).map_err(|e| disk(&p, e))?;
            placed.empty_dirs += 1;
        }
        syncfs(&self.tree)?;
        if force && fs::symlink_metadata(target).is_ok() {
            fs::rename(target, &self.old).map_err(|e| disk(target, e))?;
        }
        fs::rename(&self.tree, target).map_err(|e| disk(target, e))?;
        if let Some(parent) = target.parent() {
            let dir = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| disk(dir, e))?;
        }
        remove_all(&self.part)?;
        Ok(placed)
    }
}

/// True when `to` already holds `job`'s content (a resumed copy).
fn verified_copy(to: &Path, job: &Job) -> Result<bool, DownloadError> {
    match fs::symlink_metadata(to) {
        Ok(m) if m.is_file() && m.len() == job.size && job.small() => {
            Ok(read_small(to)?.is_some_and(|d| Manifest::from_bytes(&d).id() == job.id))
        }
        _ => Ok(false),
    }
}

fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

fn disk(path: &Path, e: io::Error) -> DownloadError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        return DownloadError::DiskFull {
            path: path.to_path_buf(),
        };
    }
    DownloadError::Disk {
        path: path.to_path_buf(),
        source: e,
    }
}

fn remove_all(p: &Path) -> Result<(), DownloadError> {
    // `remove_dir_all` never follows symbolic links.
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(disk(p, e)),
    }
}

fn open_nofollow(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
}

/// Creates (or opens) the regular file `p` for writing, its parents first;
/// never through a symbolic link.
fn open_for_write(p: &Path) -> Result<File, DownloadError> {
    make_parents(p)?;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(p)
        .map_err(|e| disk(p, e))
}

fn make_parents(p: &Path) -> Result<(), DownloadError> {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).map_err(|e| disk(parent, e))?;
    }
    Ok(())
}

fn create_file(p: &Path) -> Result<(), DownloadError> {
    let f = open_for_write(p)?;
    f.set_len(0).map_err(|e| disk(p, e))
}

fn copy_nofollow(from: &Path, to: &Path) -> Result<(), DownloadError> {
    let mut src = open_nofollow(from).map_err(|e| disk(from, e))?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(to)
        .map_err(|e| disk(to, e))?;
    io::copy(&mut src, &mut dst).map_err(|e| disk(to, e))?;
    Ok(())
}

fn syncfs(dir: &Path) -> Result<(), DownloadError> {
    crate::store::sync_file_system(dir).map_err(|source| DownloadError::SyncFailed {
        path: dir.to_path_buf(),
        source,
    })
}

/// A small file's bytes if it is a regular file no larger than a chunk.
fn read_small(p: &Path) -> Result<Option<Vec<u8>>, DownloadError> {
    let f = match open_nofollow(p) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(disk(p, e)),
    };
    let limit = peershare_proto::manifest::chunk_size_for(0) as u64 + 1;
    let mut data = Vec::new();
    f.take(limit)
        .read_to_end(&mut data)
        .map_err(|e| disk(p, e))?;
    Ok(Some(data))
}

/// Verifies what an earlier run left of each small file: those whole and
/// right are done. Returns the bytes found verified.
fn resume_small(jobs: &[Job]) -> Result<u64, DownloadError> {
    let mut resumed = 0;
    for job in jobs.iter().filter(|j| j.small()) {
        if job.size == 0 {
            job.left.store(0, Ordering::Relaxed);
            continue;
        }
        let ok = read_small(&job.path)?
            .is_some_and(|d| d.len() as u64 == job.size && Manifest::from_bytes(&d).id() == job.id);
        if ok {
            job.left.store(0, Ordering::Relaxed);
            resumed += job.size;
        } else {
            job.left.store(1, Ordering::Relaxed);
        }
    }
    Ok(resumed)
}

/// One thing to ask a peer for.
#[derive(Debug, Clone, Copy)]
enum Work {
    /// A large file's manifest.
    Manifest {
        job: usize,
    },
    Chunk {
        job: usize,
        index: u32,
    },
}

#[derive(Debug, Clone, Copy)]
struct Item {
    work: Work,
    failures: u32,
    /// Peers (indexes, bit per peer below 64) that failed it.
    failed_by: u64,
}

/// The shared state of one fetch.
struct Run {
    jobs: Arc<Vec<Job>>,
    progress: Arc<FolderProgress>,
    queue: Mutex<VecDeque<Item>>,
    /// Items queued or in flight.
    outstanding: AtomicUsize,
    changed: Notify,
    fatal: Mutex<Option<DownloadError>>,
    resumed: AtomicU64,
    /// A bit per peer of the download (at most `MAX_FOLDER_PEERS`), and
    /// those lost.
    all_peers: AtomicU64,
    lost_peers: AtomicU64,
}

impl Run {
    fn new(jobs: Arc<Vec<Job>>, progress: Arc<FolderProgress>, resumed: u64) -> Arc<Self> {
        let mut queue = VecDeque::new();
        let mut done_files = 0;
        for (i, job) in jobs.iter().enumerate() {
            let work = if job.small() {
                if job.left.load(Ordering::Relaxed) == 0 {
                    done_files += job.paths;
                    continue;
                }
                Work::Chunk { job: i, index: 0 }
            } else {
                Work::Manifest { job: i }
            };
            queue.push_back(Item {
                work,
                failures: 0,
                failed_by: 0,
            });
        }
        progress.files_done.store(done_files, Ordering::Relaxed);
        progress.bytes_done.store(resumed, Ordering::Relaxed);
        Arc::new(Self {
            jobs,
            progress,
            outstanding: AtomicUsize::new(queue.len()),
            queue: Mutex::new(queue),
            changed: Notify::new(),
            fatal: Mutex::new(None),
            resumed: AtomicU64::new(resumed),
            all_peers: AtomicU64::new(0),
            lost_peers: AtomicU64::new(0),
        })
    }

    /// Runs every peer's workers until nothing is left (or it cannot be).
    async fn fetch(
        self: &Arc<Self>,
        peers: &[Arc<PeerConn>],
        stats: &[Arc<PeerStats>],
        req: &FolderRequest,
    ) -> Result<(), DownloadError> {
        let mut set = tokio::task::JoinSet::new();
        let n = peers.len().min(MAX_FOLDER_PEERS);
        let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        self.all_peers.store(mask, Ordering::Relaxed);
        for (i, (conn, stat)) in peers.iter().zip(stats).take(n).enumerate() {
            let worker = Worker {
                run: self.clone(),
                peer: i,
                conn: conn.clone(),
                stats: stat.clone(),
                budget: Arc::new(Budget::new(req.bytes_per_peer)),
            };
            for _ in 0..req.requests_per_peer.max(1) {
                let w = worker.clone();
                set.spawn(async move { w.work().await });
            }
        }
        while set.join_next().await.is_some() {}
        if let Some(e) = self.fatal.lock().expect("fatal lock").take() {
            return Err(e);
        }
        if self.outstanding.load(Ordering::Relaxed) > 0 {
            return Err(DownloadError::AllSourcesFailed(vec![
                "every peer was lost before the folder was complete".into(),
            ]));
        }
        Ok(())
    }

    fn fail(&self, e: DownloadError) {
        self.fatal.lock().expect("fatal lock").get_or_insert(e);
        self.changed.notify_waiters();
    }

    fn is_over(&self) -> bool {
        self.outstanding.load(Ordering::Acquire) == 0
            || self.fatal.lock().expect("fatal lock").is_some()
    }

    /// The next item peer `peer` may take, if any.
    fn take(&self, peer: usize) -> Option<Item> {
        let mut q = self.queue.lock().expect("queue lock");
        let bit = 1u64 << peer;
        let at = q.iter().position(|i| i.failed_by & bit == 0)?;
        q.remove(at)
    }

    /// Peer `peer`'s connection is gone; true the first time. With every
    /// peer gone, the download cannot go on.
    fn lost(&self, peer: usize, why: &str) -> bool {
        let bit = 1u64 << peer;
        let before = self.lost_peers.fetch_or(bit, Ordering::AcqRel);
        if before & bit != 0 {
            return false;
        }
        let all = self.all_peers.load(Ordering::Relaxed);
        if (before | bit) == all {
            self.fail(DownloadError::AllSourcesFailed(vec![format!(
                "every peer was lost; the last: {why}"
            )]));
        }
        // An item every remaining peer failed has no one left to take it.
        let stuck = self
            .queue
            .lock()
            .expect("queue lock")
            .iter()
            .any(|i| i.failed_by | before | bit == all);
        if stuck {
            self.fail(DownloadError::AllSourcesFailed(vec![format!(
                "the peers left failed part of the folder, and {why}"
            )]));
        }
        true
    }

    fn push(&self, item: Item) {
        self.queue.lock().expect("queue lock").push_back(item);
        self.changed.notify_waiters();
    }

    fn done_one(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.changed.notify_waiters();
        }
    }

    /// Item `item` failed at peer `peer` (`why`): queued again for another
    /// peer, or, failed too often or by every peer still there, the end.
    fn failed(&self, mut item: Item, peer: usize, why: String) {
        item.failures += 1;
        item.failed_by |= 1u64 << peer;
        let tried = item.failed_by | self.lost_peers.load(Ordering::Acquire);
        let everyone = tried == self.all_peers.load(Ordering::Relaxed);
        if item.failures >= MAX_ITEM_FAILURES || everyone {
            self.fail(DownloadError::AllSourcesFailed(vec![why]));
            return;
        }
        self.push(item);
    }
}

/// Bytes in flight to one peer.
struct Budget {
    max: u64,
    used: Mutex<u64>,
    freed: Notify,
}

impl Budget {
    fn new(max: u64) -> Self {
        Self {
            max,
            used: Mutex::new(0),
            freed: Notify::new(),
        }
    }

    /// Waits until `n` bytes fit (always at once when nothing is in
    /// flight), and takes them.
    async fn take(&self, n: u64) {
        loop {
            let freed = self.freed.notified();
            {
                let mut used = self.used.lock().expect("budget lock");
                if *used == 0 || *used + n <= self.max {
                    *used += n;
                    return;
                }
            }
            freed.await;
        }
    }

    fn give(&self, n: u64) {
        *self.used.lock().expect("budget lock") -= n;
        self.freed.notify_waiters();
    }
}

/// One request slot of one peer.
#[derive(Clone)]
struct Worker {
    run: Arc<Run>,
    peer: usize,
    conn: Arc<PeerConn>,
    stats: Arc<PeerStats>,
    budget: Arc<Budget>,
}

impl Worker {
    async fn work(self) {
        loop {
            let notified = self.run.changed.notified();
            if self.run.is_over() {
                return;
            }
            let Some(item) = self.run.take(self.peer) else {
                notified.await;
                continue;
            };
            let len = self.expected_len(item.work);
            self.budget.take(len).await;
            let r = self.one(item.work).await;
            self.budget.give(len);
            match r {
                Ok(()) => self.run.done_one(),
                Err(Failure::Fatal(e)) => {
                    self.run.fail(e);
                    return;
                }
                Err(Failure::Peer(why, lost)) => {
                    if lost {
                        // Not this item's fault: back for the others.
                        if self.run.lost(self.peer, &why) {
                            tracing::warn!("lost a peer of the folder download: {why}");
                        }
                        self.run.push(item);
                        return;
                    }
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    self.run.failed(item, self.peer, why);
                }
            }
        }
    }

    fn expected_len(&self, w: Work) -> u64 {
        match w {
            Work::Manifest { .. } => 64 * 1024,
            Work::Chunk { job, .. } => {
                let j = &self.run.jobs[job];
                (peershare_proto::manifest::chunk_size_for(j.size) as u64).min(j.size.max(1))
            }
        }
    }

    async fn one(&self, work: Work) -> Result<(), Failure> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        match work {
            Work::Manifest { job } => self.manifest(job).await,
            Work::Chunk { job, index } => self.chunk(job, index).await,
        }
    }

    async fn manifest(&self, job: usize) -> Result<(), Failure> {
        let id = self.run.jobs[job].id;
        let m = self
            .conn
            .manifest(id)
            .await
            .map_err(|e| self.peer_failure(e))?;
        let run = self.run.clone();
        let m = Arc::new(m);
        let missing = tokio::task::spawn_blocking(move || resume_large(&run.jobs[job], m))
            .await
            .expect("resume does not panic")
            .map_err(Failure::Fatal)?;
        let j = &self.run.jobs[job];
        let resumed: u64 = (0..j.chunks)
            .filter(|i| !missing.contains(i))
            .map(|i| chunk_len(j, i))
            .sum();
        self.run.resumed.fetch_add(resumed, Ordering::Relaxed);
        self.run
            .progress
            .bytes_done
            .fetch_add(resumed, Ordering::Relaxed);
        j.left.store(missing.len() as u32, Ordering::Release);
        if missing.is_empty() {
            self.run
                .progress
                .files_done
                .fetch_add(j.paths, Ordering::Relaxed);
        }
        self.run
            .outstanding
            .fetch_add(missing.len(), Ordering::AcqRel);
        for index in missing {
            self.run.push(Item {
                work: Work::Chunk { job, index },
                failures: 0,
                failed_by: 0,
            });
        }
        Ok(())
    }

    async fn chunk(&self, job: usize, index: u32) -> Result<(), Failure> {
        let id = self.run.jobs[job].id;
        let data = self
            .conn
            .chunk(id, index)
            .await
            .map_err(|e| self.peer_failure(e))?;
        self.run
            .progress
            .received
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let run = self.run.clone();
        let n = data.len() as u64;
        let ok =
            tokio::task::spawn_blocking(move || verify_and_write(&run.jobs[job], index, &data))
                .await
                .expect("a write does not panic")
                .map_err(Failure::Fatal)?;
        if !ok {
            return Err(Failure::Peer(
                format!("{}: a chunk of {id} failed verification", self.conn.addr()),
                false,
            ));
        }
        self.stats.bytes.fetch_add(n, Ordering::Relaxed);
        self.run.progress.bytes_done.fetch_add(n, Ordering::Relaxed);
        let j = &self.run.jobs[job];
        if j.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.run
                .progress
                .files_done
                .fetch_add(j.paths, Ordering::Relaxed);
        }
        Ok(())
    }

    fn peer_failure(&self, e: PeerError) -> Failure {
        let lost = self.conn.is_closed();
        Failure::Peer(e.to_string(), lost)
    }
}

/// How one item failed.
enum Failure {
    /// The peer failed it (`true`: the connection is gone).
    Peer(String, bool),
    /// Nothing else will do better (the disk).
    Fatal(DownloadError),
}

fn chunk_len(j: &Job, index: u32) -> u64 {
    let cs = peershare_proto::manifest::chunk_size_for(j.size) as u64;
    cs.min(j.size - index as u64 * cs)
}

/// Checks `data` as chunk `index` of `job` and writes it in place. False:
/// it failed verification (nothing written).
fn verify_and_write(job: &Job, index: u32, data: &Bytes) -> Result<bool, DownloadError> {
    if job.small() {
        if data.len() as u64 != job.size || Manifest::from_bytes(data).id() != job.id {
            return Ok(false);
        }
        let f = open_for_write(&job.path)?;
        f.set_len(0).map_err(|e| disk(&job.path, e))?;
        f.write_all_at(data, 0).map_err(|e| disk(&job.path, e))?;
        return Ok(true);
    }
    let m = job.manifest.lock().expect("manifest lock").clone();
    let Some(m) = m else { return Ok(false) };
    if !m.verify_chunk(index, data) {
        return Ok(false);
    }
    let f = open_for_write(&job.path)?;
    let offset = index as u64 * m.chunk_size() as u64;
    f.write_all_at(data, offset)
        .map_err(|e| disk(&job.path, e))?;
    Ok(true)
}

/// A large file's manifest kept, its existing chunks verified: the
/// indexes still missing. The file is made its full length.
fn resume_large(job: &Job, m: Arc<Manifest>) -> Result<Vec<u32>, DownloadError> {
    *job.manifest.lock().expect("manifest lock") = Some(m.clone());
    let f = open_for_write(&job.path)?;
    let len = f.metadata().map_err(|e| disk(&job.path, e))?.len();
    if len != job.size {
        f.set_len(job.size).map_err(|e| disk(&job.path, e))?;
    }
    let mut missing = Vec::new();
    let mut buf = vec![0u8; m.chunk_size() as usize];
    let cs = m.chunk_size() as u64;
    let f = open_nofollow(&job.path).map_err(|e| disk(&job.path, e))?;
    for i in 0..m.chunk_count() {
        let n = chunk_len(job, i) as usize;
        let start = i as u64 * cs;
        // Bytes past what an earlier run wrote read as zeros: they fail.
        let ok = start < len
            && f.read_exact_at(&mut buf[..n], start).is_ok()
            && m.verify_chunk(i, &buf[..n]);
        if !ok {
            missing.push(i);
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_patterns_match_names_at_any_depth_paths_from_the_top_and_folders_whole() {
        let only = Only::new(&["*.jpg".into(), "raw".into(), "2024/b/*.txt".into()]).unwrap();
        for yes in [
            "a.jpg",
            "x/y/z.jpg",
            "raw/p1.cr2",
            "deep/raw/p2.cr2",
            "2024/b/n.txt",
        ] {
            assert!(only.matches(yes), "{yes}");
        }
        for no in [
            "a.jpeg",
            "rawish/p.cr2",
            "2024/b/c/n.txt",
            "2025/b/n.txt",
            "b/n.txt",
        ] {
            assert!(!only.matches(no), "{no}");
        }
        assert!(Only::new(&[]).unwrap().matches("anything/at/all"));
        let err = Only::new(&["a[".into()]).err().unwrap().to_string();
        assert!(err.contains("--only \"a[\""), "{err}");
    }

    #[test]
    fn at_most_max_only_patterns() {
        let ok: Vec<String> = (0..MAX_ONLY_PATTERNS).map(|i| format!("f{i}")).collect();
        assert!(Only::new(&ok).is_ok());
        let over: Vec<String> = (0..=MAX_ONLY_PATTERNS).map(|i| format!("f{i}")).collect();
        assert!(matches!(
            Only::new(&over),
            Err(DownloadError::BadPattern { .. })
        ));
    }

    fn run_of(items: usize, peers: usize) -> Arc<Run> {
        let jobs: Vec<Job> = (0..items)
            .map(|i| Job {
                id: FileId([i as u8; 32]),
                size: 10,
                path: PathBuf::from(format!("/nonexistent/{i}")),
                chunks: 1,
                manifest: Mutex::new(None),
                left: AtomicU32::new(1),
                paths: 1,
            })
            .collect();
        let run = Run::new(Arc::new(jobs), Arc::default(), 0);
        let mask = if peers == 64 {
            u64::MAX
        } else {
            (1u64 << peers) - 1
        };
        run.all_peers.store(mask, Ordering::Relaxed);
        run
    }

    #[test]
    fn an_item_goes_to_another_peer_until_every_peer_failed_it() {
        let run = run_of(1, 3);
        let item = run.take(0).unwrap();
        run.failed(item, 0, "corrupt".into());
        assert!(!run.is_over(), "two peers have not tried it");
        assert!(run.take(0).is_none(), "not back to the peer that failed it");
        let item = run.take(1).unwrap();
        run.failed(item, 1, "corrupt".into());
        let item = run.take(2).unwrap();
        run.failed(item, 2, "corrupt".into());
        assert!(run.is_over());
        assert!(matches!(
            run.fatal.lock().unwrap().take(),
            Some(DownloadError::AllSourcesFailed(_))
        ));
    }

    #[test]
    fn an_item_fails_the_download_after_max_item_failures_whatever_the_peers() {
        let run = run_of(1, MAX_FOLDER_PEERS);
        for peer in 0..MAX_ITEM_FAILURES as usize {
            assert!(!run.is_over(), "after {peer} failures");
            let item = run.take(peer).unwrap();
            run.failed(item, peer, "timed out".into());
        }
        assert!(run.is_over(), "{MAX_ITEM_FAILURES} failures end it");
    }

    #[test]
    fn losing_the_last_peer_that_had_not_failed_an_item_ends_the_download() {
        let run = run_of(2, 2);
        let item = run.take(0).unwrap();
        run.failed(item, 0, "corrupt".into());
        assert!(run.lost(1, "gone"));
        assert!(!run.lost(1, "gone"), "once");
        assert!(run.is_over(), "peer 0 failed an item and peer 1 is gone");
    }

    #[test]
    fn a_peer_has_at_most_its_byte_budget_in_flight_but_always_one_request() {
        use futures_util::FutureExt;
        let b = Budget::new(BYTES_PER_PEER);
        assert!(b.take(BYTES_PER_PEER - 1).now_or_never().is_some());
        assert!(b.take(2).now_or_never().is_none(), "over the budget: waits");
        assert!(b.take(1).now_or_never().is_some(), "up to it: at once");
        b.give(BYTES_PER_PEER);
        // Nothing in flight: even a request larger than the budget goes.
        assert!(b.take(BYTES_PER_PEER * 2).now_or_never().is_some());
        assert!(b.take(1).now_or_never().is_none());
    }

    #[test]
    fn the_part_folder_sits_beside_the_target() {
        let l = Layout::new(Path::new("/d/photos"));
        assert_eq!(l.part, Path::new("/d/photos.peershare-part"));
        assert_eq!(l.tree, Path::new("/d/photos.peershare-part/tree"));
        assert_eq!(l.target(), Path::new("/d/photos"));
    }

    #[test]
    fn a_part_folder_of_another_folder_is_cleared_and_one_of_this_folder_kept() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("t");
        let l = Layout::new(&target);
        let (a, b) = (FolderId([1; 32]), FolderId([2; 32]));
        l.prepare(a, false).unwrap();
        fs::write(l.tree.join("kept"), b"x").unwrap();
        l.prepare(a, false).unwrap();
        assert!(l.tree.join("kept").exists(), "same folder: kept for resume");
        l.prepare(b, false).unwrap();
        assert!(
            !l.tree.join("kept").exists(),
            "another folder's files are never mixed in"
        );
        assert_eq!(l.marker_id().unwrap(), Some(b));
        // Killed after the rename: the marker without a tree, the target there.
        fs::rename(&l.tree, &target).unwrap();
        assert!(l.finished_before(b, &target).unwrap().is_some());
        assert!(!l.part.exists());
    }
}
