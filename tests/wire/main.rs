//! Wire protocol v2 against docs/PROTOCOL.md, without trusting src/ to say
//! what the protocol is:
//!
//! - `limits`: every documented limit of the frame codec, with frames built
//!   here byte by byte from the document;
//! - `vectors`: the v1 frames of an independent implementation
//!   (fixtures/protocol-vectors.json) for the types v2 did not change, the
//!   verdict v2 gives the others, and the v2 frame vectors
//!   (fixtures/v2-vectors.json);
//! - `connection`: one complete deterministic v2 connection
//!   (fixtures/v2-connection.json), recomputed by pex and by `model`, an
//!   independent implementation of the handshake and transport written from
//!   the document and the Noise specification;
//! - `transport`: the rules of the handshake and transport, with its keys;
//! - `props`: property tests: valid frames of every type, the same with one
//!   field broken, and arbitrary bytes, each against [`spec_verdict`], a
//!   decoder written here from the document;
//! - `manifest`: the manifest format, the same way.
//!
//! `fixtures`: how the v2 fixtures are regenerated.

#[path = "../common/mod.rs"]
mod common;
mod connection;
mod fixtures;
mod limits;
mod manifest;
mod model;
mod props;
mod transport;
mod vectors;

use bytes::BytesMut;
use pex::wire::{decode, Frame, FrameError};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// The numbers of docs/PROTOCOL.md, written out rather than taken from src/.

/// Section 3: largest `L` = 1 (type) + 32 (hash) + 1,048,576 (one blob).
const SPEC_MAX_L: usize = 1_048_609;
/// Section 1: a blob is at most 1 MiB.
const SPEC_MAX_BLOB: usize = 1_048_576;
/// Section 4.3: PEERS carries 0 to 50 entries ...
const SPEC_MAX_PEERS: usize = 50;
/// ... of 50 bytes: node id, IPv6 address, port.
const SPEC_PEER_ENTRY: usize = 50;
/// Section 4.4: HELLO body: "PEX", version, node id, port, flags, signature.
const SPEC_HELLO: usize = 103;
/// Section 4.6: BITFIELD body before its bits: root and first piece index.
const SPEC_BITFIELD_HEAD: usize = 36;
/// Section 4.8: REJECT body before its reason: code and retry-after.
const SPEC_REJECT_HEAD: usize = 3;
/// Section 4.8: a REJECT reason is at most 200 bytes.
const SPEC_MAX_REASON: usize = 200;
/// Section 4.14: room, id, origin, hops, signature.
const SPEC_MESSAGE_HEAD: usize = 145;
/// Section 4.15: room and id.
const SPEC_DIRECT_HEAD: usize = 48;
/// Section 4.16: room, origin, seq, state, hops, signature.
const SPEC_PRESENCE_LEN: usize = 138;
/// Sections 4.14 and 4.15: the largest payload.
const SPEC_MAX_PAYLOAD: usize = 65_536;
/// Section 6: a file name is at most 255 bytes.
const SPEC_MAX_NAME: usize = 255;
/// Section 6: piece size.
const SPEC_PIECE: u64 = 1 << 20;
/// Section 6: piece hashes per hash list.
const SPEC_PER_LIST: u64 = 32_768;

/// A complete frame as section 3 draws it: `L` (u32 BE), type, body.
fn raw_frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(kind);
    v.extend_from_slice(body);
    v
}

/// Decodes `bytes` as one whole frame: the frame, or the error, and whether
/// every byte was consumed.
fn decode_all(bytes: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let mut buf = BytesMut::from(bytes);
    let frame = decode(&mut buf)?;
    Ok(frame.map(|f| (f, bytes.len() - buf.len())))
}

/// Asserts `bytes` is one legal frame, consumed whole, re-encoding to itself.
fn assert_accepted(bytes: &[u8], what: &str) -> Frame {
    match decode_all(bytes) {
        Ok(Some((frame, used))) => {
            assert_eq!(used, bytes.len(), "{what}: consumed {used} of {} bytes", bytes.len());
            assert!(frame.to_bytes()[..] == bytes[..], "{what}: re-encoding differs");
            frame
        }
        Ok(None) => panic!("{what}: decoder waits for more bytes"),
        Err(e) => panic!("{what}: refused: {e}"),
    }
}

fn assert_refused(bytes: &[u8], what: &str) -> FrameError {
    match decode_all(bytes) {
        Err(e) => e,
        Ok(Some((frame, _))) => panic!("{what}: accepted as {}", frame.name()),
        Ok(None) => panic!("{what}: decoder waits for more bytes instead of refusing"),
    }
}

/// One PEERS entry as section 4.3 lays it out: node id, IPv6 address, port.
/// Even `i`: an IPv4 peer (::ffff:10.0.x.y); odd: 2001:db8::i.
fn peer_entry(i: usize) -> [u8; 50] {
    let mut e = [0u8; 50];
    e[..32].copy_from_slice(&pex::Hash::of(&(i as u64).to_be_bytes()).0);
    let ip = &mut e[32..48];
    if i % 2 == 0 {
        ip[10] = 0xff;
        ip[11] = 0xff;
        ip[12..16].copy_from_slice(&[10, 0, (i >> 8) as u8, i as u8]);
    } else {
        ip[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        ip[14..16].copy_from_slice(&(i as u16).to_be_bytes());
    }
    e[48..].copy_from_slice(&(1000 + i as u16).to_be_bytes());
    e
}

/// A HELLO body as section 4.4 lays it out.
fn hello_body(version: u8, node_id: &[u8; 32], port: u16, flags: u8, signature: &[u8; 64]) -> Vec<u8> {
    let mut v = b"PEX".to_vec();
    v.push(version);
    v.extend_from_slice(node_id);
    v.extend_from_slice(&port.to_be_bytes());
    v.push(flags);
    v.extend_from_slice(signature);
    v
}

/// A BITFIELD body as section 4.6 lays it out.
fn bitfield_body(root: &[u8; 32], first: u32, bits: &[u8]) -> Vec<u8> {
    [&root[..], &first.to_be_bytes(), bits].concat()
}

/// A REJECT body as section 4.8 lays it out.
fn reject_body(code: u8, retry_after: u16, reason: &[u8]) -> Vec<u8> {
    [&[code][..], &retry_after.to_be_bytes(), reason].concat()
}

/// What sections 3 and 4 of docs/PROTOCOL.md make of the bytes at the start of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Not a whole frame yet, and nothing wrong so far.
    NeedMore,
    /// A protocol violation.
    Violation,
    /// A legal frame of this many bytes, prefix included.
    Frame(usize),
}

fn spec_verdict(b: &[u8]) -> Verdict {
    if b.len() < 4 {
        return Verdict::NeedMore;
    }
    let l = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    if l > SPEC_MAX_L {
        return Verdict::Violation;
    }
    if b.len() < 4 + l {
        return Verdict::NeedMore;
    }
    if l == 0 {
        return Verdict::Frame(4);
    }
    let body = &b[5..4 + l];
    let legal = match b[4] {
        0 | 4 | 8 => body.len() == 32,
        1 => body.len() >= 32 && body.len() - 32 <= SPEC_MAX_BLOB,
        2 => body.len() % SPEC_PEER_ENTRY == 0 && body.len() / SPEC_PEER_ENTRY <= SPEC_MAX_PEERS,
        3 => body.len() == SPEC_HELLO && &body[..3] == b"PEX" && body[3] == 2,
        5 => {
            body.len() >= SPEC_BITFIELD_HEAD && {
                let first = u32::from_be_bytes(body[32..36].try_into().unwrap()) as u64;
                first + 8 * (body.len() - SPEC_BITFIELD_HEAD) as u64 <= 1 << 32
            }
        }
        6 => body.len() == 36,
        9 | 10 => body.len() == 32,
        11 => {
            body.len() >= 32
                && (body.len() - 32) % SPEC_PEER_ENTRY == 0
                && (body.len() - 32) / SPEC_PEER_ENTRY <= SPEC_MAX_PEERS
        }
        12 => (SPEC_MESSAGE_HEAD..=SPEC_MESSAGE_HEAD + SPEC_MAX_PAYLOAD).contains(&body.len()),
        13 => (SPEC_DIRECT_HEAD..=SPEC_DIRECT_HEAD + SPEC_MAX_PAYLOAD).contains(&body.len()),
        14 => body.len() == SPEC_PRESENCE_LEN,
        7 => {
            (SPEC_REJECT_HEAD..=SPEC_REJECT_HEAD + SPEC_MAX_REASON).contains(&body.len())
                && std::str::from_utf8(&body[SPEC_REJECT_HEAD..]).is_ok()
        }
        _ => true,
    };
    if legal {
        Verdict::Frame(4 + l)
    } else {
        Verdict::Violation
    }
}

/// Decodes frame after frame off `bytes` until one is incomplete or refused,
/// checking every step against [`spec_verdict`]: an accepted frame consumes
/// exactly its bytes and re-encodes to them, an incomplete one consumes nothing.
/// Returns how many frames were accepted.
fn decode_like_the_spec(bytes: &[u8]) -> Result<usize, TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    let (mut at, mut frames) = (0, 0);
    loop {
        let rest = &bytes[at..];
        let verdict = spec_verdict(rest);
        match (verdict, decode(&mut buf)) {
            (Verdict::NeedMore, Ok(None)) => {
                prop_assert_eq!(buf.len(), rest.len(), "an incomplete frame consumed bytes");
                return Ok(frames);
            }
            (Verdict::Violation, Err(_)) => return Ok(frames),
            (Verdict::Frame(len), Ok(Some(frame))) => {
                prop_assert_eq!(rest.len() - buf.len(), len, "consumed the wrong number of bytes");
                prop_assert!(frame.to_bytes()[..] == rest[..len], "{} re-encodes differently", frame.name());
                at += len;
                frames += 1;
            }
            (verdict, got) => {
                let got = got.map(|f| f.map(|f| f.name()));
                let head = &rest[..rest.len().min(48)];
                prop_assert!(
                    false,
                    "at offset {at} the spec says {verdict:?}, decode gives {got:?}; bytes {head:02x?}…"
                );
            }
        }
    }
}

/// The name of a `FrameError` variant, as the v2 vectors give it.
fn error_name(e: &FrameError) -> &'static str {
    match e {
        FrameError::TooLong(_) => "TooLong",
        FrameError::BadLength { .. } => "BadLength",
        FrameError::BitfieldRange { .. } => "BitfieldRange",
        FrameError::BadMagic => "BadMagic",
        FrameError::BadVersion(_) => "BadVersion",
        FrameError::ReasonNotUtf8 => "ReasonNotUtf8",
    }
}

/// docs/PROTOCOL.md, for the tests that check it quotes the fixtures.
fn protocol_doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap()
}
