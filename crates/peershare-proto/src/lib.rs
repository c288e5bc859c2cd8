//! peershare's protocol core, free of I/O: no sockets, no tasks, no clock
//! reads (time comes in as an argument). Everything here is unit-,
//! property- and fuzz-testable.
//!
//! ```text
//!  bitmap    sets of chunk indices (resume state, which chunks a peer has)
//!  id        FileId / FolderId / NodeId, SHA-256 helpers
//!  manifest  file size + chunk size + chunk hashes; FileId = SHA-256(encoding)
//!  folder    a folder's tree (paths, sizes, file IDs), its canonical encoding
//!            and hostile-path checks; FolderId = SHA-256(domain || manifest
//!            of the encoding)
//!  wire      protocol v1 messages and the length-prefixed frame codec
//!  ticket    the copy-pasteable "ps1..." string and safe local names
//!  schedule  which chunk to ask which peer for next (per-chunk state machine)
//!  rate      token bucket and rate parsing
//!  discovery LAN discovery packets, peers heard, reply budgets
//! ```
//!
//! The engine crate (`peershare`) wraps this core in tokio: it feeds bytes
//! from sockets into [`wire::decode_frame`], and completions and timer ticks
//! into [`schedule::Scheduler`].

pub mod bitmap;
pub mod discovery;
pub mod folder;
pub mod id;
pub mod manifest;
pub mod rate;
pub mod schedule;
pub mod ticket;
pub mod wire;

pub use folder::FolderManifest;
pub use id::{FileId, FolderId, NodeId};
pub use manifest::Manifest;
pub use ticket::Ticket;
pub use wire::Message;
