//! Swarm downloads with real processes on 127.0.0.1: many seeders at once,
//! a lying seeder, a seeder killed mid-download, a downloader serving what
//! it has to a third node, and the speed-up from rate-limited seeders.
//!
//! Synchronisation is by process output, by the downloader's durable
//! progress record, or by polling a condition under a hard deadline.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

/// `get ... --json` started in the background; its stdout is collected.
struct BackgroundGet {
    kid: Kid,
    stdout: thread::JoinHandle<String>,
}

impl BackgroundGet {
    fn start(sb: &Sandbox, client: &Path, id: &str, peers: &[&str], out: &Path) -> Self {
        let mut args = get_args(client, id, peers, Some(out), &["--json"]);
        args.retain(|a| *a != "-q");
        let mut cmd = sb.cmd(&args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut kid = Kid::spawn(cmd);
        let mut so = kid.child.stdout.take().expect("stdout");
        let stdout = thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut so, &mut s);
            s
        });
        Self { kid, stdout }
    }

    /// Waits for a successful exit; returns the JSON summary.
    #[track_caller]
    fn finish(mut self) -> Value {
        let status = self.kid.wait_deadline(COMMAND_DEADLINE);
        let stdout = self.stdout.join().expect("stdout reader");
        assert!(status.success(), "get failed: {status:?}\n{stdout}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }
}

/// The summary's report for the peer at `addr`.
#[track_caller]
fn peer_report<'a>(summary: &'a Value, addr: &str) -> &'a Value {
    summary["peers"]
        .as_array()
        .expect("peers array")
        .iter()
        .find(|p| p["addr"] == addr)
        .unwrap_or_else(|| panic!("no report for {addr} in {summary}"))
}

/// `n` seeders of `content`, each with its own data dir and copy of the
/// file, serving with `extra` options. Returns them with the file ID.
fn seeders(sb: &Sandbox, content: &[u8], n: usize, extra: &[&str]) -> (Vec<Serve>, String) {
    let mut id = String::new();
    let serves = (0..n)
        .map(|i| {
            let data = sb.data(&format!("seed{i}"));
            let file = sb.write(&format!("seed{i}/file.bin"), content);
            id = sb.share_one(&data, &file);
            sb.serve(&data, extra)
        })
        .collect();
    (serves, id)
}

#[test]
fn swarm_completes_from_the_honest_seeders_and_reports_the_liar_dropped() {
    let sb = Sandbox::new();
    let content = random_bytes(8 * MIB, 31);
    // Paced so every seeder, the liar included, is asked for chunks.
    let pace = ["--max-upload-rate", "4MB"];
    let (honest, id) = seeders(&sb, &content, 2, &pace);
    let liar_data = sb.data("liar");
    let liar_file = sb.write("liar/file.bin", &content);
    assert_eq!(sb.share_one(&liar_data, &liar_file), id);
    // Modified in place after sharing, with the mtime put back: the server
    // cannot tell, and serves corrupt chunks.
    tamper(&liar_file, |b| b.iter_mut().for_each(|x| *x ^= 0x5a));
    let liar = sb.serve(&liar_data, &pace);

    let out = sb.path("out.bin");
    let peers = [liar.peer(), honest[0].peer(), honest[1].peer()];
    let peers: Vec<&str> = peers.iter().map(String::as_str).collect();
    let got = sb.get(&sb.data("client"), &id, &peers, Some(&out), &["--json"]);
    got.ok();
    assert_same_file(&out, &content);
    let summary = got.json();

    let l = peer_report(&summary, &liar.peer());
    assert!(
        u64_field(l, "corrupt") >= 1,
        "the liar sent nothing bad? {l}"
    );
    assert_eq!(u64_field(l, "bytes"), 0, "corrupt bytes counted: {l}");
    let why = l["dropped"]
        .as_str()
        .unwrap_or_else(|| panic!("liar not dropped: {l}"));
    assert!(why.contains("failed verification"), "{why}");
    let mut total = 0;
    for h in &honest {
        let r = peer_report(&summary, &h.peer());
        assert!(r["dropped"].is_null(), "honest peer dropped: {r}");
        assert!(u64_field(r, "bytes") > 0, "honest peer unused: {r}");
        total += u64_field(r, "bytes");
    }
    assert_eq!(total, content.len() as u64, "{summary}");
}

#[test]
fn seeder_killed_mid_download_the_others_complete_it() {
    let sb = Sandbox::new();
    let content = random_bytes(12 * MIB, 32);
    let (mut serves, id) = seeders(&sb, &content, 3, &["--max-upload-rate", "2MB"]);
    let out = sb.path("out.bin");
    let addrs: Vec<String> = serves.iter().map(Serve::peer).collect();
    let peers: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let mut get = BackgroundGet::start(&sb, &sb.data("client"), &id, &peers, &out);

    // Once some chunks are on record, kill one seeder (SIGKILL).
    let progress = Progress::of(&out, &id, content.len());
    let done_before = progress.wait_started(&mut get.kid);
    assert!(done_before < progress.chunks, "finished before the kill");
    let killed = serves.remove(0);
    drop(killed);

    let summary = get.finish();
    assert_same_file(&out, &content);
    let k = peer_report(&summary, &addrs[0]);
    assert!(
        k["dropped"].as_str().is_some(),
        "the killed seeder is not reported dropped: {k}"
    );
    let delivered: u64 = addrs
        .iter()
        .map(|a| u64_field(peer_report(&summary, a), "bytes"))
        .sum();
    assert_eq!(delivered, content.len() as u64);
    for a in &addrs[1..] {
        assert!(u64_field(peer_report(&summary, a), "bytes") > 0);
    }
}

#[test]
fn downloader_serves_its_verified_chunks_to_a_third_node_while_downloading() {
    let sb = Sandbox::new();
    let content = random_bytes(6 * MIB, 33);
    // A seeds, slowly: B's download from it takes several seconds.
    let a_data = sb.data("a");
    let a_file = sb.write("a/file.bin", &content);
    let id = sb.share_one(&a_data, &a_file);
    let a = sb.serve(&a_data, &["--max-upload-rate", "1MB"]);

    // B runs a server and, on the same data dir, downloads from A.
    let b_data = sb.data("b");
    let b = sb.serve(&b_data, &[]);
    let b_out = sb.path("b/file.bin");
    std::fs::create_dir_all(b_out.parent().unwrap()).unwrap();
    let mut b_get = BackgroundGet::start(&sb, &b_data, &id, &[&a.peer()], &b_out);
    let b_progress = Progress::of(&b_out, &id, content.len());
    b_progress.wait_started(&mut b_get.kid);

    // B's server now lists the file as a partial source.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = sb.ls(&sb.data("c"), &[&b]);
        let row = rows.iter().find(|r| r["id"] == id.as_str());
        if let Some(r) = row {
            assert_eq!(r["partial_peers"][0], b.peer().as_str(), "{r}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never listed the file: {rows:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let text = sb.run_ls(&sb.data("c"), &[&b.peer()], &[]);
    text.ok();
    assert!(text.stdout.contains("(partial)"), "{}", text.stdout);

    // C downloads from A and B while B is still in progress.
    assert!(b_get.kid.try_status().is_none(), "B finished too early");
    let c_out = sb.path("c.bin");
    let got = sb.get(
        &sb.data("c"),
        &id,
        &[&a.peer(), &b.peer()],
        Some(&c_out),
        &["--json"],
    );
    got.ok();
    assert_same_file(&c_out, &content);
    let summary = got.json();
    let from_b = peer_report(&summary, &b.peer());
    assert_eq!(from_b["partial"], true, "{from_b}");
    assert!(
        u64_field(from_b, "bytes") > 0,
        "nothing came from B: {summary}"
    );

    // B completes too, and its node now shares the whole file.
    let b_summary = b_get.finish();
    assert_same_file(&b_out, &content);
    assert_eq!(b_summary["shared"], true);
    let shared = sb.shared(&b_data);
    assert_eq!(str_field(&shared[0], "id"), id);
    let rows = sb.ls(&sb.data("c"), &[&b]);
    assert!(
        rows[0]["partial_peers"].as_array().unwrap().is_empty(),
        "{rows:?}"
    );
}

#[test]
fn no_share_keeps_the_download_out_of_the_library() {
    let sb = Sandbox::new();
    let content = random_bytes(300_000, 34);
    let (serves, id) = seeders(&sb, &content, 1, &[]);
    let client = sb.data("client");
    let out = sb.path("out.bin");
    let got = sb.get(
        &client,
        &id,
        &[&serves[0].peer()],
        Some(&out),
        &["--no-share", "--json"],
    );
    got.ok();
    assert_eq!(got.json()["shared"], false);
    assert!(sb.shared(&client).is_empty());
    let out2 = sb.path("out2.bin");
    let got = sb.get(&client, &id, &[&serves[0].peer()], Some(&out2), &["--json"]);
    got.ok();
    assert_eq!(got.json()["shared"], true);
    assert_eq!(str_field(&sb.shared(&client)[0], "id"), id);
}

#[test]
fn three_rate_limited_seeders_are_at_least_2_5_times_faster_than_one() {
    let sb = Sandbox::new();
    let content = random_bytes(24 * MIB, 35);
    let (serves, id) = seeders(&sb, &content, 3, &["--max-upload-rate", "6MB"]);
    let addrs: Vec<String> = serves.iter().map(Serve::peer).collect();
    let seconds = |peers: &[&str], name: &str| {
        let out = sb.path(name);
        let got = sb.get(&sb.data(name), &id, peers, Some(&out), &["--json"]);
        got.ok();
        assert_same_file(&out, &content);
        got.json()["seconds"].as_f64().expect("seconds")
    };
    let one = seconds(&[&addrs[0]], "one.bin");
    let all: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let three = seconds(&all, "three.bin");
    let speedup = one / three;
    eprintln!("one seeder {one:.2} s, three {three:.2} s: {speedup:.2}x");
    assert!(
        speedup >= 2.5,
        "three seeders {three:.2} s vs one {one:.2} s: only {speedup:.2}x"
    );
}

#[test]
fn progress_lines_and_summary_show_each_peer() {
    let sb = Sandbox::new();
    let content = random_bytes(3 * MIB, 36);
    // About 1.5 s in all: at least one progress line a second.
    let (serves, id) = seeders(&sb, &content, 2, &["--max-upload-rate", "1MB"]);
    let addrs: Vec<String> = serves.iter().map(Serve::peer).collect();
    let out = sb.path("out.bin");
    let client = sb.data("c");
    let mut args = vec!["--data-dir", path_str(&client), "get", id.as_str()];
    for a in &addrs {
        args.extend(["--peer", a.as_str()]);
    }
    args.extend(["-o", path_str(&out)]);
    let got = sb.run(&args);
    got.ok();
    assert_same_file(&out, &content);
    let progress = got
        .stderr
        .lines()
        .find(|l| l.starts_with("downloading:"))
        .unwrap_or_else(|| panic!("no progress line:\n{}", got.stderr));
    assert!(progress.contains("2 peers"), "{progress}");
    for a in &addrs {
        assert!(
            progress.contains(&format!("{a} ")),
            "{a} missing: {progress}"
        );
        assert!(
            got.stderr.contains(&format!("peershare:   {a}: ")),
            "no summary line for {a}:\n{}",
            got.stderr
        );
    }
    assert!(got.stdout.starts_with("saved "), "{}", got.stdout);
}

#[test]
fn a_shared_name_unsafe_here_is_refused_without_o_and_saved_with_it() {
    let sb = Sandbox::new();
    let content = random_bytes(70_000, 37);
    let data = sb.data("seed");
    // Legal on Linux, a device on Windows: never used as a local name.
    let file = sb.write("seed/con.txt", &content);
    let id = sb.share_one(&data, &file);
    let serve = sb.serve(&data, &[]);
    let client = sb.data("client");
    let dl = sb.dir("dl");
    let refused = sb.get(&client, &id, &[&serve.peer()], Some(&dl), &[]);
    let line = refused.fails_with(1);
    assert!(
        line.contains("reserved device name") && line.contains("-o"),
        "{line}"
    );
    assert_eq!(
        std::fs::read_dir(&dl).unwrap().count(),
        0,
        "something was written"
    );
    let out = sb.path("dl/console.txt");
    sb.get(&client, &id, &[&serve.peer()], Some(&out), &[]).ok();
    assert_same_file(&out, &content);
}
