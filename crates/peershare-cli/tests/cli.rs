//! End-to-end tests of the `peershare` binary: real processes, real sockets
//! on 127.0.0.1 only, one temporary directory (and data dirs) per test.
//!
//! Synchronisation is by reading process output (`listening on IP:PORT`) or
//! by polling a condition under a hard deadline; every child process is
//! killed when its guard drops, also when a test fails.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use peershare::partial::{load_state, part_paths};
use peershare_proto::manifest::{Manifest, chunk_count, chunk_size_for};
use peershare_proto::{FileId, Ticket};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peershare");

const USAGE: i32 = 2;
const UNREACHABLE: i32 = 3;
const NOT_FOUND: i32 = 4;
const CORRUPT: i32 = 5;
const LOCAL: i32 = 6;

/// Longest any single command may take before the test fails.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------- helpers

/// A child process that is killed (SIGKILL) and reaped when dropped.
struct Kid {
    child: Child,
}

impl Kid {
    fn spawn(mut cmd: Command) -> Self {
        let child = cmd.spawn().expect("spawn peershare");
        Self { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit, failing the test after `limit`.
    fn wait_deadline(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit within {limit:?}",
                self.pid()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a finished command left behind.
#[derive(Debug)]
struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Out {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    #[track_caller]
    fn ok(&self) -> &Self {
        assert!(
            self.status.success(),
            "expected success, got {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    /// Asserts the exit code and that stderr holds exactly one error line
    /// (`peershare: warning...` lines aside); returns that line.
    #[track_caller]
    fn fails_with(&self, code: i32) -> String {
        assert_eq!(
            self.code(),
            Some(code),
            "wrong exit status\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self.one_error_line()
    }

    /// Asserts a non-zero exit and exactly one error line; returns it.
    #[track_caller]
    fn fails(&self) -> String {
        assert!(
            !self.status.success() && self.code().is_some(),
            "expected a failure exit, got {:?}\nstdout:\n{}",
            self.status,
            self.stdout
        );
        self.one_error_line()
    }

    #[track_caller]
    fn one_error_line(&self) -> String {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.starts_with("peershare: warning"))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one error line on stderr, got:\n{}",
            self.stderr
        );
        assert!(
            lines[0].starts_with("peershare: error:"),
            "error line lacks the `peershare: error:` prefix: {:?}",
            lines[0]
        );
        lines[0].to_owned()
    }
}

/// Runs `cmd` to completion, with a hard deadline.
fn run(mut cmd: Command) -> Out {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut kid = Kid::spawn(cmd);
    let mut so = kid.child.stdout.take().expect("stdout");
    let mut se = kid.child.stderr.take().expect("stderr");
    let t_out = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = so.read_to_end(&mut s);
        s
    });
    let t_err = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        s
    });
    let status = kid.wait_deadline(COMMAND_DEADLINE);
    let stdout = String::from_utf8_lossy(&t_out.join().expect("stdout reader")).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().expect("stderr reader")).into_owned();
    Out {
        status,
        stdout,
        stderr,
    }
}

/// Sends `sig` ("TERM", "INT") to a child of ours, at once.
fn signal(pid: u32, sig: &str) {
    let signo = match sig {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        other => panic!("unexpected signal {other}"),
    };
    // SAFETY: plain syscall; `pid` is a child this test spawned and has
    // not reaped yet.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signo) };
    assert_eq!(
        rc,
        0,
        "kill -{sig} {pid}: {}",
        std::io::Error::last_os_error()
    );
}

/// A running `peershare serve`.
struct Serve {
    kid: Kid,
    addr: SocketAddr,
    /// Further stdout lines, until the process exits.
    lines: Receiver<String>,
    log: PathBuf,
}

impl Serve {
    fn peer(&self) -> String {
        self.addr.to_string()
    }

    /// Sends `sig`, waits for the exit (deadline) and returns its status and
    /// every stdout line printed after `listening on`.
    fn stop(mut self, sig: &str) -> (ExitStatus, Vec<String>) {
        signal(self.kid.pid(), sig);
        let status = self.kid.wait_deadline(Duration::from_secs(15));
        let mut rest = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => rest.push(l),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("serve's stdout was not closed"),
            }
        }
        (status, rest)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One test's world: a temporary directory holding files, data dirs and a
/// private `$HOME`, so nothing outside it is ever touched.
struct Sandbox {
    tmp: tempfile::TempDir,
    /// This sandbox's own discovery port: tests running at once never see
    /// each other's nodes.
    discovery_port: u16,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("peershare-cli-")
            .tempdir()
            .expect("tempdir");
        fs::create_dir_all(tmp.path().join("home")).expect("home");
        let discovery_port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free UDP port")
            .port();
        Self {
            tmp,
            discovery_port,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn home(&self) -> PathBuf {
        self.path("home")
    }

    /// A data dir (not created: peershare creates it).
    fn data(&self, name: &str) -> PathBuf {
        self.path(&format!("data-{name}"))
    }

    fn dir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(&p).expect("create dir");
        p
    }

    fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("create parent");
        }
        fs::write(&p, bytes).expect("write file");
        p
    }

    /// `peershare ARGS...` with a clean environment, run in the sandbox.
    fn cmd<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(self.tmp.path())
            .env("HOME", self.home())
            .env("XDG_DATA_HOME", self.home().join(".local/share"))
            .env("NO_COLOR", "1");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PEERSHARE_") {
                c.env_remove(k);
            }
        }
        // Discovery stays on loopback: tests send nothing to the LAN.
        c.env("PEERSHARE_DISCOVERY_INTERFACES", "lo")
            .env("PEERSHARE_DISCOVERY_PORT", self.discovery_port.to_string())
            .env("PEERSHARE_DISCOVERY_WAIT", "0.5");
        c
    }

    fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Out {
        run(self.cmd(args))
    }

    /// `peershare -q --data-dir DATA ARGS...`, run to completion.
    fn run_on(&self, data: &Path, args: &[&str]) -> Out {
        self.run(&quiet(data, args))
    }

    /// `peershare ARGS...` started in the background with no stdin and its
    /// output discarded.
    fn spawn(&self, args: &[&str]) -> Kid {
        let mut c = self.cmd(args);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Kid::spawn(c)
    }

    /// `share --json` (with `--addr` when given); returns the entries.
    fn share(&self, data: &Path, paths: &[&Path], addr: Option<SocketAddr>) -> Vec<Value> {
        let addr = addr.map(|a| a.to_string());
        let mut args = vec!["share", "--json"];
        if let Some(a) = &addr {
            args.extend(["--addr", a.as_str()]);
        }
        args.extend(paths.iter().map(|p| path_str(p)));
        let out = self.run_on(data, &args);
        out.ok();
        let v = out.json();
        v.as_array().expect("share --json prints an array").clone()
    }

    /// Shares the one file `path`; returns its file ID.
    fn share_one(&self, data: &Path, path: &Path) -> String {
        str_field(&self.share(data, &[path], None)[0], "id").to_owned()
    }

    /// `shared --json` entries.
    fn shared(&self, data: &Path) -> Vec<Value> {
        let out = self.run_on(data, &["shared", "--json"]);
        out.ok();
        out.json().as_array().expect("array").clone()
    }

    /// `ls EXTRA... --peer PEER...`, whatever its outcome.
    fn run_ls(&self, data: &Path, peers: &[&str], extra: &[&str]) -> Out {
        let mut args = vec!["ls"];
        args.extend_from_slice(extra);
        for p in peers {
            args.extend(["--peer", p]);
        }
        self.run_on(data, &args)
    }

    /// `ls --json` over `peers` (must succeed).
    fn ls(&self, data: &Path, peers: &[&Serve]) -> Vec<Value> {
        let addrs: Vec<String> = peers.iter().map(|p| p.peer()).collect();
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let out = self.run_ls(data, &addrs, &["--json"]);
        out.ok();
        out.json().as_array().expect("array").clone()
    }

    /// `get WHAT --peer PEER... [-o OUT] EXTRA...` on data dir `client`,
    /// run to completion; see [`get_args`].
    fn get(
        &self,
        client: &Path,
        what: &str,
        peers: &[&str],
        out: Option<&Path>,
        extra: &[&str],
    ) -> Out {
        self.run(&get_args(client, what, peers, out, extra))
    }

    /// Starts `serve --listen 127.0.0.1:0 EXTRA...` and waits for its
    /// `listening on` line.
    fn serve(&self, data: &Path, extra: &[&str]) -> Serve {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.path(&format!("serve-{n}.log"));
        let mut args = vec![
            "--data-dir",
            path_str(data),
            "serve",
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let mut cmd = self.cmd(&args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("serve log"));
        let mut kid = Kid::spawn(cmd);
        let stdout = kid.child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(e) => panic!(
                "serve printed no `listening on` line ({e:?}); exit: {:?}; log:\n{}",
                kid.try_status(),
                fs::read_to_string(&log).unwrap_or_default()
            ),
        };
        let addr: SocketAddr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from serve: {first:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("bad address in {first:?}: {e}"));
        assert_eq!(addr.ip().to_string(), "127.0.0.1", "{first:?}");
        assert_ne!(addr.port(), 0, "{first:?}");
        Serve {
            kid,
            addr,
            lines: rx,
            log,
        }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// `-q --data-dir DATA ARGS...`: the arguments of a quiet command on the
/// data dir `data`.
fn quiet<'a>(data: &'a Path, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["-q", "--data-dir", path_str(data)];
    v.extend_from_slice(args);
    v
}

/// `-q --data-dir CLIENT get WHAT --peer PEER... [-o OUT] EXTRA...`.
fn get_args<'a>(
    client: &'a Path,
    what: &'a str,
    peers: &[&'a str],
    out: Option<&'a Path>,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["get", what];
    for p in peers {
        args.extend(["--peer", p]);
    }
    if let Some(o) = out {
        args.extend(["-o", path_str(o)]);
    }
    args.extend_from_slice(extra);
    quiet(client, &args)
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The file ID the content must have.
fn expected_id(content: &[u8]) -> String {
    Manifest::from_bytes(content).id().to_string()
}

/// A 127.0.0.1 port that nothing listens on (bound, then closed).
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string field {key:?} in {v}"))
}

fn u64_field(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer field {key:?} in {v}"))
}

fn is_file_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Entries of `list` whose `name` is `name`.
fn by_name<'a>(list: &'a [Value], name: &str) -> Vec<&'a Value> {
    list.iter().filter(|v| v["name"] == name).collect()
}

/// The `id` of the (first) entry of `list` named `name`.
fn id_named<'a>(list: &'a [Value], name: &str) -> &'a str {
    str_field(by_name(list, name)[0], "id")
}

/// The `name` fields of `list`, sorted.
fn sorted_names(list: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = list
        .iter()
        .map(|v| str_field(v, "name").to_owned())
        .collect();
    names.sort();
    names
}

/// Rewrites the file at `path` in place with `edit` applied to its bytes:
/// same size, original mtime put back.
fn tamper(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let before = fs::metadata(path).unwrap();
    let mut bytes = fs::read(path).unwrap();
    edit(&mut bytes);
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&bytes, 0).unwrap();
    f.set_modified(before.modified().unwrap()).unwrap();
    drop(f);
    let after = fs::metadata(path).unwrap();
    assert_eq!(after.len(), before.len());
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());
}

#[track_caller]
fn assert_same_file(path: &Path, expected: &[u8]) {
    let got = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        got.len() == expected.len() && got == expected,
        "{} differs from the shared content ({} bytes vs {})",
        path.display(),
        got.len(),
        expected.len()
    );
}

fn no_leftovers(out: &Path) {
    let (part, state) = part_paths(out);
    assert!(!part.exists(), "{} left behind", part.display());
    assert!(!state.exists(), "{} left behind", state.display());
}

/// The progress a `get` into `out` keeps on record while it fetches the
/// file `id` of `size` bytes.
struct Progress {
    state: PathBuf,
    id: FileId,
    size: u64,
    chunks: u32,
}

impl Progress {
    fn of(out: &Path, id: &str, size: usize) -> Self {
        let size = size as u64;
        Self {
            state: part_paths(out).1,
            id: id.parse().expect("file ID"),
            size,
            chunks: chunk_count(size, chunk_size_for(size)) as u32,
        }
    }

    /// Chunks recorded as done (0 while nothing is on record).
    fn done(&self) -> u32 {
        load_state(&self.state, &self.id, self.size, self.chunks).map_or(0, |d| d.count())
    }

    /// Waits, 30 s at most, until `get` has recorded some progress, failing
    /// if it ends first; returns the chunks recorded as done.
    #[track_caller]
    fn wait_started(&self, get: &mut Kid) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let done = self.done();
            if done > 0 {
                return done;
            }
            if let Some(st) = get.try_status() {
                panic!(
                    "get ended ({st:?}) before any progress was recorded; is the transfer rate limited?"
                );
            }
            assert!(
                Instant::now() < deadline,
                "no progress recorded in {} within 30 s",
                self.state.display()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

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
    let mut lines: Vec<(String, String)> = out
        .stdout
        .lines()
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
    drop(slow);
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
