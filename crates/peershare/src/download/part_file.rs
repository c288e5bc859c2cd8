//! The part file of a download: where verified chunks are written, the
//! durable record of which ones are done (the state file, see
//! [`crate::partial`]), and the finishing step that gives the file its
//! final name.
//!
//! Invariant: the state file never lists a chunk that is not durably in
//! the part file, and a file under the final name is complete and verified.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use peershare_proto::FileId;
use peershare_proto::manifest::Manifest;

use crate::error::DownloadError;
use crate::partial::{Bitmap, load_state, part_paths, store_state};

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

fn disk(path: &Path) -> impl FnOnce(io::Error) -> DownloadError + use<> {
    let path = path.to_path_buf();
    move |source: io::Error| DownloadError::Disk { path, source }
}

/// Opens (or creates) the part file of `target` for `manifest`, locked
/// against a second download to the same place, and which chunks of it are
/// already done: those of a state file for this file, when the part file
/// is whole; otherwise none (the part file is emptied and allocated).
pub(super) fn open(
    target: &Target,
    id: &FileId,
    manifest: &Manifest,
) -> Result<(PartFile, Bitmap), DownloadError> {
    let size = manifest.size();
    let n = manifest.chunk_count();
    let (part_path, state_path) = (&target.part, &target.state);
    let part_len = std::fs::metadata(part_path).map(|m| m.len()).ok();
    let resumed = if part_len == Some(size) {
        load_state(state_path, id, size, n)
    } else {
        None
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(part_path)
        .map_err(disk(part_path))?;
    // One download per output: a second `get` to the same place must not
    // share the part file. The lock ends with the process, crash included.
    if file.try_lock().is_err() {
        return Err(DownloadError::InProgress(target.out.clone()));
    }
    let done = match resumed {
        Some(d) => d,
        None => {
            // Starting over: first make sure no older state file can ever
            // vouch for this part file's (new, empty) chunks, durably,
            // before the part file changes.
            match std::fs::remove_file(state_path) {
                Ok(()) => sync_dir(state_path).map_err(disk(state_path))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(disk(state_path)(e)),
            }
            file.set_len(0).map_err(disk(part_path))?;
            if let Err(e) = allocate(&file, size) {
                // Nothing of ours is worth keeping: leave no empty part behind.
                let _ = std::fs::remove_file(part_path);
                return Err(no_space_or(e, &target.out, size, part_path));
            }
            Bitmap::new(n)
        }
    };
    Ok((PartFile::new(file, part_path), done))
}

pub(super) fn spawn_checkpoint(
    file: &Arc<PartFile>,
    state_path: &Path,
    id: FileId,
    size: u64,
    snapshot: Bitmap,
) -> tokio::task::JoinHandle<Result<(), DownloadError>> {
    let file = file.clone();
    let path = state_path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        // Order matters: the chunks in `snapshot` were written before this
        // sync started, so after it they are on disk.
        file.file
            .sync_data()
            .map_err(|source| DownloadError::Disk {
                path: path.clone(),
                source,
            })?;
        store_state(&path, &id, size, &snapshot).map_err(|e| DownloadError::Disk {
            path: path.clone(),
            source: io::Error::other(e.to_string()),
        })
    })
}

/// Syncs the part file, gives it its final name (never replacing a file
/// unless `force`), calls `linked` while the part and state files are still
/// there, then removes them.
pub(super) fn finish(
    file: &File,
    part: &Path,
    state: &Path,
    out: &Path,
    force: bool,
    linked: impl FnOnce(),
) -> Result<(), DownloadError> {
    let disk = |path: &Path| {
        let path = path.to_path_buf();
        move |source: io::Error| DownloadError::Disk { path, source }
    };
    file.sync_all().map_err(disk(part))?;
    if force {
        // (A rename leaves no moment with both names: a server on this
        // data dir may answer "not here" until `linked` has run.)
        std::fs::rename(part, out).map_err(disk(out))?;
        linked();
    } else {
        // A hard link never replaces an existing file: if something
        // appeared under the final name meanwhile, it is left alone.
        match std::fs::hard_link(part, out) {
            // The file is complete under its final name: a part link that
            // cannot be removed is a leftover to report, not a failure.
            Ok(()) => {
                linked();
                if let Err(e) = std::fs::remove_file(part) {
                    tracing::warn!("could not remove {}: {e}", part.display());
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
                std::fs::rename(part, out).map_err(disk(out))?;
                linked();
            }
        }
    }
    sync_dir(out).map_err(disk(out))?;
    match std::fs::remove_file(state) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DownloadError::Disk {
            path: state.to_path_buf(),
            source: e,
        }),
    }
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
    direct: Option<File>,
    buffered_lock: std::sync::Mutex<()>,
    /// Writers hold it shared; `close` takes it exclusively and sets it, so
    /// that no write (an aborted endgame loser's, still queued on the
    /// blocking pool) lands after the file is finished.
    closed: std::sync::RwLock<bool>,
}

impl PartFile {
    fn new(file: File, path: &Path) -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Self {
            file,
            direct,
            buffered_lock: std::sync::Mutex::new(()),
            closed: std::sync::RwLock::new(false),
        }
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
