//! The library: what this node shares, kept in its data directory.
//!
//! ```text
//! <data-dir>/library.db           entries and downloads in progress (SQLite, see `db`)
//! <data-dir>/library.db-wal, -shm  its write-ahead log and the log's index
//! <data-dir>/library.json.migrated the library of an older release, once imported
//! <data-dir>/library.lock          trust list writers hold an exclusive flock while they edit
//! <data-dir>/manifests/<id>.manifest   canonical manifest encodings, content-addressed
//! <data-dir>/node.key              this node's private key (mode 0600, see crate::identity)
//! <data-dir>/api.token             the local API's token (mode 0600, see crate::api::auth)
//! <data-dir>/node.json             where the running node's API is (crate::api::nodefile)
//! <data-dir>/trust.json            node IDs trusted by `serve --trusted-only`
//! ```
//!
//! Files are hashed in place and served from where they are; nothing is
//! copied. Invariants: a reader (the server) only ever sees whole edits,
//! never half of one (each is one SQLite transaction, in WAL mode, so
//! readers never wait for writers); two writers never interleave (SQLite's
//! write lock, taken at the start of each edit); an edit writes the rows it
//! changes, not the library (so sharing one file into a large library, or
//! each file of a folder download finishing, costs about the same whatever
//! the library's size), and is durable when it returns; a manifest file is
//! written, synced and renamed before the entry naming it is published. An
//! entry records the size and mtime of the file when it was hashed; a file
//! whose metadata differ now is *withdrawn* (not listed, not served) until
//! shared again.
//!
//! The library also lists this node's downloads in progress
//! ([`Download`]): a server on the same data directory offers their
//! verified chunks to others (partial source), reading which ones from the
//! download's state file, so a downloader serves while it downloads even
//! when `get` and `serve` are separate processes. A finished download
//! becomes an ordinary shared entry.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use peershare_proto::id::{ID_LEN, sha256};
use peershare_proto::manifest::{Manifest, chunk_count, chunk_size_for};
use peershare_proto::wire::check_shared_name;
use peershare_proto::{FileId, NodeId};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

mod db;

pub use db::{BUSY_TIMEOUT, SCHEMA_VERSION};

/// The library of releases before `library.db`, imported on first open.
const LIBRARY_FILE: &str = "library.json";
const LOCK_FILE: &str = "library.lock";
const MANIFEST_DIR: &str = "manifests";
const TRUST_FILE: &str = "trust.json";
/// Version of the `trust.json` layout.
const TRUST_FORMAT: u32 = 1;
/// Most nodes on a trust list; `trust add` refuses more.
pub const MAX_TRUSTED: usize = 10_000;

/// What to do about a damaged file of the data dir, per file
/// ([`StoreError::Corrupt`]'s `remedy`).
pub mod remedy {
    /// `library.db` (or a `library.json` being imported).
    pub const LIBRARY: &str =
        "move it away to start with an empty library (then share your files again)";
    /// `trust.json`.
    pub const TRUST: &str = "fix it, or move it away to start with an empty trust list \
         (then `peershare trust add` the nodes you trust again)";
    /// A stored manifest.
    pub const MANIFEST: &str = "delete it, then share the file again";
    /// `node.key`.
    pub const KEY: &str = "put back a copy of the key if you have one, or delete it to make \
         a new node ID (nodes that trust this one must then trust the new ID)";
    /// `api.token`.
    pub const TOKEN: &str = "delete it: the node makes a new token at its next start \
         (clients read the new one from the file)";
}

/// A node on the trust list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trusted {
    /// A label for people; may be empty.
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TrustFile {
    format: u32,
    /// Hex node ID to its entry.
    nodes: BTreeMap<String, Trusted>,
}
/// Version of the `library.json` layout (imported once), and of
/// [`Snapshot::format`].
const LIBRARY_FORMAT: u32 = 1;

/// One shared file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Hex file ID.
    pub id: String,
    /// Name shown to peers (`/`-separated, relative).
    pub name: String,
    /// Absolute path of the original file.
    pub path: PathBuf,
    pub size: u64,
    /// Modification time when hashed, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Left out of the catalog: served only to peers that ask for its ID.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unlisted: bool,
}

impl Entry {
    /// The entry of file `id` at `path`, as `meta` (a fresh stat of it)
    /// shows it now.
    pub fn of(
        id: String,
        name: String,
        path: PathBuf,
        meta: &fs::Metadata,
        unlisted: bool,
    ) -> Self {
        Self {
            id,
            name,
            path,
            size: meta.len(),
            mtime_ns: mtime_ns(meta),
            unlisted,
        }
    }

    pub fn file_id(&self) -> Option<FileId> {
        self.id.parse().ok()
    }

    /// True when the file on disk still has the size and mtime it had when
    /// hashed. `meta` is a fresh stat of the file.
    pub fn matches(&self, meta: &fs::Metadata) -> bool {
        meta.is_file() && meta.len() == self.size && mtime_ns(meta) == self.mtime_ns
    }
}

/// The whole library as stored, as one consistent copy in memory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u32,
    /// Incremented by every change.
    pub revision: u64,
    /// Keyed by absolute path: sharing one path twice is idempotent.
    pub files: BTreeMap<PathBuf, Entry>,
    /// Downloads in progress, keyed by the absolute path of their output.
    #[serde(default)]
    pub downloads: BTreeMap<PathBuf, Download>,
    /// Where each file ID is among `files` and `downloads`, so that a
    /// lookup by ID costs O(entries with that ID), not O(library). Built on
    /// the first lookup ([`Library::snapshot`] builds it as it loads one)
    /// and never updated: a snapshot must not be looked up by ID after it
    /// changed (the library's own edits never do).
    #[serde(skip)]
    index: OnceLock<IdIndex>,
}

/// A snapshot's keys by file ID (hex).
#[derive(Debug, Clone, Default)]
struct IdIndex {
    files: HashMap<String, Vec<PathBuf>>,
    downloads: HashMap<String, Vec<PathBuf>>,
}

impl IdIndex {
    fn of(snap: &Snapshot) -> Self {
        let mut index = Self::default();
        for (key, e) in &snap.files {
            index
                .files
                .entry(e.id.clone())
                .or_default()
                .push(key.clone());
        }
        for (key, d) in &snap.downloads {
            let keys = index.downloads.entry(d.id.clone()).or_default();
            keys.push(key.clone());
        }
        index
    }
}

/// A download in progress, as a partial source of its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Download {
    /// Hex file ID.
    pub id: String,
    /// Name shown to peers.
    pub name: String,
    pub size: u64,
    /// The part file the chunks are written to.
    pub part: PathBuf,
    /// Its state file: which chunks are verified and on disk.
    pub state: PathBuf,
    /// Kept out of the catalog (it came from an unlisted ticket), and so is
    /// the finished file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unlisted: bool,
}

impl Download {
    pub fn file_id(&self) -> Option<FileId> {
        self.id.parse().ok()
    }
}

impl Snapshot {
    /// Shared entries with this file ID (hex; several paths may hold the
    /// same content), found through the index.
    pub fn by_id<'a>(&'a self, id: &str) -> impl Iterator<Item = &'a Entry> + 'a {
        let keys = self.index().files.get(id).map_or(&[][..], Vec::as_slice);
        keys.iter().filter_map(|k| self.files.get(k))
    }

    /// Downloads in progress of this file ID (hex), found through the
    /// index.
    pub fn downloads_of<'a>(&'a self, id: &str) -> impl Iterator<Item = &'a Download> + 'a {
        let keys = self
            .index()
            .downloads
            .get(id)
            .map_or(&[][..], Vec::as_slice);
        keys.iter().filter_map(|k| self.downloads.get(k))
    }

    fn index(&self) -> &IdIndex {
        self.index.get_or_init(|| IdIndex::of(self))
    }

    /// How many entries a server's catalog of this library lists: one per
    /// name and file ID among the listed files, and one per name and file
    /// ID among the listed downloads in progress of content no file shares
    /// (listed or not): the server's rule, `server::catalog_list`. Folder
    /// entries are the folder store's, not counted here. At most
    /// [`MAX_CATALOG_ENTRIES`](peershare_proto::wire::MAX_CATALOG_ENTRIES):
    /// `share` and `begin_download` refuse more (the database keeps this
    /// count per edit, from the file IDs the edit touched: `store::db`).
    pub fn listed(&self) -> usize {
        let listable = |name: &str| check_shared_name(name).is_ok();
        let mut listed = std::collections::HashSet::new();
        let mut shared = std::collections::HashSet::new();
        for e in self.files.values() {
            if let Some(id) = e.file_id() {
                shared.insert(id);
                if !e.unlisted && listable(&e.name) {
                    listed.insert((e.name.as_str(), id));
                }
            }
        }
        for d in self.downloads.values() {
            if let Some(id) = d.file_id()
                && !d.unlisted
                && listable(&d.name)
                && !shared.contains(&id)
            {
                listed.insert((d.name.as_str(), id));
            }
        }
        listed.len()
    }
}

/// What `share` did with one file.
#[derive(Debug, Clone)]
pub struct Shared {
    pub entry: Entry,
    /// False when the file was already shared unchanged (nothing re-hashed).
    pub hashed: bool,
}

fn mtime_ns(meta: &fs::Metadata) -> i128 {
    meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
}

/// Handle on a data directory. Cheap to clone (clones share the database's
/// connections); the server keeps one, looks entries up by file ID in the
/// database, and reloads its [`Snapshot`] only when the revision changed.
#[derive(Debug, Clone)]
pub struct Library {
    dir: PathBuf,
    db: Arc<db::Db>,
    cache: Arc<Mutex<Option<Arc<Snapshot>>>>,
    /// The trust list's node IDs, by the stamp of `trust.json` they were
    /// read at: a server asks for every connection.
    trust_cache: Arc<Mutex<Option<(FileStamp, TrustedSet)>>>,
}

/// A file's inode, mtime (ns) and length: changes when it is replaced.
type FileStamp = (u64, i128, u64);

/// `path`'s stamp; all zero while it does not exist.
fn file_stamp(path: &Path) -> Result<FileStamp, StoreError> {
    match fs::metadata(path) {
        Ok(m) => Ok((m.ino(), mtime_ns(&m), m.len())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((0, 0, 0)),
        Err(e) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}
type TrustedSet = Arc<std::collections::BTreeSet<NodeId>>;

impl Library {
    /// Opens (creating if needed) the data directory `dir`. On first open,
    /// a `library.json` of an older release is imported in one transaction
    /// and kept as `library.json.migrated`; a damaged one is
    /// [`StoreError::Corrupt`] and stays where it is. A database of a
    /// later release is refused ([`StoreError::NewerLibrary`]), untouched.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(dir.join(MANIFEST_DIR)).map_err(StoreError::io(&dir))?;
        let db = db::Db::open(dir.join(db::DB_FILE), &dir.join(LIBRARY_FILE))?;
        Ok(Self {
            dir,
            db: Arc::new(db),
            cache: Arc::new(Mutex::new(None)),
            trust_cache: Arc::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn manifest_path(&self, id: &FileId) -> PathBuf {
        self.dir.join(MANIFEST_DIR).join(format!("{id}.manifest"))
    }

    /// This node's key pair ([`crate::identity`]), created on first use.
    pub fn identity(&self) -> Result<crate::Identity, StoreError> {
        crate::Identity::load_or_create(&self.dir)
    }

    /// This node's ID: its public key.
    pub fn node_id(&self) -> Result<NodeId, StoreError> {
        Ok(self.identity()?.node_id())
    }

    /// The trust list: nodes `serve --trusted-only` serves.
    pub fn trusted(&self) -> Result<BTreeMap<NodeId, Trusted>, StoreError> {
        let file = self.read_trust()?;
        Ok(file
            .nodes
            .into_iter()
            .filter_map(|(id, t)| Some((id.parse().ok()?, t)))
            .collect())
    }

    /// True when `node` is on the trust list. One `stat` when the list has
    /// not changed since the last call; read again when it has.
    pub fn is_trusted(&self, node: &NodeId) -> Result<bool, StoreError> {
        let stamp = file_stamp(&self.dir.join(TRUST_FILE))?;
        if let Some((at, ids)) = self.trust_cache.lock().expect("trust cache lock").as_ref()
            && *at == stamp
        {
            return Ok(ids.contains(node));
        }
        // Read outside the lock, as in `snapshot`.
        let ids: TrustedSet = Arc::new(self.trusted()?.into_keys().collect());
        let found = ids.contains(node);
        *self.trust_cache.lock().expect("trust cache lock") = Some((stamp, ids));
        Ok(found)
    }

    /// Adds `node` to the trust list (or renames it). False if it was
    /// already there under the same name.
    pub fn trust(&self, node: NodeId, name: &str) -> Result<bool, StoreError> {
        let _lock = self.lock()?;
        let mut file = self.read_trust()?;
        let key = node.to_string();
        if !file.nodes.contains_key(&key) && file.nodes.len() >= MAX_TRUSTED {
            return Err(StoreError::TooManyTrusted(MAX_TRUSTED));
        }
        let entry = Trusted {
            name: name.to_string(),
        };
        if file.nodes.get(&key) == Some(&entry) {
            return Ok(false);
        }
        file.nodes.insert(key, entry);
        self.write_trust(file)?;
        Ok(true)
    }

    /// Removes `node` from the trust list. False if it was not there.
    pub fn distrust(&self, node: NodeId) -> Result<bool, StoreError> {
        let _lock = self.lock()?;
        let mut file = self.read_trust()?;
        if file.nodes.remove(&node.to_string()).is_none() {
            return Ok(false);
        }
        self.write_trust(file)?;
        Ok(true)
    }

    fn read_trust(&self) -> Result<TrustFile, StoreError> {
        let path = self.dir.join(TRUST_FILE);
        // Bytes, not text: a file that is not UTF-8 is damaged like any
        // other that does not parse.
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TrustFile::default()),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let damaged = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
            remedy: remedy::TRUST,
        };
        let file: TrustFile = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        if file.format != TRUST_FORMAT {
            return Err(damaged(format!("unknown format {}", file.format)));
        }
        // Keys as written by hand may be upper case or padded: one
        // canonical key per node, so `distrust` finds what `trusted` sees.
        let mut nodes = BTreeMap::new();
        for (key, t) in file.nodes {
            let id: NodeId = key
                .parse()
                .map_err(|_| damaged(format!("{key:?} is not a node ID")))?;
            nodes.entry(id.to_string()).or_insert(t);
        }
        Ok(TrustFile {
            format: file.format,
            nodes,
        })
    }

    fn write_trust(&self, mut file: TrustFile) -> Result<(), StoreError> {
        file.format = TRUST_FORMAT;
        let text = serde_json::to_string_pretty(&file).expect("a trust list serialises");
        write_atomic(&self.dir.join(TRUST_FILE), text.as_bytes())
    }

    fn lock(&self) -> Result<File, StoreError> {
        let path = self.dir.join(LOCK_FILE);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::io(&path))?;
        f.lock().map_err(StoreError::io(&path))?;
        Ok(f)
    }

    /// The current library, read again only when its revision changed.
    ///
    /// The cache's lock is not held while reading: a slow read holds up
    /// its own caller, not every request of a server (callers that miss at
    /// once may each read; the last one's copy stays). A server looks
    /// entries up with [`Library::entries_by_id`] instead, which reads only
    /// those.
    pub fn snapshot(&self) -> Result<Arc<Snapshot>, StoreError> {
        let revision = self.db.revision()?;
        if let Some(c) = self.cache.lock().expect("library cache lock").as_ref()
            && c.revision == revision
        {
            return Ok(c.clone());
        }
        let snapshot = Arc::new(self.db.load()?);
        // Indexed once per load, so that lookups by ID are cheap.
        snapshot.index();
        *self.cache.lock().expect("library cache lock") = Some(snapshot.clone());
        Ok(snapshot)
    }

    /// The library's revision (as [`Snapshot::revision`]): one indexed
    /// read, whatever the library's size. It increases with every change.
    pub fn revision(&self) -> Result<u64, StoreError> {
        self.db.revision()
    }

    /// The shared entries of file `id` (several paths may hold the same
    /// content), by path: one indexed read, whatever the library's size.
    pub fn entries_by_id(&self, id: &FileId) -> Result<Vec<Entry>, StoreError> {
        self.db.entries_by_id(id)
    }

    /// The downloads in progress of file `id`, with their outputs, by
    /// output: one indexed read, whatever the library's size.
    pub fn downloads_by_id(&self, id: &FileId) -> Result<Vec<(PathBuf, Download)>, StoreError> {
        self.db.downloads_by_id(id)
    }

    /// The stored manifest of `id`, if this library has it.
    pub fn manifest(&self, id: &FileId) -> Result<Option<Manifest>, StoreError> {
        let path = self.manifest_path(id);
        match fs::read(&path) {
            Ok(bytes) => Manifest::decode_verified(&bytes, id)
                .map(Some)
                .map_err(|source| StoreError::Manifest { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// Raw canonical encoding of the manifest of `id`, for serving.
    pub fn manifest_bytes(&self, id: &FileId) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.manifest_path(id);
        match fs::read(&path) {
            Ok(b) if sha256(&b) == id.0 => Ok(Some(b)),
            Ok(_) => Err(StoreError::Corrupt {
                path,
                reason: "manifest does not hash to its file ID".into(),
                remedy: remedy::MANIFEST,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// Shares files and folders (recursively; symbolic links inside folders
    /// are skipped, never followed). Files already shared and unchanged
    /// are not hashed again. `progress` counts bytes hashed; `total` is set
    /// to the bytes that need hashing before hashing starts.
    pub fn share(
        &self,
        paths: &[PathBuf],
        progress: &ShareProgress,
    ) -> Result<Vec<Shared>, StoreError> {
        self.share_as(paths, progress, false)
    }

    /// [`Library::share`], listed in the catalog or not (`unlisted`: fetched
    /// only by ID). Sharing an already shared file again sets its listing.
    pub fn share_as(
        &self,
        paths: &[PathBuf],
        progress: &ShareProgress,
        unlisted: bool,
    ) -> Result<Vec<Shared>, StoreError> {
        let walked = crate::walk::find(paths, valid_name)?;
        walked.warn_symlinks();
        self.share_found(walked, progress, unlisted)
    }

    /// [`Library::share_as`] of what [`crate::walk::find`] found.
    pub fn share_found(
        &self,
        walked: crate::walk::Found,
        progress: &ShareProgress,
        unlisted: bool,
    ) -> Result<Vec<Shared>, StoreError> {
        // Never the data dir itself: it holds this node's private key (and
        // whom it trusts). A file named there is refused; a folder holding
        // the data dir is shared without it.
        let data_dir = fs::canonicalize(&self.dir).map_err(StoreError::io(&self.dir))?;
        // A file given directly is named without a folder (no `/`).
        for (abs, name) in &walked.files {
            if abs.starts_with(&data_dir) && !name.contains('/') {
                return Err(StoreError::InDataDir(abs.clone()));
            }
        }
        for f in &walked.folders {
            if f.root.starts_with(&data_dir) {
                return Err(StoreError::InDataDir(f.root.clone()));
            }
        }
        let mut found = walked.files;
        let before = found.len();
        found.retain(|(path, _)| !path.starts_with(&data_dir));
        if found.len() < before {
            tracing::warn!(
                "not sharing {} file(s) in the data dir {}",
                before - found.len(),
                data_dir.display()
            );
        }
        let current = self.db.files_at(found.iter().map(|(p, _)| p.as_path()))?;
        let mut todo = Vec::new();
        let mut new_entries = Vec::new();
        let mut results: Vec<Option<Shared>> = Vec::with_capacity(found.len());
        for (path, name) in found {
            let meta = fs::metadata(&path).map_err(StoreError::io(&path))?;
            match current.get(&path) {
                Some(e) if e.matches(&meta) && e.name == name && self.manifest_path_exists(e) => {
                    let entry = Entry {
                        unlisted,
                        ..e.clone()
                    };
                    if entry != *e {
                        new_entries.push(entry.clone());
                    }
                    results.push(Some(Shared {
                        entry,
                        hashed: false,
                    }));
                }
                _ => {
                    todo.push((results.len(), path, name, meta));
                    results.push(None);
                }
            }
        }
        progress
            .total
            .store(todo.iter().map(|t| t.3.len()).sum(), Ordering::Relaxed);
        let jobs: Vec<(PathBuf, u64)> = todo.iter().map(|t| (t.1.clone(), t.3.len())).collect();
        let manifests = hash_files(&jobs, &progress.done)?;
        // Manifests are written unsynced and synced together (one syncfs)
        // before the edit that refers to them commits: two fsyncs per
        // manifest made sharing 10,000 small files take 20,000 of them.
        let mut wrote = false;
        for ((slot, path, name, before), manifest) in todo.into_iter().zip(manifests) {
            let after = fs::metadata(&path).map_err(StoreError::io(&path))?;
            if after.len() != before.len() || mtime_ns(&after) != mtime_ns(&before) {
                return Err(StoreError::ChangedWhileHashing { path });
            }
            let id = manifest.id();
            if !self.manifest_is_whole(&id) {
                write_unsynced(&self.manifest_path(&id), &manifest.encode())?;
                wrote = true;
            }
            let entry = Entry {
                id: id.to_string(),
                name,
                path,
                size: before.len(),
                mtime_ns: mtime_ns(&before),
                unlisted,
            };
            new_entries.push(entry.clone());
            results[slot] = Some(Shared {
                entry,
                hashed: true,
            });
        }
        if wrote {
            syncfs(&self.dir.join(MANIFEST_DIR))?;
        }
        if !new_entries.is_empty() {
            self.db.edit(true, |ed| {
                for e in &new_entries {
                    ed.put_file(e)?;
                }
                Ok(())
            })?;
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every slot filled"))
            .collect())
    }

    /// Publishes `entries` as they are, in one write: nothing hashed or
    /// checked, not even the catalog's length. For tests that need a
    /// library too large to build with `share` (which syncs every manifest
    /// it writes) or one an older release may have left.
    #[doc(hidden)]
    pub fn insert_unchecked(&self, entries: Vec<Entry>) -> Result<(), StoreError> {
        self.db.edit(false, |ed| {
            for e in &entries {
                ed.put_file(e)?;
            }
            Ok(())
        })
    }

    /// [`Library::insert_unchecked`] for records of downloads in progress
    /// (keyed by output path, taken as it is).
    #[doc(hidden)]
    pub fn insert_downloads_unchecked(
        &self,
        downloads: Vec<(PathBuf, Download)>,
    ) -> Result<(), StoreError> {
        self.db.edit(false, |ed| {
            for (out, d) in &downloads {
                ed.put_download(out, d)?;
            }
            Ok(())
        })
    }

    /// True when the manifest of `id` is on disk and hashes to `id` (one
    /// left torn by a crash before the share that wrote it committed is
    /// written again).
    fn manifest_is_whole(&self, id: &FileId) -> bool {
        matches!(self.manifest_bytes(id), Ok(Some(_)))
    }

    fn manifest_path_exists(&self, e: &Entry) -> bool {
        e.file_id()
            .is_some_and(|id| self.manifest_path(&id).exists())
    }

    /// Records a download in progress (replacing any earlier record for the
    /// same output), with its manifest, so a server on this data directory
    /// can offer its verified chunks.
    pub fn begin_download(
        &self,
        output: &Path,
        manifest: &Manifest,
        download: Download,
    ) -> Result<(), StoreError> {
        valid_name(&download.name)?;
        let mpath = self.manifest_path(&manifest.id());
        if !mpath.exists() {
            write_atomic(&mpath, &manifest.encode())?;
        }
        let key = download_key(output);
        if self.db.download_at(&key)?.as_ref() == Some(&download) {
            return Ok(());
        }
        self.db
            .edit(true, |ed| ed.put_download(&key, &download).map(|_| ()))
    }

    /// Forgets the download to `output`; with `share`, the finished file
    /// there becomes a shared entry (its manifest is already stored, so
    /// nothing is hashed again). The file's metadata are taken now: it must
    /// be the verified download, unchanged.
    pub fn end_download(&self, output: &Path, share: bool) -> Result<Option<Entry>, StoreError> {
        let key = download_key(output);
        let Some(d) = self.db.download_at(&key)? else {
            return Ok(None);
        };
        let entry = if share {
            let path = fs::canonicalize(output).map_err(StoreError::io(output))?;
            let meta = fs::metadata(&path).map_err(StoreError::io(&path))?;
            Some(Entry {
                id: d.id.clone(),
                name: d.name.clone(),
                path,
                size: meta.len(),
                mtime_ns: mtime_ns(&meta),
                unlisted: d.unlisted,
            })
        } else {
            None
        };
        // Never refused for the catalog's length: the content was listed
        // as a download already (or is unlisted both ways).
        self.db.edit(false, |ed| {
            ed.take_download(&key)?;
            if let Some(e) = &entry {
                ed.put_file(e)?;
            }
            Ok(())
        })?;
        Ok(entry)
    }

    /// Removes entries named by file ID (hex) or by path (a file, or a
    /// folder: everything under it), and withdraws the records of downloads
    /// in progress named by file ID or by output path (a server stops
    /// offering their chunks). Never touches the files. A target that
    /// matches nothing is an error and nothing is removed.
    pub fn unshare(&self, targets: &[String]) -> Result<Unshared, StoreError> {
        let mut selectors = Vec::new();
        for t in targets {
            let sel = match t.parse::<FileId>() {
                Ok(id) => db::Selector::Id(id.0),
                Err(_) => {
                    // (A download's output may not exist yet: its folder does.)
                    let p = Path::new(t);
                    db::Selector::Path(fs::canonicalize(p).unwrap_or_else(|_| download_key(p)))
                }
            };
            selectors.push((t, sel));
        }
        self.db.edit(false, |ed| {
            // Every target is checked before anything is removed.
            for (t, sel) in &selectors {
                if !ed.any(sel)? {
                    return Err(StoreError::NotShared((*t).clone()));
                }
            }
            let mut removed = Unshared::default();
            for (_, sel) in &selectors {
                let (files, downloads) = ed.remove(sel)?;
                removed.files.extend(files);
                removed.downloads.extend(downloads);
            }
            removed.files.sort_by(|a, b| a.path.cmp(&b.path));
            removed.downloads.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(removed)
        })
    }
}

/// What [`Library::unshare`] removed.
#[derive(Debug, Default)]
pub struct Unshared {
    pub files: Vec<Entry>,
    /// Download records withdrawn, with their output paths.
    pub downloads: Vec<(PathBuf, Download)>,
}

/// How a download's output path is keyed: its folder resolved (symbolic
/// links, `..`), then its name, so `unshare` finds it by any spelling of the
/// path, before the file itself exists.
fn download_key(output: &Path) -> PathBuf {
    let abs = absolute(output);
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => fs::canonicalize(dir)
            .map(|d| d.join(name))
            .unwrap_or(abs.clone()),
        _ => abs,
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Counters a UI can poll while [`Library::share`] hashes.
#[derive(Debug, Default)]
pub struct ShareProgress {
    pub total: AtomicU64,
    pub done: AtomicU64,
}

/// Refuses a name no node may list ([`check_shared_name`]): the library
/// holds only names its catalog can carry and peers accept.
pub fn valid_name(name: &str) -> Result<(), StoreError> {
    check_shared_name(name).map_err(|why| StoreError::BadName {
        name: name.to_owned(),
        why,
    })
}

/// Hashes every chunk of every file on all cores. Work is one chunk at a
/// time from a shared cursor over all files, so one large file and many
/// small ones both keep every core busy. Memory: one chunk buffer per
/// thread.
pub fn hash_files(
    files: &[(PathBuf, u64)],
    progress: &AtomicU64,
) -> Result<Vec<Manifest>, StoreError> {
    let mut starts = Vec::with_capacity(files.len());
    let mut total_chunks = 0u64;
    for (_, size) in files {
        starts.push(total_chunks);
        total_chunks += chunk_count(*size, chunk_size_for(*size));
    }
    let hashes: Vec<Mutex<Vec<[u8; ID_LEN]>>> = files
        .iter()
        .map(|(_, s)| {
            Mutex::new(vec![
                [0; ID_LEN];
                chunk_count(*s, chunk_size_for(*s)) as usize
            ])
        })
        .collect();
    let cursor = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let first_error: Mutex<Option<StoreError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.min(total_chunks.max(1) as usize) {
            s.spawn(|| {
                let mut open: Option<(usize, File)> = None;
                let mut buf = Vec::new();
                loop {
                    let g = cursor.fetch_add(1, Ordering::Relaxed) as u64;
                    if g >= total_chunks || first_error.lock().expect("lock").is_some() {
                        return;
                    }
                    let f = starts.partition_point(|&st| st <= g) - 1;
                    let chunk = g - starts[f];
                    let (path, size) = &files[f];
                    let cs = chunk_size_for(*size) as u64;
                    let len = (cs.min(size - chunk * cs)) as usize;
                    let res = (|| {
                        if open.as_ref().map(|o| o.0) != Some(f) {
                            open = Some((f, File::open(path)?));
                        }
                        buf.resize(len, 0);
                        let file = &open.as_ref().expect("just opened").1;
                        file.read_exact_at(&mut buf, chunk * cs)
                    })();
                    match res {
                        Ok(()) => {
                            hashes[f].lock().expect("lock")[chunk as usize] = sha256(&buf);
                            progress.fetch_add(len as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            let err = if e.kind() == io::ErrorKind::UnexpectedEof {
                                StoreError::ChangedWhileHashing { path: path.clone() }
                            } else {
                                StoreError::Io {
                                    path: path.clone(),
                                    source: e,
                                }
                            };
                            first_error.lock().expect("lock").get_or_insert(err);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("lock") {
        return Err(e);
    }
    files
        .iter()
        .zip(hashes)
        .map(|((path, size), h)| {
            Manifest::new(*size, h.into_inner().expect("lock")).map_err(|source| {
                StoreError::Manifest {
                    path: path.clone(),
                    source,
                }
            })
        })
        .collect()
}

/// Writes `bytes` to `path` so that `path` is always either the old or the
/// new content: temp file in the same directory, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_renamed(path, bytes, true)
}

/// [`write_atomic`] without the syncs: a whole file or none under `path`
/// once it is on disk, for a caller that syncs many such files at once
/// ([`syncfs`]) before anything refers to them.
fn write_unsynced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_renamed(path, bytes, false)
}

/// `bytes` into a new temporary file beside `path`, renamed to `path`;
/// with `sync`, the file is synced before the rename and the directory
/// after it.
fn write_renamed(path: &Path, bytes: &[u8], sync: bool) -> Result<(), StoreError> {
    let (dir, tmp) = temp_beside(path);
    let fail = |e| StoreError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    // A new file, never an existing one nor through a symbolic link
    // planted under the temporary name (which is then left alone).
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(fail)?;
    let mut write = || -> io::Result<()> {
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if sync {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        fail(e)
    })
}

/// Flushes the file system that holds `dir` (every file written there,
/// and the directories' entries) to disk.
pub fn sync_file_system(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = File::open(dir)?;
    // SAFETY: a valid open descriptor; syncfs reads nothing from us.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// [`sync_file_system`] as a store error naming `dir`.
fn syncfs(dir: &Path) -> Result<(), StoreError> {
    sync_file_system(dir).map_err(StoreError::io(dir))
}

/// `path`'s folder, and a temporary name in it unique to this process and
/// call, for a file that becomes `path` once written.
fn temp_beside(path: &Path) -> (&Path, PathBuf) {
    // A bare file name's parent is "" (not None): that is the current dir.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    /// Makes temporary names unique within the process.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(
        ".{}.{}.{}.{nanos}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
    ));
    (dir, tmp)
}

/// Creates `path` holding `bytes`, readable and writable by this user
/// only (mode 0600), unless a file is there already: it is written and
/// synced under a temporary name first, then hard-linked to `path`, so
/// `path` is never seen half-written, and a link never replaces (if
/// another process got there first, its file stays). Whether this call
/// created it.
pub(crate) fn create_private(path: &Path, bytes: &[u8]) -> Result<bool, StoreError> {
    let (dir, tmp) = temp_beside(path);
    let write = || -> io::Result<bool> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        }
        File::open(dir)?.sync_all()?;
        Ok(true)
    };
    let written = write();
    let _ = fs::remove_file(&tmp);
    written.map_err(StoreError::io(path))
}

/// The content of `path`, a file only this user may use: a regular file
/// (never opened through a symbolic link) owned by this user, on which
/// group and others have no permission at all. One that others may access
/// is refused with `exposed(path, mode)`; one that is not a regular file
/// of ours counts as damaged, with `remedy`.
pub(crate) fn read_private(
    path: &Path,
    exposed: impl FnOnce(PathBuf, u32) -> StoreError,
    remedy: &'static str,
) -> Result<Vec<u8>, StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(StoreError::io(path))?;
    let meta = f.metadata().map_err(StoreError::io(path))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_file() || meta.uid() != me {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "not a regular file of yours (owner uid {}, you are {me})",
                meta.uid()
            ),
            remedy,
        });
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(exposed(path.to_path_buf(), mode & 0o777));
    }
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut f, &mut bytes).map_err(StoreError::io(path))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use peershare_proto::wire::{MAX_CATALOG_ENTRIES, NameError};

    use super::*;

    fn lib() -> (tempfile::TempDir, Library) {
        let d = tempfile::tempdir().unwrap();
        let l = Library::open(d.path().join("data")).unwrap();
        (d, l)
    }

    #[test]
    fn a_torn_manifest_left_by_a_crash_is_written_again_by_the_next_share() {
        let (d, l) = lib();
        let f = d.path().join("f.bin");
        fs::write(&f, vec![7u8; 300_000]).unwrap();
        let id = Manifest::from_bytes(&fs::read(&f).unwrap()).id();
        // What a crash between writing a manifest and syncing it may leave.
        let torn = l.manifest_path(&id);
        fs::write(&torn, b"\0\0\0").unwrap();
        l.share(std::slice::from_ref(&f), &ShareProgress::default())
            .unwrap();
        assert!(
            l.manifest_bytes(&id).unwrap().is_some(),
            "the manifest was written whole"
        );
        assert_eq!(l.manifest(&id).unwrap().unwrap().size(), 300_000);
    }

    #[test]
    fn share_hashes_files_and_folders_with_relative_names() {
        let (d, l) = lib();
        let folder = d.path().join("papers");
        fs::create_dir_all(folder.join("sub")).unwrap();
        fs::write(folder.join("a.txt"), b"alpha").unwrap();
        fs::write(folder.join("sub/b.txt"), b"beta").unwrap();
        fs::write(d.path().join("c.bin"), vec![1u8; 200_000]).unwrap();
        let p = ShareProgress::default();
        let shared = l.share(&[folder, d.path().join("c.bin")], &p).unwrap();
        let names: Vec<_> = shared.iter().map(|s| s.entry.name.as_str()).collect();
        assert_eq!(names, ["papers/a.txt", "papers/sub/b.txt", "c.bin"]);
        assert_eq!(p.done.load(Ordering::Relaxed), 5 + 4 + 200_000);
        let expect = Manifest::from_bytes(&vec![1u8; 200_000]);
        assert_eq!(shared[2].entry.id, expect.id().to_string());
        assert_eq!(l.manifest(&expect.id()).unwrap(), Some(expect));
    }

    #[test]
    fn sharing_twice_is_idempotent_and_does_not_rehash() {
        let (d, l) = lib();
        let f = d.path().join("x");
        fs::write(&f, b"content").unwrap();
        let a = l
            .share(std::slice::from_ref(&f), &ShareProgress::default())
            .unwrap();
        let rev = l.snapshot().unwrap().revision;
        let b = l
            .share(std::slice::from_ref(&f), &ShareProgress::default())
            .unwrap();
        assert!(a[0].hashed && !b[0].hashed);
        assert_eq!(a[0].entry, b[0].entry);
        assert_eq!(l.snapshot().unwrap().files.len(), 1);
        assert_eq!(
            l.snapshot().unwrap().revision,
            rev,
            "no write for a no-op share"
        );
    }

    #[test]
    fn modified_file_no_longer_matches_and_is_rehashed() {
        let (d, l) = lib();
        let f = d.path().join("x");
        fs::write(&f, b"one").unwrap();
        let a = l
            .share(std::slice::from_ref(&f), &ShareProgress::default())
            .unwrap();
        fs::write(&f, b"two!").unwrap();
        assert!(!a[0].entry.matches(&fs::metadata(&f).unwrap()));
        let b = l
            .share(std::slice::from_ref(&f), &ShareProgress::default())
            .unwrap();
        assert!(b[0].hashed);
        assert_ne!(a[0].entry.id, b[0].entry.id);
    }

    #[test]
    fn unshare_by_id_and_path_and_unknown() {
        let (d, l) = lib();
        let (x, y) = (d.path().join("x"), d.path().join("y"));
        fs::write(&x, b"x").unwrap();
        fs::write(&y, b"y").unwrap();
        let s = l
            .share(&[x.clone(), y.clone()], &ShareProgress::default())
            .unwrap();
        assert!(matches!(
            l.unshare(&["nope".into()]),
            Err(StoreError::NotShared(_))
        ));
        assert_eq!(
            l.snapshot().unwrap().files.len(),
            2,
            "failed unshare removes nothing"
        );
        let r = l.unshare(&[s[0].entry.id.clone()]).unwrap();
        assert_eq!(r.files.len(), 1);
        let r = l.unshare(&[y.to_string_lossy().into_owned()]).unwrap();
        assert_eq!(r.files.len(), 1);
        assert!(l.snapshot().unwrap().files.is_empty());
        assert!(x.exists() && y.exists(), "files are never touched");
    }

    #[test]
    fn downloads_are_recorded_withdrawn_and_shared_when_done() {
        let (d, l) = lib();
        let content = b"a download in progress".to_vec();
        let m = Manifest::from_bytes(&content);
        let record = |out: &Path| Download {
            id: m.id().to_string(),
            name: "dl.bin".into(),
            size: content.len() as u64,
            part: out.with_extension("part"),
            state: out.with_extension("state"),
            unlisted: false,
        };
        // Withdrawn by output path (spelled another way, before the file
        // exists), then by ID.
        let (a, b) = (d.path().join("a.bin"), d.path().join("b.bin"));
        fs::create_dir(d.path().join("sub")).unwrap();
        l.begin_download(&d.path().join("sub/../a.bin"), &m, record(&a))
            .unwrap();
        l.begin_download(&b, &m, record(&b)).unwrap();
        assert_eq!(l.manifest(&m.id()).unwrap(), Some(m.clone()));
        let r = l.unshare(&[a.to_string_lossy().into_owned()]).unwrap();
        assert_eq!((r.files.len(), r.downloads.len()), (0, 1));
        let r = l.unshare(&[m.id().to_string()]).unwrap();
        assert_eq!(
            r.downloads[0].0,
            fs::canonicalize(d.path()).unwrap().join("b.bin")
        );
        assert!(l.snapshot().unwrap().downloads.is_empty());
        // Finished and shared: an ordinary entry, nothing re-hashed.
        l.begin_download(&a, &m, record(&a)).unwrap();
        fs::write(&a, &content).unwrap();
        let e = l.end_download(&a, true).unwrap().expect("shared");
        assert_eq!(e.id, m.id().to_string());
        let snap = l.snapshot().unwrap();
        assert!(snap.downloads.is_empty());
        assert!(e.matches(&fs::metadata(&a).unwrap()));
        // Finished without sharing: just forgotten.
        l.begin_download(&b, &m, record(&b)).unwrap();
        assert_eq!(l.end_download(&b, false).unwrap(), None);
        assert_eq!(l.snapshot().unwrap().files.len(), 1);
        assert!(l.snapshot().unwrap().downloads.is_empty());
    }

    #[test]
    fn lookups_by_id_find_every_entry_and_download_of_that_id_only() {
        let (d, l) = lib();
        let (x, y, z) = (d.path().join("x"), d.path().join("y"), d.path().join("z"));
        fs::write(&x, b"same").unwrap();
        fs::write(&y, b"same").unwrap();
        fs::write(&z, b"other").unwrap();
        let s = l.share(&[x, y, z], &ShareProgress::default()).unwrap();
        let m = Manifest::from_bytes(b"same");
        let out = d.path().join("dl");
        let record = Download {
            id: m.id().to_string(),
            name: "dl".into(),
            size: 4,
            part: out.with_extension("part"),
            state: out.with_extension("state"),
            unlisted: false,
        };
        l.begin_download(&out, &m, record.clone()).unwrap();
        let snap = l.snapshot().unwrap();
        let same: Vec<_> = snap.by_id(&s[0].entry.id).map(|e| &e.path).collect();
        assert_eq!(same, [&s[0].entry.path, &s[1].entry.path]);
        assert_eq!(snap.by_id(&s[2].entry.id).count(), 1);
        assert_eq!(snap.by_id(&"0".repeat(64)).count(), 0);
        let dl: Vec<_> = snap.downloads_of(&record.id).collect();
        assert_eq!(dl, [&record]);
        assert_eq!(snap.downloads_of(&s[2].entry.id).count(), 0);
        // The same, from the database's index, without a snapshot.
        let id = |s: &str| s.parse::<FileId>().unwrap();
        let same: Vec<_> = l.entries_by_id(&id(&s[0].entry.id)).unwrap();
        assert_eq!(same, [s[0].entry.clone(), s[1].entry.clone()]);
        assert_eq!(l.entries_by_id(&id(&s[2].entry.id)).unwrap().len(), 1);
        assert!(l.entries_by_id(&FileId([0; 32])).unwrap().is_empty());
        let dl = l.downloads_by_id(&m.id()).unwrap();
        assert_eq!(dl, [(download_key(&out), record)]);
        assert!(l.downloads_by_id(&id(&s[2].entry.id)).unwrap().is_empty());
    }

    #[test]
    fn symlinks_in_folders_are_skipped() {
        let (d, l) = lib();
        let folder = d.path().join("f");
        fs::create_dir(&folder).unwrap();
        fs::write(d.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), folder.join("link")).unwrap();
        fs::write(folder.join("ok"), b"o").unwrap();
        let s = l.share(&[folder], &ShareProgress::default()).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].entry.name, "f/ok");
    }

    #[test]
    fn files_whose_shared_name_would_be_too_long_are_skipped() {
        // Regression (review finding): one such name broke the whole
        // catalog, since a catalog cannot carry it.
        let (d, l) = lib();
        let mut deep = d.path().join("f");
        for _ in 0..5 {
            deep = deep.join("x".repeat(230));
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("file.txt"), b"deep").unwrap();
        fs::write(d.path().join("f/ok.txt"), b"ok").unwrap();
        let s = l
            .share(&[d.path().join("f")], &ShareProgress::default())
            .unwrap();
        let names: Vec<_> = s.iter().map(|s| s.entry.name.as_str()).collect();
        assert_eq!(names, ["f/ok.txt"]);
    }

    #[test]
    fn names_no_node_may_list_never_enter_the_library() {
        let (d, l) = lib();
        let none = ShareProgress::default();
        let folder = d.path().join("f");
        fs::create_dir(&folder).unwrap();
        let evil = folder.join("a\n\u{1b}]0;x\u{7}");
        fs::write(&evil, b"evil").unwrap();
        fs::write(folder.join("ok"), b"ok").unwrap();
        // Named directly: refused, nothing shared.
        let err = l.share(std::slice::from_ref(&evil), &none).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::BadName {
                    why: NameError::Control,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!err.to_string().contains('\n'), "{err}");
        assert!(l.snapshot().unwrap().files.is_empty());
        // In a folder: skipped.
        let names: Vec<_> = l
            .share(&[folder], &none)
            .unwrap()
            .into_iter()
            .map(|s| s.entry.name)
            .collect();
        assert_eq!(names, ["f/ok"]);
        // A download recorded under such a name (an `-o` of the user's) is
        // not offered, so not shared when done either.
        let m = Manifest::from_bytes(b"evil");
        let record = Download {
            id: m.id().to_string(),
            name: "x\ny".into(),
            size: 4,
            part: d.path().join("p"),
            state: d.path().join("s"),
            unlisted: false,
        };
        let out = d.path().join("x\ny");
        assert!(matches!(
            l.begin_download(&out, &m, record),
            Err(StoreError::BadName { .. })
        ));
        assert!(l.snapshot().unwrap().downloads.is_empty());
    }

    #[test]
    fn a_damaged_library_json_is_a_clear_error_and_nothing_is_lost() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data");
        fs::create_dir(&dir).unwrap();
        for damaged in [
            &b"{not json"[..],
            br#"{"format":9,"revision":1,"files":{}}"#,
        ] {
            fs::write(dir.join(LIBRARY_FILE), damaged).unwrap();
            let err = Library::open(&dir).unwrap_err();
            assert!(
                matches!(&err, StoreError::Corrupt { path, remedy: remedy::LIBRARY, .. }
                    if path.ends_with(LIBRARY_FILE)),
                "{err}"
            );
            assert_eq!(
                fs::read(dir.join(LIBRARY_FILE)).unwrap(),
                damaged,
                "left as it is"
            );
            assert!(!db::migrated(&dir.join(LIBRARY_FILE)).exists());
        }
        // Moved away, as the error says: an empty library.
        fs::rename(dir.join(LIBRARY_FILE), dir.join("old")).unwrap();
        assert!(
            Library::open(&dir)
                .unwrap()
                .snapshot()
                .unwrap()
                .files
                .is_empty()
        );
    }

    #[test]
    fn a_damaged_database_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(db::DB_FILE), vec![0x5a; 8192]).unwrap();
        let err = Library::open(&dir).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { path, remedy: remedy::LIBRARY, .. }
                if path.ends_with(db::DB_FILE)),
            "{err}"
        );
        assert_eq!(fs::read(dir.join(db::DB_FILE)).unwrap(), vec![0x5a; 8192]);
    }

    /// A `library.json` as the release before `library.db` wrote it.
    fn old_library(dir: &Path) -> Snapshot {
        let mut snap = Snapshot {
            format: LIBRARY_FORMAT,
            revision: 41,
            ..Snapshot::default()
        };
        for e in made_up(0..3, false).into_iter().chain(made_up(3..5, true)) {
            snap.files.insert(e.path.clone(), e);
        }
        let far_future = Entry {
            mtime_ns: i128::from(i64::MAX) * 1_000_000_000 + 7,
            name: "caf\u{e9}/\u{1F600}".into(),
            path: "/made-up/far future".into(),
            ..made_up(5..6, false).remove(0)
        };
        snap.files.insert(far_future.path.clone(), far_future);
        let dl = Download {
            id: made_up(9..10, false)[0].id.clone(),
            name: "dl".into(),
            size: 12,
            part: "/made-up/dl.part".into(),
            state: "/made-up/dl.state".into(),
            unlisted: false,
        };
        snap.downloads.insert("/made-up/dl".into(), dl);
        fs::create_dir_all(dir).unwrap();
        fs::write(
            dir.join(LIBRARY_FILE),
            serde_json::to_vec_pretty(&snap).unwrap(),
        )
        .unwrap();
        snap
    }

    #[test]
    fn a_library_json_is_imported_once_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data");
        let old = old_library(&dir);
        let bytes = fs::read(dir.join(LIBRARY_FILE)).unwrap();
        let l = Library::open(&dir).unwrap();
        let snap = l.snapshot().unwrap();
        assert_eq!(snap.files, old.files);
        assert_eq!(snap.downloads, old.downloads);
        assert!(
            snap.revision > old.revision,
            "a change for whoever cached the old one"
        );
        assert!(!dir.join(LIBRARY_FILE).exists());
        assert_eq!(
            fs::read(db::migrated(&dir.join(LIBRARY_FILE))).unwrap(),
            bytes,
            "kept"
        );
        assert_eq!(l.db.listed_kept(), old.listed() as u64);
        assert_eq!(old.listed(), 5, "3 files, the far-future one, the download");
        // Indexed lookups see the imported rows.
        let id: FileId = old.files.values().next().unwrap().id.parse().unwrap();
        assert_eq!(l.entries_by_id(&id).unwrap().len(), 1);
        // Opened again: nothing imported twice, even with a library.json
        // back in place (an older release run since): it is ignored.
        let rev = snap.revision;
        drop(l);
        fs::write(dir.join(LIBRARY_FILE), b"{}").unwrap();
        let l = Library::open(&dir).unwrap();
        assert_eq!(l.snapshot().unwrap().revision, rev);
        assert_eq!(l.snapshot().unwrap().files, old.files);
        assert_eq!(
            fs::read(dir.join(LIBRARY_FILE)).unwrap(),
            b"{}",
            "left alone"
        );
    }

    #[test]
    fn a_database_of_a_newer_schema_is_refused_untouched() {
        let (d, l) = lib();
        let f = d.path().join("x");
        fs::write(&f, b"x").unwrap();
        l.share(std::slice::from_ref(&f), &ShareProgress::default())
            .unwrap();
        let (dir, path) = (l.dir().to_path_buf(), l.db.path().to_path_buf());
        drop(l);
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        let before = fs::read(&path).unwrap();
        let err = Library::open(&dir).unwrap_err();
        assert!(
            matches!(err, StoreError::NewerLibrary { found, known: SCHEMA_VERSION, .. }
                if found == SCHEMA_VERSION + 1),
            "{err}"
        );
        assert!(err.to_string().contains("newer release"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), before, "not modified");
    }

    #[test]
    fn an_edit_writes_its_rows_not_the_library() {
        const LARGE: usize = 20_000;
        let (d, l) = lib();
        l.insert_unchecked(made_up(0..LARGE, false)).unwrap();
        l.db.checkpoint();
        let db_len = fs::metadata(l.db.path()).unwrap().len();
        let wal = l.db.path().with_extension("db-wal");
        assert_eq!(fs::metadata(&wal).unwrap().len(), 0, "emptied");
        let rows = l.db.rows_written();
        let f = d.path().join("one");
        fs::write(&f, b"one more").unwrap();
        let s = l
            .share(std::slice::from_ref(&f), &ShareProgress::default())
            .unwrap();
        // The entry, the revision and the catalog's length.
        assert_eq!(l.db.rows_written() - rows, 3);
        // A few pages of the log (each page of the tree on the entry's
        // path and of its index), not the library's megabytes.
        let logged = fs::metadata(&wal).unwrap().len();
        assert!(
            logged > 0 && logged < 16 * 4120 + 32,
            "{logged} bytes logged"
        );
        assert!(db_len > 40 * logged, "the library is {db_len} bytes");
        // So do a download's beginning and end, and an unshare.
        let m = Manifest::from_bytes(b"downloading");
        let out = d.path().join("dl");
        let record = Download {
            id: m.id().to_string(),
            name: "dl".into(),
            size: 11,
            part: d.path().join("dl.part"),
            state: d.path().join("dl.state"),
            unlisted: false,
        };
        let rows = l.db.rows_written();
        l.begin_download(&out, &m, record).unwrap();
        fs::write(&out, b"downloading").unwrap();
        l.end_download(&out, true).unwrap().unwrap();
        l.unshare(&[s[0].entry.id.clone()]).unwrap();
        assert_eq!(l.db.rows_written() - rows, 3 + 4 + 3);
        assert_eq!(l.db.listed_kept(), LARGE as u64 + 1);
    }

    #[test]
    fn the_catalog_length_is_kept_by_every_edit() {
        let (d, l) = lib();
        let check = |what: &str| {
            let snap = l.snapshot().unwrap();
            assert_eq!(l.db.listed_kept(), snap.listed() as u64, "after {what}");
            assert_eq!(l.db.listed_counted(), snap.listed() as u64, "after {what}");
        };
        // One by one, and more than are counted one by one.
        l.insert_unchecked(made_up(0..10, false)).unwrap();
        check("a few");
        l.insert_unchecked(made_up(10..10 + 2 * db::INCREMENTAL_LISTED_MAX, true))
            .unwrap();
        check("many unlisted");
        let copies: Vec<_> = made_up(0..5, true)
            .into_iter()
            .map(|e| Entry {
                path: PathBuf::from(format!("/copies{}", e.path.display())),
                ..e
            })
            .collect();
        l.insert_unchecked(copies).unwrap();
        check("unlisted copies of listed content");
        let (x, y) = (d.path().join("x"), d.path().join("y"));
        fs::write(&x, b"same").unwrap();
        fs::write(&y, b"same").unwrap();
        l.share(&[x.clone(), y.clone()], &ShareProgress::default())
            .unwrap();
        check("two copies shared");
        l.share_as(std::slice::from_ref(&x), &ShareProgress::default(), true)
            .unwrap();
        check("one made unlisted");
        let hidden = &made_up(10..11, true)[0];
        let m = Manifest::from_bytes(b"same");
        for (out, id, unlisted) in [
            ("a", m.id().to_string(), false),
            ("b", hidden.id.clone(), false),
            ("c", made_up(50_000..50_001, false)[0].id.clone(), false),
            ("e", made_up(50_001..50_002, false)[0].id.clone(), true),
        ] {
            let record = Download {
                id,
                name: out.into(),
                size: 4,
                part: d.path().join(format!("{out}.part")),
                state: d.path().join(format!("{out}.state")),
                unlisted,
            };
            l.insert_downloads_unchecked(vec![(d.path().join(out), record)])
                .unwrap();
            check(out);
        }
        l.unshare(&[y.to_string_lossy().into_owned()]).unwrap();
        check("unshare a copy");
        l.unshare(std::slice::from_ref(&hidden.id)).unwrap();
        check("unshare by ID");
        l.unshare(&[y.to_string_lossy().into_owned(), "/nowhere".into()])
            .unwrap_err();
        check("a failed unshare");
    }

    #[test]
    fn unsharing_a_folder_removes_what_is_under_it_only() {
        let (d, l) = lib();
        for sub in ["f/a", "f/sub/b", "f2/c", "fa", "f.txt"] {
            let p = d.path().join(sub);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, sub).unwrap();
        }
        let all: Vec<_> = ["f", "f2", "fa", "f.txt"]
            .iter()
            .map(|p| d.path().join(p))
            .collect();
        l.share(&all, &ShareProgress::default()).unwrap();
        let r = l
            .unshare(&[d.path().join("f").to_string_lossy().into_owned()])
            .unwrap();
        let names: Vec<_> = r.files.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["f/a", "f/sub/b"]);
        let mut left: Vec<_> = l
            .snapshot()
            .unwrap()
            .files
            .values()
            .map(|e| e.name.clone())
            .collect();
        left.sort();
        assert_eq!(left, ["f.txt", "f2/c", "fa"]);
    }

    /// Edits a child process of
    /// [`two_handles_and_a_child_process_edit_at_once_and_lose_nothing`]
    /// makes (its data dir in this variable).
    const CHILD_DIR: &str = "PEERSHARE_STORE_TEST_CHILD_DIR";
    /// Edits of each of the three editors there (each makes two per step).
    const EDITS: usize = 40;

    /// `who`'s edits: an entry and a download of its own per step.
    fn edit_many(l: &Library, who: &str) {
        let m = Manifest::from_bytes(b"everyone downloads this");
        for i in 0..EDITS {
            let e = Entry {
                id: FileId(sha256(format!("{who} {i}").as_bytes())).to_string(),
                name: format!("{who}/{i}"),
                path: PathBuf::from(format!("/made-up/{who}/{i}")),
                size: 1,
                mtime_ns: 0,
                unlisted: false,
            };
            l.insert_unchecked(vec![e]).unwrap();
            let out = PathBuf::from(format!("/made-up/{who}/dl{i}"));
            let record = Download {
                id: m.id().to_string(),
                name: format!("{who}-dl{i}"),
                size: m.size(),
                part: out.with_extension("part"),
                state: out.with_extension("state"),
                unlisted: false,
            };
            l.begin_download(&out, &m, record).unwrap();
        }
    }

    /// Not a test of its own: the child process of the one below.
    #[test]
    fn concurrent_editor_child() {
        if let Ok(dir) = std::env::var(CHILD_DIR) {
            edit_many(&Library::open(dir).unwrap(), "child");
        }
    }

    #[test]
    fn two_handles_and_a_child_process_edit_at_once_and_lose_nothing() {
        let (_d, l) = lib();
        let start = l.revision().unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::concurrent_editor_child",
                "--quiet",
            ])
            .env(CHILD_DIR, l.dir())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::scope(|s| {
            for who in ["a", "b"] {
                let dir = l.dir().to_path_buf();
                s.spawn(move || edit_many(&Library::open(dir).unwrap(), who));
            }
        });
        let status = child.wait_with_output().unwrap().status;
        assert!(status.success(), "{status}");
        let snap = Library::open(l.dir()).unwrap().snapshot().unwrap();
        assert_eq!(snap.files.len(), 3 * EDITS);
        assert_eq!(snap.downloads.len(), 3 * EDITS);
        for who in ["a", "b", "child"] {
            for i in 0..EDITS {
                assert!(
                    snap.files
                        .contains_key(Path::new(&format!("/made-up/{who}/{i}")))
                );
            }
        }
        assert_eq!(
            snap.revision,
            start + 6 * EDITS as u64,
            "one revision per edit"
        );
        assert_eq!(l.db.listed_kept(), snap.listed() as u64);
    }

    #[test]
    fn node_id_is_stable() {
        let (_d, l) = lib();
        let a = l.node_id().unwrap();
        assert_eq!(l.node_id().unwrap(), a);
    }

    #[test]
    fn the_trust_list_is_bounded_and_kept() {
        let (_d, l) = lib();
        let a = NodeId([1; 32]);
        assert!(l.trust(a, "laptop").unwrap());
        assert!(!l.trust(a, "laptop").unwrap(), "unchanged");
        assert!(l.trust(a, "phone").unwrap(), "renamed");
        assert_eq!(l.trusted().unwrap()[&a].name, "phone");
        // A full list (written directly: one fsync per `trust` would be slow).
        let mut file = TrustFile {
            format: TRUST_FORMAT,
            ..TrustFile::default()
        };
        for i in 0..MAX_TRUSTED as u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            id[31] = 0xff;
            file.nodes
                .insert(NodeId(id).to_string(), Trusted::default());
        }
        l.write_trust(file).unwrap();
        assert!(matches!(
            l.trust(NodeId([2; 32]), ""),
            Err(StoreError::TooManyTrusted(MAX_TRUSTED))
        ));
        // Renaming one already there is still fine; removing makes room.
        let mut first = [0u8; 32];
        first[31] = 0xff;
        assert!(l.trust(NodeId(first), "renamed").unwrap());
        assert!(l.distrust(NodeId(first)).unwrap());
        assert!(!l.distrust(NodeId(first)).unwrap());
        assert!(l.trust(NodeId([2; 32]), "").unwrap());
        assert_eq!(l.trusted().unwrap().len(), MAX_TRUSTED);
    }

    #[test]
    fn a_damaged_trust_list_is_an_error_not_an_empty_list() {
        let (_d, l) = lib();
        fs::write(
            l.dir().join(TRUST_FILE),
            r#"{"format":1,"nodes":{"zz":{}}}"#,
        )
        .unwrap();
        assert!(matches!(l.trusted(), Err(StoreError::Corrupt { .. })));
        fs::write(l.dir().join(TRUST_FILE), "not json").unwrap();
        assert!(matches!(l.trusted(), Err(StoreError::Corrupt { .. })));
        assert!(l.trust(NodeId([1; 32]), "").is_err(), "nothing overwritten");
        assert_eq!(
            fs::read_to_string(l.dir().join(TRUST_FILE)).unwrap(),
            "not json"
        );
        // Not even text: damaged all the same, not an I/O error.
        fs::write(l.dir().join(TRUST_FILE), b"\xff\xfe{\x00").unwrap();
        assert!(matches!(
            l.trusted(),
            Err(StoreError::Corrupt {
                remedy: remedy::TRUST,
                ..
            })
        ));
    }

    #[test]
    fn the_data_dir_is_never_shared() {
        let d = tempfile::tempdir().unwrap();
        let l = Library::open(d.path().join("home/data")).unwrap();
        l.identity().unwrap();
        fs::write(d.path().join("home/notes.txt"), b"mine").unwrap();
        // A folder holding the data dir: everything but the data dir.
        let shared = l
            .share(&[d.path().join("home")], &ShareProgress::default())
            .unwrap();
        let names: Vec<_> = shared.iter().map(|s| s.entry.name.as_str()).collect();
        assert_eq!(names, ["home/notes.txt"]);
        // The key itself, or the data dir, named directly: refused.
        for p in [
            d.path().join("home/data/node.key"),
            d.path().join("home/data"),
        ] {
            let err = l.share(&[p], &ShareProgress::default()).unwrap_err();
            assert!(matches!(err, StoreError::InDataDir(_)), "{err}");
            assert!(err.to_string().contains("private key"), "{err}");
        }
    }

    /// `n` entries of distinct made-up content, at paths that need not
    /// exist (nothing here serves them).
    fn made_up(n: std::ops::Range<usize>, unlisted: bool) -> Vec<Entry> {
        n.map(|i| Entry {
            id: FileId(sha256(&i.to_be_bytes())).to_string(),
            name: format!("many/{i}"),
            path: PathBuf::from(format!("/made-up/{unlisted}/{i}")),
            size: 0,
            mtime_ns: 0,
            unlisted,
        })
        .collect()
    }

    #[test]
    fn the_catalog_lists_each_listed_name_and_content_once() {
        let mut snap = Snapshot::default();
        let mut add = |e: Entry| snap.files.insert(e.path.clone(), e);
        let listed = made_up(0..3, false);
        let unlisted = made_up(3..5, true);
        for e in listed.iter().chain(&unlisted) {
            add(e.clone());
        }
        // A copy of listed content elsewhere under the same name, listed or
        // not: still one.
        add(Entry {
            path: "/copy/a".into(),
            ..listed[0].clone()
        });
        add(Entry {
            path: "/copy/b".into(),
            unlisted: true,
            ..listed[1].clone()
        });
        assert_eq!(snap.listed(), 3);
        // Under another name: listed there too (issue 12: every shared name
        // is visible); unlisted there: not.
        let mut add = |e: Entry| snap.files.insert(e.path.clone(), e);
        add(Entry {
            path: "/copy/c".into(),
            name: "other/name".into(),
            ..listed[2].clone()
        });
        add(Entry {
            path: "/copy/d".into(),
            name: "hidden/name".into(),
            unlisted: true,
            ..listed[2].clone()
        });
        assert_eq!(snap.listed(), 4);
        let download = |e: &Entry, unlisted| Download {
            id: e.id.clone(),
            name: e.name.clone(),
            size: 0,
            part: "/p".into(),
            state: "/s".into(),
            unlisted,
        };
        let new = &made_up(5..7, false);
        for (out, d) in [
            ("/o/1", download(&new[0], false)),      // new content: listed
            ("/o/2", download(&new[1], true)),       // unlisted
            ("/o/3", download(&listed[2], false)),   // a file shares it: once
            ("/o/4", download(&unlisted[0], false)), // shared unlisted: not listed
            (
                "/o/5",
                Download {
                    name: "elsewhere".into(),
                    ..download(&listed[1], false)
                },
            ), // shared whole under another name: not listed
        ] {
            snap.downloads.insert(out.into(), d);
        }
        assert_eq!(snap.listed(), 5);
    }

    #[test]
    fn share_and_downloads_refuse_to_list_more_than_a_catalog_may_hold() {
        let (d, l) = lib();
        l.insert_unchecked(made_up(0..MAX_CATALOG_ENTRIES, false))
            .unwrap();
        let rev = l.snapshot().unwrap().revision;
        let more = d.path().join("more");
        fs::write(&more, b"one too many").unwrap();
        let err = l
            .share(std::slice::from_ref(&more), &ShareProgress::default())
            .unwrap_err();
        assert!(
            matches!(err, StoreError::CatalogFull { listed, max: MAX_CATALOG_ENTRIES } if listed == MAX_CATALOG_ENTRIES + 1),
            "{err}"
        );
        assert!(err.to_string().contains("--unlisted"), "{err}");
        // A download in progress is listed too, unless unlisted.
        let m = Manifest::from_bytes(b"downloading");
        let record = |unlisted| Download {
            id: m.id().to_string(),
            name: "dl".into(),
            size: 11,
            part: d.path().join("dl.part"),
            state: d.path().join("dl.state"),
            unlisted,
        };
        let out = d.path().join("dl");
        assert!(matches!(
            l.begin_download(&out, &m, record(false)),
            Err(StoreError::CatalogFull { .. })
        ));
        assert_eq!(l.snapshot().unwrap().revision, rev, "nothing published");
        l.begin_download(&out, &m, record(true)).unwrap();
        assert_eq!(l.snapshot().unwrap().listed(), MAX_CATALOG_ENTRIES);
    }

    #[test]
    fn a_hand_written_trust_list_is_read_canonically() {
        let (_d, l) = lib();
        let id = NodeId([0xab; 32]);
        let upper = id.to_string().to_uppercase();
        let text = format!(r#"{{"format":1,"nodes":{{"{upper}":{{"name":"x"}}," {id}":{{}}}}}}"#);
        fs::write(l.dir().join(TRUST_FILE), text).unwrap();
        assert_eq!(l.trusted().unwrap().len(), 1);
        assert!(l.distrust(id).unwrap());
        assert!(
            l.trusted().unwrap().is_empty(),
            "removed whatever its spelling"
        );
    }
}
