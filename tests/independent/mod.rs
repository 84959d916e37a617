//! An independent client of the pex wire protocol, version 2, written only from
//! `docs/PROTOCOL.md` and the fixtures it cites.
//!
//! Nothing here uses the `pex` crate. The Noise handshake (`Noise_XX_25519_AESGCM_SHA256`, section
//! 2.3) is computed by hand from the text of the specification: HMAC and HKDF over `sha2`,
//! AES-256-GCM from `ring`, and only the X25519 function itself from `snow`'s resolver (`snow`'s
//! state machine is used once more, as a cross-check of the worked example). Transport messages,
//! frames, HELLO signatures (`ed25519-dalek`), manifests and bitfields are laid out by hand.
//!
//! The node under test is the real `pex` binary, reached over TCP on [::1] with blocking sockets;
//! every blocking read and write is bounded by a socket time-out, and every process a test starts
//! is killed when the test ends.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

const PEX: &str = env!("CARGO_BIN_EXE_pex");
/// Bound on every blocking socket read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to print its root and fetch command.
const STARTUP: Duration = Duration::from_secs(120);

// Section 1.
const PIECE: usize = 1 << 20;
const LIST_HASHES: usize = 32_768;
// Section 2.3 and 2.4.
const PROTOCOL_NAME: &[u8] = b"Noise_XX_25519_AESGCM_SHA256";
const PROLOGUE: &[u8] = b"pex/2";
const TAG: usize = 16;
const MAX_PLAIN: usize = 65_535 - TAG;
// Section 3.
const MAX_L: usize = 1 + 32 + PIECE;
// Section 4.4.
const HELLO_CONTEXT: &[u8] = b"pex/2 hello";

// Section 3: message types.
const ASK: u8 = 0;
const GIVE: u8 = 1;
const PEERS: u8 = 2;
const HELLO: u8 = 3;
const DONT_HAVE: u8 = 4;
const BITFIELD: u8 = 5;
const HAVE: u8 = 6;
const REJECT: u8 = 7;
const CANCEL: u8 = 8;

// Section 4.8: REJECT codes.
const DUPLICATE: u8 = 1;
const LIMIT: u8 = 2;
const VIOLATION: u8 = 3;
const SELF: u8 = 4;
const MISBEHAVING: u8 = 5;
const SHUTTING_DOWN: u8 = 6;

/// The retry-after pex sends with each code (4.8).
fn retry_after_for(code: u8) -> Option<u16> {
    match code {
        LIMIT => Some(5),
        SHUTTING_DOWN => Some(10),
        1..=5 => Some(0),
        _ => None,
    }
}

type Hash = [u8; 32];

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

fn sha(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

fn sha_parts(parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex string {s}");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn h32(s: &str) -> Hash {
    unhex(s).try_into().unwrap()
}

fn random32() -> Hash {
    let mut b = [0; 32];
    SystemRandom::new().fill(&mut b).expect("the system random number generator");
    b
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg.into())
}

/// xorshift64: deterministic pseudo-random bytes and hashes for file contents and probes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(&mut v);
        v
    }

    fn hash(&mut self) -> Hash {
        let mut h = [0; 32];
        self.fill(&mut h);
        h
    }
}

/// Writes `len` pseudo-random bytes to `dir/name` and returns the path and the contents.
fn write_file(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let data = Rng::new(seed).bytes(len);
    let path = dir.join(name);
    fs::write(&path, &data).unwrap();
    (path, data)
}

/// SHA-256 of each 1 MiB piece of `data` (section 1).
fn piece_hashes(data: &[u8]) -> Vec<Hash> {
    data.chunks(PIECE).map(sha).collect()
}

fn join<T>(h: thread::JoinHandle<T>) -> T {
    h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn is_reset(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

// ---------------------------------------------------------------------------------------------
// Cryptography of section 2.3, by hand where the specification spells it out
// ---------------------------------------------------------------------------------------------

/// HMAC-SHA-256 (RFC 2104) of the concatenation of `parts`.
fn hmac(key: &[u8], parts: &[&[u8]]) -> Hash {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let inner: Hash = inner.finalize().into();
    sha_parts(&[&k.map(|b| b ^ 0x5c), &inner])
}

/// `HKDF(ck, ikm)` of 2.3: two 32-byte outputs.
fn hkdf(ck: &Hash, ikm: &[u8]) -> (Hash, Hash) {
    let t = hmac(ck, &[ikm]);
    let out1 = hmac(&t, &[&[1]]);
    let out2 = hmac(&t, &[&out1, &[2]]);
    (out1, out2)
}

/// X25519 (RFC 7748): `DH(secret, public)`; the only primitive not written here.
fn x25519(secret: &Hash, public: &[u8]) -> Hash {
    use snow::resolvers::{CryptoResolver, DefaultResolver};
    let mut dh = DefaultResolver.resolve_dh(&snow::params::DHChoice::Curve25519).unwrap();
    dh.set(secret);
    let mut out = [0; 32];
    dh.dh(public, &mut out).expect("X25519");
    out
}

/// `X25519(secret, 9)`: the public key of an X25519 secret.
fn x25519_public(secret: &Hash) -> Hash {
    let mut nine = [0; 32];
    nine[0] = 9;
    x25519(secret, &nine)
}

/// One direction of AES-256-GCM with the nonce layout of 2.3: `00 00 00 00` and a u64 BE counter.
struct Gcm {
    key: LessSafeKey,
    n: u64,
}

impl Gcm {
    fn new(k: &Hash) -> Gcm {
        Gcm { key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).unwrap()), n: 0 }
    }

    fn nonce(n: u64) -> Nonce {
        let mut b = [0; 12];
        b[4..].copy_from_slice(&n.to_be_bytes());
        Nonce::assume_unique_for_key(b)
    }

    /// `ENCRYPT(k, n, ad, p)`: ciphertext then tag; does not advance the counter.
    fn seal_at(&self, n: u64, ad: &[u8], p: &[u8]) -> Vec<u8> {
        let mut buf = p.to_vec();
        self.key.seal_in_place_append_tag(Gcm::nonce(n), Aad::from(ad), &mut buf).unwrap();
        buf
    }

    fn open_at(&self, n: u64, ad: &[u8], c: &[u8]) -> Option<Vec<u8>> {
        let mut buf = c.to_vec();
        let len = self.key.open_in_place(Gcm::nonce(n), Aad::from(ad), &mut buf).ok()?.len();
        buf.truncate(len);
        Some(buf)
    }

    fn seal(&mut self, ad: &[u8], p: &[u8]) -> Vec<u8> {
        let c = self.seal_at(self.n, ad, p);
        self.n += 1;
        c
    }

    fn open(&mut self, ad: &[u8], c: &[u8]) -> Option<Vec<u8>> {
        let p = self.open_at(self.n, ad, c)?;
        self.n += 1;
        Some(p)
    }
}

/// The symmetric state of 2.3: `h`, `ck`, and the key with its nonce once there is one.
struct Symmetric {
    h: Hash,
    ck: Hash,
    k: Option<Gcm>,
}

impl Symmetric {
    fn new(prologue: &[u8]) -> Symmetric {
        let mut h = [0; 32];
        h[..28].copy_from_slice(PROTOCOL_NAME);
        let mut s = Symmetric { h, ck: h, k: None };
        s.mix_hash(prologue);
        s
    }

    fn mix_hash(&mut self, d: &[u8]) {
        self.h = sha_parts(&[&self.h, d]);
    }

    fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, k) = hkdf(&self.ck, ikm);
        self.ck = ck;
        self.k = Some(Gcm::new(&k));
    }

    fn encrypt_and_hash(&mut self, p: &[u8]) -> Vec<u8> {
        let c = match &mut self.k {
            None => p.to_vec(),
            Some(k) => k.seal(&self.h, p),
        };
        self.mix_hash(&c);
        c
    }

    fn decrypt_and_hash(&mut self, c: &[u8]) -> Result<Vec<u8>, String> {
        let p = match &mut self.k {
            None => c.to_vec(),
            Some(k) => k.open(&self.h, c).ok_or("a handshake tag does not verify")?,
        };
        self.mix_hash(c);
        Ok(p)
    }
}

/// One side of the XX handshake of 2.3, with its static and ephemeral X25519 secrets.
struct Noise {
    sym: Symmetric,
    s: Hash,
    e: Hash,
    re: Hash,
    rs: Hash,
}

impl Noise {
    fn new(prologue: &[u8], s: Hash, e: Hash) -> Noise {
        Noise { sym: Symmetric::new(prologue), s, e, re: [0; 32], rs: [0; 32] }
    }

    fn random() -> Noise {
        Noise::new(PROLOGUE, random32(), random32())
    }

    /// Message 1 (`-> e`), without its length prefix.
    fn write1(&mut self) -> Vec<u8> {
        let e_pub = x25519_public(&self.e);
        self.sym.mix_hash(&e_pub);
        [&e_pub[..], &self.sym.encrypt_and_hash(&[])].concat()
    }

    fn read1(&mut self, m: &[u8]) -> Result<(), String> {
        if m.len() != 32 {
            return Err(format!("message 1 of {} bytes", m.len()));
        }
        self.re = m.try_into().unwrap();
        self.sym.mix_hash(&self.re.clone());
        self.sym.decrypt_and_hash(&[])?;
        Ok(())
    }

    /// Message 2 (`<- e, ee, s, es`).
    fn write2(&mut self) -> Vec<u8> {
        let e_pub = x25519_public(&self.e);
        self.sym.mix_hash(&e_pub);
        self.sym.mix_key(&x25519(&self.e, &self.re));
        let c1 = self.sym.encrypt_and_hash(&x25519_public(&self.s));
        self.sym.mix_key(&x25519(&self.s, &self.re));
        let c2 = self.sym.encrypt_and_hash(&[]);
        [&e_pub[..], &c1, &c2].concat()
    }

    fn read2(&mut self, m: &[u8]) -> Result<(), String> {
        if m.len() != 96 {
            return Err(format!("message 2 of {} bytes", m.len()));
        }
        self.re = m[..32].try_into().unwrap();
        self.sym.mix_hash(&m[..32]);
        self.sym.mix_key(&x25519(&self.e, &self.re));
        self.rs = self.sym.decrypt_and_hash(&m[32..80])?.try_into().unwrap();
        self.sym.mix_key(&x25519(&self.e, &self.rs));
        self.sym.decrypt_and_hash(&m[80..])?;
        Ok(())
    }

    /// Message 3 (`-> s, se`).
    fn write3(&mut self) -> Vec<u8> {
        let c1 = self.sym.encrypt_and_hash(&x25519_public(&self.s));
        self.sym.mix_key(&x25519(&self.s, &self.re));
        let c2 = self.sym.encrypt_and_hash(&[]);
        [c1, c2].concat()
    }

    fn read3(&mut self, m: &[u8]) -> Result<(), String> {
        if m.len() != 64 {
            return Err(format!("message 3 of {} bytes", m.len()));
        }
        self.rs = self.sym.decrypt_and_hash(&m[..48])?.try_into().unwrap();
        self.sym.mix_key(&x25519(&self.e, &self.rs));
        self.sym.decrypt_and_hash(&m[48..])?;
        Ok(())
    }

    /// The handshake hash and `(k1, k2)`: `k1` for what the initiator sends, `k2` the responder.
    fn finish(&self) -> (Hash, Hash, Hash) {
        let (k1, k2) = hkdf(&self.sym.ck, &[]);
        (self.sym.h, k1, k2)
    }
}

/// A Noise message on the wire: u16 BE length, then the bytes (2.3).
fn lp(m: &[u8]) -> Vec<u8> {
    assert!(m.len() <= 65_535);
    [&(m.len() as u16).to_be_bytes()[..], m].concat()
}

// ---------------------------------------------------------------------------------------------
// Identities and HELLO signatures (2.2, 4.4)
// ---------------------------------------------------------------------------------------------

struct Identity {
    key: SigningKey,
}

impl Identity {
    fn from_secret(secret: &Hash) -> Identity {
        Identity { key: SigningKey::from_bytes(secret) }
    }

    fn random() -> Identity {
        Identity::from_secret(&random32())
    }

    fn secret(&self) -> Hash {
        self.key.to_bytes()
    }

    fn id(&self) -> Hash {
        self.key.verifying_key().to_bytes()
    }

    /// The signature of `"pex/2 hello" ‖ h`.
    fn sign_hello(&self, hh: &Hash) -> [u8; 64] {
        self.key.sign(&[HELLO_CONTEXT, hh].concat()).to_bytes()
    }

    /// This identity's HELLO frame for the connection with handshake hash `hh`.
    fn hello(&self, hh: &Hash, port: u16, flags: u8) -> Vec<u8> {
        hello_frame(&self.id(), port, flags, &self.sign_hello(hh))
    }
}

/// Strict verification, as 4.4 requires of HELLO signatures.
fn hello_signature_ok(id: &Hash, hh: &Hash, sig: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(id) else { return false };
    key.verify_strict(&[HELLO_CONTEXT, hh].concat(), &Signature::from_bytes(sig)).is_ok()
}

/// A received HELLO body (4.4), checked by the codec but not yet its signature.
#[derive(Debug)]
struct Hello {
    id: Hash,
    port: u16,
    flags: u8,
    sig: [u8; 64],
}

fn parse_hello(body: &[u8]) -> Hello {
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

fn frame(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + body.len());
    f.extend_from_slice(&(1 + body.len() as u32).to_be_bytes());
    f.push(ty);
    f.extend_from_slice(body);
    f
}

fn keepalive() -> Vec<u8> {
    vec![0, 0, 0, 0]
}

fn hello_frame(id: &Hash, port: u16, flags: u8, sig: &[u8; 64]) -> Vec<u8> {
    let mut body = b"PEX\x02".to_vec();
    body.extend_from_slice(id);
    body.extend_from_slice(&port.to_be_bytes());
    body.push(flags);
    body.extend_from_slice(sig);
    frame(HELLO, &body)
}

fn ask(h: &Hash) -> Vec<u8> {
    frame(ASK, h)
}

fn give(data: &[u8]) -> Vec<u8> {
    give_as(&sha(data), data)
}

fn give_as(h: &Hash, data: &[u8]) -> Vec<u8> {
    frame(GIVE, &[&h[..], data].concat())
}

/// One PEERS entry: node id, IPv6 address (IPv4 as IPv4-mapped), port (4.3).
type Entry = (Hash, Ipv6Addr, u16);

fn peers(entries: &[Entry]) -> Vec<u8> {
    let mut body = Vec::with_capacity(50 * entries.len());
    for (id, ip, port) in entries {
        body.extend_from_slice(id);
        body.extend_from_slice(&ip.octets());
        body.extend_from_slice(&port.to_be_bytes());
    }
    frame(PEERS, &body)
}

fn parse_peers(body: &[u8]) -> Vec<Entry> {
    body.chunks(50)
        .map(|e| {
            let ip: [u8; 16] = e[32..48].try_into().unwrap();
            (e[..32].try_into().unwrap(), Ipv6Addr::from(ip), u16::from_be_bytes([e[48], e[49]]))
        })
        .collect()
}

fn dont_have(h: &Hash) -> Vec<u8> {
    frame(DONT_HAVE, h)
}

fn bitfield(root: &Hash, first: u32, bits: &[u8]) -> Vec<u8> {
    frame(BITFIELD, &[&root[..], &first.to_be_bytes(), bits].concat())
}

fn have(root: &Hash, index: u32) -> Vec<u8> {
    frame(HAVE, &[&root[..], &index.to_be_bytes()].concat())
}

fn reject(code: u8, retry_after: u16, reason: &str) -> Vec<u8> {
    frame(REJECT, &[&[code][..], &retry_after.to_be_bytes(), reason.as_bytes()].concat())
}

fn cancel(h: &Hash) -> Vec<u8> {
    frame(CANCEL, h)
}

/// Bits for `pieces` pieces with `set(i)` deciding each, spare bits zero (4.6, 5.7).
fn bits_where(pieces: usize, set: impl Fn(usize) -> bool) -> Vec<u8> {
    let mut bits = vec![0u8; pieces.div_ceil(8)];
    for i in (0..pieces).filter(|&i| set(i)) {
        bits[i / 8] |= 0x80 >> (i % 8);
    }
    bits
}

fn full_bits(pieces: usize) -> Vec<u8> {
    bits_where(pieces, |_| true)
}

// ---------------------------------------------------------------------------------------------
// Frames: decoding and the codec rules
// ---------------------------------------------------------------------------------------------

/// One frame of the frame stream; `ty` is `None` for a keep-alive. `msgs` are the plaintext
/// lengths of the transport messages it arrived in (empty when decoded from bytes).
struct Frame {
    ty: Option<u8>,
    body: Vec<u8>,
    msgs: Vec<usize>,
}

impl Frame {
    /// The frame as it was in the frame stream, length prefix included.
    fn wire(&self) -> Vec<u8> {
        match self.ty {
            None => keepalive(),
            Some(ty) => frame(ty, &self.body),
        }
    }

    fn is(&self, ty: u8) -> bool {
        self.ty == Some(ty)
    }

    /// Hash field of ASK, GIVE, DONT_HAVE, CANCEL; root of BITFIELD and HAVE.
    fn hash(&self) -> Hash {
        self.body[..32].try_into().unwrap()
    }

    fn first(&self) -> u32 {
        u32::from_be_bytes(self.body[32..36].try_into().unwrap())
    }

    fn retry_after(&self) -> u16 {
        u16::from_be_bytes([self.body[1], self.body[2]])
    }

    fn reason(&self) -> String {
        String::from_utf8_lossy(&self.body[3..]).into_owned()
    }

    fn show(&self) -> String {
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
fn codec_check(ty: Option<u8>, body: &[u8]) -> Result<(), &'static str> {
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
fn decode_frames(mut bytes: &[u8]) -> Result<Vec<Frame>, &'static str> {
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
fn check_rules(f: &Frame) {
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
struct Manifest {
    name: String,
    size: u64,
    lists: Vec<Hash>,
}

fn parse_manifest(b: &[u8]) -> Manifest {
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
fn make_manifest(name: &str, data: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
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

// ---------------------------------------------------------------------------------------------
// Transport messages (2.4) and connections
// ---------------------------------------------------------------------------------------------

fn tcp(port: u16) -> TcpStream {
    let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect to the node");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Fills `buf`; `Ok(false)` if the stream ended before its first byte.
fn read_or_eof(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::Error::new(ErrorKind::UnexpectedEof, "the stream ended inside a unit")),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads one Noise message (u16 length, bytes); `None` at EOF before it.
fn read_noise(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0; 2];
    if !read_or_eof(r, &mut len)? {
        return Ok(None);
    }
    let mut m = vec![0; u16::from_be_bytes(len) as usize];
    r.read_exact(&mut m)?;
    Ok(Some(m))
}

/// Everything the peer writes until it closes (a reset counts as a close).
fn read_to_close(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut all = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(all),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_reset(&e) => return Ok(all),
            Err(e) => return Err(format!("{e} after {} bytes: {}", all.len(), hex(&all[..all.len().min(64)]))),
        }
    }
}

/// The receiving half of a connection: opens transport messages, cuts the frame stream.
struct Rx {
    s: BufReader<TcpStream>,
    gcm: Gcm,
    /// Plaintext received but not yet part of a returned frame.
    buf: Vec<u8>,
    /// The plaintext size pex cuts its frames into (2.4): 65,519, less under an upload limit.
    cut: usize,
}

impl Rx {
    /// The plaintext of the next transport message; `None` at EOF between messages.
    fn read_msg(&mut self) -> io::Result<Option<Vec<u8>>> {
        let Some(m) = read_noise(&mut self.s)? else { return Ok(None) };
        if m.len() < TAG {
            return Err(bad(format!("a transport message with n = {} < 16", m.len())));
        }
        let n = self.gcm.n;
        let p = self.gcm.open(&[], &m).ok_or_else(|| bad(format!("transport message {n}: the tag does not verify")))?;
        Ok(Some(p))
    }

    /// The next frame; `None` at EOF between frames. Checks what 2.4 says pex does as a sender:
    /// every frame starts a new message, is cut into messages of `cut` bytes (the last one
    /// shorter), no message is empty and none holds two frames.
    fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        assert!(self.buf.is_empty());
        let mut msgs = Vec::new();
        loop {
            if self.buf.len() >= 4 {
                let l = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if l > MAX_L {
                    return Err(bad(format!("the node announced a frame of L = {l} > {MAX_L}")));
                }
                if self.buf.len() >= 4 + l {
                    if self.buf.len() > 4 + l {
                        return Err(bad(format!(
                            "two frames in one transport message (2.4 says pex never does that): {}",
                            hex(&self.buf[..self.buf.len().min(80)])
                        )));
                    }
                    let (last, whole) = msgs.split_last().unwrap();
                    if *last > self.cut || whole.iter().any(|&m| m != self.cut) {
                        return Err(bad(format!(
                            "a frame of {} bytes cut into messages of {msgs:?} plaintext bytes, not {} (2.4)",
                            4 + l,
                            self.cut
                        )));
                    }
                    let f = if l == 0 {
                        Frame { ty: None, body: Vec::new(), msgs }
                    } else {
                        Frame { ty: Some(self.buf[4]), body: self.buf[5..].to_vec(), msgs }
                    };
                    self.buf.clear();
                    return Ok(Some(f));
                }
            }
            match self.read_msg()? {
                None if msgs.is_empty() => return Ok(None),
                None => return Err(io::Error::new(ErrorKind::UnexpectedEof, "the stream ended inside a frame")),
                Some(p) if p.is_empty() => return Err(bad("an empty transport message (2.4: pex never sends one)")),
                Some(p) => {
                    msgs.push(p.len());
                    self.buf.extend_from_slice(&p);
                }
            }
        }
    }

    fn set_timeout(&self, t: Duration) {
        self.s.get_ref().set_read_timeout(Some(t.max(Duration::from_millis(1)))).unwrap();
    }
}

/// The sending half of a connection: seals plaintext into transport messages.
struct Tx {
    s: TcpStream,
    gcm: Gcm,
}

impl Tx {
    /// One transport message with `plain` (0 to 65,519 bytes), length prefix included.
    fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        assert!(plain.len() <= MAX_PLAIN);
        lp(&self.gcm.seal(&[], plain))
    }

    /// `bytes` of frame stream, cut into messages of at most `cut` plaintext bytes.
    fn seal_cut(&mut self, bytes: &[u8], cut: usize) -> Vec<u8> {
        bytes.chunks(cut).flat_map(|c| self.seal(c)).collect()
    }

    fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let wire = self.seal_cut(bytes, MAX_PLAIN);
        self.s.write_all(&wire)
    }

    fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).unwrap_or_else(|e| panic!("sending {}: {e}", hex(&bytes[..bytes.len().min(64)])));
    }

    fn send_raw(&mut self, wire: &[u8]) {
        self.s.write_all(wire).unwrap_or_else(|e| panic!("sending {}: {e}", hex(&wire[..wire.len().min(64)])));
    }
}

/// A connection after a successful Noise handshake.
struct Conn {
    rx: Rx,
    tx: Tx,
    /// The handshake hash (2.3).
    hh: Hash,
    /// The peer's Noise static public key, learned in the handshake.
    remote_static: Hash,
}

/// Message 2 as the initiator reads it: 98 bytes starting `00 60`.
fn read_msg2(s: &mut TcpStream) -> Vec<u8> {
    let mut m = [0; 98];
    s.read_exact(&mut m).unwrap_or_else(|e| panic!("reading handshake message 2: {e}"));
    assert_eq!(m[..2], [0x00, 0x60], "handshake message 2 length (2.3)");
    m[2..].to_vec()
}

impl Conn {
    fn new(s: TcpStream, send: &Hash, recv: &Hash, hs: &Noise) -> Conn {
        let w = s.try_clone().unwrap();
        Conn {
            rx: Rx { s: BufReader::with_capacity(256 << 10, s), gcm: Gcm::new(recv), buf: Vec::new(), cut: MAX_PLAIN },
            tx: Tx { s: w, gcm: Gcm::new(send) },
            hh: hs.sym.h,
            remote_static: hs.rs,
        }
    }

    /// Dials the node on [::1]:`port` and runs the handshake as initiator (2.3).
    fn dial(port: u16) -> Conn {
        let mut s = tcp(port);
        let mut hs = Noise::random();
        s.write_all(&lp(&hs.write1())).expect("writing handshake message 1");
        let m2 = read_msg2(&mut s);
        hs.read2(&m2).expect("handshake message 2");
        s.write_all(&lp(&hs.write3())).expect("writing handshake message 3");
        let (_, k1, k2) = hs.finish();
        Conn::new(s, &k1, &k2, &hs)
    }

    /// Runs the handshake as responder on a connection the node dialled.
    fn respond(mut s: TcpStream) -> Conn {
        let mut hs = Noise::random();
        let mut m1 = [0; 34];
        s.read_exact(&mut m1).unwrap_or_else(|e| panic!("reading handshake message 1: {e}"));
        assert_eq!(m1[..2], [0x00, 0x20], "handshake message 1 length (2.3)");
        hs.read1(&m1[2..]).expect("handshake message 1");
        s.write_all(&lp(&hs.write2())).expect("writing handshake message 2");
        let mut m3 = [0; 66];
        s.read_exact(&mut m3).unwrap_or_else(|e| panic!("reading handshake message 3: {e}"));
        assert_eq!(m3[..2], [0x00, 0x40], "handshake message 3 length (2.3)");
        hs.read3(&m3[2..]).expect("handshake message 3");
        let (_, k1, k2) = hs.finish();
        Conn::new(s, &k2, &k1, &hs)
    }

    fn send(&mut self, bytes: &[u8]) {
        self.tx.send(bytes)
    }

    fn try_recv(&mut self) -> io::Result<Option<Frame>> {
        let f = self.rx.read_frame()?;
        if let Some(f) = &f {
            check_rules(f);
        }
        Ok(f)
    }

    /// The next frame, keep-alives included; `None` at EOF.
    fn recv_raw(&mut self) -> Option<Frame> {
        self.try_recv().unwrap_or_else(|e| panic!("reading a frame: {e}"))
    }

    /// The next frame that is not a keep-alive; panics at EOF.
    fn recv(&mut self) -> Frame {
        loop {
            match self.recv_raw() {
                None => panic!("the node closed the connection"),
                Some(f) if f.ty.is_none() => continue,
                Some(f) => return f,
            }
        }
    }

    /// Checks a HELLO from the node (4.4): version 2, a signature by its node id over this
    /// connection's handshake hash, the listen port (if known) and flags 01 exactly when it listens.
    fn check_hello(&self, f: &Frame, port: Option<u16>) -> Result<Hello, String> {
        if !f.is(HELLO) {
            return Err(format!("expected HELLO, got {}", f.show()));
        }
        if f.wire().len() != 108 || f.body[..4] != *b"PEX\x02" {
            return Err(format!("not a v2 HELLO: {}", f.show()));
        }
        let h = parse_hello(&f.body);
        if !hello_signature_ok(&h.id, &self.hh, &h.sig) {
            return Err(format!("the HELLO signature does not verify for this connection: {}", f.show()));
        }
        if port.is_some_and(|p| p != h.port) {
            return Err(format!("HELLO listen port {} instead of {port:?}: {}", h.port, f.show()));
        }
        if h.flags != u8::from(h.port != 0) {
            return Err(format!("HELLO flags {:02x} with listen port {} (4.4): {}", h.flags, h.port, f.show()));
        }
        Ok(h)
    }

    fn expect_hello(&mut self, port: Option<u16>) -> Hello {
        let f = self.recv();
        self.check_hello(&f, port).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Expects PEERS (4.3); returns its entries.
    fn expect_peers(&mut self) -> Vec<Entry> {
        let f = self.recv();
        assert!(f.is(PEERS), "expected PEERS, got {}", f.show());
        parse_peers(&f.body)
    }

    /// Sends `me`'s HELLO (not listening), expects the node's HELLO then PEERS.
    fn handshake(&mut self, me: &Identity, port: Option<u16>) -> (Hello, Vec<Entry>) {
        let hello = me.hello(&self.hh, 0, 0);
        self.send(&hello);
        let h = self.expect_hello(port);
        (h, self.expect_peers())
    }

    /// Expects REJECT with `code` as the next frame, then the close; returns the REJECT.
    fn expect_reject_then_close(&mut self, code: u8, context: &str) -> Frame {
        let f = self.recv();
        assert!(f.is(REJECT), "{context}: expected REJECT({code}), got {}", f.show());
        assert_eq!(f.body[0], code, "{context}: REJECT code: {}", f.show());
        self.expect_close(context);
        f
    }

    /// Reads until the node closes; any frame (keep-alives included) is an error.
    fn expect_close(&mut self, context: &str) {
        match self.try_recv() {
            Ok(None) => {}
            Err(e) if is_reset(&e) => {}
            Ok(Some(f)) => panic!("{context}: expected the connection to close, got {}", f.show()),
            Err(e) => panic!("{context}: expected the connection to close: {e}"),
        }
    }

    /// ASKs for `h` and expects a GIVE of exactly `data`.
    fn fetch_expect(&mut self, h: &Hash, data: &[u8]) {
        self.try_fetch(h, data).unwrap_or_else(|e| panic!("{e}"));
    }

    /// ASKs for `h` and expects a GIVE of exactly `data` (keep-alives aside) as the next frame.
    fn try_fetch(&mut self, h: &Hash, data: &[u8]) -> Result<(), String> {
        self.tx.try_send(&ask(h)).map_err(|e| format!("ASK {}: {e}", hex(h)))?;
        let f = loop {
            match self.try_recv() {
                Ok(Some(f)) if f.ty.is_none() => {}
                Ok(Some(f)) => break f,
                Ok(None) => return Err(format!("ASK {}: the node closed the connection", hex(h))),
                Err(e) => return Err(format!("ASK {}: no answer: {e}", hex(h))),
            }
        };
        if !(f.is(GIVE) && f.hash() == *h) {
            return Err(format!("ASK {}: expected its GIVE, got {}", hex(h), f.show()));
        }
        if f.body[32..] != *data || sha(&f.body[32..]) != *h {
            return Err(format!("GIVE {} carries other data", hex(h)));
        }
        Ok(())
    }

    /// ASKs for a random hash and expects its DONT_HAVE: the connection is alive and in order.
    fn probe(&mut self, rng: &mut Rng) {
        let h = rng.hash();
        self.send(&ask(&h));
        let f = self.recv();
        assert_eq!(f.wire(), dont_have(&h), "probe ASK: got {}", f.show());
    }

    /// Reads until `expected` arrives (keep-alives aside) or `deadline` passes.
    fn wait_for(&mut self, expected: &[u8], start: Instant, deadline: Duration) -> Result<Duration, String> {
        let result = loop {
            self.rx.set_timeout(deadline.saturating_sub(start.elapsed()));
            match self.try_recv() {
                Ok(Some(f)) if f.ty.is_none() => {}
                Ok(Some(f)) if f.wire() == expected => break Ok(start.elapsed()),
                Ok(Some(f)) => break Err(format!("expected {}, got {}", hex(expected), f.show())),
                Ok(None) => break Err("the node closed the connection".to_owned()),
                Err(e) if is_timeout(&e) => break Err(format!("no answer {:?} after the start", start.elapsed())),
                Err(e) => break Err(e.to_string()),
            }
        };
        self.rx.set_timeout(IO_TIMEOUT);
        result
    }
}

/// Everything the node sends until it closes, one token per frame ("HELLO" for a valid HELLO,
/// "PEERS", "REJECT(3)", …), then "EOF" (a reset counts as a close too).
fn transcript(c: &mut Conn, port: Option<u16>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    loop {
        match c.try_recv() {
            Ok(Some(f)) => out.push(match f.ty {
                None => "keep-alive".to_owned(),
                Some(HELLO) => match c.check_hello(&f, port) {
                    Ok(_) => "HELLO".to_owned(),
                    Err(e) => e,
                },
                Some(PEERS) => "PEERS".to_owned(),
                Some(REJECT) => format!("REJECT({})", f.body[0]),
                _ => f.show(),
            }),
            Ok(None) => break out.push("EOF".to_owned()),
            Err(e) if is_reset(&e) => break out.push("EOF".to_owned()),
            Err(e) => break out.push(format!("error: {e}")),
        }
    }
    out
}

/// A listening socket on [::1] for the node to dial (the node as initiator).
struct Listener {
    l: TcpListener,
    port: u16,
}

impl Listener {
    fn new() -> Listener {
        Listener::on("[::1]:0")
    }

    fn on(addr: &str) -> Listener {
        let l = TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        Listener { l, port }
    }

    /// The next connection, polled for until `within` has passed.
    fn accept(&self, within: Duration) -> TcpStream {
        let deadline = Instant::now() + within;
        loop {
            match self.l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                    s.set_nodelay(true).unwrap();
                    return s;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "the node did not dial [::1]:{} within {within:?}", self.port);
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }

    /// The node's next dial, handshake done as responder, HELLOs exchanged (ours as `me`,
    /// listening here, shareable) and PEERS read; returns the node's HELLO and PEERS.
    fn accept_peer(&self, me: &Identity, within: Duration) -> (Conn, Hello, Vec<Entry>) {
        let mut c = Conn::respond(self.accept(within));
        let hello = me.hello(&c.hh, self.port, 1);
        c.send(&hello);
        let h = c.expect_hello(None);
        let p = c.expect_peers();
        c.send(&peers(&[]));
        (c, h, p)
    }
}

// ---------------------------------------------------------------------------------------------
// The node under test
// ---------------------------------------------------------------------------------------------

/// A running `pex seed`; killed and reaped on drop.
struct Node {
    child: super::Proc,
    port: u16,
    root: Hash,
    /// The node id in the printed fetch command (`--peer NODEID@[::1]:PORT`, 5.1).
    id: Hash,
    dir: tempfile::TempDir,
}

/// Writes an identity file (2.2): the 32-byte secret, mode 0600.
fn write_identity(data_dir: &Path, secret: &[u8], mode: u32) {
    use std::os::unix::fs::OpenOptionsExt;
    fs::create_dir_all(data_dir).unwrap();
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(data_dir.join("identity")).unwrap();
    f.write_all(secret).unwrap();
}

impl Node {
    fn start(file: &Path, extra: &[&str]) -> Node {
        Node::start_as(file, extra, None)
    }

    /// Starts `pex seed FILE` on [::1]; with `identity`, its data directory holds that secret.
    fn start_as(file: &Path, extra: &[&str], identity: Option<&Hash>) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if let Some(secret) = identity {
            write_identity(&data, secret, 0o600);
        }
        let log = fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut child = super::Proc::spawn(
            Command::new(PEX)
                .arg("seed")
                .arg(file)
                .args(["--listen", "[::1]:0", "--data-dir"])
                .arg(&data)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log),
        );
        let stdout = child.stdout.take().unwrap();
        let mut node = Node { child, port: 0, root: [0; 32], id: [0; 32], dir };
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line); // keep draining even when nobody listens
            }
        });
        let root = lines.recv_timeout(STARTUP).expect("seeder printed no root");
        assert!(root.len() == 64 && root.bytes().all(|c| c.is_ascii_hexdigit()), "root line {root:?}");
        node.root = h32(&root);
        let hint = lines.recv_timeout(STARTUP).expect("seeder printed no fetch command");
        let peer = hint.strip_prefix(&format!("pex fetch {root} --peer ")).unwrap_or_else(|| panic!("line {hint:?}"));
        let (id, addr) = peer.split_once('@').unwrap_or_else(|| panic!("no NODEID@ in {hint:?}"));
        node.id = h32(id);
        let port = addr.strip_prefix("[::1]:").unwrap_or_else(|| panic!("address in {hint:?}"));
        node.port = port.parse().unwrap_or_else(|_| panic!("port in {hint:?}"));
        node
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A new connection, the Noise handshake done, nothing else sent.
    fn dial(&self) -> Conn {
        Conn::dial(self.port)
    }

    /// A connection that has completed the set-up (5.1) as `me`: HELLO both ways, PEERS read.
    fn peer_as(&self, me: &Identity) -> Conn {
        let mut c = self.dial();
        let (h, _) = c.handshake(me, Some(self.port));
        assert_eq!(h.id, self.id, "the node's HELLO proves another id than the one it printed");
        c
    }

    fn peer(&self) -> Conn {
        self.peer_as(&Identity::random())
    }

    /// Like [`Node::peer_as`] for an identity whose previous connection just closed: REJECT(1)
    /// is retried until the node has seen that close.
    fn peer_again_as(&self, me: &Identity) -> Conn {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let mut c = self.dial();
            c.send(&me.hello(&c.hh, 0, 0));
            c.expect_hello(Some(self.port));
            let f = c.recv();
            if f.is(PEERS) {
                return c;
            }
            assert!(f.is(REJECT) && f.body[0] == DUPLICATE, "reconnecting: {}", f.show());
            assert!(Instant::now() < deadline, "the node still holds the closed connection");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident set size of the node in KiB, from /proc.
    fn rss_kib(&self) -> u64 {
        try_rss_kib(self.child.id()).expect("the node's /proc/<pid>/status has no VmRSS")
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.child.kill(); // before reading its log; Proc's own drop would do it too late
        if thread::panicking() {
            print_log_tail("node", &self.dir.path().join("stderr.log"));
        }
    }
}

fn print_log_tail(what: &str, path: &Path) {
    let log = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    eprintln!("--- {what} stderr (last lines) ---\n{}", lines[lines.len().saturating_sub(40)..].join("\n"));
}

/// VmRSS in KiB from /proc/<pid>/status; `None` once the process is gone.
fn try_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// 0. The encoder, decoder and Noise by hand against the specification's examples and fixtures
// ---------------------------------------------------------------------------------------------

fn fixture(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
    serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap()
}

fn vector_hex(file: &serde_json::Value, name: &str) -> String {
    let v = file["vectors"].as_array().unwrap().iter().find(|v| v["name"] == name);
    v.unwrap_or_else(|| panic!("no vector {name}"))["hex"].as_str().unwrap().to_owned()
}

fn ipv4(s: &str) -> Ipv6Addr {
    s.parse::<Ipv4Addr>().unwrap().to_ipv6_mapped()
}

fn id_of(secret_byte: u8) -> Hash {
    Identity::from_secret(&[secret_byte; 32]).id()
}

#[test]
fn encoder_and_decoder_reproduce_the_spec_vectors() {
    let v2 = fixture("v2-vectors.json");
    let v1 = fixture("protocol-vectors.json");
    let h_pex = sha(b"pex");
    assert_eq!(hex(&h_pex), "262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a");

    // The initiator's HELLO of section 8 (its signature is checked in the worked example test).
    let hello_sig: [u8; 64] = unhex(concat!(
        "b27901c63a92208f5780e5420b7672dab91c65fb1fe98768500c3f97228d496b",
        "0d4688ecebe42b36575796fdce0fa252e10c1c7f7742010dfaeb8c5a5091bd09"
    ))
    .try_into()
    .unwrap();
    let init_id = id_of(1);
    assert_eq!(hex(&init_id), "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c");
    let fifty: Vec<Entry> = (0..50u8)
        .map(|i| {
            let ip = if i % 2 == 0 {
                ipv4(&format!("10.0.0.{i}"))
            } else {
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16)
            };
            (sha(&[b"peer", &[i][..]].concat()), ip, 9000 + i as u16)
        })
        .collect();

    // (name, our encoding, the hex quoted in docs/PROTOCOL.md, or "" where the spec quotes none)
    let valid: Vec<(&str, Vec<u8>, &str)> = vec![
        ("hello", hello_frame(&init_id, 9001, 1, &hello_sig), "0000006803504558028a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c232901b27901c63a92208f5780e5420b7672dab91c65fb1fe98768500c3f97228d496b0d4688ecebe42b36575796fdce0fa252e10c1c7f7742010dfaeb8c5a5091bd09"),
        ("hello_not_listening", hello_frame(&init_id, 0, 0, &hello_sig), "0000006803504558028a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c000000b27901c63a92208f5780e5420b7672dab91c65fb1fe98768500c3f97228d496b0d4688ecebe42b36575796fdce0fa252e10c1c7f7742010dfaeb8c5a5091bd09"),
        ("hello_other_flags", hello_frame(&init_id, 9001, 0xfe, &hello_sig), ""),
        ("peers_empty", peers(&[]), "0000000102"),
        ("peers_one", peers(&[(id_of(3), ipv4("192.0.2.7"), 9000)]), "0000003302ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d100000000000000000000ffffc00002072328"),
        (
            "peers_two",
            peers(&[(id_of(4), Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9000), (id_of(5), ipv4("127.0.0.1"), 6881)]),
            "0000006502ca93ac1705187071d67b83c7ff0efe8108e8ec4530575d7726879333dbdabe7c20010db800000000000000000000000123286e7a1cdd29b0b78fd13af4c5598feff4ef2a97166e3ca6f2e4fbfccd80505bf100000000000000000000ffff7f0000011ae1",
        ),
        ("peers_fifty", peers(&fifty), ""),
        ("bitfield", bitfield(&h_pex, 0, &bits_where(10, |i| [0, 2, 9].contains(&i))), "0000002705262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a00000000a040"),
        ("bitfield_empty", bitfield(&h_pex, 0, &[]), ""),
        ("bitfield_range", bitfield(&h_pex, 8_388_576, &[0x80, 0x00, 0x01]), "0000002805262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a007fffe0800001"),
        ("bitfield_last", bitfield(&h_pex, 4_294_967_288, &[0xff]), "0000002605262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932afffffff8ff"),
        ("reject_full", reject(2, 5, "peer limit reached"), "000000160702000570656572206c696d69742072656163686564"),
        ("reject_shutdown", reject(6, 10, "shutting down"), "000000110706000a7368757474696e6720646f776e"),
        ("reject_empty", reject(1, 0, ""), "0000000407010000"),
    ];
    for (name, ours, quoted) in &valid {
        let fixture = vector_hex(&v2, name);
        assert_eq!(hex(ours), fixture, "v2 vector {name}: our encoding");
        if !quoted.is_empty() {
            assert_eq!(*quoted, fixture, "v2 vector {name}: the spec quotes other bytes than the fixture");
        }
        let f = decode_frames(ours).unwrap_or_else(|e| panic!("v2 vector {name}: our decoder says {e}"));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].wire(), *ours, "v2 vector {name} decoded and re-encoded");
    }
    // Every valid v2 vector is covered above.
    let valid_names: HashSet<&str> = valid.iter().map(|v| v.0).collect();
    for v in v2["vectors"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        if v["valid"] == true {
            assert!(valid_names.contains(name), "v2 vector {name} is not reproduced by this test");
        }
    }

    // The invalid vectors: our encoding of what each note describes, and our decoder's verdict.
    let hello_body = &unhex(&vector_hex(&v2, "hello"))[5..];
    let invalid: Vec<(&str, Vec<u8>, &str)> = vec![
        ("hello_102", frame(HELLO, &hello_body[..102]), "BadLength"),
        ("hello_104", frame(HELLO, &[hello_body, &[0]].concat()), "BadLength"),
        ("hello_v1", frame(HELLO, &[b"PEX\x01", &init_id[..], &[0x23, 0x28]].concat()), "BadLength"),
        ("hello_version_1", frame(HELLO, &[b"PEX\x01", &hello_body[4..]].concat()), "BadVersion"),
        ("hello_bad_magic", frame(HELLO, &[b"PEY\x02", &hello_body[4..]].concat()), "BadMagic"),
        ("peers_49", frame(PEERS, &unhex(&vector_hex(&v2, "peers_fifty"))[5..54]), "BadLength"),
        (
            "peers_51_entries",
            frame(
                PEERS,
                &[&unhex(&vector_hex(&v2, "peers_fifty"))[5..], &unhex(&vector_hex(&v2, "peers_fifty"))[5..55]]
                    .concat(),
            ),
            "BadLength",
        ),
        ("peers_v1_entry", frame(PEERS, &[&Ipv6Addr::LOCALHOST.octets()[..], &[0x23, 0x28]].concat()), "BadLength"),
        ("bitfield_35", frame(BITFIELD, &[&h_pex[..], &[0, 0, 0]].concat()), "BadLength"),
        ("bitfield_past_end", bitfield(&h_pex, 4_294_967_289, &[0x80]), "BitfieldRange"),
        ("reject_2", frame(REJECT, &[2, 0]), "BadLength"),
        ("reject_reason_201", reject(3, 0, &"x".repeat(201)), "BadLength"),
        ("reject_not_utf8", frame(REJECT, &[3, 0, 0, 0xff]), "ReasonNotUtf8"),
    ];
    let mut invalid_names = HashSet::new();
    for (name, ours, error) in &invalid {
        invalid_names.insert(*name);
        let v = v2["vectors"].as_array().unwrap().iter().find(|v| v["name"] == *name).unwrap();
        assert_eq!(v["valid"], false, "{name}");
        assert_eq!(v["error"], *error, "{name}: the fixture's error");
        let fixture = v["hex"].as_str().unwrap();
        // The content of peers_49 and peers_51_entries is not described beyond their lengths.
        if !["peers_49", "peers_51_entries", "reject_reason_201"].contains(name) {
            assert_eq!(hex(ours), fixture, "invalid v2 vector {name}: our encoding of its note");
        }
        assert_eq!(decode_frames(ours).err(), Some(*error), "invalid v2 vector {name}, ours");
        assert_eq!(decode_frames(&unhex(fixture)).err(), Some(*error), "invalid v2 vector {name}, fixture");
    }
    for v in v2["vectors"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        if v["valid"] == false {
            assert!(invalid_names.contains(name), "invalid v2 vector {name} is not checked by this test");
        }
    }
    // Section 3 quotes these (v1 vectors) as invalid in v2 too.
    for (hex_, error) in [
        ("0010002201", "TooLong"),
        ("0000002000262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab27184979893", "BadLength"),
        ("0000002306262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a0001", "BadLength"),
        ("0000002703504558018a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c2328", "BadLength"),
        ("0000003202610e1488aaeb77f824a0d4d97841d33c6b7e68864f3cba7e5a084ce8d8cdaf6500000000000000000000ffff0a00000023", "BadLength"),
        ("0000001302000000000000000000000000000000012328", "BadLength"),
        ("0000002405262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a000000", "BadLength"),
        ("0000002605262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932afffffff980", "BitfieldRange"),
        ("00000003070200", "BadLength"),
        ("0000000507030000ff", "ReasonNotUtf8"),
    ] {
        assert_eq!(decode_frames(&unhex(hex_)).err(), Some(error), "section 3 invalid example {hex_}");
    }

    // The frame types version 2 did not change: the v1 vectors, and the v1 layouts of appendix A
    // for the four that changed.
    let unchanged: Vec<(&str, Vec<u8>)> = vec![
        ("keepalive", keepalive()),
        ("ask", ask(&h_pex)),
        ("give", give(b"hello, swarm\n")),
        ("give_empty", give(b"")),
        ("peers_empty", peers(&[])),
        ("dont_have", dont_have(&h_pex)),
        ("have", have(&h_pex, 70000)),
        ("cancel", cancel(&h_pex)),
        ("unknown_type", frame(200, b"future")),
    ];
    for (name, ours) in &unchanged {
        let fixture = vector_hex(&v1, name);
        assert_eq!(hex(ours), fixture, "v1 vector {name}");
        let f = decode_frames(ours).unwrap_or_else(|e| panic!("v1 vector {name}: {e}"));
        assert_eq!(f[0].wire(), *ours);
    }
    let id: Hash = std::array::from_fn(|i| i as u8);
    let v1_layouts: Vec<(&str, Vec<u8>)> = vec![
        ("hello", frame(HELLO, &[b"PEX\x01", &id[..], &9000u16.to_be_bytes()].concat())),
        (
            "peers_two",
            frame(
                PEERS,
                &[&Ipv6Addr::LOCALHOST.octets()[..], &[0x23, 0x28], &ipv4("127.0.0.1").octets(), &[0x1a, 0xe1]]
                    .concat(),
            ),
        ),
        ("bitfield", frame(BITFIELD, &[&h_pex[..], &[0xa0, 0x40]].concat())),
        ("reject_full", frame(REJECT, &[&[2u8][..], b"peer limit reached"].concat())),
    ];
    for (name, ours) in &v1_layouts {
        assert_eq!(hex(ours), vector_hex(&v1, name), "v1 vector {name} (appendix A layout)");
    }
    // Appendix A: a v1 REJECT with a reason of 2 bytes or more decodes as a v2 REJECT.
    let f = decode_frames(&unhex(&vector_hex(&v1, "reject_full"))).unwrap();
    assert_eq!((f[0].body[0], f[0].retry_after(), f[0].reason()), (2, 0x7065, "er limit reached".to_owned()));

    // 2.5: the plaintext v1 REJECT(3) a v2 node answers a v1 dialler with.
    let reason = "this node speaks pex/2 (Noise_XX_25519_AESGCM_SHA256); upgrade pex";
    let v1_answer = frame(REJECT, &[&[3u8][..], reason.as_bytes()].concat());
    assert_eq!(v1_answer.len(), 72);
    assert_eq!(hex(&v1_answer), v2["v1_answer"]["hex"].as_str().unwrap());
    assert_eq!(
        hex(&v1_answer),
        "00000044070374686973206e6f646520737065616b73207065782f3220284e6f6973655f58585f32353531395f41455347434d5f534841323536293b207570677261646520706578"
    );

    // Section 6.1: the manifest of hello.txt, the fixture files and the frames of its download.
    let content = b"hello, swarm\n";
    let (manifest, lists) = make_manifest("hello.txt", content);
    assert_eq!(
        hex(&manifest),
        "5045584d0100100000000000000000000d000968656c6c6f2e747874000000017fb72fd845b3b37be652e6155323f0e2d9437c671b08cba3850862cf152851d8"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    assert_eq!(fs::read(dir.join("hello.manifest")).unwrap(), manifest, "fixtures/hello.manifest");
    assert_eq!(fs::read(dir.join("hello.list")).unwrap(), lists[0], "fixtures/hello.list");
    assert_eq!(hex(&sha(content)), "3a2ec73c897660e1919f07a073a741d8e9ba378834fa3b4947d84cb52e03ca76");
    assert_eq!(hex(&sha(&lists[0])), "7fb72fd845b3b37be652e6155323f0e2d9437c671b08cba3850862cf152851d8");
    let root = sha(&manifest);
    assert_eq!(hex(&root), "d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de4");
    let m = parse_manifest(&manifest);
    assert_eq!((m.name.as_str(), m.size, m.lists.len()), ("hello.txt", 13, 1));
    for (name, ours, quoted) in [
        ("ASK root", ask(&root), "0000002100d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de4"),
        ("GIVE manifest", give(&manifest), "0000006101d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de45045584d0100100000000000000000000d000968656c6c6f2e747874000000017fb72fd845b3b37be652e6155323f0e2d9437c671b08cba3850862cf152851d8"),
        ("GIVE list", give(&lists[0]), "00000041017fb72fd845b3b37be652e6155323f0e2d9437c671b08cba3850862cf152851d83a2ec73c897660e1919f07a073a741d8e9ba378834fa3b4947d84cb52e03ca76"),
        ("BITFIELD (all)", bitfield(&root, 0, &full_bits(1)), "0000002605d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de40000000080"),
        ("HAVE 0", have(&root, 0), "0000002506d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de400000000"),
    ] {
        assert_eq!(hex(&ours), quoted, "6.1 {name}");
    }
    assert_eq!(full_bits(10), [0xff, 0xc0]);
}

/// Section 8 and 2.4 from the fixed keys: the handshake by hand, the HELLO signatures, the
/// transport messages, each byte for byte; then the same handshake through `snow`.
#[test]
fn worked_example_connection_is_reproduced_from_its_keys() {
    let fx = fixture("v2-connection.json");
    let s = |v: &serde_json::Value| -> Vec<u8> { unhex(v.as_str().unwrap()) };
    let k = |v: &serde_json::Value| -> Hash { s(v).try_into().unwrap() };
    assert_eq!(fx["protocol_name"].as_str().unwrap().as_bytes(), PROTOCOL_NAME);
    assert_eq!(s(&fx["prologue"]), PROLOGUE);
    assert_eq!(hex(PROLOGUE), "7065782f32");
    assert_eq!(hex(HELLO_CONTEXT), "7065782f322068656c6c6f");

    // Keys (the table of section 8).
    let (ini, res) = (&fx["initiator"], &fx["responder"]);
    for (side, id_hex) in [
        (ini, "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"),
        (res, "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394"),
    ] {
        let me = Identity::from_secret(&k(&side["identity_secret"]));
        assert_eq!(hex(&me.id()), id_hex);
        assert_eq!(me.id(), k(&side["node_id"]));
        assert_eq!(x25519_public(&k(&side["static_secret"])), k(&side["static_public"]));
        assert_eq!(x25519_public(&k(&side["ephemeral_secret"])), k(&side["ephemeral_public"]));
    }
    assert_eq!(hex(&x25519_public(&[0x11; 32])), "7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13");
    assert_eq!(hex(&x25519_public(&[0x12; 32])), "052a50773ac8d91773f2dc9662e12f0defe915e415b8a1c8e20a5a3d6ab2b843");
    assert_eq!(hex(&x25519_public(&[0x21; 32])), "7d34a4815fa6b982535e60af3bd9b49556816080f1641ff81d2b7c8ae8268a44");
    assert_eq!(hex(&x25519_public(&[0x22; 32])), "0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20");

    // The handshake, both sides by hand.
    let mut i = Noise::new(PROLOGUE, [0x11; 32], [0x21; 32]);
    let mut r = Noise::new(PROLOGUE, [0x12; 32], [0x22; 32]);
    let m1 = lp(&i.write1());
    r.read1(&m1[2..]).unwrap();
    let m2 = lp(&r.write2());
    i.read2(&m2[2..]).unwrap();
    let m3 = lp(&i.write3());
    r.read3(&m3[2..]).unwrap();
    assert_eq!(i.rs, x25519_public(&[0x12; 32]), "the initiator learned the responder's static key");
    assert_eq!(r.rs, x25519_public(&[0x11; 32]), "the responder learned the initiator's static key");
    let spec_handshake = [
        "00207d34a4815fa6b982535e60af3bd9b49556816080f1641ff81d2b7c8ae8268a44",
        "00600faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20d09d69a7cccb18cb17825eb989774e4cafdf6cad04fdc2c899f80184eb08a47f7c6a72987ed66d35d0eb6b6c40e6d649795160f5924ef7eeb30750e4530353ea",
        "00409e3dbdca364b15045bd673dc69d03bf39cd7215a2401b7736811239cca54b21ba2f3d05014aff855b1c96b803392bb0d465fb29a16a5fcdab7a44de7b428557e",
    ];
    for (n, (ours, from)) in [(&m1, "initiator"), (&m2, "responder"), (&m3, "initiator")].into_iter().enumerate() {
        assert_eq!(hex(ours), spec_handshake[n], "handshake message {}", n + 1);
        assert_eq!(fx["handshake"][n]["from"], from);
        assert_eq!(hex(ours), fx["handshake"][n]["hex"].as_str().unwrap(), "handshake message {} (fixture)", n + 1);
    }
    assert_eq!((m1.len(), m2.len(), m3.len()), (34, 98, 66), "the table of 2.3");
    let (h, k1, k2) = i.finish();
    assert_eq!(r.finish(), (h, k1, k2), "both sides agree");
    assert_eq!(hex(&h), "9dad3a29cd469c868fccfb2ff1394f8e3449efcdd90fb0ebdcfce66f9548dfa4");
    assert_eq!(hex(&k1), "5a04d5f504c07612d35bbc99091a30afb6fcb8620aac352e372ca4425656d965");
    assert_eq!(hex(&k2), "c3ab8ab0730cc633531f60c0bbc0e515792e133f9049623855ae81303a206f2a");
    assert_eq!(h, k(&fx["handshake_hash"]));
    assert_eq!(k1, k(&fx["transport_keys"]["initiator_to_responder"]));
    assert_eq!(k2, k(&fx["transport_keys"]["responder_to_initiator"]));

    // The frames of the transport table, from our encoder, each sealed at its nonce.
    let init = Identity::from_secret(&[1; 32]);
    let resp = Identity::from_secret(&[2; 32]);
    let init_hello = init.hello(&h, 9001, 1);
    let resp_hello = resp.hello(&h, 9000, 1);
    assert!(hello_signature_ok(&init.id(), &h, &parse_hello(&init_hello[5..]).sig));
    assert!(hello_signature_ok(&resp.id(), &h, &parse_hello(&resp_hello[5..]).sig));
    assert!(!hello_signature_ok(&resp.id(), &h, &parse_hello(&init_hello[5..]).sig), "a HELLO proves only its signer");
    let (manifest, _) = make_manifest("hello.txt", b"hello, swarm\n");
    let root = sha(&manifest);
    let frames: Vec<(&str, u64, Vec<u8>)> = vec![
        ("initiator", 0, init_hello.clone()),
        ("responder", 0, resp_hello),
        ("responder", 1, peers(&[(id_of(3), ipv4("192.0.2.7"), 9000)])),
        ("initiator", 1, peers(&[])),
        ("initiator", 2, ask(&root)),
        ("responder", 2, give(&manifest)),
        ("initiator", 3, reject(6, 10, "shutting down")),
    ];
    let transport = fx["transport"].as_array().unwrap();
    assert_eq!(transport.len(), frames.len());
    let (mut from_i, mut from_r) = (Gcm::new(&k1), Gcm::new(&k2));
    let (mut open_i, mut open_r) = (Gcm::new(&k1), Gcm::new(&k2));
    for (n, ((from, nonce, plain), t)) in frames.iter().zip(transport).enumerate() {
        assert_eq!(t["from"], *from, "transport message {n}");
        assert_eq!(t["nonce"], *nonce, "transport message {n}");
        assert_eq!(hex(plain), t["plaintext"].as_str().unwrap(), "transport message {n}: plaintext");
        let (gcm, opener) = if *from == "initiator" { (&mut from_i, &mut open_i) } else { (&mut from_r, &mut open_r) };
        assert_eq!(gcm.n, *nonce, "transport message {n}: the nonce counts the sender's messages");
        let wire = lp(&gcm.seal(&[], plain));
        assert_eq!(hex(&wire), t["wire"].as_str().unwrap(), "transport message {n}: on the wire");
        assert_eq!(wire.len(), 2 + plain.len() + 16);
        assert_eq!(opener.open(&[], &wire[2..]).as_deref(), Some(&plain[..]), "transport message {n} opens");
    }
    // 2.4 quotes the first of them.
    assert_eq!(
        hex(&lp(&Gcm::new(&k1).seal(&[], &init_hello))),
        "007c530e938b8c8e8ec84cd72b9451af17f20bad61a85794b8409ee4b0e69e4fed56014d5f7384eb968fb584faf8fa5e50b176a3554bb82eb59eec60e2de66458746d0f1683aedbbbef6916ef0e050493602e67d5849fff429122ee5627edcf940cf85217db5b71bb167dda8aeb7011f08b0a838eb267c66ca28dc378902"
    );
    // Nonces do not carry over from the handshake, and the wrong key, nonce or a flipped bit fail.
    let sealed = Gcm::new(&k1).seal(&[], &init_hello);
    assert!(Gcm::new(&k2).open_at(0, &[], &sealed).is_none());
    assert!(Gcm::new(&k1).open_at(1, &[], &sealed).is_none());
    let mut flipped = sealed.clone();
    flipped[10] ^= 1;
    assert!(Gcm::new(&k1).open_at(0, &[], &flipped).is_none());

    // The same handshake through snow's state machine agrees with ours.
    let params: snow::params::NoiseParams = "Noise_XX_25519_AESGCM_SHA256".parse().unwrap();
    let mut si = snow::Builder::new(params.clone())
        .local_private_key(&[0x11; 32])
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&[0x21; 32])
        .prologue(PROLOGUE)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut sr = snow::Builder::new(params)
        .local_private_key(&[0x12; 32])
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&[0x22; 32])
        .prologue(PROLOGUE)
        .unwrap()
        .build_responder()
        .unwrap();
    let (mut buf, mut payload) = ([0u8; 128], [0u8; 128]);
    for (n, ours) in [&m1, &m2, &m3].into_iter().enumerate() {
        let (w, rd) = if n == 1 { (&mut sr, &mut si) } else { (&mut si, &mut sr) };
        let len = w.write_message(&[], &mut buf).unwrap();
        assert_eq!(hex(&buf[..len]), hex(&ours[2..]), "snow: handshake message {}", n + 1);
        assert_eq!(rd.read_message(&buf[..len], &mut payload).unwrap(), 0);
    }
    assert_eq!(si.get_handshake_hash(), h);
    assert_eq!(si.dangerously_get_raw_split(), (k1, k2));
    assert_eq!(sr.dangerously_get_raw_split(), (k1, k2));
}

// ---------------------------------------------------------------------------------------------
// 1. Connection set-up: handshake, identity, HELLO, PEERS (2.2, 2.3, 2.5, 4.4, 5.1, 5.2)
// ---------------------------------------------------------------------------------------------

fn small_file(dir: &Path, seed: u64) -> PathBuf {
    write_file(dir, "small.bin", 100_000, seed).0
}

#[test]
fn handshake_then_signed_hello_then_peers() {
    let dir = tempfile::tempdir().unwrap();
    // The node's identity file holds the responder's secret of section 8 (2.2).
    let node = Node::start_as(&small_file(dir.path(), 1), &[], Some(&[2; 32]));
    assert_eq!(hex(&node.id), "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394");
    let out = super::run(Command::new(PEX).args(["id", "--json", "--data-dir"]).arg(node.data_dir()));
    assert!(out.status.success(), "pex id: {out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("pex id --json prints JSON");
    assert_eq!(json["node_id"].as_str(), Some(hex(&node.id).as_str()), "pex id --json");

    // The handshake by hand: 34 bytes out, 98 back (starting 00 60), 66 out.
    let mut s = tcp(node.port);
    let mut hs = Noise::random();
    let m1 = lp(&hs.write1());
    assert_eq!(m1.len(), 34);
    s.write_all(&m1).unwrap();
    hs.read2(&read_msg2(&mut s)).expect("message 2 decrypts");
    let m3 = lp(&hs.write3());
    assert_eq!(m3.len(), 66);
    s.write_all(&m3).unwrap();
    let (_, k1, k2) = hs.finish();
    let mut a = Conn::new(s, &k1, &k2, &hs);
    assert_ne!(a.remote_static, node.id, "2.2: the Noise static key is not the identity");

    // HELLO first, one message of 108 plaintext bytes, signed over this handshake hash.
    let me = Identity::random();
    a.send(&me.hello(&a.hh, 0, 0));
    let f = a.recv_raw().expect("the node's HELLO");
    assert_eq!(f.msgs, [108], "HELLO as one transport message of n = 124");
    let hello = a.check_hello(&f, Some(node.port)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(hello.id, node.id, "HELLO proves the identity file's node id");
    assert_eq!(hello.flags, 1, "a listening node sets flag bit 0");
    // A seeder started without --peer has dialled nobody, so it can list nobody (5.4).
    let entries = a.expect_peers();
    assert!(entries.is_empty(), "a seeder that dialled nobody listed {entries:?}");

    // A second connection: the same node id and Noise static key (one per run, 2.2), another
    // handshake hash, so another signature.
    let mut b = node.dial();
    let (hello_b, _) = b.handshake(&Identity::random(), Some(node.port));
    assert_eq!(hello_b.id, node.id);
    assert_eq!(b.remote_static, a.remote_static, "2.2: one Noise static key for each run of the process");
    assert_ne!(b.hh, a.hh, "2.3: the handshake hash is unique to the connection");
    assert_ne!(hello_b.sig, hello.sig);

    // Both connections are usable, with HELLO's own frames and answers in transport messages.
    let mut rng = Rng::new(11);
    a.probe(&mut rng);
    b.probe(&mut rng);
    a.probe(&mut rng);
}

#[test]
fn identity_file_is_a_raw_secret_and_refused_when_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let file = small_file(dir.path(), 2);

    // `pex id` creates the identity: 32 bytes, mode 0600, whose Ed25519 public key it prints.
    let fresh = dir.path().join("fresh");
    let out = super::run(Command::new(PEX).args(["id", "--data-dir"]).arg(&fresh));
    assert!(out.status.success(), "pex id: {out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let secret: Hash = fs::read(fresh.join("identity")).unwrap().try_into().expect("a 32-byte identity file");
    assert_eq!(printed.trim(), hex(&Identity::from_secret(&secret).id()), "the node id of the identity file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(fresh.join("identity")).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!fresh.join("identity.tmp").exists());

    // A file of another length, or one others may read, is an error: the node does not start.
    for (case, secret, mode) in
        [("31 bytes", vec![7u8; 31], 0o600), ("33 bytes", vec![7; 33], 0o600), ("mode 0640", vec![7; 32], 0o640)]
    {
        let data = dir.path().join(case.replace(' ', "-"));
        write_identity(&data, &secret, mode);
        let mut cmd = Command::new(PEX);
        cmd.arg("seed").arg(&file).args(["--listen", "[::1]:0", "--data-dir"]).arg(&data);
        let out = super::run(&mut cmd);
        assert!(!out.status.success(), "identity file of {case}: the node started: {out:?}");
        assert_eq!(fs::read(data.join("identity")).unwrap(), secret, "identity file of {case} was replaced");
    }
}

/// What the node writes, by hand, after `sent` on a raw connection, until it closes.
fn raw_exchange(port: u16, sent: &[u8]) -> Vec<u8> {
    let mut s = tcp(port);
    s.write_all(sent).unwrap();
    read_to_close(&mut s).unwrap_or_else(|e| panic!("after sending {}: {e}", hex(&sent[..sent.len().min(64)])))
}

#[test]
fn broken_handshakes_are_closed_without_another_byte() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&small_file(dir.path(), 3), &[]);
    let mut rng = Rng::new(13);
    let mut good = node.peer();
    let mut wrong = Vec::new();

    // Message 1 of a wrong length: nothing at all comes back.
    for (case, sent) in [
        ("message 1 of 33 bytes", [&[0, 33][..], &[9; 33]].concat()),
        ("message 1 of 31 bytes", [&[0, 31][..], &[9; 31]].concat()),
    ] {
        let got = raw_exchange(node.port, &sent);
        if !got.is_empty() {
            wrong.push(format!("{case}: got {}", hex(&got)));
        }
    }

    // Failures at message 3: message 2 (98 bytes), then the close.
    type Third = fn(&mut Noise) -> Vec<u8>;
    let cases: Vec<(&str, &[u8], Third)> = vec![
        ("another prologue (pex/1)", b"pex/1", |_| lp(&[5; 64])),
        ("message 3 tampered", PROLOGUE, |hs| {
            let mut m = lp(&hs.write3());
            m[20] ^= 0x40;
            m
        }),
        ("message 3 of length 0", PROLOGUE, |_| vec![0, 0]),
        ("message 3 of 65 bytes", PROLOGUE, |hs| [&[0, 65][..], &hs.write3(), &[0]].concat()),
        ("message 3 of 63 bytes", PROLOGUE, |hs| lp(&hs.write3()[..63])),
        ("message 3 encrypted under another static key", PROLOGUE, |hs| {
            // A valid message 3 of another handshake state: the tags do not verify here.
            hs.s = random32();
            let mut other = Noise { sym: Symmetric::new(b"not this"), s: hs.s, e: hs.e, re: hs.re, rs: hs.rs };
            other.sym.mix_key(&[1]);
            lp(&other.write3())
        }),
    ];
    for (case, prologue, third) in cases {
        let mut s = tcp(node.port);
        let mut hs = Noise::new(prologue, random32(), random32());
        s.write_all(&lp(&hs.write1())).unwrap();
        let m2 = read_msg2(&mut s);
        let read2 = hs.read2(&m2);
        assert_eq!(read2.is_ok(), prologue == PROLOGUE, "{case}: message 2 decrypts exactly with the right prologue");
        s.write_all(&third(&mut hs)).unwrap();
        match read_to_close(&mut s) {
            Ok(got) if got.is_empty() => {}
            Ok(got) => wrong.push(format!("{case}: got {} after message 2", hex(&got))),
            Err(e) => wrong.push(format!("{case}: {e}")),
        }
    }

    // The peer closing in the middle of the handshake changes nothing for others.
    let mut s = tcp(node.port);
    s.write_all(&lp(&Noise::random().write1())).unwrap();
    read_msg2(&mut s);
    drop(s);

    good.probe(&mut rng);
    node.peer().probe(&mut rng);
    assert!(wrong.is_empty(), "answers that disagree with 2.3:\n{}", wrong.join("\n"));
}

/// The 72 bytes of 2.5.
fn v1_answer() -> Vec<u8> {
    let reason = "this node speaks pex/2 (Noise_XX_25519_AESGCM_SHA256); upgrade pex";
    frame(REJECT, &[&[VIOLATION][..], reason.as_bytes()].concat())
}

#[test]
fn a_v1_client_gets_the_plaintext_v1_reject() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&small_file(dir.path(), 4), &[]);
    let v1_hello = unhex("000000270350455801000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2328");
    for (case, sent) in [
        ("a v1 HELLO", v1_hello.clone()),
        ("a v1 HELLO and PEERS", [v1_hello.clone(), unhex("0000000102")].concat()),
        ("two zero bytes", vec![0, 0]),
    ] {
        let got = raw_exchange(node.port, &sent);
        assert_eq!(hex(&got), hex(&v1_answer()), "2.5: the answer to {case}");
        // As a v1 node decodes it: REJECT(3) with the reason (appendix A layout).
        assert_eq!((got[4], got[5]), (REJECT, VIOLATION));
    }
    node.peer().probe(&mut Rng::new(14));
}

/// 4.4's strictness: `S + ℓ` in place of `S` (little-endian, 32 bytes).
fn add_group_order(s: &[u8]) -> [u8; 32] {
    let l = unhex("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010");
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let v = s[i] as u16 + l[i] as u16 + carry;
        out[i] = v as u8;
        carry = v >> 8;
    }
    assert_eq!(carry, 0);
    out
}

#[test]
fn hello_must_come_first_and_prove_its_node_id_on_this_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&small_file(dir.path(), 5), &[]);
    let mut rng = Rng::new(15);
    let me = Identity::random();
    let mut good = node.peer();
    let mut wrong = Vec::new();

    // Each case: what we send as our first frame(s), given this connection's handshake hash.
    type First = Box<dyn Fn(&Hash) -> Vec<u8>>;
    let other = Identity::random();
    let replayed = {
        // A HELLO that was valid on another connection (which stays open meanwhile).
        let mut c = node.dial();
        let hello = me.hello(&c.hh, 0, 0);
        c.send(&hello);
        c.expect_hello(Some(node.port));
        (c, hello)
    };
    let replayed_hello = replayed.1.clone();
    let me_secret = me.secret();
    let other_secret = other.secret();
    let cases: Vec<(&str, First, &[&str])> = vec![
        (
            "a HELLO replayed from another connection",
            Box::new(move |_| replayed_hello.clone()),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        (
            "a HELLO with one bit of its signature flipped",
            Box::new(move |hh| {
                let mut f = Identity::from_secret(&me_secret).hello(hh, 0, 0);
                f[50] ^= 1;
                f
            }),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        (
            "a HELLO signed by another key than its node id",
            Box::new(move |hh| {
                let sig = Identity::from_secret(&other_secret).sign_hello(hh);
                hello_frame(&Identity::from_secret(&me_secret).id(), 0, 0, &sig)
            }),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        (
            "a HELLO with a non-reduced S (S + l)",
            Box::new(move |hh| {
                let me = Identity::from_secret(&me_secret);
                let mut sig = me.sign_hello(hh);
                let s = add_group_order(&sig[32..]);
                sig[32..].copy_from_slice(&s);
                hello_frame(&me.id(), 0, 0, &sig)
            }),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        (
            "a small-order node id with R = identity, S = 0 (valid for any message unless strict)",
            Box::new(|_| {
                let mut id = [0u8; 32];
                id[0] = 1;
                let mut sig = [0u8; 64];
                sig[0] = 1;
                hello_frame(&id, 0, 0, &sig)
            }),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        (
            "a HELLO over the right hash signed without the \"pex/2 hello\" prefix",
            Box::new(move |hh| {
                let me = Identity::from_secret(&me_secret);
                hello_frame(&me.id(), 0, 0, &me.key.sign(hh).to_bytes())
            }),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        (
            "a signed HELLO of version 1 (103 bytes)",
            Box::new(move |hh| {
                let mut f = Identity::from_secret(&me_secret).hello(hh, 0, 0);
                f[8] = 1;
                f
            }),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        (
            "a signed HELLO with magic PEY",
            Box::new(move |hh| {
                let mut f = Identity::from_secret(&me_secret).hello(hh, 0, 0);
                f[7] = b'Y';
                f
            }),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        (
            "a v1 HELLO (v2 vector hello_v1)",
            Box::new(|_| {
                unhex("0000002703504558018a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c2328")
            }),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        ("a keep-alive", Box::new(|_| keepalive()), &["HELLO", "REJECT(3)", "EOF"]),
        ("an unknown type", Box::new(|_| frame(200, b"future")), &["HELLO", "REJECT(3)", "EOF"]),
        ("an ASK", Box::new(ask), &["HELLO", "REJECT(3)", "EOF"]),
        ("an empty PEERS", Box::new(|_| peers(&[])), &["HELLO", "REJECT(3)", "EOF"]),
        ("L = 1,048,610 (v1 vector too_long)", Box::new(|_| unhex("0010002201")), &["HELLO", "REJECT(3)", "EOF"]),
        ("a REJECT", Box::new(|_| reject(SHUTTING_DOWN, 10, "shutting down")), &["HELLO", "EOF"]),
    ];
    for (case, first, expected) in &cases {
        let mut c = node.dial();
        let sent = first(&c.hh);
        c.send(&sent);
        let got = transcript(&mut c, Some(node.port));
        if got != *expected {
            wrong.push(format!("{case}: sent {} got {got:?}", hex(&sent[..sent.len().min(64)])));
        }
    }

    // Flag bits 1-7 are ignored: a HELLO with flags fe is fine (4.4).
    let mut c = node.dial();
    c.send(&Identity::random().hello(&c.hh, 0, 0xfe));
    c.expect_hello(Some(node.port));
    c.expect_peers();
    c.probe(&mut rng);

    good.probe(&mut rng);
    drop(replayed);
    assert!(wrong.is_empty(), "answers that disagree with 4.4 and 5.1:\n{}", wrong.join("\n"));
}

#[test]
fn a_second_connection_of_one_identity_and_the_node_itself_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node_secret = [0x5a; 32];
    let node = Node::start_as(&small_file(dir.path(), 6), &[], Some(&node_secret));
    let mut rng = Rng::new(16);
    let me = Identity::random();
    let mut first = node.peer_as(&me);

    // 5.2: both connections dialled by us, so the older stays and the new one gets REJECT(1),
    // after the HELLOs and without PEERS (5.1 step 5.4).
    let mut dup = node.dial();
    dup.send(&me.hello(&dup.hh, 0, 0));
    dup.expect_hello(Some(node.port));
    let f = dup.expect_reject_then_close(DUPLICATE, "a second connection with a live node id");
    assert_eq!(f.retry_after(), 0, "{}", f.show());
    first.probe(&mut rng);

    // 5.1 step 5.2: the node's own id (we hold its identity file) gets REJECT(4).
    let itself = Identity::from_secret(&node_secret);
    assert_eq!(itself.id(), node.id);
    let mut c = node.dial();
    c.send(&itself.hello(&c.hh, 0, 0));
    c.expect_hello(Some(node.port));
    let f = c.expect_reject_then_close(SELF, "HELLO with the node's own id");
    assert_eq!(f.reason(), "connected to self", "{}", f.show());

    // Once the first connection is gone, the identity is welcome again (polled: the node sees
    // the close when it sees it).
    drop(first);
    node.peer_again_as(&me).probe(&mut rng);
}

// ---------------------------------------------------------------------------------------------
// 2. A complete download by hand (sections 6, 7, 2.4, 5.5)
// ---------------------------------------------------------------------------------------------

#[test]
fn fetch_whole_file_by_hand_with_pipelined_asks() {
    let dir = tempfile::tempdir().unwrap();
    let size = 9 * PIECE + 12345; // 10 pieces, the last one short; pieces 2 and 6 identical
    let mut original = Rng::new(3).bytes(size);
    original.copy_within(2 * PIECE..3 * PIECE, 6 * PIECE);
    let file = dir.path().join("nine-and-a-bit.bin");
    fs::write(&file, &original).unwrap();
    let node = Node::start(&file, &[]);
    let mut c = node.peer();

    // The manifest is the blob whose hash is the root.
    c.send(&ask(&node.root));
    let f = c.recv();
    assert!(f.is(GIVE) && f.hash() == node.root, "ASK root: got {}", f.show());
    let manifest_blob = &f.body[32..];
    assert_eq!(sha(manifest_blob), node.root, "the manifest does not hash to the root");
    let m = parse_manifest(manifest_blob);
    assert_eq!((m.name.as_str(), m.size), ("nine-and-a-bit.bin", size as u64));
    let pieces = size.div_ceil(PIECE);
    assert_eq!((pieces, m.lists.len()), (10, 1));

    let mut hashes: Vec<Hash> = Vec::new();
    for (k, lh) in m.lists.iter().enumerate() {
        c.send(&ask(lh));
        let f = c.recv();
        assert!(f.is(GIVE) && f.hash() == *lh, "ASK list {k}: got {}", f.show());
        let list = &f.body[32..];
        assert_eq!(sha(list), *lh, "hash list {k} does not match its hash");
        assert_eq!(list.len(), 32 * LIST_HASHES.min(pieces - LIST_HASHES * k), "length of hash list {k}");
        hashes.extend(list.chunks(32).map(|h| -> Hash { h.try_into().unwrap() }));
    }
    assert_eq!(hashes, piece_hashes(&original), "the lists name other pieces than the file's");

    // Pieces, 8 ASKs in flight: identical pieces are one blob, fetched once, written twice.
    let mut positions: HashMap<Hash, Vec<usize>> = HashMap::new();
    let mut todo: VecDeque<Hash> = VecDeque::new();
    for (i, h) in hashes.iter().enumerate() {
        let at = positions.entry(*h).or_default();
        if at.is_empty() {
            todo.push_back(*h);
        }
        at.push(i);
    }
    assert_eq!(todo.len(), 9);
    let mut out = vec![0u8; size];
    let mut outstanding: VecDeque<Hash> = VecDeque::new();
    let mut most_outstanding = 0;
    while !todo.is_empty() || !outstanding.is_empty() {
        let mut batch = Vec::new();
        while outstanding.len() < 8 {
            let Some(h) = todo.pop_front() else { break };
            batch.extend(ask(&h));
            outstanding.push_back(h);
        }
        if !batch.is_empty() {
            c.send(&batch); // several ASKs in one transport message
        }
        most_outstanding = most_outstanding.max(outstanding.len());
        let f = c.recv();
        assert!(f.is(GIVE), "expected a GIVE, got {}", f.show());
        let h = f.hash();
        // 5.5: answers come in ASK order.
        assert_eq!(Some(h), outstanding.pop_front(), "GIVE out of ASK order: {}", f.show());
        let data = &f.body[32..];
        assert_eq!(sha(data), h, "GIVE data does not hash to {}", hex(&h));
        if data.len() == PIECE {
            // 2.4: a 1 MiB GIVE is 16 messages of n = 65,535 and one of n = 325.
            assert_eq!(f.msgs.len(), 17, "messages of a full-piece GIVE: {:?}", f.msgs);
            assert_eq!(f.msgs[16] + TAG, 325);
        }
        for &i in &positions[&h] {
            let range = i * PIECE..((i + 1) * PIECE).min(size);
            assert_eq!(data.len(), range.len(), "length of piece {i}");
            out[range].copy_from_slice(data);
        }
    }
    assert_eq!(most_outstanding, 8);
    assert!(out == original, "the reassembled file differs from the original");
}

/// Section 6.1 frame by frame on a live node: it must produce exactly the quoted bytes.
#[test]
fn worked_example_frames_on_the_live_node() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.txt");
    fs::write(&file, b"hello, swarm\n").unwrap();
    let node = Node::start(&file, &[]);
    assert_eq!(hex(&node.root), "d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de4");
    let mut c = node.peer();

    let list_hash = h32("7fb72fd845b3b37be652e6155323f0e2d9437c671b08cba3850862cf152851d8");
    let steps: Vec<(&str, Vec<u8>, &str)> = vec![
        ("GIVE manifest", ask(&node.root), "0000006101d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de45045584d0100100000000000000000000d000968656c6c6f2e747874000000017fb72fd845b3b37be652e6155323f0e2d9437c671b08cba3850862cf152851d8"),
        ("GIVE list", ask(&list_hash), "00000041017fb72fd845b3b37be652e6155323f0e2d9437c671b08cba3850862cf152851d83a2ec73c897660e1919f07a073a741d8e9ba378834fa3b4947d84cb52e03ca76"),
        ("BITFIELD (all)", bitfield(&node.root, 0, &[0]), "0000002605d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de40000000080"),
        ("GIVE piece (v1 vector give)", ask(&sha(b"hello, swarm\n")), "0000002e013a2ec73c897660e1919f07a073a741d8e9ba378834fa3b4947d84cb52e03ca7668656c6c6f2c20737761726d0a"),
    ];
    for (name, sent, expected) in steps {
        c.send(&sent);
        let f = c.recv();
        assert_eq!(hex(&f.wire()), expected, "{name}");
        assert_eq!(f.msgs, [expected.len() / 2], "{name} travels as one transport message");
    }
}

#[test]
fn an_empty_file_is_a_manifest_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("empty");
    fs::write(&file, b"").unwrap();
    let node = Node::start(&file, &[]);
    let mut c = node.peer();
    c.send(&ask(&node.root));
    let f = c.recv();
    assert!(f.is(GIVE) && f.hash() == node.root, "ASK root: got {}", f.show());
    let (manifest, lists) = make_manifest("empty", b"");
    assert!(lists.is_empty());
    assert_eq!(f.body[32..], manifest, "0 pieces, 0 hash lists (sections 1 and 6)");
    let m = parse_manifest(&f.body[32..]);
    assert_eq!((m.size, m.lists.len()), (0, 0));
    // A BITFIELD of no bits is valid for it; the node holds no piece, so it replies nothing (5.7).
    c.send(&bitfield(&node.root, 0, &[]));
    c.probe(&mut Rng::new(17));
    // The empty blob is not a piece of it: nobody need hold it.
    c.send(&ask(&sha(b"")));
    let f = c.recv();
    assert!(f.is(DONT_HAVE) || f.wire() == give(b""), "ASK the empty blob: {}", f.show());
}

// ---------------------------------------------------------------------------------------------
// 3. DONT_HAVE, BITFIELD, HAVE, CANCEL (5.5, 5.7)
// ---------------------------------------------------------------------------------------------

#[test]
fn dont_have_bitfield_have_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let size = 9 * PIECE + 12345; // 10 pieces: two bitfield bytes, six spare bits
    let (file, original) = write_file(dir.path(), "ten.bin", size, 4);
    let hashes = piece_hashes(&original);
    let node = Node::start(&file, &[]);
    let mut rng = Rng::new(15);
    let mut c = node.peer();
    let root = node.root;

    // An unknown hash: DONT_HAVE for exactly that hash, once per ASK, repeats included.
    let missing = rng.hash();
    c.send(&ask(&missing));
    assert_eq!(c.recv().wire(), dont_have(&missing));
    c.send(&[ask(&missing), ask(&missing)].concat());
    for _ in 0..2 {
        let f = c.recv();
        assert_eq!(f.wire(), dont_have(&missing), "repeated ASK: got {}", f.show());
    }

    // A whole BITFIELD with no bits set declares interest; the seeder answers with its own:
    // all 10 pieces from piece 0, spare bits zero.
    c.send(&bitfield(&root, 0, &[0, 0]));
    let f = c.recv();
    assert_eq!(f.wire(), bitfield(&root, 0, &[0xff, 0xc0]), "BITFIELD reply: got {}", f.show());

    // Frames with no reply, the connection stays usable: HAVE in range and for an unknown root,
    // CANCEL of a hash never asked, a keep-alive, an unknown type, a second BITFIELD for the same
    // root (at most one reply per connection and root), valid ranges (from piece 8 with pieces
    // 8 and 9; from piece 0 with one byte; no bits from far past the end), and BITFIELDs of any
    // shape for an unknown root.
    let other_root = rng.hash();
    let quiet = [
        have(&root, 9),
        have(&other_root, 70000),
        cancel(&rng.hash()),
        keepalive(),
        frame(200, b"future"),
        bitfield(&root, 0, &[0, 0]),
        bitfield(&root, 8, &[0xc0]),
        bitfield(&root, 0, &[0xff]),
        bitfield(&root, 1000, &[]),
        bitfield(&other_root, 0, &[0xff; 3]),
        bitfield(&other_root, 77, &[0x01]),
    ]
    .concat();
    c.send(&quiet);
    c.fetch_expect(&hashes[3], &original[3 * PIECE..4 * PIECE]);

    // A range BITFIELD on a fresh connection also gets the reply (5.7 "Replies").
    let mut d = node.peer();
    d.send(&bitfield(&root, 8, &[0x00]));
    let f = d.recv();
    assert_eq!(f.wire(), bitfield(&root, 0, &[0xff, 0xc0]), "BITFIELD reply to a range: got {}", f.show());

    // A repeated ASK for a piece gets one GIVE each.
    let last = &original[9 * PIECE..];
    c.send(&[ask(&hashes[9]), ask(&hashes[9])].concat());
    for _ in 0..2 {
        let f = c.recv();
        assert!(
            f.is(GIVE) && f.hash() == hashes[9] && f.body[32..] == *last,
            "repeated ASK of piece 9: got {}",
            f.show()
        );
    }
    // CANCEL of a hash asked and already answered is harmless.
    c.send(&cancel(&hashes[9]));
    c.fetch_expect(&hashes[0], &original[..PIECE]);

    // CANCEL removes the queued ASKs of that hash: 200 ASKs of one full piece, its CANCEL and a
    // probe ASK in one transport message. The GIVEs already being answered still come (each
    // whole and right), then the probe's DONT_HAVE, and nothing for the rest (5.5).
    let probe = rng.hash();
    let mut batch: Vec<u8> = (0..200).flat_map(|_| ask(&hashes[1])).collect();
    batch.extend(cancel(&hashes[1]));
    batch.extend(ask(&probe));
    c.send(&batch);
    let mut gives = 0;
    loop {
        let f = c.recv();
        if f.wire() == dont_have(&probe) {
            break;
        }
        assert!(f.is(GIVE) && f.hash() == hashes[1], "after CANCEL: {}", f.show());
        assert!(f.body[32..] == original[PIECE..2 * PIECE]);
        gives += 1;
    }
    eprintln!("CANCEL: {gives} of 200 queued ASKs were answered");
    assert!(gives < 200, "CANCEL removed none of 200 queued ASKs");
    c.probe(&mut rng);
}

/// 2.4: frames and transport messages need not align: a frame split over many messages, several
/// frames in one, and empty messages (n = 16) are all fine for a receiver.
#[test]
fn frames_may_be_split_and_joined_across_transport_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (file, original) = write_file(dir.path(), "two.bin", PIECE + 999, 21);
    let hashes = piece_hashes(&original);
    let node = Node::start(&file, &[]);
    let mut rng = Rng::new(21);
    let me = Identity::random();
    let mut c = node.dial();

    // HELLO in 3-byte messages with an empty message between each two.
    let hello = me.hello(&c.hh, 0, 0);
    let mut wire = Vec::new();
    for chunk in hello.chunks(3) {
        wire.extend(c.tx.seal(chunk));
        wire.extend(c.tx.seal(&[]));
    }
    c.tx.send_raw(&wire);
    c.expect_hello(Some(node.port));
    c.expect_peers();

    // An ASK one byte per message, then three frames in one message, then an ASK whose first
    // half shares a message with a keep-alive.
    let probe = rng.hash();
    let wire = c.tx.seal_cut(&ask(&probe), 1);
    c.tx.send_raw(&wire);
    assert_eq!(c.recv().wire(), dont_have(&probe));
    let probes = [rng.hash(), rng.hash()];
    c.send(&[ask(&probes[0]), keepalive(), ask(&probes[1])].concat());
    for p in &probes {
        assert_eq!(c.recv().wire(), dont_have(p));
    }
    let a = ask(&hashes[1]);
    let wire = [c.tx.seal(&[&keepalive()[..], &a[..10]].concat()), c.tx.seal(&[]), c.tx.seal(&a[10..])].concat();
    c.tx.send_raw(&wire);
    let f = c.recv();
    assert!(f.is(GIVE) && f.body[32..] == original[PIECE..], "GIVE of piece 1: {}", f.show());

    // A whole GIVE-sized stream of frames cut at odd places: 300 ASKs in 1000-byte messages.
    let asked: Vec<Hash> = (0..300).map(|_| rng.hash()).collect();
    let stream: Vec<u8> = asked.iter().flat_map(ask).collect();
    let wire = c.tx.seal_cut(&stream, 1000);
    let mut w = c.tx.s.try_clone().unwrap();
    let writer = thread::spawn(move || w.write_all(&wire));
    for h in &asked {
        assert_eq!(c.recv().wire(), dont_have(h), "answers in ASK order");
    }
    join(writer).unwrap();
    c.fetch_expect(&hashes[0], &original[..PIECE]);
}

// ---------------------------------------------------------------------------------------------
// 4. Violations and failures (5.6, 2.4)
// ---------------------------------------------------------------------------------------------

/// Protocol violations after the set-up, for a node that seeds the 10-piece file `root`
/// (section 3 and its vectors, 5.1 step 6, 5.7); `hh` is the connection's handshake hash.
fn violations(root: &Hash, hh: &Hash, me: &Identity) -> Vec<(String, Vec<u8>)> {
    let v2 = fixture("v2-vectors.json");
    let mut out: Vec<(String, Vec<u8>)> = v2["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["valid"] == false)
        .map(|v| (format!("v2 vector {}", v["name"].as_str().unwrap()), unhex(v["hex"].as_str().unwrap())))
        .collect();
    let more: Vec<(&str, Vec<u8>)> = vec![
        ("v1 vector too_long", unhex("0010002201")),
        ("v1 vector ask_short", unhex("0000002000262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab27184979893")),
        (
            "v1 vector have_short",
            unhex("0000002306262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a0001"),
        ),
        ("ASK with a 33-byte body", frame(ASK, &[7; 33])),
        ("GIVE with a 31-byte body", frame(GIVE, &[7; 31])),
        ("DONT_HAVE with a 31-byte body", frame(DONT_HAVE, &[7; 31])),
        ("HAVE with a 37-byte body", frame(HAVE, &[7; 37])),
        ("CANCEL with a 33-byte body", frame(CANCEL, &[7; 33])),
        ("REJECT with an empty body", frame(REJECT, &[])),
        ("BITFIELD of the known file, whole, spare bit set", bitfield(root, 0, &[0, 0x20])),
        ("BITFIELD of the known file from 0 with 3 bytes", bitfield(root, 0, &[0, 0, 0])),
        ("BITFIELD of the known file from piece 10 (= P)", bitfield(root, 10, &[0])),
        ("BITFIELD of the known file from piece 8 with 2 bytes", bitfield(root, 8, &[0, 0])),
        ("BITFIELD of the known file from piece 8, bit of piece 10 set", bitfield(root, 8, &[0x20])),
        ("HAVE of the known file, index 10 (= P)", have(root, 10)),
        ("a second HELLO, validly signed for this connection", me.hello(hh, 0, 0)),
    ];
    out.extend(more.into_iter().map(|(n, b)| (n.to_owned(), b)));
    out
}

#[test]
fn violations_get_reject_3_and_close_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (file, original) = write_file(dir.path(), "ten.bin", 9 * PIECE + 12345, 5);
    let hashes = piece_hashes(&original);
    let node = Node::start(&file, &[]);
    let mut good = node.peer();
    let mut wrong = Vec::new();

    // After the set-up: REJECT(3), then the close (no ban: the same identity comes back).
    let me = Identity::random();
    let count = violations(&node.root, &[0; 32], &me).len();
    for i in 0..count {
        let mut c = node.peer_as(&me);
        let (case, bytes) = violations(&node.root, &c.hh, &me).swap_remove(i);
        c.send(&bytes);
        let got = transcript(&mut c, None);
        if got != ["REJECT(3)", "EOF"] {
            wrong.push(format!("set up, then {case}: sent {} got {got:?}", hex(&bytes[..bytes.len().min(64)])));
        }
    }

    // In the same transport message as our HELLO: PEERS still precedes the REJECT (5.1 step 5.5).
    for i in 0..count {
        let mut c = node.dial();
        let (case, bytes) = violations(&node.root, &c.hh, &me).swap_remove(i);
        let sent = [me.hello(&c.hh, 0, 0), bytes].concat();
        c.send(&sent);
        let got = transcript(&mut c, Some(node.port));
        if got != ["HELLO", "PEERS", "REJECT(3)", "EOF"] {
            wrong.push(format!("HELLO + {case}: sent {} got {got:?}", hex(&sent[..sent.len().min(160)])));
        }
    }

    // The well-behaved connection outlived all of them.
    good.fetch_expect(&hashes[9], &original[9 * PIECE..]);
    assert!(wrong.is_empty(), "answers that disagree with 5.6:\n{}", wrong.join("\n"));
}

#[test]
fn a_failed_transport_message_closes_the_connection_without_reject() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&small_file(dir.path(), 6), &[]);
    let mut rng = Rng::new(22);
    let mut good = node.peer();
    let mut wrong = Vec::new();

    type Breach = fn(&mut Conn, &[u8]) -> (Vec<u8>, bool);
    // Each returns the bytes to send (an ASK spoiled one way or another) and whether to
    // half-close afterwards.
    let breaches: Vec<(&str, Breach)> = vec![
        ("a flipped ciphertext bit", |c, ask| {
            let mut m = c.tx.seal(ask);
            m[5] ^= 0x01;
            (m, false)
        }),
        ("a flipped tag bit", |c, ask| {
            let mut m = c.tx.seal(ask);
            let n = m.len();
            m[n - 1] ^= 0x80;
            (m, false)
        }),
        ("a replayed message (our HELLO again)", |c, _| {
            let hello = Identity::random().hello(&c.hh, 0, 0);
            (lp(&c.tx.gcm.seal_at(0, &[], &hello)), false)
        }),
        ("a skipped nonce", |c, ask| {
            c.tx.gcm.n += 1;
            (c.tx.seal(ask), false)
        }),
        ("sealed with the other direction's key", |c, ask| (lp(&c.rx.gcm.seal_at(c.tx.gcm.n, &[], ask)), false)),
        ("n = 15", |_, _| ([&[0, 15][..], &[0; 15]].concat(), false)),
        ("n = 0", |_, _| (vec![0, 0], false)),
        ("the stream ending inside a message", |_, _| ([&[0, 64][..], &[1; 10]].concat(), true)),
        ("the stream ending inside a length", |_, _| (vec![0], true)),
    ];
    for (case, breach) in &breaches {
        let mut c = node.peer();
        let (bytes, half_close) = breach(&mut c, &ask(&rng.hash()));
        c.tx.send_raw(&bytes);
        if half_close {
            c.tx.s.shutdown(Shutdown::Write).unwrap();
        }
        let got = transcript(&mut c, None);
        if got != ["EOF"] {
            wrong.push(format!("{case}: got {got:?}"));
        }
    }

    // In place of our HELLO: the node's own HELLO went out at once, then the close.
    let mut c = node.dial();
    let mut m = c.tx.seal(&Identity::random().hello(&c.hh, 0, 0));
    m[40] ^= 0x04;
    c.tx.send_raw(&m);
    let got = transcript(&mut c, Some(node.port));
    if got != ["HELLO", "EOF"] {
        wrong.push(format!("a tampered HELLO message: got {got:?}"));
    }

    // The peer closing between messages (5.1 step 4): the node closes, sending nothing.
    let mut c = node.dial();
    c.tx.s.shutdown(Shutdown::Write).unwrap();
    let got = transcript(&mut c, Some(node.port));
    if got != ["HELLO", "EOF"] {
        wrong.push(format!("closing before HELLO: got {got:?}"));
    }

    good.probe(&mut rng);
    assert!(wrong.is_empty(), "answers that disagree with 2.4:\n{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 5. Refusals before HELLO: the connection limit and shutting down (5.1 steps 1-2, 5.9)
// ---------------------------------------------------------------------------------------------

#[test]
fn beyond_the_connection_limit_reject_2_is_the_only_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (file, original) = write_file(dir.path(), "small.bin", 300_000, 7);
    let node = Node::start(&file, &["--max-peers", "3"]);
    let mut rng = Rng::new(23);
    let mut live: Vec<Conn> = (0..3).map(|_| node.peer()).collect();

    for with_hello in [false, true, true] {
        let mut c = node.dial();
        if with_hello {
            c.send(&Identity::random().hello(&c.hh, 0, 0));
        }
        let f = c.expect_reject_then_close(LIMIT, "a fourth connection with --max-peers 3");
        assert_eq!((f.retry_after(), f.reason().as_str()), (5, "peer limit reached"), "{}", f.show());
    }
    // A v1 dialler gets the v1 answer instead (5.1 step 2).
    assert_eq!(hex(&raw_exchange(node.port, &[0, 0, 0, 0x27, 3])), hex(&v1_answer()));

    for c in &mut live {
        c.probe(&mut rng);
    }
    live[2].fetch_expect(&sha(&original), &original);

    // A slot frees once a live connection is gone (polled: the node sees the close when it does).
    drop(live.pop());
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut admitted = loop {
        let mut c = node.dial();
        c.send(&Identity::random().hello(&c.hh, 0, 0));
        let f = c.recv();
        if f.is(HELLO) {
            c.check_hello(&f, Some(node.port)).unwrap();
            c.expect_peers();
            break c;
        }
        assert!(f.is(REJECT) && f.body[0] == LIMIT, "after a slot freed: {}", f.show());
        assert!(Instant::now() < deadline, "no slot freed after a connection closed");
        thread::sleep(Duration::from_millis(50));
    };
    admitted.probe(&mut rng);
}

#[test]
fn shutting_down_sends_reject_6_with_retry_after_10() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(&small_file(dir.path(), 8), &[]);
    let mut live = node.peer();

    // A connection in the middle of its handshake: message 1 sent, message 2 read.
    let mut s = tcp(node.port);
    let mut hs = Noise::random();
    s.write_all(&lp(&hs.write1())).unwrap();
    hs.read2(&read_msg2(&mut s)).unwrap();

    node.child.signal(libc::SIGINT);
    let f = live.expect_reject_then_close(SHUTTING_DOWN, "a live connection at shutdown");
    assert_eq!((f.retry_after(), f.reason().as_str()), (10, "shutting down"), "{}", f.show());

    // The half-set-up connection completes its handshake after the node began shutting down.
    // 5.1 step 1 says it gets REJECT(6) as its only frame; pex sets it up (HELLO, PEERS) and
    // then sends REJECT(6) as to a live connection. Either ends with REJECT(6) and retry-after
    // 10; the difference is reported as a gap in the specification.
    s.write_all(&lp(&hs.write3())).unwrap();
    let (_, k1, k2) = hs.finish();
    let mut c = Conn::new(s, &k1, &k2, &hs);
    c.send(&Identity::random().hello(&c.hh, 0, 0));
    let got = transcript(&mut c, Some(node.port));
    eprintln!("a connection half set up at shutdown got {got:?}");
    assert!(
        got == ["REJECT(6)", "EOF"] || got == ["HELLO", "PEERS", "REJECT(6)", "EOF"],
        "a connection half set up at shutdown: {got:?}"
    );
    let status = node.child.wait_within(IO_TIMEOUT);
    eprintln!("pex seed after SIGINT: {status}");
}

// ---------------------------------------------------------------------------------------------
// 6. Time-outs: silent, dribbling, stalled and slow connections; keep-alives (5.8)
// ---------------------------------------------------------------------------------------------

/// Frames read on a thread of its own until EOF or an error (which ends the stream).
fn frame_reader(mut rx: Rx) -> mpsc::Receiver<io::Result<Option<Frame>>> {
    let (tx, out) = mpsc::channel();
    thread::spawn(move || loop {
        let f = rx.read_frame();
        let more = matches!(f, Ok(Some(_)));
        if tx.send(f).is_err() || !more {
            break;
        }
    });
    out
}

/// Writes `wire` one byte every `pace` until the node closes; returns the frames it sent
/// (keep-alives aside) and how many bytes had been written when the close was seen.
fn dribble(c: Conn, wire: Vec<u8>, pace: Duration, limit: Duration) -> (Vec<Frame>, usize) {
    let t0 = Instant::now();
    let Conn { rx, mut tx, .. } = c;
    let frames_rx = frame_reader(rx);
    let (mut sent, mut writing, mut next) = (0, true, Instant::now());
    let mut frames: Vec<Frame> = Vec::new();
    loop {
        let shown = |frames: &[Frame]| frames.iter().map(Frame::show).collect::<Vec<_>>();
        assert!(t0.elapsed() < limit, "dribbling connection still open after {limit:?}; got {:?}", shown(&frames));
        if writing && sent < wire.len() && Instant::now() >= next {
            match tx.s.write_all(&wire[sent..=sent]) {
                Ok(()) => sent += 1,
                Err(_) => writing = false, // the node has closed; its frames are still to be read
            }
            next += pace;
        }
        let wait = if writing && sent < wire.len() {
            next.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(1)
        };
        match frames_rx.recv_timeout(wait) {
            Ok(Ok(Some(f))) if f.ty.is_none() => {}
            Ok(Ok(Some(f))) => {
                check_rules(&f);
                let done = f.is(DONT_HAVE) && sent == wire.len();
                frames.push(f);
                if done {
                    return (frames, sent);
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) if is_reset(&e) => break,
            Ok(Err(e)) => panic!("dribbling connection: {e}; got {:?}", shown(&frames)),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("the reader ends with EOF or an error"),
        }
    }
    (frames, sent)
}

#[test]
fn silent_dribbling_and_stalled_connections_are_closed_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let size = 2 * PIECE + 1000; // 3 pieces, the last one short
    let (file, original) = write_file(dir.path(), "three.bin", size, 7);
    let hashes = piece_hashes(&original);
    let mut node = Node::start(&file, &["--hello-timeout", "1.5", "--idle-timeout", "2"]);
    let port = node.port;
    let mut normal = node.peer();
    let mut workers: Vec<(&str, thread::JoinHandle<String>)> = Vec::new();

    // (a) TCP only, nothing sent: the handshake does not complete, closed without a byte.
    workers.push((
        "no handshake",
        thread::spawn(move || {
            let t0 = Instant::now();
            let got = read_to_close(&mut tcp(port)).unwrap();
            assert!(got.is_empty(), "no handshake: the node wrote {}", hex(&got));
            format!("closed after {:?}", t0.elapsed())
        }),
    ));

    // (b) The handshake, then nothing: the node's HELLO, then REJECT(3) (5.1 step 4).
    workers.push((
        "no HELLO",
        thread::spawn(move || {
            let t0 = Instant::now();
            let mut c = Conn::dial(port);
            let got = transcript(&mut c, Some(port));
            assert_eq!(got, ["HELLO", "REJECT(3)", "EOF"], "no HELLO after the handshake");
            format!("REJECT(3) and closed after {:?}", t0.elapsed())
        }),
    ));

    // (c) A valid HELLO message, one byte every 300 ms (38 s in all): REJECT(3) long before.
    workers.push((
        "dribbled HELLO",
        thread::spawn(move || {
            let t0 = Instant::now();
            let mut c = Conn::dial(port);
            let wire = c.tx.seal(&Identity::random().hello(&c.hh, 0, 0));
            let total = wire.len();
            let (frames, sent) = dribble(c, wire, Duration::from_millis(300), Duration::from_secs(60));
            let shown: Vec<String> = frames.iter().map(Frame::show).collect();
            assert!(
                frames.len() == 2 && frames[0].is(HELLO) && frames[1].is(REJECT) && frames[1].body[0] == VIOLATION,
                "dribbled HELLO: expected HELLO, REJECT(3), EOF; got {shown:?}"
            );
            assert!(sent < total, "the dribbled HELLO was complete before the REJECT");
            format!("REJECT(3) after {:?}, {sent} of {total} bytes sent", t0.elapsed())
        }),
    ));

    // (d) After the set-up, a GIVE announced as 1 MiB that stops after 11 bytes, and (e) a
    // transport message announced as 1000 bytes that stops after 10: closed by the idle
    // time-out without REJECT.
    for (case, partial) in [("stalled frame", true), ("stalled message", false)] {
        workers.push((
            case,
            thread::spawn(move || {
                let mut c = Conn::dial(port);
                c.handshake(&Identity::random(), Some(port));
                let t0 = Instant::now();
                if partial {
                    c.send(&[0x00, 0x10, 0x00, 0x00, GIVE, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
                } else {
                    c.tx.send_raw(&[&[0x03, 0xe8][..], &[7; 10]].concat());
                }
                let got = transcript(&mut c, None);
                assert!(
                    got.iter().all(|t| t == "keep-alive" || t == "EOF"),
                    "{case}: expected a close without REJECT, got {got:?}"
                );
                format!("closed after {:?}", t0.elapsed())
            }),
        ));
    }

    // (f) A message arriving slowly (one byte every 100 ms, 2.75 times the idle time-out in
    // all) keeps the connection open: its ASK is answered.
    workers.push((
        "slow ASK",
        thread::spawn(move || {
            let mut c = Conn::dial(port);
            c.handshake(&Identity::random(), Some(port));
            let h = Rng::new(99).hash();
            let wire = c.tx.seal(&ask(&h));
            let t0 = Instant::now();
            let (frames, _) = dribble(c, wire, Duration::from_millis(100), Duration::from_secs(60));
            let shown: Vec<String> = frames.iter().map(Frame::show).collect();
            assert!(frames.len() == 1 && frames[0].wire() == dont_have(&h), "slow ASK: got {shown:?}");
            format!("answered after {:?}", t0.elapsed())
        }),
    ));

    // (g) Meanwhile a normal client keeps ASKing and getting its pieces.
    let mut rounds = 0;
    while !workers.iter().all(|(_, w)| w.is_finished()) {
        let i = rounds % hashes.len();
        normal.fetch_expect(&hashes[i], &original[i * PIECE..((i + 1) * PIECE).min(size)]);
        rounds += 1;
        thread::sleep(Duration::from_millis(100)); // pacing, well inside the 2 s idle time-out
    }
    for (case, w) in workers {
        eprintln!("{case}: {}", join(w));
    }
    eprintln!("the normal client completed {rounds} ASKs meanwhile");
    assert!(rounds >= 5, "the normal client completed only {rounds} ASKs");
    normal.fetch_expect(&hashes[2], &original[2 * PIECE..]);
    assert!(node.alive(), "the node exited");
}

#[test]
fn keep_alives_are_sent_and_keep_connections_open() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&small_file(dir.path(), 9), &["--keepalive", "0.5", "--idle-timeout", "3"]);
    let mut rng = Rng::new(19);
    let mut talker = node.peer();
    let mut mute = node.peer();

    // We send a keep-alive every 300 ms for 6 s (twice the idle time-out): the connection stays,
    // and the node, which has nothing else to say, sends keep-alives of its own.
    let t0 = Instant::now();
    let mut received = 0;
    while t0.elapsed() < Duration::from_secs(6) {
        talker.send(&keepalive());
        talker.rx.set_timeout(Duration::from_millis(300));
        loop {
            match talker.try_recv() {
                Ok(Some(f)) if f.ty.is_none() => received += 1,
                Ok(Some(f)) => panic!("unexpected {}", f.show()),
                Ok(None) => panic!("the node closed a connection that sent keep-alives"),
                Err(e) if is_timeout(&e) => break,
                Err(e) => panic!("{e}"),
            }
        }
    }
    talker.rx.set_timeout(IO_TIMEOUT);
    assert!(received >= 1, "no keep-alive from the node in 6 s with --keepalive 0.5");
    talker.probe(&mut rng);

    // The mute connection sent nothing all this while: closed without REJECT, although the
    // node's own keep-alives went out on it.
    let got = transcript(&mut mute, None);
    assert!(got.iter().all(|t| t == "keep-alive" || t == "EOF"), "a mute connection: {got:?}");
    assert!(got.len() > 1, "no keep-alive on the mute connection: {got:?}");
    eprintln!("keep-alives: {received} on the talking connection; the mute one got {got:?}");
}

// ---------------------------------------------------------------------------------------------
// 7. GIVEs under an upload limit (2.4)
// ---------------------------------------------------------------------------------------------

#[test]
fn an_upload_limit_cuts_gives_into_smaller_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (file, original) = write_file(dir.path(), "two.bin", PIECE + 5000, 10);
    let hashes = piece_hashes(&original);
    // c = limit / 64, bounded to 16 KiB … 256 KiB, at most 65,519.
    for (rate, cut) in [("2MiB", 32_768), ("512KiB", 16_384), ("64MiB", MAX_PLAIN)] {
        let node = Node::start(&file, &["--max-upload-rate", rate]);
        let mut c = node.peer();
        c.rx.cut = cut;
        let t0 = Instant::now();
        c.fetch_expect(&hashes[0], &original[..PIECE]);
        c.fetch_expect(&hashes[1], &original[PIECE..]);
        c.send(&ask(&node.root));
        let f = c.recv();
        assert!(f.is(GIVE) && f.msgs.len() == 1, "the manifest: {}", f.show());
        eprintln!("--max-upload-rate {rate}: two pieces in messages of {cut} bytes in {:?}", t0.elapsed());
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Floods with bounded memory (5.5)
// ---------------------------------------------------------------------------------------------

const RSS_LIMIT_KIB: u64 = 150 * 1024;
/// How long a well-behaved client may wait for a GIVE while another connection floods the node.
const SERVE_LIMIT: Duration = Duration::from_secs(10);

/// A random address in 2001:db8::/32, the IPv6 documentation prefix (nobody's real host).
fn doc_addr(rng: &mut Rng) -> Ipv6Addr {
    let mut o = [0u8; 16];
    rng.fill(&mut o);
    o[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    Ipv6Addr::from(o)
}

type FloodSetup = (tempfile::TempDir, Node, Vec<(Hash, Vec<u8>)>, Conn, Conn, Rng);

/// A node seeding a 2-piece file, its pieces, a well-behaved connection and a flooding one, both
/// set up before any flood (outbound connections the node may make share the connection limit).
fn flood_setup(seed: u64) -> FloodSetup {
    let dir = tempfile::tempdir().unwrap();
    let (file, original) = write_file(dir.path(), "two.bin", PIECE + 4321, seed);
    let pieces: Vec<(Hash, Vec<u8>)> = original.chunks(PIECE).map(|d| (sha(d), d.to_vec())).collect();
    let node = Node::start(&file, &[]);
    let mut good = node.peer();
    good.fetch_expect(&pieces[0].0, &pieces[0].1);
    let flooder = node.peer();
    (dir, node, pieces, good, flooder, Rng::new(seed + 100))
}

/// Watches a node during a flood: samples its VmRSS every 10 ms, and has a well-behaved client
/// fetch a piece every 200 ms, each GIVE due within [`SERVE_LIMIT`].
struct Watch {
    stop: Arc<AtomicBool>,
    rss_before: u64,
    sampler: thread::JoinHandle<u64>,
    client: thread::JoinHandle<(Conn, usize, Duration, Option<String>)>,
}

struct WatchReport {
    rss_before: u64,
    rss_max: u64,
    rounds: usize,
    slowest: Duration,
    failure: Option<String>,
    good: Conn,
}

impl Watch {
    fn start(node: &Node, mut good: Conn, pieces: &[(Hash, Vec<u8>)]) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let pid = node.child.id();
        let sampler = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut most = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Some(rss) = try_rss_kib(pid) else { break };
                    most = most.max(rss);
                    thread::sleep(Duration::from_millis(10));
                }
                most
            })
        };
        let client = {
            let stop = stop.clone();
            let pieces = pieces.to_vec();
            thread::spawn(move || {
                good.rx.set_timeout(SERVE_LIMIT);
                let (mut rounds, mut slowest, mut failure) = (0, Duration::ZERO, None);
                while !stop.load(Ordering::Relaxed) {
                    let (h, data) = &pieces[rounds % pieces.len()];
                    let t = Instant::now();
                    if let Err(e) = good.try_fetch(h, data) {
                        failure = Some(format!("{e} (after {:?})", t.elapsed()));
                        break;
                    }
                    slowest = slowest.max(t.elapsed());
                    rounds += 1;
                    thread::sleep(Duration::from_millis(200));
                }
                good.rx.set_timeout(IO_TIMEOUT);
                (good, rounds, slowest, failure)
            })
        };
        Watch { stop, rss_before: node.rss_kib(), sampler, client }
    }

    fn finish(self) -> WatchReport {
        self.stop.store(true, Ordering::Relaxed);
        let rss_max = join(self.sampler);
        let (good, rounds, slowest, failure) = join(self.client);
        WatchReport { rss_before: self.rss_before, rss_max, rounds, slowest, failure, good }
    }
}

impl WatchReport {
    /// What went wrong during the flood, if anything.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.rss_max == 0 || self.rss_max >= RSS_LIMIT_KIB {
            problems.push(format!("the node's VmRSS reached {} KiB (limit {RSS_LIMIT_KIB} KiB)", self.rss_max));
        }
        if let Some(e) = &self.failure {
            problems.push(format!("the well-behaved client was not served within {SERVE_LIMIT:?}: {e}"));
        }
        if self.rounds == 0 && self.failure.is_none() {
            problems.push("the well-behaved client got no GIVE during the flood".to_owned());
        }
        problems
    }

    fn show(&self) -> String {
        format!(
            "VmRSS {} KiB before, at most {} KiB; the well-behaved client got {} GIVEs, slowest {:?}",
            self.rss_before, self.rss_max, self.rounds, self.slowest
        )
    }
}

/// (a) 3,000 PEERS frames of 50 random node ids and addresses each (7.5 MB), then an ASK whose
/// DONT_HAVE shows that every PEERS frame has been read.
#[test]
fn flood_of_peers_frames_keeps_memory_bounded_and_others_served() {
    let (_dir, mut node, pieces, good, mut flooder, mut rng) = flood_setup(8);
    let watch = Watch::start(&node, good, &pieces);

    let start = Instant::now();
    let probe = rng.hash();
    let writer = {
        let mut w = Tx {
            s: flooder.tx.s.try_clone().unwrap(),
            gcm: Gcm { key: flooder.tx.gcm.key.clone(), n: flooder.tx.gcm.n },
        };
        let mut rng = Rng::new(rng.next_u64());
        thread::spawn(move || -> io::Result<()> {
            let mut batch = Vec::with_capacity(100 * 2505);
            for i in 0..3_000 {
                let entries: Vec<Entry> = (0..50).map(|_| (rng.hash(), doc_addr(&mut rng), 9)).collect();
                batch.extend_from_slice(&peers(&entries));
                if i % 100 == 99 {
                    w.try_send(&batch)?;
                    batch.clear();
                }
            }
            w.try_send(&ask(&probe))?;
            Ok(())
        })
    };
    let digested = flooder.wait_for(&dont_have(&probe), start, IO_TIMEOUT);
    let report = watch.finish();
    eprintln!("PEERS flood: probe answered: {digested:?}; {}", report.show());
    let mut problems = report.problems();
    if let Err(e) = &digested {
        problems.push(format!(
            "the DONT_HAVE for an ASK sent after 3,000 PEERS frames did not come within {IO_TIMEOUT:?}: {e}"
        ));
    }
    assert!(problems.is_empty(), "PEERS flood:\n{}", problems.join("\n"));
    join(writer).expect("writing the PEERS flood");
    let mut good = report.good;
    good.fetch_expect(&pieces[1].0, &pieces[1].1);
    assert!(node.alive(), "the node exited");
}

/// (b) Unsolicited GIVEs of 1 KiB (right hashes): 1024 are tolerated, the next one closes the
/// connection with REJECT(5), without a ban (5.5).
#[test]
fn flood_of_unsolicited_gives_ends_with_reject_5_at_the_1025th() {
    let (_dir, mut node, pieces, good, mut flooder, mut rng) = flood_setup(9);
    let me = Identity::random();
    drop(flooder);
    flooder = node.peer_as(&me);
    let watch = Watch::start(&node, good, &pieces);

    let gives: Vec<u8> = (0..1024).flat_map(|_| give(&rng.bytes(1024))).collect();
    let mut w = flooder.tx.s.try_clone().unwrap();
    let wire = flooder.tx.seal_cut(&gives, MAX_PLAIN);
    let writer = thread::spawn(move || w.write_all(&wire));
    join(writer).unwrap();
    flooder.probe(&mut rng); // all 1024 read, the connection still open
    flooder.send(&give(&rng.bytes(1024)));
    let f = flooder.expect_reject_then_close(MISBEHAVING, "the 1025th unsolicited GIVE");
    let report = watch.finish();
    eprintln!("GIVE flood: {}; {}", f.show(), report.show());
    let problems = report.problems();
    assert!(problems.is_empty(), "GIVE flood:\n{}", problems.join("\n"));

    let mut good = report.good;
    good.fetch_expect(&pieces[1].0, &pieces[1].1);
    // No ban: the same identity is welcome again.
    drop(flooder);
    node.peer_again_as(&me).fetch_expect(&pieces[0].0, &pieces[0].1);
    assert!(node.alive(), "the node exited");
}

/// (c) 20,000 ASKs for random hashes without reading the replies for a while (the node must push
/// back, 5.5), then each answered by exactly one DONT_HAVE, in ASK order.
#[test]
fn flood_of_asks_keeps_memory_bounded_and_is_answered_in_order() {
    let (_dir, mut node, pieces, good, mut flooder, mut rng) = flood_setup(10);
    let watch = Watch::start(&node, good, &pieces);

    let start = Instant::now();
    let asked: Vec<Hash> = (0..20_000).map(|_| rng.hash()).collect();
    let asks: Vec<u8> = asked.iter().flat_map(ask).collect();
    let wire = flooder.tx.seal_cut(&asks, MAX_PLAIN);
    let mut w = flooder.tx.s.try_clone().unwrap();
    let writer = thread::spawn(move || w.write_all(&wire));
    thread::sleep(Duration::from_secs(1)); // deliberately not reading: back-pressure builds up
    for (i, h) in asked.iter().enumerate() {
        let f = flooder.recv();
        assert_eq!(f.wire(), dont_have(h), "ASK flood: answer {i}: {}", f.show());
    }
    join(writer).expect("writing the ASK flood");
    let took = start.elapsed();
    let report = watch.finish();
    eprintln!("ASK flood: 20,000 DONT_HAVEs after {took:?}; {}", report.show());
    let problems = report.problems();
    assert!(problems.is_empty(), "ASK flood:\n{}", problems.join("\n"));

    let mut good = report.good;
    good.fetch_expect(&pieces[1].0, &pieces[1].1);
    flooder.fetch_expect(&pieces[0].0, &pieces[0].1);
    assert!(node.alive(), "the node exited");
}

// ---------------------------------------------------------------------------------------------
// 9. The node as initiator: peer exchange, duplicates across directions, pins (5.1-5.4)
// ---------------------------------------------------------------------------------------------

fn entry(id: &Hash, port: u16) -> Entry {
    (*id, Ipv6Addr::LOCALHOST, port)
}

/// An identity whose node id compares with `than` as `order` (node ids compared bytewise, 5.2).
fn identity_ordered(than: &Hash, order: std::cmp::Ordering) -> Identity {
    loop {
        let me = Identity::random();
        if me.id().cmp(than) == order {
            return me;
        }
    }
}

fn peer_arg(me: &Identity, port: u16) -> String {
    format!("{}@[::1]:{port}", hex(&me.id()))
}

#[test]
fn peer_exchange_and_the_duplicate_rule_across_directions() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(30);
    // The node's identity in the middle of the id space, one of ours below it, one above.
    let (node_secret, node_id) = loop {
        let secret = random32();
        let id = Identity::from_secret(&secret).id();
        if (0x40..0xc0).contains(&id[0]) {
            break (secret, id);
        }
    };
    let low = identity_ordered(&node_id, std::cmp::Ordering::Less);
    let high = identity_ordered(&node_id, std::cmp::Ordering::Greater);
    let (l_low, l_high) = (Listener::new(), Listener::new());
    let node = Node::start_as(
        &small_file(dir.path(), 30),
        &["--peer", &peer_arg(&low, l_low.port), "--peer", &peer_arg(&high, l_high.port), "--hello-timeout", "30"],
        Some(&node_secret),
    );
    assert_eq!(node.id, node_id);

    // A client before any dial has completed: empty PEERS.
    let mut a = node.dial();
    let (_, entries) = a.handshake(&Identity::random(), Some(node.port));
    assert!(entries.is_empty(), "PEERS before any verified dial: {entries:?}");

    // The node dials our first listener: HELLO (its listen port, shareable), PEERS empty (it
    // verified nobody yet); then every other live connection learns of us at once (5.4).
    let (mut c_low, h, entries) = l_low.accept_peer(&low, IO_TIMEOUT);
    assert_eq!((h.id, h.port, h.flags), (node_id, node.port, 1), "the node's HELLO on its dial");
    assert!(entries.is_empty(), "PEERS to the first verified dial: {entries:?}");
    let f = a.recv();
    assert!(f.is(PEERS), "immediate discovery: expected PEERS, got {}", f.show());
    assert_eq!(parse_peers(&f.body), [entry(&low.id(), l_low.port)], "immediate discovery of the first dial");

    // The second dial: its PEERS lists the first; the others learn of the second.
    let (mut c_high, _, entries) = l_high.accept_peer(&high, IO_TIMEOUT);
    assert_eq!(entries, [entry(&low.id(), l_low.port)], "PEERS to the second dial");
    for (who, c) in [("the client", &mut a), ("the first dial", &mut c_low)] {
        let f = c.recv();
        assert!(f.is(PEERS), "{who}: expected PEERS, got {}", f.show());
        assert_eq!(
            parse_peers(&f.body),
            [entry(&high.id(), l_high.port)],
            "{who}: immediate discovery of the second dial"
        );
    }

    // A new client gets both, most recently contacted first.
    let mut c = node.dial();
    let (_, entries) = c.handshake(&Identity::random(), Some(node.port));
    assert_eq!(entries, [entry(&high.id(), l_high.port), entry(&low.id(), l_low.port)], "PEERS to a new client");

    // 5.2 with `low` < node id: the connection dialled by `low` (ours, inbound) stays; the
    // node's dial gets REJECT(1) with the reason.
    let reason = "already connected (the connection dialled by the smaller node id stays)";
    let mut d_low = node.dial();
    let (_, entries) = d_low.handshake(&low, Some(node.port));
    assert_eq!(entries, [entry(&high.id(), l_high.port)], "PEERS to `low` leaves out its own entry");
    let f = c_low.expect_reject_then_close(DUPLICATE, "the node's dial, when the smaller id dials in");
    assert_eq!((f.retry_after(), f.reason().as_str()), (0, reason), "{}", f.show());
    d_low.probe(&mut rng);

    // With `high` > node id: the node's own dial stays; ours gets REJECT(1) after the HELLOs.
    let mut d_high = node.dial();
    d_high.send(&high.hello(&d_high.hh, 0, 0));
    d_high.expect_hello(Some(node.port));
    let f = d_high.expect_reject_then_close(DUPLICATE, "dialling in while the node's dial to us is live");
    assert_eq!((f.retry_after(), f.reason().as_str()), (0, reason), "{}", f.show());
    c_high.probe(&mut rng);
    a.probe(&mut rng);
}

/// A `pex fetch` process, killed on drop; its stderr shown if the test fails.
struct Fetch {
    child: super::Proc,
    dir: tempfile::TempDir,
}

impl Fetch {
    fn start(root: &Hash, peers: &[String], extra: &[&str]) -> Fetch {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(PEX);
        cmd.arg("fetch")
            .arg(hex(root))
            .args(["--quiet", "--listen", "[::1]:0", "--data-dir"])
            .arg(dir.path().join("data"));
        cmd.arg("-o").arg(dir.path().join("out"));
        for p in peers {
            cmd.args(["--peer", p]);
        }
        cmd.args(extra).stdin(Stdio::null()).stdout(Stdio::null());
        cmd.stderr(fs::File::create(dir.path().join("stderr.log")).unwrap());
        Fetch { child: super::Proc::spawn(&mut cmd), dir }
    }

    fn output(&self) -> Option<Vec<u8>> {
        fs::read(self.dir.path().join("out")).ok()
    }
}

impl Drop for Fetch {
    fn drop(&mut self) {
        self.child.kill();
        if thread::panicking() {
            print_log_tail("pex fetch", &self.dir.path().join("stderr.log"));
        }
    }
}

/// What an independent seeder saw of a downloader (section 7).
#[derive(Default)]
struct Seen {
    asks: Vec<Hash>,
    bitfields: Vec<(Hash, u32, Vec<u8>)>,
    /// Pieces asked for before the first BITFIELD arrived.
    piece_asks_before_bitfield: usize,
    haves: Vec<(Hash, u32)>,
    cancels: Vec<Hash>,
    other: Vec<String>,
    end: String,
}

/// Serves `blobs` on `c` until the downloader goes (section 7 from the seeder's side).
fn serve(c: &mut Conn, blobs: &HashMap<Hash, Vec<u8>>, pieces: &HashSet<Hash>) -> Seen {
    let mut seen = Seen::default();
    loop {
        match c.try_recv() {
            Ok(Some(f)) => match f.ty {
                None => {}
                Some(ASK) => {
                    let h = f.hash();
                    seen.asks.push(h);
                    if pieces.contains(&h) && seen.bitfields.is_empty() {
                        seen.piece_asks_before_bitfield += 1;
                    }
                    // Unlike pex, cut at odd places, after an empty message (2.4: receivers
                    // accept any cutting).
                    let answer = match blobs.get(&h) {
                        Some(data) => give(data),
                        None => dont_have(&h),
                    };
                    let wire = [c.tx.seal(&[]), c.tx.seal_cut(&answer, 7777)].concat();
                    c.tx.send_raw(&wire);
                }
                Some(BITFIELD) => seen.bitfields.push((f.hash(), f.first(), f.body[36..].to_vec())),
                Some(HAVE) => seen.haves.push((f.hash(), f.first())),
                Some(CANCEL) => seen.cancels.push(f.hash()),
                _ => seen.other.push(f.show()),
            },
            Ok(None) => {
                seen.end = "EOF".to_owned();
                break;
            }
            Err(e) if is_reset(&e) => {
                seen.end = "reset".to_owned();
                break;
            }
            Err(e) => {
                seen.end = format!("error: {e}");
                break;
            }
        }
    }
    seen
}

#[test]
fn pex_fetch_downloads_from_an_independent_seeder() {
    // Six pieces, the last short; pieces 1 and 4 identical.
    let size = 5 * PIECE + 777;
    let mut data = Rng::new(31).bytes(size);
    data.copy_within(PIECE..2 * PIECE, 4 * PIECE);
    let (manifest, lists) = make_manifest("served.bin", &data);
    let root = sha(&manifest);
    let hashes = piece_hashes(&data);
    let p = hashes.len();
    let mut blobs: HashMap<Hash, Vec<u8>> = HashMap::new();
    blobs.insert(root, manifest.clone());
    for l in &lists {
        blobs.insert(sha(l), l.clone());
    }
    for chunk in data.chunks(PIECE) {
        blobs.insert(sha(chunk), chunk.to_vec());
    }
    let piece_set: HashSet<Hash> = hashes.iter().copied().collect();
    assert_eq!(piece_set.len(), p - 1);

    let me = Identity::random();
    let l = Listener::new();
    let mut fetch = Fetch::start(&root, &[peer_arg(&me, l.port)], &[]);
    let (mut c, hello, entries) = l.accept_peer(&me, IO_TIMEOUT);
    assert_ne!(hello.port, 0, "a fetch listening on [::1]:0 sends its port");
    assert!(entries.is_empty(), "the fetcher's PEERS: {entries:?}");
    // We hold every piece, told as a whole BITFIELD missing the last piece and a HAVE for it:
    // so the fetcher counts us as interested and owes us HAVEs (5.7).
    c.send(&[bitfield(&root, 0, &bits_where(p, |i| i + 1 < p)), have(&root, p as u32 - 1)].concat());
    let seen = serve(&mut c, &blobs, &piece_set);
    let status = fetch.child.wait_within(STARTUP);
    eprintln!(
        "pex fetch: {status}; it ASKed {} blobs, sent {} BITFIELD(s), {} HAVEs, {} CANCELs, {:?}, then {}",
        seen.asks.len(),
        seen.bitfields.len(),
        seen.haves.len(),
        seen.cancels.len(),
        seen.other,
        seen.end
    );
    assert!(status.success(), "pex fetch failed: {status}");
    assert!(fetch.output().is_some_and(|out| out == data), "the fetched file differs");

    // Section 7: the root first, then the list, each piece blob once (identical pieces once).
    assert_eq!(seen.asks.first(), Some(&root), "the first ASK is the root");
    assert_eq!(seen.asks.get(1), Some(&sha(&lists[0])), "then the hash list");
    let piece_asks: Vec<&Hash> = seen.asks[2..].iter().collect();
    assert_eq!(piece_asks.len(), p - 1, "each distinct piece asked once: {} ASKs", piece_asks.len());
    assert_eq!(piece_asks.iter().copied().copied().collect::<HashSet<Hash>>(), piece_set);
    // Its BITFIELD: all zero, from piece 0, ⌈P/8⌉ bytes, sent once it had the lists.
    assert_eq!(seen.bitfields.len(), 1, "BITFIELDs from the fetcher");
    assert_eq!(seen.bitfields[0], (root, 0, vec![0; p.div_ceil(8)]), "the fetcher's BITFIELD");
    assert_eq!(seen.piece_asks_before_bitfield, 0, "pieces were asked before the fetcher's BITFIELD (7, step 3)");
    // One HAVE per piece index (the twice-occurring blob yields two).
    let mut have_indices: Vec<u32> = seen
        .haves
        .iter()
        .map(|(r, i)| {
            assert_eq!(*r, root);
            *i
        })
        .collect();
    have_indices.sort_unstable();
    assert_eq!(have_indices, (0..p as u32).collect::<Vec<_>>(), "HAVEs from the fetcher");
    // Done, it shuts down: REJECT(6), retry-after 10 (5.9), then the close.
    let last = seen.other.last().map(String::as_str).unwrap_or("nothing");
    assert!(last.starts_with("REJECT(6) retry-after 10"), "the fetcher's last frame: {last}");
    assert!(
        seen.other[..seen.other.len() - 1].iter().all(|f| f.starts_with("PEERS")),
        "other frames: {:?}",
        seen.other
    );
    assert_eq!(seen.end, "EOF");
}

#[test]
fn pex_fetch_drops_a_v1_responder_and_a_node_that_proves_another_id() {
    let v1 = Listener::new();
    let pinned = Listener::new();
    let impostor = Identity::random();
    let expected = Identity::random();
    let root = Rng::new(32).hash();
    let fetch = Fetch::start(
        &root,
        &[format!("[::1]:{}", v1.port), peer_arg(&expected, pinned.port)],
        &["--connect-timeout", "10", "--give-up-after", "10"],
    );

    // Two dials of each: every one ends the same way (user-given addresses are redialled).
    let v1_side = thread::spawn(move || {
        for dial in 0..2 {
            let mut s = v1.accept(IO_TIMEOUT);
            let mut m1 = [0; 34];
            s.read_exact(&mut m1).unwrap();
            assert_eq!(m1[..2], [0x00, 0x20], "dial {dial}: handshake message 1");
            // A v1 node's HELLO where message 2 should be: the initiator closes, writing nothing.
            s.write_all(&unhex(
                "000000270350455801000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2328",
            ))
            .unwrap();
            let got = read_to_close(&mut s).unwrap();
            assert!(got.is_empty(), "dial {dial}: after a v1 HELLO the initiator wrote {}", hex(&got));
        }
    });
    let pin_side = thread::spawn(move || {
        for dial in 0..2 {
            let mut c = Conn::respond(pinned.accept(IO_TIMEOUT));
            let hello = impostor.hello(&c.hh, pinned.port, 1);
            c.send(&hello);
            // 5.1 step 5.1: the pin does not match: closed without any further frame.
            let got = transcript(&mut c, None);
            assert_eq!(got, ["HELLO", "EOF"], "dial {dial}: a pinned address proving another id");
        }
    });
    join(v1_side);
    join(pin_side);
    drop(fetch);
}

#[test]
fn pex_fetch_bans_a_peer_that_gives_a_bad_manifest() {
    let me = Identity::random();
    let l = Listener::new();
    let root = Rng::new(33).hash();
    let fetch = Fetch::start(&root, &[peer_arg(&me, l.port)], &["--give-up-after", "60"]);
    let (mut c, hello, _) = l.accept_peer(&me, IO_TIMEOUT);
    let f = c.recv();
    assert_eq!(f.wire(), ask(&root), "the fetcher's first request");
    // Data that does not hash to the root (7 step 1, 5.5): REJECT(5) and a ban.
    c.send(&give_as(&root, b"not the manifest"));
    let f = c.expect_reject_then_close(MISBEHAVING, "a GIVE of the root with other data");
    eprintln!("bad manifest: {}", f.show());

    // The ban is on the node id wherever it connects from (5.9): dialling in as `me` gets
    // REJECT(5) after the HELLOs; another identity is welcome.
    let mut c = Conn::dial(hello.port);
    c.send(&me.hello(&c.hh, 0, 0));
    c.expect_hello(Some(hello.port));
    let f = c.expect_reject_then_close(MISBEHAVING, "a banned node id dialling in");
    assert_eq!(f.reason(), "banned", "{}", f.show());
    let mut other = Conn::dial(hello.port);
    other.handshake(&Identity::random(), Some(hello.port));
    drop(fetch);
}

/// 4.3 and 5.4: an address learned from PEERS (IPv4 travels IPv4-mapped) is dialled, and the
/// node id of its entry is pinned to it: another id proven there ends the dial after the HELLOs.
#[test]
fn learned_addresses_are_dialled_and_held_to_their_node_ids() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&small_file(dir.path(), 34), &[]);
    let mut rng = Rng::new(34);
    let (honest, liar, claimed) = (Identity::random(), Identity::random(), Identity::random());
    let (l_honest, l_liar, l_self) =
        (Listener::on("127.0.0.1:0"), Listener::on("127.0.0.1:0"), Listener::on("127.0.0.1:0"));
    let v4 = ipv4("127.0.0.1");
    let mut a = node.peer();
    a.send(&peers(&[(node.id, v4, l_self.port), (honest.id(), v4, l_honest.port), (claimed.id(), v4, l_liar.port)]));

    // The honest entry: dialled over IPv4, set up, kept.
    let (mut c, hello, entries) = l_honest.accept_peer(&honest, IO_TIMEOUT);
    assert_eq!(hello.id, node.id);
    assert!(entries.is_empty(), "PEERS to the first verified dial: {entries:?}");
    c.probe(&mut rng);

    // The entry whose address proves another id: HELLO, then the close without another frame.
    let mut c = Conn::respond(l_liar.accept(IO_TIMEOUT));
    c.send(&liar.hello(&c.hh, l_liar.port, 1));
    assert_eq!(transcript(&mut c, None), ["HELLO", "EOF"], "a learned pin that does not match (5.1 step 5.1)");

    // The client now hears of the honest address, with its node id, decoded as sent.
    let f = a.recv();
    assert!(f.is(PEERS), "immediate discovery: expected PEERS, got {}", f.show());
    assert_eq!(parse_peers(&f.body), [(honest.id(), v4, l_honest.port)]);
    a.probe(&mut rng);

    // The entry with the node's own id was never dialled (a weak check: nothing has come yet).
    assert!(l_self.l.accept().is_err(), "the node dialled an entry carrying its own node id");
}
