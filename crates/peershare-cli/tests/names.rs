//! Names from peers and from disk never reach the terminal raw (issue #10,
//! item 9): a ticket's name is used only if it is a valid shared name
//! (`wire::check_shared_name`), catalog entries under any other name are
//! left out, the library takes no such name (so no catalog republishes
//! one), and every command prints names and paths escaped.
//!
//! The hostile name holds a newline that would forge an output line and an
//! OSC sequence that would retitle the terminal.

mod common;

use std::fs;

use common::*;
use peershare::Library;
use peershare::store::Entry;
use peershare_proto::Ticket;

/// A forged line, then "set the terminal's title".
const EVIL: &str = "a.txt\n0000  1 GiB  fake.iso\x1b]0;pwned\x07";

/// `EVIL` as `printable` shows it.
const EVIL_SHOWN: &str = "a.txt\\n0000  1 GiB  fake.iso\\u{1b}]0;pwned\\u{7}";

/// Fails if `text` holds a control character other than line ends, or if
/// a line of it holds the forged line's start.
#[track_caller]
fn no_raw_text(what: &str, text: &str) {
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{what} holds a control character:\n{text:?}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("0000  1 GiB")),
        "{what} has a forged line:\n{text}"
    );
}

/// Every line `out` printed, on both streams, is free of raw peer text.
#[track_caller]
fn all_clean(out: &Out) {
    no_raw_text("stdout", &out.stdout);
    no_raw_text("stderr", &out.stderr);
}

/// A serving node sharing `content` as `f.bin`, and a ticket for it whose
/// name is `EVIL` (what a hostile program would hand out).
fn evil_ticket(sb: &Sandbox, content: &[u8]) -> (Serve, String) {
    let data = sb.data("srv");
    let srv = sb.serve(&data, &[]);
    let shared = sb.share(&data, &[&sb.write("f.bin", content)], Some(srv.addr));
    let mut t: Ticket = str_field(&shared[0], "ticket").parse().unwrap();
    t.name = EVIL.into();
    (srv, t.to_string())
}

#[test]
fn a_ticket_whose_name_no_node_may_list_needs_o_and_its_name_is_never_used() {
    let sb = Sandbox::new();
    let content = random_bytes(MIB + 3, 90);
    let (_srv, ticket) = evil_ticket(&sb, &content);
    let client = sb.data("client");

    // Without -o: nothing to save it under. Refused, nothing written.
    let cwd = sb.dir("downloads");
    let mut c = sb.cmd(&get_args(&client, &ticket, &[], None, &["--no-discovery"]));
    c.current_dir(&cwd);
    let res = run(c);
    let msg = res.fails_with(USAGE);
    all_clean(&res);
    assert!(msg.contains(EVIL_SHOWN), "{msg}");
    assert!(msg.contains("-o PATH"), "{msg}");
    assert_eq!(fs::read_dir(&cwd).unwrap().count(), 0, "nothing written");

    // With -o FILE: the file is saved there, under that name, with a
    // warning that quotes the ticket's name escaped.
    let got = sb.path("got.bin");
    let res = sb.get(&client, &ticket, &[], Some(&got), &["--no-discovery"]);
    res.ok();
    all_clean(&res);
    assert!(
        res.stderr.contains("ignoring the ticket's name")
            && res.stderr.contains(&format!("{EVIL:?}")),
        "{}",
        res.stderr
    );
    assert_same_file(&got, &content);
    // The library entry is named after the local file, not the ticket.
    let shared = sb.run_on(&client, &["shared"]);
    shared.ok();
    all_clean(&shared);
    assert!(shared.stdout.contains("  got.bin\n"), "{}", shared.stdout);
    let json = sb.shared(&client);
    assert_eq!(sorted_names(&json), ["got.bin"]);

    // With -o DIR: as if given the file ID, so under the name peers list.
    let dir = sb.dir("into");
    let res = sb.get(&client, &ticket, &[], Some(&dir), &["--no-discovery"]);
    res.ok();
    all_clean(&res);
    assert_same_file(&dir.join("f.bin"), &content);

    // And this node's catalog never republishes the ticket's name: both
    // copies, one content, are listed under their own names (every shared
    // name is: issue 12).
    let mirror = sb.serve(&client, &[]);
    let rows = sb.ls(&sb.data("third"), &[&mirror]);
    assert_eq!(sorted_names(&rows), ["f.bin", "got.bin"], "{rows:?}");
    assert_eq!(rows[0]["id"], rows[1]["id"]);
}

#[test]
fn a_name_left_in_the_library_by_an_older_release_is_shown_escaped_and_not_listed() {
    // An older release's `get -o` kept a ticket's name as it was: the
    // library still holds it. Every command shows it escaped, and peers
    // leave it out of the catalog they are sent.
    let sb = Sandbox::new();
    let data = sb.data("old");
    let lib = Library::open(&data).unwrap();
    let shared = |name: &str| {
        lib.share(&[sb.write(name, name.as_bytes())], &Default::default())
            .unwrap()
            .remove(0)
            .entry
    };
    let evil = Entry {
        name: EVIL.into(),
        ..shared("from-an-old-ticket.bin")
    };
    shared("fine.txt");
    lib.insert_unchecked(vec![evil.clone()]).unwrap();

    let out = sb.run_on(&data, &["shared"]);
    out.ok();
    all_clean(&out);
    assert!(out.stdout.contains(EVIL_SHOWN), "{}", out.stdout);
    let json = sb.shared(&data);
    assert!(
        json.iter().any(|v| v["name"] == EVIL),
        "JSON keeps it exact"
    );

    let srv = sb.serve(&data, &[]);
    let client = sb.data("client");
    let res = sb.run_ls(&client, &[&srv.peer()], &[]);
    res.ok();
    all_clean(&res);
    assert!(res.stdout.contains("  fine.txt  ("), "{}", res.stdout);
    assert_eq!(res.stdout.lines().count(), 1, "{}", res.stdout);
    // The serve lists it no more (the client would leave it out, with a
    // warning: `a_peer_s_error_message_is_shown_escaped_in_errors_and_logs`).
    assert!(
        !res.stderr.contains("names no node may list"),
        "not even listed: {}",
        res.stderr
    );
    let rows = sb.ls(&client, &[&srv]);
    assert_eq!(sorted_names(&rows), ["fine.txt"]);
    // Asked for by ID, it is still served, and saved under a name of the
    // downloader's: the peer's for it is none.
    let out_dir = sb.dir("dl");
    sb.get(&client, &evil.id, &[&srv.peer()], Some(&out_dir), &[])
        .ok();
    assert_same_file(&out_dir.join(&evil.id), b"from-an-old-ticket.bin");

    let out = sb.run_on(&data, &["unshare", path_str(&evil.path)]);
    out.ok();
    all_clean(&out);
    assert!(
        out.stdout
            .contains(&format!("unshared {}  {EVIL_SHOWN}\n", evil.id)),
        "{}",
        out.stdout
    );
}

#[test]
fn share_refuses_a_file_named_with_control_characters_and_skips_one_in_a_folder() {
    let sb = Sandbox::new();
    let data = sb.data("a");
    let evil = sb.write(&format!("dir/{EVIL}"), b"evil");
    sb.write("dir/ok.txt", b"ok");

    let res = sb.run_on(&data, &["share", path_str(&evil)]);
    let msg = res.fails_with(LOCAL);
    all_clean(&res);
    assert!(msg.contains(&format!("{EVIL:?}")), "{msg}");
    assert!(msg.contains("control character"), "{msg}");
    assert!(sb.shared(&data).is_empty(), "nothing shared");

    let res = sb.run_on(&data, &["share", path_str(&sb.path("dir"))]);
    res.ok();
    all_clean(&res);
    let lines: Vec<&str> = res.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "the file and its folder: {}", res.stdout);
    assert!(lines[0].ends_with("  dir/ok.txt"), "{}", res.stdout);
    assert!(
        lines[1].ends_with("  dir/  (folder: 1 file, 2 B)"),
        "{}",
        res.stdout
    );
    assert!(res.stderr.contains("skipping"), "{}", res.stderr);
    assert_eq!(sorted_names(&sb.shared(&data)), ["dir/ok.txt"]);
}

#[test]
fn a_download_saved_under_a_name_with_control_characters_is_shown_escaped_and_not_shared() {
    let sb = Sandbox::new();
    let srv_data = sb.data("srv");
    let srv = sb.serve(&srv_data, &[]);
    let content = random_bytes(300_000, 91);
    let id = sb.share_one(&srv_data, &sb.write("f.bin", &content));
    let client = sb.data("client");
    let out = sb.path(EVIL);
    let res = sb.get(&client, &id, &[&srv.peer()], Some(&out), &[]);
    res.ok();
    all_clean(&res);
    assert_same_file(&out, &content);
    let shown = sb.path(EVIL_SHOWN);
    assert!(
        res.stdout
            .starts_with(&format!("saved {} (", shown.display())),
        "{}",
        res.stdout
    );
    assert_eq!(res.stdout.lines().count(), 1, "{}", res.stdout);
    // The library takes no name peers would refuse.
    assert!(!res.stdout.contains("now shared"), "{}", res.stdout);
    assert!(sb.shared(&client).is_empty());
}

#[test]
fn trust_ls_shows_a_label_escaped() {
    let sb = Sandbox::new();
    let data = sb.data("a");
    let friend = sb.run_on(&sb.data("friend"), &["id"]);
    let friend = friend.ok().stdout.trim().to_owned();
    sb.run_on(&data, &["trust", "add", &friend, EVIL]).ok();
    let out = sb.run_on(&data, &["trust", "ls"]);
    out.ok();
    all_clean(&out);
    assert_eq!(out.stdout, format!("{friend}  {EVIL_SHOWN}\n"));
}

#[test]
fn peers_shows_what_a_local_serve_recorded_escaped_and_only_real_node_ids() {
    let sb = Sandbox::new();
    let data = sb.data("a");
    let me = sb.run_on(&data, &["id"]);
    let me = me.ok().stdout.trim().to_owned();
    let other = "ab".repeat(32);
    // What a `serve` on this data dir records (this test process stands
    // for it: the record counts while its process lives), tampered with.
    let record = serde_json::json!({
        "pid": std::process::id(),
        "node_id": me,
        "written_unix": 0,
        "peers": [
            {"node_id": EVIL, "addr": "127.0.0.1:9", "found_via": "announce", "last_seen_secs": 0},
            {"node_id": other, "addr": "127.0.0.1:10", "found_via": EVIL, "last_seen_secs": 0},
        ],
    });
    fs::write(data.join("peers.json"), record.to_string()).unwrap();
    let out = sb.run_on(&data, &["peers"]);
    out.ok();
    all_clean(&out);
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    assert!(out.stdout.starts_with(&other), "{}", out.stdout);
    assert!(out.stdout.contains(EVIL_SHOWN), "{}", out.stdout);
}

#[test]
fn a_peer_s_error_message_is_shown_escaped_in_errors_and_logs() {
    use peershare_proto::wire::{ErrorCode, Message};
    let sb = Sandbox::new();
    // A peer that refuses every connection with a message of its own (not
    // as busy: that would be asked again for minutes).
    let peer = fake_peer(|m, _| match m {
        Message::Hello(_) => Some(Message::Error {
            req_id: 0,
            code: ErrorCode::Internal,
            message: EVIL.into(),
        }),
        _ => None,
    })
    .to_string();
    let client = sb.data("client");
    let id = "ab".repeat(32);
    let out = sb.path("out.bin");
    // -v: the log lines that quote it too.
    let res = sb.get(&client, &id, &[&peer], Some(&out), &["-v"]);
    assert!(!res.status.success(), "{}", res.stderr);
    all_clean(&res);
    assert!(res.stderr.contains(EVIL_SHOWN), "{}", res.stderr);
    let res = sb.run_ls(&client, &[&peer], &["-v"]);
    assert!(!res.status.success(), "{}", res.stderr);
    all_clean(&res);
    assert!(res.stderr.contains(EVIL_SHOWN), "{}", res.stderr);
    // A catalog entry under such a name: left out, the warning escaped.
    let mut entries = made_up_entries(0..2, "fine-");
    entries[1].name = EVIL.into();
    let peer = catalog_peer(entries).to_string();
    let res = sb.run_ls(&client, &[&peer], &[]);
    res.ok();
    all_clean(&res);
    assert_eq!(res.stdout.lines().count(), 1, "{}", res.stdout);
    assert!(res.stdout.contains("  fine-000000  ("), "{}", res.stdout);
    assert!(res.stderr.contains(&format!("{EVIL:?}")), "{}", res.stderr);
}
