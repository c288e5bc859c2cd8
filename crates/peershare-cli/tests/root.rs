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
