//! The answers to requests: what this node offers of a file (the library,
//! this process's live downloads, downloads recorded by another process),
//! manifests, `Have` and its subscriptions, and where a chunk's bytes are.

use super::*;

/// Builds the answer to one request.
pub(super) fn respond(ctx: &Arc<Ctx>, conn: &Arc<ConnState>, msg: Message) -> Pending {
    match msg {
        Message::GetCatalog { req_id, cursor } => {
            // Building a catalog stats every shared file: never on an async
            // worker.
            let ctx = ctx.clone();
            let folders = conn.folders;
            Pending::Job(tokio::task::spawn_blocking(move || {
                catalog::catalog(&ctx, req_id, cursor, folders)
            }))
        }
        Message::GetManifest { req_id, id } => {
            // Reads (up to `MAX_MANIFEST_LEN` bytes) and hashes a file, and
            // may re-read the library: never on an async worker.
            let ctx = ctx.clone();
            Pending::Job(tokio::task::spawn_blocking(move || {
                manifest(&ctx, req_id, id)
            }))
        }
        Message::GetChunk { req_id, id, index } => {
            conn.open(req_id);
            let ctx = ctx.clone();
            let conn = conn.clone();
            Pending::Chunk(tokio::task::spawn_blocking(move || {
                plan_chunk(&ctx, &conn, req_id, id, index)
            }))
        }
        Message::GetHave {
            req_id,
            id,
            subscribe,
        } => {
            conn.open(req_id);
            let ctx = ctx.clone();
            let conn = conn.clone();
            Pending::Job(tokio::task::spawn_blocking(move || {
                have(&ctx, &conn, req_id, id, subscribe)
            }))
        }
        Message::Cancel { req_id } => {
            conn.cancel(req_id);
            Pending::Nothing
        }
        Message::Hello(_)
        | Message::Error { .. }
        | Message::Catalog { .. }
        | Message::Manifest { .. }
        | Message::Chunk { .. }
        | Message::Have { .. } => Pending::Fatal(error(
            0,
            ErrorCode::BadRequest,
            "unexpected message from a client",
        )),
    }
}

/// What this node offers of a file, best first.
pub(super) enum Offer {
    /// A shared copy unchanged on disk (or a finished download of this
    /// process: the same thing).
    Shared(Entry),
    /// This process's download in progress, and its shared name.
    Live(View, String),
    /// A download recorded in the library (another process's, through its
    /// state file).
    Recorded(Download),
}

/// What this node offers of `id` (blocking: it may `stat` and `open`).
pub(super) fn offer(ctx: &Ctx, id: &FileId) -> Option<Offer> {
    if !ctx.only_live
        && let Some(e) = shared_entry(ctx, id)
    {
        return Some(Offer::Shared(e));
    }
    if let Some(live) = ctx.live.get(id) {
        match live.servable() {
            Some(Servable::Complete(e)) if unchanged(&e) => return Some(Offer::Shared(e)),
            Some(Servable::Partial(view)) => return Some(Offer::Live(view, live.name.clone())),
            _ => {}
        }
    }
    if !ctx.only_live
        && let Some(d) = partial_download(ctx, id)
    {
        return Some(Offer::Recorded(d));
    }
    None
}

/// True when the file an entry names is as it was when recorded.
pub(super) fn unchanged(e: &Entry) -> bool {
    std::fs::metadata(&e.path).is_ok_and(|m| e.matches(&m))
}

/// The answer to `GetManifest`: the manifest of a file offered here
/// (shared, or a download in progress), or `NotFound`.
pub(super) fn manifest(ctx: &Ctx, req_id: u32, id: FileId) -> Message {
    let Some(offer) = offer(ctx, &id) else {
        if !ctx.only_live
            && let Some(answer) = super::folder::folder_manifest(ctx, req_id, &id)
        {
            return answer;
        }
        return not_here(req_id, &id);
    };
    // This process's download (finished or not): its manifest is in memory.
    let in_memory = match &offer {
        Offer::Live(view, _) => Some(view.manifest.clone()),
        _ => ctx.live.get(&id).map(|l| l.manifest.clone()),
    };
    if let Some(m) = in_memory {
        return Message::Manifest {
            req_id,
            bytes: m.encode().into(),
        };
    }
    match ctx.library.manifest_bytes(&id) {
        Ok(Some(bytes)) => Message::Manifest {
            req_id,
            bytes: bytes.into(),
        },
        Ok(None) => not_here(req_id, &id),
        Err(e) => internal(req_id, e),
    }
}

/// An entry for `id` whose file is unchanged on disk, if any: read by
/// file ID from the library's index, whatever the library's size.
pub(super) fn shared_entry(ctx: &Ctx, id: &FileId) -> Option<Entry> {
    ctx.library
        .entries_by_id(id)
        .ok()?
        .into_iter()
        .inspect(|_| ctx.examined(1))
        .find(|e| std::fs::metadata(&e.path).is_ok_and(|m| e.matches(&m)))
}

/// [`shared_entry`] in `snap`: looks at the entries of `id` only.
pub(super) fn shared_entry_in(ctx: &Ctx, snap: &Snapshot, id: &FileId) -> Option<Entry> {
    snap.by_id(&id.to_string())
        .inspect(|_| ctx.examined(1))
        .find(|e| std::fs::metadata(&e.path).is_ok_and(|m| e.matches(&m)))
        .cloned()
}

/// This node's download of `id` in progress (its part file there), if any,
/// read by file ID from the library's index. Callers prefer a whole shared
/// copy when there is one.
pub(super) fn partial_download(ctx: &Ctx, id: &FileId) -> Option<Download> {
    ctx.library
        .downloads_by_id(id)
        .ok()?
        .into_iter()
        .map(|(_, d)| d)
        .inspect(|_| ctx.examined(1))
        .find(|d| d.part.exists())
}

/// Which chunks of `id` this node offers: all of a shared file (or of a
/// download that has every chunk), the verified ones of a download in
/// progress, or `None`.
pub(super) fn holding(ctx: &Ctx, id: &FileId) -> Option<Holding> {
    let Some(offer) = offer(ctx, id) else {
        let folder = !ctx.only_live && super::folder::has_folder(ctx, id);
        return folder.then_some(Holding::All);
    };
    match offer {
        Offer::Shared(_) => Some(Holding::All),
        Offer::Live(view, _) => Some(partial_holding(&view)),
        Offer::Recorded(d) => Some(partial_holding(&ctx.partials.view(&ctx.library, &d)?)),
    }
}

/// What a view of a download in progress offers.
pub(super) fn partial_holding(view: &crate::partials::View) -> Holding {
    if view.have.is_full() {
        Holding::All
    } else {
        Holding::Some((*view.have).clone())
    }
}

/// The answer to `GetHave`: every chunk of a shared file, the verified
/// chunks of a download in progress (and, with `subscribe`, a task that
/// sends them again whenever they grow), or `NotFound`.
pub(super) fn have(
    ctx: &Arc<Ctx>,
    conn: &Arc<ConnState>,
    req_id: u32,
    id: FileId,
    subscribe: bool,
) -> Message {
    let (answer, known) = match holding(ctx, &id) {
        None => (not_here(req_id, &id), None),
        Some(holding) => {
            let known = match &holding {
                Holding::All => None,
                Holding::Some(b) => Some(b.count()),
            };
            (Message::Have { req_id, holding }, known)
        }
    };
    // Lock order: subscriptions, then open requests (as in `cancel`): a
    // `Cancel` either marked this request already, or finds the
    // subscription once it is in place.
    let mut subs = conn.subscriptions.lock().expect("subscriptions lock");
    let cancelled = conn.take_cancelled(req_id);
    let (true, false, false, Some(known)) = (subscribe, cancelled, subs.closed, known) else {
        return answer;
    };
    if subs.tasks.len() >= MAX_HAVE_SUBSCRIPTIONS && !subs.tasks.contains_key(&req_id) {
        return error(
            req_id,
            ErrorCode::Busy,
            format!("at most {MAX_HAVE_SUBSCRIPTIONS} have subscriptions per connection"),
        );
    }
    let task = tokio::runtime::Handle::current().spawn(subscription(
        ctx.clone(),
        conn.clone(),
        req_id,
        id,
        known,
    ));
    if let Some(old) = subs.tasks.insert(req_id, task.abort_handle()) {
        old.abort();
    }
    answer
}

/// Sends `Have` for download `id` whenever it holds more than `known`
/// chunks, until it is whole (a last `Have` of all), gone (an `Error`), or
/// the client cancels or disconnects (the task is aborted).
pub(super) async fn subscription(
    ctx: Arc<Ctx>,
    conn: Arc<ConnState>,
    req_id: u32,
    id: FileId,
    mut known: u32,
) {
    let mut tick = tokio::time::interval(HAVE_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut watch = Watch::new(id);
    loop {
        tick.tick().await;
        let c = ctx.clone();
        let Ok((w, seen)) = tokio::task::spawn_blocking(move || {
            let seen = watch.check(&c);
            (watch, seen)
        })
        .await
        else {
            break;
        };
        watch = w;
        let Some(now) = seen else { continue };
        let (msg, last) = match now {
            None => (
                error(
                    req_id,
                    ErrorCode::Unavailable,
                    format!("the download of {id} stopped here"),
                ),
                true,
            ),
            Some(Holding::All) => (
                Message::Have {
                    req_id,
                    holding: Holding::All,
                },
                true,
            ),
            Some(Holding::Some(b)) if b.count() > known => {
                known = b.count();
                (
                    Message::Have {
                        req_id,
                        holding: Holding::Some(b),
                    },
                    false,
                )
            }
            Some(Holding::Some(_)) => continue,
        };
        if conn.push.send(msg).await.is_err() || last {
            break;
        }
    }
    conn.subscriptions
        .lock()
        .expect("subscriptions lock")
        .tasks
        .remove(&req_id);
}

/// What a `Have` subscription has seen of its download, so that a check
/// that finds nothing new costs one read of the library's revision (an
/// indexed row of its database) and one `stat` (the download's state
/// file) whatever the library's size: the download is looked up again (by
/// ID) only when the library changed, and its state file read again only
/// when its stamp did.
pub(super) struct Watch {
    id: FileId,
    /// The library revision the download was last looked up at.
    revision: Option<u64>,
    /// The download's record then (`None`: gone).
    download: Option<Download>,
    /// Its state file's stamp when last read.
    stamp: Option<crate::partials::Stamp>,
    /// The live offer's set last seen.
    live_seen: Option<Arc<peershare_proto::bitmap::Bitmap>>,
}

impl Watch {
    fn new(id: FileId) -> Self {
        Self {
            id,
            revision: None,
            download: None,
            stamp: None,
            live_seen: None,
        }
    }

    /// `None` when nothing changed since the last check; otherwise what
    /// this node holds of the file now (`Some(None)`: nothing, the
    /// download is gone).
    fn check(&mut self, ctx: &Ctx) -> Option<Option<Holding>> {
        ctx.stats.have_checks.fetch_add(1, Ordering::Relaxed);
        // This process's download: in memory, no file looked at.
        if let Some(live) = ctx.live.get(&self.id) {
            return match live.have() {
                None => Some(Some(Holding::All)),
                Some(have)
                    if self
                        .live_seen
                        .as_ref()
                        .is_some_and(|s| Arc::ptr_eq(s, &have)) =>
                {
                    None
                }
                Some(have) => {
                    self.live_seen = Some(have.clone());
                    Some(Some(Holding::Some((*have).clone())))
                }
            };
        }
        if ctx.only_live {
            return Some(None);
        }
        let Ok(revision) = ctx.library.revision() else {
            return Some(None);
        };
        if self.revision != Some(revision) {
            self.revision = Some(revision);
            self.stamp = None;
            // Finished (and shared), or withdrawn?
            if shared_entry(ctx, &self.id).is_some() {
                return Some(Some(Holding::All));
            }
            self.download = partial_download(ctx, &self.id);
        }
        let Some(d) = self.download.as_ref() else {
            return Some(None);
        };
        let stamp = crate::partials::state_stamp(&d.state);
        if self.stamp == Some(stamp) {
            return None;
        }
        self.stamp = Some(stamp);
        Some(
            ctx.partials
                .view(&ctx.library, d)
                .map(|v| partial_holding(&v)),
        )
    }
}

/// Where the bytes of chunk `index` of `id` are, for the write side to
/// read as it sends them: a shared file unchanged since it was hashed (or,
/// with none, a download in progress that verified it). Only `stat`s and
/// an `open` here; nothing of the chunk is read.
pub(super) fn plan_chunk(
    ctx: &Ctx,
    conn: &ConnState,
    req_id: u32,
    id: FileId,
    index: u32,
) -> Result<ChunkPlan, Message> {
    let files = &conn.files;
    let cached = files.lock().expect("open files lock").get(&id).cloned();
    let (file, entry) = match cached {
        Some(c) => c,
        None => {
            let entry = match offer(ctx, &id) {
                None if !ctx.only_live => {
                    return super::folder::plan_folder_chunk(ctx, req_id, id, index)
                        .unwrap_or_else(|| Err(not_here(req_id, &id)));
                }
                None => return Err(not_here(req_id, &id)),
                Some(Offer::Shared(entry)) => entry,
                Some(Offer::Live(view, name)) => {
                    return plan_partial_chunk(req_id, id, index, &view, &name);
                }
                Some(Offer::Recorded(d)) => {
                    let Some(view) = ctx.partials.view(&ctx.library, &d) else {
                        return Err(not_here(req_id, &id));
                    };
                    return plan_partial_chunk(req_id, id, index, &view, &d.name);
                }
            };
            let file = File::open(&entry.path).map_err(|e| internal(req_id, e))?;
            let mut open = files.lock().expect("open files lock");
            // A handful of files per connection at most; start over rather
            // than grow without bound.
            if open.len() >= 16 {
                open.clear();
            }
            let c = (Arc::new(file), entry);
            open.insert(id, c.clone());
            c
        }
    };
    let (start, len) = chunk_span(req_id, &id, entry.size, index)?;
    // The file must still be what was hashed: same size and mtime (and so
    // again after every slice read).
    if !file.metadata().is_ok_and(|m| entry.matches(&m)) {
        conn.forget_file(&id);
        return Err(error(
            req_id,
            ErrorCode::Unavailable,
            format!("file {id} changed on disk since it was shared"),
        ));
    }
    Ok(ChunkPlan {
        req_id,
        index,
        id,
        file,
        start,
        len,
        name: entry.name.as_str().into(),
        of_chunks: chunks_of(entry.size),
        check: Check::Unchanged(entry),
    })
}

/// Chunks in a file of `size` bytes.
pub(super) fn chunks_of(size: u64) -> u32 {
    peershare_proto::manifest::chunk_count(size, peershare_proto::manifest::chunk_size_for(size))
        as u32
}

/// Where chunk `index` of file `id`, `size` bytes, lies: its offset and
/// length (canonical chunk size), or the `OutOfRange` answer.
pub(super) fn chunk_span(
    req_id: u32,
    id: &FileId,
    size: u64,
    index: u32,
) -> Result<(u64, usize), Message> {
    let chunk_size = peershare_proto::manifest::chunk_size_for(size) as u64;
    let start = index as u64 * chunk_size;
    if start >= size {
        return Err(error(
            req_id,
            ErrorCode::OutOfRange,
            format!("file {id} has no chunk {index}"),
        ));
    }
    Ok((start, chunk_size.min(size - start) as usize))
}

/// [`plan_chunk`] for a download in progress (`view` of it, shared as
/// `name`): a chunk it verified, to be checked against the manifest as it
/// is read (the part file may have changed under us: a download started
/// over).
pub(super) fn plan_partial_chunk(
    req_id: u32,
    id: FileId,
    index: u32,
    view: &View,
    name: &str,
) -> Result<ChunkPlan, Message> {
    let (start, len) = chunk_span(req_id, &id, view.size, index)?;
    let hash = view.manifest.hashes().get(index as usize);
    let (true, Some(hash)) = (view.have.get(index), hash) else {
        return Err(error(
            req_id,
            ErrorCode::Unavailable,
            format!("this node is still downloading {id} and does not hold chunk {index} yet"),
        ));
    };
    Ok(ChunkPlan {
        req_id,
        index,
        id,
        file: view.part.clone(),
        start,
        len,
        check: Check::Hash(*hash),
        name: name.into(),
        of_chunks: view.manifest.chunk_count(),
    })
}
