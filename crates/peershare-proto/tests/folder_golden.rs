//! Folder encoding pinned to bytes (docs/PROTOCOL.md, "Folders"), and its
//! properties over random trees: round trip, canonical form, refusal of
//! every mutation that is not canonical, a folder ID never a file ID.

use peershare_proto::folder::{
    FOLDER_ID_DOMAIN, FolderEntry, FolderError, FolderManifest, folder_id_of,
    verify_folder_manifest,
};
use peershare_proto::id::sha256;
use peershare_proto::manifest::Manifest;
use peershare_proto::{FileId, FolderId};
use proptest::prelude::*;

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    hex::decode(s).expect("golden hex")
}

/// The example of docs/PROTOCOL.md: a file, an empty directory and a file
/// in a subfolder.
fn example() -> FolderManifest {
    FolderManifest::new(vec![
        FolderEntry::file("sub/b.bin", 1, FileId([0x22; 32])),
        FolderEntry::dir("empty"),
        FolderEntry::file("a.txt", 3, FileId([0x11; 32])),
    ])
    .expect("a valid folder")
}

const EXAMPLE: &str = "
    01 00000003
    00 0005 612e747874 0000000000000003
       1111111111111111111111111111111111111111111111111111111111111111
    01 0005 656d707479
    00 0009 7375622f622e62696e 0000000000000001
       2222222222222222222222222222222222222222222222222222222222222222";

#[test]
fn golden_folder_encoding() {
    let folder = example();
    let golden = unhex(EXAMPLE);
    assert_eq!(hex::encode(folder.encode()), hex::encode(&golden));
    assert_eq!(folder.encoded_len(), golden.len());
    assert_eq!(FolderManifest::decode(&golden).unwrap(), folder);
    assert_eq!(folder.file_count(), 2);
    assert_eq!(folder.total_size(), 4);
}

#[test]
fn golden_folder_id() {
    let golden = unhex(EXAMPLE);
    // The encoding travels as one chunk: its manifest holds the SHA-256 of
    // the whole encoding, and the folder ID hashes the domain and that
    // manifest.
    let manifest = Manifest::from_bytes(&golden);
    assert_eq!(manifest.hashes(), &[sha256(&golden)]);
    let mut prefixed = FOLDER_ID_DOMAIN.to_vec();
    prefixed.extend_from_slice(&manifest.encode());
    let id = FolderId(sha256(&prefixed));
    assert_eq!(example().id(), id);
    assert_eq!(folder_id_of(&manifest), id);
    assert_eq!(
        id.to_string(),
        "1871a309985d70cab3f8482823ee8c129229d0e4b283af0dafb2b12673b6ab34",
        "the folder ID of the documented example"
    );
    assert_eq!(FOLDER_ID_DOMAIN, b"peershare folder v1\0");
}

#[test]
fn golden_empty_folder() {
    let folder = FolderManifest::new(Vec::new()).unwrap();
    assert_eq!(folder.encode(), unhex("01 00000000"));
}

#[test]
fn golden_refusals() {
    let cases: &[(&str, &str)] = &[
        ("02 00000000", "version"),
        ("01 00000001", "truncated"),
        ("01 00000000 00", "trailing"),
        ("01 00000001 07 0001 61", "kind"),
        // "b" before "a": not in byte order.
        ("01 00000002 01 0001 62 01 0001 61", "order"),
        ("01 00000001 01 0002 2e2e", "path"),
        // "a" is an empty directory, yet "a/b" is inside it.
        (
            "01 00000002 01 0001 61 01 0003 612f62",
            "empty dir with an entry",
        ),
        // A file "a" and a directory "a/b": a file cannot hold anything.
        (
            "01 00000002 00 0001 61 0000000000000001 {ID} 01 0003 612f62",
            "under a file",
        ),
    ];
    for (bytes, what) in cases {
        let r = FolderManifest::decode(&unhex(&bytes.replace("{ID}", &"33".repeat(32))));
        assert!(r.is_err(), "{what}: {bytes} was accepted");
    }
    // Alone, a directory "a/b" is fine.
    assert!(FolderManifest::decode(&unhex("01 00000001 01 0003 612f62")).is_ok());
}

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{1,8}",
        "[a-zA-Z0-9 _.-]{1,12}".prop_filter("not . or ..", |s| {
            s != "." && s != ".." && !s.ends_with('.') && !s.ends_with(' ')
        }),
        "[éüß中文ñ]{1,4}",
    ]
}

fn entries() -> impl Strategy<Value = Vec<FolderEntry>> {
    let path = prop::collection::vec(component(), 1..4).prop_map(|c| c.join("/"));
    let entry =
        (path, any::<bool>(), 1u64..1 << 40, any::<u8>()).prop_map(|(path, is_file, size, id)| {
            if is_file {
                // One ID per size: the ID byte and the size go together.
                FolderEntry::file(path, size, FileId(sha256(&size.to_be_bytes())))
            } else {
                let _ = id;
                FolderEntry::dir(path)
            }
        });
    prop::collection::vec(entry, 0..40)
}

proptest! {
    #[test]
    fn built_folders_round_trip_canonically(candidates in entries()) {
        let built = FolderManifest::build(candidates);
        let folder = built.manifest;
        let bytes = folder.encode();
        let back = FolderManifest::decode(&bytes).expect("what build makes decodes");
        prop_assert_eq!(&back, &folder);
        prop_assert_eq!(back.encode(), bytes.clone());
        prop_assert_eq!(back.id(), folder.id());
        // A folder ID is never the file ID of the same bytes.
        prop_assert_ne!(folder.id().0, Manifest::from_bytes(&bytes).id().0);
        // The manifest a peer would serve verifies against the ID.
        let m = verify_folder_manifest(&folder.id(), &folder.manifest().encode()).unwrap();
        prop_assert_eq!(m, folder.manifest());
    }

    #[test]
    fn one_changed_byte_is_refused_or_canonical(candidates in entries(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let bytes = FolderManifest::build(candidates).manifest.encode();
        let mut changed = bytes.clone();
        let i = at.index(changed.len());
        changed[i] = byte;
        if let Ok(f) = FolderManifest::decode(&changed) {
            prop_assert_eq!(f.encode(), changed);
        }
    }

    #[test]
    fn any_bytes_decode_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        match FolderManifest::decode(&bytes) {
            Ok(f) => prop_assert_eq!(f.encode(), bytes),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn byte_at_a_time_prefixes_never_decode(candidates in entries()) {
        let bytes = FolderManifest::build(candidates).manifest.encode();
        for end in 0..bytes.len() {
            // A prefix cut inside an entry, or before the last, is short of
            // the entries its count promises.
            prop_assert_eq!(FolderManifest::decode(&bytes[..end]), Err(FolderError::Truncated));
        }
    }
}
