//! What happens in a node, as typed events: downloads (queued, started,
//! progress, finished, failed, paused, cancelled), uploads (a peer started
//! or ended taking a file from this node), peers found and lost on the LAN,
//! and library changes. One broadcast bus; every face of the node (the
//! CLI's `serve` lines, the API's event stream, tests) subscribes to it.
//!
//! The bus is bounded (`EVENT_BUFFER`): a subscriber that falls that far
//! behind misses events (its receiver says how many) rather than holding
//! memory; progress is also always readable as state (`Node::downloads`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::download::DownloadSummary;

/// Events kept for a slow subscriber before it starts missing them.
pub const EVENT_BUFFER: usize = 1024;

/// A download's identity in a node: a number, unique in its data dir.
pub type DownloadId = u64;

/// A peer as an event names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRef {
    /// Its node ID (hex): proven by TLS for uploads, announced for peers
    /// found on the LAN.
    pub node_id: String,
    pub addr: SocketAddr,
}

/// Why a download failed, as a kind a program can act on, and the message
/// for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// One of `usage`, `unreachable`, `not_found`, `corrupt`, `local`,
    /// `refused`, `failed`, `cancelled` (see [`crate::DownloadError::kind`]).
    pub kind: String,
    pub message: String,
}

/// Something that happened in the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A download was added; it runs when a place is free.
    DownloadQueued {
        id: DownloadId,
        file_id: String,
        name: Option<String>,
    },
    DownloadStarted {
        id: DownloadId,
    },
    /// About twice a second while a download runs.
    DownloadProgress {
        id: DownloadId,
        /// File size (0 until the manifest is known).
        size: u64,
        /// Bytes verified so far, resumed ones included.
        verified: u64,
        /// Bytes received in this run.
        received: u64,
        /// Bytes per second received over the last period.
        rate: u64,
        /// Peers taking part.
        peers: u64,
    },
    DownloadFinished {
        id: DownloadId,
        summary: DownloadSummary,
    },
    DownloadFailed {
        id: DownloadId,
        error: Failure,
    },
    DownloadPaused {
        id: DownloadId,
    },
    DownloadCancelled {
        id: DownloadId,
    },
    /// A peer took the first chunk of a file from this node on a
    /// connection.
    UploadStarted {
        peer: PeerRef,
        file_id: String,
        name: String,
    },
    /// A peer stopped taking a file from this node (its connection ended):
    /// what it took. `complete`: it took every chunk from this node.
    UploadFinished {
        peer: PeerRef,
        file_id: String,
        name: String,
        bytes: u64,
        chunks: u32,
        of_chunks: u32,
        seconds: f64,
        complete: bool,
    },
    PeerFound {
        peer: PeerRef,
    },
    PeerLost {
        peer: PeerRef,
    },
    /// What this node shares changed.
    LibraryChanged {
        revision: u64,
    },
}

/// The node's event bus; cheap to clone.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(EVENT_BUFFER).0,
        }
    }
}

impl Events {
    /// Publishes `event` to whoever listens now (nobody: it is dropped).
    pub fn emit(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
