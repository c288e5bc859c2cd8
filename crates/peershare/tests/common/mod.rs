//! Whole nodes in one process on 127.0.0.1:0.

#![allow(dead_code)]

pub mod api;
mod nodes;
pub use nodes::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use peershare::download::{DownloadConfig, DownloadRequest, Output, Progress};
use peershare::{
    DownloadError, DownloadSummary, Library, Server, ServerConfig, ServerStats, ShareProgress, Tls,
};
use peershare_proto::FileId;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
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

pub struct Node {
    pub dir: tempfile::TempDir,
    pub lib: Library,
    /// Its TLS endpoint, with the key in its data dir.
    pub tls: Tls,
    pub addr: SocketAddr,
    pub stats: Arc<ServerStats>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// A serving node whose library holds `files` (name, content).
    pub async fn start(files: &[(&str, &[u8])], config: ServerConfig) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::open(dir.path().join("data")).unwrap();
        let mut paths = Vec::new();
        for (name, content) in files {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            paths.push(p);
        }
        if !paths.is_empty() {
            lib.share(&paths, &ShareProgress::default()).unwrap();
        }
        Self::serve(dir, lib, config).await
    }

    pub async fn serve(dir: tempfile::TempDir, lib: Library, config: ServerConfig) -> Node {
        Self::serve_at(dir, lib, config, "127.0.0.1:0".parse().unwrap()).await
    }

    /// [`Node::serve`] on a given address (e.g. where a stopped node was).
    pub async fn serve_at(
        dir: tempfile::TempDir,
        lib: Library,
        config: ServerConfig,
        at: SocketAddr,
    ) -> Node {
        let listener = TcpListener::bind(at).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = Tls::new(&lib.identity().unwrap());
        let server = Server::new(lib.clone(), tls.clone(), addr.port(), config);
        let stats = server.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Node {
            dir,
            lib,
            tls,
            addr,
            stats,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Stops the server and waits until its run() has returned.
    pub async fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("server shuts down promptly")
                .unwrap();
        }
    }
}

pub fn id_of(content: &[u8]) -> FileId {
    peershare_proto::Manifest::from_bytes(content).id()
}

pub fn request(id: FileId, peers: Vec<SocketAddr>, out: &Path) -> DownloadRequest {
    DownloadRequest {
        id,
        name: None,
        peers,
        output: Output::File(out.to_path_buf()),
        force: false,
        tls: Tls::ephemeral(),
        expect: Default::default(),
        announced: Vec::new(),
        config: DownloadConfig::default(),
        more_peers: None,
        library: None,
        share: true,
        unlisted: false,
        pool: None,
        live: None,
    }
}

pub async fn fetch(req: DownloadRequest) -> Result<DownloadSummary, DownloadError> {
    fetch_with(req, Arc::default()).await
}

pub async fn fetch_with(
    req: DownloadRequest,
    progress: Arc<Progress>,
) -> Result<DownloadSummary, DownloadError> {
    tokio::time::timeout(
        Duration::from_secs(60),
        peershare::download(req, progress, std::future::pending()),
    )
    .await
    .expect("download finishes within 60 s")
}

/// Polls `cond` every few milliseconds until it holds; fails after `secs`.
pub async fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Changes a shared file in place, then restores its size and mtime, so
/// that nothing but the content tells it changed.
pub fn tamper_keeping_mtime(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let before = std::fs::metadata(path).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    change(&mut bytes);
    std::fs::write(path, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().len(), before.len());
}
