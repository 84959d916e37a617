//! Identities, HELLO, MESSAGE and PRESENCE signatures, frames and manifests (2.2, 3, 4, 6), encoded
//! and decoded by hand.

use super::*;

pub(super) struct Identity {
    pub(super) key: SigningKey,
}

impl Identity {
    pub(super) fn from_secret(secret: &Hash) -> Identity {
        Identity { key: SigningKey::from_bytes(secret) }
    }

    pub(super) fn random() -> Identity {
        Identity::from_secret(&random32())
    }

    pub(super) fn secret(&self) -> Hash {
        self.key.to_bytes()
    }

    pub(super) fn id(&self) -> Hash {
        self.key.verifying_key().to_bytes()
    }

    /// The signature of `"pex/2 hello" ‖ h`.
    pub(super) fn sign_hello(&self, hh: &Hash) -> [u8; 64] {
        self.key.sign(&[HELLO_CONTEXT, hh].concat()).to_bytes()
    }

    /// This identity's HELLO frame for the connection with handshake hash `hh`.
    pub(super) fn hello(&self, hh: &Hash, port: u16, flags: u8) -> Vec<u8> {
        hello_frame(&self.id(), port, flags, &self.sign_hello(hh))
    }

    /// The signature of `"pex/2 room message" ‖ room ‖ id ‖ payload` (4.14).
    pub(super) fn sign_room_message(&self, room: &Hash, id: &MessageId, payload: &[u8]) -> [u8; 64] {
        self.key.sign(&room_message_signed(room, id, payload)).to_bytes()
    }

    /// A MESSAGE frame (4.14) this identity wrote, signed, with `hops` forwards left.
    pub(super) fn room_message(&self, room: &Hash, id: &MessageId, hops: u8, payload: &[u8]) -> Vec<u8> {
        message(room, id, &self.id(), hops, &self.sign_room_message(room, id, payload), payload)
    }

    /// The signature of `"pex/2 room presence" ‖ room ‖ seq (u64 BE) ‖ state` (4.16).
    pub(super) fn sign_presence(&self, room: &Hash, seq: u64, state: u8) -> [u8; 64] {
        self.key.sign(&presence_signed(room, seq, state)).to_bytes()
    }

    /// A PRESENCE frame (4.16) this identity wrote, signed, with `hops` forwards left.
    pub(super) fn presence(&self, room: &Hash, seq: u64, state: u8, hops: u8) -> Vec<u8> {
        presence(room, &self.id(), seq, state, hops, &self.sign_presence(room, seq, state))
    }
}

/// Strict verification, as 4.4 requires of HELLO signatures.
pub(super) fn hello_signature_ok(id: &Hash, hh: &Hash, sig: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(id) else { return false };
    key.verify_strict(&[HELLO_CONTEXT, hh].concat(), &Signature::from_bytes(sig)).is_ok()
}

/// A message id of MESSAGE and DIRECT (section "Rooms"): 16 bytes chosen by its sender.
pub(super) type MessageId = [u8; 16];

/// A room's id from its name (section "Rooms"): `SHA-256("pex-room" ‖ name)`.
pub(super) fn room_id(name: &str) -> Hash {
    sha_parts(&[ROOM_CONTEXT, name.as_bytes()])
}

/// The bytes a MESSAGE signature signs (4.14); `hops` is not among them.
fn room_message_signed(room: &Hash, id: &MessageId, payload: &[u8]) -> Vec<u8> {
    [ROOM_MESSAGE_CONTEXT, &room[..], &id[..], payload].concat()
}

/// Verification of a MESSAGE signature by its origin (4.14), strict as for HELLO (4.4).
pub(super) fn room_message_signature_ok(m: &RoomMessage) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&m.origin) else { return false };
    key.verify_strict(&room_message_signed(&m.room, &m.id, &m.payload), &Signature::from_bytes(&m.sig)).is_ok()
}

/// The bytes a PRESENCE signature signs (4.16): `hops` and `origin` are not among them.
fn presence_signed(room: &Hash, seq: u64, state: u8) -> Vec<u8> {
    [ROOM_PRESENCE_CONTEXT, &room[..], &seq.to_be_bytes(), &[state]].concat()
}

/// Verification of a PRESENCE signature by its origin (4.16), strict as for HELLO (4.4).
pub(super) fn presence_signature_ok(p: &Presence) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&p.origin) else { return false };
    key.verify_strict(&presence_signed(&p.room, p.seq, p.state), &Signature::from_bytes(&p.sig)).is_ok()
}

/// A received HELLO body (4.4), checked by the codec but not yet its signature.
#[derive(Debug)]
pub(super) struct Hello {
    pub(super) id: Hash,
    pub(super) port: u16,
    pub(super) flags: u8,
    pub(super) sig: [u8; 64],
}

pub(super) fn parse_hello(body: &[u8]) -> Hello {
    assert_eq!(body.len(), 103, "HELLO body length");
    Hello {
        id: body[4..36].try_into().unwrap(),
        port: u16::from_be_bytes([body[36], body[37]]),
        flags: body[38],
        sig: body[39..].try_into().unwrap(),
    }
}

// ---------------------------------------------------------------------------------------------
// Frames (sections 3 and 4): encoding
// ---------------------------------------------------------------------------------------------

pub(super) fn frame(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + body.len());
    f.extend_from_slice(&(1 + body.len() as u32).to_be_bytes());
    f.push(ty);
    f.extend_from_slice(body);
    f
}

pub(super) fn keepalive() -> Vec<u8> {
    vec![0, 0, 0, 0]
}

pub(super) fn hello_frame(id: &Hash, port: u16, flags: u8, sig: &[u8; 64]) -> Vec<u8> {
    let mut body = b"PEX\x02".to_vec();
    body.extend_from_slice(id);
    body.extend_from_slice(&port.to_be_bytes());
    body.push(flags);
    body.extend_from_slice(sig);
    frame(HELLO, &body)
}

pub(super) fn ask(h: &Hash) -> Vec<u8> {
    frame(ASK, h)
}

pub(super) fn give(data: &[u8]) -> Vec<u8> {
    give_as(&sha(data), data)
}

pub(super) fn give_as(h: &Hash, data: &[u8]) -> Vec<u8> {
    frame(GIVE, &[&h[..], data].concat())
}

/// One PEERS entry: node id, IPv6 address (IPv4 as IPv4-mapped), port (4.3).
pub(super) type Entry = (Hash, Ipv6Addr, u16);

pub(super) fn peers(entries: &[Entry]) -> Vec<u8> {
    let mut body = Vec::with_capacity(50 * entries.len());
    for (id, ip, port) in entries {
        body.extend_from_slice(id);
        body.extend_from_slice(&ip.octets());
        body.extend_from_slice(&port.to_be_bytes());
    }
    frame(PEERS, &body)
}

pub(super) fn parse_peers(body: &[u8]) -> Vec<Entry> {
    body.chunks(50)
        .map(|e| {
            let ip: [u8; 16] = e[32..48].try_into().unwrap();
            (e[..32].try_into().unwrap(), Ipv6Addr::from(ip), u16::from_be_bytes([e[48], e[49]]))
        })
        .collect()
}

pub(super) fn dont_have(h: &Hash) -> Vec<u8> {
    frame(DONT_HAVE, h)
}

pub(super) fn bitfield(root: &Hash, first: u32, bits: &[u8]) -> Vec<u8> {
    frame(BITFIELD, &[&root[..], &first.to_be_bytes(), bits].concat())
}

pub(super) fn have(root: &Hash, index: u32) -> Vec<u8> {
    frame(HAVE, &[&root[..], &index.to_be_bytes()].concat())
}

pub(super) fn reject(code: u8, retry_after: u16, reason: &str) -> Vec<u8> {
    frame(REJECT, &[&[code][..], &retry_after.to_be_bytes(), reason.as_bytes()].concat())
}

pub(super) fn cancel(h: &Hash) -> Vec<u8> {
    frame(CANCEL, h)
}

pub(super) fn join_room(room: &Hash) -> Vec<u8> {
    frame(JOIN, room)
}

pub(super) fn leave_room(room: &Hash) -> Vec<u8> {
    frame(LEAVE, room)
}

/// MEMBERS (4.13): the room, then entries laid out as in PEERS (4.3).
pub(super) fn members(room: &Hash, entries: &[Entry]) -> Vec<u8> {
    frame(MEMBERS, &[&room[..], &peers(entries)[5..]].concat())
}

pub(super) fn parse_members(body: &[u8]) -> (Hash, Vec<Entry>) {
    (body[..32].try_into().unwrap(), parse_peers(&body[32..]))
}

/// MESSAGE (4.14) with the signature given; `Identity::room_message` signs it.
pub(super) fn message(room: &Hash, id: &MessageId, origin: &Hash, hops: u8, sig: &[u8; 64], payload: &[u8]) -> Vec<u8> {
    frame(MESSAGE, &[&room[..], &id[..], &origin[..], &[hops], &sig[..], payload].concat())
}

/// The head of a MESSAGE body before its payload: room, id, origin, hops, signature (4.14).
pub(super) const MESSAGE_HEAD: usize = 32 + 16 + 32 + 1 + 64;

/// A MESSAGE body (4.14), its length checked by the codec but not its signature.
#[derive(Clone, Debug)]
pub(super) struct RoomMessage {
    pub(super) room: Hash,
    pub(super) id: MessageId,
    pub(super) origin: Hash,
    pub(super) hops: u8,
    pub(super) sig: [u8; 64],
    pub(super) payload: Vec<u8>,
}

pub(super) fn parse_message(body: &[u8]) -> RoomMessage {
    assert!(body.len() >= MESSAGE_HEAD, "MESSAGE body of {} bytes", body.len());
    RoomMessage {
        room: body[..32].try_into().unwrap(),
        id: body[32..48].try_into().unwrap(),
        origin: body[48..80].try_into().unwrap(),
        hops: body[80],
        sig: body[81..MESSAGE_HEAD].try_into().unwrap(),
        payload: body[MESSAGE_HEAD..].to_vec(),
    }
}

/// DIRECT (4.15): room, id, payload; no signature.
pub(super) fn direct(room: &Hash, id: &MessageId, payload: &[u8]) -> Vec<u8> {
    frame(DIRECT, &[&room[..], &id[..], payload].concat())
}

/// The head of a DIRECT body before its payload: room, id (4.15).
pub(super) const DIRECT_HEAD: usize = 32 + 16;

/// PRESENCE (4.16) with the signature given; `Identity::presence` signs it.
pub(super) fn presence(room: &Hash, origin: &Hash, seq: u64, state: u8, hops: u8, sig: &[u8; 64]) -> Vec<u8> {
    frame(PRESENCE, &[&room[..], &origin[..], &seq.to_be_bytes(), &[state, hops], &sig[..]].concat())
}

/// The whole PRESENCE body: room, origin, seq, state, hops, signature (section 3: exactly 138).
pub(super) const PRESENCE_BODY: usize = 32 + 32 + 8 + 1 + 1 + 64;

/// A PRESENCE body (4.16), its length checked by the codec but not its signature nor its state.
#[derive(Clone, Debug)]
pub(super) struct Presence {
    pub(super) room: Hash,
    pub(super) origin: Hash,
    pub(super) seq: u64,
    pub(super) state: u8,
    pub(super) hops: u8,
    pub(super) sig: [u8; 64],
}

pub(super) fn parse_presence(body: &[u8]) -> Presence {
    assert_eq!(body.len(), PRESENCE_BODY, "PRESENCE body length");
    Presence {
        room: body[..32].try_into().unwrap(),
        origin: body[32..64].try_into().unwrap(),
        seq: u64::from_be_bytes(body[64..72].try_into().unwrap()),
        state: body[72],
        hops: body[73],
        sig: body[74..].try_into().unwrap(),
    }
}

/// Bits for `pieces` pieces with `set(i)` deciding each, spare bits zero (4.6, 5.7).
pub(super) fn bits_where(pieces: usize, set: impl Fn(usize) -> bool) -> Vec<u8> {
    let mut bits = vec![0u8; pieces.div_ceil(8)];
    for i in (0..pieces).filter(|&i| set(i)) {
        bits[i / 8] |= 0x80 >> (i % 8);
    }
    bits
}

pub(super) fn full_bits(pieces: usize) -> Vec<u8> {
    bits_where(pieces, |_| true)
}

// ---------------------------------------------------------------------------------------------
// Frames: decoding and the codec rules
// ---------------------------------------------------------------------------------------------

/// One frame of the frame stream; `ty` is `None` for a keep-alive. `msgs` are the plaintext
/// lengths of the transport messages it arrived in (empty when decoded from bytes).
pub(super) struct Frame {
    pub(super) ty: Option<u8>,
    pub(super) body: Vec<u8>,
    pub(super) msgs: Vec<usize>,
}

impl Frame {
    /// The frame as it was in the frame stream, length prefix included.
    pub(super) fn wire(&self) -> Vec<u8> {
        match self.ty {
            None => keepalive(),
            Some(ty) => frame(ty, &self.body),
        }
    }

    pub(super) fn is(&self, ty: u8) -> bool {
        self.ty == Some(ty)
    }

    /// Hash field of ASK, GIVE, DONT_HAVE, CANCEL; root of BITFIELD and HAVE.
    pub(super) fn hash(&self) -> Hash {
        self.body[..32].try_into().unwrap()
    }

    pub(super) fn first(&self) -> u32 {
        u32::from_be_bytes(self.body[32..36].try_into().unwrap())
    }

    pub(super) fn retry_after(&self) -> u16 {
        u16::from_be_bytes([self.body[1], self.body[2]])
    }

    pub(super) fn reason(&self) -> String {
        String::from_utf8_lossy(&self.body[3..]).into_owned()
    }

    pub(super) fn show(&self) -> String {
        let name = match self.ty {
            None => "keep-alive",
            Some(ASK) => "ASK",
            Some(GIVE) => "GIVE",
            Some(PEERS) => "PEERS",
            Some(HELLO) => "HELLO",
            Some(DONT_HAVE) => "DONT_HAVE",
            Some(BITFIELD) => "BITFIELD",
            Some(HAVE) => "HAVE",
            Some(REJECT) => "REJECT",
            Some(CANCEL) => "CANCEL",
            Some(JOIN) => "JOIN",
            Some(LEAVE) => "LEAVE",
            Some(MEMBERS) => "MEMBERS",
            Some(MESSAGE) => "MESSAGE",
            Some(DIRECT) => "DIRECT",
            Some(PRESENCE) => "PRESENCE",
            Some(_) => "unknown",
        };
        let wire = self.wire();
        let shown = &wire[..wire.len().min(80)];
        let more = if wire.len() > shown.len() { format!("… ({} bytes)", wire.len()) } else { String::new() };
        match self.ty {
            Some(REJECT) if self.body.len() >= 3 => format!(
                "REJECT({}) retry-after {} {:?} [{}{more}]",
                self.body[0],
                self.retry_after(),
                self.reason(),
                hex(shown)
            ),
            _ => format!("{name} [{}{more}]", hex(shown)),
        }
    }
}

/// The codec of section 3, in its order of checks; the error names the rule (the names of
/// `fixtures/v2-vectors.json`).
pub(super) fn codec_check(ty: Option<u8>, body: &[u8]) -> Result<(), &'static str> {
    let n = body.len();
    if n + 1 > MAX_L {
        return Err("TooLong");
    }
    let length_ok = match ty {
        None => true,
        Some(ASK | DONT_HAVE | CANCEL) => n == 32,
        Some(GIVE) => n >= 32,
        Some(PEERS) => n % 50 == 0 && n <= 2500,
        Some(HELLO) => n == 103,
        Some(BITFIELD) => n >= 36,
        Some(HAVE) => n == 36,
        Some(REJECT) => (3..=203).contains(&n),
        Some(JOIN | LEAVE) => n == 32,
        Some(MEMBERS) => n >= 32 && (n - 32) % 50 == 0 && n <= 32 + 2500,
        Some(MESSAGE) => (MESSAGE_HEAD..=MESSAGE_HEAD + MAX_ROOM_PAYLOAD).contains(&n),
        Some(DIRECT) => (DIRECT_HEAD..=DIRECT_HEAD + MAX_ROOM_PAYLOAD).contains(&n),
        // Any state byte passes the codec: receivers ignore states other than 0 and 1 (4.16).
        Some(PRESENCE) => n == PRESENCE_BODY,
        // Types 15 to 255: unknown, ignored whatever their length (up to the maximum `L`).
        Some(_) => true,
    };
    if !length_ok {
        return Err("BadLength");
    }
    match ty {
        Some(HELLO) if body[..3] != *b"PEX" => Err("BadMagic"),
        Some(HELLO) if body[3] != 2 => Err("BadVersion"),
        Some(BITFIELD) => {
            let first = u32::from_be_bytes(body[32..36].try_into().unwrap()) as u64;
            if first + 8 * (n as u64 - 36) > 1 << 32 {
                Err("BitfieldRange")
            } else {
                Ok(())
            }
        }
        Some(REJECT) if std::str::from_utf8(&body[3..]).is_err() => Err("ReasonNotUtf8"),
        _ => Ok(()),
    }
}

/// Splits a whole frame stream (`bytes`) into frames; the first codec error ends it.
pub(super) fn decode_frames(mut bytes: &[u8]) -> Result<Vec<Frame>, &'static str> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 4 {
            return Err("Truncated");
        }
        let l = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        if l > MAX_L {
            return Err("TooLong");
        }
        if bytes.len() < 4 + l {
            return Err("Truncated");
        }
        let f = if l == 0 {
            Frame { ty: None, body: Vec::new(), msgs: Vec::new() }
        } else {
            Frame { ty: Some(bytes[4]), body: bytes[5..4 + l].to_vec(), msgs: Vec::new() }
        };
        codec_check(f.ty, &f.body)?;
        out.push(f);
        bytes = &bytes[4 + l..];
    }
    Ok(out)
}

/// Panics if a frame the node sent breaks the codec (section 3) or what 4.8 says pex sends.
pub(super) fn check_rules(f: &Frame) {
    if let Err(e) = codec_check(f.ty, &f.body) {
        panic!("the node sent a frame that breaks section 3 ({e}): {}", f.show());
    }
    if f.is(REJECT) {
        let code = f.body[0];
        assert!((1..=6).contains(&code), "the node sent a REJECT code 4.8 does not list: {}", f.show());
        assert_eq!(Some(f.retry_after()), retry_after_for(code), "retry-after pex sends (4.8): {}", f.show());
        assert!(f.body.len() - 3 <= 200, "REJECT reason over 200 bytes: {}", f.show());
    }
}

/// A parsed manifest (section 6).
pub(super) struct Manifest {
    pub(super) name: String,
    pub(super) size: u64,
    pub(super) lists: Vec<Hash>,
}

pub(super) fn parse_manifest(b: &[u8]) -> Manifest {
    assert!(b.len() >= 19, "manifest of {} bytes", b.len());
    assert_eq!(&b[0..4], b"PEXM", "manifest magic");
    assert_eq!(b[4], 1, "manifest version");
    assert_eq!(u32::from_be_bytes(b[5..9].try_into().unwrap()), PIECE as u32, "piece size");
    let size = u64::from_be_bytes(b[9..17].try_into().unwrap());
    let n = u16::from_be_bytes(b[17..19].try_into().unwrap()) as usize;
    assert!(b.len() - 19 >= n + 4, "manifest too short for its name and list count");
    let name = std::str::from_utf8(&b[19..19 + n]).expect("name is not UTF-8").to_owned();
    assert!(!name.is_empty() && name.len() <= 255 && name != "." && name != "..", "bad name {name:?}");
    assert!(!name.chars().any(|c| c == '/' || c == '\\' || c.is_control()), "bad name {name:?}");
    let c = u32::from_be_bytes(b[19 + n..23 + n].try_into().unwrap()) as usize;
    let pieces = size.div_ceil(PIECE as u64) as usize;
    assert_eq!(c, pieces.div_ceil(LIST_HASHES), "list count for {pieces} pieces");
    assert_eq!(b.len(), 23 + n + 32 * c, "manifest length");
    let lists = b[23 + n..].chunks(32).map(|h| h.try_into().unwrap()).collect();
    Manifest { name, size, lists }
}

/// The manifest blob of a file (section 6).
pub(super) fn make_manifest(name: &str, data: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let hashes = piece_hashes(data);
    let lists: Vec<Vec<u8>> = hashes.chunks(LIST_HASHES).map(|c| c.concat()).collect();
    let mut m = b"PEXM\x01".to_vec();
    m.extend_from_slice(&(PIECE as u32).to_be_bytes());
    m.extend_from_slice(&(data.len() as u64).to_be_bytes());
    m.extend_from_slice(&(name.len() as u16).to_be_bytes());
    m.extend_from_slice(name.as_bytes());
    m.extend_from_slice(&(lists.len() as u32).to_be_bytes());
    for l in &lists {
        m.extend_from_slice(&sha(l));
    }
    (m, lists)
}
