//! What this node is sending: per connection and file, the bytes and
//! chunks a peer took, so the sharer sees its uploads (`serve` prints a
//! line when one ends; `status` lists those in progress with their rates),
//! and the events [`Event::UploadStarted`] and [`Event::UploadFinished`].
//!
//! An upload starts with the first chunk of a file sent on a connection
//! and ends with the connection (a downloader closes its connections when
//! its download ends or is abandoned). Bounded: at most
//! `MAX_UPLOADS_PER_CONNECTION` files per connection are tracked, and
//! connections are bounded by the server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use peershare_proto::FileId;
use serde::Serialize;

use crate::node::events::{Event, Events, PeerRef};

/// Files tracked per connection, at most (more are served, not tracked).
pub const MAX_UPLOADS_PER_CONNECTION: usize = 64;

/// One upload as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct UploadInfo {
    pub peer: PeerRef,
    pub file_id: String,
    pub name: String,
    /// Bytes and chunks sent so far.
    pub bytes: u64,
    pub chunks: u32,
    /// Chunks in the file.
    pub of_chunks: u32,
    /// Seconds since its first chunk.
    pub seconds: f64,
    /// Bytes per second since its first chunk.
    pub rate: u64,
    /// When it started, seconds since the Unix epoch.
    pub started_unix: u64,
}

#[derive(Debug)]
struct Upload {
    name: String,
    bytes: u64,
    chunks: u32,
    of_chunks: u32,
    started: Instant,
    started_unix: u64,
}

/// The uploads of every connection of a server (or of several servers:
/// a node's listeners share one); cheap to clone.
/// Per connection: its peer and what it took of each file.
type Table = HashMap<u64, (PeerRef, HashMap<FileId, Upload>)>;

#[derive(Debug, Clone, Default)]
pub struct Uploads {
    inner: Arc<Mutex<Table>>,
    next: Arc<AtomicU64>,
    events: Option<Events>,
    /// Bytes sent in chunks since start, all connections.
    total: Arc<AtomicU64>,
}

impl Uploads {
    /// A tracker that also publishes upload events on `events`.
    pub fn with_events(events: Events) -> Self {
        Self {
            events: Some(events),
            ..Self::default()
        }
    }

    /// A connection of `peer` begins; its uploads end when the returned
    /// guard drops.
    pub fn connection(&self, peer: PeerRef) -> ConnectionUploads {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.inner
            .lock()
            .expect("uploads lock")
            .insert(id, (peer, HashMap::new()));
        ConnectionUploads {
            uploads: self.clone(),
            id,
        }
    }

    /// Uploads in progress.
    pub fn list(&self) -> Vec<UploadInfo> {
        let inner = self.inner.lock().expect("uploads lock");
        let mut out: Vec<UploadInfo> = inner
            .values()
            .flat_map(|(peer, files)| files.iter().map(move |(id, u)| info(peer, id, u)))
            .collect();
        out.sort_by_key(|u| u.started_unix);
        out
    }

    /// Bytes sent in chunks since the tracker was made.
    pub fn total_bytes(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

fn info(peer: &PeerRef, id: &FileId, u: &Upload) -> UploadInfo {
    let seconds = u.started.elapsed().as_secs_f64();
    UploadInfo {
        peer: peer.clone(),
        file_id: id.to_string(),
        name: u.name.clone(),
        bytes: u.bytes,
        chunks: u.chunks,
        of_chunks: u.of_chunks,
        seconds,
        rate: (u.bytes as f64 / seconds.max(0.001)) as u64,
        started_unix: u.started_unix,
    }
}

/// One connection's uploads; they end (and are reported) when it drops.
#[derive(Debug)]
pub struct ConnectionUploads {
    uploads: Uploads,
    id: u64,
}

impl ConnectionUploads {
    /// A chunk of `len` bytes of file `id` (`name`, `of_chunks` chunks) was
    /// sent on this connection.
    pub fn sent(&self, id: FileId, name: &str, of_chunks: u32, len: u64) {
        self.uploads.total.fetch_add(len, Ordering::Relaxed);
        let mut inner = self.uploads.inner.lock().expect("uploads lock");
        let Some((peer, files)) = inner.get_mut(&self.id) else {
            return;
        };
        if let Some(u) = files.get_mut(&id) {
            u.bytes += len;
            u.chunks += 1;
            return;
        }
        if files.len() >= MAX_UPLOADS_PER_CONNECTION {
            return;
        }
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        files.insert(
            id,
            Upload {
                name: name.to_owned(),
                bytes: len,
                chunks: 1,
                of_chunks,
                started: Instant::now(),
                started_unix: unix,
            },
        );
        let peer = peer.clone();
        drop(inner);
        if let Some(events) = &self.uploads.events {
            events.emit(Event::UploadStarted {
                peer,
                file_id: id.to_string(),
                name: name.to_owned(),
            });
        }
    }
}

impl Drop for ConnectionUploads {
    fn drop(&mut self) {
        let ended = self
            .uploads
            .inner
            .lock()
            .map(|mut inner| inner.remove(&self.id))
            .ok()
            .flatten();
        let (Some((peer, files)), Some(events)) = (ended, &self.uploads.events) else {
            return;
        };
        for (id, u) in files {
            events.emit(Event::UploadFinished {
                peer: peer.clone(),
                file_id: id.to_string(),
                name: u.name,
                bytes: u.bytes,
                chunks: u.chunks,
                of_chunks: u.of_chunks,
                seconds: u.started.elapsed().as_secs_f64(),
                complete: u.chunks >= u.of_chunks,
            });
        }
    }
}
