//! Whole `peershare::node::Node`s for tests: started on loopback listeners
//! without discovery, downloads ordered and waited for.

use std::path::Path;
use std::time::Duration;

use peershare::download::manager::DownloadInfo;
use peershare::download::order::Order;
use peershare::node::events::DownloadId;
use peershare::node::{Bound, Node, NodeConfig, NodeError};
use peershare::{Library, ServerConfig, ShareProgress, Tls};
use tokio::net::TcpListener;

use super::id_of;

/// A node on a fresh data dir under `dir`, listening on `at` (loopback
/// addresses), sharing `files`.
pub async fn node_at(
    dir: &Path,
    name: &str,
    files: &[(&str, &[u8])],
    config: NodeConfig,
    at: &[&str],
) -> Node {
    let lib = Library::open(dir.join(format!("data-{name}"))).unwrap();
    let mut paths = Vec::new();
    for (file, content) in files {
        let p = dir.join(file);
        std::fs::write(&p, content).unwrap();
        paths.push(p);
    }
    if !paths.is_empty() {
        lib.share(&paths, &ShareProgress::default()).unwrap();
    }
    let tls = Tls::new(&lib.identity().unwrap());
    let mut listeners = Vec::new();
    for a in at {
        listeners.push(TcpListener::bind(a).await.unwrap());
    }
    let bound = Bound {
        listeners,
        discovery: None,
    };
    Node::start(lib, tls, config, bound).await.unwrap()
}

/// A node on the data dir `data` as it is (it may hold a `downloads.json`),
/// listening on loopback; or why it does not start.
pub async fn start_on(data: &Path, config: NodeConfig) -> Result<Node, NodeError> {
    let lib = Library::open(data).unwrap();
    let tls = Tls::new(&lib.identity().unwrap());
    let bound = Bound {
        listeners: vec![TcpListener::bind("127.0.0.1:0").await.unwrap()],
        discovery: None,
    };
    Node::start(lib, tls, config, bound).await
}

pub async fn node(dir: &Path, name: &str, files: &[(&str, &[u8])], config: NodeConfig) -> Node {
    node_at(dir, name, files, config, &["127.0.0.1:0"]).await
}

pub fn paced(rate: u64) -> NodeConfig {
    NodeConfig {
        server: ServerConfig {
            max_upload_rate: Some(rate),
            ..ServerConfig::default()
        },
        ..NodeConfig::default()
    }
}

pub fn order(content: &[u8], from: &[&Node], out: &Path) -> Order {
    let mut o = Order::new(id_of(content).to_string());
    o.peers = from.iter().map(|n| n.listening()[0]).collect();
    o.output = Some(out.to_path_buf());
    o
}

/// Waits (30 s at most) until download `id` of `node` satisfies `cond`.
pub async fn until(
    node: &Node,
    id: DownloadId,
    what: &str,
    cond: impl Fn(&DownloadInfo) -> bool,
) -> DownloadInfo {
    let mut events = node.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info = node.download_info(id).expect("a known download");
        if cond(&info) {
            return info;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {info:?}"
        );
        // Any event may change it; the timeout bounds a missed one.
        let _ = tokio::time::timeout(Duration::from_millis(200), events.recv()).await;
    }
}

pub async fn finished(node: &Node, id: DownloadId) -> DownloadInfo {
    until(node, id, "the download to finish", |d| d.state.is_over()).await
}
