//! Manifests from a peer: any bytes, checked against the file ID they hash
//! to (so the decoder itself is exercised) and against another one. Never a
//! panic; a manifest that decodes is canonical (encodes to the same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peershare_proto::id::sha256;
use peershare_proto::{FileId, Manifest};

fuzz_target!(|data: &[u8]| {
    let id = FileId(sha256(data));
    if let Ok(m) = Manifest::decode_verified(data, &id) {
        assert_eq!(m.encode(), data, "decoded manifests are canonical");
        assert_eq!(m.id(), id);
        let n = m.chunk_count();
        for i in [0, n.saturating_sub(1), n, u32::MAX] {
            let _ = m.chunk_range(i);
            let _ = m.chunk_len(i);
        }
    }
    assert!(Manifest::decode_verified(data, &FileId([0; 32])).is_err() || id == FileId([0; 32]));
});
