//! An independent model of the v2 secure channel, written from
//! docs/PROTOCOL.md section 2 and the Noise specification (revision 34) it
//! cites, not from src/: X25519 (RFC 7748) by hand, the Noise symmetric
//! state, the XX pattern with empty payloads, and the AES-256-GCM transport.
//! SHA-256, HMAC-SHA-256 and AES-256-GCM come from `ring`, Ed25519 from
//! `ed25519-dalek`: primitives, not protocol.
//!
//! Slow and not constant-time: for test vectors only.

use ring::{aead, digest, hmac};

// ---------------------------------------------------------------------------
// X25519: arithmetic modulo p = 2^255 - 19 in five 51-bit limbs.

type Fe = [u64; 5];
const MASK: u64 = (1 << 51) - 1;
const ONE: Fe = [1, 0, 0, 0, 0];
const ZERO: Fe = [0; 5];
/// (A - 2) / 4 for Curve25519's A = 486662 (RFC 7748, section 5).
const A24: Fe = [121_665, 0, 0, 0, 0];

fn fe_load(b: &[u8; 32]) -> Fe {
    let w = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    // Limbs start at bits 0, 51, 102, 153 and 204; bit 255 is dropped (RFC 7748: "mask the most significant bit").
    [w(0) & MASK, (w(6) >> 3) & MASK, (w(12) >> 6) & MASK, (w(19) >> 1) & MASK, (w(24) >> 12) & MASK]
}

fn carry(mut r: [u128; 5]) -> Fe {
    for _ in 0..2 {
        for i in 0..4 {
            r[i + 1] += r[i] >> 51;
            r[i] &= MASK as u128;
        }
        r[0] += (r[4] >> 51) * 19;
        r[4] &= MASK as u128;
    }
    r.map(|x| x as u64)
}

fn fe_store(f: Fe) -> [u8; 32] {
    let mut h = carry(f.map(u128::from));
    // h < 2^255 + small: subtract p once if h >= p.
    let mut q = (h[0] + 19) >> 51;
    for limb in &h[1..] {
        q = (limb + q) >> 51;
    }
    h[0] += 19 * q;
    for i in 0..4 {
        h[i + 1] += h[i] >> 51;
        h[i] &= MASK;
    }
    h[4] &= MASK;
    let mut out = [0u8; 32];
    let (mut acc, mut bits, mut at) = (0u128, 0, 0);
    for limb in h {
        acc |= (limb as u128) << bits;
        bits += 51;
        while bits >= 8 {
            out[at] = acc as u8;
            acc >>= 8;
            bits -= 8;
            at += 1;
        }
    }
    out[at] = acc as u8;
    out
}

fn add(a: Fe, b: Fe) -> Fe {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4]]
}

/// a - b + 4p, for `b` with limbs below 2^53.
fn sub(a: Fe, b: Fe) -> Fe {
    let four_p = [(MASK - 18) * 4, MASK * 4, MASK * 4, MASK * 4, MASK * 4];
    [0, 1, 2, 3, 4].map(|i| a[i] + four_p[i] - b[i])
}

fn mul(a: Fe, b: Fe) -> Fe {
    let m = |x: u64, y: u64| x as u128 * y as u128;
    let [b0, b1, b2, b3, b4] = b;
    let (c1, c2, c3, c4) = (b1 * 19, b2 * 19, b3 * 19, b4 * 19);
    carry([
        m(a[0], b0) + m(a[1], c4) + m(a[2], c3) + m(a[3], c2) + m(a[4], c1),
        m(a[0], b1) + m(a[1], b0) + m(a[2], c4) + m(a[3], c3) + m(a[4], c2),
        m(a[0], b2) + m(a[1], b1) + m(a[2], b0) + m(a[3], c4) + m(a[4], c3),
        m(a[0], b3) + m(a[1], b2) + m(a[2], b1) + m(a[3], b0) + m(a[4], c4),
        m(a[0], b4) + m(a[1], b3) + m(a[2], b2) + m(a[3], b1) + m(a[4], b0),
    ])
}

/// a^(p-2) = 1/a.
fn invert(a: Fe) -> Fe {
    let mut e = [0xffu8; 32];
    e[0] = 0xeb;
    e[31] = 0x7f;
    let mut r = ONE;
    for i in (0..255).rev() {
        r = mul(r, r);
        if (e[i / 8] >> (i % 8)) & 1 == 1 {
            r = mul(r, a);
        }
    }
    r
}

/// X25519(k, u) of RFC 7748, section 5: the Montgomery ladder.
pub fn x25519(scalar: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    let mut k = *scalar;
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    let x1 = fe_load(u);
    let (mut x2, mut z2, mut x3, mut z3) = (ONE, ZERO, x1, ONE);
    let mut swap = 0;
    for t in (0..255).rev() {
        let bit = (k[t / 8] >> (t % 8)) & 1;
        swap ^= bit;
        if swap == 1 {
            std::mem::swap(&mut x2, &mut x3);
            std::mem::swap(&mut z2, &mut z3);
        }
        swap = bit;
        let a = add(x2, z2);
        let aa = mul(a, a);
        let b = sub(x2, z2);
        let bb = mul(b, b);
        let e = sub(aa, bb);
        let c = add(x3, z3);
        let d = sub(x3, z3);
        let da = mul(d, a);
        let cb = mul(c, b);
        let s = add(da, cb);
        x3 = mul(s, s);
        let df = sub(da, cb);
        z3 = mul(x1, mul(df, df));
        x2 = mul(aa, bb);
        z2 = mul(e, add(aa, mul(A24, e)));
    }
    if swap == 1 {
        std::mem::swap(&mut x2, &mut x3);
        std::mem::swap(&mut z2, &mut z3);
    }
    fe_store(mul(x2, invert(z2)))
}

/// The X25519 public key of a secret: X25519(secret, 9).
pub fn public(secret: &[u8; 32]) -> [u8; 32] {
    let mut nine = [0u8; 32];
    nine[0] = 9;
    x25519(secret, &nine)
}

// ---------------------------------------------------------------------------
// Noise: hash, HKDF, the symmetric state.

pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish().as_ref().try_into().unwrap()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    for p in parts {
        ctx.update(p);
    }
    ctx.sign().as_ref().try_into().unwrap()
}

/// Noise's HKDF with two outputs.
fn hkdf2(ck: &[u8; 32], ikm: &[u8]) -> ([u8; 32], [u8; 32]) {
    let temp = hmac(ck, &[ikm]);
    let out1 = hmac(&temp, &[&[1]]);
    let out2 = hmac(&temp, &[&out1, &[2]]);
    (out1, out2)
}

/// The 12-byte AES-GCM nonce of Noise: 4 zero bytes, then `n` big-endian.
pub fn nonce(n: u64) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[4..].copy_from_slice(&n.to_be_bytes());
    v
}

/// ENCRYPT(k, n, ad, plaintext): ciphertext followed by the 16-byte tag.
pub fn seal(key: &[u8; 32], n: u64, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, key).unwrap());
    let mut v = plaintext.to_vec();
    key.seal_in_place_append_tag(aead::Nonce::assume_unique_for_key(nonce(n)), aead::Aad::from(ad), &mut v).unwrap();
    v
}

/// DECRYPT(k, n, ad, ciphertext), `None` if the tag does not verify.
pub fn open(key: &[u8; 32], n: u64, ad: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, key).unwrap());
    let mut v = ciphertext.to_vec();
    let len = key.open_in_place(aead::Nonce::assume_unique_for_key(nonce(n)), aead::Aad::from(ad), &mut v).ok()?.len();
    v.truncate(len);
    Some(v)
}

struct Symmetric {
    ck: [u8; 32],
    h: [u8; 32],
    k: Option<[u8; 32]>,
    n: u64,
}

impl Symmetric {
    fn new(protocol_name: &[u8], prologue: &[u8]) -> Symmetric {
        let mut h = [0u8; 32];
        if protocol_name.len() <= 32 {
            h[..protocol_name.len()].copy_from_slice(protocol_name);
        } else {
            h = sha256(&[protocol_name]);
        }
        let mut s = Symmetric { ck: h, h, k: None, n: 0 };
        s.mix_hash(prologue);
        s
    }

    fn mix_hash(&mut self, data: &[u8]) {
        self.h = sha256(&[&self.h, data]);
    }

    fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, k) = hkdf2(&self.ck, ikm);
        self.ck = ck;
        self.k = Some(k);
        self.n = 0;
    }

    fn encrypt_and_hash(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let out = match &self.k {
            Some(k) => {
                let c = seal(k, self.n, &self.h, plaintext);
                self.n += 1;
                c
            }
            None => plaintext.to_vec(),
        };
        self.mix_hash(&out);
        out
    }
}

/// One side's X25519 secrets.
pub struct Party {
    pub static_secret: [u8; 32],
    pub ephemeral_secret: [u8; 32],
}

/// What an XX handshake with empty payloads puts on the wire, and what it yields.
pub struct Transcript {
    /// The three Noise messages, without their u16 length prefixes.
    pub messages: [Vec<u8>; 3],
    pub handshake_hash: [u8; 32],
    /// Split(): the key of the initiator's sending direction, then the responder's.
    pub initiator_to_responder: [u8; 32],
    pub responder_to_initiator: [u8; 32],
}

/// Noise_XX_25519_AESGCM_SHA256 between `i` (initiator) and `r`, with empty payloads.
pub fn xx(protocol_name: &str, prologue: &[u8], i: &Party, r: &Party) -> Transcript {
    let (ie, is) = (public(&i.ephemeral_secret), public(&i.static_secret));
    let (re, rs) = (public(&r.ephemeral_secret), public(&r.static_secret));
    let dh = |secret: &[u8; 32], public: &[u8; 32], theirs: (&[u8; 32], &[u8; 32])| {
        let ours = x25519(secret, public);
        assert_eq!(ours, x25519(theirs.0, theirs.1), "DH is the same from both sides");
        ours
    };
    let mut s = Symmetric::new(protocol_name.as_bytes(), prologue);
    // -> e
    s.mix_hash(&ie);
    let m1 = [&ie[..], &s.encrypt_and_hash(&[])].concat();
    // <- e, ee, s, es
    s.mix_hash(&re);
    s.mix_key(&dh(&i.ephemeral_secret, &re, (&r.ephemeral_secret, &ie)));
    let enc_rs = s.encrypt_and_hash(&rs);
    s.mix_key(&dh(&i.ephemeral_secret, &rs, (&r.static_secret, &ie)));
    let m2 = [&re[..], &enc_rs, &s.encrypt_and_hash(&[])].concat();
    // -> s, se
    let enc_is = s.encrypt_and_hash(&is);
    s.mix_key(&dh(&i.static_secret, &re, (&r.ephemeral_secret, &is)));
    let m3 = [&enc_is[..], &s.encrypt_and_hash(&[])].concat();
    let (k1, k2) = hkdf2(&s.ck, &[]);
    Transcript { messages: [m1, m2, m3], handshake_hash: s.h, initiator_to_responder: k1, responder_to_initiator: k2 }
}

/// The bytes a HELLO signature covers: "pex/2 hello", then the handshake hash.
pub fn hello_signature(identity_secret: &[u8; 32], handshake_hash: &[u8; 32]) -> [u8; 64] {
    use ed25519_dalek::Signer;
    let key = ed25519_dalek::SigningKey::from_bytes(identity_secret);
    key.sign(&[&b"pex/2 hello"[..], handshake_hash].concat()).to_bytes()
}

/// A room MESSAGE signature: over "pex/2 room message", room, id, payload.
pub fn room_signature(identity_secret: &[u8; 32], room: &[u8; 32], id: &[u8; 16], payload: &[u8]) -> [u8; 64] {
    use ed25519_dalek::Signer;
    let key = ed25519_dalek::SigningKey::from_bytes(identity_secret);
    key.sign(&[&b"pex/2 room message"[..], room, id, payload].concat()).to_bytes()
}

/// The signature of a room PRESENCE (docs/PROTOCOL.md 4.16): over
/// "pex/2 room presence" || room || seq (8 bytes, big-endian) || state.
pub fn presence_signature(identity_secret: &[u8; 32], room: &[u8; 32], seq: u64, state: u8) -> [u8; 64] {
    use ed25519_dalek::Signer;
    let key = ed25519_dalek::SigningKey::from_bytes(identity_secret);
    key.sign(&[&b"pex/2 room presence"[..], room, &seq.to_be_bytes(), &[state]].concat()).to_bytes()
}

/// The node id of an identity secret: its Ed25519 public key.
pub fn node_id(identity_secret: &[u8; 32]) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(identity_secret).verifying_key().to_bytes()
}

#[test]
fn x25519_meets_rfc_7748() {
    let h = |s: &str| -> [u8; 32] { crate::common::hex(s).try_into().unwrap() };
    // RFC 7748 section 5.2, the first single-iteration vector.
    let k = h("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4");
    let u = h("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c");
    assert_eq!(x25519(&k, &u), h("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"));
    // The second, whose u has its top bit set (it must be ignored).
    let k = h("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d");
    let u = h("e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493");
    assert_eq!(x25519(&k, &u), h("95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"));
    // RFC 7748 section 6.1: Alice's and Bob's keys and their shared secret.
    let a = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    let b = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
    assert_eq!(public(&a), h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"));
    assert_eq!(public(&b), h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"));
    assert_eq!(x25519(&a, &public(&b)), h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"));
}
