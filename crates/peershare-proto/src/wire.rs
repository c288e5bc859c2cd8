//! Protocol v1 messages and their frame codec (specified in `docs/PROTOCOL.md`).
//!
//! Every message is one frame:
//!
//! ```text
//! u32 BE   length of what follows (kind + body), 1..=max_frame_len
//! u8       kind
//! ...      body (layout per kind; integers big-endian)
//! ```
//!
//! The decoder checks the declared length against the caller's maximum
//! *before* it reserves a byte for the frame, so a hostile length prefix
//! costs nothing. It answers one of three things: a whole message, "need
//! more bytes", or a [`DecodeError`] that means the peer is malformed and
//! its connection should end.
//!
//! Chunk payloads are raw bytes at the end of their frame, carried as
//! [`Bytes`] so that decoding them copies nothing.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::bitmap::Bitmap;
use crate::id::{FileId, ID_LEN, NodeId};
use crate::manifest::{MAX_CHUNK_COUNT, MAX_CHUNK_SIZE, MAX_MANIFEST_LEN};

/// Four bytes that open every handshake.
pub const MAGIC: [u8; 4] = *b"PSHR";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Largest frame (kind + body) anyone may send, bytes: a whole chunk or a
/// whole manifest with its header.
pub const MAX_FRAME_LEN: u32 = {
    let chunk = MAX_CHUNK_SIZE as usize + 16;
    let manifest = MAX_MANIFEST_LEN + 16;
    (if chunk > manifest { chunk } else { manifest }) as u32
};
/// Largest frame a server accepts from a client, bytes. Requests are small;
/// a server never buffers more than this per connection for input.
pub const MAX_REQUEST_FRAME_LEN: u32 = 4 * 1024;
/// Longest file name in a catalog, bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 1024;
/// Longest error message, bytes of UTF-8.
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;
/// A catalog page holds entries up to about this many bytes.
pub const CATALOG_PAGE_BUDGET: usize = 256 * 1024;
/// Most entries a node lists in its catalog, all pages together; a client
/// keeps no more than this from one peer.
pub const MAX_CATALOG_ENTRIES: usize = 100_000;

/// Why a name is not a valid shared name ([`check_shared_name`]). Each
/// reads after "it".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    #[error("is absolute (starts with /)")]
    Absolute,
    #[error("has an empty, \".\" or \"..\" component")]
    BadComponent,
    #[error("contains a control character (a newline, an escape sequence...)")]
    Control,
}

/// Checks that `name` is a valid *shared name*: the name a node lists a
/// file under (catalog entries, tickets; `docs/PROTOCOL.md` section 6.4).
/// That is one or more `/`-separated components, relative (not starting
/// with `/`), none of them empty, `.` or `..`, no control character
/// anywhere (C0, DEL, C1: no newline, tab or escape sequence), and at most
/// [`MAX_NAME_LEN`] bytes of UTF-8.
///
/// A valid shared name is safe to show on one line (it can neither forge
/// lines nor drive a terminal) and to read as a relative path, but is not
/// necessarily a safe *local* file name (see
/// [`crate::ticket::safe_file_name`]).
pub fn check_shared_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control);
    }
    if name.starts_with('/') {
        return Err(NameError::Absolute);
    }
    if name
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(NameError::BadComponent);
    }
    Ok(())
}

/// Message kinds (the byte after the length prefix).
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const ERROR: u8 = 0x02;
    pub const GET_CATALOG: u8 = 0x10;
    pub const CATALOG: u8 = 0x11;
    pub const GET_MANIFEST: u8 = 0x12;
    pub const MANIFEST: u8 = 0x13;
    pub const GET_HAVE: u8 = 0x14;
    pub const HAVE: u8 = 0x15;
    pub const GET_CHUNK: u8 = 0x16;
    pub const CHUNK: u8 = 0x17;
    pub const CANCEL: u8 = 0x18;
}

/// Bits of [`Hello::capabilities`]. A node sends a message introduced by a
/// capability only to a peer whose `Hello` has that bit set.
pub mod capability {
    /// Understands `GetHave`, `Have` and `Cancel`: can say which chunks of
    /// a file it holds while it is still downloading it, announce new ones,
    /// and drop a request the client no longer needs.
    pub const SWARM: u64 = 1 << 0;
    /// Shares folders: answers `GetManifest` and `GetChunk` for a folder ID
    /// with the folder encoding's manifest and chunks (PROTOCOL.md, section
    /// 15).
    pub const FOLDERS: u64 = 1 << 1;
    /// Every capability this build has.
    pub const ALL: u64 = SWARM | FOLDERS;
}

/// Bits of [`CatalogEntry::flags`]; unknown bits are ignored.
pub mod entry_flags {
    /// The sender is still downloading this file and holds only some of its
    /// chunks (ask it with `GetHave` which).
    pub const PARTIAL: u8 = 1 << 0;
    /// The entry is a shared folder: its ID is the folder ID, its size the
    /// folder's total size, its name the folder's name (one component).
    /// Its files are listed as entries of their own, named `NAME/...`.
    pub const FOLDER: u8 = 1 << 1;
}

/// Error codes carried by [`Message::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The request could not be decoded or made no sense.
    BadRequest = 1,
    /// The peer's protocol version is not spoken here.
    UnsupportedVersion = 2,
    /// No such file is shared here.
    NotFound = 3,
    /// The chunk index is past the end of the file.
    OutOfRange = 4,
    /// The file is shared but cannot be read now (changed on disk, I/O error).
    Unavailable = 5,
    /// Too many connections or requests; try later.
    Busy = 6,
    /// Anything else went wrong on the sender's side.
    Internal = 7,
    /// This node serves only nodes on its trust list, and the asker is not
    /// on it.
    NotTrusted = 8,
}

impl ErrorCode {
    fn from_u16(v: u16) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            1 => BadRequest,
            2 => UnsupportedVersion,
            3 => NotFound,
            4 => OutOfRange,
            5 => Unavailable,
            6 => Busy,
            7 => Internal,
            8 => NotTrusted,
            _ => return None,
        })
    }
}

/// The first message each side sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub node_id: NodeId,
    /// TCP port this node accepts connections on (0: none).
    pub listen_port: u16,
    /// Feature bits ([`capability`]); unknown bits are ignored.
    pub capabilities: u64,
}

impl Hello {
    /// The peer understands the swarm messages (`GetHave`, `Have`, `Cancel`).
    pub fn swarm(&self) -> bool {
        self.capabilities & capability::SWARM != 0
    }

    /// The peer shares folders (answers for folder IDs).
    pub fn folders(&self) -> bool {
        self.capabilities & capability::FOLDERS != 0
    }
}

/// One file (or folder: [`entry_flags::FOLDER`]) in a catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    pub id: FileId,
    pub size: u64,
    /// [`entry_flags`] bits.
    pub flags: u8,
    pub name: String,
}

impl CatalogEntry {
    /// The sender holds only part of the file (it is downloading it).
    pub fn is_partial(&self) -> bool {
        self.flags & entry_flags::PARTIAL != 0
    }

    /// The entry is a folder (its ID a folder ID), not a file.
    pub fn is_folder(&self) -> bool {
        self.flags & entry_flags::FOLDER != 0
    }
}

/// Which chunks of a file a peer holds. Senders say `All` for a whole
/// file; a receiver treats a full bitmap the same. The bitmap's length can
/// only be checked against the manifest, by the receiver (the scheduler
/// drops a peer whose length differs: `DropReason::BadHave`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// All of them: it shares the whole file.
    All,
    /// These: it is downloading the file. The map's length is the file's
    /// chunk count.
    Some(Bitmap),
}

/// Every message of protocol v1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    /// `req_id` 0 is about the connection, not a request.
    Error {
        req_id: u32,
        code: ErrorCode,
        message: String,
    },
    GetCatalog {
        req_id: u32,
        cursor: u32,
    },
    Catalog {
        req_id: u32,
        /// Changes whenever the sender's library changes.
        revision: u64,
        /// Cursor for the next page; `None` when this is the last.
        next: Option<u32>,
        entries: Vec<CatalogEntry>,
    },
    GetManifest {
        req_id: u32,
        id: FileId,
    },
    Manifest {
        req_id: u32,
        /// Canonical manifest encoding; check it against the ID asked for.
        bytes: Bytes,
    },
    GetChunk {
        req_id: u32,
        id: FileId,
        index: u32,
    },
    Chunk {
        req_id: u32,
        index: u32,
        data: Bytes,
    },
    /// Which chunks of `id` do you hold? With `subscribe` and a partial
    /// file, the server sends a further `Have` (same `req_id`) whenever that
    /// set grows, and ends the subscription with a last `Have` of `All`
    /// when the file is complete, an `Error` (`Unavailable`) if its download
    /// stops, when the client sends `Cancel` for this `req_id`, or when the
    /// connection ends. A first answer of `All` or an `Error` starts no
    /// subscription.
    GetHave {
        req_id: u32,
        id: FileId,
        subscribe: bool,
    },
    Have {
        req_id: u32,
        holding: Holding,
    },
    /// The client no longer wants the answer to request `req_id` (a chunk
    /// another peer delivered first, or a `Have` subscription). Never
    /// answered.
    Cancel {
        req_id: u32,
    },
}

impl Message {
    /// The request ID this message carries (0 for `Hello`).
    pub fn req_id(&self) -> u32 {
        match self {
            Message::Hello(_) => 0,
            Message::Error { req_id, .. }
            | Message::GetCatalog { req_id, .. }
            | Message::Catalog { req_id, .. }
            | Message::GetManifest { req_id, .. }
            | Message::Manifest { req_id, .. }
            | Message::GetChunk { req_id, .. }
            | Message::Chunk { req_id, .. }
            | Message::GetHave { req_id, .. }
            | Message::Have { req_id, .. }
            | Message::Cancel { req_id } => *req_id,
        }
    }
}

/// Why bytes are not a valid frame. Every variant means "drop this peer".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u32, max: u32 },
    #[error("empty frame")]
    EmptyFrame,
    #[error("unknown message kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("message kind 0x{kind:02x} is truncated or has trailing bytes")]
    BadLength { kind: u8 },
    #[error("not a peershare peer (bad handshake magic)")]
    BadMagic,
    #[error("peer speaks protocol version {0}, this node speaks version {PROTOCOL_VERSION}")]
    UnsupportedVersion(u16),
    #[error("unknown error code {0}")]
    UnknownErrorCode(u16),
    #[error("text field is not valid UTF-8")]
    BadUtf8,
    #[error("{what} is {len} bytes, more than the limit of {max}")]
    FieldTooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("bad boolean or option tag {0}")]
    BadTag(u8),
    #[error("have bitmap has bits set past its chunk count")]
    BadBitmap,
}

/// Reads the length prefix at the front of `buf` and checks it against
/// `max_frame_len`. `Ok(None)`: fewer than four bytes are buffered.
pub fn peek_frame_len(buf: &[u8], max_frame_len: u32) -> Result<Option<u32>, DecodeError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes"));
    if len == 0 {
        return Err(DecodeError::EmptyFrame);
    }
    if len > max_frame_len {
        return Err(DecodeError::FrameTooLarge {
            len,
            max: max_frame_len,
        });
    }
    Ok(Some(len))
}

/// Decodes one frame from the front of `buf`, consuming it. `Ok(None)`: not
/// enough bytes yet; `buf` is untouched and the caller should read more. At
/// most `max_frame_len` plus the prefix is ever needed in `buf`, and the
/// caller may reserve exactly that once [`peek_frame_len`] answers.
pub fn decode_frame(
    buf: &mut BytesMut,
    max_frame_len: u32,
) -> Result<Option<Message>, DecodeError> {
    let Some(len) = peek_frame_len(buf, max_frame_len)? else {
        return Ok(None);
    };
    let total = LEN_PREFIX + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    buf.advance(LEN_PREFIX);
    let frame = buf.split_to(len as usize).freeze();
    decode_body(frame).map(Some)
}

/// Decodes a frame's content (kind byte and body, without the prefix).
pub fn decode_body(mut frame: Bytes) -> Result<Message, DecodeError> {
    if frame.is_empty() {
        return Err(DecodeError::EmptyFrame);
    }
    let kind = frame.get_u8();
    let mut r = Reader { buf: frame, kind };
    let msg = match kind {
        kind::HELLO => {
            let magic = r.array::<4>()?;
            if magic != MAGIC {
                return Err(DecodeError::BadMagic);
            }
            let version = r.u16()?;
            if version != PROTOCOL_VERSION {
                // The layout after the version belongs to that version.
                return Err(DecodeError::UnsupportedVersion(version));
            }
            Message::Hello(Hello {
                version,
                node_id: NodeId(r.array()?),
                listen_port: r.u16()?,
                capabilities: r.u64()?,
            })
        }
        kind::ERROR => {
            let req_id = r.u32()?;
            let raw = r.u16()?;
            let code = ErrorCode::from_u16(raw).ok_or(DecodeError::UnknownErrorCode(raw))?;
            let message = r.string("error message", MAX_ERROR_MESSAGE_LEN)?;
            Message::Error {
                req_id,
                code,
                message,
            }
        }
        kind::GET_CATALOG => Message::GetCatalog {
            req_id: r.u32()?,
            cursor: r.u32()?,
        },
        kind::CATALOG => {
            let req_id = r.u32()?;
            let revision = r.u64()?;
            let next = match r.u8()? {
                0 => None,
                1 => Some(r.u32()?),
                t => return Err(DecodeError::BadTag(t)),
            };
            let count = r.u32()? as usize;
            // Each entry takes at least ID + size + name length bytes, so a
            // count larger than the frame allows is rejected before any
            // allocation sized by it.
            let min_entry = ID_LEN + 8 + 1 + 2;
            if count > r.buf.remaining() / min_entry {
                return Err(DecodeError::BadLength { kind });
            }
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                entries.push(CatalogEntry {
                    id: FileId(r.array()?),
                    size: r.u64()?,
                    flags: r.u8()?,
                    name: r.string("file name", MAX_NAME_LEN)?,
                });
            }
            Message::Catalog {
                req_id,
                revision,
                next,
                entries,
            }
        }
        kind::GET_MANIFEST => Message::GetManifest {
            req_id: r.u32()?,
            id: FileId(r.array()?),
        },
        kind::MANIFEST => {
            let req_id = r.u32()?;
            let bytes = r.rest();
            if bytes.len() > MAX_MANIFEST_LEN {
                return Err(DecodeError::FieldTooLong {
                    what: "manifest",
                    len: bytes.len(),
                    max: MAX_MANIFEST_LEN,
                });
            }
            Message::Manifest { req_id, bytes }
        }
        kind::GET_CHUNK => Message::GetChunk {
            req_id: r.u32()?,
            id: FileId(r.array()?),
            index: r.u32()?,
        },
        kind::CHUNK => {
            let req_id = r.u32()?;
            let index = r.u32()?;
            let data = r.rest();
            if data.len() > MAX_CHUNK_SIZE as usize {
                return Err(DecodeError::FieldTooLong {
                    what: "chunk",
                    len: data.len(),
                    max: MAX_CHUNK_SIZE as usize,
                });
            }
            Message::Chunk {
                req_id,
                index,
                data,
            }
        }
        kind::GET_HAVE => Message::GetHave {
            req_id: r.u32()?,
            id: FileId(r.array()?),
            subscribe: r.bool()?,
        },
        kind::HAVE => {
            let req_id = r.u32()?;
            let holding = match r.u8()? {
                0 => Holding::All,
                1 => {
                    let count = r.u32()?;
                    if count as u64 > MAX_CHUNK_COUNT {
                        return Err(DecodeError::FieldTooLong {
                            what: "have bitmap",
                            len: count as usize,
                            max: MAX_CHUNK_COUNT as usize,
                        });
                    }
                    // Checked before any allocation: the bytes must be in
                    // the frame already.
                    r.need(Bitmap::byte_len(count))?;
                    let bytes = r.buf.split_to(Bitmap::byte_len(count));
                    Holding::Some(Bitmap::from_bytes(count, &bytes).ok_or(DecodeError::BadBitmap)?)
                }
                t => return Err(DecodeError::BadTag(t)),
            };
            Message::Have { req_id, holding }
        }
        kind::CANCEL => Message::Cancel { req_id: r.u32()? },
        other => return Err(DecodeError::UnknownKind(other)),
    };
    if r.buf.has_remaining() {
        return Err(DecodeError::BadLength { kind });
    }
    Ok(msg)
}

struct Reader {
    buf: Bytes,
    kind: u8,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(DecodeError::BadLength { kind: self.kind })
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(DecodeError::BadTag(t)),
        }
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.need(N)?;
        let mut out = [0u8; N];
        self.buf.copy_to_slice(&mut out);
        Ok(out)
    }
    fn string(&mut self, what: &'static str, max: usize) -> Result<String, DecodeError> {
        let len = self.u16()? as usize;
        if len > max {
            return Err(DecodeError::FieldTooLong { what, len, max });
        }
        self.need(len)?;
        let raw = self.buf.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::BadUtf8)
    }
    fn rest(&mut self) -> Bytes {
        self.buf.split_to(self.buf.remaining())
    }
}

/// Why a message cannot be encoded (a field over its limit). Only a bug or
/// bad local data can cause it; the wire never sees such a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is {len} bytes, more than the limit of {max}")]
pub struct EncodeError {
    pub what: &'static str,
    pub len: usize,
    pub max: usize,
}

fn put_string(
    out: &mut BytesMut,
    what: &'static str,
    s: &str,
    max: usize,
) -> Result<(), EncodeError> {
    if s.len() > max {
        return Err(EncodeError {
            what,
            len: s.len(),
            max,
        });
    }
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
    Ok(())
}

/// Bytes a catalog entry takes on the wire.
pub fn catalog_entry_len(e: &CatalogEntry) -> usize {
    ID_LEN + 8 + 1 + 2 + e.name.len()
}

/// The prefix and header of a `Chunk` frame whose payload of `data_len`
/// bytes follows directly, so a server can send file bytes without copying
/// them into a frame buffer.
///
/// # Panics
/// If `data_len` exceeds [`MAX_CHUNK_SIZE`]: callers pass the length of a
/// chunk, which never does.
pub fn chunk_header(req_id: u32, index: u32, data_len: u32) -> [u8; 13] {
    assert!(
        data_len <= MAX_CHUNK_SIZE,
        "chunk of {data_len} bytes exceeds MAX_CHUNK_SIZE"
    );
    let mut h = [0u8; 13];
    h[..4].copy_from_slice(&(1 + 4 + 4 + data_len).to_be_bytes());
    h[4] = kind::CHUNK;
    h[5..9].copy_from_slice(&req_id.to_be_bytes());
    h[9..13].copy_from_slice(&index.to_be_bytes());
    h
}

impl Message {
    /// Appends this message as one whole frame (length prefix included).
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let start = out.len();
        out.put_u32(0); // patched below
        // Any field over its limit leaves `out` as it was.
        let body = (|| -> Result<(), EncodeError> {
            match self {
                Message::Hello(h) => {
                    out.put_u8(kind::HELLO);
                    out.put_slice(&MAGIC);
                    out.put_u16(h.version);
                    out.put_slice(h.node_id.as_bytes());
                    out.put_u16(h.listen_port);
                    out.put_u64(h.capabilities);
                }
                Message::Error {
                    req_id,
                    code,
                    message,
                } => {
                    out.put_u8(kind::ERROR);
                    out.put_u32(*req_id);
                    out.put_u16(*code as u16);
                    // Truncate on a character boundary rather than fail: an
                    // error report should always get through.
                    let mut end = message.len().min(MAX_ERROR_MESSAGE_LEN);
                    while !message.is_char_boundary(end) {
                        end -= 1;
                    }
                    put_string(out, "error message", &message[..end], MAX_ERROR_MESSAGE_LEN)?;
                }
                Message::GetCatalog { req_id, cursor } => {
                    out.put_u8(kind::GET_CATALOG);
                    out.put_u32(*req_id);
                    out.put_u32(*cursor);
                }
                Message::Catalog {
                    req_id,
                    revision,
                    next,
                    entries,
                } => {
                    out.put_u8(kind::CATALOG);
                    out.put_u32(*req_id);
                    out.put_u64(*revision);
                    match next {
                        None => out.put_u8(0),
                        Some(c) => {
                            out.put_u8(1);
                            out.put_u32(*c);
                        }
                    }
                    out.put_u32(entries.len() as u32);
                    for e in entries {
                        out.put_slice(e.id.as_bytes());
                        out.put_u64(e.size);
                        out.put_u8(e.flags);
                        put_string(out, "file name", &e.name, MAX_NAME_LEN)?;
                    }
                }
                Message::GetManifest { req_id, id } => {
                    out.put_u8(kind::GET_MANIFEST);
                    out.put_u32(*req_id);
                    out.put_slice(id.as_bytes());
                }
                Message::Manifest { req_id, bytes } => {
                    if bytes.len() > MAX_MANIFEST_LEN {
                        return Err(EncodeError {
                            what: "manifest",
                            len: bytes.len(),
                            max: MAX_MANIFEST_LEN,
                        });
                    }
                    out.put_u8(kind::MANIFEST);
                    out.put_u32(*req_id);
                    out.put_slice(bytes);
                }
                Message::GetChunk { req_id, id, index } => {
                    out.put_u8(kind::GET_CHUNK);
                    out.put_u32(*req_id);
                    out.put_slice(id.as_bytes());
                    out.put_u32(*index);
                }
                Message::Chunk {
                    req_id,
                    index,
                    data,
                } => {
                    if data.len() > MAX_CHUNK_SIZE as usize {
                        return Err(EncodeError {
                            what: "chunk",
                            len: data.len(),
                            max: MAX_CHUNK_SIZE as usize,
                        });
                    }
                    out.put_slice(&chunk_header(*req_id, *index, data.len() as u32)[LEN_PREFIX..]);
                    out.put_slice(data);
                }
                Message::GetHave {
                    req_id,
                    id,
                    subscribe,
                } => {
                    out.put_u8(kind::GET_HAVE);
                    out.put_u32(*req_id);
                    out.put_slice(id.as_bytes());
                    out.put_u8(u8::from(*subscribe));
                }
                Message::Have { req_id, holding } => {
                    out.put_u8(kind::HAVE);
                    out.put_u32(*req_id);
                    match holding {
                        Holding::All => out.put_u8(0),
                        Holding::Some(b) => {
                            if b.len() as u64 > MAX_CHUNK_COUNT {
                                return Err(EncodeError {
                                    what: "have bitmap",
                                    len: b.len() as usize,
                                    max: MAX_CHUNK_COUNT as usize,
                                });
                            }
                            out.put_u8(1);
                            out.put_u32(b.len());
                            out.put_slice(b.as_bytes());
                        }
                    }
                }
                Message::Cancel { req_id } => {
                    out.put_u8(kind::CANCEL);
                    out.put_u32(*req_id);
                }
            }
            Ok(())
        })();
        if let Err(e) = body {
            out.truncate(start);
            return Err(e);
        }
        let len = out.len() - start - LEN_PREFIX;
        if len > MAX_FRAME_LEN as usize {
            // No peer would accept it: refuse rather than send it.
            out.truncate(start);
            return Err(EncodeError {
                what: "frame",
                len,
                max: MAX_FRAME_LEN as usize,
            });
        }
        out[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }

    /// Convenience: this message as a fresh frame buffer.
    pub fn to_frame(&self) -> Result<BytesMut, EncodeError> {
        let mut out = BytesMut::new();
        self.encode(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_prefix_rejected_before_buffering() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            decode_frame(&mut buf, MAX_REQUEST_FRAME_LEN),
            Err(DecodeError::FrameTooLarge {
                len: u32::MAX,
                max: MAX_REQUEST_FRAME_LEN
            })
        );
    }

    #[test]
    fn partial_frame_is_need_more_and_untouched() {
        let frame = Message::GetCatalog {
            req_id: 1,
            cursor: 0,
        }
        .to_frame()
        .unwrap();
        let mut buf = BytesMut::from(&frame[..frame.len() - 1]);
        assert_eq!(decode_frame(&mut buf, MAX_FRAME_LEN), Ok(None));
        assert_eq!(buf.len(), frame.len() - 1);
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut frame = Message::GetCatalog {
            req_id: 1,
            cursor: 0,
        }
        .to_frame()
        .unwrap();
        frame.put_u8(0);
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            decode_frame(&mut frame, MAX_FRAME_LEN),
            Err(DecodeError::BadLength {
                kind: kind::GET_CATALOG
            })
        );
    }

    #[test]
    fn wrong_version_is_reported_as_such() {
        let mut frame = Message::Hello(Hello {
            version: 7,
            node_id: NodeId([0; 32]),
            listen_port: 0,
            capabilities: 0,
        })
        .to_frame()
        .unwrap();
        assert_eq!(
            decode_frame(&mut frame, MAX_FRAME_LEN),
            Err(DecodeError::UnsupportedVersion(7))
        );
    }

    #[test]
    fn huge_catalog_count_rejected_without_allocation() {
        let mut body = BytesMut::new();
        body.put_u8(kind::CATALOG);
        body.put_u32(1);
        body.put_u64(0);
        body.put_u8(0);
        body.put_u32(u32::MAX);
        assert_eq!(
            decode_body(body.freeze()),
            Err(DecodeError::BadLength {
                kind: kind::CATALOG
            })
        );
    }

    #[test]
    fn a_refused_field_leaves_the_buffer_as_it_was() {
        let mut out = BytesMut::from(&b"earlier frames"[..]);
        let msg = Message::Catalog {
            req_id: 1,
            revision: 0,
            next: None,
            entries: vec![CatalogEntry {
                id: FileId([0; 32]),
                size: 0,
                flags: 0,
                name: "n".repeat(MAX_NAME_LEN + 1),
            }],
        };
        assert!(msg.encode(&mut out).is_err());
        assert_eq!(&out[..], b"earlier frames");
    }

    #[test]
    fn encoder_refuses_frames_over_the_limit() {
        let entries = (0..9000u32)
            .map(|i| CatalogEntry {
                id: FileId([0; 32]),
                size: i as u64,
                flags: 0,
                name: "n".repeat(MAX_NAME_LEN),
            })
            .collect();
        let msg = Message::Catalog {
            req_id: 1,
            revision: 0,
            next: None,
            entries,
        };
        let mut out = BytesMut::from(&b"keep"[..]);
        let err = msg.encode(&mut out).unwrap_err();
        assert_eq!(err.what, "frame");
        assert_eq!(&out[..], b"keep", "nothing half-written is left");
    }

    #[test]
    #[should_panic(expected = "exceeds MAX_CHUNK_SIZE")]
    fn chunk_header_refuses_oversized_chunks() {
        chunk_header(0, 0, u32::MAX);
    }

    #[test]
    fn shared_names() {
        use NameError::*;
        let longest = "n".repeat(MAX_NAME_LEN);
        let too_long = "n".repeat(MAX_NAME_LEN + 1);
        let wide = "é".repeat(MAX_NAME_LEN / 2); // 2 bytes each
        let wider = format!("{wide}x");
        for (name, want) in [
            ("talk.mkv", Ok(())),
            ("papers/2024/a.pdf", Ok(())),
            ("dir/é", Ok(())),
            ("ÉTÉ été.txt", Ok(())),
            ("..a/b..", Ok(())),
            (".hidden/.x", Ok(())),
            ("back\\slash:colon", Ok(())), // safe_file_name's business
            ("CON", Ok(())),
            ("trailing. ", Ok(())),
            ("right\u{202e}to-left", Ok(())), // a format character, not a control
            (longest.as_str(), Ok(())),
            (wide.as_str(), Ok(())),
            ("", Err(Empty)),
            (too_long.as_str(), Err(TooLong)),
            (wider.as_str(), Err(TooLong)),
            ("/etc/passwd", Err(Absolute)),
            ("/", Err(Absolute)),
            ("a//b", Err(BadComponent)),
            ("a/", Err(BadComponent)),
            (".", Err(BadComponent)),
            ("..", Err(BadComponent)),
            ("a/./b", Err(BadComponent)),
            ("a/../../b", Err(BadComponent)),
            ("../x", Err(BadComponent)),
            ("line\nbreak", Err(Control)),
            ("a.txt\n0000 1 GiB fake.iso", Err(Control)),
            ("title\u{1b}]0;pwned\u{7}", Err(Control)),
            ("tab\there", Err(Control)),
            ("nul\0", Err(Control)),
            ("cr\r", Err(Control)),
            ("del\u{7f}", Err(Control)),
            ("csi\u{9b}31m", Err(Control)), // C1
            ("/\n", Err(Control)),          // the first reason found
        ] {
            assert_eq!(check_shared_name(name), want, "{name:?}");
        }
    }

    #[test]
    fn max_frame_len_fits_a_chunk_and_a_manifest() {
        assert!(MAX_FRAME_LEN as usize >= MAX_CHUNK_SIZE as usize + 9);
        assert!(MAX_FRAME_LEN as usize >= MAX_MANIFEST_LEN + 5);
    }
}
