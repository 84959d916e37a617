//! One complete v2 connection between two fixed identities with fixed Noise
//! keys (`fixtures/v2-connection.json`, quoted in docs/PROTOCOL.md section 8),
//! recomputed twice: by pex (its handshake over an in-memory pipe, its frame
//! writer and reader) and by the independent model of `model.rs`. The
//! transport rules of section 2 are checked with its keys in `transport.rs`.

use crate::common::hex;
use crate::fixtures::{self, ConnectionFixture, MessageFixture, PartyFixture, TransportFixture, TransportKeys};
use crate::model;
use bytes::{Bytes, BytesMut};
use pex::connection::{FrameReader, FrameWriter};
use pex::hash::hex as to_hex;
use pex::identity::{verify_hello, Identity};
use pex::noise::{self, Cipher, Keys, Session};
use pex::wire::{self, Frame, Hello, PeerEntry, RejectCode};
use pex::{Hash, NodeId};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What one side of the fixture connection is made of.
pub struct Secrets {
    pub identity: [u8; 32],
    pub static_secret: [u8; 32],
    pub ephemeral: [u8; 32],
    pub listen_port: u16,
    pub flags: u8,
}

/// The dialler: identity 01…01, static 11…11, ephemeral 21…21, listening on 9001.
pub const INITIATOR: Secrets =
    Secrets { identity: [0x01; 32], static_secret: [0x11; 32], ephemeral: [0x21; 32], listen_port: 9001, flags: 1 };
/// The node dialled: identity 02…02, static 12…12, ephemeral 22…22, listening on 9000.
pub const RESPONDER: Secrets =
    Secrets { identity: [0x02; 32], static_secret: [0x12; 32], ephemeral: [0x22; 32], listen_port: 9000, flags: 1 };
/// The identity secret of the node the responder's PEERS names.
pub const THIRD: [u8; 32] = [0x03; 32];
/// Where that node listens.
pub const THIRD_ADDR: &str = "192.0.2.7:9000";

impl Secrets {
    pub fn keys(&self) -> Keys {
        Keys { static_secret: self.static_secret, ephemeral: Some(self.ephemeral) }
    }

    pub fn party(&self) -> model::Party {
        model::Party { static_secret: self.static_secret, ephemeral_secret: self.ephemeral }
    }

    /// Its HELLO on the connection whose handshake hash is `hh`, signed by pex.
    pub fn hello(&self, hh: &[u8; 32]) -> Hello {
        let id = Identity::from_secret(self.identity);
        Hello { node_id: id.node_id(), listen_port: self.listen_port, flags: self.flags, signature: id.sign_hello(hh) }
    }

    fn fixture(&self) -> PartyFixture {
        PartyFixture {
            identity_secret: to_hex(&self.identity),
            node_id: to_hex(&model::node_id(&self.identity)),
            static_secret: to_hex(&self.static_secret),
            static_public: to_hex(&model::public(&self.static_secret)),
            ephemeral_secret: to_hex(&self.ephemeral),
            ephemeral_public: to_hex(&model::public(&self.ephemeral)),
            listen_port: self.listen_port,
            flags: self.flags,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Initiator,
    Responder,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Initiator => "initiator",
            Side::Responder => "responder",
        }
    }

    fn parse(s: &str) -> Side {
        match s {
            "initiator" => Side::Initiator,
            "responder" => Side::Responder,
            other => panic!("unknown side {other:?}"),
        }
    }
}

/// The manifest of `hello.txt` (docs/PROTOCOL.md, the manifest example).
pub fn manifest() -> Bytes {
    Bytes::from(std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/hello.manifest")).unwrap())
}

/// The third node's PEERS entry.
pub fn third_entry() -> PeerEntry {
    PeerEntry { node_id: NodeId(model::node_id(&THIRD)), addr: THIRD_ADDR.parse::<SocketAddr>().unwrap() }
}

/// The frames of the connection, in the order they are sent: the HELLOs, the
/// PEERS each sends as part of the handshake, one ASK and its GIVE, and the
/// initiator closing with REJECT(6).
pub fn script(hh: &[u8; 32]) -> Vec<(Side, &'static str, Frame)> {
    let m = manifest();
    let root = Hash::of(&m);
    vec![
        (Side::Initiator, "HELLO: node 8a88e3dd…6f5c, listen port 9001, flags 01", Frame::Hello(INITIATOR.hello(hh))),
        (Side::Responder, "HELLO: node 8139770e…b394, listen port 9000, flags 01", Frame::Hello(RESPONDER.hello(hh))),
        (
            Side::Responder,
            "PEERS: one entry, node ed4928c6…37d1 at 192.0.2.7:9000 (IPv4-mapped)",
            Frame::Peers(vec![third_entry()]),
        ),
        (Side::Initiator, "PEERS: no entries", Frame::Peers(vec![])),
        (Side::Initiator, "ASK the root of hello.txt", Frame::Ask(root)),
        (Side::Responder, "GIVE the 64-byte manifest of hello.txt", Frame::Give { hash: root, data: m }),
        (
            Side::Initiator,
            "REJECT(6) \"shutting down\", retry after 10 s",
            Frame::reject_retry(RejectCode::ShuttingDown, 10, "shutting down"),
        ),
    ]
}

/// A stream that records every byte written to it.
pub struct Tap<S> {
    pub inner: S,
    pub written: Vec<u8>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            this.written.extend_from_slice(&buf[..*n]);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The handshake as pex runs it, and the bytes each side wrote.
struct ByPex {
    initiator_wrote: Vec<u8>,
    responder_wrote: Vec<u8>,
    initiator: Session,
    responder: Session,
}

async fn handshake_with_pex() -> ByPex {
    let (a, b) = tokio::io::duplex(1 << 16);
    let (mut a, mut b) = (Tap { inner: a, written: Vec::new() }, Tap { inner: b, written: Vec::new() });
    let (ka, kb) = (INITIATOR.keys(), RESPONDER.keys());
    let (x, y) = tokio::join!(noise::handshake(&mut a, true, &ka), noise::handshake(&mut b, false, &kb));
    ByPex { initiator_wrote: a.written, responder_wrote: b.written, initiator: x.unwrap(), responder: y.unwrap() }
}

/// Splits a byte stream into Noise messages (u16 length, then that many bytes), prefixes kept.
pub fn messages(mut stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !stream.is_empty() {
        assert!(stream.len() >= 2, "a partial length prefix");
        let len = 2 + u16::from_be_bytes([stream[0], stream[1]]) as usize;
        assert!(stream.len() >= len, "a partial message");
        out.push(stream[..len].to_vec());
        stream = &stream[len..];
    }
    out
}

/// One scripted frame as pex sent it.
struct Sent {
    side: Side,
    what: &'static str,
    nonce: u64,
    plaintext: Vec<u8>,
    wire: Vec<u8>,
}

/// Seals the script with pex's frame writers, one per direction.
async fn transport_with_pex(initiator: Cipher, responder: Cipher, script: &[(Side, &'static str, Frame)]) -> Vec<Sent> {
    let mut wi = FrameWriter::encrypted(Vec::new(), initiator);
    let mut wr = FrameWriter::encrypted(Vec::new(), responder);
    let mut nonces = [0u64; 2];
    let mut out = Vec::new();
    for (side, what, frame) in script {
        let (w, n) = match side {
            Side::Initiator => (&mut wi, &mut nonces[0]),
            Side::Responder => (&mut wr, &mut nonces[1]),
        };
        w.write_frame(frame, None).await.unwrap();
        let wire = std::mem::take(w.get_mut());
        assert_eq!(messages(&wire).len(), 1, "{what}: a small frame is one transport message");
        out.push(Sent { side: *side, what, nonce: *n, plaintext: frame.to_bytes().to_vec(), wire });
        *n += 1;
    }
    out
}

pub fn bytes32(s: &str) -> [u8; 32] {
    hex(s).try_into().unwrap()
}

/// The fixture connection, computed by pex and checked against the model.
pub async fn build_fixture() -> ConnectionFixture {
    let pex = handshake_with_pex().await;
    let model = model::xx(noise::PROTOCOL_NAME, noise::PROLOGUE, &INITIATOR.party(), &RESPONDER.party());
    let (i, r) = (messages(&pex.initiator_wrote), messages(&pex.responder_wrote));
    assert_eq!((i.len(), r.len()), (2, 1));
    let wire = [&i[0], &r[0], &i[1]];
    for (k, m) in wire.iter().enumerate() {
        assert_eq!(m[2..], model.messages[k][..], "message {k}: pex and the model disagree");
    }
    let hh = pex.initiator.handshake_hash;
    assert_eq!(hh, model.handshake_hash);
    let sent = transport_with_pex(pex.initiator.send, pex.responder.send, &script(&hh)).await;
    ConnectionFixture {
        about: "One complete pex wire protocol v2 connection (docs/PROTOCOL.md, worked example): \
                Noise_XX_25519_AESGCM_SHA256 with prologue 'pex/2' between two fixed identities \
                with fixed X25519 static and ephemeral keys, then the first transport messages. \
                Handshake messages and transport 'wire' include their u16 big-endian length \
                prefix; 'plaintext' is one whole frame with its u32 length prefix."
            .into(),
        regenerate: fixtures::REGENERATE.into(),
        protocol_name: noise::PROTOCOL_NAME.into(),
        prologue: to_hex(noise::PROLOGUE),
        initiator: INITIATOR.fixture(),
        responder: RESPONDER.fixture(),
        handshake: [(Side::Initiator, wire[0]), (Side::Responder, wire[1]), (Side::Initiator, wire[2])]
            .into_iter()
            .map(|(side, m)| MessageFixture { from: side.name().into(), hex: to_hex(m) })
            .collect(),
        handshake_hash: to_hex(&hh),
        transport_keys: TransportKeys {
            initiator_to_responder: to_hex(&model.initiator_to_responder),
            responder_to_initiator: to_hex(&model.responder_to_initiator),
        },
        transport: sent
            .into_iter()
            .map(|s| TransportFixture {
                from: s.side.name().into(),
                nonce: s.nonce,
                frame: s.what.into(),
                plaintext: to_hex(&s.plaintext),
                wire: to_hex(&s.wire),
            })
            .collect(),
    }
}

pub fn key_of(f: &ConnectionFixture, side: Side) -> [u8; 32] {
    bytes32(match side {
        Side::Initiator => &f.transport_keys.initiator_to_responder,
        Side::Responder => &f.transport_keys.responder_to_initiator,
    })
}

fn party_of(f: &ConnectionFixture, side: Side) -> &PartyFixture {
    match side {
        Side::Initiator => &f.initiator,
        Side::Responder => &f.responder,
    }
}

// ---------------------------------------------------------------------------

#[test]
fn the_fixture_names_the_keys_and_protocol_it_was_made_with() {
    let f = fixtures::connection();
    assert_eq!(f.protocol_name, "Noise_XX_25519_AESGCM_SHA256");
    assert_eq!(hex(&f.prologue), b"pex/2");
    for (side, s) in [(Side::Initiator, &INITIATOR), (Side::Responder, &RESPONDER)] {
        let p = party_of(&f, side);
        assert_eq!(bytes32(&p.identity_secret), s.identity);
        assert_eq!(bytes32(&p.static_secret), s.static_secret);
        assert_eq!(bytes32(&p.ephemeral_secret), s.ephemeral);
        assert_eq!((p.listen_port, p.flags), (s.listen_port, s.flags));
        // The node id is the Ed25519 public key: as pex derives it and as ed25519-dalek does.
        assert_eq!(Identity::from_secret(s.identity).node_id().0, bytes32(&p.node_id), "{side:?}");
        assert_eq!(model::node_id(&s.identity), bytes32(&p.node_id), "{side:?}");
        assert_eq!(model::public(&s.static_secret), bytes32(&p.static_public), "{side:?}");
        assert_eq!(model::public(&s.ephemeral), bytes32(&p.ephemeral_public), "{side:?}");
    }
    let froms: Vec<&str> = f.handshake.iter().map(|m| m.from.as_str()).collect();
    assert_eq!(froms, ["initiator", "responder", "initiator"]);
}

#[tokio::test]
async fn pex_recomputes_the_fixture_connection_byte_for_byte() {
    let f = fixtures::connection();
    let pex = handshake_with_pex().await;
    let wrote =
        |side: &str| -> Vec<u8> { f.handshake.iter().filter(|m| m.from == side).flat_map(|m| hex(&m.hex)).collect() };
    assert_eq!(to_hex(&pex.initiator_wrote), to_hex(&wrote("initiator")), "the initiator's handshake bytes");
    assert_eq!(to_hex(&pex.responder_wrote), to_hex(&wrote("responder")), "the responder's handshake bytes");
    let hh = bytes32(&f.handshake_hash);
    assert_eq!(pex.initiator.handshake_hash, hh);
    assert_eq!(pex.responder.handshake_hash, hh);
    assert_eq!(
        pex.initiator.remote_static,
        bytes32(&f.responder.static_public),
        "the initiator learns the responder's static key"
    );
    assert_eq!(pex.responder.remote_static, bytes32(&f.initiator.static_public), "and the responder the initiator's");

    let sent = transport_with_pex(pex.initiator.send, pex.responder.send, &script(&hh)).await;
    assert_eq!(sent.len(), f.transport.len());
    for (s, t) in sent.iter().zip(&f.transport) {
        assert_eq!((s.side.name(), s.nonce, s.what), (t.from.as_str(), t.nonce, t.frame.as_str()));
        assert_eq!(to_hex(&s.plaintext), t.plaintext, "{}: plaintext", t.frame);
        assert_eq!(to_hex(&s.wire), t.wire, "{}: wire bytes", t.frame);
    }
}

#[test]
fn the_noise_specification_recomputes_the_fixture_connection_byte_for_byte() {
    let f = fixtures::connection();
    let t = model::xx(&f.protocol_name, &hex(&f.prologue), &INITIATOR.party(), &RESPONDER.party());
    for (k, m) in f.handshake.iter().enumerate() {
        let bytes = hex(&m.hex);
        assert_eq!(bytes.len(), 2 + [32, 96, 64][k], "message {k} is 32, 96 or 64 bytes after its prefix");
        assert_eq!(u16::from_be_bytes([bytes[0], bytes[1]]) as usize, bytes.len() - 2, "message {k}: u16 BE length");
        assert_eq!(to_hex(&bytes[2..]), to_hex(&t.messages[k]), "message {k}");
    }
    // Message 0 is the initiator's ephemeral key in the clear; message 1 starts with the responder's.
    assert_eq!(hex(&f.handshake[0].hex)[2..], hex(&f.initiator.ephemeral_public)[..]);
    assert_eq!(hex(&f.handshake[1].hex)[2..34], hex(&f.responder.ephemeral_public)[..]);
    assert_eq!(to_hex(&t.handshake_hash), f.handshake_hash);
    assert_eq!(to_hex(&t.initiator_to_responder), f.transport_keys.initiator_to_responder);
    assert_eq!(to_hex(&t.responder_to_initiator), f.transport_keys.responder_to_initiator);

    let mut next = [0u64; 2];
    for m in &f.transport {
        let side = Side::parse(&m.from);
        let n = &mut next[side as usize];
        assert_eq!(m.nonce, *n, "{}: nonces count from 0 in each direction", m.frame);
        *n += 1;
        let (wire, plain) = (hex(&m.wire), hex(&m.plaintext));
        assert_eq!(u16::from_be_bytes([wire[0], wire[1]]) as usize, wire.len() - 2, "{}", m.frame);
        assert_eq!(
            wire.len(),
            2 + plain.len() + 16,
            "{}: ciphertext as long as the plaintext, then a 16-byte tag",
            m.frame
        );
        let key = key_of(&f, side);
        assert_eq!(model::open(&key, m.nonce, &[], &wire[2..]), Some(plain.clone()), "{}", m.frame);
        assert_eq!(model::seal(&key, m.nonce, &[], &plain), wire[2..], "{}", m.frame);
        // The other direction's key, or another nonce, does not open it.
        let other = key_of(&f, if side == Side::Initiator { Side::Responder } else { Side::Initiator });
        assert_eq!(model::open(&other, m.nonce, &[], &wire[2..]), None);
        assert_eq!(model::open(&key, m.nonce + 1, &[], &wire[2..]), None);
    }
}

#[tokio::test]
async fn the_fixture_transport_reads_back_as_the_scripted_frames() {
    let f = fixtures::connection();
    let hh = bytes32(&f.handshake_hash);
    let script = script(&hh);
    assert_eq!(script.len(), f.transport.len());
    for ((side, what, frame), m) in script.iter().zip(&f.transport) {
        assert_eq!((side.name(), *what), (m.from.as_str(), m.frame.as_str()));
        let mut plain = BytesMut::from(&hex(&m.plaintext)[..]);
        assert_eq!(wire::decode(&mut plain), Ok(Some(frame.clone())), "{what}");
        assert!(plain.is_empty(), "{what}: one whole frame");
    }
    for side in [Side::Initiator, Side::Responder] {
        let stream: Vec<u8> = f.transport.iter().filter(|m| m.from == side.name()).flat_map(|m| hex(&m.wire)).collect();
        let mut reader = FrameReader::encrypted(&stream[..], Cipher::new(&key_of(&f, side)));
        for (_, what, frame) in script.iter().filter(|s| s.0 == side) {
            assert_eq!(reader.read_frame().await.unwrap().as_ref(), Some(frame), "{what}");
        }
        assert!(reader.read_frame().await.unwrap().is_none(), "a clean end after the last message");
    }
}

#[test]
fn the_fixture_hellos_prove_their_node_ids_for_this_connection_only() {
    let f = fixtures::connection();
    let hh = bytes32(&f.handshake_hash);
    let hellos: Vec<_> = f.transport.iter().filter(|m| m.frame.starts_with("HELLO")).collect();
    assert_eq!(hellos.len(), 2);
    for (m, secrets) in hellos.iter().zip([&INITIATOR, &RESPONDER]) {
        let p = party_of(&f, Side::parse(&m.from));
        let frame = hex(&m.plaintext);
        // Section 4.4, byte by byte: L = 104, type 3, "PEX", 2, id, port, flags, signature.
        assert_eq!(frame.len(), 4 + 1 + 103);
        assert_eq!(frame[..5], [0, 0, 0, 104, 3]);
        assert_eq!(&frame[5..9], b"PEX\x02");
        assert_eq!(frame[9..41], hex(&p.node_id)[..]);
        assert_eq!(u16::from_be_bytes([frame[41], frame[42]]), p.listen_port);
        assert_eq!(frame[43], p.flags);
        let sig: [u8; 64] = frame[44..108].try_into().unwrap();
        assert_eq!(sig, model::hello_signature(&secrets.identity, &hh), "Ed25519 over \"pex/2 hello\" ++ hh");
        let id = NodeId(bytes32(&p.node_id));
        assert!(verify_hello(&id, &hh, &sig), "{}: verifies", m.frame);
        let mut other_hh = hh;
        other_hh[31] ^= 1;
        assert!(!verify_hello(&id, &other_hh, &sig), "{}: not on another connection", m.frame);
        let other_id = NodeId(model::node_id(&THIRD));
        assert!(!verify_hello(&other_id, &hh, &sig), "{}: not for another node id", m.frame);
    }
}

#[test]
fn docs_protocol_md_quotes_the_fixture_connection() {
    let f = fixtures::connection();
    let doc = crate::protocol_doc();
    let mut quoted: Vec<(String, &str)> = vec![
        (f.handshake_hash.clone(), "handshake hash"),
        (f.transport_keys.initiator_to_responder.clone(), "k1"),
        (f.transport_keys.responder_to_initiator.clone(), "k2"),
    ];
    for m in &f.handshake {
        quoted.push((m.hex.clone(), "a handshake message"));
    }
    for p in [&f.initiator, &f.responder] {
        for k in [
            &p.identity_secret,
            &p.node_id,
            &p.static_secret,
            &p.static_public,
            &p.ephemeral_secret,
            &p.ephemeral_public,
        ] {
            quoted.push((k.clone(), "a key"));
        }
    }
    for m in &f.transport {
        quoted.push((m.plaintext.clone(), "a transport plaintext"));
        quoted.push((m.wire.clone(), "a transport message"));
        quoted.push((m.frame.clone(), "a transport message's description"));
    }
    quoted.push((f.transport[0].plaintext[88..].to_string(), "the initiator's HELLO signature"));
    for (text, what) in quoted {
        assert!(doc.contains(&text), "docs/PROTOCOL.md does not quote {what}: {text}");
    }
    assert!(doc.contains(&f.protocol_name) && doc.contains("`pex/2`"));
}
