//! End-to-end tests of the `peershare` binary: real processes, real sockets
//! on 127.0.0.1 only, one temporary directory (and data dirs) per test.
//!
//! Synchronisation is by reading process output (`listening on IP:PORT`) or
//! by polling a condition under a hard deadline; every child process is
//! killed when its guard drops, also when a test fails.

mod common;

use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use peershare::partial::part_paths;
use peershare_proto::Ticket;
use serde_json::Value;

use common::*;

// ------------------------------------------------------------------ tests

#[test]
fn help_of_every_subcommand_exits_0_and_has_examples() {
    let sb = Sandbox::new();
    for sub in ["share", "unshare", "shared", "serve", "ls", "get"] {
        let out = sb.run(&[sub, "--help"]);
        out.ok();
        assert!(
            out.stdout.contains("Example"),
            "`peershare {sub} --help` has no example:\n{}",
            out.stdout
        );
    }
    let top = sb.run(&["--help"]);
    top.ok();
}

#[test]
fn data_dir_is_global_before_or_after_subcommand_and_from_env() {
    let sb = Sandbox::new();
    let data = sb.data("a");
    let other = sb.data("other");
    let one = sb.write("one.txt", b"first file\n");
    let two = sb.write("two.txt", b"second file\n");

    // Before the subcommand.
    sb.run(&["-q", "--data-dir", path_str(&data), "share", path_str(&one)])
        .ok();
    // After the subcommand.
    sb.run(&["share", "-q", path_str(&two), "--data-dir", path_str(&data)])
        .ok();
    let after = sb.run(&["shared", "--json", "--data-dir", path_str(&data)]);
    after.ok();
    let names = sorted_names(after.json().as_array().expect("array"));
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"one.txt".to_owned()) && names.contains(&"two.txt".to_owned()));

    // From the environment.
    let mut c = sb.cmd(&["shared", "--json"]);
    c.env("PEERSHARE_DATA_DIR", &data);
    let env = run(c);
    env.ok();
    assert_eq!(env.json(), after.json(), "PEERSHARE_DATA_DIR is not used");

    // The command line wins over the environment.
    let mut c = sb.cmd(&["--data-dir", path_str(&data), "shared", "--json"]);
    c.env("PEERSHARE_DATA_DIR", &other);
    let both = run(c);
    both.ok();
    assert_eq!(
        both.json(),
        after.json(),
        "--data-dir must win over the env"
    );

    // Sharing through the environment writes into that data dir.
    let three = sb.write("three.txt", b"third\n");
    let mut c = sb.cmd(&["-q", "share", path_str(&three)]);
    c.env("PEERSHARE_DATA_DIR", &other);
    run(c).ok();
    let in_other = sb.shared(&other);
    assert_eq!(in_other.len(), 1);
    assert_eq!(in_other[0]["name"], "three.txt");
    assert_eq!(sb.shared(&data).len(), 2, "the other data dir was touched");
    assert!(
        !sb.home().join(".local/share/peershare").exists(),
        "the default data dir was used although one was given"
    );
}

#[test]
fn share_prints_id_and_name_per_file_recursively() {
    let sb = Sandbox::new();
    let data = sb.data("a");
    let a = b"alpha".to_vec();
    let b = random_bytes(70_000, 1);
    let c = Vec::new();
    let solo = random_bytes(1000, 2);
    sb.write("papers/a.txt", &a);
    sb.write("papers/deep/er/b.bin", &b);
    sb.write("papers/deep/empty.txt", &c);
    let solo_path = sb.write("elsewhere/solo.dat", &solo);

    let out = sb.run_on(
        &data,
        &["share", path_str(&sb.path("papers")), path_str(&solo_path)],
    );
    out.ok();
    // One line per file, and one for the folder, after them.
    let (folders, files): (Vec<&str>, Vec<&str>) =
        out.stdout.lines().partition(|l| l.contains("/  (folder: "));
    assert_eq!(folders.len(), 1, "stdout:\n{}", out.stdout);
    let (folder_id, rest) = folders[0].split_once("  ").unwrap();
    assert!(is_file_id(folder_id), "not an ID: {folder_id:?}");
    assert!(
        rest.starts_with("papers/  (folder: 3 files, "),
        "{}",
        folders[0]
    );
    assert_eq!(
        out.stdout.lines().last(),
        Some(folders[0]),
        "folders come last"
    );
    let mut lines: Vec<(String, String)> = files
        .into_iter()
        .map(|l| {
            let (id, name) = l
                .split_once("  ")
                .unwrap_or_else(|| panic!("line is not `<id>  <name>`: {l:?}"));
            assert!(is_file_id(id), "not a file ID: {id:?} in {l:?}");
            (name.to_owned(), id.to_owned())
        })
        .collect();
    lines.sort();
    let mut expected = vec![
        ("papers/a.txt".to_owned(), expected_id(&a)),
        ("papers/deep/er/b.bin".to_owned(), expected_id(&b)),
        ("papers/deep/empty.txt".to_owned(), expected_id(&c)),
        ("solo.dat".to_owned(), expected_id(&solo)),
    ];
    expected.sort();
    assert_eq!(lines, expected, "stdout:\n{}", out.stdout);
    assert_eq!(sb.shared(&data).len(), 4);
}

#[test]
fn share_json_fields_and_sharing_twice_is_idempotent() {
    let sb = Sandbox::new();
    let data = sb.data("a");
    let content = random_bytes(200_000, 3);
    let f = sb.write("dir/movie.bin", &content);
    let addr: SocketAddr = "127.0.0.1:45678".parse().unwrap();

    let first = sb.share(&data, &[&f], Some(addr));
    assert_eq!(first.len(), 1, "{first:?}");
    let e = &first[0];
    assert_eq!(str_field(e, "id"), expected_id(&content));
    assert_eq!(str_field(e, "name"), "movie.bin");
    assert_eq!(u64_field(e, "size"), content.len() as u64);
    let ticket: Ticket = str_field(e, "ticket").parse().expect("ticket parses");
    assert_eq!(ticket.id.to_string(), str_field(e, "id"));
    assert_eq!(ticket.size, content.len() as u64);
    assert_eq!(ticket.name, "movie.bin");
    assert_eq!(
        ticket.addrs,
        vec![addr],
        "--addr not written into the ticket"
    );

    // Again, by the same path and by other spellings of it.
    let second = sb.share(&data, &[&f], Some(addr));
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["id"], e["id"]);
    assert_eq!(second[0]["ticket"], e["ticket"]);
    let rel = sb.run_on(&data, &["share", "dir/../dir/movie.bin"]);
    rel.ok();
    assert_eq!(
        rel.stdout,
        format!("{}  movie.bin\n", str_field(e, "id")),
        "relative path"
    );

    let lib = sb.shared(&data);
    assert_eq!(lib.len(), 1, "library duplicated: {lib:?}");
    assert_eq!(lib[0]["id"], e["id"]);
    assert_eq!(lib[0]["name"], "movie.bin");
    assert_eq!(u64_field(&lib[0], "size"), content.len() as u64);
    assert!(lib[0]["ticket"].is_string());
}

#[test]
fn unshare_by_id_or_path_never_touches_files_and_unknown_target_removes_nothing() {
    let sb = Sandbox::new();
    let data = sb.data("a");
    let a = sb.write("lib/a.txt", b"aaa");
    let b = sb.write("lib/b.txt", b"bbb");
    let c = sb.write("lib/sub/c.txt", b"ccc");
    let solo = sb.write("solo.txt", b"solo");
    let shared = sb.share(&data, &[&sb.path("lib"), &solo], None);
    assert_eq!(shared.len(), 4);
    let solo_id = id_named(&shared, "solo.txt").to_owned();
    let a_id = id_named(&shared, "lib/a.txt").to_owned();

    let names = |sb: &Sandbox| sorted_names(&sb.shared(&data));

    // Unknown targets: an error, and nothing removed even with a good one.
    let unknown_id = "ab".repeat(32);
    for bad in [
        vec![a_id.as_str(), "lib/no-such-file.txt"],
        vec![unknown_id.as_str()],
        vec![path_str(&sb.path("elsewhere"))],
    ] {
        let mut args = vec!["unshare"];
        args.extend(bad.iter().copied());
        sb.run_on(&data, &args).fails_with(NOT_FOUND);
        assert_eq!(names(&sb).len(), 4, "something was removed by {bad:?}");
    }

    // By file ID.
    let out = sb.run_on(&data, &["unshare", &solo_id]);
    out.ok();
    assert!(out.stdout.contains(&solo_id), "{}", out.stdout);
    assert_eq!(names(&sb), ["lib/a.txt", "lib/b.txt", "lib/sub/c.txt"]);

    // By a file path, relative to the current directory.
    sb.run_on(&data, &["unshare", "lib/b.txt"]).ok();
    assert_eq!(names(&sb), ["lib/a.txt", "lib/sub/c.txt"]);

    // By a folder: everything under it.
    sb.run_on(&data, &["unshare", path_str(&sb.path("lib"))])
        .ok();
    assert!(names(&sb).is_empty());

    // The files themselves are untouched.
    assert_eq!(fs::read(&a).unwrap(), b"aaa");
    assert_eq!(fs::read(&b).unwrap(), b"bbb");
    assert_eq!(fs::read(&c).unwrap(), b"ccc");
    assert_eq!(fs::read(&solo).unwrap(), b"solo");

    // Unsharing what is no longer shared is an error.
    sb.run_on(&data, &["unshare", &solo_id])
        .fails_with(NOT_FOUND);
}

#[test]
fn serve_prints_one_listening_line_accepts_at_once_and_exits_0_on_sigterm() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let f = sb.write("x.txt", b"hello");
    sb.share(&data, &[&f], None);
    let srv = sb.serve(&data, &[]);
    // Accepts connections as soon as the line is out.
    let listed = sb.ls(&sb.data("client"), &[&srv]);
    assert_eq!(listed.len(), 1);
    let log = srv.log();
    let (status, rest) = srv.stop("TERM");
    assert!(
        status.success(),
        "serve exited with {status:?} on SIGTERM; log:\n{log}"
    );
    assert!(
        rest.is_empty(),
        "serve printed more than one line: {rest:?}"
    );
}

#[test]
fn serve_exits_0_on_sigint() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let srv = sb.serve(&data, &[]);
    // Serving (a client got an answer) before the signal.
    assert!(sb.ls(&sb.data("client"), &[&srv]).is_empty());
    let (status, rest) = srv.stop("INT");
    assert!(
        status.success(),
        "serve exited with {status:?} (signal {:?}) on SIGINT",
        status.signal()
    );
    assert!(
        rest.is_empty(),
        "serve printed more than one line: {rest:?}"
    );
}

#[test]
fn share_while_serving_is_served_without_restart() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let client = sb.data("client");
    let srv = sb.serve(&data, &[]);
    assert!(sb.ls(&client, &[&srv]).is_empty());

    let content = random_bytes(100_000, 4);
    let f = sb.write("late.bin", &content);
    let shared = sb.share(&data, &[&f], None);
    let id = str_field(&shared[0], "id");

    let listed = sb.ls(&client, &[&srv]);
    assert_eq!(listed.len(), 1, "new share not served: {listed:?}");
    assert_eq!(str_field(&listed[0], "id"), id);
    assert_eq!(str_field(&listed[0], "name"), "late.bin");

    let out = sb.path("got.bin");
    sb.get(&client, id, &[&srv.peer()], Some(&out), &[]).ok();
    assert_same_file(&out, &content);

    // Unsharing is picked up the same way.
    sb.run_on(&data, &["unshare", id]).ok();
    assert!(
        sb.ls(&client, &[&srv]).is_empty(),
        "unshared file still listed"
    );
    let again = sb.path("again.bin");
    sb.get(&client, id, &[&srv.peer()], Some(&again), &[])
        .fails_with(NOT_FOUND);
    assert!(!again.exists());
}

#[test]
fn concurrent_shares_on_one_data_dir_keep_every_file() {
    let sb = Sandbox::new();
    let data = sb.data("a");
    let mut expected = Vec::new();
    for round in 0..3 {
        let mut kids = Vec::new();
        for side in ["left", "right"] {
            let folder = format!("r{round}-{side}");
            for i in 0..15 {
                let name = format!("{folder}/f{i}.bin");
                sb.write(&name, &random_bytes(1000 + i, (round * 100 + i) as u64));
                expected.push(name);
            }
            // One larger file so that the two runs overlap while hashing.
            let name = format!("{folder}/big.bin");
            sb.write(&name, &random_bytes(2 * MIB, round as u64 + 77));
            expected.push(name);
            kids.push(sb.spawn(&quiet(&data, &["share", path_str(&sb.path(&folder))])));
        }
        for k in &mut kids {
            let st = k.wait_deadline(COMMAND_DEADLINE);
            assert!(st.success(), "a concurrent share failed: {st:?}");
        }
    }
    let names = sorted_names(&sb.shared(&data));
    expected.sort();
    assert_eq!(names, expected, "files lost by concurrent shares");
}

#[test]
fn ls_lists_files_of_every_peer_and_merges_files_both_share() {
    let sb = Sandbox::new();
    let (da, db) = (sb.data("a"), sb.data("b"));
    let common = random_bytes(150_000, 5);
    let only_a = b"only on a".to_vec();
    let only_b = random_bytes(65_536, 6);
    let ca = sb.write("a/common.bin", &common);
    let cb = sb.write("b/common.bin", &common);
    let oa = sb.write("a/only-a.txt", &only_a);
    let ob = sb.write("b/only-b.bin", &only_b);
    sb.share(&da, &[&ca, &oa], None);
    sb.share(&db, &[&cb, &ob], None);
    // Paced, so the peer that answers second joins well before the end.
    let paced = ["--max-upload-rate", "8MB"];
    let (sa, sb_) = (sb.serve(&da, &paced), sb.serve(&db, &paced));
    let client = sb.data("client");

    let rows = sb.ls(&client, &[&sa, &sb_]);
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let row = |name: &str| {
        let r = by_name(&rows, name);
        assert_eq!(r.len(), 1, "{name} listed {} times: {rows:#?}", r.len());
        r[0].clone()
    };
    let c = row("common.bin");
    assert_eq!(str_field(&c, "id"), expected_id(&common));
    assert_eq!(u64_field(&c, "size"), common.len() as u64);
    let peers: Vec<&str> = c["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p.as_str().expect("peer string"))
        .collect();
    assert_eq!(
        peers,
        [sa.peer(), sb_.peer()],
        "peers, in the order given: {c}"
    );
    assert_eq!(
        str_field(&c, "peer"),
        sa.peer(),
        "first peer that lists it: {c}"
    );

    let a = row("only-a.txt");
    assert_eq!(str_field(&a, "id"), expected_id(&only_a));
    assert_eq!(u64_field(&a, "size"), only_a.len() as u64);
    assert_eq!(str_field(&a, "peer"), sa.peer());
    assert_eq!(a["peers"], serde_json::json!([sa.peer()]));

    let b = row("only-b.bin");
    assert_eq!(str_field(&b, "id"), expected_id(&only_b));
    assert_eq!(u64_field(&b, "size"), only_b.len() as u64);
    assert_eq!(str_field(&b, "peer"), sb_.peer());
    assert_eq!(b["peers"], serde_json::json!([sb_.peer()]));

    // Text output: one line per file with its ID, name and peers.
    let text = sb.run_ls(&client, &[&sa.peer(), &sb_.peer()], &[]);
    text.ok();
    assert_eq!(text.stdout.lines().count(), 3, "{}", text.stdout);
    let line = text
        .stdout
        .lines()
        .find(|l| l.contains("common.bin"))
        .expect("common.bin listed");
    assert!(line.contains(&expected_id(&common)), "{line}");
    assert!(
        line.contains(&sa.peer()) && line.contains(&sb_.peer()),
        "{line}"
    );
    let line = text
        .stdout
        .lines()
        .find(|l| l.contains("only-a.txt"))
        .expect("only-a.txt listed");
    assert!(
        line.contains(&sa.peer()) && !line.contains(&sb_.peer()),
        "{line}"
    );
}

#[test]
fn get_sizes_around_chunk_boundaries_by_id_with_json_summary() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let client = sb.data("client");
    let sizes = [0, 1, 65_535, 65_536, 65_537, 3 * MIB];
    let mut files = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let content = random_bytes(size, 10 + i as u64);
        sb.write(&format!("sizes/s{size}.bin"), &content);
        files.push((size, content));
    }
    let shared = sb.share(&data, &[&sb.path("sizes")], None);
    assert_eq!(shared.len(), sizes.len());
    let srv = sb.serve(&data, &[]);
    let outdir = sb.dir("out");

    for (size, content) in &files {
        let name = format!("sizes/s{size}.bin");
        let entry = by_name(&shared, &name);
        assert_eq!(entry.len(), 1, "{name} not shared: {shared:?}");
        let id = str_field(entry[0], "id");
        assert_eq!(id, expected_id(content));
        let out = outdir.join(format!("got-{size}"));
        let res = sb.get(&client, id, &[&srv.peer()], Some(&out), &["--json"]);
        res.ok();
        assert_same_file(&out, content);
        no_leftovers(&out);
        let s = res.json();
        assert_eq!(str_field(&s, "id"), id);
        // With `-o FILE` and a bare ID the summary's name is not pinned
        // down by the contract; it must be there.
        assert!(!str_field(&s, "name").is_empty(), "{s}");
        assert_eq!(
            Path::new(str_field(&s, "path")).canonicalize().unwrap(),
            out.canonicalize().unwrap()
        );
        assert_eq!(u64_field(&s, "size"), *size as u64);
        assert_eq!(u64_field(&s, "bytes_received"), *size as u64, "{s}");
        assert_eq!(u64_field(&s, "bytes_resumed"), 0, "{s}");
        let peers = s["peers"].as_array().expect("peers");
        assert_eq!(peers.len(), 1, "{s}");
        assert_eq!(u64_field(&peers[0], "bytes"), *size as u64, "{s}");
    }
}

#[test]
fn get_by_ticket_without_peer_saves_in_current_dir_under_shared_name() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let srv = sb.serve(&data, &[]);
    let content = random_bytes(3 * MIB + 12_345, 20);
    sb.write("docs/sub/report.bin", &content);
    let shared = sb.share(&data, &[&sb.path("docs")], Some(srv.addr));
    assert_eq!(shared.len(), 1);
    assert_eq!(str_field(&shared[0], "name"), "docs/sub/report.bin");
    let ticket = str_field(&shared[0], "ticket");
    assert!(ticket.starts_with("ps1"), "{ticket}");

    let cwd = sb.dir("downloads");
    let mut c = sb.cmd(&get_args(
        &sb.data("client"),
        ticket,
        &[],
        None,
        &["--json"],
    ));
    c.current_dir(&cwd);
    let res = run(c);
    res.ok();
    let saved = cwd.join("report.bin");
    assert_same_file(&saved, &content);
    no_leftovers(&saved);
    let s = res.json();
    assert_eq!(str_field(&s, "id"), str_field(&shared[0], "id"));
    assert_eq!(str_field(&s, "name"), "docs/sub/report.bin");
    assert_eq!(u64_field(&s, "size"), content.len() as u64);
    assert_eq!(
        fs::read_dir(&cwd).unwrap().count(),
        1,
        "stray files in the current dir"
    );
}

#[test]
fn get_into_existing_directory_and_without_output_saves_basename() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let client = sb.data("client");
    let content = random_bytes(300_000, 21);
    sb.write("pack/inner/data.bin", &content);
    let shared = sb.share(&data, &[&sb.path("pack")], None);
    let id = str_field(&shared[0], "id").to_owned();
    let srv = sb.serve(&data, &[]);

    // -o an existing directory: saved inside it.
    let dir = sb.dir("target dir");
    let res = sb.get(&client, &id, &[&srv.peer()], Some(&dir), &["--json"]);
    res.ok();
    assert_same_file(&dir.join("data.bin"), &content);
    assert_eq!(str_field(&res.json(), "name"), "pack/inner/data.bin");
    assert_eq!(
        Path::new(str_field(&res.json(), "path"))
            .canonicalize()
            .unwrap(),
        dir.join("data.bin").canonicalize().unwrap()
    );

    // By ID without -o: the current directory, under the shared name's base.
    let cwd = sb.dir("cwd");
    let mut c = sb.cmd(&get_args(&client, &id, &[&srv.peer()], None, &[]));
    c.current_dir(&cwd);
    run(c).ok();
    assert_same_file(&cwd.join("data.bin"), &content);
    no_leftovers(&cwd.join("data.bin"));
}

#[test]
fn get_from_two_peers_uses_both() {
    let sb = Sandbox::new();
    let content = random_bytes(8 * MIB, 30);
    let (da, db) = (sb.data("a"), sb.data("b"));
    let fa = sb.write("a/film.bin", &content);
    let fb = sb.write("b/film.bin", &content);
    let id = sb.share_one(&da, &fa);
    assert_eq!(sb.share_one(&db, &fb), id);
    // Paced, so the peer that answers second joins well before the end.
    let paced = ["--max-upload-rate", "8MB"];
    let (sa, sb_) = (sb.serve(&da, &paced), sb.serve(&db, &paced));

    let out = sb.path("film.out");
    let res = sb.get(
        &sb.data("client"),
        &id,
        &[&sa.peer(), &sb_.peer()],
        Some(&out),
        &["--json"],
    );
    res.ok();
    assert_same_file(&out, &content);
    let s = res.json();
    let peers = s["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 2, "{s:#}");
    let mut total = 0;
    for p in peers {
        let bytes = u64_field(p, "bytes");
        assert!(bytes > 0, "a peer delivered nothing: {s:#}");
        total += bytes;
    }
    assert_eq!(total, content.len() as u64, "{s:#}");
    let addrs: Vec<&str> = peers.iter().map(|p| str_field(p, "addr")).collect();
    assert!(addrs.contains(&sa.peer().as_str()) && addrs.contains(&sb_.peer().as_str()));
}

#[test]
fn get_and_ls_with_unreachable_peer_exit_3() {
    let sb = Sandbox::new();
    let client = sb.data("client");
    let dead = closed_port().to_string();
    let id = expected_id(b"whatever");
    let out = sb.path("nothing.bin");
    let err = sb
        .get(&client, &id, &[&dead], Some(&out), &[])
        .fails_with(UNREACHABLE);
    assert!(err.contains(&dead), "{err}");
    assert!(!out.exists());
    no_leftovers(&out);

    sb.run_ls(&client, &[&dead], &[]).fails_with(UNREACHABLE);
    sb.run_ls(&client, &[&dead], &["--json"])
        .fails_with(UNREACHABLE);
}

#[test]
fn get_unknown_file_id_exits_4() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let f = sb.write("x.bin", b"some content");
    sb.share(&data, &[&f], None);
    let srv = sb.serve(&data, &[]);
    let unknown = expected_id(b"content nobody shares");
    let out = sb.path("x.out");
    let err = sb
        .get(
            &sb.data("client"),
            &unknown,
            &[&srv.peer()],
            Some(&out),
            &[],
        )
        .fails_with(NOT_FOUND);
    assert!(err.contains(&unknown), "{err}");
    assert!(!out.exists());
    no_leftovers(&out);
}

#[test]
fn get_garbage_id_or_ticket_exits_2() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let srv = sb.serve(&data, &[]);
    let short_hex = "a".repeat(63);
    let non_hex = "g".repeat(64);
    let mut bad_ticket = {
        let content = b"ticketed";
        let f = sb.write("t.txt", content);
        str_field(&sb.share(&data, &[&f], Some(srv.addr))[0], "ticket").to_owned()
    };
    bad_ticket.truncate(bad_ticket.len() - 3);
    for what in [
        "not-an-id",
        short_hex.as_str(),
        non_hex.as_str(),
        "ps1garbage",
        bad_ticket.as_str(),
    ] {
        sb.get(&sb.data("client"), what, &[&srv.peer()], None, &[])
            .fails_with(USAGE);
    }
    assert!(
        fs::read_dir(sb.path("")).unwrap().all(|e| {
            let n = e.unwrap().file_name();
            !n.to_string_lossy().contains("peershare-part")
        }),
        "a part file was created for a bad ID"
    );
}

#[test]
fn get_existing_output_exits_6_unchanged_and_force_overwrites() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let client = sb.data("client");
    let content = random_bytes(150_000, 40);
    let f = sb.write("src/song.bin", &content);
    let id = sb.share_one(&data, &f);
    let srv = sb.serve(&data, &[]);

    let out = sb.write("out/song.bin", b"precious, do not overwrite");
    let get =
        |target: &Path, extra: &[&str]| sb.get(&client, &id, &[&srv.peer()], Some(target), extra);
    let err = get(&out, &[]).fails_with(LOCAL);
    assert!(err.contains("exists"), "{err}");
    assert_eq!(fs::read(&out).unwrap(), b"precious, do not overwrite");
    no_leftovers(&out);

    // Into the directory, where a file of the shared name exists.
    let err = get(&sb.path("out"), &[]).fails_with(LOCAL);
    assert!(err.contains("exists"), "{err}");
    assert_eq!(fs::read(&out).unwrap(), b"precious, do not overwrite");

    get(&out, &["--force"]).ok();
    assert_same_file(&out, &content);
    no_leftovers(&out);
}

#[test]
fn get_into_a_missing_folder_says_so_and_writes_nothing() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let client = sb.data("client");
    let f = sb.write("src/a.bin", &random_bytes(1000, 41));
    let id = sb.share_one(&data, &f);
    let srv = sb.serve(&data, &[]);
    let peer = srv.peer();
    for target in ["nope/a.bin", "nope/"] {
        let out = sb.path(target);
        let err = sb
            .get(&client, &id, &[&peer], Some(&out), &[])
            .fails_with(LOCAL);
        assert!(err.contains("does not exist"), "{err}");
        assert!(!sb.path("nope").exists());
    }
}

#[test]
fn resume_after_killing_get_mid_transfer() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let client = sb.data("client");
    let size = 24 * MIB;
    let content = random_bytes(size, 50);
    let f = sb.write("big.bin", &content);
    let id = sb.share_one(&data, &f);
    let slow = sb.serve(&data, &["--max-upload-rate", "4MB"]);

    let out = sb.dir("out").join("big.bin");
    let (part, _) = part_paths(&out);
    let progress = Progress::of(&out, &id, size);
    let mut first = sb.spawn(&get_args(
        &client,
        &id,
        &[&slow.peer()],
        Some(&out),
        &["--json"],
    ));
    let recorded = progress.wait_started(&mut first);
    assert!(
        recorded < progress.chunks,
        "the whole file was already recorded"
    );
    drop(first); // SIGKILL, reaped.
    assert!(!out.exists(), "final name exists after an interrupted get");
    assert!(part.exists(), "the part file is gone after SIGKILL");

    // (One node per data dir: the slow one goes first.)
    slow.stop("TERM");
    let fast = sb.serve(&data, &[]);
    let res = sb.get(&client, &id, &[&fast.peer()], Some(&out), &["--json"]);
    res.ok();
    assert_same_file(&out, &content);
    no_leftovers(&out);
    let s = res.json();
    let resumed = u64_field(&s, "bytes_resumed");
    let received = u64_field(&s, "bytes_received");
    assert!(resumed > 0, "nothing resumed: {s:#}");
    assert!(
        received < size as u64,
        "the whole file was transferred again: {s:#}"
    );
    assert!(resumed + received >= size as u64, "{s:#}");
}

#[test]
fn source_modified_in_place_with_restored_mtime_never_yields_wrong_bytes() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let client = sb.data("client");
    let whole = random_bytes(200_000, 60);
    let one = random_bytes(200_000, 61);
    let fw = sb.write("src/whole.bin", &whole);
    let fo = sb.write("src/onebyte.bin", &one);
    let shared = sb.share(&data, &[&fw, &fo], None);
    let srv = sb.serve(&data, &[]);

    // Rewrite in place: same size, original mtime put back.
    tamper(&fw, |b| b.iter_mut().for_each(|x| *x ^= 0x5a));
    tamper(&fo, |b| b[100_000] ^= 1);

    for (name, original) in [("whole.bin", &whole), ("onebyte.bin", &one)] {
        let id = id_named(&shared, name);
        let out = sb.dir("out").join(name);
        let res = sb.get(&client, id, &[&srv.peer()], Some(&out), &["--json"]);
        assert!(
            !res.status.success(),
            "{name}: get reported success with bytes that do not match the ID: {}",
            res.stdout
        );
        assert!(
            !out.exists(),
            "{name}: a file appeared under the final name"
        );
        assert_eq!(
            res.code(),
            Some(CORRUPT),
            "{name}: wrong exit status; stderr:\n{}",
            res.stderr
        );
        let err = res
            .stderr
            .lines()
            .find(|l| l.starts_with("peershare: error:"))
            .unwrap_or_else(|| panic!("{name}: no error line:\n{}", res.stderr));
        let lower = err.to_lowercase();
        assert!(
            lower.contains("corrupt") || lower.contains("verif"),
            "{name}: error does not mention corruption: {err}"
        );
        // The tampered copy is still in place (the failure is not vacuous).
        assert_ne!(
            &fs::read(sb.path(&format!("src/{name}"))).unwrap(),
            original
        );
    }
}

#[test]
fn file_modified_after_sharing_is_withdrawn() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let client = sb.data("client");
    let keep = random_bytes(70_000, 70);
    let same_size = random_bytes(70_000, 71);
    let grown = random_bytes(70_000, 72);
    let fk = sb.write("src/keep.bin", &keep);
    let fs_ = sb.write("src/same-size.bin", &same_size);
    let fg = sb.write("src/grown.bin", &grown);
    let shared = sb.share(&data, &[&fk, &fs_, &fg], None);
    let srv = sb.serve(&data, &[]);
    assert_eq!(sb.ls(&client, &[&srv]).len(), 3);

    // Same size, new content, mtime moves on (forced forward if the clock
    // granularity kept it equal).
    let before = fs::metadata(&fs_).unwrap().modified().unwrap();
    fs::write(&fs_, random_bytes(70_000, 99)).unwrap();
    if fs::metadata(&fs_).unwrap().modified().unwrap() == before {
        File::options()
            .write(true)
            .open(&fs_)
            .unwrap()
            .set_modified(before + Duration::from_secs(2))
            .unwrap();
    }
    assert_ne!(fs::metadata(&fs_).unwrap().modified().unwrap(), before);
    // Appended to.
    let mut g = fs::OpenOptions::new().append(true).open(&fg).unwrap();
    std::io::Write::write_all(&mut g, b"more").unwrap();
    drop(g);

    let listed = sb.ls(&client, &[&srv]);
    let names: Vec<&str> = listed.iter().map(|v| str_field(v, "name")).collect();
    assert_eq!(names, ["keep.bin"], "changed files still listed");

    for name in ["same-size.bin", "grown.bin"] {
        let id = id_named(&shared, name);
        let out = sb.dir("out").join(name);
        let res = sb.get(&client, id, &[&srv.peer()], Some(&out), &[]);
        assert!(
            !res.status.success(),
            "{name}: a changed file was still served: {}",
            res.stdout
        );
        assert!(!out.exists(), "{name}: output exists");
    }
    // Shared again, the changed file is served under its new ID.
    let again = sb.share(&data, &[&fs_], None);
    assert_ne!(again[0]["id"], by_name(&shared, "same-size.bin")[0]["id"]);
    let listed = sb.ls(&client, &[&srv]);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().any(|v| v["id"] == again[0]["id"]));

    // The unchanged one still downloads.
    let id = id_named(&shared, "keep.bin");
    let out = sb.dir("out").join("keep.bin");
    sb.get(&client, id, &[&srv.peer()], Some(&out), &[]).ok();
    assert_same_file(&out, &keep);
}

#[test]
fn share_of_a_missing_path_fails_with_one_error_line_and_changes_nothing() {
    let sb = Sandbox::new();
    let data = sb.data("a");
    let good = sb.write("good.txt", b"good");
    sb.share(&data, &[&good], None);
    let other = sb.write("other.txt", b"other");
    let err = sb
        .run_on(
            &data,
            &[
                "share",
                path_str(&other),
                path_str(&sb.path("no-such-file.txt")),
            ],
        )
        .fails();
    assert!(err.contains("no-such-file.txt"), "{err}");
    let lib = sb.shared(&data);
    assert_eq!(lib.len(), 1, "{lib:?}");
    assert_eq!(lib[0]["name"], "good.txt");
}

#[test]
fn get_and_ls_succeed_when_one_of_two_peers_is_unreachable() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let client = sb.data("client");
    let content = random_bytes(500_000, 80);
    let f = sb.write("half.bin", &content);
    let id = sb.share_one(&data, &f);
    let srv = sb.serve(&data, &[]);
    let dead = closed_port().to_string();

    let ls = sb.run_ls(&client, &[&dead, &srv.peer()], &["--json"]);
    ls.ok();
    let rows = ls.json();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["peers"], serde_json::json!([srv.peer()]));

    let out = sb.path("half.out");
    let res = sb.get(&client, &id, &[&dead, &srv.peer()], Some(&out), &["--json"]);
    res.ok();
    assert_same_file(&out, &content);
}

#[test]
fn get_with_one_corrupt_and_one_good_peer_saves_the_right_bytes() {
    let sb = Sandbox::new();
    let content = random_bytes(2 * MIB, 90);
    let (dg, dc) = (sb.data("good"), sb.data("corrupt"));
    let fg = sb.write("good/f.bin", &content);
    let fc = sb.write("corrupt/f.bin", &content);
    let id = sb.share_one(&dg, &fg);
    assert_eq!(sb.share_one(&dc, &fc), id);
    // Damage the second copy in place, keeping size and mtime.
    tamper(&fc, |b| b.iter_mut().for_each(|x| *x ^= 0xff));
    let (good, bad) = (sb.serve(&dg, &[]), sb.serve(&dc, &[]));

    let out = sb.path("f.out");
    let res = sb.get(
        &sb.data("client"),
        &id,
        &[&bad.peer(), &good.peer()],
        Some(&out),
        &["--json"],
    );
    res.ok();
    assert_same_file(&out, &content);
    let s = res.json();
    for p in s["peers"].as_array().expect("peers") {
        if p["addr"] == bad.peer() {
            assert_eq!(u64_field(p, "bytes"), 0, "corrupt bytes counted: {s:#}");
        } else {
            assert_eq!(u64_field(p, "bytes"), content.len() as u64, "{s:#}");
        }
    }
}

#[test]
fn get_interrupted_by_sigint_exits_130_keeps_progress_and_resumes() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let client = sb.data("client");
    let size = 16 * MIB;
    let content = random_bytes(size, 100);
    let f = sb.write("int.bin", &content);
    let id = sb.share_one(&data, &f);
    let srv = sb.serve(&data, &[]);

    let out = sb.path("int.out");
    let (part, _) = part_paths(&out);
    let progress = Progress::of(&out, &id, size);
    let mut kid = sb.spawn(&get_args(
        &client,
        &id,
        &[&srv.peer()],
        Some(&out),
        &["--json", "--max-download-rate", "4MB"],
    ));
    // Wait until the download is under way: progress is on record.
    progress.wait_started(&mut kid);
    let seen = progress.done();
    signal(kid.pid(), "INT");
    let st = kid.wait_deadline(Duration::from_secs(15));
    assert_eq!(st.code(), Some(130), "{st:?}");
    assert!(!out.exists(), "final name exists after an interrupted get");
    assert!(part.exists(), "the part file is gone after SIGINT");
    assert!(
        progress.done() >= seen,
        "recorded progress shrank on SIGINT"
    );

    // Again, without the rate limit.
    let res = sb.get(&client, &id, &[&srv.peer()], Some(&out), &["--json"]);
    res.ok();
    assert_same_file(&out, &content);
    no_leftovers(&out);
    let s = res.json();
    assert!(u64_field(&s, "bytes_resumed") > 0, "nothing resumed: {s:#}");
}

#[test]
fn serve_exits_0_on_signal_sent_right_after_listening_line() {
    // `listening on` means ready: a signal sent the moment the line is read
    // must still shut serve down cleanly, never kill it.
    let sb = Sandbox::new();
    let data = sb.data("srv");
    for sig in ["TERM", "INT"] {
        for round in 0..20 {
            let srv = sb.serve(&data, &[]);
            let (status, rest) = srv.stop(sig);
            assert!(
                status.success(),
                "SIG{sig} sent right after `listening on` (round {round}): serve ended with \
                 {status:?} (killed by signal {:?}) instead of exit status 0",
                status.signal()
            );
            assert!(rest.is_empty(), "{rest:?}");
        }
    }
}

#[test]
fn serve_exits_0_on_sigterm_during_a_transfer() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let client = sb.data("client");
    let size = 16 * MIB;
    let f = sb.write("busy.bin", &random_bytes(size, 110));
    let id = sb.share_one(&data, &f);
    let srv = sb.serve(&data, &["--max-upload-rate", "2MB"]);

    let out = sb.path("busy.out");
    let mut getter = sb.spawn(&get_args(&client, &id, &[&srv.peer()], Some(&out), &[]));
    Progress::of(&out, &id, size).wait_started(&mut getter);

    let (status, rest) = srv.stop("TERM");
    assert!(
        status.success(),
        "serve ended with {status:?} on SIGTERM during a transfer"
    );
    assert!(rest.is_empty(), "{rest:?}");
    let st = getter.wait_deadline(Duration::from_secs(30));
    assert!(
        !st.success(),
        "get succeeded although its only peer stopped"
    );
    assert!(!out.exists(), "a file appeared under the final name");
}

#[test]
fn ls_lists_a_peer_given_twice_once() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let f = sb.write("dup.txt", b"listed once");
    sb.share(&data, &[&f], None);
    let srv = sb.serve(&data, &[]);
    let rows = sb.ls(&sb.data("client"), &[&srv, &srv]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0]["peers"],
        serde_json::json!([srv.peer()]),
        "one peer shown as two: {}",
        rows[0]
    );
}

// ---- LAN discovery (over loopback: the sandbox pins it to `lo`) ----

/// Polls `cond` until it holds; fails the test after `secs`.
fn eventually(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn node_id(sb: &Sandbox, data: &Path) -> String {
    let out = sb.run_on(data, &["id"]);
    out.ok();
    out.stdout.trim().to_owned()
}

/// Also a regression test: with a per-source reply budget of 4, the fourth
/// command in a row from one machine (here `get`) found nobody.
#[test]
fn without_peer_ls_and_get_use_the_peers_found_on_the_lan() {
    let sb = Sandbox::new();
    let (a, b, client) = (sb.data("a"), sb.data("b"), sb.data("client"));
    let common = random_bytes(6 * MIB, 70);
    let fa = sb.write("a/only-a.txt", b"alpha");
    let fb = sb.write("b/only-b.txt", b"beta");
    let ca = sb.write("a/common.bin", &common);
    let cb = sb.write("b/common.bin", &common);
    sb.share(&a, &[&fa, &ca], None);
    sb.share(&b, &[&fb, &cb], None);
    // Paced, so the peer that answers second joins well before the end.
    let paced = ["--max-upload-rate", "8MB"];
    let sa = sb.serve(&a, &paced);
    let sb_ = sb.serve(&b, &paced);

    let out = sb.run_ls(&client, &[], &["--json"]);
    out.ok();
    let rows = out.json().as_array().unwrap().clone();
    assert_eq!(
        sorted_names(&rows),
        ["common.bin", "only-a.txt", "only-b.txt"]
    );
    let common_row = by_name(&rows, "common.bin")[0];
    assert_eq!(u64_field(common_row, "peer_count"), 2, "{common_row}");
    assert_eq!(u64_field(by_name(&rows, "only-a.txt")[0], "peer_count"), 1);

    let out = sb.run_ls(&client, &[], &["--json", "--search", "ONLY", "b"]);
    out.ok();
    assert_eq!(sorted_names(out.json().as_array().unwrap()), ["only-b.txt"]);

    let out = sb.run_on(&client, &["peers", "--json"]);
    out.ok();
    let found: Vec<String> = out
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| str_field(p, "node_id").to_owned())
        .collect();
    let mut want = vec![node_id(&sb, &a), node_id(&sb, &b)];
    want.sort();
    let mut got = found.clone();
    got.sort();
    assert_eq!(got, want);

    let id = str_field(common_row, "id").to_owned();
    let dest = sb.dir("out").join("common.bin");
    let out = sb.run_on(&client, &["get", &id, "-o", path_str(&dest), "--json"]);
    out.ok();
    assert_same_file(&dest, &common);
    let summary = out.json();
    let peers = summary["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2, "{summary}");
    assert!(
        peers.iter().all(|p| u64_field(p, "bytes") > 0),
        "chunks from both: {summary}"
    );
    drop((sa, sb_));
}

#[test]
fn nothing_found_on_the_lan_says_why_and_what_to_do() {
    let sb = Sandbox::new();
    let client = sb.data("client");
    for args in [vec!["ls"], vec!["peers"], vec!["get", &"ab".repeat(32)]] {
        let err = sb.run_on(&client, &args).fails_with(UNREACHABLE);
        assert!(err.contains("no peers found on the LAN"), "{err}");
        assert!(
            err.contains("127.255.255.255"),
            "says where it asked: {err}"
        );
        assert!(err.contains("--peer HOST:PORT"), "{err}");
    }
}

#[test]
fn serve_records_peers_that_come_and_go() {
    let sb = Sandbox::new();
    let (a, b) = (sb.data("a"), sb.data("b"));
    let fast = ["--announce-interval", "0.2"];
    let sa = sb.serve(&a, &fast);
    let b_id = node_id(&sb, &b);
    let peers_of_a = || -> Vec<String> {
        let Ok(bytes) = fs::read(a.join("peers.json")) else {
            return Vec::new();
        };
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| str_field(p, "node_id").to_owned())
            .collect()
    };
    // A node started later is seen within a few announcements.
    let sbb = sb.serve(&b, &fast);
    eventually("a to hear b", 10, || peers_of_a().contains(&b_id));
    // `peers` on a's data dir includes what a's serve heard.
    let out = sb.run_on(&a, &["peers", "--json"]);
    out.ok();
    assert!(out.stdout.contains(&b_id));
    // A stopped node ages out.
    let (status, _) = sbb.stop("TERM");
    assert!(status.success());
    eventually("b to age out of a's view", 10, || {
        !peers_of_a().contains(&b_id)
    });
    drop(sa);
}

#[test]
fn no_discovery_serve_is_not_found() {
    let sb = Sandbox::new();
    let (a, client) = (sb.data("a"), sb.data("client"));
    let f = sb.write("a/x", b"x");
    sb.share(&a, &[&f], None);
    let _s = sb.serve(&a, &["--no-discovery"]);
    sb.run_on(&client, &["ls"]).fails_with(UNREACHABLE);
}

#[test]
fn no_discovery_env_accepts_the_usual_truthy_values() {
    let sb = Sandbox::new();
    let client = sb.data("client");
    let id = "ab".repeat(32);
    for v in ["1", "yes", "true"] {
        let mut c = sb.cmd(&quiet(&client, &["get", &id]));
        c.env("PEERSHARE_NO_DISCOVERY", v);
        let err = run(c).fails_with(USAGE);
        assert!(err.contains("no peer to download from"), "{v}: {err}");
    }
    let mut c = sb.cmd(&quiet(&client, &["get", &id]));
    c.env("PEERSHARE_NO_DISCOVERY", "0");
    let err = run(c).fails_with(UNREACHABLE);
    assert!(err.contains("no peers found on the LAN"), "{err}");
}

#[test]
fn get_with_peer_and_discover_uses_both() {
    let sb = Sandbox::new();
    let (a, b, client) = (sb.data("a"), sb.data("b"), sb.data("client"));
    let content = random_bytes(4 * MIB, 71);
    let fa = sb.write("a/f.bin", &content);
    let fb = sb.write("b/f.bin", &content);
    let id = sb.share_one(&a, &fa);
    sb.share_one(&b, &fb);
    // A is only reachable by --peer; B only by discovery.
    let sa = sb.serve(&a, &["--no-discovery"]);
    let _sb = sb.serve(&b, &[]);
    let dest = sb.dir("out").join("f.bin");
    let out = sb.run_on(
        &client,
        &[
            "get",
            &id,
            "--peer",
            &sa.peer(),
            "--discover",
            "-o",
            path_str(&dest),
            "--json",
        ],
    );
    out.ok();
    assert_same_file(&dest, &content);
    let peers = out.json()["peers"].as_array().unwrap().clone();
    assert_eq!(peers.len(), 2, "{peers:?}");
    // Without --discover, --peer alone is used.
    fs::remove_file(&dest).unwrap();
    let out = sb.run_on(
        &client,
        &[
            "get",
            &id,
            "--peer",
            &sa.peer(),
            "-o",
            path_str(&dest),
            "--json",
        ],
    );
    out.ok();
    assert_eq!(out.json()["peers"].as_array().unwrap().len(), 1);
}

/// Regression: `get -o out.bin` (a bare name, no directory part) failed at
/// its first checkpoint, because the parent of "out.bin.peershare-state"
/// is "", which cannot be opened to fsync.
#[test]
fn get_to_a_bare_relative_name_checkpoints_and_finishes() {
    let sb = Sandbox::new();
    let (data, client) = (sb.data("srv"), sb.data("client"));
    let content = random_bytes(6 * MIB, 72);
    let f = sb.write("src/f.bin", &content);
    let id = sb.share_one(&data, &f);
    // Slow enough (about 1.5 s) for at least one checkpoint.
    let srv = sb.serve(&data, &["--max-upload-rate", "4MB"]);
    // The sandbox is the child's working directory.
    sb.get(
        &client,
        &id,
        &[&srv.peer()],
        Some(Path::new("out.bin")),
        &[],
    )
    .ok();
    assert_same_file(&sb.path("out.bin"), &content);
}
