//! Chunk answers read from disk a slice at a time, so that what a
//! connection buffers does not grow with the chunk size (up to 8 MiB): the
//! server's budget of slice buffers ([`SlicePool`]), what an answer is
//! before any of it is read ([`ChunkPlan`]), and the reads ([`Slices`]),
//! at most one slice ahead of the one being sent.
//!
//! Invariants: a connection holds at most two slices (the one being sent,
//! the next being read); all connections together hold at most the pool's
//! permits' worth (`ServerConfig::max_buffered_bytes`), and never more are
//! allocated than that: a buffer is allocated only when none is spare.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use peershare_proto::FileId;
use peershare_proto::id::ID_LEN;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::store::Entry;

/// Bytes of a chunk read from disk, and then sent, at a time: one `pread`
/// on the blocking pool per slice, so large enough that the pool's
/// overhead is noise, small enough that two per connection cost little.
pub const SEND_SLICE: usize = 256 * 1024;
/// Slice buffers kept for reuse while no answer needs them, at most; more
/// are freed as they come back.
pub(super) const SPARE_SLICES: usize = 16;

/// The slice buffers of all connections: at most `max_bytes /
/// SEND_SLICE` (at least one) in use at once, each holding a permit of a
/// semaphore; those given back are kept for reuse (up to
/// [`SPARE_SLICES`]), so steady serving allocates, zeroes and page-faults
/// nothing.
pub(super) struct SlicePool {
    permits: Arc<Semaphore>,
    spare: Mutex<Vec<Vec<u8>>>,
}

/// One slice buffer and the share of the budget it holds; both go back to
/// the pool when it is dropped (wherever that is: a read abandoned on the
/// blocking pool gives its buffer back when it ends).
pub(super) struct Slice {
    buf: Vec<u8>,
    pool: Arc<SlicePool>,
    _permit: OwnedSemaphorePermit,
}

impl SlicePool {
    pub(super) fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new((max_bytes / SEND_SLICE).max(1))),
            spare: Mutex::default(),
        })
    }

    /// A slice, once the budget has room for one (first come, first
    /// served).
    pub(super) async fn take(self: &Arc<Self>) -> Slice {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed");
        self.with(permit)
    }

    /// A slice, if the budget has room for one now.
    pub(super) fn try_take(self: &Arc<Self>) -> Option<Slice> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(self.with(permit))
    }

    fn with(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slice {
        let spare = self.spare.lock().expect("spare slices lock").pop();
        Slice {
            buf: spare.unwrap_or_else(|| Vec::with_capacity(SEND_SLICE)),
            pool: self.clone(),
            _permit: permit,
        }
    }

    /// Slices that may be taken now.
    #[cfg(test)]
    fn free(&self) -> usize {
        self.permits.available_permits()
    }
}

impl Slice {
    /// The first `len` bytes (at most [`SEND_SLICE`]), to be overwritten.
    fn fill(&mut self, len: usize) -> &mut [u8] {
        debug_assert!(len <= SEND_SLICE);
        // Shrinking keeps the old bytes (no zeroing); growing zeroes only
        // the new part.
        self.buf.resize(len, 0);
        &mut self.buf
    }

    pub(super) fn data(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Slice {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut spare = self.pool.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARE_SLICES {
            spare.push(buf);
        }
    }
}

/// A chunk answer before any of it is read: where its bytes are and what
/// must hold of them. This, not the data, is what queues for the write
/// side, so a queued answer costs a few bytes whatever the chunk size.
pub(super) struct ChunkPlan {
    pub(super) req_id: u32,
    pub(super) index: u32,
    pub(super) id: FileId,
    pub(super) file: Arc<File>,
    /// Where the chunk starts in `file`, bytes.
    pub(super) start: u64,
    pub(super) len: usize,
    pub(super) check: Check,
    /// The file's shared name and chunk count, for the uploads it counts
    /// towards.
    pub(super) name: Arc<str>,
    pub(super) of_chunks: u32,
}

/// What must hold of a chunk's bytes for them to be sent.
pub(super) enum Check {
    /// A shared file: it still has the size and mtime it was hashed with,
    /// checked (`fstat`) after every slice read.
    Unchanged(Entry),
    /// A download's part file: the chunk hashes to this (the manifest's).
    /// A part file may change under us (a download started over), and
    /// this node vouches only for verified bytes.
    Hash([u8; ID_LEN]),
}

/// Why a chunk's bytes cannot be sent.
#[derive(Debug)]
pub(super) enum SliceError {
    /// The shared file changed since it was hashed.
    Changed,
    /// The chunk does not hash to the manifest's.
    Unverified,
    /// Reading failed.
    Io(std::io::Error),
    /// The blocking-pool job was lost (the runtime is shutting down).
    Lost,
}

impl ChunkPlan {
    /// Slices in the chunk.
    fn slices(&self) -> usize {
        self.len.div_ceil(SEND_SLICE)
    }

    /// Reads slice `i` into `slice` and checks what must hold (blocking).
    fn read(&self, i: usize, slice: &mut Slice) -> Result<(), SliceError> {
        let skip = i * SEND_SLICE;
        let len = SEND_SLICE.min(self.len - skip);
        let read = self
            .file
            .read_exact_at(slice.fill(len), self.start + skip as u64);
        if let Check::Unchanged(e) = &self.check
            && !self.file.metadata().is_ok_and(|m| e.matches(&m))
        {
            return Err(SliceError::Changed);
        }
        read.map_err(SliceError::Io)
    }

    /// Checks a `Check::Hash` chunk whole before any of it is sent: reads
    /// it slice by slice into `slice`, hashing (blocking). Other chunks
    /// pass as they are.
    pub(super) fn verify(&self, slice: &mut Slice) -> Result<(), SliceError> {
        let Check::Hash(want) = &self.check else {
            return Ok(());
        };
        let mut hash = Sha256::new();
        for i in 0..self.slices() {
            self.read(i, slice)?;
            hash.update(slice.data());
        }
        if hash.finalize()[..] == want[..] {
            Ok(())
        } else {
            Err(SliceError::Unverified)
        }
    }
}

/// One slice read on the blocking pool: its buffer, the hash carried
/// along, how the read went.
type SliceRead = (Slice, Option<Sha256>, Result<(), SliceError>);

/// The slices of one chunk answer, read in order on the blocking pool: the
/// next one while the current one is sent, when the budget spares a second
/// buffer (otherwise once the current one is sent, into its buffer). For a
/// `Check::Hash` chunk the bytes are hashed again as they are read, and
/// the last slice is handed out only if the whole chunk hashed right: a
/// part file that changed after [`ChunkPlan::verify`] cannot complete a
/// frame.
pub(super) struct Slices {
    plan: Arc<ChunkPlan>,
    pool: Arc<SlicePool>,
    /// The next slice to read.
    next: usize,
    /// Slices handed out so far.
    given: usize,
    hash: Option<Sha256>,
    reading: Option<JoinHandle<SliceRead>>,
}

impl Slices {
    /// Starts reading the first slice into `first`.
    pub(super) fn new(plan: Arc<ChunkPlan>, pool: Arc<SlicePool>, first: Slice) -> Self {
        let hash = matches!(plan.check, Check::Hash(_)).then(Sha256::new);
        let mut slices = Self {
            plan,
            pool,
            next: 0,
            given: 0,
            hash,
            reading: None,
        };
        slices.read_next(first);
        slices
    }

    /// Starts reading the next slice into `slice`; if none is left, the
    /// buffer goes back to the pool.
    fn read_next(&mut self, mut slice: Slice) {
        if self.next >= self.plan.slices() {
            return;
        }
        let (plan, i, mut hash) = (self.plan.clone(), self.next, self.hash.take());
        self.next += 1;
        self.reading = Some(tokio::task::spawn_blocking(move || {
            let read = plan.read(i, &mut slice);
            if let (Ok(()), Some(h)) = (&read, hash.as_mut()) {
                h.update(slice.data());
            }
            (slice, hash, read)
        }));
    }

    /// The next slice, read and checked; `None` after the last.
    pub(super) async fn next(&mut self) -> Option<Result<Slice, SliceError>> {
        let (slice, hash, read) = match self.reading.take()?.await {
            Ok(r) => r,
            Err(_) => return Some(Err(SliceError::Lost)),
        };
        self.hash = hash;
        if let Err(e) = read {
            return Some(Err(e));
        }
        self.given += 1;
        if self.next < self.plan.slices()
            && let Some(ahead) = self.pool.try_take()
        {
            self.read_next(ahead);
        }
        if self.given == self.plan.slices()
            && let (Check::Hash(want), Some(hash)) = (&self.plan.check, self.hash.take())
            && hash.finalize()[..] != want[..]
        {
            return Some(Err(SliceError::Unverified));
        }
        Some(Ok(slice))
    }

    /// `slice` is sent: its buffer reads the next slice unless one is
    /// being read already.
    pub(super) fn sent(&mut self, slice: Slice) {
        if self.reading.is_none() {
            self.read_next(slice);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peershare_proto::id::sha256;

    #[test]
    fn slices_in_use_are_bounded_by_the_budget_and_spares_by_spare_slices() {
        let pool = SlicePool::new(3 * SEND_SLICE + 1);
        let held: Vec<Slice> = (0..3).map(|_| pool.try_take().expect("room")).collect();
        assert!(pool.try_take().is_none(), "three slices' worth");
        assert_eq!(pool.free(), 0);
        drop(held);
        assert_eq!(pool.free(), 3);
        assert_eq!(pool.spare.lock().unwrap().len(), 3, "kept for reuse");
        let big = SlicePool::new((SPARE_SLICES + 4) * SEND_SLICE);
        let held: Vec<Slice> = (0..SPARE_SLICES + 4)
            .map(|_| big.try_take().unwrap())
            .collect();
        drop(held);
        assert_eq!(big.spare.lock().unwrap().len(), SPARE_SLICES);
        assert_eq!(
            SlicePool::new(0).free(),
            1,
            "a budget below a slice still serves"
        );
    }

    #[test]
    fn a_recycled_slice_is_sized_exactly() {
        let pool = SlicePool::new(SEND_SLICE);
        let mut s = pool.try_take().unwrap();
        assert_eq!(s.fill(1000).len(), 1000);
        drop(s);
        let mut s = pool.try_take().unwrap();
        assert_eq!(s.fill(10).len(), 10);
        assert_eq!(s.fill(SEND_SLICE).len(), SEND_SLICE);
    }

    /// A plan for bytes `start..start + len` of a file holding `content`.
    fn plan(
        content: &[u8],
        start: usize,
        len: usize,
        check: Check,
    ) -> (tempfile::TempDir, ChunkPlan) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, content).unwrap();
        let plan = ChunkPlan {
            req_id: 1,
            index: 0,
            id: FileId([0; ID_LEN]),
            file: Arc::new(File::open(&path).unwrap()),
            start: start as u64,
            len,
            check,
            name: "f".into(),
            of_chunks: 1,
        };
        (dir, plan)
    }

    /// Every slice of `plan`, sent as soon as it comes, from a `pool` of
    /// `budget` slices.
    async fn all(
        plan: ChunkPlan,
        pool: &Arc<SlicePool>,
        budget: usize,
    ) -> Result<Vec<u8>, SliceError> {
        let first = pool.take().await;
        let mut slices = Slices::new(Arc::new(plan), pool.clone(), first);
        let mut out = Vec::new();
        while let Some(s) = slices.next().await {
            let s = s?;
            assert!(budget - pool.free() <= 2, "one slice ahead at most");
            out.extend_from_slice(s.data());
            slices.sent(s);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_chunk_comes_in_slices_in_order_one_ahead_at_most() {
        let content: Vec<u8> = (0..3 * SEND_SLICE + 5000)
            .map(|i| (i % 251) as u8)
            .collect();
        let (start, len) = (100, 2 * SEND_SLICE + 4000);
        let want = &content[start..start + len];
        let pool = SlicePool::new(8 * SEND_SLICE);
        let hashed = Check::Hash(sha256(want));
        let (_d, p) = plan(&content, start, len, hashed);
        assert_eq!(all(p, &pool, 8).await.unwrap(), want);
        // With a budget of one slice: no read-ahead, same bytes.
        let one = SlicePool::new(SEND_SLICE);
        let (_d, p) = plan(&content, start, len, Check::Hash(sha256(want)));
        assert_eq!(all(p, &one, 1).await.unwrap(), want);
        assert_eq!(one.free(), 1, "every slice given back");
    }

    #[tokio::test]
    async fn a_chunk_that_does_not_hash_right_never_yields_its_last_slice() {
        let content = vec![7u8; 2 * SEND_SLICE];
        let pool = SlicePool::new(8 * SEND_SLICE);
        let (_d, p) = plan(&content, 0, content.len(), Check::Hash([0; ID_LEN]));
        let mut slice = pool.take().await;
        assert!(matches!(p.verify(&mut slice), Err(SliceError::Unverified)));
        let mut slices = Slices::new(Arc::new(p), pool.clone(), slice);
        let first = slices.next().await.unwrap().expect("the first slice");
        slices.sent(first);
        assert!(matches!(
            slices.next().await,
            Some(Err(SliceError::Unverified))
        ));
    }

    #[tokio::test]
    async fn a_shared_file_that_changes_between_slices_fails_the_next_one() {
        use std::os::unix::fs::MetadataExt;
        let content = vec![1u8; 3 * SEND_SLICE];
        let (dir, mut p) = plan(&content, 0, content.len(), Check::Hash([0; ID_LEN]));
        let path = dir.path().join("f");
        let meta = std::fs::metadata(&path).unwrap();
        p.check = Check::Unchanged(Entry {
            id: String::new(),
            name: "f".into(),
            path: path.clone(),
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            unlisted: false,
        });
        // One slice in all: the next is read only once this one is sent.
        let pool = SlicePool::new(SEND_SLICE);
        let first = pool.take().await;
        let mut slices = Slices::new(Arc::new(p), pool.clone(), first);
        let s = slices.next().await.unwrap().expect("unchanged so far");
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        let f = File::options().write(true).open(&path).unwrap();
        f.set_modified(later).unwrap();
        slices.sent(s);
        assert!(matches!(
            slices.next().await,
            Some(Err(SliceError::Changed))
        ));
    }
}
