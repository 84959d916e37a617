//! The Noise handshake of 2.3 by hand: HMAC, HKDF, AES-256-GCM and the XX pattern.

use super::*;

/// HMAC-SHA-256 (RFC 2104) of the concatenation of `parts`.
pub(super) fn hmac(key: &[u8], parts: &[&[u8]]) -> Hash {
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
pub(super) fn hkdf(ck: &Hash, ikm: &[u8]) -> (Hash, Hash) {
    let t = hmac(ck, &[ikm]);
    let out1 = hmac(&t, &[&[1]]);
    let out2 = hmac(&t, &[&out1, &[2]]);
    (out1, out2)
}

/// X25519 (RFC 7748): `DH(secret, public)`; the only primitive not written here.
pub(super) fn x25519(secret: &Hash, public: &[u8]) -> Hash {
    use snow::resolvers::{CryptoResolver, DefaultResolver};
    let mut dh = DefaultResolver.resolve_dh(&snow::params::DHChoice::Curve25519).unwrap();
    dh.set(secret);
    let mut out = [0; 32];
    dh.dh(public, &mut out).expect("X25519");
    out
}

/// `X25519(secret, 9)`: the public key of an X25519 secret.
pub(super) fn x25519_public(secret: &Hash) -> Hash {
    let mut nine = [0; 32];
    nine[0] = 9;
    x25519(secret, &nine)
}

/// One direction of AES-256-GCM with the nonce layout of 2.3: `00 00 00 00` and a u64 BE counter.
pub(super) struct Gcm {
    pub(super) key: LessSafeKey,
    pub(super) n: u64,
}

impl Gcm {
    pub(super) fn new(k: &Hash) -> Gcm {
        Gcm { key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).unwrap()), n: 0 }
    }

    pub(super) fn nonce(n: u64) -> Nonce {
        let mut b = [0; 12];
        b[4..].copy_from_slice(&n.to_be_bytes());
        Nonce::assume_unique_for_key(b)
    }

    /// `ENCRYPT(k, n, ad, p)`: ciphertext then tag; does not advance the counter.
    pub(super) fn seal_at(&self, n: u64, ad: &[u8], p: &[u8]) -> Vec<u8> {
        let mut buf = p.to_vec();
        self.key.seal_in_place_append_tag(Gcm::nonce(n), Aad::from(ad), &mut buf).unwrap();
        buf
    }

    pub(super) fn open_at(&self, n: u64, ad: &[u8], c: &[u8]) -> Option<Vec<u8>> {
        let mut buf = c.to_vec();
        let len = self.key.open_in_place(Gcm::nonce(n), Aad::from(ad), &mut buf).ok()?.len();
        buf.truncate(len);
        Some(buf)
    }

    pub(super) fn seal(&mut self, ad: &[u8], p: &[u8]) -> Vec<u8> {
        let c = self.seal_at(self.n, ad, p);
        self.n += 1;
        c
    }

    pub(super) fn open(&mut self, ad: &[u8], c: &[u8]) -> Option<Vec<u8>> {
        let p = self.open_at(self.n, ad, c)?;
        self.n += 1;
        Some(p)
    }
}

/// The symmetric state of 2.3: `h`, `ck`, and the key with its nonce once there is one.
pub(super) struct Symmetric {
    pub(super) h: Hash,
    pub(super) ck: Hash,
    pub(super) k: Option<Gcm>,
}

impl Symmetric {
    pub(super) fn new(prologue: &[u8]) -> Symmetric {
        let mut h = [0; 32];
        h[..28].copy_from_slice(PROTOCOL_NAME);
        let mut s = Symmetric { h, ck: h, k: None };
        s.mix_hash(prologue);
        s
    }

    pub(super) fn mix_hash(&mut self, d: &[u8]) {
        self.h = sha_parts(&[&self.h, d]);
    }

    pub(super) fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, k) = hkdf(&self.ck, ikm);
        self.ck = ck;
        self.k = Some(Gcm::new(&k));
    }

    pub(super) fn encrypt_and_hash(&mut self, p: &[u8]) -> Vec<u8> {
        let c = match &mut self.k {
            None => p.to_vec(),
            Some(k) => k.seal(&self.h, p),
        };
        self.mix_hash(&c);
        c
    }

    pub(super) fn decrypt_and_hash(&mut self, c: &[u8]) -> Result<Vec<u8>, String> {
        let p = match &mut self.k {
            None => c.to_vec(),
            Some(k) => k.open(&self.h, c).ok_or("a handshake tag does not verify")?,
        };
        self.mix_hash(c);
        Ok(p)
    }
}

/// One side of the XX handshake of 2.3, with its static and ephemeral X25519 secrets.
pub(super) struct Noise {
    pub(super) sym: Symmetric,
    pub(super) s: Hash,
    pub(super) e: Hash,
    pub(super) re: Hash,
    pub(super) rs: Hash,
}

impl Noise {
    pub(super) fn new(prologue: &[u8], s: Hash, e: Hash) -> Noise {
        Noise { sym: Symmetric::new(prologue), s, e, re: [0; 32], rs: [0; 32] }
    }

    pub(super) fn random() -> Noise {
        Noise::new(PROLOGUE, random32(), random32())
    }

    /// Message 1 (`-> e`), without its length prefix.
    pub(super) fn write1(&mut self) -> Vec<u8> {
        let e_pub = x25519_public(&self.e);
        self.sym.mix_hash(&e_pub);
        [&e_pub[..], &self.sym.encrypt_and_hash(&[])].concat()
    }

    pub(super) fn read1(&mut self, m: &[u8]) -> Result<(), String> {
        if m.len() != 32 {
            return Err(format!("message 1 of {} bytes", m.len()));
        }
        self.re = m.try_into().unwrap();
        self.sym.mix_hash(&self.re.clone());
        self.sym.decrypt_and_hash(&[])?;
        Ok(())
    }

    /// Message 2 (`<- e, ee, s, es`).
    pub(super) fn write2(&mut self) -> Vec<u8> {
        let e_pub = x25519_public(&self.e);
        self.sym.mix_hash(&e_pub);
        self.sym.mix_key(&x25519(&self.e, &self.re));
        let c1 = self.sym.encrypt_and_hash(&x25519_public(&self.s));
        self.sym.mix_key(&x25519(&self.s, &self.re));
        let c2 = self.sym.encrypt_and_hash(&[]);
        [&e_pub[..], &c1, &c2].concat()
    }

    pub(super) fn read2(&mut self, m: &[u8]) -> Result<(), String> {
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
    pub(super) fn write3(&mut self) -> Vec<u8> {
        let c1 = self.sym.encrypt_and_hash(&x25519_public(&self.s));
        self.sym.mix_key(&x25519(&self.s, &self.re));
        let c2 = self.sym.encrypt_and_hash(&[]);
        [c1, c2].concat()
    }

    pub(super) fn read3(&mut self, m: &[u8]) -> Result<(), String> {
        if m.len() != 64 {
            return Err(format!("message 3 of {} bytes", m.len()));
        }
        self.rs = self.sym.decrypt_and_hash(&m[..48])?.try_into().unwrap();
        self.sym.mix_key(&x25519(&self.e, &self.rs));
        self.sym.decrypt_and_hash(&m[48..])?;
        Ok(())
    }

    /// The handshake hash and `(k1, k2)`: `k1` for what the initiator sends, `k2` the responder.
    pub(super) fn finish(&self) -> (Hash, Hash, Hash) {
        let (k1, k2) = hkdf(&self.sym.ck, &[]);
        (self.sym.h, k1, k2)
    }
}

/// A Noise message on the wire: u16 BE length, then the bytes (2.3).
pub(super) fn lp(m: &[u8]) -> Vec<u8> {
    assert!(m.len() <= 65_535);
    [&(m.len() as u16).to_be_bytes()[..], m].concat()
}
