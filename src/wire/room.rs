//! The room frames (docs/PROTOCOL.md 4.11 to 4.16): JOIN, LEAVE, MEMBERS,
//! MESSAGE, DIRECT and PRESENCE, their layout and codec. What they mean to a node (the
//! partial mesh, forwarding, duplicate suppression) lives above; the
//! signature a MESSAGE carries is made and checked in `identity`.

use super::{hash_at, FrameError, MAX_PEERS_PER_FRAME, PEER_ENTRY_LEN};
use crate::hash::{Hash, NodeId};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

/// Largest payload of a MESSAGE or DIRECT: 64 KiB.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Bytes of a message id.
pub const MESSAGE_ID_LEN: usize = 16;
/// Bytes of a MESSAGE body before its payload: room, id, origin, hops, signature.
pub const MESSAGE_HEAD: usize = 32 + MESSAGE_ID_LEN + 32 + 1 + 64;
/// Bytes of a DIRECT body before its payload: room and id.
pub const DIRECT_HEAD: usize = 32 + MESSAGE_ID_LEN;
/// Bytes of a PRESENCE body: room, origin, sequence, state, hops, signature.
pub const PRESENCE_LEN: usize = 32 + 32 + 8 + 1 + 1 + 64;
/// PRESENCE state: the origin is a member of the room.
pub const PRESENCE_HERE: u8 = 0;
/// PRESENCE state: the origin has left the room.
pub const PRESENCE_LEAVING: u8 = 1;
/// What a room id hashes before the room's name.
pub const ROOM_PREFIX: &[u8; 8] = b"pex-room";

/// A room's 32-byte topic id: SHA-256 of `"pex-room"` then the name's bytes.
pub fn room_id(name: &str) -> Hash {
    let mut h = Sha256::new();
    h.update(ROOM_PREFIX);
    h.update(name.as_bytes());
    Hash(h.finalize().into())
}

/// A broadcast to a room, as it travels between neighbours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomMessage {
    /// The room it is for.
    pub room: Hash,
    /// Random, chosen by the originator: what duplicates are recognised by.
    pub id: [u8; MESSAGE_ID_LEN],
    /// The originator's node id (its Ed25519 public key).
    pub origin: NodeId,
    /// How many more times it may be forwarded; each forwarder lowers it by one.
    pub hops: u8,
    /// The originator's Ed25519 signature over room, id and payload (not hops).
    pub signature: [u8; 64],
    /// At most [`MAX_PAYLOAD`] bytes, opaque to pex.
    pub payload: Bytes,
}

/// A member's signed "I am here" (or "I have left"), flooded through a room
/// like a MESSAGE: how every member learns who is in the room and who is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presence {
    /// The room it is for.
    pub room: Hash,
    /// The member it speaks for (its Ed25519 public key).
    pub origin: NodeId,
    /// Grows with every PRESENCE of one origin (pex uses the time in
    /// milliseconds): an older or equal one is a repeat.
    pub seq: u64,
    /// [`PRESENCE_HERE`] or [`PRESENCE_LEAVING`]; other values are ignored by receivers.
    pub state: u8,
    /// How many more times it may be forwarded; not signed.
    pub hops: u8,
    /// The origin's Ed25519 signature over room, seq and state.
    pub signature: [u8; 64],
}

/// The bytes of a room frame's body, for [`super::Frame::encode_head`].
pub(super) fn body_len(frame: &super::Frame) -> Option<usize> {
    use super::Frame::*;
    Some(match frame {
        Join(_) | Leave(_) => 32,
        Members { members, .. } => 32 + members.len() * PEER_ENTRY_LEN,
        Message(m) => MESSAGE_HEAD + m.payload.len(),
        Direct { payload, .. } => DIRECT_HEAD + payload.len(),
        Presence(_) => PRESENCE_LEN,
        _ => return None,
    })
}

/// Writes a room frame's type byte and body; false for any other frame.
pub(super) fn encode(frame: &super::Frame, dst: &mut BytesMut) -> bool {
    use super::{kind, Frame::*};
    match frame {
        Join(room) => super::put_hash(dst, kind::JOIN, room),
        Leave(room) => super::put_hash(dst, kind::LEAVE, room),
        Members { room, members } => {
            super::put_hash(dst, kind::MEMBERS, room);
            super::put_entries(dst, members);
        }
        Message(m) => {
            super::put_hash(dst, kind::MESSAGE, &m.room);
            dst.put_slice(&m.id);
            dst.put_slice(&m.origin.0);
            dst.put_u8(m.hops);
            dst.put_slice(&m.signature);
            dst.put_slice(&m.payload);
        }
        Direct { room, id, payload } => {
            super::put_hash(dst, kind::DIRECT, room);
            dst.put_slice(id);
            dst.put_slice(payload);
        }
        Presence(p) => {
            super::put_hash(dst, kind::PRESENCE, &p.room);
            dst.put_slice(&p.origin.0);
            dst.put_u64(p.seq);
            dst.put_u8(p.state);
            dst.put_u8(p.hops);
            dst.put_slice(&p.signature);
        }
        _ => return false,
    }
    true
}

fn sized(name: &'static str, body: &Bytes, head: usize, expected: &'static str) -> Result<(), FrameError> {
    if body.len() < head || body.len() > head + MAX_PAYLOAD {
        return Err(FrameError::BadLength { name, len: body.len(), expected });
    }
    Ok(())
}

fn id_at(body: &[u8]) -> [u8; MESSAGE_ID_LEN] {
    let mut id = [0u8; MESSAGE_ID_LEN];
    id.copy_from_slice(&body[..MESSAGE_ID_LEN]);
    id
}

/// Decodes the body of room frame type `kind`; `None` if `kind` is not one.
pub(super) fn decode(kind: u8, mut body: Bytes) -> Option<Result<super::Frame, FrameError>> {
    use super::{kind, Frame};
    let room_only = |name, body: &Bytes| super::exact(name, body, 32, "32").map(|()| hash_at(body));
    Some(match kind {
        kind::JOIN => room_only("JOIN", &body).map(Frame::Join),
        kind::LEAVE => room_only("LEAVE", &body).map(Frame::Leave),
        kind::MEMBERS => {
            let entries = body.len().wrapping_sub(32);
            if body.len() < 32 || entries % PEER_ENTRY_LEN != 0 || entries > MAX_PEERS_PER_FRAME * PEER_ENTRY_LEN {
                return Some(Err(FrameError::BadLength {
                    name: "MEMBERS",
                    len: body.len(),
                    expected: "32 plus a multiple of 50, at most 2532",
                }));
            }
            let room = hash_at(&body);
            Ok(Frame::Members { room, members: super::entries(&body[32..]) })
        }
        kind::MESSAGE => sized("MESSAGE", &body, MESSAGE_HEAD, "145 to 65681").map(|()| {
            let room = hash_at(&body);
            let id = id_at(&body[32..]);
            let origin = NodeId(hash_at(&body[48..]).0);
            let hops = body[80];
            let mut signature = [0u8; 64];
            signature.copy_from_slice(&body[81..145]);
            body.advance(MESSAGE_HEAD);
            Frame::Message(RoomMessage { room, id, origin, hops, signature, payload: body })
        }),
        kind::DIRECT => sized("DIRECT", &body, DIRECT_HEAD, "48 to 65584").map(|()| {
            let room = hash_at(&body);
            let id = id_at(&body[32..]);
            body.advance(DIRECT_HEAD);
            Frame::Direct { room, id, payload: body }
        }),
        kind::PRESENCE => super::exact("PRESENCE", &body, PRESENCE_LEN, "138").map(|()| {
            let mut signature = [0u8; 64];
            signature.copy_from_slice(&body[74..138]);
            Frame::Presence(Presence {
                room: hash_at(&body),
                origin: NodeId(hash_at(&body[32..]).0),
                seq: u64::from_be_bytes(body[64..72].try_into().unwrap_or_default()),
                state: body[72],
                hops: body[73],
                signature,
            })
        }),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{decode as decode_frame, Frame, PeerEntry};
    use super::*;

    fn round_trip(f: &Frame) {
        let bytes = f.to_bytes();
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode_frame(&mut buf).unwrap().as_ref(), Some(f));
        assert!(buf.is_empty());
    }

    #[test]
    fn every_room_frame_round_trips_at_its_limits() {
        let room = room_id("lobby");
        let entry = PeerEntry { node_id: NodeId([7; 32]), addr: "[::1]:9000".parse().unwrap() };
        round_trip(&Frame::Join(room));
        round_trip(&Frame::Leave(room));
        round_trip(&Frame::Members { room, members: vec![] });
        round_trip(&Frame::Members { room, members: vec![entry; MAX_PEERS_PER_FRAME] });
        for len in [0, 1, MAX_PAYLOAD] {
            let payload = Bytes::from(vec![0x5a; len]);
            let m = RoomMessage { room, id: [3; 16], origin: NodeId([9; 32]), hops: 6, signature: [4; 64], payload };
            round_trip(&Frame::Message(m.clone()));
            round_trip(&Frame::Direct { room, id: [5; 16], payload: m.payload });
        }
        for state in [PRESENCE_HERE, PRESENCE_LEAVING, 0xff] {
            let p = Presence { room, origin: NodeId([8; 32]), seq: u64::MAX - 1, state, hops: 0, signature: [6; 64] };
            round_trip(&Frame::Presence(p));
        }
    }

    #[test]
    fn oversized_and_truncated_room_frames_are_violations() {
        let mut cases: Vec<(u8, usize)> = vec![(9, 31), (9, 33), (10, 0), (11, 31), (11, 33), (11, 32 + 51 * 50)];
        cases.extend([(12, MESSAGE_HEAD - 1), (12, MESSAGE_HEAD + MAX_PAYLOAD + 1)]);
        cases.extend([(13, DIRECT_HEAD - 1), (13, DIRECT_HEAD + MAX_PAYLOAD + 1)]);
        cases.extend([(14, PRESENCE_LEN - 1), (14, PRESENCE_LEN + 1), (14, 0)]);
        for (kind, len) in cases {
            let r = decode(kind, Bytes::from(vec![0u8; len])).expect("a room frame type");
            assert!(matches!(r, Err(FrameError::BadLength { .. })), "type {kind}, {len} bytes: {r:?}");
        }
        assert!(decode(15, Bytes::new()).is_none(), "not a room frame");
    }

    #[test]
    fn a_room_id_is_the_hash_of_the_prefix_and_the_name() {
        assert_eq!(room_id("lobby"), Hash::of(b"pex-roomlobby"));
        assert_ne!(room_id("lobby"), room_id("Lobby"));
    }
}
