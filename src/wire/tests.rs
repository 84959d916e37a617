//! The wire rules, each pinned by a test.
use super::*;

fn entry(id: u8, addr: &str) -> PeerEntry {
    PeerEntry { node_id: NodeId([id; 32]), addr: addr.parse().unwrap() }
}

fn round_trip(frame: Frame) {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    let encoded = buf.clone();
    assert_eq!(decode(&mut buf).unwrap(), Some(frame.clone()));
    assert!(buf.is_empty());
    assert_eq!(frame.to_bytes(), encoded);
}

#[test]
fn every_message_round_trips() {
    let h = Hash::of(b"pex");
    round_trip(Frame::KeepAlive);
    round_trip(Frame::Ask(h));
    round_trip(Frame::Give { hash: Hash::of(b""), data: Bytes::new() });
    round_trip(Frame::Give { hash: h, data: Bytes::from(vec![7u8; MAX_BLOB_LEN]) });
    round_trip(Frame::Peers(vec![]));
    round_trip(Frame::Peers(vec![entry(1, "[::1]:9000"), entry(2, "127.0.0.1:6881")]));
    round_trip(Frame::Hello(Hello { node_id: NodeId([9; 32]), listen_port: 0, flags: 1, signature: [7; 64] }));
    round_trip(Frame::DontHave(h));
    round_trip(Frame::Bitfield { root: h, first: 0, bits: Bytes::new() });
    round_trip(Frame::Bitfield { root: h, first: 0, bits: Bytes::from_static(&[0xa0, 0x40]) });
    round_trip(Frame::Have { root: h, index: u32::MAX });
    round_trip(Frame::reject(RejectCode::PeerLimit, "full"));
    round_trip(Frame::Reject { code: 99, retry_after: 0, reason: String::new() });
    round_trip(Frame::Cancel(h));
    round_trip(Frame::Bitfield { root: h, first: 8, bits: Bytes::from_static(&[0x01]) });
    round_trip(Frame::reject_retry(RejectCode::PeerLimit, 30, "full"));
    round_trip(Frame::Unknown { kind: 200, body: Bytes::from_static(b"future") });
}

#[test]
fn partial_frames_wait_for_more_bytes() {
    let full = Frame::Ask(Hash::of(b"x")).to_bytes();
    for cut in 0..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(decode(&mut buf).unwrap(), None, "cut at {cut}");
        assert_eq!(buf.len(), cut, "nothing consumed");
    }
}

#[test]
fn oversized_length_is_refused_from_the_prefix_alone() {
    let mut buf = BytesMut::from(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes()[..]);
    assert_eq!(decode(&mut buf), Err(FrameError::TooLong(MAX_FRAME_LEN + 1)));
    let mut ok = BytesMut::from(&(MAX_FRAME_LEN as u32).to_be_bytes()[..]);
    assert_eq!(decode(&mut ok), Ok(None));
}

#[test]
fn wrong_body_lengths_are_violations() {
    for (kind, len) in [
        (kind::ASK, 31),
        (kind::ASK, 33),
        (kind::HAVE, 35),
        (kind::HELLO, 102),
        (kind::HELLO, 104),
        (kind::BITFIELD, 35),
        (kind::REJECT, 2),
        (kind::GIVE, 31),
    ] {
        let mut buf = BytesMut::new();
        buf.put_u32(1 + len as u32);
        buf.put_u8(kind);
        buf.put_bytes(0, len);
        assert!(matches!(decode(&mut buf), Err(FrameError::BadLength { .. })), "kind {kind} len {len}");
    }
    let mut too_many = BytesMut::new();
    too_many.put_u32(1 + 51 * 50);
    too_many.put_u8(kind::PEERS);
    too_many.put_bytes(0, 51 * 50);
    assert!(decode(&mut too_many).is_err());
    let mut long_reason = BytesMut::new();
    long_reason.put_u32(1 + 3 + 201);
    long_reason.put_u8(kind::REJECT);
    long_reason.put_u8(1);
    long_reason.put_u16(0);
    long_reason.put_bytes(b'a', 201);
    assert!(decode(&mut long_reason).is_err());
}

#[test]
fn reject_reason_is_truncated_on_a_char_boundary() {
    let Frame::Reject { reason, .. } = Frame::reject(RejectCode::Misbehaving, "é".repeat(150)) else { unreachable!() };
    assert_eq!(reason.len(), 200);
}

/// One frame of every type, with bodies of several sizes.
fn one_of_each() -> Vec<Frame> {
    let h = Hash::of(b"pex");
    vec![
        Frame::KeepAlive,
        Frame::Ask(h),
        Frame::Give { hash: Hash::of(b""), data: Bytes::new() },
        Frame::Give { hash: h, data: Bytes::from_static(b"hello, swarm\n") },
        Frame::Peers(vec![]),
        Frame::Peers(vec![entry(1, "[::1]:9000"), entry(2, "127.0.0.1:6881")]),
        Frame::Hello(Hello { node_id: NodeId([3; 32]), listen_port: 9000, flags: 1, signature: [7; 64] }),
        Frame::DontHave(h),
        Frame::Bitfield { root: h, first: 0, bits: Bytes::from_static(&[0xa0, 0x40]) },
        Frame::Have { root: h, index: 70_000 },
        Frame::Reject { code: 2, retry_after: 0, reason: "peer limit reached".into() },
        Frame::Reject { code: 9, retry_after: 0, reason: String::new() },
        Frame::Cancel(h),
        Frame::Join(h),
        Frame::Leave(h),
        Frame::Members { room: h, members: vec![entry(4, "[::1]:9001")] },
        Frame::Message(crate::wire::RoomMessage {
            room: h,
            id: [1; 16],
            origin: NodeId([2; 32]),
            hops: 7,
            signature: [3; 64],
            payload: Bytes::from_static(b"hello, room"),
        }),
        Frame::Direct { room: h, id: [5; 16], payload: Bytes::new() },
        Frame::Presence(crate::wire::Presence {
            room: h,
            origin: NodeId([4; 32]),
            seq: 1 << 40,
            state: 1,
            hops: 3,
            signature: [5; 64],
        }),
        Frame::Unknown { kind: 200, body: Bytes::from_static(b"future") },
        Frame::Unknown { kind: 15, body: Bytes::new() },
    ]
}

#[test]
fn every_frame_type_has_its_documented_name() {
    let h = Hash::of(b"x");
    // docs/PROTOCOL.md sections 3 and 4 name the types; keep-alive and unknown types as logs show them.
    let table = [
        (Frame::KeepAlive, "KEEPALIVE"),
        (Frame::Ask(h), "ASK"),
        (Frame::Give { hash: h, data: Bytes::new() }, "GIVE"),
        (Frame::Peers(vec![]), "PEERS"),
        (Frame::Hello(Hello { node_id: NodeId([0; 32]), listen_port: 0, flags: 1, signature: [7; 64] }), "HELLO"),
        (Frame::DontHave(h), "DONT_HAVE"),
        (Frame::Bitfield { root: h, first: 0, bits: Bytes::new() }, "BITFIELD"),
        (Frame::Have { root: h, index: 0 }, "HAVE"),
        (Frame::Reject { code: 1, retry_after: 0, reason: String::new() }, "REJECT"),
        (Frame::Cancel(h), "CANCEL"),
        (Frame::Join(h), "JOIN"),
        (Frame::Leave(h), "LEAVE"),
        (Frame::Members { room: h, members: vec![] }, "MEMBERS"),
        (Frame::Direct { room: h, id: [0; 16], payload: Bytes::new() }, "DIRECT"),
        (zero_presence(), "PRESENCE"),
        (Frame::Unknown { kind: 15, body: Bytes::new() }, "UNKNOWN"),
    ];
    for (frame, name) in table {
        assert_eq!(frame.name(), name, "{frame:?}");
    }
}

/// A PRESENCE of all zeros, for the tables of names and type bytes.
fn zero_presence() -> Frame {
    let h = Hash::default();
    Frame::Presence(crate::wire::Presence {
        room: h,
        origin: NodeId::default(),
        seq: 0,
        state: 0,
        hops: 0,
        signature: [0; 64],
    })
}

#[test]
fn the_type_bytes_are_the_documented_ones() {
    // Section 3: the byte after the prefix.
    let h = Hash::default();
    let types: [(Frame, u8); 15] = [
        (Frame::Ask(Hash::default()), 0),
        (Frame::Give { hash: Hash::default(), data: Bytes::new() }, 1),
        (Frame::Peers(vec![]), 2),
        (Frame::Hello(Hello { node_id: NodeId::default(), listen_port: 0, flags: 1, signature: [7; 64] }), 3),
        (Frame::DontHave(Hash::default()), 4),
        (Frame::Bitfield { root: Hash::default(), first: 0, bits: Bytes::new() }, 5),
        (Frame::Have { root: Hash::default(), index: 0 }, 6),
        (Frame::Reject { code: 1, retry_after: 0, reason: String::new() }, 7),
        (Frame::Cancel(Hash::default()), 8),
        (Frame::Join(h), 9),
        (Frame::Leave(h), 10),
        (Frame::Members { room: h, members: vec![] }, 11),
        (
            Frame::Message(crate::wire::RoomMessage {
                room: h,
                id: [0; 16],
                origin: NodeId::default(),
                hops: 0,
                signature: [0; 64],
                payload: Bytes::new(),
            }),
            12,
        ),
        (Frame::Direct { room: h, id: [0; 16], payload: Bytes::new() }, 13),
        (zero_presence(), 14),
    ];
    for (frame, kind) in types {
        assert_eq!(frame.to_bytes()[4], kind, "{}", frame.name());
    }
}

#[test]
fn encode_give_head_is_the_head_of_the_give() {
    for len in [0, 1, 13, 4096, MAX_BLOB_LEN] {
        let data = Bytes::from(vec![0x5a; len]);
        let hash = Hash::of(&data);
        let whole = Frame::Give { hash, data }.to_bytes();
        let mut head = BytesMut::new();
        Frame::encode_give_head(&mut head, &hash, len);
        assert_eq!(head.len(), 4 + 1 + 32, "{len} bytes of data");
        assert_eq!(&head[..], &whole[..37], "{len} bytes of data");
        assert_eq!(&head[..4], &((33 + len) as u32).to_be_bytes(), "L = 33 + len");
        // It appends, as writers batch heads into one buffer.
        let mut two = BytesMut::from(&b"xy"[..]);
        Frame::encode_give_head(&mut two, &hash, len);
        assert_eq!(&two[..2], b"xy");
        assert_eq!(&two[2..], &head[..]);
    }
}

#[test]
fn encode_head_leaves_only_a_gives_data_out() {
    for frame in one_of_each() {
        let whole = frame.to_bytes();
        let mut head = BytesMut::new();
        match (frame.encode_head(&mut head), &frame) {
            (Some(data), Frame::Give { data: d, .. }) => {
                assert_eq!(data, d);
                assert_eq!(head.len(), 37);
                assert_eq!([&head[..], &data[..]].concat(), whole[..]);
            }
            (None, Frame::Give { .. }) => panic!("GIVE's data not handed back"),
            (Some(_), _) => panic!("{} handed back data", frame.name()),
            (None, _) => assert_eq!(head, whole, "{}", frame.name()),
        }
    }
}

#[test]
fn frame_size_needs_the_four_prefix_bytes_and_nothing_more() {
    let ask = Frame::Ask(Hash::of(b"x")).to_bytes();
    for cut in 0..4 {
        assert_eq!(frame_size(&ask[..cut]), Ok(None), "{cut} bytes");
    }
    for cut in 4..=ask.len() {
        assert_eq!(frame_size(&ask[..cut]), Ok(Some(37)), "{cut} bytes");
    }
    for l in [0u32, 1, 33, 1000, MAX_FRAME_LEN as u32] {
        assert_eq!(frame_size(&l.to_be_bytes()), Ok(Some(4 + l as usize)), "L = {l}");
        assert_eq!(frame_size(&[&l.to_be_bytes()[..], &[9; 40]].concat()), Ok(Some(4 + l as usize)), "L = {l}");
    }
    for l in [MAX_FRAME_LEN as u32 + 1, u32::MAX] {
        assert_eq!(frame_size(&l.to_be_bytes()), Err(FrameError::TooLong(l as usize)), "L = {l}");
    }
    // Big-endian: the first byte is the most significant.
    assert_eq!(frame_size(&[0, 0, 1, 2]), Ok(Some(4 + 258)));
    assert_eq!(frame_size(&[0, 1, 0, 0]), Ok(Some(4 + 65_536)));
    assert_eq!(frame_size(&[0, 0x10, 0, 0x21]), Ok(Some(4 + 1_048_609)));
    assert_eq!(frame_size(&[0, 0x10, 0, 0x22]), Err(FrameError::TooLong(1_048_610)));
    assert_eq!(frame_size(&[1, 0, 0, 0]), Err(FrameError::TooLong(1 << 24)));
}

#[test]
fn decode_takes_exactly_one_frame_off_a_buffer_holding_two() {
    let frames = one_of_each();
    for first in &frames {
        for second in &frames {
            let mut buf = BytesMut::new();
            first.encode(&mut buf);
            second.encode(&mut buf);
            let second_bytes = second.to_bytes();
            assert_eq!(decode(&mut buf), Ok(Some(first.clone())), "{} then {}", first.name(), second.name());
            assert_eq!(buf, second_bytes, "{} then {}: the second left whole", first.name(), second.name());
            assert_eq!(decode(&mut buf), Ok(Some(second.clone())));
            assert!(buf.is_empty());
            assert_eq!(decode(&mut buf), Ok(None));
        }
    }
}

#[test]
fn a_whole_frame_then_part_of_the_next_gives_the_first_and_keeps_the_part() {
    for first in one_of_each() {
        for second in one_of_each() {
            let next = second.to_bytes();
            for cut in [1, 3, 4, 5, next.len() - 1].into_iter().filter(|&c| c < next.len()) {
                let mut buf = BytesMut::new();
                first.encode(&mut buf);
                buf.extend_from_slice(&next[..cut]);
                assert_eq!(decode(&mut buf), Ok(Some(first.clone())));
                assert_eq!(&buf[..], &next[..cut]);
                assert_eq!(decode(&mut buf), Ok(None), "{} cut at {cut}", second.name());
                assert_eq!(&buf[..], &next[..cut], "nothing consumed");
            }
        }
    }
}

#[test]
fn decode_body_agrees_with_decode() {
    for frame in one_of_each().into_iter().filter(|f| *f != Frame::KeepAlive) {
        let bytes = frame.to_bytes();
        assert_eq!(decode_body(bytes[4], bytes.slice(5..)), Ok(frame.clone()), "{}", frame.name());
    }
}

#[test]
fn a_bitfield_whose_last_bit_passes_piece_2_pow_32_is_refused() {
    let at = |first: u32, n: usize| {
        let mut b = BytesMut::new();
        b.put_u32((1 + BITFIELD_HEAD + n) as u32);
        b.put_u8(kind::BITFIELD);
        b.put_bytes(0, 32);
        b.put_u32(first);
        b.put_bytes(0, n);
        decode(&mut b)
    };
    assert!(at(u32::MAX - 7, 1).is_ok(), "bits for pieces 2^32-8 .. 2^32-1");
    assert_eq!(at(u32::MAX - 6, 1), Err(FrameError::BitfieldRange { first: u32::MAX - 6, bytes: 1 }));
    assert!(at(u32::MAX, 0).is_ok(), "no bits: nothing past the end");
}

#[test]
fn the_v1_answer_is_a_plaintext_v1_reject() {
    let v = v1_reject(RejectCode::ProtocolViolation, "speaks pex/2");
    assert_eq!(&v[..6], &[0, 0, 0, 14, 7, 3]);
    assert_eq!(&v[6..], b"speaks pex/2");
    assert!(v1_reject(RejectCode::ProtocolViolation, &"x".repeat(300)).len() == 4 + 2 + 200);
    let cut = v1_reject(RejectCode::ProtocolViolation, &"é".repeat(150));
    assert_eq!(cut.len(), 4 + 2 + 200);
    assert!(std::str::from_utf8(&cut[6..]).is_ok(), "cut on a character boundary");
}
