//! The download promise: a file under its final name is complete and
//! verified, whatever the disk did between runs, whatever instant a run was
//! killed in while finishing, and whatever was planted beside the output.
//! (Failed syncs and real kills of the binary: the CLI's `tests/faults.rs`.)

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use peershare::download::Progress;
use peershare::partial::{Bitmap, load_state, part_paths, store_state};
use peershare::{DownloadError, Library, ServerConfig};
use peershare_proto::Manifest;

/// Runs a download of `content` from `node` to `out` (recorded in `lib`,
/// when given) until its state file records some chunks, then cancels it;
/// returns the chunks recorded.
async fn interrupted_run(node: &Node, content: &[u8], out: &Path, lib: Option<Library>) -> Bitmap {
    let (_, state) = part_paths(out);
    let mut req = request(id_of(content), vec![node.addr], out);
    req.config.checkpoint_interval = Duration::from_millis(50);
    req.library = lib;
    let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(peershare::download(req, Arc::default(), async {
        let _ = cancelled.await;
    }));
    wait_for("a checkpoint", 30, || state.exists()).await;
    cancel.send(()).unwrap();
    let err = run.await.unwrap().unwrap_err();
    assert!(matches!(err, DownloadError::Cancelled), "{err}");
    let m = Manifest::from_bytes(content);
    load_state(&state, &m.id(), m.size(), m.chunk_count()).expect("a state file")
}

fn slow() -> ServerConfig {
    ServerConfig {
        max_upload_rate: Some(3_000_000),
        ..ServerConfig::default()
    }
}

/// Regression (issue 10.1b): bytes of a part file changed between runs (a
/// disk fault, another program) were trusted by the next run, which saved
/// and shared them with success.
#[tokio::test]
async fn a_part_file_changed_between_runs_is_checked_again_never_trusted() {
    let content = data(6 * 1024 * 1024, 101);
    let m = Manifest::from_bytes(&content);
    let node = Node::start(&[("f", &content)], slow()).await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("f");
    let (part, state) = part_paths(&out);
    let recorded = interrupted_run(&node, &content, &out, None).await;
    assert!(
        recorded.count() >= 2,
        "{} chunks recorded",
        recorded.count()
    );
    // Another program flips one byte in each of two recorded chunks.
    let changed: Vec<u32> = recorded.iter().take(2).collect();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
        for &i in &changed {
            let at = m.chunk_range(i).unwrap().start + 1000;
            f.write_all_at(&[content[at as usize] ^ 0xff], at).unwrap();
        }
    }
    let fast = Node::start(&[("f", &content)], ServerConfig::default()).await;
    let s = fetch(request(id_of(&content), vec![fast.addr], &out))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        content,
        "never the changed bytes"
    );
    let changed_len: u64 = changed
        .iter()
        .map(|&i| m.chunk_len(i).unwrap() as u64)
        .sum();
    let recorded_len: u64 = recorded
        .iter()
        .map(|i| m.chunk_len(i).unwrap() as u64)
        .sum();
    assert_eq!(s.bytes_resumed, recorded_len - changed_len, "{s:?}");
    assert_eq!(s.bytes_received, content.len() as u64 - s.bytes_resumed);
    assert!(!part.exists() && !state.exists());
}

/// A record that claims more than the part file holds: only the chunks
/// whose bytes match count, the others are fetched.
#[tokio::test]
async fn a_record_that_claims_too_much_resumes_only_the_chunks_that_match() {
    let content = data(2 * 1024 * 1024, 102);
    let m = Manifest::from_bytes(&content);
    let node = Node::start(&[("f", &content)], ServerConfig::default()).await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("f");
    let (part, state) = part_paths(&out);
    // A part file where only chunk 0 is right, and a record that claims all.
    let mut bytes = vec![0u8; content.len()];
    let first = m.chunk_range(0).unwrap().end as usize;
    bytes[..first].copy_from_slice(&content[..first]);
    std::fs::write(&part, &bytes).unwrap();
    store_state(&state, &m.id(), m.size(), &Bitmap::full(m.chunk_count())).unwrap();
    let s = fetch(request(id_of(&content), vec![node.addr], &out))
        .await
        .unwrap();
    assert_eq!(s.bytes_resumed, first as u64);
    assert_eq!(std::fs::read(&out).unwrap(), content);
}

/// Regression (issue 10.3): the part file was opened with `O_CREAT` and no
/// `O_NOFOLLOW`, then truncated: a `NAME.peershare-part` symlink planted in
/// a shared folder got its target truncated and written.
#[tokio::test]
async fn a_planted_part_file_symlink_is_never_followed() {
    let content = data(300_000, 103);
    let node = Node::start(&[("f", &content)], ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let out = dir.path().join("f");
    let (part, _) = part_paths(&out);
    std::os::unix::fs::symlink(&victim, &part).unwrap();
    let err = fetch(request(id_of(&content), vec![node.addr], &out))
        .await
        .unwrap_err();
    assert!(matches!(err, DownloadError::NotAPlainFile { .. }), "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!out.exists());
    // A hard link to the victim is refused the same way.
    std::fs::remove_file(&part).unwrap();
    std::fs::hard_link(&victim, &part).unwrap();
    let err = fetch(request(id_of(&content), vec![node.addr], &out))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("hard links"), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

/// A planted state-file symlink is replaced, never written through.
#[tokio::test]
async fn a_planted_state_file_symlink_is_never_followed() {
    let content = data(6 * 1024 * 1024, 104);
    let node = Node::start(&[("f", &content)], slow()).await;
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let out = dir.path().join("f");
    let (_, state) = part_paths(&out);
    std::os::unix::fs::symlink(&victim, &state).unwrap();
    let mut req = request(id_of(&content), vec![node.addr], &out);
    req.config.checkpoint_interval = Duration::from_millis(50);
    fetch(req).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

/// What a kill between two steps of finishing leaves: the complete file
/// under its final name (a hard link of the part file), the part and state
/// files, and (with a library) the download's record. Made here by a run
/// that completes into `scratch`, then linked into place as `finish` does.
fn leave_interrupted_finish(content: &[u8], out: &Path, part_too: bool) {
    let m = Manifest::from_bytes(content);
    let (part, state) = part_paths(out);
    std::fs::write(&part, content).unwrap();
    store_state(&state, &m.id(), m.size(), &Bitmap::full(m.chunk_count())).unwrap();
    std::fs::hard_link(&part, out).unwrap();
    if !part_too {
        std::fs::remove_file(&part).unwrap();
    }
}

/// Regression (issue 10.2): a kill during finishing left a complete file
/// and leftovers, and the next run refused because the output existed.
#[tokio::test]
async fn a_finish_killed_after_the_link_is_completed_by_the_next_run() {
    let content = data(700_000, 105);
    let node = Node::start(&[("f", &content)], ServerConfig::default()).await;
    for part_too in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::open(dir.path().join("data")).unwrap();
        let out = dir.path().join("f");
        let (part, state) = part_paths(&out);
        leave_interrupted_finish(&content, &out, part_too);
        let mut req = request(id_of(&content), vec![node.addr], &out);
        req.library = Some(lib.clone());
        let s = fetch(req).await.unwrap();
        assert_eq!(s.bytes_received, 0, "nothing fetched again");
        assert_eq!(s.bytes_resumed, content.len() as u64);
        assert!(s.shared, "and now shared");
        assert_eq!(std::fs::read(&out).unwrap(), content);
        assert!(!part.exists() && !state.exists(), "no leftovers");
        let snap = lib.snapshot().unwrap();
        assert!(snap.downloads.is_empty());
        assert_eq!(snap.files.len(), 1);
    }
}

/// Leftovers beside a file that is *not* this download's complete file
/// change nothing: the output is someone's, and is refused as before.
#[tokio::test]
async fn leftovers_beside_another_file_leave_it_alone() {
    let content = data(700_000, 106);
    let node = Node::start(&[("f", &content)], ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f");
    let (part, state) = part_paths(&out);
    leave_interrupted_finish(&content, &out, true);
    // The user replaced the file with their own of the same size.
    std::fs::remove_file(&out).unwrap();
    let mut theirs = content.clone();
    theirs[5] ^= 1;
    std::fs::write(&out, &theirs).unwrap();
    let err = fetch(request(id_of(&content), vec![node.addr], &out))
        .await
        .unwrap_err();
    assert!(matches!(err, DownloadError::OutputExists(_)), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), theirs);
    assert!(part.exists() && state.exists(), "untouched");
}

/// A file this node downloaded and shares at that path, unchanged, is
/// complete: asking for it again there succeeds at once, without a peer.
#[tokio::test]
async fn a_finished_download_asked_again_is_complete_without_a_peer() {
    let content = data(500_000, 107);
    let mut node = Node::start(&[("f", &content)], ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let lib = Library::open(dir.path().join("data")).unwrap();
    let out = dir.path().join("f");
    let mut req = request(id_of(&content), vec![node.addr], &out);
    req.library = Some(lib.clone());
    fetch(req.clone()).await.unwrap();
    node.shutdown().await;
    let progress = Arc::new(Progress::default());
    let s = fetch_with(req.clone(), progress).await.unwrap();
    assert_eq!(
        (s.bytes_resumed, s.bytes_received),
        (content.len() as u64, 0)
    );
    // Changed since (content, not metadata): no longer vouched for.
    tamper_keeping_mtime(&out, |b| b[0] ^= 1);
    let err = fetch(req).await.unwrap_err();
    assert!(matches!(err, DownloadError::AllUnreachable(_)), "{err}");
}
