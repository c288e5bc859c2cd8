//! Tests that need root: run by `.ci/run` with `--features root-tests`.
#![cfg(feature = "root-tests")]

use std::process::Command;

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

#[test]
fn no_space_left_fails_at_once_with_a_clear_error_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("srv");
    let file = work.path().join("big.bin");
    std::fs::write(&file, vec![42u8; 4 * 1024 * 1024]).unwrap();
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

    let mut serve = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(serve.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();

    let disk = SmallDisk::new("1m");
    let out = disk.dir.path().join("big.bin");
    let got = Command::new(BIN)
        .arg("--data-dir")
        .arg(work.path().join("cli"))
        .args(["-q", "get", &id, "--peer", &addr, "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let _ = serve.kill();
    let _ = serve.wait();
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
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("srv");
    let file = work.path().join("f.bin");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &content).unwrap();
    let shared = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["-q", "share", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&shared.stdout).unwrap();
    let id = v[0]["id"].as_str().unwrap().to_owned();
    let mut serve = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(serve.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let disk = SmallDisk::new("16m");
    let out = disk.dir.path().join("f.bin");
    let got = Command::new(BIN)
        .arg("--data-dir")
        .arg(work.path().join("cli"))
        .args(["-q", "get", &id, "--peer", &addr, "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), content);
}
