//! Golden frames. v1 (fixtures/protocol-vectors.json, from an independent
//! implementation): the frame types v2 did not change must still decode and
//! re-encode byte for byte; the others get the verdict v2 gives them. v2
//! (fixtures/v2-vectors.json): built here byte by byte from the layouts of
//! docs/PROTOCOL.md section 4, decoded, re-encoded, or refused with the
//! documented error.

use crate::common::hex;
use crate::connection;
use crate::fixtures::{self, ConnectionFixture, V1Answer, Vector, VectorsFixture};
use crate::*;
use bytes::Bytes;
use pex::hash::hex as to_hex;
use pex::wire::{Frame, Hello, PeerEntry, RejectCode};
use pex::{Hash, NodeId};

/// The v1 vectors: (name, valid, bytes).
pub fn v1_vectors() -> Vec<(String, bool, Vec<u8>)> {
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

/// v1 vectors of the frame types whose layout v2 kept: keep-alive, ASK, GIVE,
/// DONT_HAVE, HAVE, CANCEL, unknown types, and the length limit.
const UNCHANGED: [&str; 11] = [
    "keepalive",
    "ask",
    "give",
    "give_empty",
    "dont_have",
    "have",
    "cancel",
    "unknown_type",
    "too_long",
    "ask_short",
    "have_short",
];

/// What v2 makes of a v1 vector of a changed type.
enum V2Verdict {
    Accepted(Frame),
    Refused(&'static str),
}

/// The v1 vectors of PEERS, HELLO, BITFIELD and REJECT, whose layouts changed.
fn changed() -> Vec<(&'static str, V2Verdict)> {
    use V2Verdict::*;
    vec![
        // Zero entries look the same in both versions.
        ("peers_empty", Accepted(Frame::Peers(vec![]))),
        // 36 bytes: two v1 entries, not a multiple of 50.
        ("peers_two", Refused("BadLength")),
        ("peers_ragged", Refused("BadLength")),
        // 38-byte v1 HELLOs are not 103 bytes, whatever their version byte says.
        ("hello", Refused("BadLength")),
        ("hello_not_listening", Refused("BadLength")),
        ("hello_short", Refused("BadLength")),
        ("hello_bad_magic", Refused("BadLength")),
        ("hello_bad_version", Refused("BadLength")),
        // Root and 2 bytes of bits: shorter than root and first index.
        ("bitfield", Refused("BadLength")),
        // Code 2, then "pe" read as a retry-after of 0x7065 = 28,773 s: a v1 REJECT
        // means something else to v2. (A v2 node never decodes v1 frames: v1 is
        // detected before the Noise handshake, section 2.5.)
        ("reject_full", Accepted(Frame::Reject { code: 2, retry_after: 0x7065, reason: "er limit reached".into() })),
    ]
}

#[test]
fn every_v1_vector_is_classified() {
    let changed = changed();
    for (name, _, _) in v1_vectors() {
        let n = UNCHANGED.contains(&name.as_str()) as usize + changed.iter().filter(|c| c.0 == name).count();
        assert_eq!(n, 1, "{name}: in exactly one of UNCHANGED and changed()");
    }
    assert_eq!(v1_vectors().len(), UNCHANGED.len() + changed.len());
}

#[test]
fn v1_vectors_of_unchanged_types_decode_and_re_encode_byte_for_byte() {
    let valid: Vec<_> = v1_vectors().into_iter().filter(|v| v.1 && UNCHANGED.contains(&v.0.as_str())).collect();
    assert_eq!(valid.len(), 8);
    for (name, _, bytes) in valid {
        assert_accepted(&bytes, &name);
        assert_eq!(spec_verdict(&bytes), Verdict::Frame(bytes.len()), "{name}");
    }
}

#[test]
fn v1_vectors_of_unchanged_types_that_are_invalid_are_refused() {
    let invalid: Vec<_> = v1_vectors().into_iter().filter(|v| !v.1 && UNCHANGED.contains(&v.0.as_str())).collect();
    assert_eq!(invalid.len(), 3);
    for (name, _, bytes) in invalid {
        assert_refused(&bytes, &name);
        assert_eq!(spec_verdict(&bytes), Verdict::Violation, "{name}");
    }
}

#[test]
fn v1_vectors_of_changed_types_get_their_v2_verdict() {
    let v1 = v1_vectors();
    for (name, verdict) in changed() {
        let bytes = &v1.iter().find(|v| v.0 == name).unwrap().2;
        match verdict {
            V2Verdict::Accepted(frame) => {
                assert_eq!(assert_accepted(bytes, name), frame, "{name}");
                assert_eq!(spec_verdict(bytes), Verdict::Frame(bytes.len()), "{name}");
            }
            V2Verdict::Refused(error) => {
                assert_eq!(error_name(&assert_refused(bytes, name)), error, "{name}");
                assert_eq!(spec_verdict(bytes), Verdict::Violation, "{name}");
            }
        }
    }
}

#[test]
fn v1_vectors_mean_what_their_notes_say() {
    let v = v1_vectors();
    let get = |n: &str| assert_accepted(&v.iter().find(|x| x.0 == n).unwrap().2, n);
    assert_eq!(get("keepalive"), Frame::KeepAlive);
    assert_eq!(get("ask"), Frame::Ask(Hash::of(b"pex")));
    assert_eq!(get("dont_have"), Frame::DontHave(Hash::of(b"pex")));
    assert_eq!(get("cancel"), Frame::Cancel(Hash::of(b"pex")));
    let Frame::Give { hash, data } = get("give") else { panic!() };
    assert_eq!(&data[..], b"hello, swarm\n");
    assert_eq!(hash, Hash::of(&data));
    assert_eq!(get("give_empty"), Frame::Give { hash: Hash::of(b""), data: Bytes::new() });
    assert_eq!(get("have"), Frame::Have { root: Hash::of(b"pex"), index: 70000 });
    assert_eq!(get("unknown_type"), Frame::Unknown { kind: 200, body: Bytes::from_static(b"future") });
}

// ---------------------------------------------------------------------------
// v2 vectors.

fn id(secret: u8) -> [u8; 32] {
    model::node_id(&[secret; 32])
}

/// The message id of the room vectors: 00 01 … 0f.
const MESSAGE_ID: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

/// A MESSAGE body from the identity of secret 03…03 (whose node id is `origin`), signed by the model.
fn message_body(room: &[u8; 32], origin: &[u8; 32], hops: u8, payload: &[u8]) -> Vec<u8> {
    let sig = model::room_signature(&connection::THIRD, room, &MESSAGE_ID, payload);
    [&room[..], &MESSAGE_ID, origin, &[hops], &sig, payload].concat()
}

/// The sequence number of the PRESENCE vectors: 2026-12-08 00:00:00 UTC in milliseconds.
const PRESENCE_SEQ: u64 = 1_796_688_000_000;

/// A PRESENCE body from the identity of secret 03…03 (node id `origin`), signed by the model.
fn presence_body(room: &[u8; 32], origin: &[u8; 32], seq: u64, state: u8, hops: u8) -> Vec<u8> {
    let sig = model::presence_signature(&connection::THIRD, room, seq, state);
    [&room[..], origin, &seq.to_be_bytes(), &[state, hops], &sig].concat()
}

fn valid(name: &str, frame: Vec<u8>, note: &str) -> Vector {
    Vector { name: name.into(), valid: true, hex: to_hex(&frame), note: note.into(), error: None }
}

fn invalid(name: &str, frame: Vec<u8>, error: &str, note: &str) -> Vector {
    Vector { name: name.into(), valid: false, hex: to_hex(&frame), note: note.into(), error: Some(error.into()) }
}

/// IPv4-mapped IPv6 bytes of a.b.c.d.
fn mapped(v4: [u8; 4]) -> [u8; 16] {
    let mut ip = [0u8; 16];
    ip[10] = 0xff;
    ip[11] = 0xff;
    ip[12..].copy_from_slice(&v4);
    ip
}

fn entry(id: &[u8; 32], ip: [u8; 16], port: u16) -> Vec<u8> {
    [&id[..], &ip, &port.to_be_bytes()].concat()
}

/// Entry `i` of the 50-entry vector: id SHA-256("peer" i), 2001:db8::i or 10.0.0.i, port 9000 + i.
fn fifty_entry(i: u8) -> Vec<u8> {
    let id = model::sha256(&[b"peer", &[i]]);
    let ip =
        if i % 2 == 0 { mapped([10, 0, 0, i]) } else { [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, i] };
    entry(&id, ip, 9000 + i as u16)
}

const V6_DOC: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Every v2 vector, laid out by hand from section 4 (the HELLO taken from the
/// fixture connection, so its signature verifies there).
pub fn build_fixture(conn: &ConnectionFixture) -> VectorsFixture {
    let hello_frame = hex(&conn.transport[0].plaintext);
    let hello = hello_frame[5..].to_vec();
    let (node_id, sig): ([u8; 32], [u8; 64]) = (hello[4..36].try_into().unwrap(), hello[39..].try_into().unwrap());
    let pex = Hash::of(b"pex").0;
    let third = connection::third_entry();
    let fifty: Vec<u8> = (0..50).flat_map(fifty_entry).collect();
    let fifty_one: Vec<u8> = (0..51).flat_map(fifty_entry).collect();
    let lobby = model::sha256(&[b"pex-room", b"lobby"]);
    let vectors = vec![
        valid(
            "hello",
            raw_frame(3, &hello),
            "the initiator's HELLO in fixtures/v2-connection.json: node id 8a88e3dd…6f5c, listen port 9001, \
             flags 01 (shareable), its signature valid for that connection's handshake hash",
        ),
        valid(
            "hello_not_listening",
            raw_frame(3, &hello_body(2, &node_id, 0, 0, &sig)),
            "the same node id and signature bytes, listen port 0, flags 00 (valid framing; the codec does not \
             check signatures, the handshake does)",
        ),
        valid(
            "hello_other_flags",
            raw_frame(3, &hello_body(2, &node_id, 9001, 0xfe, &sig)),
            "flags fe: bit 0 clear (not shareable); bits 1-7 are sent zero and ignored, not a violation",
        ),
        valid("peers_empty", raw_frame(2, &[]), "PEERS with no entries (the same bytes as in v1)"),
        valid(
            "peers_one",
            raw_frame(2, &entry(&third.node_id.0, mapped([192, 0, 2, 7]), 9000)),
            "PEERS: node ed4928c6…37d1 (the Ed25519 key of secret 03…03) at 192.0.2.7:9000, IPv4-mapped \
             (::ffff:192.0.2.7); the responder's PEERS in fixtures/v2-connection.json",
        ),
        valid(
            "peers_two",
            raw_frame(2, &[entry(&id(4), V6_DOC, 9000), entry(&id(5), mapped([127, 0, 0, 1]), 6881)].concat()),
            "PEERS: node id of secret 04…04 at [2001:db8::1]:9000, node id of secret 05…05 at 127.0.0.1:6881",
        ),
        valid(
            "peers_fifty",
            raw_frame(2, &fifty),
            "PEERS of 50 entries, the most allowed: entry i (0-49) is node id SHA-256(\"peer\" || i), i one \
             byte, at \
             10.0.0.i (even i, IPv4-mapped) or [2001:db8::i] (odd i), port 9000 + i",
        ),
        valid(
            "bitfield",
            raw_frame(5, &bitfield_body(&pex, 0, &[0xa0, 0x40])),
            "BITFIELD for a 10-piece file under root SHA-256(\"pex\"), from piece 0: a0 40 = pieces 0, 2 and 9",
        ),
        valid(
            "bitfield_empty",
            raw_frame(5, &bitfield_body(&pex, 0, &[])),
            "BITFIELD with no bits (a file of 0 pieces, or an empty range)",
        ),
        valid(
            "bitfield_range",
            raw_frame(5, &bitfield_body(&pex, 8_388_576, &[0x80, 0x00, 0x01])),
            "BITFIELD range from piece 8,388,576 (where the second BITFIELD of a file over 8 TiB starts): \
             pieces 8,388,576 and 8,388,599",
        ),
        valid(
            "bitfield_last",
            raw_frame(5, &bitfield_body(&pex, u32::MAX - 7, &[0xff])),
            "BITFIELD range from piece 4,294,967,288: its last bit is piece 2^32 - 1, the last allowed",
        ),
        valid(
            "reject_full",
            raw_frame(7, &reject_body(2, 5, b"peer limit reached")),
            "REJECT(2) with retry-after 5 s, what pex sends at its connection limit",
        ),
        valid(
            "reject_shutdown",
            raw_frame(7, &reject_body(6, 10, b"shutting down")),
            "REJECT(6) with retry-after 10 s, what pex sends when shutting down",
        ),
        valid("reject_empty", raw_frame(7, &reject_body(1, 0, b"")), "REJECT(1), retry-after 0, empty reason"),
        valid("join", raw_frame(9, &lobby), "JOIN room \"lobby\": its id SHA-256(\"pex-room\" || \"lobby\")"),
        valid("leave", raw_frame(10, &lobby), "LEAVE room \"lobby\""),
        valid(
            "members_one",
            raw_frame(11, &[&lobby[..], &entry(&third.node_id.0, mapped([192, 0, 2, 7]), 9000)].concat()),
            "MEMBERS of room \"lobby\": node ed4928c6…37d1 (secret 03…03) at 192.0.2.7:9000",
        ),
        valid("members_none", raw_frame(11, &lobby), "MEMBERS of room \"lobby\" with no entries"),
        valid(
            "message",
            raw_frame(12, &message_body(&lobby, &third.node_id.0, 8, b"hello, room")),
            "MESSAGE to room \"lobby\": id 00 01 … 0f, origin ed4928c6…37d1 (secret 03…03), 8 hops left, \
             its signature by that key over \"pex/2 room message\" || room || id || payload, payload \
             \"hello, room\"",
        ),
        valid(
            "direct",
            raw_frame(13, &[&lobby[..], &MESSAGE_ID, &b"hi there"[..]].concat()),
            "DIRECT in room \"lobby\": id 00 01 … 0f, payload \"hi there\"",
        ),
        valid(
            "direct_largest",
            raw_frame(13, &[&lobby[..], &MESSAGE_ID, &[0x61; 65_536][..]].concat()),
            "DIRECT with the largest payload, 65,536 bytes of \"a\"",
        ),
        valid(
            "presence",
            raw_frame(14, &presence_body(&lobby, &third.node_id.0, PRESENCE_SEQ, 0, 8)),
            "PRESENCE in room \"lobby\": origin ed4928c6…37d1 (secret 03…03) is here, seq 1796688000000 \
             (2026-12-08 in ms), 8 hops left, signed by that key over \"pex/2 room presence\" || room || seq \
             || state",
        ),
        valid(
            "presence_leaving",
            raw_frame(14, &presence_body(&lobby, &third.node_id.0, PRESENCE_SEQ + 1, 1, 8)),
            "PRESENCE in room \"lobby\": the same origin has left (state 1), seq 1796688000001, 8 hops left",
        ),
        invalid("hello_102", raw_frame(3, &hello[..102]), "BadLength", "HELLO body of 102 bytes"),
        invalid("hello_104", raw_frame(3, &[&hello[..], &[0]].concat()), "BadLength", "HELLO body of 104 bytes"),
        invalid(
            "hello_v1",
            raw_frame(3, &[&b"PEX\x01"[..], &node_id, &[0x23, 0x28]].concat()),
            "BadLength",
            "a v1 HELLO body (38 bytes, version 1)",
        ),
        invalid(
            "hello_version_1",
            raw_frame(3, &hello_body(1, &node_id, 9001, 1, &sig)),
            "BadVersion",
            "103-byte HELLO with version 1",
        ),
        invalid(
            "hello_bad_magic",
            raw_frame(3, &[&b"PEY"[..], &hello[3..]].concat()),
            "BadMagic",
            "HELLO with magic PEY",
        ),
        invalid("peers_49", raw_frame(2, &fifty[..49]), "BadLength", "PEERS body of 49 bytes"),
        invalid(
            "peers_51_entries",
            raw_frame(2, &fifty_one),
            "BadLength",
            "PEERS of 51 entries (2,550 bytes): entries 0-50 built as in peers_fifty",
        ),
        invalid(
            "peers_v1_entry",
            raw_frame(2, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x23, 0x28]),
            "BadLength",
            "PEERS with one v1 entry ([::1]:9000, 18 bytes)",
        ),
        invalid(
            "bitfield_35",
            raw_frame(5, &bitfield_body(&pex, 0, &[])[..35]),
            "BadLength",
            "BITFIELD body of 35 bytes",
        ),
        invalid(
            "bitfield_past_end",
            raw_frame(5, &bitfield_body(&pex, u32::MAX - 6, &[0x80])),
            "BitfieldRange",
            "BITFIELD from piece 4,294,967,289 with one byte of bits: its last bit would be piece 2^32",
        ),
        invalid("reject_2", raw_frame(7, &[2, 0]), "BadLength", "REJECT body of 2 bytes"),
        invalid("join_31", raw_frame(9, &lobby[..31]), "BadLength", "JOIN body of 31 bytes"),
        invalid(
            "members_49",
            raw_frame(11, &[&lobby[..], &fifty[..49]].concat()),
            "BadLength",
            "MEMBERS body of 32 + 49 bytes",
        ),
        invalid(
            "message_144",
            raw_frame(12, &message_body(&lobby, &third.node_id.0, 8, b"")[..144]),
            "BadLength",
            "MESSAGE body of 144 bytes: the head of a MESSAGE with an empty payload (signed as such) from the \
             same origin, one byte short",
        ),
        invalid(
            "presence_137",
            raw_frame(14, &presence_body(&lobby, &third.node_id.0, PRESENCE_SEQ, 0, 8)[..137]),
            "BadLength",
            "PRESENCE body of 137 bytes, one short",
        ),
        invalid(
            "direct_too_large",
            raw_frame(13, &[&lobby[..], &MESSAGE_ID, &[0x61; 65_537][..]].concat()),
            "BadLength",
            "DIRECT with a payload of 65,537 bytes, one over the limit",
        ),
        invalid(
            "reject_reason_201",
            raw_frame(7, &reject_body(3, 0, &[b'a'; 201])),
            "BadLength",
            "REJECT(3), retry-after 0, with a 201-byte reason: \"a\" 201 times (body 204 bytes)",
        ),
        invalid("reject_not_utf8", raw_frame(7, &reject_body(3, 0, &[0xff])), "ReasonNotUtf8", "REJECT reason ff"),
    ];
    let answer = pex::wire::v1_reject(RejectCode::ProtocolViolation, pex::wire::V1_REJECT_REASON);
    VectorsFixture {
        about: "pex wire protocol v2 frames (docs/PROTOCOL.md section 4), laid out byte by byte from the \
                document. 'hex' is the whole frame, length prefix included, as it travels inside Noise \
                transport messages. valid=false frames must be refused as protocol violations; 'error' \
                names the FrameError variant pex returns."
            .into(),
        regenerate: fixtures::REGENERATE.into(),
        vectors,
        v1_answer: V1Answer {
            hex: to_hex(&answer),
            note: "not a v2 frame: the plaintext v1 REJECT(3) a v2 node writes, before any Noise message, \
                   when the first two bytes it reads are 00 00 (a v1 HELLO), before it closes"
                .into(),
        },
    }
}

#[test]
fn the_v2_vectors_are_the_documented_layouts() {
    let committed = fixtures::vectors();
    let rebuilt = build_fixture(&fixtures::connection());
    assert_eq!(committed.vectors.len(), rebuilt.vectors.len());
    for (c, r) in committed.vectors.iter().zip(&rebuilt.vectors) {
        assert_eq!((&c.name, c.valid, &c.error), (&r.name, r.valid, &r.error));
        assert_eq!(c.hex, r.hex, "{}", c.name);
    }
    assert_eq!(committed.v1_answer.hex, rebuilt.v1_answer.hex);
}

#[test]
fn v2_valid_vectors_decode_and_re_encode_byte_for_byte() {
    let all = fixtures::vectors().vectors;
    let valid: Vec<_> = all.iter().filter(|v| v.valid).collect();
    assert!(valid.len() >= 14);
    for v in valid {
        let bytes = hex(&v.hex);
        assert_accepted(&bytes, &v.name);
        assert_eq!(spec_verdict(&bytes), Verdict::Frame(bytes.len()), "{}", v.name);
        assert!(v.error.is_none());
    }
}

#[test]
fn v2_invalid_vectors_are_refused_with_their_documented_error() {
    let all = fixtures::vectors().vectors;
    let invalid: Vec<_> = all.iter().filter(|v| !v.valid).collect();
    assert!(invalid.len() >= 13);
    for v in invalid {
        let bytes = hex(&v.hex);
        let e = assert_refused(&bytes, &v.name);
        assert_eq!(Some(error_name(&e)), v.error.as_deref(), "{}: {e}", v.name);
        assert_eq!(spec_verdict(&bytes), Verdict::Violation, "{}", v.name);
    }
}

#[test]
fn v2_vectors_mean_what_their_notes_say() {
    let conn = fixtures::connection();
    let hh: [u8; 32] = hex(&conn.handshake_hash).try_into().unwrap();
    let hello = connection::INITIATOR.hello(&hh);
    let pex = Hash::of(b"pex");
    let at = |id: [u8; 32], addr: &str| PeerEntry { node_id: NodeId(id), addr: addr.parse().unwrap() };
    let fifty: Vec<PeerEntry> = (0..50u8)
        .map(|i| {
            let addr = if i % 2 == 0 {
                format!("10.0.0.{i}:{}", 9000 + i as u16)
            } else {
                format!("[2001:db8::{i:x}]:{}", 9000 + i as u16)
            };
            at(model::sha256(&[b"peer", &[i]]), &addr)
        })
        .collect();
    let lobby = pex::wire::room_id("lobby");
    let third = model::node_id(&[3; 32]);
    let third = (third, NodeId(third));
    let message = pex::wire::RoomMessage {
        room: lobby,
        id: MESSAGE_ID,
        origin: third.1,
        hops: 8,
        signature: pex::identity::Identity::from_secret([3; 32]).sign_room_message(
            &lobby.0,
            &MESSAGE_ID,
            b"hello, room",
        ),
        payload: Bytes::from_static(b"hello, room"),
    };
    let presence = |state: u8, seq: u64| pex::wire::Presence {
        room: lobby,
        origin: third.1,
        seq,
        state,
        hops: 8,
        signature: pex::identity::Identity::from_secret([3; 32]).sign_presence(&lobby.0, seq, state),
    };
    let expected: Vec<(&str, Frame)> = vec![
        ("hello", Frame::Hello(hello)),
        ("hello_not_listening", Frame::Hello(Hello { listen_port: 0, flags: 0, ..hello })),
        ("hello_other_flags", Frame::Hello(Hello { flags: 0xfe, ..hello })),
        ("peers_empty", Frame::Peers(vec![])),
        ("peers_one", Frame::Peers(vec![at(model::node_id(&[3; 32]), "192.0.2.7:9000")])),
        ("peers_two", Frame::Peers(vec![at(id(4), "[2001:db8::1]:9000"), at(id(5), "127.0.0.1:6881")])),
        ("peers_fifty", Frame::Peers(fifty)),
        ("bitfield", Frame::Bitfield { root: pex, first: 0, bits: Bytes::from_static(&[0xa0, 0x40]) }),
        ("bitfield_empty", Frame::Bitfield { root: pex, first: 0, bits: Bytes::new() }),
        ("bitfield_range", Frame::Bitfield { root: pex, first: 8_388_576, bits: Bytes::from_static(&[0x80, 0, 1]) }),
        ("bitfield_last", Frame::Bitfield { root: pex, first: 4_294_967_288, bits: Bytes::from_static(&[0xff]) }),
        ("reject_full", Frame::reject_retry(RejectCode::PeerLimit, 5, "peer limit reached")),
        ("reject_shutdown", Frame::reject_retry(RejectCode::ShuttingDown, 10, "shutting down")),
        ("reject_empty", Frame::Reject { code: 1, retry_after: 0, reason: String::new() }),
        ("join", Frame::Join(lobby)),
        ("leave", Frame::Leave(lobby)),
        ("members_one", Frame::Members { room: lobby, members: vec![at(third.0, "192.0.2.7:9000")] }),
        ("members_none", Frame::Members { room: lobby, members: vec![] }),
        ("message", Frame::Message(message.clone())),
        ("direct", Frame::Direct { room: lobby, id: MESSAGE_ID, payload: Bytes::from_static(b"hi there") }),
        ("direct_largest", Frame::Direct { room: lobby, id: MESSAGE_ID, payload: Bytes::from(vec![b'a'; 65_536]) }),
        ("presence", Frame::Presence(presence(0, PRESENCE_SEQ))),
        ("presence_leaving", Frame::Presence(presence(1, PRESENCE_SEQ + 1))),
    ];
    // The PRESENCE vectors are signed by their origin over room, seq and state, and only those.
    for (state, seq) in [(0, PRESENCE_SEQ), (1, PRESENCE_SEQ + 1)] {
        let p = presence(state, seq);
        assert!(pex::identity::verify_presence(&p.origin, &p.room.0, p.seq, p.state, &p.signature));
        assert!(!pex::identity::verify_presence(&p.origin, &p.room.0, p.seq + 1, p.state, &p.signature));
        assert!(!pex::identity::verify_presence(&p.origin, &p.room.0, p.seq, p.state ^ 1, &p.signature));
    }
    // The MESSAGE vector is signed by its origin over its room, id and payload, and only those.
    let verify = |m: &pex::wire::RoomMessage| {
        pex::identity::verify_room_message(&m.origin, &m.room.0, &m.id, &m.payload, &m.signature)
    };
    assert!(verify(&message));
    assert!(!verify(&pex::wire::RoomMessage { payload: Bytes::from_static(b"hello, roon"), ..message.clone() }));
    assert!(!verify(&pex::wire::RoomMessage { room: pex, ..message.clone() }));
    let all = fixtures::vectors().vectors;
    assert_eq!(all.iter().filter(|v| v.valid).count(), expected.len(), "every valid vector has its meaning here");
    for (name, frame) in expected {
        let v = all.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("no vector {name}"));
        assert_eq!(assert_accepted(&hex(&v.hex), name), frame, "{name}");
    }
    // The HELLO vector proves its node id on the fixture connection, and only there.
    let sig = hello.signature;
    assert!(pex::identity::verify_hello(&hello.node_id, &hh, &sig));
    assert!(!pex::identity::verify_hello(&hello.node_id, &[0; 32], &sig));
    assert!(hello.shareable());
    assert!(!Hello { flags: 0xfe, ..hello }.shareable());
    // The pieces the range vectors name.
    let pieces = |first: u32, bits: &[u8]| pex::bitfield::set_indices(first, bits).collect::<Vec<_>>();
    assert_eq!(pieces(0, &[0xa0, 0x40]), [0, 2, 9]);
    assert_eq!(pieces(8_388_576, &[0x80, 0, 1]), [8_388_576, 8_388_599]);
    assert_eq!(pieces(u32::MAX - 7, &[0xff]), (u32::MAX - 7..=u32::MAX).collect::<Vec<_>>());
    // 8,388,576 = 8 × 1,048,572: where pex starts the second range of a large file.
    assert_eq!(8 * pex::peer::MAX_BITFIELD_BYTES, 8_388_576);
}

#[test]
fn docs_protocol_md_quotes_the_vectors_it_names() {
    let doc = protocol_doc();
    let v2 = fixtures::vectors();
    let quoted_v2 = [
        "hello",
        "hello_not_listening",
        "hello_bad_magic",
        "hello_v1",
        "peers_empty",
        "peers_one",
        "peers_two",
        "peers_49",
        "peers_v1_entry",
        "bitfield",
        "bitfield_range",
        "bitfield_last",
        "bitfield_35",
        "bitfield_past_end",
        "reject_full",
        "reject_shutdown",
        "reject_empty",
        "reject_2",
        "reject_not_utf8",
        "join",
        "leave",
        "members_one",
        "message",
        "direct",
        "join_31",
        "message_144",
        "presence",
        "presence_leaving",
        "presence_137",
    ];
    for name in quoted_v2 {
        let v = v2.vectors.iter().find(|v| v.name == name).unwrap();
        assert!(doc.contains(&v.hex), "docs/PROTOCOL.md does not quote v2 vector {name}");
        assert!(doc.contains(&format!("`{name}`")), "docs/PROTOCOL.md does not name v2 vector {name}");
    }
    assert!(doc.contains(&v2.v1_answer.hex), "the v1 answer");
    let v1 = v1_vectors();
    for name in UNCHANGED.iter().copied().chain(["hello", "peers_two", "bitfield", "reject_full"]) {
        let bytes = &v1.iter().find(|v| v.0 == name).unwrap().2;
        assert!(doc.contains(&to_hex(bytes)), "docs/PROTOCOL.md does not quote v1 vector {name}");
    }
}

#[test]
fn the_documented_download_frames_are_what_pex_encodes() {
    // Section 6.1: the frames of a download of hello.txt.
    let doc = protocol_doc();
    let manifest = connection::manifest();
    let list = Bytes::from(std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/hello.list")).unwrap());
    let root = Hash::of(&manifest);
    for (what, frame) in [
        ("ASK root", Frame::Ask(root)),
        ("GIVE manifest", Frame::Give { hash: root, data: manifest.clone() }),
        ("GIVE list", Frame::Give { hash: Hash::of(&list), data: list.clone() }),
        ("BITFIELD (all)", Frame::Bitfield { root, first: 0, bits: Bytes::from_static(&[0x80]) }),
        ("HAVE 0", Frame::Have { root, index: 0 }),
    ] {
        let line = format!("{what:<15}{}", to_hex(&frame.to_bytes()));
        assert!(doc.contains(&line), "docs/PROTOCOL.md section 6.1 lacks {line}");
    }
}
