//! Helpers shared by the CLI test binaries: real `peershare` processes,
//! real sockets on 127.0.0.1 only, one temporary directory per test.

#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use peershare::partial::{load_state, part_paths};
use peershare_proto::FileId;
use peershare_proto::manifest::{Manifest, chunk_count, chunk_size_for};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_peershare");

pub const USAGE: i32 = 2;
pub const UNREACHABLE: i32 = 3;
pub const NOT_FOUND: i32 = 4;
pub const CORRUPT: i32 = 5;
pub const LOCAL: i32 = 6;

/// Longest any single command may take before the test fails.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

pub const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------- helpers

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct Kid {
    pub child: Child,
}

impl Kid {
    pub fn spawn(mut cmd: Command) -> Self {
        let child = cmd.spawn().expect("spawn peershare");
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit, failing the test after `limit`.
    pub fn wait_deadline(&mut self, limit: Duration) -> ExitStatus {
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

    pub fn try_status(&mut self) -> Option<ExitStatus> {
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
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    #[track_caller]
    pub fn ok(&self) -> &Self {
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
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    /// Asserts the exit code and that stderr holds exactly one error line
    /// (`peershare: warning...` lines aside); returns that line.
    #[track_caller]
    pub fn fails_with(&self, code: i32) -> String {
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
    pub fn fails(&self) -> String {
        assert!(
            !self.status.success() && self.code().is_some(),
            "expected a failure exit, got {:?}\nstdout:\n{}",
            self.status,
            self.stdout
        );
        self.one_error_line()
    }

    #[track_caller]
    pub fn one_error_line(&self) -> String {
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
pub fn run(mut cmd: Command) -> Out {
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
pub fn signal(pid: u32, sig: &str) {
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
pub struct Serve {
    pub kid: Kid,
    pub addr: SocketAddr,
    /// Its local API's URL (`api on URL`), unless `--no-api`.
    pub api: Option<String>,
    /// Further stdout lines, until the process exits.
    pub lines: Receiver<String>,
    pub log: PathBuf,
}

impl Serve {
    pub fn peer(&self) -> String {
        self.addr.to_string()
    }

    /// Sends `sig`, waits for the exit (deadline) and returns its status and
    /// every stdout line printed after `listening on`.
    pub fn stop(mut self, sig: &str) -> (ExitStatus, Vec<String>) {
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

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One test's world: a temporary directory holding files, data dirs and a
/// private `$HOME`, so nothing outside it is ever touched.
pub struct Sandbox {
    pub tmp: tempfile::TempDir,
    /// This sandbox's own discovery port: tests running at once never see
    /// each other's nodes.
    pub discovery_port: u16,
}

impl Sandbox {
    pub fn new() -> Self {
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

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn home(&self) -> PathBuf {
        self.path("home")
    }

    /// A data dir (not created: peershare creates it).
    pub fn data(&self, name: &str) -> PathBuf {
        self.path(&format!("data-{name}"))
    }

    pub fn dir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(&p).expect("create dir");
        p
    }

    pub fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("create parent");
        }
        fs::write(&p, bytes).expect("write file");
        p
    }

    /// `peershare ARGS...` with a clean environment, run in the sandbox.
    pub fn cmd<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
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

    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Out {
        run(self.cmd(args))
    }

    /// `peershare -q --data-dir DATA ARGS...`, run to completion.
    pub fn run_on(&self, data: &Path, args: &[&str]) -> Out {
        self.run(&quiet(data, args))
    }

    /// `peershare ARGS...` started in the background with no stdin and its
    /// output discarded.
    pub fn spawn(&self, args: &[&str]) -> Kid {
        let mut c = self.cmd(args);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Kid::spawn(c)
    }

    /// `share --json` (with `--addr` when given); returns the entries.
    /// The files (`"kind": "file"`) of `share --json PATHS`.
    pub fn share(&self, data: &Path, paths: &[&Path], addr: Option<SocketAddr>) -> Vec<Value> {
        of_kind(self.share_all(data, paths, addr), "file")
    }

    /// The folders (`"kind": "folder"`) of `share --json PATHS`.
    pub fn share_folders(&self, data: &Path, paths: &[&Path]) -> Vec<Value> {
        of_kind(self.share_all(data, paths, None), "folder")
    }

    /// Everything `share --json PATHS` printed: files, then folders.
    pub fn share_all(&self, data: &Path, paths: &[&Path], addr: Option<SocketAddr>) -> Vec<Value> {
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
    pub fn share_one(&self, data: &Path, path: &Path) -> String {
        str_field(&self.share(data, &[path], None)[0], "id").to_owned()
    }

    /// The files of `shared --json`.
    pub fn shared(&self, data: &Path) -> Vec<Value> {
        of_kind(self.shared_all(data), "file")
    }

    /// Everything `shared --json` printed: files, then folders.
    pub fn shared_all(&self, data: &Path) -> Vec<Value> {
        let out = self.run_on(data, &["shared", "--json"]);
        out.ok();
        out.json().as_array().expect("array").clone()
    }

    /// `ls EXTRA... --peer PEER...`, whatever its outcome.
    pub fn run_ls(&self, data: &Path, peers: &[&str], extra: &[&str]) -> Out {
        let mut args = vec!["ls"];
        args.extend_from_slice(extra);
        for p in peers {
            args.extend(["--peer", p]);
        }
        self.run_on(data, &args)
    }

    /// `ls --json` over `peers` (must succeed).
    pub fn ls(&self, data: &Path, peers: &[&Serve]) -> Vec<Value> {
        let addrs: Vec<String> = peers.iter().map(|p| p.peer()).collect();
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let out = self.run_ls(data, &addrs, &["--json"]);
        out.ok();
        out.json().as_array().expect("array").clone()
    }

    /// `get WHAT --peer PEER... [-o OUT] EXTRA...` on data dir `client`,
    /// run to completion; see [`get_args`].
    pub fn get(
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
    pub fn serve(&self, data: &Path, extra: &[&str]) -> Serve {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.path(&format!("serve-{n}.log"));
        // The API on a port of its own too: tests run at once.
        let mut args = vec![
            "--data-dir",
            path_str(data),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
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
        // Then the API's line, unless it has none.
        let api = if extra.contains(&"--no-api") {
            None
        } else {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("serve printed no `api on` line ({e:?})"));
            let url = line
                .strip_prefix("api on ")
                .unwrap_or_else(|| panic!("unexpected second line from serve: {line:?}"));
            Some(url.to_owned())
        };
        Serve {
            kid,
            addr,
            api,
            lines: rx,
            log,
        }
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// `-q --data-dir DATA ARGS...`: the arguments of a quiet command on the
/// data dir `data`.
pub fn quiet<'a>(data: &'a Path, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["-q", "--data-dir", path_str(data)];
    v.extend_from_slice(args);
    v
}

/// `-q --data-dir CLIENT get WHAT --peer PEER... [-o OUT] EXTRA...`.
pub fn get_args<'a>(
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
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
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
pub fn expected_id(content: &[u8]) -> String {
    Manifest::from_bytes(content).id().to_string()
}

/// A 127.0.0.1 port that nothing listens on (bound, then closed).
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

pub fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string field {key:?} in {v}"))
}

pub fn u64_field(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer field {key:?} in {v}"))
}

pub fn is_file_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Entries of `list` whose `name` is `name`.
pub fn by_name<'a>(list: &'a [Value], name: &str) -> Vec<&'a Value> {
    list.iter().filter(|v| v["name"] == name).collect()
}

/// The `id` of the (first) entry of `list` named `name`.
pub fn id_named<'a>(list: &'a [Value], name: &str) -> &'a str {
    str_field(by_name(list, name)[0], "id")
}

/// The `name` fields of `list`, sorted.
pub fn sorted_names(list: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = list
        .iter()
        .map(|v| str_field(v, "name").to_owned())
        .collect();
    names.sort();
    names
}

/// Rewrites the file at `path` in place with `edit` applied to its bytes:
/// same size, original mtime put back.
pub fn tamper(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
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
pub fn assert_same_file(path: &Path, expected: &[u8]) {
    let got = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        got.len() == expected.len() && got == expected,
        "{} differs from the shared content ({} bytes vs {})",
        path.display(),
        got.len(),
        expected.len()
    );
}

pub fn no_leftovers(out: &Path) {
    let (part, state) = part_paths(out);
    assert!(!part.exists(), "{} left behind", part.display());
    assert!(!state.exists(), "{} left behind", state.display());
}

/// The progress a `get` into `out` keeps on record while it fetches the
/// file `id` of `size` bytes.
pub struct Progress {
    pub state: PathBuf,
    pub id: FileId,
    pub size: u64,
    pub chunks: u32,
}

impl Progress {
    pub fn of(out: &Path, id: &str, size: usize) -> Self {
        let size = size as u64;
        Self {
            state: part_paths(out).1,
            id: id.parse().expect("file ID"),
            size,
            chunks: chunk_count(size, chunk_size_for(size)) as u32,
        }
    }

    /// Chunks recorded as done (0 while nothing is on record).
    pub fn done(&self) -> u32 {
        load_state(&self.state, &self.id, self.size, self.chunks).map_or(0, |d| d.count())
    }

    /// Waits, 30 s at most, until `get` has recorded some progress, failing
    /// if it ends first; returns the chunks recorded as done.
    #[track_caller]
    pub fn wait_started(&self, get: &mut Kid) -> u32 {
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

/// A peer that proves its own node ID in TLS like any, and answers each
/// frame a client sends with what `answer` makes of it (its own `Hello`
/// first unless `answer` says otherwise; nothing for `None`). It stands for
/// a peer no honest node is, and serves on its own thread until the test
/// ends.
pub fn fake_peer(
    answer: impl Fn(
        peershare_proto::wire::Message,
        peershare_proto::NodeId,
    ) -> Option<peershare_proto::wire::Message>
    + Send
    + Sync
    + 'static,
) -> SocketAddr {
    use peershare::conn::{FrameReader, FrameWriter};
    use peershare_proto::wire::MAX_REQUEST_FRAME_LEN;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let answer = std::sync::Arc::new(answer);
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let tls = peershare::Tls::ephemeral();
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((tcp, _)) = listener.accept().await {
                let (tls, answer) = (tls.clone(), answer.clone());
                tokio::spawn(async move {
                    let Ok(secured) = tls.accept(tcp).await else {
                        return;
                    };
                    let mut reader = FrameReader::new(secured.reader, MAX_REQUEST_FRAME_LEN);
                    let mut writer = FrameWriter::new(secured.writer);
                    while let Ok(Some(m)) = reader.read().await {
                        if let Some(a) = answer(m, tls.node_id())
                            && writer.send(&a).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
    });
    addr
}

/// The `Hello` a fake peer with node ID `node` answers with.
pub fn hello_of(node: peershare_proto::NodeId) -> peershare_proto::wire::Message {
    use peershare_proto::wire::{Hello, Message, PROTOCOL_VERSION, capability};
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        node_id: node,
        listen_port: 0,
        capabilities: capability::ALL,
    })
}

/// A peer that lists `entries` in its catalog, paged as the reference
/// server pages them (as many as fit `CATALOG_PAGE_BUDGET` per page), and
/// answers nothing else: a catalog no honest node would send (too long,
/// names no node lists).
pub fn catalog_peer(entries: Vec<peershare_proto::wire::CatalogEntry>) -> SocketAddr {
    use peershare_proto::wire::{CATALOG_PAGE_BUDGET, Message, catalog_entry_len};
    fake_peer(move |m, node| match m {
        Message::Hello(_) => Some(hello_of(node)),
        Message::GetCatalog { req_id, cursor } => {
            let mut page = Vec::new();
            let mut used = 0;
            let mut i = cursor as usize;
            while let Some(e) = entries.get(i) {
                let len = catalog_entry_len(e);
                if !page.is_empty() && used + len > CATALOG_PAGE_BUDGET {
                    break;
                }
                used += len;
                page.push(e.clone());
                i += 1;
            }
            Some(Message::Catalog {
                req_id,
                revision: 1,
                next: (i < entries.len()).then_some(i as u32),
                entries: page,
            })
        }
        _ => None,
    })
}

/// `n` catalog entries of distinct made-up content, named `prefix` and a
/// number.
pub fn made_up_entries(
    n: std::ops::Range<usize>,
    prefix: &str,
) -> Vec<peershare_proto::wire::CatalogEntry> {
    n.map(|i| peershare_proto::wire::CatalogEntry {
        id: FileId(peershare_proto::id::sha256(&i.to_be_bytes())),
        size: i as u64,
        flags: 0,
        name: format!("{prefix}{i:06}"),
    })
    .collect()
}

/// The elements of `items` of kind `kind`; every element must have a kind.
pub fn of_kind(items: Vec<Value>, kind: &str) -> Vec<Value> {
    for i in &items {
        let k = i["kind"].as_str();
        assert!(
            matches!(k, Some("file" | "folder")),
            "an element without a kind: {i}"
        );
    }
    items.into_iter().filter(|i| i["kind"] == kind).collect()
}
