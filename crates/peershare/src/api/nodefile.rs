//! `<data-dir>/node.json`: where the node running on a data dir serves its
//! API, so a command on the same data dir finds it and talks to it instead
//! of starting a node of its own. The node's process writes it once its
//! API listens and removes it when it stops; a file whose process is gone
//! (a node that was killed) reads as no node.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::node::lan::unix_now;
use crate::node::{Node, process_alive};
use crate::store::write_atomic;

/// The file's name in the data dir.
pub const NODE_FILE: &str = "node.json";

/// A running node, as its data dir tells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFile {
    /// The node's process.
    pub pid: u32,
    /// Its node ID (hex).
    pub node_id: String,
    /// The API's base URL, `http://127.0.0.1:PORT/`.
    pub api: String,
    /// Where peers connect.
    pub listening: Vec<SocketAddr>,
    /// When it started, seconds since the Unix epoch.
    pub started_unix: u64,
}

impl NodeFile {
    /// This process's `node`, its API at `api`, started now.
    pub fn new(node: &Node, api: SocketAddr) -> Self {
        Self {
            pid: std::process::id(),
            node_id: node.tls().node_id().to_string(),
            api: format!("http://{api}/"),
            listening: node.listening().to_vec(),
            started_unix: unix_now(),
        }
    }

    /// Writes it to `data_dir` (atomically: a reader sees the old file or
    /// the new one).
    pub fn write(&self, data_dir: &Path) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(self).expect("serializable");
        write_atomic(&data_dir.join(NODE_FILE), &json)
    }

    /// The node running on `data_dir`: `None` if there is no file, it does
    /// not parse, or its process is gone.
    pub fn read(data_dir: &Path) -> Option<Self> {
        Self::read_any(data_dir).filter(|f| process_alive(f.pid))
    }

    /// Removes the file if this process wrote it (another node may have
    /// started on the data dir since); whether it did.
    pub fn remove(data_dir: &Path) -> Result<bool, StoreError> {
        if Self::read_any(data_dir).is_none_or(|f| f.pid != std::process::id()) {
            return Ok(false);
        }
        let path = data_dir.join(NODE_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    fn read_any(data_dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(data_dir.join(NODE_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}
