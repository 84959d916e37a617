//! Wire protocol v1: the frame layout and a pure codec (no sockets, no tokio).
//!
//! Every frame is a 4-byte big-endian length `L`, then `L` bytes. `L = 0` is a
//! keep-alive; otherwise the first byte is the message type and the rest its
//! body. docs/PROTOCOL.md is written from this module.

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
pub const PROTOCOL_VERSION: u8 = 1;
/// HELLO body length: magic, version, node id, listen port.
pub const HELLO_LEN: usize = 3 + 1 + 32 + 2;
/// One PEERS entry: IPv6 address and port.
pub const PEER_ENTRY_LEN: usize = 18;

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

/// The handshake body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's random identity for this run.
    pub node_id: NodeId,
    /// The port the sender accepts connections on, 0 if it does not listen.
    pub listen_port: u16,
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
    /// Peers that accept connections; IPv4 ones travel IPv4-mapped.
    Peers(Vec<SocketAddr>),
    /// The handshake, first frame on each side.
    Hello(Hello),
    /// "I do not hold the blob you asked for."
    DontHave(Hash),
    /// Which pieces of `root`'s file the sender holds, MSB first.
    Bitfield {
        /// Root hash of the file.
        root: Hash,
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
        /// Human-readable reason, at most [`MAX_REJECT_REASON`] bytes.
        reason: String,
    },
    /// Withdraw an earlier ASK.
    Cancel(Hash),
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
    /// A REJECT frame with a code from this version.
    pub fn reject(code: RejectCode, reason: impl Into<String>) -> Frame {
        let mut reason: String = reason.into();
        if reason.len() > MAX_REJECT_REASON {
            let mut end = MAX_REJECT_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Frame::Reject { code: code as u8, reason }
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
            Frame::Bitfield { bits, .. } => 32 + bits.len(),
            Frame::Have { .. } => 36,
            Frame::Reject { reason, .. } => 1 + reason.len(),
            Frame::Unknown { body, .. } => body.len(),
        };
        dst.reserve(LEN_PREFIX + 1 + body_len.min(4096));
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
                for addr in peers {
                    let ip = match addr.ip() {
                        IpAddr::V6(ip) => ip,
                        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                    };
                    dst.put_slice(&ip.octets());
                    dst.put_u16(addr.port());
                }
            }
            Frame::Hello(hello) => {
                dst.put_u8(kind::HELLO);
                dst.put_slice(HELLO_MAGIC);
                dst.put_u8(PROTOCOL_VERSION);
                dst.put_slice(&hello.node_id.0);
                dst.put_u16(hello.listen_port);
            }
            Frame::Bitfield { root, bits } => {
                put_hash(dst, kind::BITFIELD, root);
                dst.put_slice(bits);
            }
            Frame::Have { root, index } => {
                put_hash(dst, kind::HAVE, root);
                dst.put_u32(*index);
            }
            Frame::Reject { code, reason } => {
                dst.put_u8(kind::REJECT);
                dst.put_u8(*code);
                dst.put_slice(reason.as_bytes());
            }
            Frame::Unknown { kind, body } => {
                dst.put_u8(*kind);
                dst.put_slice(body);
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

fn put_hash(dst: &mut BytesMut, kind: u8, hash: &Hash) {
    dst.put_u8(kind);
    dst.put_slice(&hash.0);
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
                    expected: "a multiple of 18, at most 900",
                });
            }
            let peers = body
                .chunks_exact(PEER_ENTRY_LEN)
                .map(|e| {
                    let mut ip = [0u8; 16];
                    ip.copy_from_slice(&e[..16]);
                    let ip = Ipv6Addr::from(ip);
                    let port = u16::from_be_bytes([e[16], e[17]]);
                    match ip.to_ipv4_mapped() {
                        Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
                        None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)),
                    }
                })
                .collect();
            Frame::Peers(peers)
        }
        kind::HELLO => {
            exact("HELLO", &body, HELLO_LEN, "38")?;
            if &body[..3] != HELLO_MAGIC {
                return Err(FrameError::BadMagic);
            }
            if body[3] != PROTOCOL_VERSION {
                return Err(FrameError::BadVersion(body[3]));
            }
            let mut id = [0u8; 32];
            id.copy_from_slice(&body[4..36]);
            Frame::Hello(Hello { node_id: NodeId(id), listen_port: u16::from_be_bytes([body[36], body[37]]) })
        }
        kind::BITFIELD => {
            at_least("BITFIELD", &body, 32, "at least 32")?;
            let root = hash_at(&body);
            body.advance(32);
            Frame::Bitfield { root, bits: body }
        }
        kind::HAVE => {
            exact("HAVE", &body, 36, "36")?;
            Frame::Have { root: hash_at(&body), index: u32::from_be_bytes([body[32], body[33], body[34], body[35]]) }
        }
        kind::REJECT => {
            if body.is_empty() || body.len() > 1 + MAX_REJECT_REASON {
                return Err(FrameError::BadLength { name: "REJECT", len: body.len(), expected: "1 to 201" });
            }
            let code = body[0];
            let reason = std::str::from_utf8(&body[1..]).map_err(|_| FrameError::ReasonNotUtf8)?.to_owned();
            Frame::Reject { code, reason }
        }
        kind => Frame::Unknown { kind, body },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        round_trip(Frame::Peers(vec!["[::1]:9000".parse().unwrap(), "127.0.0.1:6881".parse().unwrap()]));
        round_trip(Frame::Hello(Hello { node_id: NodeId([9; 32]), listen_port: 0 }));
        round_trip(Frame::DontHave(h));
        round_trip(Frame::Bitfield { root: h, bits: Bytes::new() });
        round_trip(Frame::Bitfield { root: h, bits: Bytes::from_static(&[0xa0, 0x40]) });
        round_trip(Frame::Have { root: h, index: u32::MAX });
        round_trip(Frame::reject(RejectCode::PeerLimit, "full"));
        round_trip(Frame::Reject { code: 99, reason: String::new() });
        round_trip(Frame::Cancel(h));
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
        for (kind, len) in [(kind::ASK, 31), (kind::ASK, 33), (kind::HAVE, 35), (kind::HELLO, 37), (kind::GIVE, 31)] {
            let mut buf = BytesMut::new();
            buf.put_u32(1 + len as u32);
            buf.put_u8(kind);
            buf.put_bytes(0, len);
            assert!(matches!(decode(&mut buf), Err(FrameError::BadLength { .. })), "kind {kind} len {len}");
        }
        let mut too_many = BytesMut::new();
        too_many.put_u32(1 + 51 * 18);
        too_many.put_u8(kind::PEERS);
        too_many.put_bytes(0, 51 * 18);
        assert!(decode(&mut too_many).is_err());
        let mut long_reason = BytesMut::new();
        long_reason.put_u32(1 + 1 + 201);
        long_reason.put_u8(kind::REJECT);
        long_reason.put_u8(1);
        long_reason.put_bytes(b'a', 201);
        assert!(decode(&mut long_reason).is_err());
    }

    #[test]
    fn reject_reason_is_truncated_on_a_char_boundary() {
        let Frame::Reject { reason, .. } = Frame::reject(RejectCode::Misbehaving, "é".repeat(150)) else {
            unreachable!()
        };
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
            Frame::Peers(vec!["[::1]:9000".parse().unwrap(), "127.0.0.1:6881".parse().unwrap()]),
            Frame::Hello(Hello { node_id: NodeId([3; 32]), listen_port: 9000 }),
            Frame::DontHave(h),
            Frame::Bitfield { root: h, bits: Bytes::from_static(&[0xa0, 0x40]) },
            Frame::Have { root: h, index: 70_000 },
            Frame::Reject { code: 2, reason: "peer limit reached".into() },
            Frame::Reject { code: 9, reason: String::new() },
            Frame::Cancel(h),
            Frame::Unknown { kind: 200, body: Bytes::from_static(b"future") },
            Frame::Unknown { kind: 9, body: Bytes::new() },
        ]
    }

    #[test]
    fn every_frame_type_has_its_documented_name() {
        let h = Hash::of(b"x");
        // docs/PROTOCOL.md section 3 names the types; keep-alive and unknown types as logs show them.
        let table = [
            (Frame::KeepAlive, "KEEPALIVE"),
            (Frame::Ask(h), "ASK"),
            (Frame::Give { hash: h, data: Bytes::new() }, "GIVE"),
            (Frame::Peers(vec![]), "PEERS"),
            (Frame::Hello(Hello { node_id: NodeId([0; 32]), listen_port: 0 }), "HELLO"),
            (Frame::DontHave(h), "DONT_HAVE"),
            (Frame::Bitfield { root: h, bits: Bytes::new() }, "BITFIELD"),
            (Frame::Have { root: h, index: 0 }, "HAVE"),
            (Frame::Reject { code: 1, reason: String::new() }, "REJECT"),
            (Frame::Cancel(h), "CANCEL"),
            (Frame::Unknown { kind: 9, body: Bytes::new() }, "UNKNOWN"),
        ];
        for (frame, name) in table {
            assert_eq!(frame.name(), name, "{frame:?}");
        }
    }

    #[test]
    fn the_type_bytes_are_the_documented_ones() {
        // Section 3: the byte after the prefix.
        let types: [(Frame, u8); 9] = [
            (Frame::Ask(Hash::default()), 0),
            (Frame::Give { hash: Hash::default(), data: Bytes::new() }, 1),
            (Frame::Peers(vec![]), 2),
            (Frame::Hello(Hello { node_id: NodeId::default(), listen_port: 0 }), 3),
            (Frame::DontHave(Hash::default()), 4),
            (Frame::Bitfield { root: Hash::default(), bits: Bytes::new() }, 5),
            (Frame::Have { root: Hash::default(), index: 0 }, 6),
            (Frame::Reject { code: 1, reason: String::new() }, 7),
            (Frame::Cancel(Hash::default()), 8),
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
}
