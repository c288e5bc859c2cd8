//! Tests that need root: run by `.ci/run` with `--features root-tests`.
#![cfg(feature = "root-tests")]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_peershare");

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "peershare-test",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mounting a tmpfs needs root: run as root (CI does)"
        );
        Self { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A `serve` process sharing one file; killed on drop.
struct Seeder {
    work: tempfile::TempDir,
    id: String,
    addr: String,
    child: Child,
}

impl Seeder {
    fn new(content: &[u8]) -> Self {
        Self::serving(content, &[])
    }

    /// A seeder whose `serve` takes `extra` options too.
    fn serving(content: &[u8], extra: &[&str]) -> Self {
        let work = tempfile::tempdir().unwrap();
        let data = work.path().join("srv");
        let file = work.path().join("f.bin");
        std::fs::write(&file, content).unwrap();
        let shared = Command::new(BIN)
            .arg("--data-dir")
            .arg(&data)
            .args(["-q", "share", "--json"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(shared.status.success());
        let v: serde_json::Value = serde_json::from_slice(&shared.stdout).unwrap();
        let id = v[0]["id"].as_str().unwrap().to_owned();
        let mut child = Command::new(BIN)
            .arg("--data-dir")
            .arg(&data)
            .args(["serve", "--no-discovery", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .to_owned();
        Self {
            work,
            id,
            addr,
            child,
        }
    }

    /// Runs `get` of the shared file from this seeder into `out`.
    fn get_into(&self, out: &Path) -> Output {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(self.work.path().join("cli"))
            .args([
                "-q",
                "get",
                &self.id,
                "--no-discovery",
                "--peer",
                &self.addr,
                "-o",
            ])
            .arg(out)
            .output()
            .unwrap()
    }
}

impl Drop for Seeder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn no_space_left_fails_at_once_with_a_clear_error_and_leaves_nothing() {
    let seeder = Seeder::new(&vec![42u8; 4 * 1024 * 1024]);
    let disk = SmallDisk::new("1m");
    let got = seeder.get_into(&disk.dir.path().join("big.bin"));
    let stderr = String::from_utf8_lossy(&got.stderr);
    assert_eq!(got.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("not enough disk space"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let left: Vec<_> = std::fs::read_dir(disk.dir.path()).unwrap().collect();
    assert!(left.is_empty(), "nothing left on the full disk: {left:?}");
}

/// Regression (issue 10.12): a disk that filled mid-transfer failed with
/// "cannot write PATH: PATH: No space left on device" (the path twice),
/// not the clear message; the verified chunks must be kept for a resume.
#[test]
fn a_disk_that_fills_mid_transfer_says_so_and_keeps_the_progress() {
    let content: Vec<u8> = (0..4_000_000u32).map(|i| (i % 241) as u8).collect();
    let seeder = Seeder::serving(&content, &["--max-upload-rate", "1MB"]);
    let disk = SmallDisk::new("8m");
    let out = disk.dir.path().join("f.bin");
    let state = disk.dir.path().join("f.bin.peershare-state");
    let get = Command::new(BIN)
        .arg("--data-dir")
        .arg(seeder.work.path().join("cli"))
        .args([
            "-q",
            "get",
            &seeder.id,
            "--no-discovery",
            "--peer",
            &seeder.addr,
            "-o",
        ])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once progress is on record, another program fills the disk.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !state.exists() {
        assert!(std::time::Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let filler = disk.dir.path().join("filler");
    let fill = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!fill.success(), "dd stops at a full disk");
    let got = get.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&got.stderr);
    assert_eq!(got.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("the disk is full"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(
        stderr.matches("f.bin").count(),
        1,
        "the path once: {stderr}"
    );
    assert!(state.exists(), "the progress on record is kept");
    // Space again: the same command resumes and finishes.
    std::fs::remove_file(&filler).unwrap();
    let again = seeder.get_into(&out);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), content);
}

#[test]
fn download_onto_a_filesystem_without_direct_io_works() {
    // tmpfs refuses O_DIRECT: every chunk takes the buffered path.
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let seeder = Seeder::new(&content);
    let disk = SmallDisk::new("16m");
    let out = disk.dir.path().join("f.bin");
    let got = seeder.get_into(&out);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), content);
}

/// Deterministic bytes that no protocol field could produce by chance.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `tcpdump` writing every packet on loopback to or from `port` into
/// `file`; ready once it says it is listening.
fn capture(port: &str, file: &Path) -> Child {
    let mut child = Command::new("tcpdump")
        // A large kernel buffer (64 MiB): a fast transfer must not drop packets.
        .args(["-i", "lo", "-U", "-s", "0", "-B", "65536", "-w"])
        .arg(file)
        .args(["tcp", "port", port])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump is installed (.ci/run installs it)");
    let mut line = String::new();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut err, &mut line).unwrap();
        assert!(n > 0, "tcpdump ended before listening");
        if line.contains("listening on") {
            break;
        }
    }
    // Keep draining its stderr so it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    child
}

#[test]
fn packets_captured_on_loopback_hold_no_plaintext() {
    let content = noise(2 * 1024 * 1024, 11);
    let seeder = Seeder::new(&content);
    let port = seeder.addr.rsplit(':').next().unwrap().to_owned();
    let work = tempfile::tempdir().unwrap();
    let pcap = work.path().join("lo.pcap");
    let mut dump = capture(&port, &pcap);
    let out = work.path().join("got.bin");
    let got = seeder.get_into(&out);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), content);
    // tcpdump writes packets as it reads them (-U), a little behind the
    // transfer: wait for the whole of it to be on disk (more bytes than
    // the file, which crossed the wire once).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::metadata(&pcap).map_or(0, |m| m.len()) <= content.len() as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the capture holds only {} bytes",
            std::fs::metadata(&pcap).map_or(0, |m| m.len())
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SIGINT makes tcpdump flush and exit.
    let st = Command::new("kill")
        .args(["-INT", &dump.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(dump.wait().unwrap().success());
    let wire = std::fs::read(&pcap).unwrap();
    // The whole transfer was captured...
    assert!(
        wire.len() > content.len(),
        "captured only {} bytes",
        wire.len()
    );
    // ...and no 16-byte block of the file is in it, at any offset.
    let blocks: std::collections::HashSet<&[u8]> = content.chunks_exact(16).collect();
    let leaked = wire.windows(16).filter(|w| blocks.contains(w)).count();
    assert_eq!(leaked, 0, "file bytes in the clear on loopback");
    // (The same search over the file itself finds every block.)
    assert!(content.windows(16).filter(|w| blocks.contains(w)).count() >= blocks.len());
}
