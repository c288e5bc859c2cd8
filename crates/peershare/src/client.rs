//! One connection to a peer, carrying many requests at once. Requests get
//! IDs; a reader task matches answers to waiting callers by ID, so answers
//! may come in any order. When the connection ends, every waiting caller
//! gets the reason.
//!
//! A request whose caller gives up (its future is dropped: an endgame loser)
//! is cancelled on the wire too, when the peer understands `Cancel`, so the
//! peer does not spend its upload on an answer nobody wants. A `Have`
//! subscription delivers the peer's latest set through a `watch` channel
//! until the connection ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use peershare_proto::manifest::Manifest;
use peershare_proto::wire::{
    CatalogEntry, DecodeError, Hello, Holding, MAX_CATALOG_ENTRIES, MAX_FRAME_LEN, Message,
    PROTOCOL_VERSION, capability, check_shared_name,
};
use peershare_proto::{FileId, NodeId};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::conn::{FrameReader, FrameWriter, ReadError};
use crate::error::PeerError;
use crate::tls::{BoxWrite, Tls};

/// Client-side timeouts; plain data with sane defaults.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// TCP connect plus handshake.
    pub connect_timeout: Duration,
    /// Longest silence while answers are awaited: after it the connection
    /// counts as dead (a dead path, a hung peer), within seconds rather
    /// than after TCP's retransmission backoff. Measured between bytes, not
    /// per request, so a slow peer with many queued requests is not
    /// mistaken for a dead one.
    pub stall_timeout: Duration,
    /// While answers are awaited, each such period must bring at least
    /// `MIN_PROGRESS_BYTES`, or the connection counts as dead: a peer that
    /// trickles a few bytes now and then is as good as gone.
    pub progress_window: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(8),
            progress_window: Duration::from_secs(20),
        }
    }
}

/// Bytes a peer must deliver per `progress_window` while answers are
/// awaited (about 800 B/s with the defaults), or its connection counts as
/// dead (it is trickling).
pub const MIN_PROGRESS_BYTES: u64 = 16 * 1024;
/// Most catalog pages fetched from one peer: enough for a whole catalog of
/// `MAX_CATALOG_ENTRIES` entries of the longest names, and for the page
/// after it (so a peer that lists more is seen to), as the reference
/// server pages them (`a_full_catalog_of_the_longest_names_is_fetched_whole`).
pub const MAX_CATALOG_PAGES: usize = 512;
/// Requests queued for writing per connection.
const OUTBOX: usize = 256;

type Waiters = HashMap<u32, oneshot::Sender<Result<Message, PeerError>>>;

/// A peer's latest `Have` for a subscribed file; `None` until one arrives.
pub type HaveWatch = watch::Receiver<Option<Holding>>;

struct Shared {
    waiters: Waiters,
    /// `Have` subscriptions by request ID.
    subs: HashMap<u32, watch::Sender<Option<Holding>>>,
    /// Set once the connection has ended; new requests fail with it.
    closed: Option<String>,
}

/// A live connection to one peer.
pub struct PeerConn {
    addr: SocketAddr,
    remote: Hello,
    outbox: mpsc::Sender<BytesMut>,
    shared: Arc<Mutex<Shared>>,
    next_id: AtomicU32,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for PeerConn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl PeerConn {
    /// Connects, secures the connection and performs the handshake. With
    /// `expect`, the peer must prove it is that node ([`PeerError::WrongNode`]
    /// otherwise); in every case its `Hello` must name the node its key
    /// proves.
    pub async fn connect(
        addr: SocketAddr,
        tls: &Tls,
        expect: Option<NodeId>,
        config: ClientConfig,
    ) -> Result<Self, PeerError> {
        let secs = config.connect_timeout.as_secs();
        tokio::time::timeout(
            config.connect_timeout,
            Self::connect_inner(addr, tls, expect, config),
        )
        .await
        .map_err(|_| PeerError::Timeout { addr, secs })?
    }

    async fn connect_inner(
        addr: SocketAddr,
        tls: &Tls,
        expect: Option<NodeId>,
        config: ClientConfig,
    ) -> Result<Self, PeerError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| PeerError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let secured = tls
            .connect(stream)
            .await
            .map_err(|e| tls_failure(addr, e))?;
        if let (Some(expected), Some(got)) = (expect, secured.peer)
            && expected != got
        {
            return Err(PeerError::WrongNode {
                addr,
                expected,
                got,
            });
        }
        let mut reader = FrameReader::new(secured.reader, MAX_FRAME_LEN);
        let mut writer = FrameWriter::new(secured.writer);
        let hello = Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            node_id: tls.node_id(),
            listen_port: 0,
            capabilities: capability::ALL,
        });
        writer
            .send(&hello)
            .await
            .map_err(|source| PeerError::Io { addr, source })?;
        let remote = match reader.read().await {
            Ok(Some(Message::Hello(h))) => h,
            Ok(Some(Message::Error { code, message, .. })) => {
                return Err(PeerError::Remote {
                    addr,
                    code,
                    message,
                });
            }
            Ok(Some(_)) => {
                return Err(PeerError::Handshake {
                    addr,
                    reason: "it did not start with a handshake".into(),
                });
            }
            Ok(None) | Err(ReadError::Truncated | ReadError::Idle(_)) => {
                return Err(PeerError::Closed { addr });
            }
            Err(ReadError::Decode(source @ DecodeError::UnsupportedVersion(_))) => {
                return Err(PeerError::Handshake {
                    addr,
                    reason: source.to_string(),
                });
            }
            Err(ReadError::Decode(source)) => return Err(PeerError::Protocol { addr, source }),
            Err(ReadError::Io(source)) => return Err(PeerError::Io { addr, source }),
        };
        match secured.peer {
            Some(proven) if proven != remote.node_id => {
                return Err(PeerError::Handshake {
                    addr,
                    reason: format!(
                        "it claims to be node {} but its key is node {proven}",
                        remote.node_id
                    ),
                });
            }
            // Plaintext (benchmarks): only the claim to go by.
            None if expect.is_some_and(|e| e != remote.node_id) => {
                return Err(PeerError::WrongNode {
                    addr,
                    expected: expect.expect("checked"),
                    got: remote.node_id,
                });
            }
            _ => {}
        }
        let shared = Arc::new(Mutex::new(Shared {
            waiters: HashMap::new(),
            subs: HashMap::new(),
            closed: None,
        }));
        let (outbox, rx) = mpsc::channel(OUTBOX);
        let read_task = tokio::spawn(read_loop(addr, reader, shared.clone(), config));
        let write_task = tokio::spawn(write_loop(writer, rx, shared.clone()));
        Ok(Self {
            addr,
            remote,
            outbox,
            shared,
            next_id: AtomicU32::new(1),
            tasks: [read_task, write_task],
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer's handshake.
    pub fn remote(&self) -> &Hello {
        &self.remote
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().expect("client lock").closed.is_some()
    }

    /// Sends one request and waits for its answer. An `Error` answer comes
    /// back as [`PeerError::Remote`].
    pub async fn request(&self, make: impl FnOnce(u32) -> Message) -> Result<Message, PeerError> {
        self.request_inner(make, None).await
    }

    /// [`PeerConn::request`]; with `more`, further `Have` answers to the
    /// same request go there.
    async fn request_inner(
        &self,
        make: impl FnOnce(u32) -> Message,
        more: Option<watch::Sender<Option<Holding>>>,
    ) -> Result<Message, PeerError> {
        let addr = self.addr;
        let mut req_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if req_id == 0 {
            // 0 is reserved for connection-level errors.
            req_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
        let msg = make(req_id);
        let mut frame = BytesMut::new();
        msg.encode(&mut frame).map_err(|e| PeerError::Io {
            addr,
            source: std::io::Error::other(e),
        })?;
        let (tx, rx) = oneshot::channel();
        {
            let mut s = self.shared.lock().expect("client lock");
            if s.closed.is_some() {
                return Err(PeerError::Closed { addr });
            }
            s.waiters.insert(req_id, tx);
            if let Some(more) = more {
                s.subs.insert(req_id, more);
            }
        }
        // If this future is dropped (cancelled), the waiter must not linger,
        // and the peer may drop its answer.
        let _cleanup = RemoveWaiter {
            shared: &self.shared,
            req_id,
            cancel: self.remote.swarm().then_some(&self.outbox),
        };
        self.outbox
            .send(frame)
            .await
            .map_err(|_| PeerError::Closed { addr })?;
        // The read task answers every waiter: with its answer, or with the
        // reason the connection ended (a stall included).
        match rx.await.map_err(|_| PeerError::Closed { addr })? {
            Ok(Message::Error { code, message, .. }) => Err(PeerError::Remote {
                addr,
                code,
                message,
            }),
            r => r,
        }
    }

    /// The peer's whole catalog (all pages, de-duplicated by name and ID:
    /// one content may be listed under several names), or its first
    /// [`MAX_CATALOG_ENTRIES`] entries (with a warning) when it lists more,
    /// as no node may. Entries whose name is not a valid shared name
    /// ([`check_shared_name`]), and folder entries whose name is not a
    /// folder name (`folder::check_folder_name`), are left out, with a
    /// warning: no name a node may not list gets any further.
    pub async fn catalog(&self) -> Result<Vec<CatalogEntry>, PeerError> {
        let mut bad = BadNames::default();
        let out = self.catalog_pages(&mut bad).await;
        if let Some((name, why)) = &bad.first {
            tracing::warn!(addr = %self.addr, "the peer lists {} file(s) under names no node may list, left out: {name:?}, which {why}", bad.count);
        }
        out
    }

    async fn catalog_pages(&self, bad: &mut BadNames) -> Result<Vec<CatalogEntry>, PeerError> {
        let mut out: Vec<CatalogEntry> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut cursor = 0;
        for _ in 0..MAX_CATALOG_PAGES {
            match self
                .request(|req_id| Message::GetCatalog { req_id, cursor })
                .await?
            {
                Message::Catalog { next, entries, .. } => {
                    let valid = entries.into_iter().filter(|e| match check_catalog_name(e) {
                        Ok(()) => true,
                        Err(why) => {
                            bad.count += 1;
                            bad.first.get_or_insert_with(|| (e.name.clone(), why));
                            false
                        }
                    });
                    out.extend(valid.filter(|e| seen.insert((e.id, e.name.clone()))));
                    if out.len() > MAX_CATALOG_ENTRIES {
                        // No node lists this many: hostile or broken. Keep
                        // a bounded prefix rather than grow without end.
                        out.truncate(MAX_CATALOG_ENTRIES);
                        tracing::warn!(addr = %self.addr, "the peer lists more than {MAX_CATALOG_ENTRIES} files, more than any node may; showing the first {MAX_CATALOG_ENTRIES}");
                        return Ok(out);
                    }
                    match next {
                        Some(c) if c > cursor => cursor = c,
                        Some(_) => return Err(PeerError::Unexpected { addr: self.addr }),
                        None => return Ok(out),
                    }
                }
                _ => return Err(PeerError::Unexpected { addr: self.addr }),
            }
        }
        tracing::warn!(addr = %self.addr, "the peer's catalog goes on past {MAX_CATALOG_PAGES} pages; showing the first {} files", out.len());
        Ok(out)
    }

    /// The manifest of `id`, checked against `id`.
    pub async fn manifest(&self, id: FileId) -> Result<Manifest, PeerError> {
        match self
            .request(|req_id| Message::GetManifest { req_id, id })
            .await?
        {
            Message::Manifest { bytes, .. } => {
                Manifest::decode_verified(&bytes, &id).map_err(|source| PeerError::BadManifest {
                    addr: self.addr,
                    source,
                })
            }
            _ => Err(PeerError::Unexpected { addr: self.addr }),
        }
    }

    /// Which chunks of `id` the peer holds. With `subscribe`, also a
    /// channel showing its latest set as it grows (while the connection
    /// lasts). A peer without the swarm capability only ever shares whole
    /// files: `Holding::All`, without asking.
    pub async fn have(
        &self,
        id: FileId,
        subscribe: bool,
    ) -> Result<(Holding, Option<HaveWatch>), PeerError> {
        if !self.remote.swarm() {
            return Ok((Holding::All, None));
        }
        let (tx, rx) = watch::channel(None);
        let more = subscribe.then_some(tx);
        let msg = self
            .request_inner(
                |req_id| Message::GetHave {
                    req_id,
                    id,
                    subscribe,
                },
                more,
            )
            .await?;
        match msg {
            Message::Have { holding, .. } => Ok((holding, subscribe.then_some(rx))),
            _ => Err(PeerError::Unexpected { addr: self.addr }),
        }
    }

    /// Chunk `index` of `id`, unverified: the caller checks it against the
    /// manifest.
    pub async fn chunk(&self, id: FileId, index: u32) -> Result<Bytes, PeerError> {
        match self
            .request(|req_id| Message::GetChunk { req_id, id, index })
            .await?
        {
            Message::Chunk {
                index: got, data, ..
            } if got == index => Ok(data),
            _ => Err(PeerError::Unexpected { addr: self.addr }),
        }
    }
}

/// Catalog entries left out for their names: how many, and the first one
/// with why it is not a shared name (or not a folder name).
#[derive(Default)]
struct BadNames {
    count: usize,
    first: Option<(String, String)>,
}

/// Why `e`'s name may not be listed, if it may not: a shared name, and for
/// a folder entry one component by the folder rules (PROTOCOL.md, 6.4).
fn check_catalog_name(e: &CatalogEntry) -> Result<(), String> {
    check_shared_name(&e.name).map_err(|why| why.to_string())?;
    if e.is_folder() {
        peershare_proto::folder::check_folder_name(&e.name)
            .map_err(|why| format!("is not a folder name: it {why}"))?;
    }
    Ok(())
}

fn close(shared: &Mutex<Shared>, reason: String, make: impl Fn() -> PeerError) {
    let mut s = shared.lock().expect("client lock");
    s.closed.get_or_insert(reason);
    for (_, w) in s.waiters.drain() {
        let _ = w.send(Err(make()));
    }
    s.subs.clear();
}

struct RemoveWaiter<'a> {
    shared: &'a Mutex<Shared>,
    req_id: u32,
    /// Where to send a `Cancel` if the answer is still awaited (the peer
    /// understands it).
    cancel: Option<&'a mpsc::Sender<BytesMut>>,
}

impl Drop for RemoveWaiter<'_> {
    fn drop(&mut self) {
        let Ok(mut s) = self.shared.lock() else {
            return;
        };
        let unanswered = s.waiters.remove(&self.req_id).is_some();
        if unanswered && s.closed.is_none() {
            s.subs.remove(&self.req_id);
            if let Some(outbox) = self.cancel
                && let Ok(frame) = (Message::Cancel {
                    req_id: self.req_id,
                })
                .to_frame()
            {
                // Best effort: a full outbox means the answer just arrives
                // and is dropped here.
                let _ = outbox.try_send(frame);
            }
        }
    }
}

async fn read_loop(
    addr: SocketAddr,
    mut reader: FrameReader<crate::tls::BoxRead>,
    shared: Arc<Mutex<Shared>>,
    config: ClientConfig,
) {
    let (stall, window) = (config.stall_timeout, config.progress_window);
    let received = reader.received();
    let mut watchdog = tokio::time::interval_at(tokio::time::Instant::now() + window, window);
    let mut mark = 0;
    let mut was_waiting = false;
    loop {
        let read = tokio::select! {
            r = reader.read_idle(Some(stall)) => r,
            _ = watchdog.tick() => {
                // A peer that trickles a few bytes now and then is as good
                // as dead: while answers are awaited, each period must
                // bring at least MIN_PROGRESS_BYTES.
                let now = received.load(Ordering::Relaxed);
                let waiting = !shared.lock().expect("client lock").waiters.is_empty();
                // Judge only a whole period of waiting: requests sent just
                // before this tick have had no time yet.
                if waiting && was_waiting && now - mark < MIN_PROGRESS_BYTES {
                    let secs = window.as_secs();
                    close(&shared, "too slow".into(), || PeerError::TooSlow { addr, secs });
                    return;
                }
                mark = now;
                was_waiting = waiting;
                continue;
            }
        };
        match read {
            Err(ReadError::Idle(_)) => {
                // Silence is fine while nobody waits for an answer.
                if shared.lock().expect("client lock").waiters.is_empty() {
                    continue;
                }
                let secs = stall.as_secs();
                close(&shared, "stalled".into(), || PeerError::Stalled {
                    addr,
                    secs,
                });
                return;
            }
            Ok(Some(Message::Error {
                req_id: 0,
                code,
                message,
            })) => {
                tracing::debug!(%addr, "peer closed the connection: {message:?}");
                // About the connection, not any one request: every waiter
                // learns the connection ended (and why).
                close(&shared, message.clone(), || PeerError::Ended {
                    addr,
                    code,
                    message: message.clone(),
                });
                return;
            }
            Ok(Some(msg)) => {
                let mut s = shared.lock().expect("client lock");
                let id = msg.req_id();
                if let Some(w) = s.waiters.remove(&id) {
                    let _ = w.send(Ok(msg));
                } else if let Some(sub) = s.subs.get(&id) {
                    // A later answer to a subscription: the latest set wins
                    // (sets only grow). An error or a dropped receiver ends it.
                    match msg {
                        Message::Have { holding, .. } if !sub.is_closed() => {
                            sub.send_replace(Some(holding));
                        }
                        _ => {
                            s.subs.remove(&id);
                        }
                    }
                }
                // Anything else nobody waits for (cancelled) is dropped.
            }
            Ok(None) | Err(ReadError::Truncated) => {
                close(&shared, "closed".into(), || PeerError::Closed { addr });
                return;
            }
            Err(ReadError::Decode(e)) => {
                let text = e.to_string();
                close(&shared, text, || PeerError::Protocol {
                    addr,
                    source: e.clone(),
                });
                return;
            }
            Err(ReadError::Io(e)) => {
                let kind = e.kind();
                let text = e.to_string();
                close(&shared, text.clone(), || PeerError::Io {
                    addr,
                    source: std::io::Error::new(kind, text.clone()),
                });
                return;
            }
        }
    }
}

async fn write_loop(
    mut writer: FrameWriter<BoxWrite>,
    mut rx: mpsc::Receiver<BytesMut>,
    shared: Arc<Mutex<Shared>>,
) {
    while let Some(mut batch) = rx.recv().await {
        // Coalesce queued requests into one write.
        while batch.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if writer.send_raw(&batch).await.is_err() {
            let mut s = shared.lock().expect("client lock");
            s.closed.get_or_insert_with(|| "write failed".into());
            return;
        }
    }
}

/// A failed TLS handshake, told apart from a refused or dropped connection.
fn tls_failure(addr: SocketAddr, e: std::io::Error) -> PeerError {
    use std::io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => {
            PeerError::Closed { addr }
        }
        _ => PeerError::Tls {
            addr,
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use peershare_proto::FileId;
    use peershare_proto::wire::{CATALOG_PAGE_BUDGET, MAX_NAME_LEN, catalog_entry_len};

    use super::*;

    #[test]
    fn a_full_catalog_of_the_longest_names_is_fetched_whole() {
        let longest = catalog_entry_len(&CatalogEntry {
            id: FileId([0; 32]),
            size: 0,
            flags: 0,
            name: "n".repeat(MAX_NAME_LEN),
        });
        // A server fills each page up to the budget (section 8 of
        // PROTOCOL.md), so a page holds at least this many entries.
        let per_page = CATALOG_PAGE_BUDGET / longest;
        let full = MAX_CATALOG_ENTRIES.div_ceil(per_page);
        // The whole catalog, and the page where an entry too many would be.
        assert!(MAX_CATALOG_PAGES > full, "{MAX_CATALOG_PAGES} <= {full}");
    }
}
