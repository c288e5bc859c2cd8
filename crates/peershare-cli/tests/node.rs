//! The CLI through a running node: `get` handed to the node (progress,
//! summary, exit status, Ctrl-C), `get --detach`, `status`, `send`, the
//! library and peer commands answered by the node, `serve`'s upload lines,
//! and what a `get` with no node running does (it seeds what it downloads,
//! and with `--seed` after).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A command started in the background with stdout and stderr read line
/// by line into channels.
struct Running {
    kid: Kid,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Running {
    fn start(sb: &Sandbox, args: &[&str]) -> Self {
        let mut cmd = sb.cmd(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut kid = Kid::spawn(cmd);
        let stdout = lines_of(kid.child.stdout.take().expect("stdout"));
        let stderr = lines_of(kid.child.stderr.take().expect("stderr"));
        Self {
            kid,
            stdout,
            stderr,
        }
    }

    /// The next stdout line, within 30 s.
    #[track_caller]
    fn line(&self) -> String {
        self.stdout
            .recv_timeout(Duration::from_secs(30))
            .expect("a line on stdout")
    }

    /// Stderr lines until one holds `what` (30 s at most); all of them.
    #[track_caller]
    fn stderr_until(&self, what: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(what);
                    seen.push(l);
                    if hit {
                        return seen;
                    }
                }
                Err(_) => panic!("no stderr line with {what:?}; got {seen:?}"),
            }
        }
    }
}

fn node_status(sb: &Sandbox, data: &std::path::Path) -> Value {
    let out = sb.run_on(data, &["status", "--json"]);
    out.ok();
    out.json()
}

/// `get` with a node running on its data dir hands the download to that
/// node: the node's status shows it, the summary and exit status are as
/// without a node, and the file is then served by the node.
#[test]
fn get_through_a_running_node_shows_progress_and_its_summary() {
    let sb = Sandbox::new();
    let content = random_bytes(6 * MIB, 700);
    let file = sb.write("src/f.bin", &content);
    let (server, client) = (sb.data("server"), sb.data("client"));
    let id = sb.share_one(&server, &file);
    let seeder = sb.serve(&server, &["--max-upload-rate", "3MB"]);
    let node = sb.serve(&client, &[]);
    let out = sb.path("got.bin");
    let peer = seeder.peer();
    let mut args = get_args(&client, &id, &[&peer], Some(&out), &["--json"]);
    args.retain(|a| *a != "-q");
    let get = Running::start(&sb, &args);
    // The node runs it (its status lists it) while this get shows progress.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = node_status(&sb, &client);
        if s["downloads"].as_array().is_some_and(|d| !d.is_empty()) {
            assert_eq!(s["downloads"][0]["file_id"], id.as_str());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node never showed the download: {s}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let progress = get.stderr_until("downloading:");
    assert!(progress.last().unwrap().contains("%)"), "{progress:?}");
    let mut get = get;
    let status = get.kid.wait_deadline(COMMAND_DEADLINE);
    assert!(status.success(), "{status:?}");
    let stdout: String = get.stdout.try_iter().collect::<Vec<_>>().join("\n");
    let summary: Value = serde_json::from_str(&stdout).expect("a JSON summary");
    assert_eq!(u64_field(&summary, "size"), content.len() as u64);
    assert_eq!(summary["shared"], true);
    assert_same_file(&out, &content);
    // Shared by the node now: its catalog lists it.
    let rows = sb.ls(&sb.data("third"), &[&node]);
    assert_eq!(str_field(&rows[0], "id"), id);
}

/// Exit statuses through a node are the README's: a file nobody shares is
/// 4, an existing output 6, a bad ticket 2 (checked before any node).
#[test]
fn get_through_a_node_fails_with_the_readme_exit_statuses() {
    let sb = Sandbox::new();
    let (server, client) = (sb.data("server"), sb.data("client"));
    let file = sb.write("src/f.bin", b"some bytes");
    let id = sb.share_one(&server, &file);
    let seeder = sb.serve(&server, &[]);
    let _node = sb.serve(&client, &[]);
    let unknown = "ab".repeat(32);
    sb.get(
        &client,
        &unknown,
        &[&seeder.peer()],
        Some(&sb.path("x")),
        &[],
    )
    .fails_with(NOT_FOUND);
    let exists = sb.write("exists.bin", b"mine");
    sb.get(&client, &id, &[&seeder.peer()], Some(&exists), &[])
        .fails_with(LOCAL);
    assert_eq!(std::fs::read(&exists).unwrap(), b"mine");
    sb.get(&client, "ps1notaticket", &[&seeder.peer()], None, &[])
        .fails_with(USAGE);
}

/// Ctrl-C of a `get` handed to a node cancels the node's download (its
/// progress kept) and exits 130.
#[test]
fn ctrl_c_of_a_get_through_a_node_cancels_the_download() {
    let sb = Sandbox::new();
    let content = random_bytes(8 * MIB, 701);
    let file = sb.write("src/f.bin", &content);
    let (server, client) = (sb.data("server"), sb.data("client"));
    let id = sb.share_one(&server, &file);
    let seeder = sb.serve(&server, &["--max-upload-rate", "1MB"]);
    let _node = sb.serve(&client, &[]);
    let out = sb.path("got.bin");
    let mut get = sb.spawn(&get_args(&client, &id, &[&seeder.peer()], Some(&out), &[]));
    Progress::of(&out, &id, content.len()).wait_started(&mut get);
    signal(get.pid(), "INT");
    let status = get.wait_deadline(Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "{status:?}");
    let s = node_status(&sb, &client);
    assert!(
        s["downloads"].as_array().unwrap().is_empty(),
        "no download left running in the node: {s}"
    );
    assert!(!out.exists());
    // The same command resumes it.
    let again = sb.get(&client, &id, &[&seeder.peer()], Some(&out), &["--json"]);
    again.ok();
    assert!(u64_field(&again.json(), "bytes_resumed") > 0);
    assert_same_file(&out, &content);
}

/// `get --detach` queues the download in the node and returns at once; the
/// node finishes it; without a node it is refused (status 2).
#[test]
fn get_detach_hands_the_download_over_and_returns() {
    let sb = Sandbox::new();
    let content = random_bytes(4 * MIB, 702);
    let file = sb.write("src/f.bin", &content);
    let (server, client) = (sb.data("server"), sb.data("client"));
    let id = sb.share_one(&server, &file);
    let seeder = sb.serve(&server, &["--max-upload-rate", "2MB"]);
    let out = sb.path("got.bin");
    // No node yet: refused.
    sb.get(&client, &id, &[&seeder.peer()], Some(&out), &["--detach"])
        .fails_with(USAGE);
    let _node = sb.serve(&client, &[]);
    let started = Instant::now();
    let queued = sb.get(
        &client,
        &id,
        &[&seeder.peer()],
        Some(&out),
        &["--detach", "--json"],
    );
    queued.ok();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "returned at once"
    );
    let info = queued.json();
    assert_eq!(str_field(&info, "file_id"), id);
    wait_until_file(&out, &content);
}

fn wait_until_file(out: &std::path::Path, content: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read(out).map(|b| b != content).unwrap_or(true) {
        assert!(
            Instant::now() < deadline,
            "{} never completed",
            out.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// `status` shows the running node; with none it says so (status 3).
#[test]
fn status_shows_the_running_node_and_says_when_there_is_none() {
    let sb = Sandbox::new();
    let data = sb.data("node");
    sb.run_on(&data, &["status"]).fails_with(UNREACHABLE);
    let node = sb.serve(&data, &[]);
    let s = node_status(&sb, &data);
    let me = sb.run_on(&data, &["id"]);
    assert_eq!(str_field(&s, "node_id"), me.stdout.trim());
    assert_eq!(s["listening"][0], node.peer().as_str());
    assert_eq!(s["api"], node.api.as_deref().unwrap());
    assert!(s["totals"]["uptime_secs"].as_f64().unwrap() >= 0.0);
    let text = sb.run_on(&data, &["status"]);
    text.ok();
    assert!(
        text.stdout.contains(&format!("listening  {}", node.peer())),
        "{}",
        text.stdout
    );
}

/// With a node running, `share`, `shared`, `unshare` and `ls` are answered
/// by it: its tickets carry the address it really listens on.
#[test]
fn library_commands_go_through_the_running_node() {
    let sb = Sandbox::new();
    let data = sb.data("node");
    let node = sb.serve(&data, &[]);
    let f = sb.write("f.txt", b"through the node");
    let shared = sb.share(&data, &[&f], None);
    let ticket: peershare_proto::Ticket = str_field(&shared[0], "ticket").parse().unwrap();
    assert_eq!(ticket.addrs, vec![node.addr], "the node's own address");
    let listed = sb.shared(&data);
    assert_eq!(listed.len(), 1);
    let rows = sb.ls(&data, &[&node]);
    assert_eq!(rows.len(), 1);
    let id = str_field(&shared[0], "id");
    sb.run_on(&data, &["unshare", id]).ok();
    assert!(sb.shared(&data).is_empty());
}

/// `send` with no node running: prints a ticket, serves it, says what was
/// downloaded, and with `--exit-after 1` exits after one complete download.
#[test]
fn send_gives_a_file_and_exits_after_one_download() {
    let sb = Sandbox::new();
    let content = random_bytes(3 * MIB, 703);
    let file = sb.write("src/talk.mkv", &content);
    let sender = sb.data("sender");
    let send = Running::start(
        &sb,
        &[
            "--data-dir",
            path_str(&sender),
            "send",
            path_str(&file),
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--exit-after",
            "1",
        ],
    );
    let ticket = send.line();
    assert!(ticket.starts_with("ps1"), "{ticket}");
    let parsed: peershare_proto::Ticket = ticket.parse().unwrap();
    assert!(parsed.unlisted, "unlisted unless --listed");
    assert!(
        parsed.addrs.iter().all(|a| a.ip().is_loopback()),
        "{:?}",
        parsed.addrs
    );
    let out = sb.path("got.mkv");
    let got = sb.run_on(&sb.data("friend"), &["get", &ticket, "-o", path_str(&out)]);
    got.ok();
    assert_same_file(&out, &content);
    let said = send.stderr_until("sent talk.mkv to");
    assert!(said.last().unwrap().contains("all of it"), "{said:?}");
    let mut send = send;
    let status = send.kid.wait_deadline(Duration::from_secs(30));
    assert!(
        status.success(),
        "send exits 0 after one download: {status:?}"
    );
}

/// `send` with a node running shares through it and follows its events.
#[test]
fn send_through_a_running_node() {
    let sb = Sandbox::new();
    let content = random_bytes(MIB, 704);
    let file = sb.write("src/doc.pdf", &content);
    let data = sb.data("node");
    let node = sb.serve(&data, &[]);
    let send = Running::start(
        &sb,
        &[
            "--data-dir",
            path_str(&data),
            "send",
            path_str(&file),
            "--exit-after",
            "1",
        ],
    );
    let ticket = send.line();
    let parsed: peershare_proto::Ticket = ticket.parse().unwrap();
    assert_eq!(parsed.addrs, vec![node.addr], "the running node's address");
    let out = sb.path("got.pdf");
    sb.run_on(&sb.data("friend"), &["get", &ticket, "-o", path_str(&out)])
        .ok();
    send.stderr_until("sent doc.pdf to");
    let mut send = send;
    assert!(send.kid.wait_deadline(Duration::from_secs(30)).success());
}

/// `serve` says, on stderr, when a peer finished taking a file from it.
#[test]
fn serve_prints_a_line_per_finished_upload() {
    let sb = Sandbox::new();
    let content = random_bytes(2 * MIB, 705);
    let file = sb.write("src/big.iso", &content);
    let data = sb.data("server");
    let id = sb.share_one(&data, &file);
    let serve = Running::start(
        &sb,
        &[
            "--data-dir",
            path_str(&data),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--no-discovery",
        ],
    );
    let addr = serve.line().trim_start_matches("listening on ").to_owned();
    let out = sb.path("got.iso");
    sb.get(&sb.data("client"), &id, &[&addr], Some(&out), &[])
        .ok();
    let lines = serve.stderr_until("sent big.iso to");
    let line = lines.last().unwrap();
    assert!(
        line.contains("2.00 MiB") && line.contains("all of it"),
        "{line}"
    );
}

/// A `get` with no node running seeds what it downloads while it runs,
/// and with `--seed` after it, until Ctrl-C.
#[test]
fn get_seed_keeps_serving_the_file_until_ctrl_c() {
    let sb = Sandbox::new();
    let content = random_bytes(2 * MIB, 706);
    let file = sb.write("src/f.bin", &content);
    let server = sb.data("server");
    let id = sb.share_one(&server, &file);
    let seeder = sb.serve(&server, &[]);
    let b = sb.data("b");
    let out_b = sb.path("b.bin");
    let peer = seeder.peer();
    let mut args = get_args(&b, &id, &[&peer], Some(&out_b), &["--seed"]);
    args.retain(|a| *a != "-q");
    let mut get = Running::start(&sb, &args);
    assert!(get.line().starts_with("saved "), "the summary first");
    get.stderr_until("seeding until Ctrl-C");
    drop(seeder);
    // B is the only source now: find its port from its status-less node?
    // It announces on the LAN (loopback here): C finds it there.
    let out_c = sb.path("c.bin");
    let c = sb.run_on(&sb.data("c"), &["get", &id, "-o", path_str(&out_c)]);
    c.ok();
    assert_same_file(&out_c, &content);
    signal(get.kid.pid(), "INT");
    let status = get.kid.wait_deadline(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}

/// A node whose stdout is closed (a pipe nobody reads any more, as after
/// `serve | head -1`) keeps running: its status lines are dropped, not the
/// node. (It exited at once, status 0: seen as "connection refused" by the
/// root suite, whose seeder reads only the first line.)
#[test]
fn serve_keeps_running_when_nobody_reads_its_output() {
    let sb = Sandbox::new();
    let data = sb.data("node");
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut cmd = sb.cmd(&quiet(
        &data,
        &[
            "serve",
            "--no-discovery",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ],
    ));
    cmd.stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::null());
    let mut kid = Kid::spawn(cmd);
    // node.json comes before the lines, so the node is asked until it
    // answers, twice: long after its first line was refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = sb.run_on(&data, &["status", "--json"]);
        if out.code() == Some(0) {
            break;
        }
        assert!(
            kid.try_status().is_none(),
            "serve exited: {:?}",
            kid.try_status()
        );
        assert!(Instant::now() < deadline, "never answered: {}", out.stderr);
        thread::sleep(Duration::from_millis(20));
    }
    node_status(&sb, &data);
    assert!(kid.try_status().is_none(), "still running");
}
