//! Faults the disk and the OS can throw at a real `peershare get`: a sync
//! of the part file that fails (with its pages lost), and a kill at each
//! step of finishing (the library's commit among them). Both come from
//! `tests/faults/shim.c`, an LD_PRELOAD layer this test builds with the
//! system C compiler: the binary itself is the release one, unchanged.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

/// The fault-injecting shim, built once per test run.
fn shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faults/shim.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("peershare-fault-shim.so");
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
            .arg(&out)
            .arg(&src)
            .arg("-ldl")
            .status()
            .expect("run the C compiler (cc): CI installs it");
        assert!(status.success(), "building {} failed", src.display());
        out
    })
}

/// `get` of `id` from `serve` into `out` under the shim, with `faults`
/// (environment settings of the shim).
fn faulty_get(
    sb: &Sandbox,
    client: &Path,
    id: &str,
    serve: &Serve,
    out: &Path,
    faults: &[(&str, &str)],
) -> Out {
    let peer = serve.peer();
    let mut cmd = sb.cmd(&get_args(client, id, &[&peer], Some(out), &[]));
    cmd.env("LD_PRELOAD", shim());
    for (k, v) in faults {
        cmd.env(k, v);
    }
    run(cmd)
}

/// Regression (issue 10.1a): when a checkpoint's `fdatasync` failed, the
/// failure path synced the same descriptor again (which succeeds on Linux
/// once the error was reported) and wrote the state file: the next run
/// resumed chunks whose pages were lost and exited 0 with wrong bytes.
#[test]
fn a_failed_sync_of_the_part_file_is_never_vouched_for() {
    let sb = Sandbox::new();
    let content = random_bytes(6 * MIB, 201);
    let file = sb.write("src/f.bin", &content);
    let (server, client) = (sb.data("server"), sb.data("client"));
    let id = sb.share_one(&server, &file);
    let serve = sb.serve(&server, &["--max-upload-rate", "2MB"]);
    let out = sb.path("f.bin");
    let (_, state) = peershare::partial::part_paths(&out);

    let first = faulty_get(
        &sb,
        &client,
        &id,
        &serve,
        &out,
        &[("PS_FAULT_SYNC", ".peershare-part")],
    );
    let line = first.fails_with(LOCAL);
    assert!(line.contains("the disk reported an error"), "{line}");
    assert!(!out.exists());
    assert!(
        !state.exists(),
        "no record of progress survives a failed sync"
    );

    let second = sb.get(&client, &id, &[&serve.peer()], Some(&out), &["--json"]);
    second.ok();
    assert_same_file(&out, &content);
    no_leftovers(&out);
}

/// Regression (issue 10.2): `finish` links the part file to the final name,
/// updates the library, then removes the part and state files; a kill in
/// between left a complete file with leftovers, and the next run refused
/// because the output existed. Killed before each of those steps, the next
/// run completes cleanly, fetching nothing.
#[test]
fn a_kill_at_each_step_of_finishing_is_completed_by_the_next_run() {
    // (where the shim kills, what must be on disk then: out, part, state)
    let steps = [
        ("link:out.bin:1", (false, true, true)),
        // The library's first commit creates it, its second records the
        // download; its third, sharing the finished file, is the one
        // inside finishing.
        ("commit:library.db-wal:3", (true, true, true)),
        ("unlink:out.bin.peershare-part:1", (true, true, true)),
        // The first unlink of the state file clears any stale one at start.
        ("unlink:out.bin.peershare-state:2", (true, false, true)),
    ];
    let sb = Sandbox::new();
    let content = random_bytes(3 * MIB + 17, 202);
    let file = sb.write("src/f.bin", &content);
    let server = sb.data("server");
    let id = sb.share_one(&server, &file);
    // Slow enough that a checkpoint has recorded progress before the end.
    let serve = sb.serve(&server, &["--max-upload-rate", "1500KB"]);
    for (n, (kill_at, (has_out, has_part, has_state))) in steps.into_iter().enumerate() {
        let client = sb.data(&format!("client{n}"));
        let dir = sb.dir(&format!("dl{n}"));
        let out = dir.join("out.bin");
        let (part, state) = peershare::partial::part_paths(&out);
        let killed = faulty_get(&sb, &client, &id, &serve, &out, &[("PS_KILL_AT", kill_at)]);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&killed.status),
            Some(libc::SIGKILL),
            "{kill_at}: killed by the shim\n{}",
            killed.stderr
        );
        assert_eq!(
            (out.exists(), part.exists(), state.exists()),
            (has_out, has_part, has_state),
            "{kill_at}: the kill came at the step meant"
        );

        let again = sb.get(&client, &id, &[&serve.peer()], Some(&out), &["--json"]);
        again.ok();
        let summary = again.json();
        let resumed = u64_field(&summary, "bytes_resumed");
        if has_out {
            // The complete file was in place: nothing is fetched again.
            assert_eq!(resumed, content.len() as u64, "{kill_at}: {summary}");
        } else {
            // Before the link: chunks verified since the last checkpoint
            // are fetched again, no more.
            assert!(resumed > 0, "{kill_at}: {summary}");
            let received = u64_field(&summary, "bytes_received");
            assert_eq!(
                resumed + received,
                content.len() as u64,
                "{kill_at}: {summary}"
            );
        }
        assert_same_file(&out, &content);
        no_leftovers(&out);
        let shared = sb.shared(&client);
        assert_eq!(shared.len(), 1, "{kill_at}: shared once: {shared:?}");
        assert_eq!(str_field(&shared[0], "id"), id);
    }
}

/// Regression (issue 10.12): a damaged record of progress was discarded
/// and the download started from 0 without a word.
#[test]
fn a_damaged_record_of_progress_is_reported_when_it_is_discarded() {
    let sb = Sandbox::new();
    let content = random_bytes(6 * MIB, 203);
    let file = sb.write("src/f.bin", &content);
    let (server, client) = (sb.data("server"), sb.data("client"));
    let id = sb.share_one(&server, &file);
    let serve = sb.serve(&server, &["--max-upload-rate", "2MB"]);
    let out = sb.path("f.bin");
    let peer = serve.peer();
    let mut first = sb.spawn(&get_args(&client, &id, &[&peer], Some(&out), &[]));
    let progress = Progress::of(&out, &id, content.len());
    progress.wait_started(&mut first);
    drop(first); // killed
    let mut record = std::fs::read(&progress.state).unwrap();
    record[20] ^= 0xff;
    std::fs::write(&progress.state, &record).unwrap();

    let mut args = get_args(&client, &id, &[&peer], Some(&out), &["--json"]);
    args.retain(|a| *a != "-q");
    let again = sb.run(&args);
    again.ok();
    assert!(
        again.stderr.contains("damaged") && again.stderr.contains("starting this download over"),
        "{}",
        again.stderr
    );
    assert_eq!(u64_field(&again.json(), "bytes_resumed"), 0);
    assert_same_file(&out, &content);
}
