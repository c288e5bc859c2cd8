//! How long a catalog may be (`wire::MAX_CATALOG_ENTRIES`), at that size:
//! a real `serve` listing exactly that many files, a peer listing one more,
//! and `share` refusing to list one more.
//!
//! Sharing that many files with `share` would hash and fsync a manifest
//! for each, far too slow for a test: the libraries here are written with
//! `Library::insert_unchecked` (the store's own write path, one write),
//! from an entry `share` made.

mod common;

use std::fs;

use common::*;
use peershare::Library;
use peershare::store::Entry;
use peershare_proto::FileId;
use peershare_proto::id::sha256;
use peershare_proto::wire::MAX_CATALOG_ENTRIES;

/// Entry `i` of a made-up library: `like`'s file (so it is as live as
/// that one), under another name and file ID.
fn made_up(like: &Entry, i: usize, path: std::path::PathBuf) -> Entry {
    Entry {
        id: FileId(sha256(&i.to_be_bytes())).to_string(),
        name: format!("many/{i:06}"),
        path,
        ..like.clone()
    }
}

/// A library on `data` listing `n` files that all exist, unchanged since
/// shared: empty files with the mtime of one `share` hashed, each under its
/// own made-up ID.
fn library_of(sb: &Sandbox, data: &std::path::Path, n: usize) {
    let first = sb.write("many/first", b"");
    let mtime = fs::metadata(&first).unwrap().modified().unwrap();
    let lib = Library::open(data).unwrap();
    let like = lib
        .share(std::slice::from_ref(&first), &Default::default())
        .unwrap()
        .remove(0)
        .entry;
    let entries = (0..n)
        .map(|i| {
            let path = sb.path(&format!("many/{i}"));
            fs::File::create(&path)
                .and_then(|f| f.set_modified(mtime))
                .unwrap();
            made_up(&like, i, path)
        })
        .collect();
    lib.unshare(std::slice::from_ref(&like.id)).unwrap();
    lib.insert_unchecked(entries).unwrap();
    assert_eq!(lib.snapshot().unwrap().listed(), n);
}

#[test]
fn a_server_listing_exactly_the_most_files_is_listed_whole_without_a_warning() {
    // Regression (issue #10, item 11): a catalog of exactly the limit was
    // said to be cut.
    let sb = Sandbox::new();
    let data = sb.data("srv");
    library_of(&sb, &data, MAX_CATALOG_ENTRIES);
    let srv = sb.serve(&data, &[]);
    let out = sb.run_ls(&sb.data("client"), &[&srv.peer()], &["--json"]);
    out.ok();
    let rows = out.json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), MAX_CATALOG_ENTRIES);
    assert_eq!(str_field(&rows[0], "name"), "many/000000");
    assert_eq!(
        str_field(&rows[MAX_CATALOG_ENTRIES - 1], "name"),
        format!("many/{:06}", MAX_CATALOG_ENTRIES - 1)
    );
    assert_eq!(out.stderr, "", "no warning for a whole catalog");
}

#[test]
fn a_peer_listing_more_than_any_node_may_is_cut_with_a_warning() {
    let sb = Sandbox::new();
    let peer = catalog_peer(made_up_entries(0..MAX_CATALOG_ENTRIES + 1, "many/")).to_string();
    let out = sb.run_ls(&sb.data("client"), &[&peer], &["--json"]);
    out.ok();
    assert_eq!(out.json().as_array().unwrap().len(), MAX_CATALOG_ENTRIES);
    assert!(
        out.stderr
            .contains(&format!("lists more than {MAX_CATALOG_ENTRIES} files")),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}

#[test]
fn share_refuses_to_list_one_file_more_than_a_catalog_may_hold() {
    let sb = Sandbox::new();
    let data = sb.data("a");
    let lib = Library::open(&data).unwrap();
    let like = lib
        .share(&[sb.write("like", b"like")], &Default::default())
        .unwrap()
        .remove(0)
        .entry;
    lib.insert_unchecked(
        (1..MAX_CATALOG_ENTRIES)
            .map(|i| made_up(&like, i, sb.path(&format!("made-up/{i}"))))
            .collect(),
    )
    .unwrap();
    assert_eq!(lib.snapshot().unwrap().listed(), MAX_CATALOG_ENTRIES);
    let before = lib.snapshot().unwrap().revision;
    let one_more = sb.write("one-more.txt", b"one more");
    let msg = sb
        .run_on(&data, &["share", path_str(&one_more)])
        .fails_with(LOCAL);
    assert!(
        msg.contains(&format!(
            "would list {} files, more than the {MAX_CATALOG_ENTRIES}",
            MAX_CATALOG_ENTRIES + 1
        )),
        "{msg}"
    );
    assert!(
        msg.contains("--unlisted") && msg.contains("unshare"),
        "{msg}"
    );
    assert_eq!(lib.snapshot().unwrap().revision, before, "nothing shared");
    // Unlisted files take no place in the catalog.
    let out = sb.run_on(&data, &["share", "--unlisted", path_str(&one_more)]);
    assert!(out.ok().stdout.contains("one-more.txt  (unlisted)"));
    // Nor does a copy of content already listed.
    sb.run_on(&data, &["share", path_str(&sb.write("copy", b"like"))])
        .ok();
    // Unsharing makes room.
    sb.run_on(&data, &["unshare", path_str(&sb.path("like"))])
        .ok();
    let msg = sb
        .run_on(&data, &["share", path_str(&one_more)])
        .fails_with(LOCAL);
    assert!(msg.contains("would list"), "a copy still lists it: {msg}");
    sb.run_on(&data, &["unshare", path_str(&sb.path("copy"))])
        .ok();
    let out = sb.run_on(&data, &["share", path_str(&one_more)]);
    assert!(out.ok().stdout.contains("one-more.txt\n"), "{}", out.stdout);
    assert_eq!(lib.snapshot().unwrap().listed(), MAX_CATALOG_ENTRIES);
}
