//! Catalogs and `ls`: every shared path listed (issue 12: one content at
//! several paths was listed once), folders with their file count and
//! size, `ls NAME/`, `--tree`, `--search` on paths; and how long a catalog
//! may be (`wire::MAX_CATALOG_ENTRIES`), at that size: a real `serve`
//! listing exactly that many files, a peer listing one more, and `share`
//! refusing to list one more.
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
/// shared: empty files with the mtime of one `share` hashed, under names of
/// their own and made-up IDs, two names per ID (the catalog lists every
/// name: issue 12).
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
            Entry {
                id: made_up(&like, i / 2, path.clone()).id,
                ..made_up(&like, i, path)
            }
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
    // A copy of content already listed, under a name of its own, is one
    // more entry (every name is listed: issue 12).
    let copy = sb.write("copy", b"like");
    let msg = sb
        .run_on(&data, &["share", path_str(&copy)])
        .fails_with(LOCAL);
    assert!(msg.contains("would list"), "{msg}");
    // Under the same name (a file `like` elsewhere), it takes no place.
    let same_name = sb.write("elsewhere/like", b"like");
    sb.run_on(&data, &["share", path_str(&same_name)]).ok();
    // Unsharing makes room.
    sb.run_on(&data, &["unshare", path_str(&sb.path("like"))])
        .ok();
    let msg = sb
        .run_on(&data, &["share", path_str(&one_more)])
        .fails_with(LOCAL);
    assert!(msg.contains("would list"), "a copy still lists it: {msg}");
    sb.run_on(&data, &["unshare", path_str(&same_name)]).ok();
    let out = sb.run_on(&data, &["share", path_str(&one_more)]);
    assert!(out.ok().stdout.contains("one-more.txt\n"), "{}", out.stdout);
    assert_eq!(lib.snapshot().unwrap().listed(), MAX_CATALOG_ENTRIES);
}

/// The text lines of a successful `ls`, and the name column of each
/// (`ID  SIZE  NAME  (PEERS)`, the name as printed, indentation kept).
fn names_in(out: &Out) -> Vec<String> {
    out.ok();
    out.stdout
        .lines()
        .map(|l| {
            let after_size = l.split_once("  ").unwrap().1.trim_start();
            let name = after_size.split_once("  ").unwrap().1;
            name.rsplit_once("  (").unwrap().0.to_owned()
        })
        .collect()
}

/// Issue 12: "Catalog of a folder with duplicate-content files lists every
/// path". Sharing /usr/share/doc, 4096 files shared, 3457 listed: a
/// content at a second path was invisible.
#[test]
fn a_shared_folder_with_duplicate_content_files_lists_every_path() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let same = random_bytes(70_000, 1);
    let other = random_bytes(1000, 2);
    sb.write("photos/a.jpg", &same);
    sb.write("photos/b.jpg", &same);
    sb.write("photos/2024/c.jpg", &same);
    sb.write("photos/2024/d.txt", &other);
    let notes = sb.write("notes.txt", &same);
    // A loose file under a folder-like name (no folder entry for "misc").
    let misc = sb.write("misc.txt", b"misc");
    let photos = sb.path("photos");
    let shared = sb.share_all(&data, &[&photos, &notes, &misc], None);
    assert_eq!(of_kind(shared.clone(), "file").len(), 6, "{shared:?}");
    let folders = of_kind(shared, "folder");
    assert_eq!(folders.len(), 1, "{folders:?}");
    let folder_id = str_field(&folders[0], "id").to_owned();
    let srv = sb.serve(&data, &[]);
    let client = sb.data("client");

    let rows = sb.ls(&client, &[&srv]);
    let listed: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (str_field(r, "name"), str_field(r, "kind")))
        .collect();
    assert_eq!(
        listed,
        [
            ("misc.txt", "file"),
            ("notes.txt", "file"),
            ("photos", "folder"),
            ("photos/2024/c.jpg", "file"),
            ("photos/2024/d.txt", "file"),
            ("photos/a.jpg", "file"),
            ("photos/b.jpg", "file"),
        ]
    );
    let same_id = expected_id(&same);
    for name in [
        "notes.txt",
        "photos/2024/c.jpg",
        "photos/a.jpg",
        "photos/b.jpg",
    ] {
        let row = by_name(&rows, name)[0];
        assert_eq!(str_field(row, "id"), same_id, "{name}");
        assert_eq!(u64_field(row, "size"), same.len() as u64, "{name}");
        assert_eq!(u64_field(row, "peer_count"), 1, "{name}");
        assert_eq!(u64_field(row, "files"), 0, "{name}");
    }
    let folder = by_name(&rows, "photos")[0];
    assert_eq!(str_field(folder, "id"), folder_id);
    assert_eq!(u64_field(folder, "files"), 4);
    assert_eq!(
        u64_field(folder, "size"),
        3 * same.len() as u64 + other.len() as u64
    );
    assert_eq!(u64_field(folder, "peer_count"), 1);
    assert_eq!(folder["peers"], serde_json::json!([srv.peer()]));
    // Every file is fetched by its path's ID, duplicates included.
    let got = sb.path("got-b.jpg");
    let id_b = str_field(by_name(&rows, "photos/b.jpg")[0], "id").to_owned();
    sb.get(&client, &id_b, &[&srv.peer()], Some(&got), &[]).ok();
    assert_same_file(&got, &same);

    // Top level: the folder (with its file count) and the loose files.
    let top = sb.run_ls(&client, &[&srv.peer()], &[]);
    assert_eq!(names_in(&top), ["misc.txt", "notes.txt", "photos/"]);
    let line = top.stdout.lines().find(|l| l.contains("photos/")).unwrap();
    assert!(line.starts_with(&folder_id), "{line}");
    assert!(
        line.contains(&format!("(4 files; {})", srv.peer())),
        "{line}"
    );

    // Inside the folder, by full path; any prefix, with or without `/`.
    let inside = sb.run_ls(&client, &[&srv.peer()], &["photos/"]);
    assert_eq!(
        names_in(&inside),
        [
            "photos/2024/c.jpg",
            "photos/2024/d.txt",
            "photos/a.jpg",
            "photos/b.jpg"
        ]
    );
    let sub = sb.run_ls(&client, &[&srv.peer()], &["photos/2024"]);
    assert_eq!(names_in(&sub), ["photos/2024/c.jpg", "photos/2024/d.txt"]);
    let json = sb.run_ls(&client, &[&srv.peer()], &["photos/2024/", "--json"]);
    assert_eq!(
        sorted_names(json.ok().json().as_array().unwrap()),
        ["photos/2024/c.jpg", "photos/2024/d.txt"]
    );
    let none = sb.run_ls(&client, &[&srv.peer()], &["videos/"]);
    assert_eq!(none.ok().stdout, "");
    assert!(
        none.stderr.contains("nothing under \"videos/\""),
        "{}",
        none.stderr
    );

    // The tree: each folder followed by its files, indented.
    let tree = sb.run_ls(&client, &[&srv.peer()], &["--tree"]);
    assert_eq!(
        names_in(&tree),
        [
            "misc.txt",
            "notes.txt",
            "photos/",
            "  photos/2024/c.jpg",
            "  photos/2024/d.txt",
            "  photos/a.jpg",
            "  photos/b.jpg"
        ]
    );

    // `--search` matches paths: a folder's files by a component of their
    // path (shown by full path, their folder not matching), a folder by
    // its name (its files then under it).
    let search = sb.run_ls(&client, &[&srv.peer()], &["--search", "2024"]);
    assert_eq!(
        names_in(&search),
        ["photos/2024/c.jpg", "photos/2024/d.txt"]
    );
    let search = sb.run_ls(&client, &[&srv.peer()], &["--search", "PHOTOS"]);
    assert_eq!(names_in(&search), ["photos/"]);
    let search = sb.run_ls(
        &client,
        &[&srv.peer()],
        &["--json", "--search", "jpg", "2024"],
    );
    assert_eq!(
        sorted_names(search.ok().json().as_array().unwrap()),
        ["photos/2024/c.jpg"]
    );
}

/// Two peers sharing one folder: one folder row with both, each file row
/// with both; a copy of the folder's file elsewhere is a row of its own.
#[test]
fn a_folder_two_peers_share_is_one_row_with_both() {
    let sb = Sandbox::new();
    let (da, db) = (sb.data("a"), sb.data("b"));
    let content = random_bytes(5000, 3);
    let mut ids = Vec::new();
    for (data, at) in [(&da, "a"), (&db, "b")] {
        sb.write(&format!("{at}/album/x.bin"), &content);
        sb.write(&format!("{at}/album/y.bin"), b"y");
        let root = sb.path(&format!("{at}/album"));
        let folder = &sb.share_folders(data, &[&root])[0];
        ids.push(str_field(folder, "id").to_owned());
    }
    assert_eq!(ids[0], ids[1], "one tree, one folder ID");
    sb.share(&db, &[&sb.write("b/x-copy.bin", &content)], None);
    let (sa, sb_) = (sb.serve(&da, &[]), sb.serve(&db, &[]));
    let rows = sb.ls(&sb.data("client"), &[&sa, &sb_]);
    let counts: Vec<(&str, u64)> = rows
        .iter()
        .map(|r| (str_field(r, "name"), u64_field(r, "peer_count")))
        .collect();
    assert_eq!(
        counts,
        [
            ("album", 2),
            ("album/x.bin", 2),
            ("album/y.bin", 2),
            ("x-copy.bin", 1)
        ]
    );
    assert_eq!(str_field(&rows[0], "kind"), "folder");
    assert_eq!(u64_field(&rows[0], "files"), 2);
    assert_eq!(str_field(&rows[1], "id"), str_field(&rows[3], "id"));
}
