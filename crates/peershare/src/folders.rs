//! Shared folders: the folder encodings this node offers, kept in its data
//! directory beside the library.
//!
//! ```text
//! <data-dir>/folders/<folder-id>.folder   the folder encoding (PROTOCOL.md, section 15)
//! <data-dir>/folders/<folder-id>.json     its record: name, root on disk, counts, listing
//! <data-dir>/folders/generation           a token replaced after every change
//! ```
//!
//! A folder's files are ordinary library entries (shared in the same
//! `share`); this store only says which trees exist. Invariants: the
//! encoding is written (atomically, synced) before the record that names
//! it, so a record always has its encoding; a record is named by the ID its
//! encoding hashes to (checked when it is read back); one root has one
//! folder (sharing a folder again after a change replaces the old record,
//! so the old ID stops being offered); a folder is offered only while every
//! one of its files is shared unchanged ([`crate::server`] checks). Each
//! record is a file of its own, so an edit costs one folder, and a lookup by
//! ID is one `open`. Two processes on one data dir: every write is
//! write-then-rename, so a reader sees a whole record or none. Every change
//! ends by writing a new, unique token to `generation` ([`FolderStore::stamp`]):
//! a reader that saw one token and later sees it again has seen no change
//! in between (the catalog is cached by it), whatever the clock's
//! granularity and however writers interleave.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use peershare_proto::folder::{FolderManifest, MAX_FOLDER_MANIFEST_LEN};
use peershare_proto::{FolderId, Manifest};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::store::write_atomic;

/// The folder store's directory inside the data dir.
pub const FOLDER_DIR: &str = "folders";
/// Longest record file read back, bytes (a record is a few hundred).
pub const MAX_FOLDER_RECORD_LEN: u64 = 64 * 1024;
/// Most folders one node shares (`share` refuses more).
pub const MAX_FOLDERS: usize = 10_000;
/// The file holding the store's change token.
pub const GENERATION_FILE: &str = "generation";
/// Longest generation token read back, bytes (one is a few dozen).
const MAX_GENERATION_LEN: u64 = 256;

/// One shared folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderRecord {
    /// Hex folder ID.
    pub id: String,
    /// The folder's name (one path component).
    pub name: String,
    /// Absolute path of the folder on disk.
    pub root: PathBuf,
    /// File entries (a content at two paths counts twice).
    pub files: usize,
    /// Total size of the files, bytes.
    pub size: u64,
    /// Left out of the catalog: only its ID or a ticket finds it.
    #[serde(default)]
    pub unlisted: bool,
}

impl FolderRecord {
    pub fn folder_id(&self) -> Option<FolderId> {
        self.id.parse().ok()
    }
}

/// A folder ID and the manifest of its encoding.
type CachedManifest = (FolderId, Arc<Manifest>);

/// The folders of one data dir.
#[derive(Clone)]
pub struct FolderStore {
    dir: PathBuf,
    /// The manifest of the folder asked for last: every chunk request of a
    /// folder needs its chunk hashes, and hashing a 32 MiB encoding per
    /// chunk would cost seconds.
    cache: Arc<Mutex<Option<CachedManifest>>>,
}

impl FolderStore {
    /// The store of data dir `data_dir` (created when a folder is first put).
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(FOLDER_DIR),
            cache: Arc::new(Mutex::new(None)),
        }
    }

    /// Where the encoding of `id` is kept.
    pub fn encoding_path(&self, id: &FolderId) -> PathBuf {
        self.dir.join(format!("{id}.folder"))
    }

    fn record_path(&self, id: &FolderId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Records `folder` as shared from `root`, replacing any other folder
    /// recorded for that root. Returns the record.
    pub fn put(
        &self,
        folder: &FolderManifest,
        name: &str,
        root: &Path,
        unlisted: bool,
    ) -> Result<FolderRecord, StoreError> {
        fs::create_dir_all(&self.dir).map_err(StoreError::io(&self.dir))?;
        let id = folder.id();
        let record = FolderRecord {
            id: id.to_string(),
            name: name.to_owned(),
            root: root.to_path_buf(),
            files: folder.file_count(),
            size: folder.total_size(),
            unlisted,
        };
        let others = self.list()?;
        let replaced: Vec<&FolderRecord> = others
            .iter()
            .filter(|r| r.root == root && r.id != record.id)
            .collect();
        if others.len() - replaced.len() >= MAX_FOLDERS && !others.iter().any(|r| r.id == record.id)
        {
            return Err(StoreError::TooManyFolders { max: MAX_FOLDERS });
        }
        write_atomic(&self.encoding_path(&id), &folder.encode())?;
        let json = serde_json::to_vec_pretty(&record).expect("a record serialises");
        write_atomic(&self.record_path(&id), &json)?;
        for old in replaced {
            if let Some(old_id) = old.folder_id() {
                self.remove(&old_id)?;
            }
        }
        self.touch()?;
        Ok(record)
    }

    /// What the store looks like now, as a token that changes with every
    /// change to it (empty before the first): equal tokens, no change in
    /// between.
    pub fn stamp(&self) -> Result<Vec<u8>, StoreError> {
        let path = self.dir.join(GENERATION_FILE);
        match read_bounded(&path, MAX_GENERATION_LEN) {
            Ok(t) => Ok(t.unwrap_or_default()),
            // Not ours to repair: a new token replaces it on the next change.
            Err(StoreError::Corrupt { .. }) => Ok(b"?".to_vec()),
            Err(e) => Err(e),
        }
    }

    /// Replaces the generation token with one never used before.
    fn touch(&self) -> Result<(), StoreError> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = format!("{}.{nanos}.{n}\n", std::process::id());
        write_atomic(&self.dir.join(GENERATION_FILE), token.as_bytes())
    }

    /// The record of `id`, if it is shared here.
    pub fn get(&self, id: &FolderId) -> Result<Option<FolderRecord>, StoreError> {
        let path = self.record_path(id);
        let Some(bytes) = read_bounded(&path, MAX_FOLDER_RECORD_LEN)? else {
            return Ok(None);
        };
        let record: FolderRecord =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
                remedy: remedy(),
            })?;
        if record.folder_id() != Some(*id) {
            return Err(StoreError::Corrupt {
                path,
                reason: format!("it names folder {} under the name of {id}", record.id),
                remedy: remedy(),
            });
        }
        Ok(Some(record))
    }

    /// The encoding of `id`, decoded and checked against `id`.
    pub fn folder(&self, id: &FolderId) -> Result<Option<FolderManifest>, StoreError> {
        let path = self.encoding_path(id);
        let Some(bytes) = read_bounded(&path, MAX_FOLDER_MANIFEST_LEN as u64)? else {
            return Ok(None);
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
            remedy: remedy(),
        };
        let folder = FolderManifest::decode(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if folder.id() != *id {
            return Err(corrupt(format!("it hashes to folder {}", folder.id())));
        }
        Ok(Some(folder))
    }

    /// The manifest of `id`'s encoding (what a peer is sent for the folder
    /// ID), if it is shared here.
    pub fn manifest(&self, id: &FolderId) -> Result<Option<Arc<Manifest>>, StoreError> {
        if let Some((cached, m)) = &*self.cache.lock().expect("folder cache lock")
            && cached == id
        {
            return Ok(Some(m.clone()));
        }
        let Some(folder) = self.folder(id)? else {
            return Ok(None);
        };
        let m = Arc::new(folder.manifest());
        *self.cache.lock().expect("folder cache lock") = Some((*id, m.clone()));
        Ok(Some(m))
    }

    /// Every folder recorded, in ID order. Records that cannot be read are
    /// left out with a warning.
    pub fn list(&self) -> Result<Vec<FolderRecord>, StoreError> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(StoreError::io(&self.dir))?;
            let name = e.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let Ok(id) = stem.parse::<FolderId>() else {
                continue;
            };
            match self.get(&id) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => tracing::warn!("{e}"),
            }
            if out.len() > MAX_FOLDERS {
                break;
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Forgets folder `id` (record first, so no record is left without
    /// its encoding).
    pub fn remove(&self, id: &FolderId) -> Result<bool, StoreError> {
        let had = remove_if_there(&self.record_path(id))?;
        remove_if_there(&self.encoding_path(id))?;
        {
            let mut cache = self.cache.lock().expect("folder cache lock");
            if cache.as_ref().is_some_and(|(c, _)| c == id) {
                *cache = None;
            }
        }
        if had {
            self.touch()?;
        }
        Ok(had)
    }

    /// Forgets every folder whose root is `path` or inside it, or holds
    /// it (unsharing a file of a folder withdraws the folder).
    pub fn remove_touching(&self, path: &Path) -> Result<Vec<FolderRecord>, StoreError> {
        let mut gone = Vec::new();
        for r in self.list()? {
            if (r.root.starts_with(path) || path.starts_with(&r.root))
                && let Some(id) = r.folder_id()
                && self.remove(&id)?
            {
                gone.push(r);
            }
        }
        Ok(gone)
    }
}

fn remedy() -> &'static str {
    "delete it (the folder's record in the data dir), then share the folder again"
}

fn remove_if_there(path: &Path) -> Result<bool, StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io(path)(e)),
    }
}

/// The bytes of `path`, `None` if it does not exist; longer than `max` is
/// an error, found without reading more than `max + 1` bytes.
fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>, StoreError> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(StoreError::io(path))?;
    if bytes.len() as u64 > max {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("it is longer than {max} bytes"),
            remedy: remedy(),
        });
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use peershare_proto::FileId;
    use peershare_proto::folder::FolderEntry;

    fn folder(n: u8) -> FolderManifest {
        FolderManifest::new(vec![
            FolderEntry::file("a.txt", 1 + n as u64, FileId([n; 32])),
            FolderEntry::dir("empty"),
        ])
        .unwrap()
    }

    #[test]
    fn a_put_folder_reads_back_and_a_new_version_replaces_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path());
        let root = dir.path().join("photos");
        let v1 = folder(1);
        let r1 = store.put(&v1, "photos", &root, false).unwrap();
        assert_eq!(r1.files, 1);
        assert_eq!(r1.size, 2);
        assert_eq!(store.get(&v1.id()).unwrap(), Some(r1.clone()));
        assert_eq!(store.folder(&v1.id()).unwrap(), Some(v1.clone()));
        assert_eq!(*store.manifest(&v1.id()).unwrap().unwrap(), v1.manifest());

        let v2 = folder(2);
        store.put(&v2, "photos", &root, false).unwrap();
        assert_eq!(
            store.get(&v1.id()).unwrap(),
            None,
            "the old version is gone"
        );
        assert_eq!(store.manifest(&v1.id()).unwrap(), None);
        assert_eq!(store.list().unwrap().len(), 1);
        // Another root keeps its own.
        store
            .put(&v1, "other", &dir.path().join("other"), true)
            .unwrap();
        assert_eq!(store.list().unwrap().len(), 2);
        let gone = store.remove_touching(&root.join("a.txt")).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(store.list().unwrap()[0].name, "other");
    }

    #[test]
    fn every_change_gives_a_new_stamp_and_reading_changes_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path());
        let mut seen = vec![store.stamp().unwrap()];
        assert_eq!(seen[0], b"", "no store yet");
        let root = dir.path().join("f");
        let mut check = |what: &str| {
            let s = store.stamp().unwrap();
            assert!(!seen.contains(&s), "{what}: stamp {s:?} seen before");
            seen.push(s);
        };
        store.put(&folder(1), "f", &root, false).unwrap();
        check("put");
        // The same folder again, in the same clock tick: still a change.
        store.put(&folder(1), "f", &root, true).unwrap();
        check("put again");
        store.put(&folder(2), "f", &root, false).unwrap();
        check("a new version");
        let now = store.stamp().unwrap();
        store.list().unwrap();
        store.get(&folder(2).id()).unwrap();
        assert_eq!(store.stamp().unwrap(), now, "reads change nothing");
        assert!(!store.remove(&folder(1).id()).unwrap());
        assert_eq!(store.stamp().unwrap(), now, "nothing removed");
        assert!(store.remove(&folder(2).id()).unwrap());
        check("remove");
    }

    #[test]
    fn a_tampered_encoding_or_record_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path());
        let v1 = folder(1);
        store.put(&v1, "f", &dir.path().join("f"), false).unwrap();
        // The encoding of another folder under this ID.
        fs::write(store.encoding_path(&v1.id()), folder(3).encode()).unwrap();
        let err = store.folder(&v1.id()).unwrap_err().to_string();
        assert!(err.contains(".folder"), "{err}");
        // A record longer than the limit is refused without reading it all.
        let big = vec![b' '; MAX_FOLDER_RECORD_LEN as usize + 1];
        fs::write(store.record_path(&v1.id()), big).unwrap();
        let err = store.get(&v1.id()).unwrap_err().to_string();
        assert!(err.contains("longer than"), "{err}");
        // The list leaves it out rather than fail.
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn at_most_max_folders_are_shared() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path());
        // MAX_FOLDERS - 1 records written directly (put syncs each: slow),
        // then one put fills the store.
        fs::create_dir_all(&store.dir).unwrap();
        for i in 0..MAX_FOLDERS - 1 {
            let f = FolderManifest::new(vec![FolderEntry::file(
                "a",
                1,
                FileId(peershare_proto::id::sha256(&i.to_be_bytes())),
            )])
            .unwrap();
            let record = FolderRecord {
                id: f.id().to_string(),
                name: format!("f{i}"),
                root: dir.path().join(format!("f{i}")),
                files: 1,
                size: 1,
                unlisted: false,
            };
            fs::write(
                store.record_path(&f.id()),
                serde_json::to_vec(&record).unwrap(),
            )
            .unwrap();
            fs::write(store.encoding_path(&f.id()), f.encode()).unwrap();
        }
        store
            .put(&folder(1), "last", &dir.path().join("last"), false)
            .unwrap();
        let err = store
            .put(&folder(2), "over", &dir.path().join("over"), false)
            .unwrap_err();
        assert!(
            matches!(err, StoreError::TooManyFolders { max: MAX_FOLDERS }),
            "{err}"
        );
        // A new version of a folder already there replaces it: allowed.
        store
            .put(&folder(3), "last", &dir.path().join("last"), false)
            .unwrap();
        assert_eq!(store.list().unwrap().len(), MAX_FOLDERS);
    }
}
