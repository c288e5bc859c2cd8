//! Folder encodings from a peer: any bytes. Never a panic; what decodes is
//! canonical (encodes to the same bytes) and keeps the folder invariants a
//! downloader relies on (paths safe, sizes summed within the limits).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peershare_proto::folder::{MAX_FOLDER_SIZE, check_folder_path};
use peershare_proto::FolderManifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = FolderManifest::decode(data) {
        assert_eq!(f.encode(), data, "decoded folders are canonical");
        assert!(f.total_size() <= MAX_FOLDER_SIZE);
        let mut sum = 0u64;
        for e in f.entries() {
            assert!(check_folder_path(e.path()).is_ok(), "{:?}", e.path());
            sum += e.size();
        }
        assert_eq!(sum, f.total_size());
        let distinct: usize = f.distinct_files().iter().map(|d| d.paths.len()).sum();
        assert_eq!(distinct, f.file_count());
    }
});
