//! The catalog: what this node lists, cached per revision, paged.

use super::answers::unchanged;
use super::*;

/// The library's files as a catalog lists them: sorted by name, one item
/// per file ID, with every library entry holding that content. Cached per
/// library revision; whether a file is unchanged on disk is checked only
/// for the page being answered, so a request costs O(page), not O(library).
pub(super) fn catalog_list(ctx: &Ctx) -> Result<CachedCatalog, crate::error::StoreError> {
    let snap = if ctx.only_live {
        Arc::new(Snapshot::default())
    } else {
        ctx.library.snapshot()?
    };
    let (live_revision, live) = ctx.live.list();
    let revision = (snap.revision, live_revision);
    let mut cache = ctx.catalog.lock().expect("catalog cache lock");
    if let Some(c) = cache.as_ref()
        && c.revision == revision
    {
        return Ok(c.clone());
    }
    ctx.examined(snap.files.len() + snap.downloads.len());
    let mut by_id: HashMap<FileId, (CatalogEntry, Source)> = HashMap::new();
    // Unlisted files are served to whoever names their ID, never listed
    // (nor their downloads in progress).
    let mut unlisted = std::collections::HashSet::new();
    // A library an older release wrote may hold names no node may list:
    // never listed (still served by ID).
    let listable = |name: &str| peershare_proto::wire::check_shared_name(name).is_ok();
    // This process's downloads first: their offer is the freshest.
    for o in live.iter().filter(|o| listable(&o.name)) {
        if o.unlisted {
            unlisted.insert(o.id);
            continue;
        }
        let flags = if o.is_complete() {
            0
        } else {
            entry_flags::PARTIAL
        };
        let entry = CatalogEntry {
            id: o.id,
            size: o.size(),
            flags,
            name: o.name.clone(),
        };
        by_id.insert(o.id, (entry, Source::Live(o.clone())));
    }
    for e in snap.files.values() {
        if !listable(&e.name) {
            continue;
        }
        if e.unlisted {
            unlisted.extend(e.file_id());
            continue;
        }
        let Some(id) = e.file_id() else { continue };
        if unlisted.contains(&id) {
            continue;
        }
        let item = by_id.entry(id).or_insert_with(|| {
            let entry = CatalogEntry {
                id,
                size: e.size,
                flags: 0,
                name: e.name.clone(),
            };
            (entry, Source::Files(Vec::new()))
        });
        match item {
            (_, Source::Files(paths)) => paths.push(e.clone()),
            // A whole copy beats a download in progress.
            (entry, source @ Source::Live(_)) => {
                entry.flags = 0;
                *source = Source::Files(vec![e.clone()]);
            }
            _ => {}
        }
    }
    // Downloads in progress, unless a whole copy is shared.
    for d in snap.downloads.values() {
        if !listable(&d.name) {
            continue;
        }
        let Some(id) = d.file_id() else { continue };
        if d.unlisted || unlisted.contains(&id) {
            continue;
        }
        by_id.entry(id).or_insert_with(|| {
            let entry = CatalogEntry {
                id,
                size: d.size,
                flags: entry_flags::PARTIAL,
                name: d.name.clone(),
            };
            (entry, Source::Partial(d.clone()))
        });
    }
    let mut items: Vec<_> = by_id.into_values().collect();
    items.sort_by(|a, b| a.0.name.cmp(&b.0.name).then(a.0.id.cmp(&b.0.id)));
    // `share` refuses to list more, but a library an older release wrote may
    // hold more: no catalog of ours is longer than a client keeps.
    let limit = peershare_proto::wire::MAX_CATALOG_ENTRIES;
    if items.len() > limit {
        tracing::warn!(
            "the library lists {} files, more than the {limit} a catalog holds; listing the first {limit} by name",
            items.len()
        );
        items.truncate(limit);
    }
    let built = CachedCatalog {
        revision,
        items: Arc::new(items),
    };
    *cache = Some(built.clone());
    Ok(built)
}

#[derive(Clone)]
pub(super) struct CachedCatalog {
    /// The library's revision and the live offers' it was built at.
    pub(super) revision: (u64, u64),
    pub(super) items: Arc<Vec<(CatalogEntry, Source)>>,
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
        }
    }
}

pub(super) fn catalog(ctx: &Ctx, req_id: u32, cursor: u32) -> Message {
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
        if !source.is_live() {
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
        revision: list.revision.0 + list.revision.1,
        next: (i < all.len()).then_some(i as u32),
        entries,
    }
}
