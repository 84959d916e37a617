//! Property tests of the frame codec: valid frames of every type built by
//! strategies, the same with one field broken, and arbitrary bytes, each
//! checked against [`spec_verdict`], the decoder written from docs/PROTOCOL.md.

use crate::common;
use crate::*;
use bytes::{Bytes, BytesMut};
use pex::wire::{decode, frame_size, Frame, Hello, PeerEntry, RejectCode};
use pex::{Hash, NodeId};
use proptest::collection::vec;
use proptest::sample::Index;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..600)) {
        decode_like_the_spec(&bytes)?;
    }

    #[test]
    fn typed_frames_with_random_bodies_never_panic(kind in 0u8..12, body in vec(any::<u8>(), 0..240)) {
        let bytes = raw_frame(kind, &body);
        decode_like_the_spec(&bytes)?;
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

/// Addresses the way a decoder hands them out: IPv4 (which travels IPv4-mapped)
/// or an IPv6 address that is not IPv4-mapped, with no flow info or scope.
fn arb_addr() -> impl Strategy<Value = SocketAddr> {
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

fn arb_peer() -> impl Strategy<Value = PeerEntry> {
    (any::<[u8; 32]>(), arb_addr()).prop_map(|(id, addr)| PeerEntry { node_id: NodeId(id), addr })
}

fn arb_signature() -> impl Strategy<Value = [u8; 64]> {
    (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| [a, b].concat().try_into().unwrap())
}

fn arb_hello() -> impl Strategy<Value = Hello> {
    (any::<[u8; 32]>(), any::<u16>(), any::<u8>(), arb_signature())
        .prop_map(|(id, listen_port, flags, signature)| Hello { node_id: NodeId(id), listen_port, flags, signature })
}

/// A BITFIELD range that stays within piece 2^32 - 1: often right at the end.
fn arb_bitfield() -> impl Strategy<Value = Frame> {
    (arb_hash(), arb_bytes(SPEC_MAX_L - 1 - SPEC_BITFIELD_HEAD), any::<u32>(), 0u8..4).prop_map(
        |(root, bits, r, how)| {
            let most = ((1u64 << 32) - 8 * bits.len() as u64).min(u32::MAX as u64) as u32;
            let first = match how {
                0 => 0,
                1 => most,
                _ => (r as u64 % (most as u64 + 1)) as u32,
            };
            Frame::Bitfield { root, first, bits }
        },
    )
}

/// Characters of 1 to 4 bytes of UTF-8, controls included.
pub fn arb_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => proptest::char::range('a', 'z'),
        2 => prop::sample::select(vec!['é', 'ß', '€', '中', '😀', '\u{10FFFF}', '\u{FEFF}']),
        1 => proptest::char::range('\0', '\u{9f}'),
        2 => any::<char>(),
    ]
}

/// A string of at most `max` bytes of UTF-8, often exactly `max`.
pub fn arb_text(max: usize) -> impl Strategy<Value = String> {
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
        arb_hello().prop_map(Frame::Hello),
        arb_hash().prop_map(Frame::DontHave),
        arb_bitfield(),
        (arb_hash(), any::<u32>()).prop_map(|(root, index)| Frame::Have { root, index }),
        (any::<u8>(), any::<u16>(), arb_text(SPEC_MAX_REASON)).prop_map(|(code, retry_after, reason)| Frame::Reject {
            code,
            retry_after,
            reason
        }),
        arb_hash().prop_map(Frame::Cancel),
        arb_hash().prop_map(Frame::Join),
        arb_hash().prop_map(Frame::Leave),
        (arb_hash(), vec(arb_peer(), 0..=SPEC_MAX_PEERS)).prop_map(|(room, members)| Frame::Members { room, members }),
        (arb_hash(), any::<[u8; 16]>(), arb_hash(), any::<u8>(), any::<[u8; 32]>(), arb_bytes(SPEC_MAX_PAYLOAD))
            .prop_map(|(room, id, origin, hops, half, payload)| {
                let mut signature = [0u8; 64];
                signature[..32].copy_from_slice(&half);
                signature[32..].copy_from_slice(&origin.0);
                Frame::Message(pex::wire::RoomMessage { room, id, origin: NodeId(origin.0), hops, signature, payload })
            }),
        (arb_hash(), any::<[u8; 16]>(), arb_bytes(SPEC_MAX_PAYLOAD)).prop_map(|(room, id, payload)| Frame::Direct {
            room,
            id,
            payload
        }),
        (arb_hash(), arb_hash(), any::<u64>(), any::<(u8, u8)>(), any::<[u8; 32]>()).prop_map(
            |(room, origin, seq, (state, hops), half)| {
                let mut signature = [0u8; 64];
                signature[..32].copy_from_slice(&half);
                signature[32..].copy_from_slice(&room.0);
                Frame::Presence(pex::wire::Presence { room, origin: NodeId(origin.0), seq, state, hops, signature })
            }
        ),
        (15u8..=255, arb_bytes(SPEC_MAX_L - 1)).prop_map(|(kind, body)| Frame::Unknown { kind, body }),
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
    fn ipv4_peers_travel_ipv4_mapped_and_come_back_as_ipv4(id in any::<[u8; 32]>(), ip in any::<[u8; 4]>(), port in any::<u16>()) {
        let node_id = NodeId(id);
        let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port);
        let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::from(ip).to_ipv6_mapped()), port);
        let bytes = Frame::Peers(vec![PeerEntry { node_id, addr: v4 }]).to_bytes();
        let mut entry = [0u8; 50];
        entry[..32].copy_from_slice(&id);
        entry[42..44].copy_from_slice(&[0xff, 0xff]);
        entry[44..48].copy_from_slice(&ip);
        entry[48..].copy_from_slice(&port.to_be_bytes());
        prop_assert_eq!(&bytes[..], &raw_frame(2, &entry)[..]);
        prop_assert_eq!(&Frame::Peers(vec![PeerEntry { node_id, addr: mapped }]).to_bytes()[..], &bytes[..]);
        prop_assert_eq!(decode_all(&bytes), Ok(Some((Frame::Peers(vec![PeerEntry { node_id, addr: v4 }]), bytes.len()))));
    }

    #[test]
    fn frame_reject_keeps_the_longest_prefix_of_at_most_200_bytes(
        reason in prop_oneof![arb_text(400), any::<String>()],
        code in 1u8..=6,
        retry_after in any::<u16>(),
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
        let code_ = RejectCode::from_u8(code).unwrap();
        let frame = Frame::reject_retry(code_, retry_after, reason.clone());
        prop_assert_eq!(&frame, &Frame::Reject { code, retry_after, reason: want.clone() });
        prop_assert_eq!(Frame::reject(code_, reason), Frame::Reject { code, retry_after: 0, reason: want });
        let bytes = frame.to_bytes();
        prop_assert_eq!(spec_verdict(&bytes), Verdict::Frame(bytes.len()));
        prop_assert_eq!(&bytes[6..8], &retry_after.to_be_bytes()[..]);
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
    /// One byte of the first 44 (prefix, type, and the fields v2 changed: a
    /// BITFIELD's first index, a REJECT's retry-after, HELLO's version) XORed.
    FlipHead(usize, u8),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => prop_oneof![-60i64..=60, any::<u32>().prop_map(i64::from)].prop_map(Mutation::Length),
        2 => any::<u8>().prop_map(Mutation::Kind),
        2 => (1usize..=60).prop_map(Mutation::CutBody),
        2 => vec(any::<u8>(), 1..60).prop_map(Mutation::GrowBody),
        1 => (1usize..=60).prop_map(Mutation::Truncate),
        1 => vec(any::<u8>(), 1..40).prop_map(Mutation::Trailing),
        3 => (any::<Index>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        3 => (0usize..44, 1u8..=255).prop_map(|(at, mask)| Mutation::FlipHead(at, mask)),
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
        Mutation::FlipHead(at, mask) => {
            let i = at % b.len();
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
    TooManyPeers(Vec<PeerEntry>),
    /// PEERS whose body is not a multiple of 50 bytes.
    RaggedPeers(Vec<PeerEntry>, Vec<u8>),
    /// A BITFIELD whose bits run past piece 2^32 - 1: (root, bits, how far past).
    BitfieldPastEnd(Hash, Bytes, u32),
    /// A REJECT reason of more than 200 bytes (valid UTF-8).
    LongReason(u8, u16, String),
    /// A REJECT reason with a sequence that is not UTF-8 spliced in at a char boundary.
    NotUtf8(u8, u16, String, Index, Vec<u8>),
    /// ASK, DONT_HAVE, CANCEL, HAVE, HELLO with too few or too many bytes,
    /// GIVE with fewer than 32, BITFIELD with fewer than 36, REJECT with fewer than 3.
    WrongSize(u8, usize),
}

fn arb_broken() -> impl Strategy<Value = Broken> {
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
        (3, 102),
        (3, 104),
        (3, 38),
        (3, 0),
        (1, 31),
        (1, 0),
        (5, 35),
        (5, 32),
        (5, 0),
        (7, 0),
        (7, 1),
        (7, 2),
    ]);
    prop_oneof![
        (arb_hello(), 0usize..4, 1u8..=255).prop_map(|(h, at, mask)| Broken::HelloHead(h, at, mask)),
        vec(arb_peer(), SPEC_MAX_PEERS + 1..=SPEC_MAX_PEERS + 10).prop_map(Broken::TooManyPeers),
        (vec(arb_peer(), 0..=SPEC_MAX_PEERS), vec(any::<u8>(), 1..SPEC_PEER_ENTRY))
            .prop_map(|(p, e)| Broken::RaggedPeers(p, e)),
        (arb_hash(), arb_bytes(SPEC_MAX_L - 1 - SPEC_BITFIELD_HEAD), prop_oneof![Just(1u32), 1u32..=8, any::<u32>()])
            .prop_filter("some bits", |(_, bits, _)| !bits.is_empty())
            .prop_map(|(root, bits, past)| Broken::BitfieldPastEnd(root, bits, past)),
        (any::<u8>(), any::<u16>(), arb_text(SPEC_MAX_REASON), vec(arb_char(), 1..=SPEC_MAX_REASON)).prop_map(
            |(code, retry, mut reason, more)| {
                for c in more.into_iter().chain(std::iter::repeat('y')) {
                    if reason.len() > SPEC_MAX_REASON {
                        break;
                    }
                    reason.push(c);
                }
                Broken::LongReason(code, retry, reason)
            }
        ),
        (any::<u8>(), any::<u16>(), arb_text(SPEC_MAX_REASON - 5), any::<Index>(), not_utf8)
            .prop_map(|(code, retry, reason, at, bad)| Broken::NotUtf8(code, retry, reason, at, bad)),
        sizes.prop_map(|(kind, len)| Broken::WrongSize(kind, len)),
    ]
}

use proptest::prelude::*;

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
        Broken::BitfieldPastEnd(root, bits, past) => {
            // The first index whose range ends exactly at 2^32, moved `past` further (wrapping
            // is fine: any first index with these bits that ends past 2^32 will do).
            let fits = (1u64 << 32) - 8 * bits.len() as u64;
            let first = fits.saturating_add(*past as u64).min(u32::MAX as u64) as u32;
            raw_frame(5, &bitfield_body(&root.0, first, bits))
        }
        Broken::LongReason(code, retry_after, reason) => {
            Frame::Reject { code: *code, retry_after: *retry_after, reason: reason.clone() }.to_bytes().to_vec()
        }
        Broken::NotUtf8(code, retry_after, reason, at, bad) => {
            let mut i = at.index(reason.len() + 1);
            while !reason.is_char_boundary(i) {
                i -= 1;
            }
            let text = [&reason.as_bytes()[..i], &bad[..], &reason.as_bytes()[i..]].concat();
            raw_frame(7, &reject_body(*code, *retry_after, &text))
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
