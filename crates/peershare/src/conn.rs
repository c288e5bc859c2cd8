//! Frames over any async byte stream: the thin I/O shell around
//! [`peershare_proto::wire`]. Generic over the stream so that TLS can wrap
//! TCP without changing anything above.

use bytes::BytesMut;
use peershare_proto::wire::{self, DecodeError, LEN_PREFIX, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Initial read buffer, bytes. It grows only to hold one declared frame,
/// itself bounded by the reader's `max_frame_len`.
const READ_BUF_INITIAL: usize = 64 * 1024;

/// What can go wrong reading a frame.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("no data arrived for {0:?}")]
    Idle(std::time::Duration),
}

/// Reads frames of at most `max_frame_len` bytes.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_frame_len: u32,
    /// Bytes read from the stream so far, shared so that a watchdog can
    /// judge progress while a read is pending.
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_frame_len: u32) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(READ_BUF_INITIAL),
            max_frame_len,
            received: Default::default(),
        }
    }

    /// A counter of the bytes read from the stream so far.
    pub fn received(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.received.clone()
    }

    /// Changes the limit for frames read from now on.
    pub fn set_max_frame_len(&mut self, max: u32) {
        self.max_frame_len = max;
    }

    /// The next message; `Ok(None)` on a clean end of stream between frames.
    pub async fn read(&mut self) -> Result<Option<Message>, ReadError> {
        self.read_idle(None).await
    }

    /// Like [`FrameReader::read`], but fails with [`ReadError::Idle`] when a
    /// single wait for bytes lasts longer than `idle`: a slow stream that
    /// keeps moving is fine, a stalled one is not. Buffered bytes are kept,
    /// so the caller may call again.
    pub async fn read_idle(
        &mut self,
        idle: Option<std::time::Duration>,
    ) -> Result<Option<Message>, ReadError> {
        loop {
            if let Some(len) = wire::peek_frame_len(&self.buf, self.max_frame_len)? {
                // The length was checked against the maximum: reserving
                // room for exactly this frame is bounded.
                let want = LEN_PREFIX + len as usize;
                if self.buf.capacity() < want {
                    self.buf.reserve(want - self.buf.len());
                }
            }
            if let Some(msg) = wire::decode_frame(&mut self.buf, self.max_frame_len)? {
                return Ok(Some(msg));
            }
            if self.buf.capacity() == self.buf.len() {
                self.buf.reserve(READ_BUF_INITIAL);
            }
            let n = match idle {
                None => self.inner.read_buf(&mut self.buf).await?,
                Some(t) => tokio::time::timeout(t, self.inner.read_buf(&mut self.buf))
                    .await
                    .map_err(|_| ReadError::Idle(t))??,
            };
            self.received
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated)
                };
            }
        }
    }
}

/// Capacity of the scratch buffer kept between messages, bytes: a larger
/// message (a manifest, up to 8 MiB) gets one for itself, freed after it.
const SCRATCH_KEPT: usize = 64 * 1024;

/// Writes frames, reusing one scratch buffer for control messages. Every
/// call flushes: under TLS, encrypted records wait in the session until
/// flushed, and a writer that then goes quiet would strand them.
pub struct FrameWriter<W> {
    inner: W,
    scratch: BytesMut,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            scratch: BytesMut::with_capacity(4096),
        }
    }

    /// Encodes and writes one message.
    pub async fn send(&mut self, msg: &Message) -> std::io::Result<()> {
        self.scratch.clear();
        msg.encode(&mut self.scratch)
            .map_err(std::io::Error::other)?;
        self.inner.write_all(&self.scratch).await?;
        self.inner.flush().await
    }

    /// Encodes and writes one message `piece` bytes at a time, each piece
    /// (and the flush) within `limit`: a slow reader is served, one that
    /// takes nothing for `limit` gets [`std::io::ErrorKind::TimedOut`].
    pub async fn send_timed(
        &mut self,
        msg: &Message,
        piece: usize,
        limit: std::time::Duration,
    ) -> std::io::Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let sent = match msg.encode(&mut scratch) {
            Ok(()) => self.send_raw_timed(&scratch, piece, limit).await,
            Err(e) => Err(std::io::Error::other(e)),
        };
        if scratch.capacity() <= SCRATCH_KEPT {
            self.scratch = scratch;
        } else {
            self.scratch = BytesMut::with_capacity(4096);
        }
        sent
    }

    /// Writes already-encoded bytes `piece` at a time, each piece (and the
    /// flush) within `limit`; see [`FrameWriter::send_timed`].
    pub async fn send_raw_timed(
        &mut self,
        bytes: &[u8],
        piece: usize,
        limit: std::time::Duration,
    ) -> std::io::Result<()> {
        let timed_out = || std::io::Error::from(std::io::ErrorKind::TimedOut);
        for p in bytes.chunks(piece.max(1)) {
            tokio::time::timeout(limit, self.inner.write_all(p))
                .await
                .map_err(|_| timed_out())??;
        }
        tokio::time::timeout(limit, self.inner.flush())
            .await
            .map_err(|_| timed_out())?
    }

    /// Writes already-encoded frames.
    pub async fn send_raw(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(frame).await?;
        self.inner.flush().await
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().await
    }

    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.inner.shutdown().await
    }
}
