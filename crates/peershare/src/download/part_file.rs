//! The part file of a download: where verified chunks are written, the
//! durable record of which ones are done (the state file, see
//! [`crate::partial`]), and the finishing step that gives the file its
//! final name.
//!
//! Invariants (each tested below or in `tests/nodes.rs` and the CLI's
//! `tests/faults.rs`):
//! - The state file never lists a chunk that is not durably in the part
//!   file: it is written only after an `fdatasync` of the part file that
//!   succeeded, and after any failed sync it is removed, never written
//!   again in that run (Linux reports a write-back error once: a second
//!   sync "succeeds" with the pages lost).
//! - A chunk counts as done only once its bytes match the manifest: those a
//!   state file lists are hashed again (on all cores) before a resumed
//!   download counts them, so a part file changed between runs (a disk
//!   fault, another program) costs a re-fetch, never a wrong file.
//! - Nothing `get` creates, truncates or writes is reached through a
//!   symbolic link: the part file is opened with `O_NOFOLLOW` and must be a
//!   regular file with no other name; the state file is replaced by
//!   `rename`, which replaces a link rather than following it.
//! - A file under the final name is complete and verified, and finishing
//!   (sync, link to the final name, library, remove the leftovers) can be
//!   killed at any instant: the next run finds the complete file with its
//!   leftovers, checks it against the manifest, and completes ([`recover`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use peershare_proto::FileId;
use peershare_proto::id::sha256;
use peershare_proto::manifest::Manifest;

use crate::error::DownloadError;
use crate::partial::{Bitmap, decode_state, part_paths, store_state};

/// Where a download writes: its final name and the files beside it.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// The shared name (recorded in the library).
    pub name: String,
    pub out: PathBuf,
    pub part: PathBuf,
    pub state: PathBuf,
}

impl Target {
    pub fn new(name: String, out: PathBuf) -> Self {
        let (part, state) = part_paths(&out);
        Self {
            name,
            out,
            part,
            state,
        }
    }
}

/// An I/O error writing `path` as a download error: a full disk says so.
fn disk(path: &Path) -> impl FnOnce(io::Error) -> DownloadError + use<> {
    let path = path.to_path_buf();
    move |source: io::Error| match source.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => DownloadError::DiskFull { path },
        _ => DownloadError::Disk { path, source },
    }
}

/// A failure to write the state file as a download error (its I/O error
/// as it is, so the message names the path once).
fn state_error(path: &Path) -> impl FnOnce(crate::error::StoreError) -> DownloadError + use<> {
    let path = path.to_path_buf();
    move |e| match e {
        crate::error::StoreError::Io { source, .. } => disk(&path)(source),
        other => DownloadError::Disk {
            path,
            source: io::Error::other(other.to_string()),
        },
    }
}

/// A write of a chunk into the part file failed.
pub(super) fn write_error(part: &Path, e: io::Error) -> DownloadError {
    disk(part)(e)
}

/// An opened part file and which of its chunks are done.
pub(super) struct Opened {
    pub file: PartFile,
    pub done: Bitmap,
}

/// Opens (or creates) the part file of `target` for `manifest`, locked
/// against a second download to the same place, and which chunks of it are
/// already done: those a state file for this file lists whose bytes still
/// match the manifest; none when there is no usable state file (the part
/// file is then emptied and allocated).
pub(super) fn open(
    target: &Target,
    id: &FileId,
    manifest: &Manifest,
) -> Result<Opened, DownloadError> {
    let size = manifest.size();
    let n = manifest.chunk_count();
    let file = open_no_follow(&target.part, true)?;
    // One download per output: a second `get` to the same place must not
    // share the part file. The lock ends with the process, crash included.
    if file.try_lock().is_err() {
        return Err(DownloadError::InProgress(target.out.clone()));
    }
    let part_len = file.metadata().map_err(disk(&target.part))?.len();
    let claimed = match read_state(&target.state, id, size, n) {
        StateFile::Absent => None,
        StateFile::Unusable(why) => {
            tracing::warn!(
                "{}: {why}; starting this download over",
                target.state.display()
            );
            None
        }
        StateFile::Usable(_) if part_len != size => {
            tracing::warn!(
                "{} is {part_len} bytes, not {size}: it is not this download's; starting over",
                target.part.display()
            );
            None
        }
        StateFile::Usable(claimed) => Some(claimed),
    };
    let done = match claimed {
        Some(claimed) => {
            let done = verified_chunks(&file, manifest, &claimed).map_err(disk(&target.part))?;
            let stale = claimed.count() - done.count();
            if stale > 0 {
                tracing::warn!(
                    "{stale} of the {} chunks recorded as downloaded in {} no longer match their SHA-256 \
                     (the file changed since the last run); fetching them again",
                    claimed.count(),
                    target.part.display()
                );
                // The record must not vouch for them even once more.
                store_state(&target.state, id, size, &done).map_err(state_error(&target.state))?;
            }
            done
        }
        None => {
            // Starting over: first make sure no older state file can ever
            // vouch for this part file's (new, empty) chunks, durably,
            // before the part file changes.
            remove_durably(&target.state).map_err(disk(&target.state))?;
            file.set_len(0).map_err(disk(&target.part))?;
            if let Err(e) = allocate(&file, size) {
                // Nothing of ours is worth keeping: leave no empty part behind.
                let _ = std::fs::remove_file(&target.part);
                return Err(no_space_or(e, &target.out, size, &target.part));
            }
            Bitmap::new(n)
        }
    };
    Ok(Opened {
        file: PartFile::new(file, &target.part),
        done,
    })
}

/// What a state file says.
enum StateFile {
    Absent,
    /// There, but damaged, unreadable or for another file.
    Unusable(String),
    /// The chunks it lists as done.
    Usable(Bitmap),
}

fn read_state(path: &Path, id: &FileId, size: u64, n: u32) -> StateFile {
    match std::fs::read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => StateFile::Absent,
        Err(e) => StateFile::Unusable(format!("cannot read the record of earlier progress ({e})")),
        Ok(bytes) => match decode_state(&bytes, id, size, n) {
            Some(b) => StateFile::Usable(b),
            None => StateFile::Unusable(
                "the record of earlier progress is damaged or is for another file".into(),
            ),
        },
    }
}

/// Opens `path` read-write (creating it when `create`) without following a
/// symbolic link, and only if it is a regular file with no other name.
fn open_no_follow(path: &Path, create: bool) -> Result<File, DownloadError> {
    let refuse = |why: &str| DownloadError::NotAPlainFile {
        path: path.to_path_buf(),
        why: why.to_owned(),
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refuse("is a symbolic link"),
            _ => disk(path)(e),
        })?;
    let meta = file.metadata().map_err(disk(path))?;
    if !meta.is_file() {
        return Err(refuse("is not a regular file"));
    }
    if meta.nlink() > 1 {
        return Err(refuse("has other names (hard links)"));
    }
    Ok(file)
}

/// Removes `path` if it is there, durably (its directory synced).
fn remove_durably(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The chunks of `claimed` whose bytes in `file` match `manifest`, hashed
/// on every core (threads take chunks from one shared cursor).
pub(super) fn verified_chunks(
    file: &File,
    manifest: &Manifest,
    claimed: &Bitmap,
) -> io::Result<Bitmap> {
    let todo: Vec<u32> = claimed.iter().collect();
    let good: Vec<AtomicBool> = todo.iter().map(|_| AtomicBool::new(false)).collect();
    let cursor = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(todo.len().max(1));
    let first_error: std::sync::Mutex<Option<io::Error>> = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = Vec::new();
                loop {
                    let k = cursor.fetch_add(1, Ordering::Relaxed);
                    let Some(&index) = todo.get(k) else { return };
                    let range = manifest.chunk_range(index).expect("a chunk of this file");
                    buf.resize((range.end - range.start) as usize, 0);
                    match file.read_exact_at(&mut buf, range.start) {
                        Ok(()) => {
                            let ok = sha256(&buf) == manifest.hashes()[index as usize];
                            good[k].store(ok, Ordering::Relaxed);
                        }
                        // A part file shorter than it should be: not done.
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                        Err(e) => {
                            first_error.lock().expect("lock").get_or_insert(e);
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
    let mut done = Bitmap::new(manifest.chunk_count());
    for (k, ok) in good.iter().enumerate() {
        if ok.load(Ordering::Relaxed) {
            done.set(todo[k]);
        }
    }
    Ok(done)
}

/// Whether a previous run's finishing step left the complete file at the
/// final name: that file is there, of the right size, with leftovers of
/// the download beside it (the part or state file) or `vouched` for (the
/// library records it as this download's file), and every chunk of it
/// matches the manifest. Then the leftovers are removed, and true is
/// returned: only the library remains to update. Otherwise nothing is
/// touched. A download to the same place running now is
/// [`DownloadError::InProgress`].
pub(super) fn recover(
    target: &Target,
    manifest: &Manifest,
    vouched: bool,
) -> Result<bool, DownloadError> {
    let Ok(out_meta) = target.out.symlink_metadata() else {
        return Ok(false);
    };
    let part_meta = target.part.symlink_metadata().ok();
    let leftovers = part_meta.is_some() || target.state.symlink_metadata().is_ok();
    if !out_meta.is_file() || out_meta.len() != manifest.size() || !(leftovers || vouched) {
        return Ok(false);
    }
    // The part file's lock says whether a download to here runs now.
    let _lock = match part_meta.filter(|m| m.is_file()) {
        Some(_) => {
            let f = File::open(&target.part).map_err(disk(&target.part))?;
            if f.try_lock().is_err() {
                return Err(DownloadError::InProgress(target.out.clone()));
            }
            Some(f)
        }
        None => None,
    };
    let out = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&target.out)
        .map_err(disk(&target.out))?;
    let all = Bitmap::full(manifest.chunk_count());
    let good = verified_chunks(&out, manifest, &all).map_err(disk(&target.out))?;
    if good.count() != all.count() {
        return Ok(false);
    }
    tracing::info!(
        "{} is complete and verified: finishing an interrupted download",
        target.out.display()
    );
    // The complete file makes the part file redundant, whatever it holds.
    if target.part.symlink_metadata().is_ok() {
        std::fs::remove_file(&target.part).map_err(disk(&target.part))?;
    }
    sync_dir(&target.out).map_err(disk(&target.out))?;
    remove_durably(&target.state).map_err(disk(&target.state))?;
    Ok(true)
}

/// Syncs the part file, gives it its final name (never replacing a file
/// unless `force`), calls `linked` while the part and state files are still
/// there, then removes them. A kill at any point leaves what [`recover`]
/// completes.
pub(super) fn finish(
    part: &PartFile,
    target: &Target,
    force: bool,
    linked: impl FnOnce(),
) -> Result<(), DownloadError> {
    let (part_path, out) = (&target.part, &target.out);
    part.sync(&target.state, true)?;
    if force {
        // (A rename leaves no moment with both names: a server on this
        // data dir may answer "not here" until `linked` has run.)
        std::fs::rename(part_path, out).map_err(disk(out))?;
        linked();
    } else {
        // A hard link never replaces an existing file: if something
        // appeared under the final name meanwhile, it is left alone.
        match std::fs::hard_link(part_path, out) {
            // The file is complete under its final name: a part link that
            // cannot be removed is a leftover to report, not a failure.
            Ok(()) => {
                linked();
                if let Err(e) = std::fs::remove_file(part_path) {
                    tracing::warn!("could not remove {}: {e}", part_path.display());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(DownloadError::OutputExists(out.to_path_buf()));
            }
            Err(_) => {
                // No hard links on this filesystem: check, then rename.
                if out.symlink_metadata().is_ok() {
                    return Err(DownloadError::OutputExists(out.to_path_buf()));
                }
                std::fs::rename(part_path, out).map_err(disk(out))?;
                linked();
            }
        }
    }
    sync_dir(out).map_err(disk(out))?;
    match std::fs::remove_file(&target.state) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(disk(&target.state)(e)),
    }
}

/// Durably records `snapshot` (chunks whose writes have returned) as done:
/// syncs the part file, then replaces the state file.
pub(super) fn spawn_checkpoint(
    file: &Arc<PartFile>,
    state_path: &Path,
    id: FileId,
    size: u64,
    snapshot: Bitmap,
) -> tokio::task::JoinHandle<Result<(), DownloadError>> {
    let file = file.clone();
    let path = state_path.to_path_buf();
    tokio::task::spawn_blocking(move || file.checkpoint(&path, &id, size, &snapshot))
}

/// Fsyncs the directory holding `path` (a bare name's directory is ".").
pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Reserves the file's blocks up front, so a full disk fails now, not at
/// 99 %, and so that direct writes land in allocated (unwritten) extents,
/// which ext4 lets several writers fill at once. Falls back to a free-space
/// check and a sparse length where the filesystem cannot preallocate.
fn allocate(file: &File, size: u64) -> io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    // SAFETY: posix_fallocate reads no memory of ours; the fd is open.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) } {
        0 => return Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => {}
        e => return Err(io::Error::from_raw_os_error(e)),
    }
    // SAFETY: fstatvfs writes only into `st`, which is ours and sized for it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } == 0 {
        let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
        if free < size {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
    }
    file.set_len(size)
}

/// Alignment `O_DIRECT` needs for offsets, lengths and memory, bytes.
const DIRECT_ALIGN: usize = 4096;

thread_local! {
    /// Per blocking-pool thread: an aligned bounce buffer for direct writes.
    static BOUNCE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The part file.
///
/// Whole, aligned chunks (every chunk but a short last one: chunk sizes are
/// powers of two of at least 64 KiB) are written with `O_DIRECT` where the
/// filesystem allows it, several at once. A download ends in fsync anyway;
/// skipping the page cache saves the copy into it, which was the largest
/// single cost of `get` (more than SHA-256), and most of the final fsync.
/// Everything else, and every filesystem without `O_DIRECT` (tmpfs), goes
/// through the page cache one write at a time: concurrent buffered
/// `pwrite`s to one file contend on the inode lock, where the kernel spins
/// rather than sleeps (measured: a tenth of `get`'s CPU).
pub(super) struct PartFile {
    pub file: File,
    path: PathBuf,
    direct: Option<File>,
    buffered_lock: std::sync::Mutex<()>,
    /// Writers hold it shared; `close` takes it exclusively and sets it, so
    /// that no write (an aborted endgame loser's, still queued on the
    /// blocking pool) lands after the file is finished.
    closed: std::sync::RwLock<bool>,
    /// A sync of the part file failed: what it holds can no longer be
    /// vouched for, and no state file is written again.
    sync_failed: AtomicBool,
}

impl PartFile {
    fn new(file: File, path: &Path) -> Self {
        // The same file again, for direct writes: never through a link,
        // and only if it is the very file opened (not one swapped in).
        let same = |d: &File| match (file.metadata(), d.metadata()) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW)
            .open(path)
            .ok()
            .filter(same);
        Self {
            file,
            path: path.to_path_buf(),
            direct,
            buffered_lock: std::sync::Mutex::new(()),
            closed: std::sync::RwLock::new(false),
            sync_failed: AtomicBool::new(false),
        }
    }

    /// Makes what was written durable (`all`: metadata too). A failure is
    /// final for this run: the state file is removed (the chunks it lists
    /// may be among the lost pages), and none is written again.
    fn sync(&self, state: &Path, all: bool) -> Result<(), DownloadError> {
        let failed = || DownloadError::SyncFailed {
            path: self.path.clone(),
            source: io::Error::other("an earlier sync of it failed"),
        };
        if self.sync_failed.load(Ordering::Acquire) {
            return Err(failed());
        }
        let synced = if all {
            self.file.sync_all()
        } else {
            self.file.sync_data()
        };
        let Err(source) = synced else {
            return Ok(());
        };
        self.sync_failed.store(true, Ordering::Release);
        if let Err(e) = remove_durably(state) {
            tracing::error!(
                "cannot remove {} after a failed sync: {e}; its next run checks every chunk anyway",
                state.display()
            );
        }
        Err(DownloadError::SyncFailed {
            path: self.path.clone(),
            source,
        })
    }

    /// Records `done` (chunks whose writes have returned before this call)
    /// durably: sync, then replace the state file. Order matters: after the
    /// sync they are on disk.
    pub fn checkpoint(
        &self,
        state: &Path,
        id: &FileId,
        size: u64,
        done: &Bitmap,
    ) -> Result<(), DownloadError> {
        self.sync(state, false)?;
        store_state(state, id, size, done).map_err(state_error(state))
    }

    /// Whether a sync of the part file has failed in this run.
    pub fn sync_failed(&self) -> bool {
        self.sync_failed.load(Ordering::Acquire)
    }

    /// Waits for writes under way, then refuses any later one.
    pub fn close(&self) {
        *self.closed.write().unwrap_or_else(|e| e.into_inner()) = true;
    }

    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let closed = self.closed.read().unwrap_or_else(|e| e.into_inner());
        if *closed {
            return Err(io::Error::other("the download is finished"));
        }
        let aligned =
            offset.is_multiple_of(DIRECT_ALIGN as u64) && data.len().is_multiple_of(DIRECT_ALIGN);
        if let (Some(direct), true) = (&self.direct, aligned && !data.is_empty()) {
            let done = BOUNCE.with_borrow_mut(|bounce| {
                // An aligned window inside a plain Vec: no unsafe allocation.
                if bounce.len() < data.len() + DIRECT_ALIGN {
                    *bounce = vec![0; data.len() + DIRECT_ALIGN];
                }
                let start = bounce.as_ptr().align_offset(DIRECT_ALIGN);
                let window = &mut bounce[start..start + data.len()];
                window.copy_from_slice(data);
                direct.write_all_at(window, offset)
            });
            match done {
                Ok(()) => return Ok(()),
                // The filesystem wants another alignment: use the page cache.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        let _one_writer = self.buffered_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.file.write_all_at(data, offset)
    }
}

pub(super) fn no_space_or(e: io::Error, out: &Path, needed: u64, path: &Path) -> DownloadError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        DownloadError::NoSpace {
            path: out.to_path_buf(),
            needed,
        }
    } else {
        DownloadError::Disk {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_part_file_takes_no_more_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.part");
        let file = File::create(&path).unwrap();
        let part = PartFile::new(file, &path);
        part.write_at(b"before", 0).unwrap();
        part.close();
        assert!(part.write_at(b"after!", 0).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"before");
    }

    #[test]
    fn part_file_writes_aligned_and_unaligned_chunks_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.part");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let size = 3 * 65536 + 777;
        allocate(&file, size).unwrap();
        let part = PartFile::new(file, &path);
        let data: Vec<u8> = (0..size as usize).map(|i| (i % 253) as u8).collect();
        // Out of order, the short unaligned tail first.
        for (start, end) in [
            (3 * 65536, size as usize),
            (65536, 131072),
            (0, 65536),
            (131072, 196608),
        ] {
            part.write_at(&data[start..end], start as u64).unwrap();
        }
        part.file.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }
}
