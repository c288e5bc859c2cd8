//! What a server can offer of this node's downloads in progress: for each
//! one recorded in the library ([`crate::store::Download`]), the chunks its
//! state file says are verified and on disk, read from its part file.
//!
//! The state file is the only witness used: it names a chunk only after the
//! downloader verified it and synced the part file (see
//! [`crate::partial`]), so a chunk served from here is verified data, never
//! a half-written one. The view of a download is re-read whenever its state
//! file changes (a stat per call), so newly verified chunks become servable
//! within one checkpoint of the downloader. Each chunk is checked against
//! the manifest again as it is read, before it is served: a part file
//! truncated by a restarted download, or a write racing the read, is then
//! refused here rather than blamed on this node by the receiver.
//!
//! Cached views hold the part file open; a view whose download record is
//! gone (finished, withdrawn) is dropped by [`Partials::prune`], which the
//! server calls now and then, so a deleted part file's space is given back.
//! The caller finds the record ([`crate::store::Snapshot::downloads_of`]);
//! this module only reads what it names.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use peershare_proto::bitmap::Bitmap;
use peershare_proto::manifest::{chunk_count, chunk_size_for};
use peershare_proto::{FileId, Manifest};

use crate::partial::load_state;
use crate::store::{Download, Library};

/// Downloads whose view is cached at once, at most; beyond it the cache
/// starts over (a node has a handful of downloads in progress).
pub const MAX_CACHED: usize = 64;

/// The servable part of one download in progress.
#[derive(Clone)]
pub struct View {
    pub part: Arc<File>,
    pub have: Arc<Bitmap>,
    pub manifest: Arc<Manifest>,
    pub size: u64,
}

/// State file identity: inode, mtime (ns), length.
pub(crate) type Stamp = (u64, i64, u64);

#[derive(Default)]
pub struct Partials {
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    /// By file ID: the state file's path and stamp when read, the view.
    views: HashMap<FileId, (PathBuf, Stamp, View)>,
    /// Library revision the views were last pruned at.
    revision: u64,
}

impl Cache {
    /// Records come and go with the library: forgets the views (and closes
    /// the files) of those that went, once per library revision.
    fn prune(&mut self, snap: &crate::store::Snapshot) {
        if self.revision == snap.revision {
            return;
        }
        let live: std::collections::HashSet<&str> =
            snap.downloads.values().map(|d| d.id.as_str()).collect();
        self.views
            .retain(|id, _| live.contains(id.to_string().as_str()));
        self.revision = snap.revision;
    }
}

impl Partials {
    /// Drops the views of downloads no longer recorded. The server calls
    /// it now and then, so a part file deleted while nobody asks is not
    /// held open.
    pub fn prune(&self, library: &Library) {
        if let Ok(snap) = library.snapshot() {
            self.cache.lock().expect("partials lock").prune(&snap);
        }
    }

    /// The current view of this node's download `d` (a record of the
    /// library), if its part file can be opened.
    ///
    /// The cache's lock is never held across file I/O: the state file's
    /// stat comes first, the reads (state file, manifest, part file) after
    /// a look in the cache, so a read that hangs (a stuck disk, a FIFO in
    /// place of a state file) holds up only the request that made it. Two
    /// callers that miss at once may both read; the later one's view stays.
    pub fn view(&self, library: &Library, d: &Download) -> Option<View> {
        let id = &d.file_id()?;
        let stamp = state_stamp(&d.state);
        let cached_manifest = {
            let cache = self.cache.lock().expect("partials lock");
            match cache.views.get(id) {
                Some((p, s, v)) if *p == d.state && *s == stamp && v.size == d.size => {
                    return Some(v.clone());
                }
                Some((_, _, v)) => Some(v.manifest.clone()),
                None => None,
            }
        };
        let n = chunk_count(d.size, chunk_size_for(d.size)) as u32;
        let have = load_state(&d.state, id, d.size, n).unwrap_or_else(|| Bitmap::new(n));
        let manifest = match cached_manifest {
            Some(m) => m,
            None => Arc::new(library.manifest(id).ok()??),
        };
        let Ok(part) = File::open(&d.part) else {
            self.cache.lock().expect("partials lock").views.remove(id);
            return None;
        };
        let view = View {
            part: Arc::new(part),
            have: Arc::new(have),
            manifest,
            size: d.size,
        };
        let mut cache = self.cache.lock().expect("partials lock");
        if cache.views.len() >= MAX_CACHED {
            cache.views.clear();
        }
        cache
            .views
            .insert(*id, (d.state.clone(), stamp, view.clone()));
        Some(view)
    }
}

/// The state file's stamp; all zero while there is none (nothing
/// verified is on disk yet).
pub(crate) fn state_stamp(path: &Path) -> Stamp {
    match std::fs::metadata(path) {
        Ok(m) => (m.ino(), m.mtime() * 1_000_000_000 + m.mtime_nsec(), m.len()),
        Err(_) => (0, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partial::part_paths;
    use peershare_proto::Manifest;

    #[test]
    fn cached_views_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::open(dir.path().join("data")).unwrap();
        let mut ids = Vec::new();
        for i in 0..MAX_CACHED + 8 {
            let content = format!("download number {i}");
            let m = Manifest::from_bytes(content.as_bytes());
            let out = dir.path().join(format!("f{i}"));
            let (part, state) = part_paths(&out);
            std::fs::write(&part, &content).unwrap();
            let d = Download {
                id: m.id().to_string(),
                name: format!("f{i}"),
                size: content.len() as u64,
                part,
                state,
                unlisted: false,
            };
            lib.begin_download(&out, &m, d.clone()).unwrap();
            ids.push(d);
        }
        let partials = Partials::default();
        for d in &ids {
            let v = partials.view(&lib, d).expect("a view of each download");
            assert_eq!(v.have.count(), 0, "no state file: nothing verified");
            assert!(partials.cache.lock().unwrap().views.len() <= MAX_CACHED);
        }
    }
}
