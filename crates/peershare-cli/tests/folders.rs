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

/// Every path under `root` (relative, `/`-separated) with its kind and
/// content: `d` for a directory, `f` and the bytes for a file. Symbolic
/// links fail the test.
fn tree_of(root: &std::path::Path) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let ft = e.file_type().unwrap();
            assert!(!ft.is_symlink(), "a symbolic link at {rel}");
            if ft.is_dir() {
                out.insert(rel, None);
                todo.push(e.path());
            } else {
                out.insert(rel, Some(fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

/// A tree with nested folders, an empty folder, an empty file, identical
/// files and non-ASCII names, under `sb`'s `rel`.
fn sample_tree(sb: &Sandbox, rel: &str) -> std::path::PathBuf {
    let big = random_bytes(3 * MIB + 5, 7);
    sb.write(&format!("{rel}/big.bin"), &big);
    sb.write(&format!("{rel}/a/x.txt"), b"same");
    sb.write(&format!("{rel}/a/b/c/dup.txt"), b"same");
    sb.write(&format!("{rel}/a/b/copy-of-big.bin"), &big);
    sb.write(&format!("{rel}/zero"), b"");
    sb.write(
        &format!("{rel}/ünïcødé/日本語.txt"),
        "こんにちは".as_bytes(),
    );
    for i in 0..40 {
        sb.write(
            &format!("{rel}/many/f{i:02}.dat"),
            &random_bytes(1000 + i * 37, i as u64),
        );
    }
    fs::create_dir_all(sb.path(&format!("{rel}/empty/inner"))).unwrap();
    sb.path(rel)
}

#[test]
fn get_by_ticket_and_by_id_reproduces_the_tree_and_seeds_it_as_a_folder() {
    let sb = Sandbox::new();
    let seeder = sb.data("seeder");
    let src = sample_tree(&sb, "photos");
    let srv = sb.serve(&seeder, &[]);
    let folder = sb.share_folders(&seeder, &[&src]);
    let (id, ticket) = (str_field(&folder[0], "id"), str_field(&folder[0], "ticket"));
    let want = tree_of(&src);

    // By ticket, into ./photos/ of the current directory.
    let client = sb.data("client");
    let cwd = sb.dir("cwd");
    let mut c = sb.cmd(&[
        "--data-dir",
        path_str(&client),
        "get",
        ticket,
        "--no-discovery",
        "--json",
    ]);
    c.current_dir(&cwd);
    let res = run(c);
    let summary = res.ok().json();
    assert_eq!(tree_of(&cwd.join("photos")), want);
    assert_eq!(str_field(&summary, "kind"), "folder");
    assert_eq!(str_field(&summary, "id"), id);
    assert_eq!(u64_field(&summary, "files"), 46);
    assert_eq!(u64_field(&summary, "copies"), 2, "{summary}");
    assert_eq!(u64_field(&summary, "empty_dirs"), 1, "{summary}");
    assert!(
        !cwd.join("photos.peershare-part").exists(),
        "part directory left"
    );
    // Identical content is fetched once: the big file's bytes once.
    let distinct: u64 = want
        .iter()
        .filter(|(p, _)| !matches!(p.as_str(), "a/b/c/dup.txt" | "a/b/copy-of-big.bin"))
        .filter_map(|(_, c)| c.as_ref().map(|c| c.len() as u64))
        .sum();
    assert_eq!(u64_field(&summary, "bytes_received"), distinct, "{summary}");
    // And it is now shared, as the same folder.
    assert!(summary["shared"].as_bool().unwrap());
    let folders = of_kind(sb.shared_all(&client), "folder");
    assert_eq!(
        str_field(&folders[0], "id"),
        id,
        "seeded as the same folder"
    );

    // By folder ID with -o naming a new path.
    let other = sb.data("other");
    let out = sb.path("elsewhere/mine");
    fs::create_dir_all(sb.path("elsewhere")).unwrap();
    let res = sb.get(&other, id, &[&srv.peer()], Some(&out), &["--no-share"]);
    res.ok();
    assert_eq!(tree_of(&out), want);
    assert!(res.stdout.starts_with("saved "), "{}", res.stdout);
    assert!(
        of_kind(sb.shared_all(&other), "folder").is_empty(),
        "--no-share"
    );

    // By bare folder ID and no -o: the name comes from the peer's catalog.
    let fourth = sb.data("fourth");
    let cwd4 = sb.dir("cwd4");
    let mut c = sb.cmd(&get_args(
        &fourth,
        id,
        &[&srv.peer()],
        None,
        &["--no-share"],
    ));
    c.current_dir(&cwd4);
    run(c).ok();
    assert_eq!(tree_of(&cwd4.join("photos")), want);

    // -o naming an existing folder puts it inside, under its name (the
    // client downloading from the first client: a downloaded folder seeds).
    let third = sb.data("third");
    let client_srv = sb.serve(&client, &[]);
    let inside = sb.dir("inside");
    let res = sb.get(
        &third,
        ticket,
        &[&client_srv.peer()],
        Some(&inside),
        &["--no-share"],
    );
    res.ok();
    assert_eq!(tree_of(&inside.join("photos")), want);
}

#[test]
fn an_existing_target_is_refused_unless_force_and_force_never_mixes_versions() {
    let sb = Sandbox::new();
    let seeder = sb.data("seeder");
    sb.write("v/new.txt", b"new");
    let srv = sb.serve(&seeder, &[]);
    let folder = sb.share_folders(&seeder, &[&sb.path("v")]);
    let (id, ticket) = (str_field(&folder[0], "id"), str_field(&folder[0], "ticket"));
    let client = sb.data("client");
    // An older version of the folder where it would go.
    let out = sb.dir("target");
    sb.write("target/v/old.txt", b"old version");

    let res = sb.get(&client, ticket, &[&srv.peer()], Some(&out), &[]);
    let msg = res.fails_with(LOCAL);
    assert!(
        msg.contains("already exists") && msg.contains("--force"),
        "{msg}"
    );
    assert_eq!(
        fs::read(out.join("v/old.txt")).unwrap(),
        b"old version",
        "untouched"
    );
    assert!(!out.join("v.peershare-part").exists());

    // --force replaces it whole: nothing of the old version stays.
    let res = sb.get(&client, ticket, &[&srv.peer()], Some(&out), &["--force"]);
    res.ok();
    let got = tree_of(&out.join("v"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        ["new.txt"],
        "the old version's files are gone"
    );

    // A bare folder ID with -o naming a new path needs no name.
    let res = sb.get(&client, id, &[&srv.peer()], Some(&out.join("w")), &[]);
    res.ok();
    assert_eq!(fs::read(out.join("w/new.txt")).unwrap(), b"new");
}

#[test]
fn two_seeders_both_send_and_only_fetches_just_the_matching_files() {
    let sb = Sandbox::new();
    for i in 0..200 {
        let dir = if i % 2 == 0 { "jpg" } else { "raw" };
        sb.write(
            &format!("shoot/{dir}/p{i:03}.{dir}"),
            &random_bytes(20_000 + i, i as u64),
        );
    }
    let (d1, d2) = (sb.data("s1"), sb.data("s2"));
    let src = sb.path("shoot");
    let id = str_field(&sb.share_folders(&d1, &[&src])[0], "id").to_owned();
    assert_eq!(str_field(&sb.share_folders(&d2, &[&src])[0], "id"), id);
    let (s1, s2) = (sb.serve(&d1, &[]), sb.serve(&d2, &[]));
    let client = sb.data("client");
    let out = sb.path("got");
    let res = sb.get(
        &client,
        &id,
        &[&s1.peer(), &s2.peer()],
        Some(&out),
        &["--json"],
    );
    let s = res.ok().json();
    let peers = s["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    for p in peers {
        assert!(u64_field(p, "bytes") > 0, "a seeder sent nothing: {s}");
    }
    assert_eq!(tree_of(&out), tree_of(&src));

    // --only: the JPEG folder (by name at any depth), and one raw file by path.
    let out2 = sb.path("only");
    let res = sb.get(
        &client,
        &id,
        &[&s1.peer()],
        Some(&out2),
        &[
            "--only",
            "jpg",
            "--only",
            "raw/p001.raw",
            "--json",
            "--no-share",
        ],
    );
    let s = res.ok().json();
    let got = tree_of(&out2);
    let files: Vec<&String> = got
        .iter()
        .filter(|(_, c)| c.is_some())
        .map(|(p, _)| p)
        .collect();
    assert_eq!(files.len(), 101, "{files:?}");
    assert!(
        files
            .iter()
            .all(|p| p.starts_with("jpg/") || *p == "raw/p001.raw")
    );
    assert_eq!(u64_field(&s, "skipped"), 99);
    let want: u64 = (0..200u64)
        .filter(|i| i % 2 == 0 || *i == 1)
        .map(|i| 20_000 + i)
        .sum();
    assert_eq!(
        u64_field(&s, "bytes_received"),
        want,
        "only the matching files were fetched"
    );

    // A pattern matching nothing is an error, and nothing is made.
    let res = sb.get(
        &client,
        &id,
        &[&s1.peer()],
        Some(&sb.path("none")),
        &["--only", "*.png"],
    );
    res.fails_with(NOT_FOUND);
    assert!(!sb.path("none").exists());
}

/// A path and, for a file, its content (`None`: an empty directory).
type RawEntry<'a> = (&'a str, Option<&'a [u8]>);

/// The raw folder encoding of `entries` (path, `Some(content)` for a file,
/// `None` for an empty directory), in the order given: what a hostile peer
/// can send, unchecked.
fn raw_encoding(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = vec![peershare_proto::folder::FOLDER_VERSION];
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (path, content) in entries {
        out.push(u8::from(content.is_none()));
        out.extend_from_slice(&(path.len() as u16).to_be_bytes());
        out.extend_from_slice(path.as_bytes());
        if let Some(c) = content {
            out.extend_from_slice(&(c.len() as u64).to_be_bytes());
            out.extend_from_slice(peershare_proto::Manifest::from_bytes(c).id().as_bytes());
        }
    }
    out
}

/// A peer serving `encoding` as a folder (and each content of `files` by
/// its file ID); the folder ID it serves.
fn hostile_folder_peer(encoding: Vec<u8>, files: Vec<Vec<u8>>) -> (std::net::SocketAddr, String) {
    use peershare_proto::wire::Message;
    let manifest = peershare_proto::Manifest::from_bytes(&encoding);
    let id = peershare_proto::folder::folder_id_of(&manifest);
    let wire = FileId(id.0);
    let addr = fake_peer(move |m, node| match m {
        Message::Hello(_) => Some(hello_of(node)),
        Message::GetManifest { req_id, id } if id == wire => Some(Message::Manifest {
            req_id,
            bytes: manifest.encode().into(),
        }),
        Message::GetChunk { req_id, id, index } if id == wire => {
            let cs = manifest.chunk_size() as usize;
            let start = index as usize * cs;
            let end = (start + cs).min(encoding.len());
            Some(Message::Chunk {
                req_id,
                index,
                data: encoding[start..end].to_vec().into(),
            })
        }
        Message::GetChunk {
            req_id,
            id,
            index: 0,
        } => {
            let data = files
                .iter()
                .find(|f| peershare_proto::Manifest::from_bytes(f).id() == id)?;
            Some(Message::Chunk {
                req_id,
                index: 0,
                data: data.clone().into(),
            })
        }
        Message::GetCatalog { req_id, .. } => Some(Message::Catalog {
            req_id,
            revision: 1,
            next: None,
            entries: Vec::new(),
        }),
        _ => None,
    });
    (addr, id.to_string())
}

#[test]
fn hostile_folder_manifests_are_refused_and_nothing_is_written() {
    let long_component = "c".repeat(256);
    let long_path = format!("{}/x", vec!["d".repeat(200); 6].join("/"));
    let deep = format!("{}x", "d/".repeat(64));
    let f: Option<&[u8]> = Some(b"payload");
    let cases: Vec<(&str, Vec<RawEntry>)> = vec![
        ("dot-dot", vec![("../escaped.txt", f)]),
        ("dot-dot inside", vec![("a/../../escaped.txt", f)]),
        ("absolute", vec![("/tmp/escaped.txt", f)]),
        ("backslash", vec![("a\\..\\escaped.txt", f)]),
        ("NUL", vec![("a\0b", f)]),
        ("control character", vec![("a\x1b]0;pwned\x07", f)]),
        ("drive letter", vec![("C:escaped.txt", f)]),
        ("reserved name", vec![("CON", f)]),
        ("overlong component", vec![(long_component.as_str(), f)]),
        ("overlong path", vec![(long_path.as_str(), f)]),
        ("too deep", vec![(deep.as_str(), f)]),
        ("case", vec![("A.txt", f), ("a.txt", f)]),
        (
            "normalisation",
            vec![("cafe\u{301}.txt", f), ("caf\u{e9}.txt", f)],
        ),
        ("file and folder", vec![("a", f), ("a/b", f)]),
        ("duplicate", vec![("x", f), ("x", f)]),
        ("empty path", vec![("", f)]),
        ("dot", vec![("./x", f)]),
    ];
    let sb = Sandbox::new();
    let client = sb.data("client");
    for (what, entries) in &cases {
        let (peer, id) = hostile_folder_peer(raw_encoding(entries), vec![b"payload".to_vec()]);
        let out = sb.path(&format!("out-{}", what.replace(' ', "-")));
        let res = sb.get(
            &client,
            &id,
            &[&peer.to_string()],
            Some(&out),
            &["--no-share"],
        );
        let msg = res.fails_with(CORRUPT);
        assert!(msg.contains("is refused"), "{what}: {msg}");
        assert!(
            !msg.chars().any(|c| c.is_control()),
            "{what}: raw text in {msg:?}"
        );
        assert!(!out.exists(), "{what}: the target was made");
        let mut part = out.clone().into_os_string();
        part.push(".peershare-part");
        assert!(
            !std::path::Path::new(&part).exists(),
            "{what}: a part folder was made"
        );
    }
    assert!(!sb.path("escaped.txt").exists());
    assert!(!std::path::Path::new("/tmp/escaped.txt").exists());
    // Nothing at all outside the data dir: the sandbox holds only it and logs.
    let names: Vec<String> = fs::read_dir(sb.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("out-"))
        .collect();
    assert!(names.iter().all(|n| !n.contains("escaped")), "{names:?}");

    // A well-formed folder from the same kind of peer downloads: the
    // refusals above are the paths', not the peer's.
    let (peer, id) = hostile_folder_peer(
        raw_encoding(&[("ok/x.txt", f), ("ok/y", None)]),
        vec![b"payload".to_vec()],
    );
    let out = sb.path("fine");
    sb.get(
        &client,
        &id,
        &[&peer.to_string()],
        Some(&out),
        &["--no-share"],
    )
    .ok();
    assert_eq!(fs::read(out.join("ok/x.txt")).unwrap(), b"payload");
    assert!(out.join("ok/y").is_dir());
}

#[test]
fn a_killed_folder_get_resumes_without_refetching_verified_files() {
    let sb = Sandbox::new();
    let seeder = sb.data("seeder");
    let big = random_bytes(3 * MIB + 1, 99);
    sb.write("set/big.bin", &big);
    for i in 0..60 {
        sb.write(
            &format!("set/f{i:02}.bin"),
            &random_bytes(100_000, 1000 + i),
        );
    }
    let src = sb.path("set");
    let srv = sb.serve(&seeder, &["--max-upload-rate", "2MB"]);
    let folder = sb.share_folders(&seeder, &[&src]);
    let ticket = str_field(&folder[0], "ticket").to_owned();
    let total = u64_field(&folder[0], "size");
    let client = sb.data("client");
    let out = sb.dir("dl");
    let target = out.join("set");
    let part_tree = out.join("set.peershare-part/tree");

    let peer = srv.peer();
    let args = get_args(&client, &ticket, &[&peer], Some(&out), &["--no-share"]);
    let mut kid = Kid::spawn(sb.cmd(&args));
    // Until a few files are in the part folder, whole and right.
    let deadline = std::time::Instant::now() + COMMAND_DEADLINE;
    let verified = loop {
        let good: Vec<u64> = (0..60)
            .filter_map(|i| {
                let name = format!("f{i:02}.bin");
                let got = fs::read(part_tree.join(&name)).ok()?;
                (got == fs::read(src.join(&name)).unwrap()).then_some(got.len() as u64)
            })
            .collect();
        if good.len() >= 5 {
            break good.iter().sum::<u64>();
        }
        assert!(kid.try_status().is_none(), "get ended before it was killed");
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    kid.child.kill().unwrap();
    kid.wait_deadline(COMMAND_DEADLINE);
    assert!(!target.exists(), "the folder's name exists half-filled");

    let res = sb.get(
        &client,
        &ticket,
        &[&srv.peer()],
        Some(&out),
        &["--no-share", "--json"],
    );
    let s = res.ok().json();
    assert_eq!(tree_of(&target), tree_of(&src));
    let resumed = u64_field(&s, "bytes_resumed");
    assert!(
        resumed >= verified,
        "{resumed} resumed, {verified} were verified: {s}"
    );
    assert_eq!(
        u64_field(&s, "bytes_received") + resumed,
        total,
        "every byte fetched once: {s}"
    );
    assert!(!out.join("set.peershare-part").exists());
}
