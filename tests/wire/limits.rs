//! Exactly at every documented limit of the frame codec, with frames built
//! byte by byte from docs/PROTOCOL.md sections 3 and 4.

use crate::common;
use crate::*;
use bytes::Bytes;
use pex::wire::{frame_size, Frame, FrameError, Hello, PeerEntry, RejectCode};
use pex::{Hash, NodeId};

#[test]
fn the_codes_constants_are_the_documented_numbers() {
    use pex::manifest::{HASHES_PER_LIST, MAX_NAME_LEN, PIECE_SIZE};
    use pex::wire::{
        BITFIELD_HEAD, FLAG_SHAREABLE, HELLO_LEN, HELLO_MAGIC, MAX_BLOB_LEN, MAX_FRAME_LEN, MAX_PEERS_PER_FRAME,
        MAX_REJECT_REASON, PEER_ENTRY_LEN, PROTOCOL_VERSION, REJECT_HEAD,
    };
    assert_eq!(MAX_FRAME_LEN, SPEC_MAX_L);
    assert_eq!(MAX_BLOB_LEN, SPEC_MAX_BLOB);
    assert_eq!(MAX_PEERS_PER_FRAME, SPEC_MAX_PEERS);
    assert_eq!(MAX_REJECT_REASON, SPEC_MAX_REASON);
    assert_eq!(HELLO_LEN, SPEC_HELLO);
    assert_eq!(PEER_ENTRY_LEN, SPEC_PEER_ENTRY);
    assert_eq!(BITFIELD_HEAD, SPEC_BITFIELD_HEAD);
    assert_eq!(REJECT_HEAD, SPEC_REJECT_HEAD);
    assert_eq!((HELLO_MAGIC, PROTOCOL_VERSION, FLAG_SHAREABLE), (b"PEX", 2, 1));
    assert_eq!(MAX_NAME_LEN, SPEC_MAX_NAME);
    assert_eq!(PIECE_SIZE, SPEC_PIECE);
    assert_eq!(HASHES_PER_LIST, SPEC_PER_LIST);
    // Section 4.6: the most bits one BITFIELD carries, what fits in the largest frame.
    assert_eq!(pex::peer::MAX_BITFIELD_BYTES, SPEC_MAX_L - 1 - SPEC_BITFIELD_HEAD);
    assert_eq!(pex::peer::MAX_BITFIELD_BYTES, 1_048_572);
    // Section 2.
    use pex::noise::{HANDSHAKE_LENS, LEN_PREFIX, MAX_MESSAGE, MAX_PLAINTEXT, PROLOGUE, PROTOCOL_NAME, TAG_LEN};
    assert_eq!(PROTOCOL_NAME, "Noise_XX_25519_AESGCM_SHA256");
    assert_eq!(PROLOGUE, b"pex/2");
    assert_eq!((LEN_PREFIX, MAX_MESSAGE, TAG_LEN, MAX_PLAINTEXT), (2, 65_535, 16, 65_519));
    assert_eq!(HANDSHAKE_LENS, [32, 96, 64]);
    assert_eq!(pex::identity::HELLO_CONTEXT, b"pex/2 hello");
    assert_eq!(pex::identity::SIGNATURE_LEN, 64);
}

#[test]
fn the_documented_time_outs_are_the_defaults() {
    // Section 5.8.
    let t = pex::Timeouts::default();
    let secs = |d: std::time::Duration| d.as_secs_f64();
    assert_eq!(
        [secs(t.hello), secs(t.keepalive), secs(t.idle), secs(t.ask), secs(t.peers_interval), secs(t.dial)],
        [10.0, 30.0, 120.0, 30.0, 60.0, 10.0]
    );
}

#[test]
fn peers_with_50_entries_is_accepted_and_51_refused() {
    let body: Vec<u8> = (0..SPEC_MAX_PEERS + 1).flat_map(peer_entry).collect();
    let fifty = raw_frame(2, &body[..SPEC_PEER_ENTRY * SPEC_MAX_PEERS]);
    let Frame::Peers(peers) = assert_accepted(&fifty, "PEERS of 50") else { panic!("PEERS of 50: not PEERS") };
    assert_eq!(peers.len(), 50);
    let id = |i: u64| NodeId(Hash::of(&i.to_be_bytes()).0);
    assert_eq!(
        peers[0],
        PeerEntry { node_id: id(0), addr: "10.0.0.0:1000".parse().unwrap() },
        "IPv4-mapped decodes to IPv4"
    );
    assert_eq!(peers[49], PeerEntry { node_id: id(49), addr: "[2001:db8::31]:1049".parse().unwrap() });
    assert_eq!(Frame::Peers(peers).to_bytes()[..], fifty[..], "the encoder writes 50 entries the same way");
    assert_refused(&raw_frame(2, &body), "PEERS of 51");
    for extra in 1..SPEC_PEER_ENTRY {
        let e = SPEC_PEER_ENTRY;
        assert_refused(&raw_frame(2, &body[..e * SPEC_MAX_PEERS + extra]), "PEERS of 50 entries and a fragment");
        assert_refused(&raw_frame(2, &body[..e * 3 + extra]), "PEERS of 3 entries and a fragment");
        assert_refused(&raw_frame(2, &body[..extra]), "PEERS of a fragment");
    }
    // 18 bytes, a v1 entry: a fragment too.
    assert_refused(&raw_frame(2, &[0u8; 18]), "PEERS of one v1 entry");
    assert_eq!(assert_accepted(&raw_frame(2, &[]), "PEERS of 0"), Frame::Peers(vec![]));
}

#[test]
fn peers_entries_keep_every_field_and_byte_order() {
    let mut e = [0u8; 50];
    for (i, b) in e.iter_mut().enumerate() {
        *b = i as u8 + 1;
    }
    let Frame::Peers(p) = assert_accepted(&raw_frame(2, &e), "PEERS") else { panic!() };
    let want_ip: std::net::Ipv6Addr = "2122:2324:2526:2728:292a:2b2c:2d2e:2f30".parse().unwrap();
    assert_eq!(p[0].node_id.0[..], e[..32]);
    assert_eq!(p[0].addr, std::net::SocketAddr::new(want_ip.into(), 0x3132), "address, then port, big-endian");
}

#[test]
fn reject_reason_of_200_bytes_is_accepted_and_201_refused() {
    for (code, retry_after) in [(0u8, 0u16), (1, 0), (2, 5), (3, 0), (6, 10), (7, 1), (255, u16::MAX), (2, 0x0100)] {
        for reason in ["a".repeat(200), "é".repeat(100), "😀".repeat(50), format!("{}ab", "€".repeat(66))] {
            assert_eq!(reason.len(), SPEC_MAX_REASON);
            let mut body = reject_body(code, retry_after, reason.as_bytes());
            let frame = assert_accepted(&raw_frame(7, &body), "REJECT with a 200-byte reason");
            assert_eq!(frame, Frame::Reject { code, retry_after, reason: reason.clone() });
            body.push(b'!');
            assert_refused(&raw_frame(7, &body), "REJECT with a 201-byte reason");
            // 201 bytes that are valid UTF-8 all the same: 199 + "é"
            let long = format!("{}é", "a".repeat(199));
            assert_refused(&raw_frame(7, &reject_body(code, retry_after, long.as_bytes())), "a 201-byte UTF-8 reason");
        }
        // Body length 3 (code, retry-after, empty reason) is the lower limit.
        assert_eq!(
            assert_accepted(&raw_frame(7, &reject_body(code, retry_after, b"")), "REJECT without reason"),
            Frame::Reject { code, retry_after, reason: String::new() }
        );
    }
    for short in [&[][..], &[2], &[2, 0]] {
        let e = assert_refused(&raw_frame(7, short), "REJECT of fewer than 3 bytes");
        assert!(matches!(e, FrameError::BadLength { .. }), "{e:?}");
    }
    for bad in [&[0xffu8][..], &[0x80], &[0xc3], &[0xc0, 0xaf], &[0xed, 0xa0, 0x80], &[b'a', 0xe2, 0x82]] {
        let e = assert_refused(&raw_frame(7, &reject_body(3, 0, bad)), "REJECT whose reason is not UTF-8");
        assert_eq!(e, FrameError::ReasonNotUtf8);
    }
    // The retry-after is big-endian: 00 05 is 5 seconds, 05 00 is 1280.
    let Frame::Reject { retry_after, .. } = assert_accepted(&raw_frame(7, &[2, 0, 5]), "") else { panic!() };
    assert_eq!(retry_after, 5);
    let Frame::Reject { retry_after, .. } = assert_accepted(&raw_frame(7, &[2, 5, 0]), "") else { panic!() };
    assert_eq!(retry_after, 1280);
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
        for (frame, retry) in [
            (Frame::reject(RejectCode::Misbehaving, input.clone()), 0),
            (Frame::reject_retry(RejectCode::Misbehaving, 30, input.clone()), 30),
        ] {
            let Frame::Reject { code, retry_after, reason } = &frame else { panic!("not a REJECT") };
            assert_eq!((*code, *retry_after), (5, retry));
            assert_eq!(reason.len(), want, "{} bytes of {:?}…", input.len(), &input[..8]);
            assert!(input.starts_with(reason.as_str()));
            assert_accepted(&frame.to_bytes(), "a truncated REJECT");
        }
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
    // BITFIELD at the same L: 1,048,572 bytes of bits, from piece 0 or as far on as 2^32 allows.
    let bits = &data[..SPEC_MAX_L - 1 - SPEC_BITFIELD_HEAD];
    let last_first = (1u64 << 32) - 8 * bits.len() as u64;
    for first in [0, 8 * bits.len() as u32, last_first as u32] {
        let b = raw_frame(5, &bitfield_body(&hash.0, first, bits));
        assert_eq!(b.len(), 4 + SPEC_MAX_L);
        assert_accepted(&b, "BITFIELD at the largest L");
    }
    let past = raw_frame(5, &bitfield_body(&hash.0, last_first as u32 + 1, bits));
    assert_eq!(
        assert_refused(&past, "BITFIELD at the largest L whose last bit is piece 2^32"),
        FrameError::BitfieldRange { first: last_first as u32 + 1, bytes: bits.len() }
    );
    assert_accepted(&raw_frame(15, &body), "unknown type 15 at the largest L");
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
    let mut body_over = bitfield_body(&hash.0, 0, bits);
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
fn a_bitfield_may_reach_piece_2_pow_32_minus_1_and_not_past_it() {
    let root = [7u8; 32];
    for (first, len, ok) in [
        (0u32, 0usize, true),
        (u32::MAX, 0, true),
        (u32::MAX - 7, 1, true),
        (u32::MAX - 6, 1, false),
        (u32::MAX, 1, false),
        (u32::MAX - 15, 2, true),
        (u32::MAX - 14, 2, false),
        (u32::MAX - 8 * 1000 + 1, 1000, true),
        (u32::MAX - 8 * 1000 + 2, 1000, false),
    ] {
        let bytes = raw_frame(5, &bitfield_body(&root, first, &vec![0xff; len]));
        assert_eq!(spec_verdict(&bytes) != Verdict::Violation, ok, "the test's own rule, first {first}, {len} bytes");
        if ok {
            let f = assert_accepted(&bytes, "BITFIELD within 2^32 pieces");
            assert_eq!(f, Frame::Bitfield { root: Hash(root), first, bits: Bytes::from(vec![0xff; len]) });
        } else {
            let e = assert_refused(&bytes, "BITFIELD past piece 2^32 - 1");
            assert_eq!(e, FrameError::BitfieldRange { first, bytes: len });
        }
    }
    for len in [0, 1, 35] {
        let e = assert_refused(&raw_frame(5, &vec![0; len]), "BITFIELD shorter than root and first index");
        assert!(matches!(e, FrameError::BadLength { .. }), "{e:?}");
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
        assert_eq!(assert_accepted(&raw_frame(7, &[byte, 0, 0, b'x']), "REJECT"), frame);
    }
    for byte in [0u8, 7, 255] {
        assert_eq!(RejectCode::from_u8(byte), None, "code {byte}");
    }
    for byte in 7..=255u8 {
        assert_eq!(RejectCode::from_u8(byte), None, "code {byte}");
        // Section 4.8: other codes still decode, kept as they are.
        assert_eq!(
            assert_accepted(&raw_frame(7, &[byte, 0, 0]), "REJECT"),
            Frame::Reject { code: byte, retry_after: 0, reason: String::new() }
        );
    }
}

#[test]
fn hello_of_any_other_length_version_or_magic_is_refused() {
    let body = hello_body(2, &[7; 32], 9000, 1, &[9; 64]);
    assert_eq!(body.len(), SPEC_HELLO);
    let frame = assert_accepted(&raw_frame(3, &body), "HELLO");
    let want = Hello { node_id: NodeId([7; 32]), listen_port: 9000, flags: 1, signature: [9; 64] };
    assert_eq!(frame, Frame::Hello(want));
    for version in [0u8, 1, 3, 0x7f, 0xff] {
        let mut b = body.clone();
        b[3] = version;
        assert_eq!(assert_refused(&raw_frame(3, &b), "HELLO of another version"), FrameError::BadVersion(version));
    }
    for (i, c) in [(0, b'p'), (1, b'e'), (2, b'x'), (0, 0), (2, b'Y')] {
        let mut b = body.clone();
        b[i] = c;
        assert_eq!(assert_refused(&raw_frame(3, &b), "HELLO with bad magic"), FrameError::BadMagic);
    }
    for len in [0, 3, 4, 38, 39, 102] {
        let e = assert_refused(&raw_frame(3, &body[..len]), "a short HELLO");
        assert!(matches!(e, FrameError::BadLength { .. }), "{len} bytes: {e:?}");
    }
    let e = assert_refused(&raw_frame(3, &[&body[..], &[0]].concat()), "HELLO of 104 bytes");
    assert!(matches!(e, FrameError::BadLength { .. }), "{e:?}");
    // A v1 HELLO (38 bytes, version 1) is a length violation before anything else.
    let v1 = [&b"PEX\x01"[..], &[7; 32], &[0x23, 0x28]].concat();
    assert!(matches!(assert_refused(&raw_frame(3, &v1), "a v1 HELLO"), FrameError::BadLength { .. }));
}

#[test]
fn hello_flags_travel_as_sent_and_only_bit_0_means_anything() {
    for flags in 0..=255u8 {
        let Frame::Hello(h) = assert_accepted(&raw_frame(3, &hello_body(2, &[1; 32], 0, flags, &[2; 64])), "HELLO")
        else {
            panic!()
        };
        assert_eq!(h.flags, flags);
        assert_eq!(h.shareable(), flags & 1 == 1, "flags {flags:#04x}");
    }
}
