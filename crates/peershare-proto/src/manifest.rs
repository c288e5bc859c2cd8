//! The manifest: a file's size, its chunk size and the SHA-256 of every
//! chunk, in one canonical binary encoding whose SHA-256 is the [`FileId`].
//!
//! Canonical means: the same bytes always give the same encoding, so the
//! same content shared by two peers has the same ID. The chunk size is not a
//! free choice of the sharer but a function of the file size
//! ([`chunk_size_for`]), and the decoder rejects any encoding that is not the
//! one [`Manifest::encode`] would produce.
//!
//! Encoding (all integers big-endian), specified in `docs/PROTOCOL.md`:
//!
//! ```text
//! u8        version (= MANIFEST_VERSION)
//! u64       file size in bytes
//! u8        log2(chunk size)
//! [u8; 32]  SHA-256 of chunk 0, chunk 1, ... (chunk_count entries)
//! ```

use std::ops::Range;

use crate::id::{FileId, ID_LEN, sha256};

/// Version byte that opens every manifest encoding.
pub const MANIFEST_VERSION: u8 = 1;
/// Smallest chunk size, bytes (a power of two).
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;
/// Largest chunk size, bytes (a power of two). Bounds every chunk buffer.
pub const MAX_CHUNK_SIZE: u32 = 8 * 1024 * 1024;
/// Chunk size grows until a file has at most this many chunks, so manifests
/// of files up to `TARGET_CHUNK_COUNT * MAX_CHUNK_SIZE` bytes stay small.
pub const TARGET_CHUNK_COUNT: u64 = 1024;
/// Most chunks a manifest may list; bounds the manifest's encoded size.
pub const MAX_CHUNK_COUNT: u64 = 1 << 18;
/// Largest shareable file, bytes.
pub const MAX_FILE_SIZE: u64 = MAX_CHUNK_COUNT * MAX_CHUNK_SIZE as u64;
/// Bytes before the chunk hashes in the encoding.
pub const MANIFEST_HEADER_LEN: usize = 1 + 8 + 1;
/// Largest valid manifest encoding, bytes.
pub const MAX_MANIFEST_LEN: usize = MANIFEST_HEADER_LEN + MAX_CHUNK_COUNT as usize * ID_LEN;

/// Why bytes are not a canonical manifest, or a file cannot have one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is truncated")]
    Truncated,
    #[error("manifest version {0} is not supported (this build reads version 1)")]
    Version(u8),
    #[error("file of {size} bytes is larger than the maximum of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    #[error("manifest chunk size 2^{log2} is not the canonical one for its file size")]
    ChunkSize { log2: u8 },
    #[error("manifest lists {got} bytes of hashes, expected {expected}")]
    HashesLength { got: usize, expected: usize },
    #[error("manifest does not match file ID {expected} (it hashes to {actual})")]
    IdMismatch { expected: FileId, actual: FileId },
}

/// The canonical chunk size for a file of `size` bytes: the smallest power
/// of two, within [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`], that splits the
/// file into at most [`TARGET_CHUNK_COUNT`] chunks.
pub fn chunk_size_for(size: u64) -> u32 {
    let wanted = size.div_ceil(TARGET_CHUNK_COUNT).max(1);
    let pow = wanted.next_power_of_two();
    pow.clamp(MIN_CHUNK_SIZE as u64, MAX_CHUNK_SIZE as u64) as u32
}

/// Number of chunks of `chunk_size` bytes in a file of `size` bytes.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(chunk_size as u64)
}

/// A file's content description. Invariant: `hashes.len() ==
/// chunk_count(size, chunk_size)`, `chunk_size == chunk_size_for(size)` and
/// `size <= MAX_FILE_SIZE`; every constructor checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    size: u64,
    chunk_size: u32,
    hashes: Vec<[u8; ID_LEN]>,
}

impl Manifest {
    /// Builds a manifest from chunk hashes already computed with the
    /// canonical chunk size.
    pub fn new(size: u64, hashes: Vec<[u8; ID_LEN]>) -> Result<Self, ManifestError> {
        if size > MAX_FILE_SIZE {
            return Err(ManifestError::TooLarge {
                size,
                max: MAX_FILE_SIZE,
            });
        }
        let chunk_size = chunk_size_for(size);
        let expected = chunk_count(size, chunk_size) as usize;
        if hashes.len() != expected {
            return Err(ManifestError::HashesLength {
                got: hashes.len() * ID_LEN,
                expected: expected * ID_LEN,
            });
        }
        Ok(Self {
            size,
            chunk_size,
            hashes,
        })
    }

    /// Hashes an in-memory file. For files on disk the engine hashes chunks
    /// in parallel and calls [`Manifest::new`].
    pub fn from_bytes(data: &[u8]) -> Self {
        let chunk_size = chunk_size_for(data.len() as u64);
        let hashes = data.chunks(chunk_size as usize).map(sha256).collect();
        Self::new(data.len() as u64, hashes).expect("hashes computed with the canonical chunk size")
    }

    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }
    pub fn chunk_count(&self) -> u32 {
        // Fits: bounded by MAX_CHUNK_COUNT.
        self.hashes.len() as u32
    }
    pub fn hashes(&self) -> &[[u8; ID_LEN]] {
        &self.hashes
    }

    /// Byte range of chunk `index` in the file, or `None` past the end.
    pub fn chunk_range(&self, index: u32) -> Option<Range<u64>> {
        if index >= self.chunk_count() {
            return None;
        }
        let start = index as u64 * self.chunk_size as u64;
        let end = (start + self.chunk_size as u64).min(self.size);
        Some(start..end)
    }

    /// Length of chunk `index`, or `None` past the end.
    pub fn chunk_len(&self, index: u32) -> Option<u32> {
        self.chunk_range(index).map(|r| (r.end - r.start) as u32)
    }

    /// True when `data` is exactly chunk `index` of this file.
    pub fn verify_chunk(&self, index: u32, data: &[u8]) -> bool {
        match (self.chunk_len(index), self.hashes.get(index as usize)) {
            (Some(len), Some(hash)) => data.len() == len as usize && sha256(data) == *hash,
            _ => false,
        }
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MANIFEST_HEADER_LEN + self.hashes.len() * ID_LEN);
        out.push(MANIFEST_VERSION);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.push(self.chunk_size.trailing_zeros() as u8);
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        out
    }

    /// The file ID: SHA-256 of the canonical encoding.
    pub fn id(&self) -> FileId {
        FileId(sha256(&self.encode()))
    }

    /// Decodes a canonical encoding; anything else is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() < MANIFEST_HEADER_LEN {
            return Err(ManifestError::Truncated);
        }
        if bytes[0] != MANIFEST_VERSION {
            return Err(ManifestError::Version(bytes[0]));
        }
        let size = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
        if size > MAX_FILE_SIZE {
            return Err(ManifestError::TooLarge {
                size,
                max: MAX_FILE_SIZE,
            });
        }
        let log2 = bytes[9];
        if 1u64.checked_shl(log2 as u32) != Some(chunk_size_for(size) as u64) {
            return Err(ManifestError::ChunkSize { log2 });
        }
        let body = &bytes[MANIFEST_HEADER_LEN..];
        let expected = chunk_count(size, chunk_size_for(size)) as usize * ID_LEN;
        if body.len() != expected {
            return Err(ManifestError::HashesLength {
                got: body.len(),
                expected,
            });
        }
        let hashes = body
            .chunks_exact(ID_LEN)
            .map(|c| c.try_into().expect("ID_LEN bytes"))
            .collect();
        Self::new(size, hashes)
    }

    /// Decodes and checks that the encoding hashes to `expected`: the only
    /// way a downloader should accept a manifest from a peer.
    pub fn decode_verified(bytes: &[u8], expected: &FileId) -> Result<Self, ManifestError> {
        let actual = FileId(sha256(bytes));
        if actual != *expected {
            return Err(ManifestError::IdMismatch {
                expected: *expected,
                actual,
            });
        }
        Self::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_is_canonical_power_of_two() {
        assert_eq!(chunk_size_for(0), MIN_CHUNK_SIZE);
        assert_eq!(chunk_size_for(1), MIN_CHUNK_SIZE);
        assert_eq!(
            chunk_size_for(TARGET_CHUNK_COUNT * MIN_CHUNK_SIZE as u64),
            MIN_CHUNK_SIZE
        );
        assert_eq!(
            chunk_size_for(TARGET_CHUNK_COUNT * MIN_CHUNK_SIZE as u64 + 1),
            2 * MIN_CHUNK_SIZE
        );
        assert_eq!(chunk_size_for(1 << 30), 1 << 20);
        assert_eq!(chunk_size_for(MAX_FILE_SIZE), MAX_CHUNK_SIZE);
        for size in [0u64, 1, 65535, 1 << 26, (1 << 33) + 7, MAX_FILE_SIZE] {
            let c = chunk_size_for(size);
            assert!(c.is_power_of_two());
            assert!(chunk_count(size, c) <= MAX_CHUNK_COUNT);
        }
    }

    #[test]
    fn empty_file_has_no_chunks() {
        let m = Manifest::from_bytes(b"");
        assert_eq!(m.chunk_count(), 0);
        assert_eq!(m.chunk_range(0), None);
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn chunk_ranges_cover_file() {
        let data: Vec<u8> = (0..MIN_CHUNK_SIZE as usize * 2 + 5)
            .map(|i| (i % 251) as u8)
            .collect();
        let m = Manifest::from_bytes(&data);
        assert_eq!(m.chunk_count(), 3);
        assert_eq!(
            m.chunk_range(2),
            Some(2 * MIN_CHUNK_SIZE as u64..data.len() as u64)
        );
        assert_eq!(m.chunk_len(2), Some(5));
        assert!(m.verify_chunk(2, &data[2 * MIN_CHUNK_SIZE as usize..]));
        assert!(!m.verify_chunk(2, &data[..5]));
        assert!(!m.verify_chunk(3, b""));
    }

    #[test]
    fn decode_rejects_non_canonical() {
        let m = Manifest::from_bytes(b"hello");
        let good = m.encode();
        assert_eq!(Manifest::decode(&good[..5]), Err(ManifestError::Truncated));
        let mut v = good.clone();
        v[0] = 2;
        assert_eq!(Manifest::decode(&v), Err(ManifestError::Version(2)));
        let mut v = good.clone();
        v[9] = 17;
        assert_eq!(
            Manifest::decode(&v),
            Err(ManifestError::ChunkSize { log2: 17 })
        );
        let mut v = good.clone();
        v[9] = 200; // shift overflow must not panic
        assert!(Manifest::decode(&v).is_err());
        let mut v = good.clone();
        v.push(0);
        assert!(matches!(
            Manifest::decode(&v),
            Err(ManifestError::HashesLength { .. })
        ));
        let mut v = good.clone();
        v[1..9].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            Manifest::decode(&v),
            Err(ManifestError::TooLarge { .. })
        ));
    }

    #[test]
    fn decode_verified_checks_id() {
        let m = Manifest::from_bytes(b"hello");
        let enc = m.encode();
        assert_eq!(Manifest::decode_verified(&enc, &m.id()).unwrap(), m);
        let other = Manifest::from_bytes(b"world").id();
        assert!(matches!(
            Manifest::decode_verified(&enc, &other),
            Err(ManifestError::IdMismatch { .. })
        ));
    }

    #[test]
    fn max_manifest_len_matches_limits() {
        assert_eq!(MAX_MANIFEST_LEN, 10 + 32 * (1 << 18));
    }
}
