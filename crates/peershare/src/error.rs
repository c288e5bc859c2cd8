//! Typed errors of the engine. Each keeps "a peer misbehaved" apart from
//! "our disk failed", and carries what a caller needs to tell the user what
//! to do next.

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use peershare_proto::manifest::ManifestError;
use peershare_proto::ticket::UnsafeName;
use peershare_proto::wire::{DecodeError, ErrorCode, NameError};
use peershare_proto::{FileId, FolderId, NodeId};

/// Errors of the library store (the data dir and the shared files).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file of the data dir that does not parse. `remedy` says what to do
    /// about that file (each file has its own: see [`crate::store::remedy`]).
    #[error("{path} is damaged ({reason}); {remedy}")]
    Corrupt {
        path: PathBuf,
        reason: String,
        remedy: &'static str,
    },
    #[error("{path}: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
    #[error(
        "{path} changed while it was being hashed; share it again when it is no longer being written"
    )]
    ChangedWhileHashing { path: PathBuf },
    #[error("{0} is neither a regular file nor a folder")]
    NotAFile(PathBuf),
    #[error("nothing in the library matches {0}")]
    NotShared(String),
    #[error(
        "{path} holds this node's private key but others may read it (mode {mode:o}); \
         run `chmod 600 {path}` if it is yours, or delete it to make a new node ID"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error(
        "{path} holds this node's API token but others may read it (mode {mode:o}); \
         run `chmod 600 {path}` if it is yours, or delete it to make a new token at the next start"
    )]
    TokenPermissions { path: PathBuf, mode: u32 },
    #[error("the trust list is full ({0} nodes); remove some with `peershare trust rm`")]
    TooManyTrusted(usize),
    #[error("{0} is in this node's data dir, which holds its private key: it is never shared")]
    InDataDir(PathBuf),
    #[error(
        "this node's catalog would list {listed} files, more than the {max} a catalog may hold; \
         nothing was shared: share with --unlisted (served to whoever has the file ID, not listed), \
         or unshare some files first"
    )]
    CatalogFull { listed: usize, max: usize },
    #[error("{name:?} cannot be a shared name: it {why}, and peers refuse such names; rename it")]
    BadName { name: String, why: NameError },
    /// The library's database failed (other than being damaged, which is
    /// [`StoreError::Corrupt`]).
    #[error("{path}: {source}")]
    Database {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The library was written by a later release, in a schema this one
    /// does not know; it is left as it is.
    #[error(
        "{path} was written by a newer release of peershare (library schema {found}, this \
         release knows up to {known}); it was left as it is: run that release, or move it away \
         to start with an empty library"
    )]
    NewerLibrary {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("this node shares {max} folders, the most it may; unshare some first")]
    TooManyFolders { max: usize },
    #[error("{path}: cannot be shared as a folder: {why}")]
    BadFolder { path: PathBuf, why: String },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }
}

/// Text that came from a peer (names, error messages), made safe to show:
/// control characters (newlines, escape sequences) are escaped, so a peer
/// can neither forge lines of output or logs nor drive the terminal. The
/// errors here that quote a peer's words do so through it.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// Errors talking to one peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(
        "cannot connect to {addr}: {source} (is `peershare serve` running there, and is the port open?)"
    )]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{addr} did not answer within {secs} s")]
    Timeout { addr: SocketAddr, secs: u64 },
    #[error("{addr} went silent for {secs} s with answers awaited (the path to it may be down)")]
    Stalled { addr: SocketAddr, secs: u64 },
    #[error(
        "{addr} sent less than a trickle in {secs} s with answers awaited; treating it as gone"
    )]
    TooSlow { addr: SocketAddr, secs: u64 },
    #[error("{addr} sent a malformed message: {source}")]
    Protocol {
        addr: SocketAddr,
        #[source]
        source: DecodeError,
    },
    #[error("{addr} is not a peershare peer, or speaks another protocol: {reason}")]
    Handshake { addr: SocketAddr, reason: String },
    #[error("{addr} answered: {}", printable(.message))]
    Remote {
        addr: SocketAddr,
        code: ErrorCode,
        message: String,
    },
    #[error("{addr} closed the connection")]
    Closed { addr: SocketAddr },
    #[error(
        "{addr} failed the encrypted handshake: {reason} (is it a peershare peer of the same release?)"
    )]
    Tls { addr: SocketAddr, reason: String },
    #[error(
        "{addr} is node {got}, not node {expected} as expected; refusing it (the ticket or announcement is stale, or someone is impersonating that node)"
    )]
    WrongNode {
        addr: SocketAddr,
        expected: NodeId,
        got: NodeId,
    },
    #[error("{addr} ended the connection: {}", printable(.message))]
    Ended {
        addr: SocketAddr,
        code: ErrorCode,
        message: String,
    },
    #[error("connection to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{addr} sent a manifest that does not match the file ID: {source}")]
    BadManifest {
        addr: SocketAddr,
        #[source]
        source: ManifestError,
    },
    #[error("{addr} answered with an unexpected message")]
    Unexpected { addr: SocketAddr },
}

impl PeerError {
    /// True when the peer refused the connection as busy (too many
    /// connections): worth asking again later.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            PeerError::Remote {
                code: ErrorCode::Busy,
                ..
            } | PeerError::Ended {
                code: ErrorCode::Busy,
                ..
            }
        )
    }

    /// True when nothing listens at the address (the connection was
    /// refused): the peer is not running there now.
    pub fn is_refused(&self) -> bool {
        matches!(self, PeerError::Connect { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused)
    }

    /// What kind of failure this is, for a program to act on (the CLI's
    /// exit status): `unreachable` (no connection, silence, busy),
    /// `refused` (the peer serves only nodes it trusts), else `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerError::Connect { .. }
            | PeerError::Timeout { .. }
            | PeerError::Stalled { .. }
            | PeerError::TooSlow { .. } => "unreachable",
            PeerError::Remote {
                code: ErrorCode::NotTrusted,
                ..
            }
            | PeerError::Ended {
                code: ErrorCode::NotTrusted,
                ..
            } => "refused",
            e if e.is_busy() => "unreachable",
            _ => "failed",
        }
    }

    /// True when the peer answered that it does not have the thing asked.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            PeerError::Remote {
                code: ErrorCode::NotFound,
                ..
            }
        )
    }
}

/// Why a download did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(
        "no peer to download from: give one with --peer HOST:PORT or use a ticket that lists peers"
    )]
    NoPeers,
    /// Asked the LAN and nobody answered (why, what was tried).
    #[error("{0}")]
    NoPeersOnLan(String),
    #[error("no peer could be reached: {}", join_peer_errors(.0))]
    AllUnreachable(Vec<PeerError>),
    #[error("none of the peers shares file {id}; check the ID, or ask for a fresh ticket")]
    NotFound { id: FileId },
    #[error("{} already exists; choose another name with -o or pass --force to overwrite it", .0.display())]
    OutputExists(PathBuf),
    #[error("another peershare is already downloading to {}; wait for it, or choose another name with -o", .0.display())]
    InProgress(PathBuf),
    #[error("not enough disk space for {} ({needed} bytes needed); free some space or choose another place with -o", .path.display())]
    NoSpace { path: PathBuf, needed: u64 },
    #[error(
        "the disk is full: cannot write {}; free some space, then run the same command again to resume (the verified chunks are kept)",
        .path.display()
    )]
    DiskFull { path: PathBuf },
    #[error(
        "{} {why}; peershare never writes through one: remove it, or choose another name with -o",
        .path.display()
    )]
    NotAPlainFile { path: PathBuf, why: String },
    #[error(
        "the disk reported an error saving {} ({source}); what was written since the last \
         checkpoint may be lost, so it is fetched again: run the same command again (if this keeps \
         happening, check the disk)",
        .path.display()
    )]
    SyncFailed {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}: {source}", .path.display())]
    Disk {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("every source failed: {}; nothing was saved under the final name, run the same command again to resume", .0.join("; "))]
    AllSourcesFailed(Vec<String>),
    #[error(
        "every source sent corrupt data (it failed SHA-256 verification); nothing was saved under the final name"
    )]
    AllSourcesCorrupt,
    #[error(transparent)]
    UnsafeName(#[from] UnsafeName),
    #[error("the download was cancelled; run the same command again to resume")]
    Cancelled,
    #[error("none of the peers shares folder {id}; check the ID, or ask for a fresh ticket")]
    NotFoundFolder { id: FolderId },
    #[error("folder {id} is refused: {why}; nothing was written")]
    BadFolder { id: FolderId, why: String },
    #[error("the name of folder {id} is unknown (no peer lists it): give -o PATH, or use a ticket")]
    FolderNameUnknown { id: FolderId },
    #[error("no file of the folder matches the --only patterns")]
    NothingSelected,
    #[error("--only {pattern:?}: {why}")]
    BadPattern { pattern: String, why: String },
}

impl DownloadError {
    /// What kind of failure this is, for a program to act on (the CLI's
    /// exit status, the API's `error.kind`): `usage`, `unreachable`,
    /// `not_found`, `corrupt`, `local`, `refused`, `cancelled`, or
    /// `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            DownloadError::NoPeers => "usage",
            DownloadError::NoPeersOnLan(_) => "unreachable",
            DownloadError::AllUnreachable(errs) => {
                errs.first().map_or("unreachable", PeerError::kind)
            }
            DownloadError::NotFound { .. }
            | DownloadError::NotFoundFolder { .. }
            | DownloadError::NothingSelected => "not_found",
            DownloadError::BadFolder { .. } => "corrupt",
            DownloadError::FolderNameUnknown { .. } | DownloadError::BadPattern { .. } => "usage",
            DownloadError::AllSourcesCorrupt => "corrupt",
            DownloadError::OutputExists(_)
            | DownloadError::InProgress(_)
            | DownloadError::NoSpace { .. }
            | DownloadError::DiskFull { .. }
            | DownloadError::NotAPlainFile { .. }
            | DownloadError::SyncFailed { .. }
            | DownloadError::Disk { .. } => "local",
            DownloadError::UnsafeName(_) | DownloadError::AllSourcesFailed(_) => "failed",
            DownloadError::Cancelled => "cancelled",
        }
    }
}

fn join_peer_errors(errs: &[PeerError]) -> String {
    errs.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Errors of the server as a whole (one connection's failures never reach
/// here: they end that connection only).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("accepting connections: {0}")]
    Accept(#[source] io::Error),
}
