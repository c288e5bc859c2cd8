//! The catalog: what this node lists, cached per revision, paged.
//!
//! One item per shared name and content (PROTOCOL.md, section 6.4): a
//! content shared at two names is two items with one file ID, and each
//! listed folder of the folder store is an item flagged `FOLDER` besides
//! its files (listed under `NAME/...` like any file).

use std::collections::{BTreeMap, HashSet};

use peershare_proto::wire::{MAX_CATALOG_ENTRIES, check_shared_name};

use super::answers::unchanged;
use super::*;
use crate::folders::FolderRecord;

/// What a catalog is built from, and so cached by: the library's revision,
/// the live offers' and the folder store's stamp.
type Revision = (u64, u64, Vec<u8>);

/// The catalog's items: sorted by name (then ID), one per shared name and
/// content, with every library entry holding that content under that name;
/// then folder entries among them. Cached per [`Revision`]; whether a file
/// is unchanged on disk is checked only for the page being answered, so a
/// request costs O(page), not O(library).
pub(super) fn catalog_list(ctx: &Ctx) -> Result<CachedCatalog, crate::error::StoreError> {
    let snap = if ctx.only_live {
        Arc::new(Snapshot::default())
    } else {
        ctx.library.snapshot()?
    };
    let folder_stamp = if ctx.only_live {
        Vec::new()
    } else {
        ctx.folders.stamp()?
    };
    let (live_revision, live) = ctx.live.list();
    let revision = (snap.revision, live_revision, folder_stamp);
    let mut cache = ctx.catalog.lock().expect("catalog cache lock");
    if let Some(c) = cache.as_ref()
        && c.revision == revision
    {
        return Ok(c.clone());
    }
    // The folders change less often than the library: decoded only when
    // the store changed.
    let folders = match cache.as_ref() {
        Some(c) if c.revision.2 == revision.2 => c.folders.clone(),
        _ if ctx.only_live => Arc::default(),
        _ => Arc::new(listed_folders(&ctx.folders)?),
    };
    ctx.examined(snap.files.len() + snap.downloads.len());
    let mut items: BTreeMap<(String, FileId), (CatalogEntry, Source)> = BTreeMap::new();
    // A library an older release wrote may hold names no node may list:
    // never listed (still served by ID).
    let listable = |name: &str| check_shared_name(name).is_ok();
    // Contents shared whole here, and contents shared unlisted (whose
    // downloads in progress are not listed either).
    let mut whole = HashSet::new();
    let mut unlisted = HashSet::new();
    for o in live.iter().filter(|o| o.unlisted) {
        unlisted.insert(o.id);
    }
    // Every shared name, unless shared unlisted.
    for e in snap.files.values() {
        let Some(id) = e.file_id() else { continue };
        whole.insert(id);
        if e.unlisted {
            unlisted.insert(id);
            continue;
        }
        if !listable(&e.name) {
            continue;
        }
        let item = items.entry((e.name.clone(), id)).or_insert_with(|| {
            let entry = CatalogEntry {
                id,
                size: e.size,
                flags: 0,
                name: e.name.clone(),
            };
            (entry, Source::Files(Vec::new()))
        });
        if let (_, Source::Files(paths)) = item {
            paths.push(e.clone());
        }
    }
    // This process's downloads: the finished ones are whole files of their
    // own (shared or not); those in progress are listed unless the content
    // is shared whole (then its files are listed and served) or unlisted.
    // A shared file under the same name is preferred as its source.
    for o in live.iter().filter(|o| !o.unlisted && listable(&o.name)) {
        let complete = o.is_complete();
        if !complete && (whole.contains(&o.id) || unlisted.contains(&o.id)) {
            continue;
        }
        if complete && unlisted.contains(&o.id) {
            continue;
        }
        let flags = if complete { 0 } else { entry_flags::PARTIAL };
        items.entry((o.name.clone(), o.id)).or_insert_with(|| {
            let entry = CatalogEntry {
                id: o.id,
                size: o.size(),
                flags,
                name: o.name.clone(),
            };
            (entry, Source::Live(o.clone()))
        });
    }
    // Downloads another process records, by the same rule (a live offer
    // of the same download is the fresher source).
    for d in snap.downloads.values() {
        let Some(id) = d.file_id() else { continue };
        if d.unlisted || !listable(&d.name) || whole.contains(&id) || unlisted.contains(&id) {
            continue;
        }
        items.entry((d.name.clone(), id)).or_insert_with(|| {
            let entry = CatalogEntry {
                id,
                size: d.size,
                flags: entry_flags::PARTIAL,
                name: d.name.clone(),
            };
            (entry, Source::Partial(d.clone()))
        });
    }
    // Folders whose every file is shared whole here (the server offers
    // no other: `folder::folder_manifest`).
    let complete: HashSet<FileId> = live
        .iter()
        .filter(|o| o.is_complete())
        .map(|o| o.id)
        .collect();
    for f in folders.iter() {
        if !f
            .files
            .iter()
            .all(|id| whole.contains(id) || complete.contains(id))
        {
            continue;
        }
        let entry = CatalogEntry {
            id: f.id,
            size: f.record.size,
            flags: entry_flags::FOLDER,
            name: f.record.name.clone(),
        };
        items.insert(
            (f.record.name.clone(), f.id),
            (entry, Source::Folder(f.record.root.clone())),
        );
    }
    let mut items: Vec<_> = items.into_values().collect();
    // `share` refuses to list more, but a library an older release wrote may
    // hold more: no catalog of ours is longer than a client keeps.
    let limit = MAX_CATALOG_ENTRIES;
    if items.len() > limit {
        tracing::warn!(
            "the library lists {} files and folders, more than the {limit} a catalog holds; listing the first {limit} by name",
            items.len()
        );
        items.truncate(limit);
    }
    let built = CachedCatalog {
        revision,
        items: Arc::new(items),
        folders,
    };
    *cache = Some(built.clone());
    Ok(built)
}

/// A folder the catalog may list: its record, and the distinct files it
/// needs shared here.
pub(super) struct ListedFolder {
    id: FileId,
    record: FolderRecord,
    files: Vec<FileId>,
}

/// The folder store's listed folders (not unlisted, named as a folder may
/// be) with their distinct files. A folder whose encoding cannot be read
/// is left out with a warning (it cannot be served either).
fn listed_folders(
    store: &crate::folders::FolderStore,
) -> Result<Vec<ListedFolder>, crate::error::StoreError> {
    let mut out = Vec::new();
    for record in store.list()? {
        if record.unlisted
            || peershare_proto::folder::check_folder_name(&record.name).is_err()
            || check_shared_name(&record.name).is_err()
        {
            continue;
        }
        let Some(id) = record.folder_id() else {
            continue;
        };
        let folder = match store.folder(&id) {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("{e}");
                continue;
            }
        };
        let files = folder.distinct_files().iter().map(|f| f.id).collect();
        out.push(ListedFolder {
            id: FileId(id.0),
            record,
            files,
        });
    }
    Ok(out)
}

#[derive(Clone)]
pub(super) struct CachedCatalog {
    /// What it was built from.
    pub(super) revision: Revision,
    pub(super) items: Arc<Vec<(CatalogEntry, Source)>>,
    /// The folder store's listed folders at `revision.2`.
    folders: Arc<Vec<ListedFolder>>,
}

impl CachedCatalog {
    /// The revision a `Catalog` message carries: it changes whenever what
    /// the catalog is built from does.
    fn wire_revision(&self) -> u64 {
        let (library, live, folders) = &self.revision;
        let folders = peershare_proto::id::sha256(folders);
        let folders = u64::from_be_bytes(folders[..8].try_into().expect("8 bytes"));
        library.wrapping_add(*live).wrapping_add(folders)
    }
}

/// Where a catalog item's bytes are.
#[derive(Clone)]
pub(super) enum Source {
    /// Shared files with this content (any unchanged one will do).
    Files(Vec<Entry>),
    /// This node's download in progress (recorded in the library).
    Partial(Download),
    /// This process's download (in progress, or finished while it runs).
    Live(Arc<crate::live::LiveOffer>),
    /// A shared folder, rooted there.
    Folder(std::path::PathBuf),
}

impl Source {
    /// Servable now: some file unchanged since hashed, or the part file there.
    fn is_live(&self) -> bool {
        match self {
            Source::Files(paths) => paths
                .iter()
                .any(|e| std::fs::metadata(&e.path).is_ok_and(|m| e.matches(&m))),
            Source::Partial(d) => d.part.exists(),
            Source::Live(o) => match o.servable() {
                Some(Servable::Complete(e)) => unchanged(&e),
                Some(Servable::Partial(_)) => true,
                None => false,
            },
            Source::Folder(root) => root.is_dir(),
        }
    }
}

/// The catalog page at `cursor`; folder entries only for a client that
/// understands them (`folders`: its `Hello` has `FOLDERS`).
pub(super) fn catalog(ctx: &Ctx, req_id: u32, cursor: u32, folders: bool) -> Message {
    let list = match catalog_list(ctx) {
        Ok(c) => c,
        Err(e) => return internal(req_id, e),
    };
    let all = &list.items;
    let mut entries = Vec::new();
    let mut used = 0;
    let mut i = cursor as usize;
    while i < all.len() {
        let (entry, source) = &all[i];
        // Withdrawn (changed on disk) unless some copy is still as hashed.
        if (entry.is_folder() && !folders) || !source.is_live() {
            i += 1;
            continue;
        }
        let len = catalog_entry_len(entry);
        if !entries.is_empty() && used + len > CATALOG_PAGE_BUDGET {
            break;
        }
        used += len;
        entries.push(entry.clone());
        i += 1;
    }
    Message::Catalog {
        req_id,
        revision: list.wire_revision(),
        next: (i < all.len()).then_some(i as u32),
        entries,
    }
}
