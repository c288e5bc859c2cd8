//! What a running node does for its faces beyond downloads: its status,
//! and the library and peer operations of [`crate::ops`] with the node's
//! own parts (its tickets carry the addresses where it really listens; its
//! LAN view answers `peers`; its connections serve `ls`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use peershare_proto::NodeId;
use serde::{Deserialize, Serialize};

use super::lan::Found;
use super::{Node, Totals};
use crate::download::manager::{DownloadInfo, State};
use crate::error::StoreError;
use crate::ops::{self, Listing, NoneAnswered, SharedItem, Unshared};
use crate::server::UploadInfo;
use crate::store::ShareProgress;

/// A node's state, as `peershare status` and the API show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub version: String,
    pub data_dir: PathBuf,
    /// Where peers connect.
    pub listening: Vec<SocketAddr>,
    /// The addresses its tickets carry (where it is reachable).
    pub reachable: Vec<SocketAddr>,
    /// Where it announces itself on the LAN (broadcast and multicast
    /// targets), none without discovery.
    pub announced_to: Vec<SocketAddr>,
    /// The local API, when it serves one.
    pub api: Option<String>,
    /// Peers heard on the LAN.
    pub peers: Vec<Found>,
    /// Nodes it has a connection to now.
    pub connected: Vec<String>,
    /// Downloads not over (running, waiting, paused).
    pub downloads: Vec<DownloadInfo>,
    pub uploads: Vec<UploadInfo>,
    pub library: LibraryCounts,
    pub totals: Totals,
}

/// How much the library holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryCounts {
    pub files: usize,
    pub bytes: u64,
    /// Downloads in progress recorded in it (this node's or another
    /// process's on the same data dir).
    pub downloads: usize,
}

impl Node {
    /// Where this node is reachable, for tickets.
    pub fn ticket_addrs(&self) -> Vec<SocketAddr> {
        let addrs = ops::listening_addrs(self.listening());
        if addrs.is_empty() {
            // Not listening: tickets name no address (the ID still works
            // with --peer or on the LAN).
            return Vec::new();
        }
        addrs
    }

    /// The node's status (blocking: it reads the library).
    pub fn status(&self) -> Result<NodeStatus, StoreError> {
        let snap = self.library().snapshot()?;
        let downloads = self.downloads();
        let finished = downloads
            .iter()
            .filter(|d| d.state == State::Finished)
            .count() as u64;
        let downloaded: u64 = downloads.iter().map(|d| d.received).sum();
        Ok(NodeStatus {
            node_id: self.tls().node_id().to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            data_dir: self.library().dir().to_path_buf(),
            listening: self.listening().to_vec(),
            reachable: self.ticket_addrs(),
            announced_to: self
                .lan()
                .filter(|l| l.handle.is_some())
                .map(|l| crate::discovery::lan_targets(&l.config))
                .unwrap_or_default(),
            api: self.api().map(|a| format!("http://{a}/")),
            peers: self.lan().map(|l| l.heard()).unwrap_or_default(),
            connected: self
                .pool()
                .connections()
                .iter()
                .map(|c| c.remote().node_id.to_string())
                .collect(),
            downloads: downloads
                .into_iter()
                .filter(|d| !d.state.is_over())
                .collect(),
            uploads: self.uploads(),
            library: LibraryCounts {
                files: snap.files.len(),
                bytes: snap.files.values().map(|e| e.size).sum(),
                downloads: snap.downloads.len(),
            },
            totals: Totals {
                uptime_secs: self.uptime().as_secs_f64(),
                uploaded_bytes: self.uploaded(),
                downloaded_bytes: downloaded,
                downloads_finished: finished,
            },
        })
    }

    /// Shares `paths` (blocking: it hashes), listed or not; the files,
    /// with tickets.
    pub fn share(
        &self,
        paths: &[PathBuf],
        unlisted: bool,
        progress: &ShareProgress,
    ) -> Result<Vec<SharedItem>, StoreError> {
        let outcome = ops::share(self.library(), paths, unlisted, progress)?;
        Ok(outcome.describe(self.tls().node_id(), &self.ticket_addrs()))
    }

    /// Removes entries, withdraws downloads in progress (blocking).
    pub fn unshare(&self, targets: &[String]) -> Result<Vec<Unshared>, StoreError> {
        ops::unshare(self.library(), targets)
    }

    /// What this node shares, with tickets (blocking).
    pub fn shared(&self) -> Result<Vec<SharedItem>, StoreError> {
        ops::shared(self.library(), self.tls().node_id(), &self.ticket_addrs())
    }

    /// The peers heard on the LAN, asked afresh, and those the discovery
    /// service knows; none without discovery.
    pub async fn peers(&self) -> std::io::Result<Vec<Found>> {
        match self.lan() {
            Some(lan) => lan.look_found().await,
            None => Ok(Vec::new()),
        }
    }

    /// The catalogs of `peers` (none given: those found on the LAN), with
    /// the node's connections.
    pub async fn catalog(
        &self,
        peers: Vec<SocketAddr>,
        search: &[String],
    ) -> Result<Listing, NoneAnswered> {
        let mut announced: HashMap<SocketAddr, Vec<NodeId>> = HashMap::new();
        let mut peers = peers;
        if peers.is_empty() {
            let found = self.peers().await.unwrap_or_default();
            for f in found {
                if let Ok(node) = f.node_id.parse() {
                    announced.entry(f.addr).or_default().push(node);
                }
                peers.push(f.addr);
            }
        }
        ops::catalogs(self.tls(), Some(self.pool()), peers, &announced, search).await
    }
}
