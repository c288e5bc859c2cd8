//! Property tests for protocol v1 (`docs/PROTOCOL.md`): round trips of every
//! message kind, of manifests and of tickets; frames fed one byte at a time
//! and in arbitrary pieces; limits checked on the length prefix alone; `Have`
//! bitmaps laid out bit by bit as the spec says, with only their canonical
//! encoding accepted; and arbitrary or damaged input never making a decoder
//! panic.
//!
//! Case counts are kept moderate so the file runs in a few seconds in a
//! debug build; raise `PROPTEST_CASES` to search harder.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;

use peershare_proto::bitmap::Bitmap;
use peershare_proto::id::{FileId, ID_LEN, NodeId, sha256};
use peershare_proto::manifest::{
    MANIFEST_HEADER_LEN, MANIFEST_VERSION, MAX_CHUNK_COUNT, MAX_CHUNK_SIZE, MAX_FILE_SIZE,
    MIN_CHUNK_SIZE, Manifest, ManifestError, TARGET_CHUNK_COUNT, chunk_count, chunk_size_for,
};
use peershare_proto::ticket::{MAX_TICKET_ADDRS, MAX_TICKET_LEN, Ticket};
use peershare_proto::wire::{
    CatalogEntry, DecodeError, ErrorCode, Hello, Holding, LEN_PREFIX, MAX_ERROR_MESSAGE_LEN,
    MAX_FRAME_LEN, MAX_NAME_LEN, MAX_REQUEST_FRAME_LEN, Message, PROTOCOL_VERSION, decode_body,
    decode_frame, kind, peek_frame_len,
};

// ---------------------------------------------------------------------------
// Strategies.

/// The longest prefix of `s` that is at most `max` bytes and ends on a
/// character boundary: what the encoders keep of an over-long text.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// UTF-8 text of at most `max` bytes: short text of any characters, ASCII up
/// to the limit, and long text of any characters cut to the limit (which
/// often ends next to a multi-byte character).
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "\\PC{0,24}",
        1 => vec(any::<char>(), 0..=max).prop_map(move |cs| {
            let s: String = cs.into_iter().collect();
            cut(&s, max).to_owned()
        }),
        1 => vec(b'!'..=b'~', max - 2..=max).prop_map(|b| String::from_utf8(b).unwrap()),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(vec![
        ErrorCode::BadRequest,
        ErrorCode::UnsupportedVersion,
        ErrorCode::NotFound,
        ErrorCode::OutOfRange,
        ErrorCode::Unavailable,
        ErrorCode::Busy,
        ErrorCode::Internal,
        ErrorCode::NotTrusted,
    ])
}

fn file_id() -> impl Strategy<Value = FileId> {
    any::<[u8; ID_LEN]>().prop_map(FileId)
}

fn hello() -> impl Strategy<Value = Message> {
    (any::<[u8; ID_LEN]>(), any::<u16>(), any::<u64>()).prop_map(
        |(n, listen_port, capabilities)| {
            Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                node_id: NodeId(n),
                listen_port,
                capabilities,
            })
        },
    )
}

fn error() -> impl Strategy<Value = Message> {
    (any::<u32>(), error_code(), text(MAX_ERROR_MESSAGE_LEN)).prop_map(|(req_id, code, message)| {
        Message::Error {
            req_id,
            code,
            message,
        }
    })
}

fn get_catalog() -> impl Strategy<Value = Message> {
    (any::<u32>(), any::<u32>()).prop_map(|(req_id, cursor)| Message::GetCatalog { req_id, cursor })
}

fn catalog_entry() -> impl Strategy<Value = CatalogEntry> {
    (file_id(), any::<u64>(), any::<u8>(), text(MAX_NAME_LEN)).prop_map(
        |(id, size, flags, name)| CatalogEntry {
            id,
            size,
            flags,
            name,
        },
    )
}

fn catalog() -> impl Strategy<Value = Message> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<Option<u32>>(),
        vec(catalog_entry(), 0..5),
    )
        .prop_map(|(req_id, revision, next, entries)| Message::Catalog {
            req_id,
            revision,
            next,
            entries,
        })
}

fn get_manifest() -> impl Strategy<Value = Message> {
    (any::<u32>(), file_id()).prop_map(|(req_id, id)| Message::GetManifest { req_id, id })
}

/// The wire does not look inside manifest bytes, so any bytes do.
fn manifest_msg() -> impl Strategy<Value = Message> {
    (any::<u32>(), vec(any::<u8>(), 0..2048)).prop_map(|(req_id, b)| Message::Manifest {
        req_id,
        bytes: Bytes::from(b),
    })
}

fn get_chunk() -> impl Strategy<Value = Message> {
    (any::<u32>(), file_id(), any::<u32>()).prop_map(|(req_id, id, index)| Message::GetChunk {
        req_id,
        id,
        index,
    })
}

fn chunk() -> impl Strategy<Value = Message> {
    (any::<u32>(), any::<u32>(), vec(any::<u8>(), 0..4096)).prop_map(|(req_id, index, d)| {
        Message::Chunk {
            req_id,
            index,
            data: Bytes::from(d),
        }
    })
}

fn get_have() -> impl Strategy<Value = Message> {
    (any::<u32>(), file_id(), any::<bool>()).prop_map(|(req_id, id, subscribe)| Message::GetHave {
        req_id,
        id,
        subscribe,
    })
}

/// A set of chunk indices below `len`, from arbitrary bits.
fn bitmap_of(len: u32, bits: &[bool]) -> Bitmap {
    let mut b = Bitmap::new(len);
    for (i, &on) in bits.iter().enumerate().take(len as usize) {
        if on {
            b.set(i as u32);
        }
    }
    b
}

/// A bitmap of up to `max_len` chunks: any bits, or none, or all (the
/// shapes a download goes through).
fn bitmap(max_len: u32) -> impl Strategy<Value = Bitmap> {
    (0..=max_len).prop_flat_map(|len| {
        prop_oneof![
            4 => vec(any::<bool>(), len as usize).prop_map(move |bits| bitmap_of(len, &bits)),
            1 => Just(Bitmap::new(len)),
            1 => Just(Bitmap::full(len)),
        ]
    })
}

fn holding(max_len: u32) -> impl Strategy<Value = Holding> {
    prop_oneof![
        1 => Just(Holding::All),
        3 => bitmap(max_len).prop_map(Holding::Some),
    ]
}

/// Bitmaps in streams stay small (a few hundred bytes); `have_round_trips`
/// and the bitmap properties go up to `MAX_CHUNK_COUNT`.
fn have() -> impl Strategy<Value = Message> {
    (any::<u32>(), holding(2048)).prop_map(|(req_id, holding)| Message::Have { req_id, holding })
}

fn cancel() -> impl Strategy<Value = Message> {
    any::<u32>().prop_map(|req_id| Message::Cancel { req_id })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        hello(),
        error(),
        get_catalog(),
        catalog(),
        get_manifest(),
        manifest_msg(),
        get_have(),
        have(),
        get_chunk(),
        chunk(),
        cancel(),
    ]
}

/// What a client may send a server (after its `Hello`, or instead of it an
/// `Error`): these must fit `MAX_REQUEST_FRAME_LEN`. `Have` is a server's
/// answer, like `Catalog`, `Manifest` and `Chunk`.
fn is_request(m: &Message) -> bool {
    matches!(
        m,
        Message::Hello(_)
            | Message::Error { .. }
            | Message::GetCatalog { .. }
            | Message::GetManifest { .. }
            | Message::GetHave { .. }
            | Message::GetChunk { .. }
            | Message::Cancel { .. }
    )
}

/// The kind byte the spec gives each message.
fn kind_of(m: &Message) -> u8 {
    match m {
        Message::Hello(_) => kind::HELLO,
        Message::Error { .. } => kind::ERROR,
        Message::GetCatalog { .. } => kind::GET_CATALOG,
        Message::Catalog { .. } => kind::CATALOG,
        Message::GetManifest { .. } => kind::GET_MANIFEST,
        Message::Manifest { .. } => kind::MANIFEST,
        Message::GetHave { .. } => kind::GET_HAVE,
        Message::Have { .. } => kind::HAVE,
        Message::GetChunk { .. } => kind::GET_CHUNK,
        Message::Chunk { .. } => kind::CHUNK,
        Message::Cancel { .. } => kind::CANCEL,
    }
}

/// Every assigned kind; anything else is unknown (0x19 among them).
const ASSIGNED_KINDS: [u8; 11] = [
    kind::HELLO,
    kind::ERROR,
    kind::GET_CATALOG,
    kind::CATALOG,
    kind::GET_MANIFEST,
    kind::MANIFEST,
    kind::GET_HAVE,
    kind::HAVE,
    kind::GET_CHUNK,
    kind::CHUNK,
    kind::CANCEL,
];

/// Encodes `m`, checks the prefix, and decodes it back in every way a
/// receiver can: the result must be `m` itself.
fn round_trip(m: &Message) -> Result<(), TestCaseError> {
    let frame = m.to_frame().expect("within limits");
    let len = u32::from_be_bytes(frame[..LEN_PREFIX].try_into().unwrap());
    prop_assert_eq!(len as usize, frame.len() - LEN_PREFIX);
    prop_assert!(len <= MAX_FRAME_LEN);
    prop_assert_eq!(frame[LEN_PREFIX], kind_of(m));
    if !matches!(m, Message::Hello(_)) {
        // Every kind but Hello starts its body with the req_id.
        prop_assert_eq!(&frame[5..9], &m.req_id().to_be_bytes()[..]);
    }

    let mut buf = frame.clone();
    prop_assert_eq!(decode_frame(&mut buf, MAX_FRAME_LEN), Ok(Some(m.clone())));
    prop_assert!(buf.is_empty());
    prop_assert_eq!(
        decode_body(frame.clone().freeze().slice(LEN_PREFIX..)),
        Ok(m.clone())
    );
    if is_request(m) {
        // What a client sends, a server (with its small limit) accepts.
        let mut buf = frame.clone();
        prop_assert_eq!(
            decode_frame(&mut buf, MAX_REQUEST_FRAME_LEN),
            Ok(Some(m.clone()))
        );
    }
    // Appending to a non-empty buffer writes the same bytes.
    let mut out = BytesMut::from(&b"xyz"[..]);
    m.encode(&mut out).unwrap();
    prop_assert_eq!(&out[3..], &frame[..]);
    Ok(())
}

// ---------------------------------------------------------------------------
// Round trips, one per message kind.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn hello_round_trips(m in hello()) {
        round_trip(&m)?;
    }

    #[test]
    fn error_round_trips(m in error()) {
        round_trip(&m)?;
    }

    #[test]
    fn get_catalog_round_trips(m in get_catalog()) {
        round_trip(&m)?;
    }

    #[test]
    fn catalog_round_trips(m in catalog()) {
        round_trip(&m)?;
    }

    #[test]
    fn get_manifest_round_trips(m in get_manifest()) {
        round_trip(&m)?;
    }

    #[test]
    fn manifest_message_round_trips(m in manifest_msg()) {
        round_trip(&m)?;
    }

    #[test]
    fn get_chunk_round_trips(m in get_chunk()) {
        round_trip(&m)?;
    }

    #[test]
    fn chunk_round_trips(m in chunk()) {
        round_trip(&m)?;
    }

    #[test]
    fn get_have_round_trips(m in get_have()) {
        round_trip(&m)?;
    }

    #[test]
    fn cancel_round_trips(m in cancel()) {
        round_trip(&m)?;
    }

    /// An error message over the limit is cut on a character boundary, never
    /// refused: the decoded message is the longest prefix that fits.
    #[test]
    fn long_error_messages_are_cut_not_refused(
        req_id in any::<u32>(),
        code in error_code(),
        message in vec(any::<char>(), 0..1500).prop_map(|cs| cs.into_iter().collect::<String>()),
    ) {
        let sent = Message::Error { req_id, code, message: message.clone() };
        let mut frame = sent.to_frame().unwrap();
        let want = Message::Error { req_id, code, message: cut(&message, MAX_ERROR_MESSAGE_LEN).to_owned() };
        prop_assert_eq!(decode_frame(&mut frame, MAX_REQUEST_FRAME_LEN), Ok(Some(want)));
    }

    /// Names over MAX_NAME_LEN are refused by the encoder (a catalog is
    /// local data; cutting a name silently would misname a file).
    #[test]
    fn catalog_names_over_the_limit_are_refused(extra in 1usize..64, id in file_id()) {
        let m = Message::Catalog {
            req_id: 1,
            revision: 0,
            next: None,
            entries: vec![CatalogEntry { id, size: 0, flags: 0, name: "n".repeat(MAX_NAME_LEN + extra) }],
        };
        prop_assert!(m.to_frame().is_err());
    }
}

// ---------------------------------------------------------------------------
// Have bitmaps.

/// The frame of `Have { req_id: 1, Some }` with this count and these bitmap
/// bytes, built by hand from the spec's layout.
fn have_frame(count: u32, bitmap: &[u8]) -> BytesMut {
    let mut f = BytesMut::new();
    f.put_u32((1 + 4 + 1 + 4 + bitmap.len()) as u32);
    f.put_u8(kind::HAVE);
    f.put_u32(1);
    f.put_u8(1);
    f.put_u32(count);
    f.put_slice(bitmap);
    f
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any set of chunks below any count up to MAX_CHUNK_COUNT round-trips,
    /// and its bytes are the spec's layout: the count, then ceil(count / 8)
    /// bytes where chunk i is bit i % 8 (least significant first) of byte
    /// i / 8, and every bit past the count is zero.
    #[test]
    fn have_round_trips(
        req_id in any::<u32>(),
        len in prop_oneof![3 => 0u32..=2048, 1 => 0..=MAX_CHUNK_COUNT as u32],
        seed in vec(any::<u32>(), 0..200),
        dense in vec(any::<bool>(), 0..2048),
    ) {
        let mut b = bitmap_of(len, &dense);
        if len > 0 {
            for x in &seed {
                b.set(x % len);
            }
        }
        let m = Message::Have { req_id, holding: Holding::Some(b.clone()) };
        round_trip(&m)?;

        let frame = m.to_frame().unwrap();
        prop_assert_eq!(frame[9], 1, "holding tag Some");
        prop_assert_eq!(&frame[10..14], &len.to_be_bytes()[..]);
        let bytes = &frame[14..];
        prop_assert_eq!(bytes.len(), (len as usize).div_ceil(8));
        for i in 0..bytes.len() as u32 * 8 {
            let on = bytes[(i / 8) as usize] >> (i % 8) & 1 == 1;
            prop_assert_eq!(on, b.get(i), "bit {} of a {}-chunk map", i, len);
            if i >= len {
                prop_assert!(!on, "bit {} past the count {} is set", i, len);
            }
        }
    }

    #[test]
    fn have_all_and_small_bitmaps_round_trip(m in have()) {
        round_trip(&m)?;
    }

    /// A bitmap with any bit set past its count is refused as BadBitmap,
    /// whatever the bits within the count are: one set has one encoding.
    #[test]
    fn have_bitmaps_with_spare_bits_set_are_refused(
        len in 1u32..=4096,
        bits in vec(any::<bool>(), 0..4096),
        spare in any::<u8>(),
    ) {
        let used = len % 8;
        prop_assume!(used != 0, "no spare bits when the count fills its bytes");
        let mut bytes = bitmap_of(len, &bits).as_bytes().to_vec();
        // Some non-empty subset of the spare (high) bits of the last byte.
        let spare_mask = 0xffu8 << used;
        let extra = (spare & spare_mask).max(1 << used);
        *bytes.last_mut().unwrap() |= extra;
        let mut frame = have_frame(len, &bytes);
        prop_assert_eq!(decode_frame(&mut frame, MAX_FRAME_LEN), Err(DecodeError::BadBitmap));
        // The same frame with those bits clear is the canonical encoding.
        *bytes.last_mut().unwrap() &= !spare_mask;
        let mut frame = have_frame(len, &bytes);
        prop_assert_eq!(
            decode_frame(&mut frame, MAX_FRAME_LEN),
            Ok(Some(Message::Have { req_id: 1, holding: Holding::Some(bitmap_of(len, &bits)) }))
        );
    }

    /// A bitmap of any other byte length than ceil(count / 8) is malformed.
    #[test]
    fn have_bitmaps_of_the_wrong_length_are_refused(
        len in 0u32..=4096,
        delta in prop_oneof![-8i64..=-1, 1i64..=8],
        fill in any::<u8>(),
    ) {
        let want = (len as usize).div_ceil(8) as i64;
        prop_assume!(want + delta >= 0);
        let bytes = vec![fill & 0x01; (want + delta) as usize];
        let mut frame = have_frame(len, &bytes);
        prop_assert_eq!(
            decode_frame(&mut frame, MAX_FRAME_LEN),
            Err(DecodeError::BadLength { kind: kind::HAVE })
        );
    }

    /// A count over MAX_CHUNK_COUNT is refused from the count alone, however
    /// many bytes follow (none are needed to reject it, none are reserved).
    #[test]
    fn have_counts_over_the_limit_are_refused(
        over in 1u32..=u32::MAX - MAX_CHUNK_COUNT as u32,
        tail in vec(any::<u8>(), 0..16),
    ) {
        let count = MAX_CHUNK_COUNT as u32 + over;
        let mut frame = have_frame(count, &tail);
        prop_assert_eq!(
            decode_frame(&mut frame, MAX_FRAME_LEN),
            Err(DecodeError::FieldTooLong {
                what: "have bitmap",
                len: count as usize,
                max: MAX_CHUNK_COUNT as usize,
            })
        );
        // And the encoder never makes one.
        let m = Message::Have { req_id: 1, holding: Holding::Some(Bitmap::new(count.min(MAX_CHUNK_COUNT as u32 + 64))) };
        prop_assert!(m.to_frame().is_err());
    }

    /// The holding tag and GetHave's subscribe byte take 0 or 1, nothing else.
    #[test]
    fn tags_other_than_0_and_1_are_refused(tag in 2u8..=u8::MAX, id in file_id()) {
        let mut have = BytesMut::new();
        have.put_u32(6);
        have.put_u8(kind::HAVE);
        have.put_u32(1);
        have.put_u8(tag);
        prop_assert_eq!(decode_frame(&mut have, MAX_FRAME_LEN), Err(DecodeError::BadTag(tag)));

        let mut get_have = Message::GetHave { req_id: 1, id, subscribe: true }.to_frame().unwrap();
        let last = get_have.len() - 1;
        prop_assert_eq!(get_have[last], 1);
        get_have[last] = tag;
        prop_assert_eq!(decode_frame(&mut get_have, MAX_REQUEST_FRAME_LEN), Err(DecodeError::BadTag(tag)));
    }
}

// ---------------------------------------------------------------------------
// Streams: one byte at a time, and arbitrary pieces.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Several frames back to back, fed one byte at a time: `decode_frame`
    /// says "need more" (and leaves the buffer alone) until a frame is
    /// complete, then yields exactly that message and consumes exactly its
    /// bytes.
    #[test]
    fn byte_at_a_time_decoding(msgs in vec(message(), 1..6)) {
        let mut wire = BytesMut::new();
        let mut ends = Vec::new();
        for m in &msgs {
            m.encode(&mut wire).unwrap();
            ends.push(wire.len());
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut frame_start = 0;
        for (i, b) in wire.iter().enumerate() {
            buf.put_u8(*b);
            let fed = i + 1;
            match decode_frame(&mut buf, MAX_FRAME_LEN) {
                Ok(Some(m)) => {
                    prop_assert_eq!(fed, ends[got.len()], "a frame came out early or late");
                    prop_assert!(buf.is_empty(), "more than one frame consumed");
                    got.push(m);
                    frame_start = fed;
                }
                Ok(None) => {
                    prop_assert!(fed < ends[got.len()], "a complete frame was not decoded");
                    prop_assert_eq!(buf.len(), fed - frame_start, "a partial frame was consumed");
                }
                Err(e) => prop_assert!(false, "valid stream rejected at byte {}: {}", fed, e),
            }
        }
        prop_assert_eq!(got, msgs);
    }

    /// The same stream cut into arbitrary pieces, draining after each.
    #[test]
    fn arbitrary_pieces_decoding(
        msgs in vec(message(), 1..6),
        cuts in vec(1usize..700, 1..40),
    ) {
        let mut wire = BytesMut::new();
        for m in &msgs {
            m.encode(&mut wire).unwrap();
        }
        let mut rest = &wire[..];
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut cuts = cuts.into_iter().cycle();
        while !rest.is_empty() {
            let n = cuts.next().unwrap().min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(m) = decode_frame(&mut buf, MAX_FRAME_LEN).unwrap() {
                got.push(m);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, msgs);
    }
}

// ---------------------------------------------------------------------------
// Length prefix limits.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A prefix over the limit is refused from its four bytes alone, with
    /// nothing consumed, whatever follows.
    #[test]
    fn oversized_prefix_is_refused_from_four_bytes(
        limit in prop::sample::select(vec![MAX_REQUEST_FRAME_LEN, MAX_FRAME_LEN]),
        over in any::<u32>(),
        tail in vec(any::<u8>(), 0..8),
    ) {
        let len = limit + 1 + over % (u32::MAX - limit);
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        let err = DecodeError::FrameTooLarge { len, max: limit };
        prop_assert_eq!(peek_frame_len(&buf, limit), Err(err.clone()));
        prop_assert_eq!(decode_frame(&mut buf, limit), Err(err.clone()));
        prop_assert_eq!(buf.len(), LEN_PREFIX);
        buf.extend_from_slice(&tail);
        prop_assert_eq!(decode_frame(&mut buf, limit), Err(err));
    }

    /// A prefix within the limit waits for the rest, however large it is.
    #[test]
    fn prefix_within_limit_waits_for_the_frame(
        limit in prop::sample::select(vec![MAX_REQUEST_FRAME_LEN, MAX_FRAME_LEN]),
        len in any::<u32>(),
    ) {
        let len = 1 + len % limit;
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        prop_assert_eq!(decode_frame(&mut buf, limit), Ok(None));
        prop_assert_eq!(buf.len(), LEN_PREFIX);
    }

    /// Fewer than four bytes are always "need more", never an error.
    #[test]
    fn short_prefix_is_need_more(b in vec(any::<u8>(), 0..LEN_PREFIX)) {
        let mut buf = BytesMut::from(&b[..]);
        prop_assert_eq!(decode_frame(&mut buf, MAX_REQUEST_FRAME_LEN), Ok(None));
        prop_assert_eq!(buf.len(), b.len());
    }
}

#[test]
fn zero_length_prefix_is_an_empty_frame() {
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0, 1][..]);
    assert_eq!(
        decode_frame(&mut buf, MAX_FRAME_LEN),
        Err(DecodeError::EmptyFrame)
    );
    assert_eq!(decode_body(Bytes::new()), Err(DecodeError::EmptyFrame));
}

// ---------------------------------------------------------------------------
// Arbitrary and damaged input: never a panic, and whatever decodes is
// canonical (it re-encodes to exactly the bytes it came from).

/// Decodes frames from `bytes` until "need more" or an error; every message
/// that comes out must re-encode to exactly the bytes it consumed.
fn drain(bytes: &[u8], limit: u32) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    loop {
        let before = buf.clone();
        match decode_frame(&mut buf, limit) {
            Ok(Some(m)) => {
                let used = before.len() - buf.len();
                let re = m.to_frame().expect("a decoded message re-encodes");
                prop_assert_eq!(
                    &re[..],
                    &before[..used],
                    "decoding is not canonical for {:?}",
                    m
                );
            }
            Ok(None) => {
                prop_assert_eq!(buf.len(), before.len());
                return Ok(());
            }
            Err(_) => return Ok(()),
        }
    }
}

fn any_kind() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(ASSIGNED_KINDS.to_vec()),
        1 => any::<u8>(),
    ]
}

#[derive(Debug, Clone)]
enum Damage {
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Remove(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Set(i, b)),
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Insert(i, b)),
        any::<usize>().prop_map(Damage::Remove),
    ]
}

fn apply(frame: &mut Vec<u8>, d: &Damage) {
    let n = frame.len();
    match *d {
        Damage::Set(i, b) => frame[i % n] = b,
        Damage::Truncate(i) => frame.truncate(i % n),
        Damage::Insert(i, b) => frame.insert(i % (n + 1), b),
        Damage::Remove(i) => {
            frame.remove(i % n);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..300)) {
        drain(&bytes, MAX_FRAME_LEN)?;
        drain(&bytes, MAX_REQUEST_FRAME_LEN)?;
        let _ = decode_body(Bytes::from(bytes.clone()));
        let _ = Manifest::decode(&bytes);
        let _ = Ticket::from_bytes(&bytes);
        let _ = Ticket::<FileId>::from_str(&String::from_utf8_lossy(&bytes));
    }

    /// A random body behind a correct length prefix and a likely kind, so
    /// the body parsers (not just the prefix check) see arbitrary input.
    #[test]
    fn arbitrary_bodies_never_panic(k in any_kind(), body in vec(any::<u8>(), 0..200)) {
        let mut frame = Vec::with_capacity(body.len() + 5);
        frame.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
        frame.push(k);
        frame.extend_from_slice(&body);
        drain(&frame, MAX_FRAME_LEN)?;
        drain(&frame, MAX_REQUEST_FRAME_LEN)?;
    }

    /// Have-like bodies: a tag near 0 and 1, a small count and a few bitmap
    /// bytes, so the bitmap checks (not just the count limit) see arbitrary
    /// input. Whatever decodes re-encodes to the same bytes.
    #[test]
    fn arbitrary_have_bodies_never_panic(
        req_id in any::<u32>(),
        tag in 0u8..=2,
        count in prop_oneof![0u32..=40, Just(MAX_CHUNK_COUNT as u32), Just(MAX_CHUNK_COUNT as u32 + 1)],
        bytes in vec(any::<u8>(), 0..8),
        short in any::<bool>(),
    ) {
        let mut body = vec![kind::HAVE];
        body.extend_from_slice(&req_id.to_be_bytes());
        body.push(tag);
        if !short {
            body.extend_from_slice(&count.to_be_bytes());
        }
        body.extend_from_slice(&bytes);
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        drain(&frame, MAX_FRAME_LEN)?;
        if let Ok(Message::Have { holding: Holding::Some(b), .. }) = decode_body(Bytes::from(body)) {
            prop_assert_eq!(b.len(), count);
            prop_assert_eq!(b.as_bytes(), &bytes[..]);
        }
    }

    /// Every kind but the assigned ones is unknown, whatever the body.
    #[test]
    fn unassigned_kinds_are_unknown(k in any::<u8>(), body in vec(any::<u8>(), 0..16)) {
        prop_assume!(!ASSIGNED_KINDS.contains(&k));
        let mut b = vec![k];
        b.extend_from_slice(&body);
        prop_assert_eq!(decode_body(Bytes::from(b)), Err(DecodeError::UnknownKind(k)));
    }

    /// Valid frames with a few bytes changed, cut, added or removed.
    #[test]
    fn damaged_frames_never_panic(m in message(), damages in vec(damage(), 1..4)) {
        let mut frame = m.to_frame().unwrap().to_vec();
        for d in &damages {
            if frame.is_empty() {
                break;
            }
            apply(&mut frame, d);
        }
        drain(&frame, MAX_FRAME_LEN)?;
        if frame.len() > LEN_PREFIX {
            let _ = decode_body(Bytes::copy_from_slice(&frame[LEN_PREFIX..]));
        }
    }

    /// Manifest-like bytes: right version, random size, chunk size and hashes.
    #[test]
    fn arbitrary_manifests_never_panic(
        size in any::<u64>(),
        log2 in any::<u8>(),
        hashes in vec(any::<u8>(), 0..200),
    ) {
        let mut b = vec![MANIFEST_VERSION];
        b.extend_from_slice(&size.to_be_bytes());
        b.push(log2);
        b.extend_from_slice(&hashes);
        if let Ok(m) = Manifest::decode(&b) {
            prop_assert_eq!(m.encode(), b, "manifest decoding is not canonical");
        }
    }

    /// Ticket-like text: the prefix and base32 characters, damaged tickets.
    #[test]
    fn arbitrary_tickets_never_panic(
        body in "[a-zA-Z2-7]{0,300}",
        t in ticket(),
        damages in vec(damage(), 1..3),
    ) {
        if let Ok(t) = Ticket::<FileId>::from_str(&format!("ps1{body}")) {
            // Whatever parses is canonical: it prints as the text it came from.
            prop_assert_eq!(t.to_string(), format!("ps1{}", body.to_ascii_lowercase()));
        }
        let mut bytes = t.to_bytes();
        for d in &damages {
            if bytes.is_empty() {
                break;
            }
            apply(&mut bytes, d);
        }
        if let Ok(back) = Ticket::from_bytes(&bytes) {
            prop_assert_eq!(back.to_bytes(), bytes, "ticket decoding is not canonical");
        }
    }

    /// A valid ticket's text with characters changed (a copying accident):
    /// refused, or parsed to a ticket that prints as exactly that text.
    #[test]
    fn damaged_ticket_text_is_refused_or_canonical(
        t in ticket(),
        edits in vec((any::<usize>(), prop::sample::select(b"abcdefghijklmnopqrstuvwxyz234567".to_vec())), 1..3),
    ) {
        let mut text = t.to_string().into_bytes();
        for (at, c) in edits {
            let i = 3 + at % (text.len() - 3);
            text[i] = c;
        }
        let text = String::from_utf8(text).unwrap();
        if let Ok(back) = text.parse::<Ticket>() {
            prop_assert_eq!(back.to_string(), text);
        }
    }
}

// ---------------------------------------------------------------------------
// Manifests.

/// File sizes that exercise the chunk size rule: small files, files up to
/// the largest with at most TARGET_CHUNK_COUNT chunks, and sizes next to a
/// multiple of every power-of-two chunk size.
fn file_size() -> impl Strategy<Value = u64> {
    let max_target = TARGET_CHUNK_COUNT * MAX_CHUNK_SIZE as u64;
    prop_oneof![
        2 => 0u64..=4 << 20,
        1 => 0u64..=max_target,
        2 => (16u32..=23, 0u64..=TARGET_CHUNK_COUNT, -1i64..=1)
            .prop_map(|(log2, k, d)| ((k << log2) as i64 + d).max(0) as u64),
    ]
}

/// `n` distinct, arbitrary-looking chunk hashes derived from `seed`.
fn hashes(seed: u64, n: u64) -> Vec<[u8; ID_LEN]> {
    (0..n)
        .map(|i| {
            let mut input = [0u8; 16];
            input[..8].copy_from_slice(&seed.to_be_bytes());
            input[8..].copy_from_slice(&i.to_be_bytes());
            sha256(&input)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn manifest_round_trips(size in file_size(), seed in any::<u64>()) {
        let cs = chunk_size_for(size);
        let n = chunk_count(size, cs);
        let m = Manifest::new(size, hashes(seed, n)).unwrap();
        prop_assert_eq!(m.size(), size);
        prop_assert_eq!(m.chunk_size(), cs);
        prop_assert_eq!(m.chunk_count() as u64, n);

        let enc = m.encode();
        prop_assert_eq!(enc.len(), MANIFEST_HEADER_LEN + n as usize * ID_LEN);
        prop_assert_eq!(enc[0], MANIFEST_VERSION);
        prop_assert_eq!(&enc[1..9], &size.to_be_bytes()[..]);
        prop_assert_eq!(1u64 << enc[9], cs as u64);
        prop_assert_eq!(Manifest::decode(&enc), Ok(m.clone()));
        prop_assert_eq!(m.id(), FileId(sha256(&enc)));
        prop_assert_eq!(Manifest::decode_verified(&enc, &m.id()), Ok(m.clone()));

        // Chunks tile the file: contiguous, all full but the last.
        let mut next = 0u64;
        for i in 0..m.chunk_count() {
            let r = m.chunk_range(i).unwrap();
            prop_assert_eq!(r.start, next);
            prop_assert!(r.end > r.start);
            if i + 1 < m.chunk_count() {
                prop_assert_eq!(r.end - r.start, cs as u64);
            } else {
                prop_assert!(r.end - r.start <= cs as u64);
            }
            next = r.end;
        }
        prop_assert_eq!(next, size);
        prop_assert_eq!(m.chunk_range(m.chunk_count()), None);
    }

    /// Only the canonical encoding decodes: any other chunk size, another
    /// version, a hash too many or too few, or another ID is refused.
    #[test]
    fn non_canonical_manifests_are_refused(
        size in file_size(),
        seed in any::<u64>(),
        log2 in any::<u8>(),
        version in any::<u8>(),
    ) {
        let cs = chunk_size_for(size);
        let n = chunk_count(size, cs);
        let m = Manifest::new(size, hashes(seed, n)).unwrap();
        let enc = m.encode();

        if 1u64.checked_shl(log2 as u32) != Some(cs as u64) {
            let mut bad = enc.clone();
            bad[9] = log2;
            prop_assert_eq!(Manifest::decode(&bad), Err(ManifestError::ChunkSize { log2 }));
        }
        if version != MANIFEST_VERSION {
            let mut bad = enc.clone();
            bad[0] = version;
            prop_assert_eq!(Manifest::decode(&bad), Err(ManifestError::Version(version)));
        }
        let mut more = enc.clone();
        more.extend_from_slice(&[0; ID_LEN]);
        let is_hashes_len_err = matches!(Manifest::decode(&more), Err(ManifestError::HashesLength { .. }));
        prop_assert!(is_hashes_len_err);
        prop_assert!(Manifest::new(size, hashes(seed, n + 1)).is_err());
        if n > 0 {
            let is_hashes_len_err = matches!(
                Manifest::decode(&enc[..enc.len() - ID_LEN]),
                Err(ManifestError::HashesLength { .. })
            );
            prop_assert!(is_hashes_len_err);
            prop_assert!(Manifest::new(size, hashes(seed, n - 1)).is_err());
        }
        let other = FileId(sha256(&seed.to_be_bytes()));
        let is_id_err = matches!(Manifest::decode_verified(&enc, &other), Err(ManifestError::IdMismatch { .. }));
        prop_assert!(is_id_err);
    }

    /// The chunk size rule over every shareable size: a power of two within
    /// bounds, the smallest that gives at most TARGET_CHUNK_COUNT chunks,
    /// and never more than MAX_CHUNK_COUNT chunks.
    #[test]
    fn chunk_size_rule(size in prop_oneof![0..=MAX_FILE_SIZE, file_size()]) {
        let cs = chunk_size_for(size);
        prop_assert!(cs.is_power_of_two());
        prop_assert!((MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs));
        let n = chunk_count(size, cs);
        prop_assert!(n <= MAX_CHUNK_COUNT);
        if cs < MAX_CHUNK_SIZE {
            prop_assert!(n <= TARGET_CHUNK_COUNT);
        }
        if cs > MIN_CHUNK_SIZE {
            prop_assert!(chunk_count(size, cs / 2) > TARGET_CHUNK_COUNT, "a smaller chunk size would do");
        }
    }

    #[test]
    fn files_over_the_maximum_are_refused(over in 1u64..=u32::MAX as u64) {
        let size = MAX_FILE_SIZE + over;
        let is_too_large = matches!(Manifest::new(size, vec![]), Err(ManifestError::TooLarge { .. }));
        prop_assert!(is_too_large);
        let mut enc = vec![MANIFEST_VERSION];
        enc.extend_from_slice(&size.to_be_bytes());
        enc.push(chunk_size_for(size).trailing_zeros() as u8);
        let is_too_large = matches!(Manifest::decode(&enc), Err(ManifestError::TooLarge { .. }));
        prop_assert!(is_too_large);
    }
}

// ---------------------------------------------------------------------------
// Tickets.

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(Ipv4Addr::from(ip).into(), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(Ipv6Addr::from(ip).into(), port)),
    ]
}

fn ticket() -> impl Strategy<Value = Ticket> {
    (
        file_id(),
        any::<[u8; 32]>(),
        0..=peershare_proto::manifest::MAX_FILE_SIZE,
        any::<bool>(),
        text(MAX_NAME_LEN),
        vec(socket_addr(), 0..=MAX_TICKET_ADDRS),
    )
        .prop_map(|(id, node, size, unlisted, name, addrs)| Ticket {
            id,
            node: NodeId(node),
            size,
            unlisted,
            name,
            addrs,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn ticket_round_trips(t in ticket()) {
        let s = t.to_string();
        prop_assert!(s.starts_with("ps1"));
        prop_assert!(s[3..].bytes().all(|c| matches!(c, b'a'..=b'z' | b'2'..=b'7')), "{}", s);
        prop_assert!(s.len() <= MAX_TICKET_LEN);
        prop_assert_eq!(s.parse::<Ticket>(), Ok(t.clone()));
        prop_assert_eq!(Ticket::from_bytes(&t.to_bytes()), Ok(t.clone()));
        // As pasted: surrounding whitespace, or a body in upper case.
        prop_assert_eq!(format!("\n {s}\t").parse::<Ticket>(), Ok(t.clone()));
        prop_assert_eq!(format!("ps1{}", s[3..].to_ascii_uppercase()).parse::<Ticket>(), Ok(t));
    }

    /// Over-long names and address lists are cut on encode, so every ticket
    /// made parses, to the ticket within the limits.
    #[test]
    fn over_limit_tickets_are_cut(
        t in ticket(),
        long_name in vec(any::<char>(), MAX_NAME_LEN..MAX_NAME_LEN + 200),
        more in vec(socket_addr(), 1..8),
    ) {
        let mut big = t;
        big.name = long_name.into_iter().collect();
        big.addrs.extend(more);
        let back: Ticket = big.to_string().parse().unwrap();
        prop_assert_eq!(&back.name[..], cut(&big.name, MAX_NAME_LEN));
        prop_assert_eq!(&back.addrs[..], &big.addrs[..big.addrs.len().min(MAX_TICKET_ADDRS)]);
        prop_assert_eq!(back.id, big.id);
        prop_assert_eq!(back.size, big.size);
    }
}
