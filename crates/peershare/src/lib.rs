//! The peershare engine: tokio around the sans-IO core in `peershare-proto`.
//!
//! ```text
//!   store     the library in the data dir: what is shared, manifests, trust list
//!   identity  this node's Ed25519 key pair; the node ID is its public key
//!   tls       TLS 1.3 on every connection; proves each side's node ID
//!   server    answers catalog / manifest / chunk / have requests from the library
//!   partials  the verified chunks of this node's downloads in progress, for the server
//!   client    one multiplexed connection to a peer (requests by ID)
//!   download  drives the swarm Scheduler over many peers; verifies, writes, resumes
//!   partial   the durable record of a download's verified chunks
//!   conn      frames over any async byte stream
//!   discovery UDP announcements, queries and replies on the LAN
//!   node      one running peer owning all of the above; typed events
//!   ops       share, unshare, shared, catalogs: one behaviour with or without a node
//!   api       the node's local HTTP JSON API (axum): token, Host/Origin checks,
//!             thin handlers over Node, Server-Sent Events; node.json
//! ```
//!
//! Chunk path, disk to disk: the server writes a `Chunk` frame (header,
//! then the raw bytes), `pread`ing the chunk from the original shared file
//! a slice at a time as it goes; the client's reader task decodes it into
//! a zero-copy `Bytes` and hands it to the waiting fetch task; a
//! blocking-pool thread checks its SHA-256 against the manifest and
//! `pwrite`s it at its offset in the `.peershare-part` file; the driver
//! records it in the scheduler and, at the next checkpoint, in the durable
//! state file.
//!
//! Nothing here reads the environment or binds sockets on its own: callers
//! pass resolved configuration and already-bound listeners, so tests run
//! whole nodes in one process on port 0.

pub mod api;
pub mod client;
pub mod conn;
pub mod discovery;
pub mod download;
pub mod error;
pub mod folders;
pub mod identity;
pub mod live;
pub mod node;
pub mod ops;
pub mod partial;
pub mod partials;
pub mod pool;
pub mod server;
pub mod store;
pub mod tls;
pub mod walk;

pub use client::{ClientConfig, PeerConn};
pub use download::{DownloadConfig, DownloadRequest, DownloadSummary, Output, Progress, download};
pub use error::{DownloadError, PeerError, ServeError, StoreError};
pub use identity::Identity;
pub use server::{Server, ServerConfig, ServerStats};
pub use store::{Library, ShareProgress};
pub use tls::Tls;
