//! Identity, trust and unlisted files, through the real binary.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

const MIB: usize = 1024 * 1024;

fn node_id(sb: &Sandbox, data: &Path) -> String {
    let out = sb.run_on(data, &["id"]);
    out.ok();
    out.stdout.trim().to_owned()
}

#[test]
fn id_is_the_key_kept_privately_in_the_data_dir() {
    let sb = Sandbox::new();
    let data = sb.data("a");
    let id = node_id(&sb, &data);
    assert_eq!(id.len(), 64, "{id}");
    assert_eq!(node_id(&sb, &data), id, "the ID is stable");
    let json = sb.run_on(&data, &["id", "--json"]);
    assert_eq!(str_field(&json.json(), "node_id"), id);
    let key = data.join("node.key");
    let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_ne!(
        node_id(&sb, &sb.data("b")),
        id,
        "another data dir, another node"
    );
    // A key others may read is refused, untouched.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let before = fs::read(&key).unwrap();
    let msg = sb.run_on(&data, &["id"]).fails_with(6);
    assert!(msg.contains("chmod 600"), "{msg}");
    assert_eq!(fs::read(&key).unwrap(), before);
}

#[test]
fn trust_commands_and_their_help() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let friend = node_id(&sb, &sb.data("friend"));
    for sub in [&["trust", "--help"][..], &["id", "--help"]] {
        let out = sb.run(sub);
        out.ok();
        assert!(out.stdout.contains("Example"), "{sub:?}:\n{}", out.stdout);
    }
    sb.run_on(&data, &["trust", "add", &friend, "laptop"]).ok();
    let again = sb.run_on(&data, &["trust", "add", &friend, "laptop"]);
    assert!(
        again.ok().stdout.contains("already trusted"),
        "{}",
        again.stdout
    );
    let list = sb.run_on(&data, &["trust", "ls", "--json"]);
    let rows = list.ok().json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(str_field(&rows[0], "node_id"), friend);
    assert_eq!(str_field(&rows[0], "name"), "laptop");
    let text = sb.run_on(&data, &["trust", "ls"]);
    assert!(text.ok().stdout.contains(&format!("{friend}  laptop")));
    // Bad input: a clear usage error, nothing changed.
    let msg = sb
        .run_on(&data, &["trust", "add", "not-an-id"])
        .fails_with(2);
    assert!(msg.contains("not a node ID"), "{msg}");
    sb.run_on(&data, &["trust", "rm", &friend]).ok();
    let msg = sb.run_on(&data, &["trust", "rm", &friend]).fails_with(4);
    assert!(msg.contains("not on the trust list"), "{msg}");
    let empty = sb.run_on(&data, &["trust", "ls", "--json"]);
    assert_eq!(empty.ok().json().as_array().unwrap().len(), 0);
}

#[test]
fn trusted_only_serve_refuses_a_stranger_until_it_is_trusted() {
    let sb = Sandbox::new();
    let srv_data = sb.data("srv");
    let content = random_bytes(MIB + 77, 31);
    let id = sb.share_one(&srv_data, &sb.write("f.bin", &content));
    let srv = sb.serve(&srv_data, &["--trusted-only"]);
    let client = sb.data("client");
    let me = node_id(&sb, &client);
    let out = sb.path("got.bin");

    let msg = sb
        .get(&client, &id, &[&srv.peer()], Some(&out), &[])
        .fails_with(7);
    assert!(msg.contains(&format!("peershare trust add {me}")), "{msg}");
    assert!(!out.exists());
    let msg = sb.run_ls(&client, &[&srv.peer()], &[]).fails_with(7);
    assert!(msg.contains("serves only the nodes it trusts"), "{msg}");

    // Trusted while serve runs: no restart needed.
    sb.run_on(&srv_data, &["trust", "add", &me]).ok();
    sb.get(&client, &id, &[&srv.peer()], Some(&out), &[]).ok();
    assert_eq!(fs::read(&out).unwrap(), content);

    // Another node is still refused.
    let other = sb.data("other");
    sb.run_ls(&other, &[&srv.peer()], &[]).fails_with(7);
    // And once removed, so is the first.
    sb.run_on(&srv_data, &["trust", "rm", &me]).ok();
    sb.run_ls(&client, &[&srv.peer()], &[]).fails_with(7);
    let (status, _) = srv.stop("TERM");
    assert!(status.success());
}

#[test]
fn an_unlisted_file_is_not_in_ls_but_its_ticket_downloads() {
    let sb = Sandbox::new();
    let data = sb.data("srv");
    let srv = sb.serve(&data, &[]);
    let content = random_bytes(2 * MIB, 32);
    sb.share_one(&data, &sb.write("listed.txt", b"everyone sees me"));
    let hidden = sb.write("hidden.bin", &content);
    let addr = srv.addr.to_string();
    let out = sb.run_on(
        &data,
        &[
            "share",
            "--unlisted",
            "--json",
            "--addr",
            &addr,
            path_str(&hidden),
        ],
    );
    let entry = out.ok().json()[0].clone();
    assert_eq!(entry["unlisted"], serde_json::Value::Bool(true));
    let ticket = str_field(&entry, "ticket").to_owned();

    let client = sb.data("client");
    let rows = sb.ls(&client, &[&srv]);
    let names: Vec<_> = rows.iter().map(|r| str_field(r, "name")).collect();
    assert_eq!(names, ["listed.txt"]);
    let text = sb.run_on(&data, &["shared"]);
    assert!(
        text.ok().stdout.contains("hidden.bin  (unlisted)"),
        "{}",
        text.stdout
    );

    let got = sb.path("got.bin");
    sb.get(&client, &ticket, &[], Some(&got), &["--no-discovery"])
        .ok();
    assert_eq!(fs::read(&got).unwrap(), content);
    // The downloader shares it on, unlisted too (the ticket says so).
    let mirror = sb.serve(&client, &[]);
    let third = sb.data("third");
    assert!(sb.ls(&third, &[&mirror]).is_empty());
    let text = sb.run_on(&client, &["shared"]);
    assert!(text.ok().stdout.contains("  (unlisted)"), "{}", text.stdout);
    let id = str_field(&entry, "id").to_owned();
    let again = sb.path("again.bin");
    sb.get(&third, &id, &[&mirror.peer()], Some(&again), &[])
        .ok();
    assert_eq!(fs::read(&again).unwrap(), content);
}

#[test]
fn a_ticket_names_its_node_and_an_impostor_at_its_address_is_refused() {
    let sb = Sandbox::new();
    let content = random_bytes(MIB, 33);
    let file = sb.write("f.bin", &content);
    // A and B both share the file; only B serves, at an address a ticket
    // made by A names.
    let a = sb.data("a");
    let b = sb.data("b");
    let srv = sb.serve(&b, &[]);
    let addr = srv.addr.to_string();
    let share = |data: &Path| {
        let out = sb.run_on(data, &["share", "--json", "--addr", &addr, path_str(&file)]);
        str_field(&out.ok().json()[0], "ticket").to_owned()
    };
    let from_a = share(&a);
    let from_b = share(&b);
    assert_ne!(from_a, from_b, "tickets carry their node");
    let client = sb.data("client");
    let out = sb.path("got.bin");
    let res = sb.get(&client, &from_a, &[], Some(&out), &["--no-discovery"]);
    let msg = res.fails();
    assert!(msg.contains("refusing it"), "{msg}");
    assert!(msg.contains(&node_id(&sb, &a)), "{msg}");
    assert!(!out.exists());
    sb.get(&client, &from_b, &[], Some(&out), &["--no-discovery"])
        .ok();
    assert_eq!(fs::read(&out).unwrap(), content);
}

/// The one error line of `run`, which must fail with status 6 (a local
/// file problem).
fn local_error(out: &Out) -> String {
    out.fails_with(LOCAL)
}

#[test]
fn a_damaged_trust_list_is_called_the_trust_list_and_says_what_to_do() {
    // Regression (issue #10, item 12): a damaged trust.json was called "the
    // library", and one that is not UTF-8 gave a bare "stream did not
    // contain valid UTF-8".
    let sb = Sandbox::new();
    let data = sb.data("a");
    node_id(&sb, &data);
    let list = data.join("trust.json");
    for garbage in [&b"not json"[..], b"\xff\xfe{\x00"] {
        fs::write(&list, garbage).unwrap();
        for args in [&["trust", "ls"][..], &["serve", "--trusted-only"]] {
            let msg = local_error(&sb.run_on(&data, args));
            assert!(msg.contains(path_str(&list)), "{args:?}: {msg}");
            assert!(msg.contains("is damaged"), "{args:?}: {msg}");
            assert!(msg.contains("empty trust list"), "{args:?}: {msg}");
            assert!(!msg.contains("library"), "{args:?}: {msg}");
            assert!(!msg.contains("UTF-8"), "{args:?}: {msg}");
        }
        assert_eq!(fs::read(&list).unwrap(), garbage, "left as it was");
    }
}

#[test]
fn a_damaged_key_file_says_that_deleting_it_makes_a_new_node_id() {
    // Regression (issue #10, item 12): a damaged node.key was called "the
    // library", and one that is not UTF-8 gave a bare "stream did not
    // contain valid UTF-8".
    let sb = Sandbox::new();
    let data = sb.data("a");
    let old = node_id(&sb, &data);
    let key = data.join("node.key");
    for garbage in [&b"not a key"[..], b"\xff\xfe\x00\x01"] {
        fs::write(&key, garbage).unwrap();
        for args in [&["id"][..], &["ls", "--peer", "127.0.0.1:1"]] {
            let msg = local_error(&sb.run_on(&data, args));
            assert!(msg.contains(path_str(&key)), "{args:?}: {msg}");
            assert!(msg.contains("is damaged"), "{args:?}: {msg}");
            assert!(
                msg.contains("delete it to make a new node ID"),
                "{args:?}: {msg}"
            );
            assert!(!msg.contains("library"), "{args:?}: {msg}");
            assert!(!msg.contains("UTF-8"), "{args:?}: {msg}");
        }
        assert_eq!(fs::read(&key).unwrap(), garbage, "never replaced");
    }
    // Doing as told: a new key, a new node ID.
    fs::remove_file(&key).unwrap();
    assert_ne!(node_id(&sb, &data), old);
}
