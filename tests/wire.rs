//! The codec against golden frames from an independent implementation
//! (fixtures/protocol-vectors.json), the manifest fixture, the limits of
//! docs/PROTOCOL.md (checked with frames and manifests built here from the
//! document, not with the encoder), and property tests: valid frames and
//! manifests of every kind, the same with one field broken, and arbitrary
//! bytes, each checked against a decoder or parser written here from the document.

mod common;

use bytes::{Bytes, BytesMut};
use common::hex;
use pex::manifest::{FileInfo, Manifest, ManifestError};
use pex::wire::{decode, frame_size, Frame, FrameError, Hello, RejectCode};
use pex::{Hash, NodeId};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

// ---------------------------------------------------------------------------
// The numbers of docs/PROTOCOL.md, written out rather than taken from src/.

/// Section 2: largest `L` = 1 (type) + 32 (hash) + 1,048,576 (one blob).
const SPEC_MAX_L: usize = 1_048_609;
/// Section 1: a blob is at most 1 MiB.
const SPEC_MAX_BLOB: usize = 1_048_576;
/// Section 3: PEERS carries 0 to 50 entries of 18 bytes.
const SPEC_MAX_PEERS: usize = 50;
/// Section 3.8: a REJECT reason is at most 200 bytes.
const SPEC_MAX_REASON: usize = 200;
/// Section 5: a file name is at most 255 bytes.
const SPEC_MAX_NAME: usize = 255;
/// Section 5: piece size.
const SPEC_PIECE: u64 = 1 << 20;
/// Section 5: piece hashes per hash list.
const SPEC_PER_LIST: u64 = 32_768;

/// A complete frame as section 2 draws it: `L` (u32 BE), type, body.
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

fn assert_refused(bytes: &[u8], what: &str) {
    match decode_all(bytes) {
        Err(_) => {}
        Ok(Some((frame, _))) => panic!("{what}: accepted as {}", frame.name()),
        Ok(None) => panic!("{what}: decoder waits for more bytes instead of refusing"),
    }
}

/// One PEERS entry as section 3.3 lays it out: IPv6 address, port.
fn peer_entry(i: usize) -> [u8; 18] {
    let mut e = [0u8; 18];
    if i % 2 == 0 {
        // ::ffff:10.0.x.y, an IPv4 peer
        e[10] = 0xff;
        e[11] = 0xff;
        e[12..16].copy_from_slice(&[10, 0, (i >> 8) as u8, i as u8]);
    } else {
        // 2001:db8::i
        e[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        e[14..16].copy_from_slice(&(i as u16).to_be_bytes());
    }
    e[16..].copy_from_slice(&(1000 + i as u16).to_be_bytes());
    e
}

/// A manifest laid out field by field as the table of section 5 gives it.
fn raw_manifest(size: u64, name: &[u8], count: u32, hashes: &[[u8; 32]]) -> Vec<u8> {
    let mut v = b"PEXM".to_vec();
    v.push(1);
    v.extend_from_slice(&1_048_576u32.to_be_bytes());
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&(name.len() as u16).to_be_bytes());
    v.extend_from_slice(name);
    v.extend_from_slice(&count.to_be_bytes());
    for h in hashes {
        v.extend_from_slice(h);
    }
    v
}

/// `c = ⌈⌈size / 2^20⌉ / 32768⌉` (section 5), with the piece count.
fn spec_pieces_and_lists(size: u64) -> (u64, u64) {
    let pieces = size / SPEC_PIECE + u64::from(size % SPEC_PIECE != 0);
    (pieces, pieces / SPEC_PER_LIST + u64::from(pieces % SPEC_PER_LIST != 0))
}

/// Distinct made-up list hashes.
fn fake_hashes(n: usize) -> Vec<[u8; 32]> {
    (0..n as u32).map(|i| Hash::of(&i.to_be_bytes()).0).collect()
}

/// What sections 2 and 3 of docs/PROTOCOL.md make of the bytes at the start of a stream.
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
        2 => body.len() % 18 == 0 && body.len() / 18 <= SPEC_MAX_PEERS,
        3 => body.len() == 38 && &body[..3] == b"PEX" && body[3] == 1,
        5 => body.len() >= 32,
        6 => body.len() == 36,
        7 => (1..=1 + SPEC_MAX_REASON).contains(&body.len()) && std::str::from_utf8(&body[1..]).is_ok(),
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

// ---------------------------------------------------------------------------
// Exactly at every documented limit.

#[test]
fn the_codes_constants_are_the_documented_numbers() {
    use pex::manifest::{HASHES_PER_LIST, MAX_NAME_LEN, PIECE_SIZE};
    use pex::wire::{HELLO_LEN, MAX_BLOB_LEN, MAX_FRAME_LEN, MAX_PEERS_PER_FRAME, MAX_REJECT_REASON, PEER_ENTRY_LEN};
    assert_eq!(MAX_FRAME_LEN, SPEC_MAX_L);
    assert_eq!(MAX_BLOB_LEN, SPEC_MAX_BLOB);
    assert_eq!(MAX_PEERS_PER_FRAME, SPEC_MAX_PEERS);
    assert_eq!(MAX_REJECT_REASON, SPEC_MAX_REASON);
    assert_eq!(HELLO_LEN, 38);
    assert_eq!(PEER_ENTRY_LEN, 18);
    assert_eq!(MAX_NAME_LEN, SPEC_MAX_NAME);
    assert_eq!(PIECE_SIZE, SPEC_PIECE);
    assert_eq!(HASHES_PER_LIST, SPEC_PER_LIST);
}

#[test]
fn peers_with_50_entries_is_accepted_and_51_refused() {
    let body: Vec<u8> = (0..SPEC_MAX_PEERS + 1).flat_map(peer_entry).collect();
    let fifty = raw_frame(2, &body[..18 * SPEC_MAX_PEERS]);
    let Frame::Peers(peers) = assert_accepted(&fifty, "PEERS of 50") else { panic!("PEERS of 50: not PEERS") };
    assert_eq!(peers.len(), 50);
    assert_eq!(peers[0], "10.0.0.0:1000".parse().unwrap(), "IPv4-mapped entries decode to IPv4");
    assert_eq!(peers[49], "[2001:db8::31]:1049".parse().unwrap());
    assert_eq!(Frame::Peers(peers).to_bytes()[..], fifty[..], "the encoder writes 50 entries the same way");
    assert_refused(&raw_frame(2, &body), "PEERS of 51");
    for extra in 1..18 {
        assert_refused(&raw_frame(2, &body[..18 * SPEC_MAX_PEERS + extra]), "PEERS of 50 entries and a fragment");
        assert_refused(&raw_frame(2, &body[..18 * 3 + extra]), "PEERS of 3 entries and a fragment");
    }
    assert_accepted(&raw_frame(2, &[]), "PEERS of 0");
}

#[test]
fn reject_reason_of_200_bytes_is_accepted_and_201_refused() {
    for code in [0u8, 1, 3, 6, 7, 255] {
        for reason in ["a".repeat(200), "é".repeat(100), "😀".repeat(50), format!("{}ab", "€".repeat(66))] {
            assert_eq!(reason.len(), SPEC_MAX_REASON);
            let mut body = vec![code];
            body.extend_from_slice(reason.as_bytes());
            let frame = assert_accepted(&raw_frame(7, &body), "REJECT with a 200-byte reason");
            assert_eq!(frame, Frame::Reject { code, reason: reason.clone() });
            body.push(b'!');
            assert_refused(&raw_frame(7, &body), "REJECT with a 201-byte reason");
            // 201 bytes that are valid UTF-8 all the same: 199 + "é"
            let long = format!("{}é", "a".repeat(199));
            let mut body = vec![code];
            body.extend_from_slice(long.as_bytes());
            assert_refused(&raw_frame(7, &body), "REJECT with a 201-byte UTF-8 reason");
        }
        // body length 1 (code, empty reason) is the lower limit; 0 is a violation.
        assert_eq!(
            assert_accepted(&raw_frame(7, &[code]), "REJECT without reason"),
            Frame::Reject { code, reason: String::new() }
        );
    }
    assert_refused(&raw_frame(7, &[]), "REJECT with an empty body");
    for bad in [&[0xffu8][..], &[0x80], &[0xc3], &[0xc0, 0xaf], &[0xed, 0xa0, 0x80], &[b'a', 0xe2, 0x82]] {
        let mut body = vec![3];
        body.extend_from_slice(bad);
        assert_refused(&raw_frame(7, &body), "REJECT whose reason is not UTF-8");
    }
}

#[test]
fn frame_reject_truncates_to_200_bytes_on_a_char_boundary() {
    let cases: [(String, usize); 9] = [
        ("a".repeat(199), 199),
        ("a".repeat(200), 200),
        ("a".repeat(201), 200),
        ("a".repeat(5000), 200),
        ("é".repeat(150), 200),
        (format!("a{}", "é".repeat(150)), 199),
        ("€".repeat(100), 198),
        ("😀".repeat(60), 200),
        (format!("a{}", "😀".repeat(60)), 197),
    ];
    for (input, want) in cases {
        let frame = Frame::reject(RejectCode::Misbehaving, input.clone());
        let Frame::Reject { code, reason } = &frame else { panic!("not a REJECT") };
        assert_eq!(*code, 5);
        assert_eq!(reason.len(), want, "{} bytes of {:?}…", input.len(), &input[..8]);
        assert!(input.starts_with(reason.as_str()));
        assert_accepted(&frame.to_bytes(), "a truncated REJECT");
    }
}

#[test]
fn the_largest_frame_is_accepted_and_one_byte_more_refused_from_the_prefix_alone() {
    let data = common::data(SPEC_MAX_BLOB, 1);
    let hash = Hash::of(&data);
    let mut body = hash.0.to_vec();
    body.extend_from_slice(&data);
    let give = raw_frame(1, &body);
    assert_eq!(give.len(), 4 + SPEC_MAX_L);
    let frame = assert_accepted(&give, "GIVE of 1 MiB");
    assert_eq!(frame, Frame::Give { hash, data: Bytes::from(data.clone()) });
    // Every other type at the same L: BITFIELD (32 + 1 MiB of bits) and an unknown type.
    assert_accepted(&raw_frame(5, &body), "BITFIELD at the largest L");
    assert_accepted(&raw_frame(9, &body), "unknown type 9 at the largest L");
    assert_accepted(&raw_frame(255, &body), "unknown type 255 at the largest L");
    // The largest prefix waits for its body rather than being refused.
    let max_prefix = (SPEC_MAX_L as u32).to_be_bytes();
    assert_eq!(decode_all(&max_prefix), Ok(None));
    assert_eq!(decode_all(&give[..give.len() - 1]), Ok(None));
    assert_eq!(frame_size(&max_prefix), Ok(Some(4 + SPEC_MAX_L)));

    // L = 1,048,610: refused from the 4 prefix bytes, whatever follows or not.
    let over = ((SPEC_MAX_L + 1) as u32).to_be_bytes();
    assert_eq!(decode_all(&over), Err(FrameError::TooLong(SPEC_MAX_L + 1)));
    assert_eq!(decode_all(&[&over[..], &[1, 2, 3]].concat()), Err(FrameError::TooLong(SPEC_MAX_L + 1)));
    assert!(frame_size(&over).is_err());
    let mut body_over = body.clone();
    body_over.push(0);
    for kind in [1, 5, 9, 255] {
        assert_refused(&raw_frame(kind, &body_over), "a whole frame one byte over the largest L");
    }
    let too_big = Frame::Give { hash, data: Bytes::from([&data[..], &[0]].concat()) };
    assert_refused(&too_big.to_bytes(), "GIVE of 1 MiB + 1");
    for l in [SPEC_MAX_L as u32 + 1, 1 << 21, 1 << 31, u32::MAX] {
        assert!(decode_all(&l.to_be_bytes()).is_err(), "L = {l} refused from the prefix");
    }
    // Fewer than 4 bytes are not yet a prefix at all.
    for cut in 0..4 {
        assert_eq!(decode_all(&over[..cut]), Ok(None));
    }
}

#[test]
fn every_documented_reject_code_maps_to_its_variant() {
    let table = [
        (1, RejectCode::Duplicate),
        (2, RejectCode::PeerLimit),
        (3, RejectCode::ProtocolViolation),
        (4, RejectCode::SelfConnection),
        (5, RejectCode::Misbehaving),
        (6, RejectCode::ShuttingDown),
    ];
    for (byte, variant) in table {
        assert_eq!(RejectCode::from_u8(byte), Some(variant), "code {byte}");
        assert_eq!(variant as u8, byte);
        let frame = Frame::reject(variant, "x");
        assert_eq!(assert_accepted(&raw_frame(7, &[byte, b'x']), "REJECT"), frame);
    }
    for byte in [0u8, 7, 255] {
        assert_eq!(RejectCode::from_u8(byte), None, "code {byte}");
    }
    for byte in 7..=255u8 {
        assert_eq!(RejectCode::from_u8(byte), None, "code {byte}");
        // Section 3.8: other codes still decode, kept as they are.
        assert_eq!(
            assert_accepted(&raw_frame(7, &[byte]), "REJECT"),
            Frame::Reject { code: byte, reason: String::new() }
        );
    }
}

#[test]
fn hello_of_any_other_version_or_magic_is_refused() {
    let mut body = b"PEX\x01".to_vec();
    body.extend_from_slice(&[7u8; 32]);
    body.extend_from_slice(&9000u16.to_be_bytes());
    assert_accepted(&raw_frame(3, &body), "HELLO");
    for version in [0u8, 2, 3, 0x7f, 0xff] {
        let mut b = body.clone();
        b[3] = version;
        assert_refused(&raw_frame(3, &b), "HELLO of another version");
    }
    for (i, c) in [(0, b'p'), (1, b'e'), (2, b'x'), (0, 0), (2, b'Y')] {
        let mut b = body.clone();
        b[i] = c;
        assert_refused(&raw_frame(3, &b), "HELLO with bad magic");
    }
    assert_refused(&raw_frame(3, &body[..37]), "HELLO of 37 bytes");
    assert_refused(&raw_frame(3, &[&body[..], &[0]].concat()), "HELLO of 39 bytes");
}

#[test]
fn manifest_name_of_255_bytes_is_accepted_and_256_refused() {
    let hashes = fake_hashes(1);
    let names_255 = ["a".repeat(255), format!("{}a", "é".repeat(127)), format!("{}abc", "😀".repeat(63))];
    for name in names_255 {
        assert_eq!(name.len(), SPEC_MAX_NAME);
        let blob = raw_manifest(13, name.as_bytes(), 1, &hashes);
        let m = Manifest::parse(&blob).unwrap_or_else(|e| panic!("255-byte name refused: {e}"));
        assert_eq!(m.name, name);
        assert_eq!(m.encode()[..], blob[..]);
    }
    for name in ["a".repeat(256), "é".repeat(128), "😀".repeat(64), "a".repeat(1000)] {
        let blob = raw_manifest(13, name.as_bytes(), 1, &hashes);
        assert!(
            matches!(Manifest::parse(&blob), Err(ManifestError::BadName(_))),
            "{}-byte name: {:?}",
            name.len(),
            Manifest::parse(&blob)
        );
    }
    // A 1-byte name is the lower limit; an empty one is refused.
    assert!(Manifest::parse(&raw_manifest(13, b"x", 1, &hashes)).is_ok());
    assert!(matches!(Manifest::parse(&raw_manifest(13, b"", 1, &hashes)), Err(ManifestError::BadName(_))));
}

#[test]
fn manifest_names_follow_the_documented_rules() {
    let hashes = fake_hashes(1);
    let refused: &[&[u8]] = &[
        b".",
        b"..",
        b"a/b",
        b"/",
        b"../x",
        b"a\\b",
        b"\\",
        b"\0",
        b"a\nb",
        b"\x1f",
        b"\x7f",
        "\u{80}".as_bytes(),
        "x\u{9f}".as_bytes(),
        &[0xff],
        &[b'a', 0xc3],
        &[0xc0, 0xae],
        &[0xed, 0xa0, 0x80],
    ];
    for name in refused {
        assert!(Manifest::parse(&raw_manifest(1, name, 1, &hashes)).is_err(), "{name:?} accepted");
    }
    let accepted: &[&str] =
        &["...", "a..b", "..a", ".hidden", "a.", " ", "\u{a0}", "\u{2028}", "\u{200b}", "日本語.txt", "😀"];
    for name in accepted {
        let blob = raw_manifest(1, name.as_bytes(), 1, &hashes);
        assert_eq!(Manifest::parse(&blob).map(|m| m.name), Ok(name.to_string()), "{name:?}");
    }
}

#[test]
fn manifest_list_count_follows_the_file_size_at_every_boundary() {
    let per_list_bytes = SPEC_PIECE * SPEC_PER_LIST;
    // (size, lists the spec requires)
    let table = [
        (0, 0),
        (1, 1),
        (SPEC_PIECE, 1),
        (SPEC_PIECE + 1, 1),
        (per_list_bytes - 1, 1),
        (per_list_bytes, 1),
        (per_list_bytes + 1, 2),
        (2 * per_list_bytes, 2),
        (2 * per_list_bytes + 1, 3),
        (1 << 40, 32),
    ];
    for (size, lists) in table {
        assert_eq!(spec_pieces_and_lists(size).1, lists);
        let hashes = fake_hashes(lists as usize + 1);
        let ok = raw_manifest(size, b"f", lists as u32, &hashes[..lists as usize]);
        let m = Manifest::parse(&ok).unwrap_or_else(|e| panic!("size {size} with {lists} lists: {e}"));
        assert_eq!((m.size, m.lists.len()), (size, lists as usize));
        assert_eq!(m.encode()[..], ok[..]);
        // One list more, or one fewer, with the hashes to match: inconsistent.
        let more = raw_manifest(size, b"f", lists as u32 + 1, &hashes);
        assert!(matches!(Manifest::parse(&more), Err(ManifestError::Inconsistent { .. })), "size {size}, +1 list");
        if lists > 0 {
            let fewer = raw_manifest(size, b"f", lists as u32 - 1, &hashes[..lists as usize - 1]);
            assert!(matches!(Manifest::parse(&fewer), Err(ManifestError::Inconsistent { .. })), "size {size}, -1 list");
        }
        // The right count with one hash more or one fewer present.
        assert!(Manifest::parse(&raw_manifest(size, b"f", lists as u32, &hashes)).is_err(), "size {size}, +1 hash");
        if lists > 0 {
            assert!(Manifest::parse(&ok[..ok.len() - 32]).is_err(), "size {size}, -1 hash");
            assert!(Manifest::parse(&ok[..ok.len() - 1]).is_err(), "size {size}, -1 byte");
        }
        assert!(Manifest::parse(&[&ok[..], &[0]].concat()).is_err(), "size {size}, trailing byte");
    }
}

#[test]
fn manifest_of_2_pow_32_minus_1_pieces_is_accepted_and_one_piece_more_refused() {
    // Both need 131,072 lists: only the piece limit tells them apart.
    let most = (u32::MAX as u64) * SPEC_PIECE;
    let (pieces, lists) = spec_pieces_and_lists(most);
    assert_eq!((pieces, lists), (u32::MAX as u64, 131_072));
    let hashes = vec![[7u8; 32]; lists as usize];
    let blob = raw_manifest(most, b"huge", lists as u32, &hashes);
    let m = Manifest::parse(&blob).unwrap_or_else(|e| panic!("2^32-1 pieces refused: {e}"));
    assert_eq!(m.piece_count(), u32::MAX as u64);
    assert_eq!(spec_pieces_and_lists(most + 1), (1 << 32, 131_072));
    let over = raw_manifest(most + 1, b"huge", lists as u32, &hashes);
    assert!(matches!(Manifest::parse(&over), Err(ManifestError::Inconsistent { .. })), "{:?}", Manifest::parse(&over));
    assert!(Manifest::parse(&raw_manifest(u64::MAX, b"huge", lists as u32, &hashes)).is_err());
}

#[test]
fn hash_list_of_exactly_its_length_is_accepted_and_one_hash_more_or_less_refused() {
    let per_list_bytes = SPEC_PIECE * SPEC_PER_LIST;
    // (file size, hashes each list must hold per section 5)
    let table: [(u64, &[u64]); 6] = [
        (1, &[1]),
        (13, &[1]),
        (3 * SPEC_PIECE + 1, &[4]),
        (per_list_bytes, &[32_768]),
        (per_list_bytes + 1, &[32_768, 1]),
        (2 * per_list_bytes + 5 * SPEC_PIECE, &[32_768, 32_768, 5]),
    ];
    for (size, lens) in table {
        let blob = raw_manifest(size, b"f", lens.len() as u32, &fake_hashes(lens.len()));
        let m = Manifest::parse(&blob).unwrap();
        for (k, &n) in lens.iter().enumerate() {
            let n = n as usize;
            let list: Vec<u8> = (0..n + 1).flat_map(|i| Hash::of(&(i as u64).to_be_bytes()).0).collect();
            let parsed = m.parse_list(k, &list[..32 * n]).unwrap_or_else(|e| panic!("size {size} list {k}: {e}"));
            assert_eq!(parsed.len(), n);
            assert_eq!(parsed[n - 1].0[..], list[32 * (n - 1)..32 * n]);
            assert!(m.parse_list(k, &list).is_err(), "size {size} list {k}: one hash more");
            assert!(m.parse_list(k, &list[..32 * (n - 1)]).is_err(), "size {size} list {k}: one hash fewer");
            assert!(m.parse_list(k, &list[..32 * n - 1]).is_err(), "size {size} list {k}: one byte fewer");
            assert!(m.parse_list(k, &list[..32 * n + 1]).is_err(), "size {size} list {k}: one byte more");
        }
    }
}

fn vectors() -> Vec<(String, bool, Vec<u8>)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/protocol-vectors.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (v["name"].as_str().unwrap().to_owned(), v["valid"].as_bool().unwrap(), hex(v["hex"].as_str().unwrap()))
        })
        .collect()
}

#[test]
fn valid_vectors_decode_and_re_encode_byte_for_byte() {
    let valid: Vec<_> = vectors().into_iter().filter(|v| v.1).collect();
    assert!(valid.len() >= 14);
    for (name, _, bytes) in valid {
        let mut buf = BytesMut::from(&bytes[..]);
        let frame =
            decode(&mut buf).unwrap_or_else(|e| panic!("{name}: {e}")).unwrap_or_else(|| panic!("{name}: incomplete"));
        assert!(buf.is_empty(), "{name}: bytes left over");
        assert_eq!(frame.to_bytes()[..], bytes[..], "{name}: re-encoding differs");
    }
}

#[test]
fn invalid_vectors_are_refused() {
    let invalid: Vec<_> = vectors().into_iter().filter(|v| !v.1).collect();
    assert!(invalid.len() >= 7);
    for (name, _, bytes) in invalid {
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(decode(&mut buf).is_err(), "{name} was accepted");
    }
}

#[test]
fn vectors_mean_what_their_notes_say() {
    let v = vectors();
    let get = |n: &str| {
        let bytes = &v.iter().find(|x| x.0 == n).unwrap().2;
        decode(&mut BytesMut::from(&bytes[..])).unwrap().unwrap()
    };
    assert_eq!(get("ask"), Frame::Ask(Hash::of(b"pex")));
    let Frame::Give { hash, data } = get("give") else { panic!() };
    assert_eq!(&data[..], b"hello, swarm\n");
    assert_eq!(hash, Hash::of(&data));
    assert_eq!(get("peers_two"), Frame::Peers(vec!["[::1]:9000".parse().unwrap(), "127.0.0.1:6881".parse().unwrap()]));
    assert_eq!(get("have"), Frame::Have { root: Hash::of(b"pex"), index: 70000 });
    let Frame::Bitfield { bits, .. } = get("bitfield") else { panic!() };
    let held: Vec<usize> = (0..10).filter(|i| bits[i / 8] & (0x80 >> (i % 8)) != 0).collect();
    assert_eq!(held, vec![0, 2, 9]);
    assert!(pex::bitfield::check(10, &bits).is_ok());
    assert!(pex::bitfield::check(9, &bits).is_err());
}

#[test]
fn manifest_fixture_decodes_and_re_encodes() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/");
    let blob = std::fs::read(format!("{dir}hello.manifest")).unwrap();
    let list = std::fs::read(format!("{dir}hello.list")).unwrap();
    let manifest = Manifest::parse(&blob).unwrap();
    assert_eq!(manifest.name, "hello.txt");
    assert_eq!(manifest.size, 13);
    assert_eq!(manifest.encode()[..], blob[..]);
    assert_eq!(manifest.lists, vec![Hash::of(&list)]);
    let info = FileInfo::new("hello.txt", 13, vec![Hash::of(b"hello, swarm\n")]);
    assert_eq!(info.manifest_blob[..], blob[..], "building the manifest from the file gives the fixture");
    let documented = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap();
    assert!(documented.contains(&info.root.to_hex()), "docs/PROTOCOL.md shows the example's root hash");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_like_the_spec(&bytes)?;
    }

    #[test]
    fn typed_frames_with_random_bodies_never_panic(kind in 0u8..12, body in proptest::collection::vec(any::<u8>(), 0..120)) {
        let bytes = raw_frame(kind, &body);
        decode_like_the_spec(&bytes)?;
    }

    #[test]
    fn manifests_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Manifest::parse(&bytes);
    }
}

// ---------------------------------------------------------------------------
// Valid frames of every type, built by strategies rather than found by chance.

fn arb_hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash)
}

/// Mostly small lengths, sometimes right at `max` or just under it.
fn arb_len(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        40 => 0..=40usize,
        40 => 0..=2048usize,
        3 => max - 40..=max,
        3 => Just(max),
    ]
}

/// `len` deterministic bytes: cheap even at 1 MiB, and small to shrink.
fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    (arb_len(max), any::<u64>()).prop_map(|(len, seed)| Bytes::from(common::data(len, seed)))
}

/// Peers the way a decoder hands them out: IPv4 (which travels IPv4-mapped)
/// or an IPv6 address that is not IPv4-mapped, with no flow info or scope.
fn arb_peer() -> impl Strategy<Value = SocketAddr> {
    let v6 = prop_oneof![
        4 => any::<[u8; 16]>().prop_map(Ipv6Addr::from),
        1 => prop::sample::select(vec![
            Ipv6Addr::UNSPECIFIED,
            Ipv6Addr::LOCALHOST,
            "::1.2.3.4".parse().unwrap(),         // IPv4-compatible: stays IPv6
            "64:ff9b::1.2.3.4".parse().unwrap(),  // NAT64: stays IPv6
            "::fffe:1.2.3.4".parse().unwrap(),
            "fe80::1".parse().unwrap(),
            "ff02::1".parse().unwrap(),
        ]),
    ]
    .prop_filter("IPv4-mapped addresses decode as IPv4", |ip| ip.to_ipv4_mapped().is_none())
    .prop_map(IpAddr::V6);
    let v4 = any::<[u8; 4]>().prop_map(|ip| IpAddr::V4(Ipv4Addr::from(ip)));
    (prop_oneof![v6, v4], any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

/// Characters of 1 to 4 bytes of UTF-8, controls included.
fn arb_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => proptest::char::range('a', 'z'),
        2 => prop::sample::select(vec!['é', 'ß', '€', '中', '😀', '\u{10FFFF}', '\u{FEFF}']),
        1 => proptest::char::range('\0', '\u{9f}'),
        2 => any::<char>(),
    ]
}

/// A string of at most `max` bytes of UTF-8, often exactly `max`.
fn arb_text(max: usize) -> impl Strategy<Value = String> {
    let target = prop_oneof![2 => 0..=max, 1 => Just(max)];
    (target, vec(arb_char(), 0..=max)).prop_map(|(target, chars)| {
        let mut s = String::new();
        for c in chars.into_iter().chain(std::iter::repeat('x')) {
            if s.len() == target {
                break;
            }
            if s.len() + c.len_utf8() <= target {
                s.push(c);
            }
        }
        s
    })
}

/// A legal frame of any type, as `decode` returns it.
fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        Just(Frame::KeepAlive),
        arb_hash().prop_map(Frame::Ask),
        (arb_hash(), arb_bytes(SPEC_MAX_BLOB)).prop_map(|(hash, data)| Frame::Give { hash, data }),
        prop_oneof![3 => vec(arb_peer(), 0..=SPEC_MAX_PEERS), 1 => vec(arb_peer(), SPEC_MAX_PEERS)]
            .prop_map(Frame::Peers),
        (any::<[u8; 32]>(), any::<u16>())
            .prop_map(|(id, listen_port)| Frame::Hello(Hello { node_id: NodeId(id), listen_port })),
        arb_hash().prop_map(Frame::DontHave),
        (arb_hash(), arb_bytes(SPEC_MAX_BLOB)).prop_map(|(root, bits)| Frame::Bitfield { root, bits }),
        (arb_hash(), any::<u32>()).prop_map(|(root, index)| Frame::Have { root, index }),
        (any::<u8>(), arb_text(SPEC_MAX_REASON)).prop_map(|(code, reason)| Frame::Reject { code, reason }),
        arb_hash().prop_map(Frame::Cancel),
        (9u8..=255, arb_bytes(SPEC_MAX_L - 1)).prop_map(|(kind, body)| Frame::Unknown { kind, body }),
    ]
}

/// Where to cut a frame of `len` bytes: everywhere if it is small, else the
/// first bytes, the last and a sample in between.
fn cuts(len: usize, sample: &[Index]) -> Vec<usize> {
    if len <= 300 {
        return (0..len).collect();
    }
    let mut at: Vec<usize> = (0..=40).chain([len - 1, len - 2]).collect();
    at.extend(sample.iter().map(|i| i.index(len)));
    at
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn valid_frames_round_trip_and_consume_exactly_their_bytes(
        frame in arb_frame(),
        tail in vec(any::<u8>(), 0..16),
    ) {
        let bytes = frame.to_bytes();
        let l = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        prop_assert_eq!(l + 4, bytes.len());
        prop_assert!(l <= SPEC_MAX_L);
        prop_assert_eq!(spec_verdict(&bytes), Verdict::Frame(bytes.len()), "the encoder wrote an illegal frame");
        let mut head = BytesMut::new();
        let data = frame.encode_head(&mut head);
        if let Some(data) = data {
            head.extend_from_slice(data);
        }
        prop_assert!(head[..] == bytes[..], "encode_head and its data differ from encode");

        let mut buf = BytesMut::from(&bytes[..]);
        buf.extend_from_slice(&tail);
        let decoded = decode(&mut buf);
        prop_assert!(decoded == Ok(Some(frame.clone())), "decoded differently: {:?}", decoded.map(|f| f.map(|f| f.name())));
        prop_assert_eq!(&buf[..], &tail[..], "consumed more or less than the frame");
        prop_assert_eq!(frame_size(&bytes), Ok(Some(bytes.len())));
    }

    #[test]
    fn every_prefix_of_a_valid_frame_waits_for_more_and_consumes_nothing(
        frame in arb_frame(),
        sample in vec(any::<Index>(), 16),
    ) {
        let bytes = frame.to_bytes();
        for cut in cuts(bytes.len(), &sample) {
            let mut buf = BytesMut::from(&bytes[..cut]);
            prop_assert_eq!(decode(&mut buf), Ok(None), "{} cut at {} of {}", frame.name(), cut, bytes.len());
            prop_assert_eq!(buf.len(), cut, "a prefix consumed bytes");
        }
    }

    #[test]
    fn ipv4_peers_travel_ipv4_mapped_and_come_back_as_ipv4(ip in any::<[u8; 4]>(), port in any::<u16>()) {
        let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port);
        let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::from(ip).to_ipv6_mapped()), port);
        let bytes = Frame::Peers(vec![v4]).to_bytes();
        let mut entry = [0u8; 18];
        entry[10..12].copy_from_slice(&[0xff, 0xff]);
        entry[12..16].copy_from_slice(&ip);
        entry[16..].copy_from_slice(&port.to_be_bytes());
        prop_assert_eq!(&bytes[..], &raw_frame(2, &entry)[..]);
        prop_assert_eq!(&Frame::Peers(vec![mapped]).to_bytes()[..], &bytes[..]);
        prop_assert_eq!(decode_all(&bytes), Ok(Some((Frame::Peers(vec![v4]), bytes.len()))));
    }

    #[test]
    fn frame_reject_keeps_the_longest_prefix_of_at_most_200_bytes(
        reason in prop_oneof![arb_text(400), any::<String>()],
        code in 1u8..=6,
    ) {
        let want: String = {
            let mut s = String::new();
            for c in reason.chars() {
                if s.len() + c.len_utf8() > SPEC_MAX_REASON {
                    break;
                }
                s.push(c);
            }
            s
        };
        let frame = Frame::reject(RejectCode::from_u8(code).unwrap(), reason.clone());
        prop_assert_eq!(&frame, &Frame::Reject { code, reason: want });
        let bytes = frame.to_bytes();
        prop_assert_eq!(spec_verdict(&bytes), Verdict::Frame(bytes.len()));
    }
}

// ---------------------------------------------------------------------------
// Valid frames with one field broken.

/// One change to a valid encoding.
#[derive(Debug, Clone)]
enum Mutation {
    /// The length prefix plus `k` (wrapping), the bytes as they are.
    Length(i64),
    /// Another type byte.
    Kind(u8),
    /// The last `n` bytes of the frame dropped, the prefix following.
    CutBody(usize),
    /// Bytes added to the body, the prefix following.
    GrowBody(Vec<u8>),
    /// The stream truncated: the frame's last `n` bytes missing, the prefix unchanged.
    Truncate(usize),
    /// Bytes after the frame (the start of a next frame, or garbage).
    Trailing(Vec<u8>),
    /// One byte anywhere XORed with a non-zero mask.
    Flip(Index, u8),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => prop_oneof![-40i64..=40, any::<u32>().prop_map(i64::from)].prop_map(Mutation::Length),
        2 => any::<u8>().prop_map(Mutation::Kind),
        2 => (1usize..=40).prop_map(Mutation::CutBody),
        2 => vec(any::<u8>(), 1..40).prop_map(Mutation::GrowBody),
        1 => (1usize..=40).prop_map(Mutation::Truncate),
        1 => vec(any::<u8>(), 1..40).prop_map(Mutation::Trailing),
        3 => (any::<Index>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
    ]
}

fn set_len(bytes: &mut [u8], l: usize) {
    bytes[..4].copy_from_slice(&(l as u32).to_be_bytes());
}

fn mutate(frame: &Frame, m: &Mutation) -> Vec<u8> {
    let mut b = frame.to_bytes().to_vec();
    match m {
        Mutation::Length(k) => {
            let l = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            b[..4].copy_from_slice(&(l as i64).wrapping_add(*k).to_be_bytes()[4..]);
        }
        Mutation::Kind(kind) if b.len() > 4 => b[4] = *kind,
        Mutation::Kind(kind) => {
            b.push(*kind);
            set_len(&mut b, 1);
        }
        Mutation::CutBody(n) => {
            b.truncate(b.len().saturating_sub(*n).max(4));
            let l = b.len() - 4;
            set_len(&mut b, l);
        }
        Mutation::GrowBody(extra) => {
            b.extend_from_slice(extra);
            let l = b.len() - 4;
            set_len(&mut b, l);
        }
        Mutation::Truncate(n) => b.truncate(b.len().saturating_sub(*n)),
        Mutation::Trailing(extra) => b.extend_from_slice(extra),
        Mutation::Flip(at, mask) => {
            let i = at.index(b.len());
            b[i] ^= mask;
        }
    }
    b
}

/// Frames that the documented rules refuse, each built by breaking one field
/// of a valid frame of that type.
#[derive(Debug, Clone)]
enum Broken {
    /// A HELLO with one byte of its magic (0..3) or its version (3) changed.
    HelloHead(Hello, usize, u8),
    /// PEERS of 51 or more entries.
    TooManyPeers(Vec<SocketAddr>),
    /// PEERS whose body is not a multiple of 18 bytes.
    RaggedPeers(Vec<SocketAddr>, Vec<u8>),
    /// A REJECT reason of more than 200 bytes (valid UTF-8).
    LongReason(u8, String),
    /// A REJECT reason with a sequence that is not UTF-8 spliced in at a char boundary.
    NotUtf8(u8, String, Index, Vec<u8>),
    /// ASK, DONT_HAVE, CANCEL, HAVE, HELLO with one byte too few or too many,
    /// or GIVE and BITFIELD with fewer than 32 bytes.
    WrongSize(u8, usize),
}

fn arb_broken() -> impl Strategy<Value = Broken> {
    let hello =
        (any::<[u8; 32]>(), any::<u16>()).prop_map(|(id, listen_port)| Hello { node_id: NodeId(id), listen_port });
    let not_utf8 = prop::sample::select(vec![
        vec![0xff],
        vec![0xfe],
        vec![0x80],
        vec![0xbf],
        vec![0xc3],
        vec![0xe2, 0x82],
        vec![0xf0, 0x9f, 0x98],
        vec![0xc0, 0x80],
        vec![0xc1, 0xbf],
        vec![0xe0, 0x80, 0x80],
        vec![0xed, 0xa0, 0x80],
        vec![0xed, 0xbf, 0xbf],
        vec![0xf4, 0x90, 0x80, 0x80],
        vec![0xf8, 0x88, 0x80, 0x80, 0x80],
    ]);
    let sizes = prop::sample::select(vec![
        (0, 31),
        (0, 33),
        (0, 0),
        (4, 31),
        (4, 33),
        (8, 31),
        (8, 33),
        (6, 35),
        (6, 37),
        (6, 32),
        (3, 37),
        (3, 39),
        (3, 0),
        (1, 31),
        (1, 0),
        (5, 31),
        (5, 0),
    ]);
    prop_oneof![
        (hello, 0usize..4, 1u8..=255).prop_map(|(h, at, mask)| Broken::HelloHead(h, at, mask)),
        vec(arb_peer(), SPEC_MAX_PEERS + 1..=SPEC_MAX_PEERS + 10).prop_map(Broken::TooManyPeers),
        (vec(arb_peer(), 0..=SPEC_MAX_PEERS), vec(any::<u8>(), 1..18)).prop_map(|(p, e)| Broken::RaggedPeers(p, e)),
        (any::<u8>(), arb_text(SPEC_MAX_REASON), vec(arb_char(), 1..=SPEC_MAX_REASON)).prop_map(
            |(code, mut reason, more)| {
                for c in more.into_iter().chain(std::iter::repeat('y')) {
                    if reason.len() > SPEC_MAX_REASON {
                        break;
                    }
                    reason.push(c);
                }
                Broken::LongReason(code, reason)
            }
        ),
        (any::<u8>(), arb_text(SPEC_MAX_REASON - 5), any::<Index>(), not_utf8)
            .prop_map(|(code, reason, at, bad)| Broken::NotUtf8(code, reason, at, bad)),
        sizes.prop_map(|(kind, len)| Broken::WrongSize(kind, len)),
    ]
}

fn break_frame(b: &Broken) -> Vec<u8> {
    match b {
        Broken::HelloHead(hello, at, mask) => {
            let mut v = Frame::Hello(*hello).to_bytes().to_vec();
            v[5 + at] ^= mask;
            v
        }
        Broken::TooManyPeers(peers) => Frame::Peers(peers.clone()).to_bytes().to_vec(),
        Broken::RaggedPeers(peers, extra) => {
            let v = Frame::Peers(peers.clone()).to_bytes();
            raw_frame(2, &[&v[5..], &extra[..]].concat())
        }
        Broken::LongReason(code, reason) => Frame::Reject { code: *code, reason: reason.clone() }.to_bytes().to_vec(),
        Broken::NotUtf8(code, reason, at, bad) => {
            let mut i = at.index(reason.len() + 1);
            while !reason.is_char_boundary(i) {
                i -= 1;
            }
            let mut body = vec![*code];
            body.extend_from_slice(&reason.as_bytes()[..i]);
            body.extend_from_slice(bad);
            body.extend_from_slice(&reason.as_bytes()[i..]);
            raw_frame(7, &body)
        }
        Broken::WrongSize(kind, len) => raw_frame(*kind, &common::data(*len, *len as u64)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Decoding never panics; whatever it does agrees with docs/PROTOCOL.md
    /// (an accepted frame re-encodes to exactly the bytes it consumed).
    #[test]
    fn mutated_valid_frames_are_decoded_as_the_spec_says(frame in arb_frame(), mutation in arb_mutation()) {
        decode_like_the_spec(&mutate(&frame, &mutation))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn frames_with_a_field_broken_past_its_rule_are_refused(broken in arb_broken()) {
        let bytes = break_frame(&broken);
        prop_assert_eq!(spec_verdict(&bytes), Verdict::Violation, "the test built a legal frame");
        prop_assert!(decode_all(&bytes).is_err(), "accepted");
        decode_like_the_spec(&bytes)?;
    }
}

// ---------------------------------------------------------------------------
// Valid manifests with one field changed, against a parser written from section 5.

/// Why section 5 refuses a manifest, in the order it lists the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpecRefusal {
    /// Fewer than 19 bytes.
    Short,
    Magic,
    Version,
    PieceSize,
    /// Fewer than n + 4 bytes after the header.
    NameCut,
    Name,
    /// `c` is not the count the size needs, or more than 2^32 − 1 pieces.
    ListCount,
    FewerListBytes,
    MoreListBytes,
}

/// A manifest: name, size and list hashes.
type SpecManifest = (String, u64, Vec<[u8; 32]>);

/// Section 5's rules on names: UTF-8, 1 to 255 bytes, not `.` or `..`, no `/`,
/// `\` or Cc character (U+0000–U+001F, U+007F–U+009F).
fn spec_name(bytes: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(bytes).ok()?;
    let cc = |c: char| c <= '\u{1f}' || ('\u{7f}'..='\u{9f}').contains(&c);
    let ok = !name.is_empty()
        && name.len() <= SPEC_MAX_NAME
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == '\\' || cc(c));
    ok.then(|| name.to_owned())
}

fn spec_parse_manifest(b: &[u8]) -> Result<SpecManifest, SpecRefusal> {
    use SpecRefusal::*;
    if b.len() < 19 {
        return Err(Short);
    }
    if &b[..4] != b"PEXM" {
        return Err(Magic);
    }
    if b[4] != 1 {
        return Err(Version);
    }
    if u32::from_be_bytes(b[5..9].try_into().unwrap()) != 1_048_576 {
        return Err(PieceSize);
    }
    let size = u64::from_be_bytes(b[9..17].try_into().unwrap());
    let n = u16::from_be_bytes([b[17], b[18]]) as usize;
    let after = &b[19..];
    if after.len() < n + 4 {
        return Err(NameCut);
    }
    let name = spec_name(&after[..n]).ok_or(Name)?;
    let c = u32::from_be_bytes(after[n..n + 4].try_into().unwrap()) as u64;
    let (pieces, lists) = spec_pieces_and_lists(size);
    if c != lists || pieces > u32::MAX as u64 {
        return Err(ListCount);
    }
    let hashes = &after[n + 4..];
    match hashes.len().cmp(&(32 * c as usize)) {
        std::cmp::Ordering::Less => Err(FewerListBytes),
        std::cmp::Ordering::Greater => Err(MoreListBytes),
        std::cmp::Ordering::Equal => Ok((name, size, hashes.chunks(32).map(|h| h.try_into().unwrap()).collect())),
    }
}

/// Whether the parser's error is the refusal the spec gives first.
fn same_refusal(e: &ManifestError, r: SpecRefusal) -> bool {
    use SpecRefusal::*;
    match e {
        ManifestError::Truncated => matches!(r, Short | NameCut | FewerListBytes),
        ManifestError::BadMagic => r == Magic,
        ManifestError::BadVersion(_) => r == Version,
        ManifestError::BadPieceSize(_) => r == PieceSize,
        ManifestError::BadName(_) => r == Name,
        ManifestError::Inconsistent { .. } => r == ListCount,
        ManifestError::Trailing(_) => r == MoreListBytes,
        ManifestError::BadList { .. } => false,
    }
}

/// A valid manifest's fields.
#[derive(Debug, Clone)]
struct ManifestFields {
    size: u64,
    name: String,
    lists: Vec<[u8; 32]>,
}

impl ManifestFields {
    fn blob(&self) -> Vec<u8> {
        raw_manifest(self.size, self.name.as_bytes(), self.lists.len() as u32, &self.lists)
    }
}

/// Names section 5 accepts, 1 to 255 bytes, often exactly 255.
fn arb_valid_name() -> impl Strategy<Value = String> {
    let c = prop_oneof![
        6 => proptest::char::range('a', 'z'),
        2 => prop::sample::select(vec!['.', '-', '_', ' ', 'é', '中', '😀', '\u{a0}', '\u{2028}', '\u{10FFFF}']),
        1 => any::<char>().prop_filter("a legal name character", |&c| spec_name(c.to_string().as_bytes()).is_some()),
    ];
    let target = prop_oneof![3 => 1..=SPEC_MAX_NAME, 1 => Just(SPEC_MAX_NAME), 1 => Just(1)];
    (target, vec(c, 0..=SPEC_MAX_NAME)).prop_map(|(target, chars)| {
        let mut s = String::new();
        for c in chars.into_iter().chain(std::iter::repeat('n')) {
            if s.len() == target {
                break;
            }
            if s.len() + c.len_utf8() <= target {
                s.push(c);
            }
        }
        match s.as_str() {
            "." => "n".to_owned(),
            ".." => "n.".to_owned(),
            _ => s,
        }
    })
}

/// Sizes that need at most 64 lists, often right at a piece or list boundary.
fn arb_size() -> impl Strategy<Value = u64> {
    let per_list = SPEC_PIECE * SPEC_PER_LIST;
    prop_oneof![
        Just(0),
        0..=4 * SPEC_PIECE,
        (0u64..=70_000, -1i64..=1).prop_map(|(k, d)| (k * SPEC_PIECE).saturating_add_signed(d)),
        (1u64..=64, -1i64..=1).prop_map(move |(k, d)| (k * per_list).saturating_add_signed(d).min(64 * per_list)),
        0..=64 * per_list,
    ]
}

fn arb_manifest() -> impl Strategy<Value = ManifestFields> {
    (arb_size(), arb_valid_name(), any::<u64>()).prop_map(|(size, name, seed)| {
        let lists = spec_pieces_and_lists(size).1 as usize;
        let bytes = common::data(32 * lists, seed);
        ManifestFields { size, name, lists: bytes.chunks(32).map(|h| h.try_into().unwrap()).collect() }
    })
}

/// One change to a valid manifest blob.
#[derive(Debug, Clone)]
enum ManifestMutation {
    Keep,
    /// One magic byte XORed with a non-zero mask.
    Magic(usize, u8),
    Version(u8),
    PieceSize(u32),
    /// The size field set, list count and hashes unchanged.
    Size(u64),
    /// The size field moved by this much (wrapping).
    SizeBy(i64),
    /// The list count field moved by this much (wrapping), hashes unchanged.
    CountBy(i64),
    /// The list count moved by this much with as many hashes added or removed.
    ListsBy(i64),
    /// The name length field set, the bytes unchanged.
    NameLen(u16),
    /// Other name bytes, the length field following.
    Name(Vec<u8>),
    Trailing(Vec<u8>),
    /// Cut to this many bytes.
    Truncate(Index),
    Flip(Index, u8),
}

fn arb_bad_name() -> impl Strategy<Value = Vec<u8>> {
    let listed: Vec<Vec<u8>> = [
        &b""[..],
        b".",
        b"..",
        b"...",
        b"a..b",
        b"../etc",
        b"a/b",
        b"/",
        b"/etc/passwd",
        b"a\\b",
        b"\\",
        b"\0",
        b"a\0",
        b"\t",
        b"a\nb",
        b"\x1b[31m",
        b"\x1f",
        b"\x7f",
        b" ",
        "\u{80}".as_bytes(),
        "\u{85}".as_bytes(),
        "\u{9f}".as_bytes(),
        "\u{a0}".as_bytes(),
        "\u{2028}".as_bytes(),
        "\u{202e}txt.exe".as_bytes(),
        &[0xff],
        &[b'a', 0xc3],
        &[0xc0, 0xae, 0xc0, 0xae],
        &[0xed, 0xa0, 0x80],
        &[0xf4, 0x90, 0x80, 0x80],
    ]
    .iter()
    .map(|n| n.to_vec())
    .collect();
    let long = |n: usize, s: &str| s.repeat(n / s.len()).into_bytes();
    prop_oneof![
        3 => prop::sample::select(listed),
        1 => prop::sample::select(vec![
            long(254, "a"),
            long(255, "a"),
            long(256, "a"),
            long(257, "a"),
            long(254, "é"),
            long(256, "é"),
            [long(252, "😀"), b"abc".to_vec()].concat(),
            long(256, "😀"),
            [long(254, "a"), b"/".to_vec()].concat(),
            [long(254, "a"), vec![0xc3]].concat(),
            long(65_535, "a"),
        ]),
        2 => arb_text(300).prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..300),
    ]
}

fn arb_manifest_mutation() -> impl Strategy<Value = ManifestMutation> {
    use ManifestMutation::*;
    let per_list = (SPEC_PIECE * SPEC_PER_LIST) as i64;
    let piece = SPEC_PIECE as i64;
    prop_oneof![
        2 => Just(Keep),
        1 => (0usize..4, 1u8..=255).prop_map(|(at, mask)| Magic(at, mask)),
        1 => prop_oneof![Just(0u8), Just(2), Just(255), any::<u8>()].prop_map(Version),
        1 => prop_oneof![
            prop::sample::select(vec![0, 1 << 19, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 1 << 21, u32::MAX]),
            any::<u32>(),
        ]
        .prop_map(PieceSize),
        1 => prop_oneof![any::<u64>(), Just(u64::MAX), Just(u32::MAX as u64 * SPEC_PIECE + 1)].prop_map(Size),
        2 => prop_oneof![
            prop::sample::select(vec![-1, 1, -piece, piece, -per_list, per_list, per_list + 1, -per_list - 1]),
            any::<i64>(),
        ]
        .prop_map(SizeBy),
        1 => prop_oneof![-3i64..=3, any::<u32>().prop_map(i64::from)].prop_map(CountBy),
        2 => prop_oneof![-3i64..=3].prop_map(ListsBy),
        1 => prop_oneof![0u16..=300, any::<u16>()].prop_map(NameLen),
        4 => arb_bad_name().prop_map(Name),
        1 => vec(any::<u8>(), 1..64).prop_map(Trailing),
        1 => any::<Index>().prop_map(Truncate),
        2 => (any::<Index>(), 1u8..=255).prop_map(|(at, mask)| Flip(at, mask)),
    ]
}

fn mutate_manifest(m: &ManifestFields, mutation: &ManifestMutation) -> Vec<u8> {
    use ManifestMutation::*;
    let mut b = m.blob();
    let n = m.name.len();
    let count_at = 19 + n;
    let count = u32::from_be_bytes(b[count_at..count_at + 4].try_into().unwrap());
    match mutation {
        Keep => {}
        Magic(at, mask) => b[*at] ^= mask,
        Version(v) => b[4] = *v,
        PieceSize(p) => b[5..9].copy_from_slice(&p.to_be_bytes()),
        Size(s) => b[9..17].copy_from_slice(&s.to_be_bytes()),
        SizeBy(d) => b[9..17].copy_from_slice(&m.size.wrapping_add_signed(*d).to_be_bytes()),
        CountBy(d) => {
            b[count_at..count_at + 4].copy_from_slice(&((count as i64).wrapping_add(*d) as u32).to_be_bytes())
        }
        ListsBy(d) => {
            let lists = (m.lists.len() as i64 + d).max(0) as usize;
            let hashes: Vec<[u8; 32]> = m.lists.iter().copied().chain(fake_hashes(3)).take(lists).collect();
            b = raw_manifest(m.size, m.name.as_bytes(), lists as u32, &hashes);
        }
        NameLen(len) => b[17..19].copy_from_slice(&len.to_be_bytes()),
        Name(name) => b = raw_manifest(m.size, name, count, &m.lists),
        Trailing(extra) => b.extend_from_slice(extra),
        Truncate(at) => b.truncate(at.index(b.len())),
        Flip(at, mask) => {
            let i = at.index(b.len());
            b[i] ^= mask;
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// `Manifest::parse` never panics, accepts exactly what section 5 accepts,
    /// refuses for the first reason section 5 lists, and an accepted manifest
    /// re-encodes to its input.
    #[test]
    fn mutated_manifests_are_accepted_exactly_when_the_spec_allows(
        fields in arb_manifest(),
        mutation in arb_manifest_mutation(),
    ) {
        let blob = mutate_manifest(&fields, &mutation);
        let spec = spec_parse_manifest(&blob);
        if matches!(mutation, ManifestMutation::Keep) {
            prop_assert!(spec.is_ok(), "the strategy built an invalid manifest: {:?}", spec);
        }
        match (spec, Manifest::parse(&blob)) {
            (Ok((name, size, lists)), Ok(m)) => {
                prop_assert_eq!(&m.name, &name);
                prop_assert_eq!(m.size, size);
                prop_assert!(m.lists.iter().map(|h| h.0).eq(lists), "list hashes differ");
                prop_assert!(m.encode()[..] == blob[..], "an accepted manifest re-encodes differently");
            }
            (Err(why), Err(e)) => prop_assert!(same_refusal(&e, why), "spec refuses for {:?}, parse for {:?}", why, e),
            (spec, got) => prop_assert!(false, "spec: {:?}, parse: {:?}", spec.map(|m| m.0), got.map(|m| m.name)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_after_a_valid_manifest_header_parse_as_the_spec_says(
        fields in arb_manifest(),
        keep in any::<Index>(),
        junk in vec(any::<u8>(), 0..200),
    ) {
        let mut blob = fields.blob();
        blob.truncate(keep.index(blob.len() + 1));
        blob.extend_from_slice(&junk);
        let spec = spec_parse_manifest(&blob);
        match (spec, Manifest::parse(&blob)) {
            (Ok(_), Ok(m)) => prop_assert!(m.encode()[..] == blob[..]),
            (Err(why), Err(e)) => prop_assert!(same_refusal(&e, why), "spec refuses for {:?}, parse for {:?}", why, e),
            (spec, got) => prop_assert!(false, "spec: {:?}, parse: {:?}", spec.map(|m| m.0), got.map(|m| m.name)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// List `k` holds `min(32768, P − 32768·k)` hashes: exactly that many are
    /// accepted, one more or one fewer (or a byte off) refused.
    #[test]
    fn hash_lists_are_accepted_at_exactly_their_documented_length(fields in arb_manifest(), which in any::<Index>()) {
        let m = Manifest::parse(&fields.blob()).unwrap();
        let (pieces, lists) = spec_pieces_and_lists(fields.size);
        prop_assume!(lists > 0);
        let k = which.index(lists as usize);
        let want = (pieces - SPEC_PER_LIST * k as u64).min(SPEC_PER_LIST) as usize * 32;
        let list = common::data(want + 32, k as u64);
        let parsed = m.parse_list(k, &list[..want]);
        prop_assert!(parsed.is_ok(), "list {} of {} bytes refused: {:?}", k, want, parsed.err());
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.len(), want / 32);
        prop_assert!(parsed.iter().zip(list[..want].chunks(32)).all(|(h, c)| h.0[..] == c[..]));
        for len in [want - 32, want - 1, want + 1, want + 32] {
            prop_assert!(m.parse_list(k, &list[..len]).is_err(), "list {} of {} bytes (want {}) accepted", k, len, want);
        }
    }
}
