//! Wire protocol v2 frames: the layout and a pure codec (no sockets, no
//! tokio, no cryptography: the `noise` module above carries these frames encrypted).
//!
//! Every frame is a 4-byte big-endian length `L`, then `L` bytes. `L = 0` is a
//! keep-alive; otherwise the first byte is the message type and the rest its
//! body. docs/PROTOCOL.md is written from this module; v1 (plaintext, before
//! the Noise handshake) survives only as [`v1_reject`], the answer to a v1 peer.

mod room;

pub use room::{room_id, Presence, RoomMessage, MAX_PAYLOAD, MESSAGE_ID_LEN, PRESENCE_HERE, PRESENCE_LEAVING};

use crate::hash::{Hash, NodeId};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// Largest blob a GIVE may carry: one piece, 1 MiB.
pub const MAX_BLOB_LEN: usize = 1 << 20;
/// Largest legal frame length `L`: type byte + hash + one full blob (1,048,609).
pub const MAX_FRAME_LEN: usize = 1 + Hash::LEN + MAX_BLOB_LEN;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Most entries one PEERS frame may carry.
pub const MAX_PEERS_PER_FRAME: usize = 50;
/// Longest REJECT reason, in bytes of UTF-8.
pub const MAX_REJECT_REASON: usize = 200;
/// First three bytes of a HELLO body.
pub const HELLO_MAGIC: &[u8; 3] = b"PEX";
/// The protocol version this codec speaks.
pub const PROTOCOL_VERSION: u8 = 2;
/// HELLO body length: magic, version, node id, listen port, flags, signature.
pub const HELLO_LEN: usize = 3 + 1 + 32 + 2 + 1 + 64;
/// HELLO flag bit 0: "you may share my address in PEERS".
pub const FLAG_SHAREABLE: u8 = 1;
/// One PEERS entry: node id, IPv6 address and port.
pub const PEER_ENTRY_LEN: usize = 32 + 16 + 2;
/// Bytes of a BITFIELD body before its bits: root and first piece index.
pub const BITFIELD_HEAD: usize = 32 + 4;
/// Bytes of a REJECT body before its reason: code and retry-after.
pub const REJECT_HEAD: usize = 1 + 2;

/// Message type bytes. 0–2 keep the numbering of the ask/give/peer design pex grew from.
pub mod kind {
    /// "Give me the blob with this SHA-256."
    pub const ASK: u8 = 0;
    /// A blob and its hash.
    pub const GIVE: u8 = 1;
    /// Addresses of other nodes that accept connections.
    pub const PEERS: u8 = 2;
    /// The handshake.
    pub const HELLO: u8 = 3;
    /// The answer to an ASK for a blob this node does not hold.
    pub const DONT_HAVE: u8 = 4;
    /// Which pieces of a file the sender holds.
    pub const BITFIELD: u8 = 5;
    /// The sender completed one more piece of a file.
    pub const HAVE: u8 = 6;
    /// The sender refuses or ends the connection, and closes after this frame.
    pub const REJECT: u8 = 7;
    /// Withdraw an ASK.
    pub const CANCEL: u8 = 8;
    /// The sender is a member of a room and asks to be a neighbour in it.
    pub const JOIN: u8 = 9;
    /// The sender is no longer (or will not be) a neighbour in a room.
    pub const LEAVE: u8 = 10;
    /// Members of a room and where they accept connections.
    pub const MEMBERS: u8 = 11;
    /// A signed broadcast to a room, forwarded between neighbours.
    pub const MESSAGE: u8 = 12;
    /// A message to the node at the other end of this connection.
    pub const DIRECT: u8 = 13;
    /// A member's signed presence (here, or leaving), flooded through a room.
    pub const PRESENCE: u8 = 14;
}

/// REJECT codes: why a node closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectCode {
    /// A connection with this node id already exists.
    Duplicate = 1,
    /// The node is at its connection limit.
    PeerLimit = 2,
    /// A frame broke the protocol (bad length, bad HELLO, ...).
    ProtocolViolation = 3,
    /// The node dialled itself.
    SelfConnection = 4,
    /// The peer sent bad data or is banned.
    Misbehaving = 5,
    /// The node is shutting down.
    ShuttingDown = 6,
}

impl RejectCode {
    /// The code for a byte, if it is one this version defines.
    pub fn from_u8(code: u8) -> Option<RejectCode> {
        use RejectCode::*;
        Some(match code {
            1 => Duplicate,
            2 => PeerLimit,
            3 => ProtocolViolation,
            4 => SelfConnection,
            5 => Misbehaving,
            6 => ShuttingDown,
            _ => return None,
        })
    }
}

/// The HELLO body: who the sender is, proven by a signature over this
/// connection's Noise handshake hash (see [`crate::identity`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's Ed25519 public key.
    pub node_id: NodeId,
    /// The port the sender accepts connections on, 0 if it does not listen.
    pub listen_port: u16,
    /// Bit 0: [`FLAG_SHAREABLE`]; other bits are sent zero, ignored and kept as received.
    pub flags: u8,
    /// Ed25519 signature of `"pex/2 hello"` followed by the handshake hash.
    pub signature: [u8; 64],
}

impl Hello {
    /// Whether the sender lets others learn its address from our PEERS.
    pub fn shareable(&self) -> bool {
        self.flags & FLAG_SHAREABLE != 0
    }
}

/// One PEERS entry: a node and where it accepts connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerEntry {
    /// Its verified node id: a dial of `addr` must meet this id.
    pub node_id: NodeId,
    /// Its address; IPv4 travels IPv4-mapped.
    pub addr: SocketAddr,
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// `L = 0`: proves the connection is alive.
    KeepAlive,
    /// Request the blob with this hash.
    Ask(Hash),
    /// A blob; the receiver checks SHA-256(data) = hash.
    Give {
        /// The blob's address.
        hash: Hash,
        /// The blob, at most [`MAX_BLOB_LEN`] bytes.
        data: Bytes,
    },
    /// Peers that accept connections, each with its node id.
    Peers(Vec<PeerEntry>),
    /// The handshake, first frame on each side.
    Hello(Hello),
    /// "I do not hold the blob you asked for."
    DontHave(Hash),
    /// Which pieces of `root`'s file the sender holds, from piece `first` on, MSB first.
    Bitfield {
        /// Root hash of the file.
        root: Hash,
        /// The piece the first bit stands for.
        first: u32,
        /// One bit per piece, most significant bit first, spare bits zero.
        bits: Bytes,
    },
    /// The sender now holds piece `index` of `root`'s file.
    Have {
        /// Root hash of the file.
        root: Hash,
        /// Piece index.
        index: u32,
    },
    /// The sender closes the connection after this frame.
    Reject {
        /// A [`RejectCode`] byte (unknown codes are kept as they are).
        code: u8,
        /// Seconds the peer asks us to wait before dialling again; 0 = do not retry.
        retry_after: u16,
        /// Human-readable reason, at most [`MAX_REJECT_REASON`] bytes.
        reason: String,
    },
    /// Withdraw an earlier ASK.
    Cancel(Hash),
    /// Join the room with this id as the receiver's neighbour.
    Join(Hash),
    /// Stop being (or decline to be) the receiver's neighbour in this room.
    Leave(Hash),
    /// Members of `room` the sender knows, with where they accept connections.
    Members {
        /// The room's id.
        room: Hash,
        /// At most [`MAX_PEERS_PER_FRAME`] members.
        members: Vec<PeerEntry>,
    },
    /// A signed broadcast to a room.
    Message(RoomMessage),
    /// A message for the receiver alone, from the sender of this connection.
    Direct {
        /// The room it belongs to.
        room: Hash,
        /// Random, chosen by the sender: what replays are recognised by.
        id: [u8; MESSAGE_ID_LEN],
        /// At most [`MAX_PAYLOAD`] bytes.
        payload: Bytes,
    },
    /// A member's signed presence in a room, flooded like a MESSAGE.
    Presence(Presence),
    /// A type this version does not know; ignored by receivers.
    Unknown {
        /// The type byte.
        kind: u8,
        /// The body, kept so the frame re-encodes unchanged.
        body: Bytes,
    },
}

/// Why bytes are not a legal frame. Every variant is a protocol violation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The announced length is above [`MAX_FRAME_LEN`].
    #[error("frame length {0} is above the maximum of {MAX_FRAME_LEN}")]
    TooLong(usize),
    /// A known type with a body of the wrong size.
    #[error("{name} body of {len} bytes, expected {expected}")]
    BadLength {
        /// Message name.
        name: &'static str,
        /// Body length received.
        len: usize,
        /// What the protocol requires.
        expected: &'static str,
    },
    /// BITFIELD whose range does not fit in u32 piece indices.
    #[error("BITFIELD from piece {first} with {bytes} bytes of bits runs past piece 2^32 - 1")]
    BitfieldRange {
        /// Its first piece index.
        first: u32,
        /// Bytes of bits.
        bytes: usize,
    },
    /// HELLO did not start with "PEX".
    #[error("HELLO magic is not \"PEX\"")]
    BadMagic,
    /// HELLO of a version we do not speak.
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    /// REJECT reason that is not UTF-8.
    #[error("REJECT reason is not UTF-8")]
    ReasonNotUtf8,
}

impl Frame {
    /// A REJECT frame with a code from this version and no retry-after.
    pub fn reject(code: RejectCode, reason: impl Into<String>) -> Frame {
        Frame::reject_retry(code, 0, reason)
    }

    /// A REJECT frame asking the peer to wait `retry_after` seconds before
    /// dialling again (0: do not retry), its reason cut to 200 bytes.
    pub fn reject_retry(code: RejectCode, retry_after: u16, reason: impl Into<String>) -> Frame {
        let mut reason: String = reason.into();
        reason.truncate(cut_reason(&reason).len());
        Frame::Reject { code: code as u8, retry_after, reason }
    }

    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::KeepAlive => "KEEPALIVE",
            Frame::Ask(_) => "ASK",
            Frame::Give { .. } => "GIVE",
            Frame::Peers(_) => "PEERS",
            Frame::Hello(_) => "HELLO",
            Frame::DontHave(_) => "DONT_HAVE",
            Frame::Bitfield { .. } => "BITFIELD",
            Frame::Have { .. } => "HAVE",
            Frame::Reject { .. } => "REJECT",
            Frame::Cancel(_) => "CANCEL",
            Frame::Join(_) => "JOIN",
            Frame::Leave(_) => "LEAVE",
            Frame::Members { .. } => "MEMBERS",
            Frame::Message(_) => "MESSAGE",
            Frame::Direct { .. } => "DIRECT",
            Frame::Presence(_) => "PRESENCE",
            Frame::Unknown { .. } => "UNKNOWN",
        }
    }

    /// Encodes the head of a GIVE of `len` data bytes (length, type, hash) into
    /// `dst`, for writers that send the data from elsewhere (a mapped file).
    pub fn encode_give_head(dst: &mut BytesMut, hash: &Hash, len: usize) {
        dst.put_u32((1 + Hash::LEN + len) as u32);
        dst.put_u8(kind::GIVE);
        dst.put_slice(&hash.0);
    }

    /// Encodes everything but a GIVE's data into `dst` and returns that data,
    /// so a writer can send it from where it lies (one vectored write).
    pub fn encode_head<'a>(&'a self, dst: &mut BytesMut) -> Option<&'a Bytes> {
        let body_len = match self {
            Frame::KeepAlive => {
                dst.put_u32(0);
                return None;
            }
            Frame::Ask(_) | Frame::DontHave(_) | Frame::Cancel(_) => 32,
            Frame::Give { data, .. } => 32 + data.len(),
            Frame::Peers(peers) => peers.len() * PEER_ENTRY_LEN,
            Frame::Hello(_) => HELLO_LEN,
            Frame::Bitfield { bits, .. } => BITFIELD_HEAD + bits.len(),
            Frame::Have { .. } => 36,
            Frame::Reject { reason, .. } => REJECT_HEAD + reason.len(),
            Frame::Unknown { body, .. } => body.len(),
            room => room::body_len(room).unwrap_or(0),
        };
        reserve_head(dst, body_len);
        dst.put_u32((1 + body_len) as u32);
        match self {
            Frame::KeepAlive => unreachable!("handled above"),
            Frame::Ask(h) => put_hash(dst, kind::ASK, h),
            Frame::DontHave(h) => put_hash(dst, kind::DONT_HAVE, h),
            Frame::Cancel(h) => put_hash(dst, kind::CANCEL, h),
            Frame::Give { hash, data } => {
                put_hash(dst, kind::GIVE, hash);
                return Some(data);
            }
            Frame::Peers(peers) => {
                dst.put_u8(kind::PEERS);
                put_entries(dst, peers);
            }
            Frame::Hello(hello) => {
                dst.put_u8(kind::HELLO);
                dst.put_slice(HELLO_MAGIC);
                dst.put_u8(PROTOCOL_VERSION);
                dst.put_slice(&hello.node_id.0);
                dst.put_u16(hello.listen_port);
                dst.put_u8(hello.flags);
                dst.put_slice(&hello.signature);
            }
            Frame::Bitfield { root, first, bits } => {
                put_hash(dst, kind::BITFIELD, root);
                dst.put_u32(*first);
                dst.put_slice(bits);
            }
            Frame::Have { root, index } => {
                put_hash(dst, kind::HAVE, root);
                dst.put_u32(*index);
            }
            Frame::Reject { code, retry_after, reason } => {
                dst.put_u8(kind::REJECT);
                dst.put_u8(*code);
                dst.put_u16(*retry_after);
                dst.put_slice(reason.as_bytes());
            }
            Frame::Unknown { kind, body } => {
                dst.put_u8(*kind);
                dst.put_slice(body);
            }
            room => {
                room::encode(room, dst);
            }
        }
        None
    }

    /// Encodes the whole frame, length prefix included.
    pub fn encode(&self, dst: &mut BytesMut) {
        if let Some(data) = self.encode_head(dst) {
            dst.extend_from_slice(data);
        }
    }

    /// The whole encoded frame as bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }
}

/// Room for a frame's head and a small body in one allocation (capacity only:
/// what is written does not depend on it).
fn reserve_head(dst: &mut BytesMut, body_len: usize) {
    dst.reserve(LEN_PREFIX + 1 + body_len.min(4096));
}

fn put_hash(dst: &mut BytesMut, kind: u8, hash: &Hash) {
    dst.put_u8(kind);
    dst.put_slice(&hash.0);
}

/// PEERS and MEMBERS entries: node id, IPv6 address (IPv4 mapped), port.
fn put_entries(dst: &mut BytesMut, entries: &[PeerEntry]) {
    for PeerEntry { node_id, addr } in entries {
        dst.put_slice(&node_id.0);
        let ip = match addr.ip() {
            IpAddr::V6(ip) => ip,
            IpAddr::V4(ip) => ip.to_ipv6_mapped(),
        };
        dst.put_slice(&ip.octets());
        dst.put_u16(addr.port());
    }
}

/// Reads entries written by [`put_entries`] (`bytes` is a multiple of 50 long).
fn entries(bytes: &[u8]) -> Vec<PeerEntry> {
    bytes
        .chunks_exact(PEER_ENTRY_LEN)
        .map(|e| {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&e[32..48]);
            let ip = Ipv6Addr::from(ip);
            let port = u16::from_be_bytes([e[48], e[49]]);
            let addr = match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
                None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)),
            };
            PeerEntry { node_id: NodeId(hash_at(e).0), addr }
        })
        .collect()
}

/// How many bytes the frame at the start of `buf` needs in all (prefix included),
/// once its length prefix has arrived. Lets a reader size its buffer.
pub fn frame_size(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(len));
    }
    Ok(Some(LEN_PREFIX + len))
}

/// Takes one frame off the front of `buf`: `Ok(None)` means more bytes are needed.
/// An oversized length is refused as soon as the prefix arrives.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    let Some(size) = frame_size(buf)? else {
        return Ok(None);
    };
    if buf.len() < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size);
    frame.advance(LEN_PREFIX);
    if frame.is_empty() {
        return Ok(Some(Frame::KeepAlive));
    }
    let kind = frame[0];
    frame.advance(1);
    decode_body(kind, frame.freeze()).map(Some)
}

fn exact(name: &'static str, body: &Bytes, len: usize, expected: &'static str) -> Result<(), FrameError> {
    if body.len() == len {
        Ok(())
    } else {
        Err(FrameError::BadLength { name, len: body.len(), expected })
    }
}

fn at_least(name: &'static str, body: &Bytes, len: usize, expected: &'static str) -> Result<(), FrameError> {
    if body.len() >= len {
        Ok(())
    } else {
        Err(FrameError::BadLength { name, len: body.len(), expected })
    }
}

fn hash_at(body: &[u8]) -> Hash {
    let mut h = [0u8; 32];
    h.copy_from_slice(&body[..32]);
    Hash(h)
}

/// Decodes one frame body of type `kind` (the length prefix and type byte already taken).
pub fn decode_body(kind: u8, mut body: Bytes) -> Result<Frame, FrameError> {
    Ok(match kind {
        kind::ASK => {
            exact("ASK", &body, 32, "32")?;
            Frame::Ask(hash_at(&body))
        }
        kind::DONT_HAVE => {
            exact("DONT_HAVE", &body, 32, "32")?;
            Frame::DontHave(hash_at(&body))
        }
        kind::CANCEL => {
            exact("CANCEL", &body, 32, "32")?;
            Frame::Cancel(hash_at(&body))
        }
        kind::GIVE => {
            at_least("GIVE", &body, 32, "at least 32")?;
            let hash = hash_at(&body);
            body.advance(32);
            Frame::Give { hash, data: body }
        }
        kind::PEERS => {
            if body.len() % PEER_ENTRY_LEN != 0 || body.len() > MAX_PEERS_PER_FRAME * PEER_ENTRY_LEN {
                return Err(FrameError::BadLength {
                    name: "PEERS",
                    len: body.len(),
                    expected: "a multiple of 50, at most 2500",
                });
            }
            Frame::Peers(entries(&body))
        }
        kind::HELLO => {
            exact("HELLO", &body, HELLO_LEN, "103")?;
            if &body[..3] != HELLO_MAGIC {
                return Err(FrameError::BadMagic);
            }
            if body[3] != PROTOCOL_VERSION {
                return Err(FrameError::BadVersion(body[3]));
            }
            let mut id = [0u8; 32];
            id.copy_from_slice(&body[4..36]);
            let mut signature = [0u8; 64];
            signature.copy_from_slice(&body[39..103]);
            Frame::Hello(Hello {
                node_id: NodeId(id),
                listen_port: u16::from_be_bytes([body[36], body[37]]),
                flags: body[38],
                signature,
            })
        }
        kind::BITFIELD => {
            at_least("BITFIELD", &body, BITFIELD_HEAD, "at least 36")?;
            let root = hash_at(&body);
            let first = u32::from_be_bytes([body[32], body[33], body[34], body[35]]);
            body.advance(BITFIELD_HEAD);
            // Every bit, spare ones included, must stand for a u32 piece index.
            if first as u64 + body.len() as u64 * 8 > 1 << 32 {
                return Err(FrameError::BitfieldRange { first, bytes: body.len() });
            }
            Frame::Bitfield { root, first, bits: body }
        }
        kind::HAVE => {
            exact("HAVE", &body, 36, "36")?;
            Frame::Have { root: hash_at(&body), index: u32::from_be_bytes([body[32], body[33], body[34], body[35]]) }
        }
        kind::REJECT => {
            if body.len() < REJECT_HEAD || body.len() > REJECT_HEAD + MAX_REJECT_REASON {
                return Err(FrameError::BadLength { name: "REJECT", len: body.len(), expected: "3 to 203" });
            }
            let code = body[0];
            let retry_after = u16::from_be_bytes([body[1], body[2]]);
            let reason = std::str::from_utf8(&body[3..]).map_err(|_| FrameError::ReasonNotUtf8)?.to_owned();
            Frame::Reject { code, retry_after, reason }
        }
        kind => match room::decode(kind, body.clone()) {
            Some(frame) => frame?,
            None => Frame::Unknown { kind, body },
        },
    })
}

/// The one v1 frame a v2 node still writes: a plaintext v1 REJECT (code,
/// then the reason; no retry-after), the answer to a v1 HELLO before closing.
pub fn v1_reject(code: RejectCode, reason: &str) -> Vec<u8> {
    let reason = cut_reason(reason).as_bytes();
    let mut v = Vec::with_capacity(LEN_PREFIX + 2 + reason.len());
    v.extend_from_slice(&(2 + reason.len() as u32).to_be_bytes());
    v.push(kind::REJECT);
    v.push(code as u8);
    v.extend_from_slice(reason);
    v
}

/// The longest prefix of `reason` of at most [`MAX_REJECT_REASON`] bytes
/// that ends on a character boundary.
fn cut_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_REJECT_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// The reason a v2 node gives a v1 peer.
pub const V1_REJECT_REASON: &str = "this node speaks pex/2 (Noise_XX_25519_AESGCM_SHA256); upgrade pex";

#[cfg(test)]
mod tests;
