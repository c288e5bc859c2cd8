//! Answers for folder IDs (PROTOCOL.md, section 15): a folder's encoding is
//! served like a file, its manifest for `GetManifest` and its chunks for
//! `GetChunk`, from the folder store's copy of it.
//!
//! A folder is offered while its record is in the store; its manifest only
//! while every distinct file of it is shared here unchanged, so a folder
//! whose files changed (or were unshared) can no longer be started, and a
//! downloader that already has the encoding gets each missing file refused
//! by its own ID. Chunks of the encoding are checked against the manifest's
//! hashes as they are read, so a tampered `.folder` file is never sent.

use super::answers::{chunk_span, chunks_of, shared_entry_in};
use super::*;
use peershare_proto::FolderId;

/// The answer to `GetManifest` for folder `id`, if this node has such a
/// folder (`None`: not a folder here).
pub(super) fn folder_manifest(ctx: &Ctx, req_id: u32, id: &FileId) -> Option<Message> {
    let fid = FolderId(id.0);
    let record = match ctx.folders.get(&fid) {
        Ok(Some(r)) => r,
        Ok(None) => return None,
        Err(e) => return Some(internal(req_id, e)),
    };
    let folder = match ctx.folders.folder(&fid) {
        Ok(Some(f)) => f,
        Ok(None) => return None,
        Err(e) => return Some(internal(req_id, e)),
    };
    let snap = match ctx.library.snapshot() {
        Ok(s) => s,
        Err(e) => return Some(internal(req_id, e)),
    };
    for file in folder.distinct_files() {
        if shared_entry_in(ctx, &snap, &file.id).is_none() && ctx.live.get(&file.id).is_none() {
            return Some(error(
                req_id,
                ErrorCode::NotFound,
                format!(
                    "folder {id} ({:?}) is no longer shared here: {:?} changed or was unshared; share the folder again",
                    record.name, file.paths[0]
                ),
            ));
        }
    }
    // The store's cached manifest: hashing the encoding (up to 32 MiB)
    // again for every request would cost more than checking the files.
    match ctx.folders.manifest(&fid) {
        Ok(Some(m)) => Some(Message::Manifest {
            req_id,
            bytes: m.encode().into(),
        }),
        Ok(None) => None,
        Err(e) => Some(internal(req_id, e)),
    }
}

/// Where chunk `index` of folder `id`'s encoding is (`None`: not a folder
/// here).
pub(super) fn plan_folder_chunk(
    ctx: &Ctx,
    req_id: u32,
    id: FileId,
    index: u32,
) -> Option<Result<ChunkPlan, Message>> {
    let fid = FolderId(id.0);
    let manifest = match ctx.folders.manifest(&fid) {
        Ok(Some(m)) => m,
        Ok(None) => return None,
        Err(e) => return Some(Err(internal(req_id, e))),
    };
    let name = match ctx.folders.get(&fid) {
        Ok(Some(r)) => r.name,
        Ok(None) => return None,
        Err(e) => return Some(Err(internal(req_id, e))),
    };
    Some(plan(ctx, req_id, id, index, &manifest, &name))
}

fn plan(
    ctx: &Ctx,
    req_id: u32,
    id: FileId,
    index: u32,
    manifest: &peershare_proto::Manifest,
    name: &str,
) -> Result<ChunkPlan, Message> {
    let (start, len) = chunk_span(req_id, &id, manifest.size(), index)?;
    let Some(hash) = manifest.hashes().get(index as usize) else {
        return Err(not_here(req_id, &id));
    };
    let path = ctx.folders.encoding_path(&FolderId(id.0));
    let file = File::open(&path).map_err(|e| internal(req_id, e))?;
    Ok(ChunkPlan {
        req_id,
        index,
        id,
        file: Arc::new(file),
        start,
        len,
        check: Check::Hash(*hash),
        name: format!("{name}/").into(),
        of_chunks: chunks_of(manifest.size()),
    })
}

/// True when `id` is a folder this node shares (for `GetHave`: all of its
/// encoding's chunks).
pub(super) fn has_folder(ctx: &Ctx, id: &FileId) -> bool {
    ctx.folders.get(&FolderId(id.0)).is_ok_and(|r| r.is_some())
}
