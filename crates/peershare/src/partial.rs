//! Durable download progress, so that a killed `get` resumes without
//! fetching or re-hashing chunks it already verified.
//!
//! Beside the output `talk.mkv` a download keeps `talk.mkv.peershare-part`
//! (chunks written at their offsets) and `talk.mkv.peershare-state` (which
//! chunks are verified *and on disk*). Both live in the output's directory
//! so the final rename stays on one filesystem.
//!
//! Invariant: the state file never lists a chunk that is not durably in
//! the part file. The driver snapshots the set of chunks whose writes have
//! returned, then `fdatasync`s the part file, then replaces the state file
//! atomically with that snapshot. A crash at any point leaves an older
//! (smaller) set, never a larger one; chunks written after the snapshot are
//! simply fetched again.
//!
//! State file (big-endian): `b"PSRESUME"`, u8 version, file ID (32), u64
//! size, u32 chunk count, the bitmap (bit `i % 8` of byte `i / 8` set when
//! chunk `i` is done), then the SHA-256 of everything before it. Anything
//! that does not check out is ignored and the download starts over.

use std::fs;
use std::path::{Path, PathBuf};

use peershare_proto::FileId;
use peershare_proto::id::{ID_LEN, sha256};

use crate::error::StoreError;
use crate::store::write_atomic;

const STATE_MAGIC: &[u8; 8] = b"PSRESUME";
const STATE_VERSION: u8 = 1;
/// Suffix of the file that receives chunks.
pub const PART_SUFFIX: &str = ".peershare-part";
/// Suffix of the durable progress record.
pub const STATE_SUFFIX: &str = ".peershare-state";

/// The part and state paths for an output path.
pub fn part_paths(output: &Path) -> (PathBuf, PathBuf) {
    let mut part = output.as_os_str().to_owned();
    part.push(PART_SUFFIX);
    let mut state = output.as_os_str().to_owned();
    state.push(STATE_SUFFIX);
    (part.into(), state.into())
}

pub use peershare_proto::bitmap::Bitmap;

/// Encodes a state record.
pub fn encode_state(id: &FileId, size: u64, done: &Bitmap) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 1 + ID_LEN + 8 + 4 + done.as_bytes().len() + ID_LEN);
    out.extend_from_slice(STATE_MAGIC);
    out.push(STATE_VERSION);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&done.len().to_be_bytes());
    out.extend_from_slice(done.as_bytes());
    let sum = sha256(&out);
    out.extend_from_slice(&sum);
    out
}

/// Decodes a state record for the expected download; `None` when it is for
/// another file, damaged, or of an unknown version.
pub fn decode_state(bytes: &[u8], id: &FileId, size: u64, chunk_count: u32) -> Option<Bitmap> {
    let header = 8 + 1 + ID_LEN + 8 + 4;
    let body_len = bytes.len().checked_sub(ID_LEN)?;
    let (body, sum) = bytes.split_at(body_len);
    if body.len() < header || sha256(body) != sum {
        return None;
    }
    if &body[..8] != STATE_MAGIC
        || body[8] != STATE_VERSION
        || &body[9..9 + ID_LEN] != id.as_bytes()
    {
        return None;
    }
    let s = u64::from_be_bytes(body[9 + ID_LEN..17 + ID_LEN].try_into().ok()?);
    let n = u32::from_be_bytes(body[17 + ID_LEN..header].try_into().ok()?);
    let bits = &body[header..];
    if s != size || n != chunk_count {
        return None;
    }
    // Bits past the end must be clear for the record to be canonical.
    Bitmap::from_bytes(n, bits)
}

/// Reads the state file at `path` if it belongs to this download.
pub fn load_state(path: &Path, id: &FileId, size: u64, chunk_count: u32) -> Option<Bitmap> {
    let bytes = fs::read(path).ok()?;
    decode_state(&bytes, id, size, chunk_count)
}

/// Replaces the state file atomically.
pub fn store_state(path: &Path, id: &FileId, size: u64, done: &Bitmap) -> Result<(), StoreError> {
    write_atomic(path, &encode_state(id, size, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip_and_rejections() {
        let id = FileId([3; 32]);
        let mut done = Bitmap::new(11);
        done.set(0);
        done.set(10);
        done.set(99); // out of range: ignored
        assert_eq!(done.count(), 2);
        let enc = encode_state(&id, 700_000, &done);
        assert_eq!(decode_state(&enc, &id, 700_000, 11), Some(done.clone()));
        assert_eq!(
            decode_state(&enc, &FileId([4; 32]), 700_000, 11),
            None,
            "other file"
        );
        assert_eq!(decode_state(&enc, &id, 700_001, 11), None, "other size");
        assert_eq!(decode_state(&enc, &id, 700_000, 12), None, "other count");
        let mut bad = enc.clone();
        bad[50] ^= 1;
        assert_eq!(decode_state(&bad, &id, 700_000, 11), None, "checksum");
        assert_eq!(
            decode_state(&enc[..20], &id, 700_000, 11),
            None,
            "truncated"
        );
        assert_eq!(decode_state(b"", &id, 700_000, 11), None);
    }

    #[test]
    fn part_paths_sit_beside_output() {
        let (p, s) = part_paths(Path::new("/x/talk.mkv"));
        assert_eq!(p, Path::new("/x/talk.mkv.peershare-part"));
        assert_eq!(s, Path::new("/x/talk.mkv.peershare-state"));
    }
}
