//! One connection, from its TLS handshake to its close: the handshake and
//! `Hello` checks, then a read side and a write side running together; and
//! what the connection's request handlers share ([`ConnState`]).

use super::*;

/// One connection, from its TLS handshake to its close: what every step
/// needs, with the steps as methods. The steps, in order: `handshake` (TLS,
/// a connection slot, the client's first frame), `greet` (its `Hello` and
/// trust checked, ours sent), then `pipeline`: a [`ReadSide`] and a
/// [`WriteSide`] running together until the connection ends.
pub(super) struct Connection {
    pub(super) ctx: Arc<Ctx>,
    pub(super) addr: SocketAddr,
    pub(super) stop: watch::Receiver<bool>,
}

/// A connection past its TLS handshake, holding a connection slot, with
/// the client's first frame (its `Hello`, if it behaves).
pub(super) struct Handshaken {
    reader: FrameReader<BoxRead>,
    writer: FrameWriter<BoxWrite>,
    proven: Option<NodeId>,
    first: Result<Option<Message>, ReadError>,
    slot: tokio::sync::OwnedSemaphorePermit,
}

impl Connection {
    pub(super) async fn serve(mut self, stream: TcpStream, admission: Admission) {
        let _ = stream.set_nodelay(true);
        let Some(Handshaken {
            reader,
            mut writer,
            proven,
            first,
            slot: _slot,
        }) = self.handshake(stream, admission).await
        else {
            return;
        };
        if let Some(peer) = self.greet(&mut writer, first, proven).await {
            self.pipeline(reader, writer, peer).await;
        }
    }

    /// The TLS handshake and the client's `Hello` (the client speaks
    /// first), both within the handshake timeout. A connection slot is
    /// taken between the two: without one, the client is told it is busy.
    /// `None` when the connection is over (failed, evicted, refused,
    /// shutting down).
    pub(super) async fn handshake(
        &mut self,
        stream: TcpStream,
        admission: Admission,
    ) -> Option<Handshaken> {
        let Admission {
            slots,
            pending,
            evicted,
        } = admission;
        let (ctx, addr) = (&self.ctx, self.addr);
        let handshake = async {
            let secured = match ctx.tls.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    ctx.stats.tls_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%addr, "TLS handshake failed: {e}");
                    return None;
                }
            };
            let mut writer = FrameWriter::new(secured.writer);
            let Some(slot) = take_slot(ctx, &slots).await else {
                ctx.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                let _ = writer.send(&busy("in all")).await;
                let _ = writer.shutdown().await;
                return None;
            };
            let mut reader = FrameReader::new(secured.reader, MAX_REQUEST_FRAME_LEN);
            let first = reader.read().await;
            Some(Handshaken {
                reader,
                writer,
                proven: secured.peer,
                first,
                slot,
            })
        };
        let done = tokio::select! {
            r = tokio::time::timeout(ctx.config.handshake_timeout, handshake) => r.ok().flatten(),
            _ = evicted => {
                tracing::debug!(%addr, "handshake evicted by a newer connection");
                None
            }
            _ = self.stop.changed() => None,
        };
        drop(pending);
        done
    }

    /// Checks the client's first frame (a `Hello` naming the node its key
    /// proves) and, with `trusted_only`, that the node is trusted; then
    /// answers with this node's `Hello`. The client's `Hello`, or `None`
    /// when the connection is to end (the client was told why, when it can
    /// be).
    pub(super) async fn greet(
        &self,
        writer: &mut FrameWriter<BoxWrite>,
        first: Result<Option<Message>, ReadError>,
        proven: Option<NodeId>,
    ) -> Option<Hello> {
        let ctx = &self.ctx;
        let addr = self.addr;
        let h = match check_hello(first, proven) {
            Ok(h) => h,
            Err(None) => return None,
            Err(Some(refusal)) => {
                ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
                self.say_and_close(writer, &refusal).await;
                return None;
            }
        };
        if ctx.config.trusted_only && !ctx.trusts(h.node_id).await {
            ctx.stats.refused_untrusted.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%addr, peer = %h.node_id, "refused a node not on the trust list");
            let msg = Message::Error {
                req_id: 0,
                code: ErrorCode::NotTrusted,
                message: format!(
                    "this node serves only the nodes it trusts, and {} is not one of them; \
                     its owner can run `peershare trust add {}`",
                    h.node_id.short(),
                    h.node_id
                ),
            };
            self.say_and_close(writer, &msg).await;
            return None;
        }
        tracing::debug!(%addr, peer = %h.node_id.short(), "handshake");
        let hello = Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            node_id: ctx.tls.node_id(),
            listen_port: ctx.listen_port,
            capabilities: capability::ALL,
        });
        let limit = ctx.config.write_timeout;
        let sent = writer.send_timed(&hello, WRITE_PIECE, limit).await.is_ok();
        sent.then_some(h)
    }

    /// Sends `msg`, then closes the connection.
    pub(super) async fn say_and_close(&self, writer: &mut FrameWriter<BoxWrite>, msg: &Message) {
        let _ = writer
            .send_timed(msg, WRITE_PIECE, self.ctx.config.write_timeout)
            .await;
        let _ = tokio::time::timeout(Duration::from_millis(100), writer.shutdown()).await;
    }

    /// Serves requests until the connection ends: the read side reads and
    /// prepares answers, the write side sends them in order.
    ///
    /// The read side ends first on EOF: queued answers drain, then the
    /// write side ends too. If the write side ends first (the peer stopped
    /// reading, or an answer could not be sent), the connection is over:
    /// the read side is dropped with it.
    pub(super) async fn pipeline(
        &mut self,
        reader: FrameReader<BoxRead>,
        writer: FrameWriter<BoxWrite>,
        hello: Hello,
    ) {
        let peer = hello.node_id;
        let ctx = &self.ctx;
        // Listed among the established connections, so that a newcomer
        // finding every slot taken can close the one idle the longest.
        let (_listed, heard, mut kicked) = ctx.established.list(ctx.now_ms());
        let (tx, rx) = mpsc::channel::<Pending>(ctx.config.max_requests_in_flight.max(1));
        let (push_tx, push_rx) = mpsc::channel::<Message>(MAX_HAVE_SUBSCRIPTIONS);
        let uploads = ctx.uploads.connection(PeerRef {
            node_id: peer.to_string(),
            addr: self.addr,
        });
        let conn = Arc::new(ConnState::new(push_tx, uploads, hello.folders()));
        // Subscriptions end with the connection, however it ends.
        let _end_subscriptions = EndSubscriptions(conn.clone());
        let read_side = ReadSide {
            ctx,
            conn: conn.clone(),
            reader,
            tx,
            heard: heard.clone(),
            addr: self.addr,
        };
        // Busy is asking or being answered: a slow client whose next
        // requests wait unread behind its answers is not idle.
        let mut write_side = WriteSide {
            ctx,
            conn,
            writer,
            rx,
            push_rx,
            answered: heard,
        };
        {
            let reading = read_side.run();
            let writing = write_side.run();
            tokio::pin!(reading, writing);
            let mut read_done = false;
            loop {
                tokio::select! {
                    _ = &mut reading, if !read_done => read_done = true,
                    _ = &mut writing => break,
                    _ = self.stop.changed() => break,
                    _ = &mut kicked => {
                        tracing::debug!(addr = %self.addr, "closed, idle, to make room for a newcomer");
                        break;
                    }
                }
            }
        }
        write_side.close().await;
    }
}

/// The client's `Hello`, if its first frame is one naming the node its
/// key proves; otherwise what to tell it (`None`: nothing, just close).
pub(super) fn check_hello(
    first: Result<Option<Message>, ReadError>,
    proven: Option<NodeId>,
) -> Result<Hello, Option<Message>> {
    let refusal = |code, message: String| {
        Err(Some(Message::Error {
            req_id: 0,
            code,
            message,
        }))
    };
    match first {
        Ok(Some(Message::Hello(h))) => match proven {
            Some(key) if key != h.node_id => refusal(
                ErrorCode::BadRequest,
                format!(
                    "your handshake claims node {} but your key is node {key}",
                    h.node_id
                ),
            ),
            _ => Ok(h),
        },
        Err(ReadError::Decode(DecodeError::UnsupportedVersion(v))) => refusal(
            ErrorCode::UnsupportedVersion,
            format!(
                "this node speaks peershare protocol version {PROTOCOL_VERSION}, you sent version {v}; \
                 use the same peershare release on both sides"
            ),
        ),
        Ok(None) | Err(ReadError::Io(_) | ReadError::Truncated | ReadError::Idle(_)) => Err(None),
        Err(ReadError::Decode(e)) => refusal(
            ErrorCode::BadRequest,
            format!("expected a peershare handshake: {e}"),
        ),
        Ok(Some(_)) => refusal(
            ErrorCode::BadRequest,
            "expected a peershare handshake first".into(),
        ),
    }
}

/// A connection's read side: reads requests, starts preparing their
/// answers and queues them for the write side, at most
/// `max_requests_in_flight` at once; while the queue is full it reads
/// nothing more, so TCP back-pressure stalls a client that does not read.
/// Owns the queue's sender: when it ends, the write side drains what is
/// queued and stops.
pub(super) struct ReadSide<'a> {
    ctx: &'a Arc<Ctx>,
    conn: Arc<ConnState>,
    reader: FrameReader<BoxRead>,
    tx: mpsc::Sender<Pending>,
    /// When the client last asked something (ms since the server started).
    heard: Arc<AtomicU64>,
    addr: SocketAddr,
}

impl ReadSide<'_> {
    pub(super) async fn run(mut self) {
        let mut last_heard = Instant::now();
        while let Some(msg) = self.next_request(last_heard).await {
            last_heard = Instant::now();
            self.heard.store(self.ctx.now_ms(), Ordering::Relaxed);
            self.ctx
                .stats
                .requests_received
                .fetch_add(1, Ordering::Relaxed);
            // Room in the queue first, then the answer is started: its
            // blocking-pool job (if any) runs only once it has a place, so
            // a connection has at most `max_requests_in_flight` of them
            // queued (and the one being answered). A `Cancel` is answered
            // by nothing and needs no room.
            let room = match msg {
                Message::Cancel { .. } => None,
                _ => match self.tx.reserve().await {
                    Ok(room) => Some(room),
                    Err(_) => return,
                },
            };
            let pending = respond(self.ctx, &self.conn, msg);
            let fatal = matches!(pending, Pending::Fatal(_));
            if let Some(room) = room {
                room.send(pending);
            }
            if fatal {
                return;
            }
        }
    }

    /// The next frame from the client; `None` when reading is over: end of
    /// stream, silence past the idle timeout, or a malformed frame (its
    /// error is queued for the write side first).
    pub(super) async fn next_request(&mut self, last_heard: Instant) -> Option<Message> {
        let ctx = self.ctx;
        loop {
            return match tokio::time::timeout(ctx.config.idle_timeout, self.reader.read()).await {
                // A client that subscribed to announcements may have
                // nothing to ask for a long time: it is waiting for us.
                // (`read` keeps what it buffered: calling again is safe.)
                Err(_)
                    if self.conn.has_subscriptions()
                        && last_heard.elapsed() < ctx.config.subscribed_idle_timeout =>
                {
                    continue;
                }
                Err(_) | Ok(Ok(None)) => None,
                Ok(Err(ReadError::Decode(e))) => {
                    ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(addr = %self.addr, "malformed frame: {e}");
                    let _ = self
                        .tx
                        .send(Pending::Fatal(Message::Error {
                            req_id: 0,
                            code: ErrorCode::BadRequest,
                            message: format!("malformed frame: {e}"),
                        }))
                        .await;
                    None
                }
                Ok(Err(_)) => None,
                Ok(Ok(Some(m))) => Some(m),
            };
        }
    }
}

/// A connection's write side: sends the queued answers in order, and the
/// updates of its `Have` subscriptions between them.
pub(super) struct WriteSide<'a> {
    ctx: &'a Arc<Ctx>,
    conn: Arc<ConnState>,
    writer: FrameWriter<BoxWrite>,
    rx: mpsc::Receiver<Pending>,
    push_rx: mpsc::Receiver<Message>,
    /// When the client was last answered (ms since the server started).
    answered: Arc<AtomicU64>,
}

impl WriteSide<'_> {
    /// Sends answers until the queue is closed and drained, or one cannot
    /// be sent.
    pub(super) async fn run(&mut self) {
        while let Some(pending) = self.next_answer().await {
            if !self.answer(pending).await {
                return;
            }
        }
    }

    /// The next answer: a queued one first, else a subscription's update;
    /// `None` once the read side is gone and the queue is drained.
    pub(super) async fn next_answer(&mut self) -> Option<Pending> {
        tokio::select! {
            biased;
            p = self.rx.recv() => p,
            Some(update) = self.push_rx.recv() => Some(Pending::Ready(update)),
        }
    }

    /// Waits for one answer and sends it; false when the connection should
    /// end.
    pub(super) async fn answer(&mut self, pending: Pending) -> bool {
        match pending {
            Pending::Ready(m) => self.send(&m).await,
            Pending::Job(job) => match job.await {
                Ok(m) => self.send(&m).await,
                Err(_) => false,
            },
            Pending::Fatal(m) => {
                self.send(&m).await;
                false
            }
            Pending::Nothing => true,
            Pending::Chunk(job) => match job.await {
                Ok(Ok(plan)) => self.send_chunk(plan).await,
                Ok(Err(m)) => {
                    self.conn.take_cancelled(m.req_id());
                    self.send(&m).await
                }
                Err(_) => false,
            },
        }
    }

    /// Sends one message, each [`WRITE_PIECE`] of it within the write
    /// timeout; false if it could not.
    pub(super) async fn send(&mut self, msg: &Message) -> bool {
        let limit = self.ctx.config.write_timeout;
        let ok = self
            .writer
            .send_timed(msg, WRITE_PIECE, limit)
            .await
            .is_ok();
        if ok {
            self.answered.store(self.ctx.now_ms(), Ordering::Relaxed);
        }
        ok
    }

    /// Writes `bytes`, each [`WRITE_PIECE`] of them within the write
    /// timeout; false if it could not.
    pub(super) async fn write(&mut self, bytes: &[u8]) -> bool {
        let limit = self.ctx.config.write_timeout;
        self.writer
            .send_raw_timed(bytes, WRITE_PIECE, limit)
            .await
            .is_ok()
    }

    /// [`WriteSide::write`] under the upload limit: pieces of the pacing
    /// slice, each waiting for its tokens, but the first piece of a chunk
    /// when `paid` (its tokens were taken before the header: see
    /// [`WriteSide::send_chunk`]).
    pub(super) async fn write_paced(&mut self, bytes: &[u8], paid: &mut bool) -> bool {
        if self.ctx.upload.is_none() {
            return self.write(bytes).await;
        }
        for piece in bytes.chunks(self.ctx.first_slice(usize::MAX).max(1)) {
            if !std::mem::replace(paid, false) {
                self.ctx.throttle(piece.len() as u64).await;
            }
            if !self.write(piece).await {
                return false;
            }
        }
        true
    }

    /// Sends a chunk answer, read from disk a slice at a time
    /// ([`Slices`]) as the client takes it, unless the client cancelled it
    /// before its first byte went out; false when the connection should
    /// end.
    ///
    /// Before the frame's header: a slice buffer from the server's budget
    /// (waiting for one if need be), a download's chunk verified whole, the
    /// first slice read, the upload limit's first piece. Until then a
    /// chunk that cannot be sent is answered with an error. After it, the
    /// header cannot be taken back: a file that changes, or a chunk that no
    /// longer hashes right (checked before its last slice goes out), closes
    /// the connection, which the client treats as lost.
    pub(super) async fn send_chunk(&mut self, plan: ChunkPlan) -> bool {
        let ctx = self.ctx;
        let req_id = plan.req_id;
        if self.conn.is_cancelled(req_id) {
            return self.drop_cancelled(req_id);
        }
        let plan = Arc::new(plan);
        let (slices, first) = match self.open_chunk(&plan).await {
            Ok(opened) => opened,
            Err(go_on) => return go_on,
        };
        // Under an upload limit, wait for the first piece's turn before
        // committing to the frame: a request cancelled meanwhile costs no
        // upload at all.
        ctx.throttle(ctx.first_slice(plan.len) as u64).await;
        if self.conn.take_cancelled(req_id) {
            return self.drop_cancelled(req_id);
        }
        if !self.stream_chunk(&plan, slices, first).await {
            return false;
        }
        ctx.stats.chunks_served.fetch_add(1, Ordering::Relaxed);
        ctx.stats
            .bytes_served
            .fetch_add(plan.len as u64, Ordering::Relaxed);
        self.conn
            .uploads
            .sent(plan.id, &plan.name, plan.of_chunks, plan.len as u64);
        if matches!(plan.check, Check::Hash(_)) {
            ctx.stats
                .partial_chunks_served
                .fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Gets a chunk answer ready to send: a slice buffer, the chunk
    /// verified whole if it is a download's, its first slice read. `Err`
    /// when it cannot be sent, with what [`WriteSide::send_chunk`] returns
    /// (it was answered with why, or the connection is to end).
    pub(super) async fn open_chunk(
        &mut self,
        plan: &Arc<ChunkPlan>,
    ) -> Result<(Slices, Slice), bool> {
        let ctx = self.ctx;
        let mut slice = ctx.slices.take().await;
        if matches!(plan.check, Check::Hash(_)) {
            let p = plan.clone();
            let verified = tokio::task::spawn_blocking(move || {
                let verified = p.verify(&mut slice);
                (slice, verified)
            })
            .await;
            slice = match verified {
                Ok((slice, Ok(()))) => slice,
                Ok((_, Err(e))) => return Err(self.refuse_chunk(plan, e).await),
                Err(_) => return Err(false),
            };
        }
        let mut slices = Slices::new(plan.clone(), ctx.slices.clone(), slice);
        match slices.next().await {
            Some(Ok(first)) => Ok((slices, first)),
            Some(Err(e)) => Err(self.refuse_chunk(plan, e).await),
            None => Err(false),
        }
    }

    /// Sends a chunk's frame: its header, then `first` and the rest of
    /// `slices` as they are read; false when the connection should end (a
    /// write not taken in time, or a slice that failed its check once the
    /// header was out).
    pub(super) async fn stream_chunk(
        &mut self,
        plan: &ChunkPlan,
        mut slices: Slices,
        first: Slice,
    ) -> bool {
        let header = chunk_header(plan.req_id, plan.index, plan.len as u32);
        if !self.write(&header).await {
            return false;
        }
        let (mut current, mut paid) = (first, true);
        loop {
            if !self.write_paced(current.data(), &mut paid).await {
                return false;
            }
            // Being answered: not idle, however long the chunk takes.
            self.answered.store(self.ctx.now_ms(), Ordering::Relaxed);
            slices.sent(current);
            current = match slices.next().await {
                None => return true,
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    tracing::warn!(
                        "closing a connection in the middle of chunk {} of {}: {e:?}",
                        plan.index,
                        plan.id
                    );
                    self.conn.forget_file(&plan.id);
                    return false;
                }
            };
        }
    }

    /// Forgets a chunk request the client cancelled; its answer is not sent.
    pub(super) fn drop_cancelled(&mut self, req_id: u32) -> bool {
        self.conn.take_cancelled(req_id);
        self.ctx.stats.cancelled.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Answers a chunk request whose bytes cannot be sent (nothing of its
    /// frame went out yet) with why; false when the connection should end.
    pub(super) async fn refuse_chunk(&mut self, plan: &ChunkPlan, e: SliceError) -> bool {
        let (req_id, index, id) = (plan.req_id, plan.index, plan.id);
        self.conn.take_cancelled(req_id);
        let why = match (&plan.check, e) {
            (_, SliceError::Lost) => return false,
            (Check::Unchanged(_), _) => {
                self.conn.forget_file(&id);
                format!("file {id} changed on disk since it was shared")
            }
            (Check::Hash(_), SliceError::Io(e)) => {
                format!("the download of {id} cannot be read here: {e}")
            }
            (Check::Hash(_), _) => {
                format!("chunk {index} of the download of {id} is not verified here")
            }
        };
        self.send(&error(req_id, ErrorCode::Unavailable, why)).await
    }

    /// Closes the connection (what was sent is flushed first, briefly).
    pub(super) async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(100), self.writer.shutdown()).await;
    }
}

/// Open shared files of one connection, by file ID.
pub(super) type OpenFiles = HashMap<FileId, (Arc<File>, Entry)>;

/// What one connection's request handlers share.
pub(super) struct ConnState {
    pub(super) files: Mutex<OpenFiles>,
    /// Chunk and `GetHave` requests read and not yet answered, and whether
    /// each was cancelled meanwhile. Bounded by the answers a connection
    /// may have prepared.
    pub(super) open_requests: Mutex<HashMap<u32, bool>>,
    /// `Have` subscriptions by request ID.
    pub(super) subscriptions: Mutex<Subscriptions>,
    /// Where subscriptions send their updates (to the write side).
    pub(super) push: mpsc::Sender<Message>,
    /// What the peer took on this connection.
    pub(super) uploads: ConnectionUploads,
    /// The client's `Hello` has `FOLDERS`: its catalog lists folders
    /// (a client without it would take a folder entry for a file).
    pub(super) folders: bool,
}

#[derive(Default)]
pub(super) struct Subscriptions {
    pub(super) tasks: HashMap<u32, tokio::task::AbortHandle>,
    /// The connection ended: no new subscription may start.
    pub(super) closed: bool,
}

/// Aborts a connection's subscriptions when dropped.
pub(super) struct EndSubscriptions(Arc<ConnState>);

impl Drop for EndSubscriptions {
    fn drop(&mut self) {
        let mut subs = self.0.subscriptions.lock().expect("subscriptions lock");
        subs.closed = true;
        for (_, task) in subs.tasks.drain() {
            task.abort();
        }
    }
}

impl ConnState {
    pub(super) fn new(
        push: mpsc::Sender<Message>,
        uploads: ConnectionUploads,
        folders: bool,
    ) -> Self {
        Self {
            files: Mutex::default(),
            open_requests: Mutex::default(),
            subscriptions: Mutex::default(),
            push,
            uploads,
            folders,
        }
    }

    /// Request `req_id` is read and will be answered (or cancelled).
    pub(super) fn open(&self, req_id: u32) {
        self.open_requests
            .lock()
            .expect("requests lock")
            .insert(req_id, false);
    }

    /// True if the client cancelled chunk request `req_id` (still open).
    pub(super) fn is_cancelled(&self, req_id: u32) -> bool {
        self.open_requests
            .lock()
            .expect("requests lock")
            .get(&req_id)
            .copied()
            .unwrap_or(false)
    }

    /// Forgets chunk request `req_id` as it is answered; true if the client
    /// cancelled it (the answer is to be dropped).
    pub(super) fn take_cancelled(&self, req_id: u32) -> bool {
        self.open_requests
            .lock()
            .expect("requests lock")
            .remove(&req_id)
            .unwrap_or(false)
    }

    pub(super) fn has_subscriptions(&self) -> bool {
        !self
            .subscriptions
            .lock()
            .expect("subscriptions lock")
            .tasks
            .is_empty()
    }

    /// The client cancelled `req_id`: a subscription ends; a chunk answer
    /// not yet sent is dropped. Unknown IDs are ignored (already answered).
    pub(super) fn cancel(&self, req_id: u32) {
        // Lock order: subscriptions, then open requests (as in `have`).
        let mut subs = self.subscriptions.lock().expect("subscriptions lock");
        if let Some(task) = subs.tasks.remove(&req_id) {
            task.abort();
            return;
        }
        if let Some(c) = self
            .open_requests
            .lock()
            .expect("requests lock")
            .get_mut(&req_id)
        {
            *c = true;
        }
    }

    /// Forgets the open file of `id` (it changed on disk): the next
    /// request opens whatever is shared then.
    pub(super) fn forget_file(&self, id: &FileId) {
        self.files.lock().expect("open files lock").remove(id);
    }
}
