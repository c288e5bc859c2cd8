//! Folders as one unit (issue 12): `share DIR` records the folder besides
//! its files, `share`/`shared --json` describe it, a change gives a new
//! folder ID and withdraws the old one, `unshare` by folder ID, symbolic
//! links reported once.

mod common;

use std::fs;

use common::*;
use peershare_proto::folder::{FolderEntry, FolderManifest};
use peershare_proto::ticket::FolderTicket;
use peershare_proto::{FileId, FolderId};

/// The folder ID of a folder of `files` (path, content) and `dirs`.
fn folder_id_of(files: &[(&str, &[u8])], dirs: &[&str]) -> String {
    let mut entries: Vec<FolderEntry> = files
        .iter()
        .map(|(p, c)| {
            let id: FileId = expected_id(c).parse().unwrap();
            FolderEntry::file(*p, c.len() as u64, id)
        })
        .collect();
    entries.extend(dirs.iter().map(|d| FolderEntry::dir(*d)));
    FolderManifest::new(entries).unwrap().id().to_string()
}

#[test]
fn share_dir_describes_the_folder_and_a_change_gives_a_new_id() {
    let sb = Sandbox::new();
    let data = sb.data("a");
    let (a, b) = (b"alpha".to_vec(), random_bytes(70_000, 1));
    sb.write("album/a.txt", &a);
    sb.write("album/deep/b.bin", &b);
    sb.write("album/deep/same.txt", &a);
    fs::create_dir_all(sb.path("album/empty")).unwrap();
    let album = sb.path("album");

    let all = sb.share_all(&data, &[&album], None);
    let kinds: Vec<&str> = all.iter().map(|i| str_field(i, "kind")).collect();
    assert_eq!(kinds, ["file", "file", "file", "folder"], "{all:?}");
    let f = &all[3];
    let files: &[(&str, &[u8])] = &[("a.txt", &a), ("deep/b.bin", &b), ("deep/same.txt", &a)];
    let v1 = folder_id_of(files, &["empty"]);
    assert_eq!(str_field(f, "id"), v1);
    assert_eq!(str_field(f, "name"), "album");
    assert_eq!(u64_field(f, "files"), 3);
    assert_eq!(u64_field(f, "size"), (2 * a.len() + b.len()) as u64);
    assert_eq!(
        std::path::Path::new(str_field(f, "path")),
        album.canonicalize().unwrap()
    );
    let t: FolderTicket = str_field(f, "ticket").parse().expect("a folder ticket");
    assert_eq!(t.id.to_string(), v1);
    assert_eq!((t.name.as_str(), t.size), ("album", u64_field(f, "size")));

    // Unchanged: the same folder, once.
    assert_eq!(str_field(&sb.share_folders(&data, &[&album])[0], "id"), v1);
    let folders = of_kind(sb.shared_all(&data), "folder");
    assert_eq!(folders.len(), 1, "{folders:?}");

    // Changed: a new ID, and the old one is gone.
    sb.write("album/new.txt", b"new");
    let v2 = str_field(&sb.share_folders(&data, &[&album])[0], "id").to_owned();
    assert_ne!(v2, v1);
    let files2: &[(&str, &[u8])] = &[
        ("a.txt", &a),
        ("deep/b.bin", &b),
        ("deep/same.txt", &a),
        ("new.txt", b"new"),
    ];
    assert_eq!(v2, folder_id_of(files2, &["empty"]));
    let folders = of_kind(sb.shared_all(&data), "folder");
    let ids: Vec<&str> = folders.iter().map(|f| str_field(f, "id")).collect();
    assert_eq!(ids, [v2.as_str()]);

    // The text form: one line per file, then the folder's.
    let out = sb.run_on(&data, &["share", path_str(&album)]);
    let last = out.ok().stdout.lines().last().unwrap().to_owned();
    assert_eq!(
        last,
        format!("{v2}  album/  (folder: 4 files, 68.37 KiB)"),
        "{}",
        out.stdout
    );
}

#[test]
fn unshare_by_folder_id_unshares_its_files_and_unsharing_a_file_withdraws_it() {
    let sb = Sandbox::new();
    let data = sb.data("a");
    sb.write("f/x.txt", b"x");
    sb.write("f/y.txt", b"y");
    let solo = sb.write("solo.txt", b"solo");
    let folder = sb.share_folders(&data, &[&sb.path("f"), &solo]);
    let id = str_field(&folder[0], "id").to_owned();
    assert!(id.parse::<FolderId>().is_ok());

    let out = sb.run_on(&data, &["unshare", "--json", &id]);
    let removed = out.ok().json();
    let kinds: Vec<&str> = removed
        .as_array()
        .unwrap()
        .iter()
        .map(|u| str_field(u, "kind"))
        .collect();
    assert_eq!(kinds, ["file", "file", "folder"], "{removed}");
    assert_eq!(sorted_names(&sb.shared(&data)), ["solo.txt"]);
    assert!(of_kind(sb.shared_all(&data), "folder").is_empty());

    // Unsharing one file of a folder withdraws the folder, not its other files.
    let again = sb.share_folders(&data, &[&sb.path("f")]);
    let out = sb.run_on(&data, &["unshare", path_str(&sb.path("f/x.txt"))]);
    let text = out.ok().stdout.clone();
    assert!(
        text.contains(&format!(
            "no longer offering folder {}  f/",
            str_field(&again[0], "id")
        )),
        "{text}"
    );
    assert_eq!(sorted_names(&sb.shared(&data)), ["f/y.txt", "solo.txt"]);
    assert!(of_kind(sb.shared_all(&data), "folder").is_empty());
}

#[test]
fn symbolic_links_in_a_shared_folder_are_reported_once() {
    let sb = Sandbox::new();
    let data = sb.data("a");
    sb.write("f/real.txt", b"real");
    for i in 0..50 {
        std::os::unix::fs::symlink(sb.path("f/real.txt"), sb.path(&format!("f/link{i}"))).unwrap();
    }
    let out = sb.run_on(&data, &["share", path_str(&sb.path("f"))]);
    out.ok();
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("symbolic link"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", out.stderr);
    assert!(
        warnings[0].contains("skipping 50 symbolic link"),
        "{}",
        warnings[0]
    );
    assert_eq!(sorted_names(&sb.shared(&data)), ["f/real.txt"]);
    assert_eq!(
        u64_field(&of_kind(sb.shared_all(&data), "folder")[0], "files"),
        1
    );
}
