//! The v2 secure channel (docs/PROTOCOL.md 2.3 and 2.4):
//! the `Noise_XX_25519_AESGCM_SHA256` handshake with the prologue `pex/2`,
//! run by the `snow` crate over u16-length-prefixed messages, and the
//! AES-256-GCM transport [`Cipher`] (ring: AES-NI and CLMUL) that seals and
//! opens transport messages in place, in buffers the caller already has.

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The Noise protocol name.
pub const PROTOCOL_NAME: &str = "Noise_XX_25519_AESGCM_SHA256";
/// The Noise prologue: both sides must agree on it or the handshake fails.
pub const PROLOGUE: &[u8; 5] = b"pex/2";
/// Largest Noise message (handshake or transport) after its u16 length.
pub const MAX_MESSAGE: usize = 65_535;
/// Bytes of the AES-GCM tag that ends every transport message.
pub const TAG_LEN: usize = 16;
/// Most plaintext one transport message carries.
pub const MAX_PLAINTEXT: usize = MAX_MESSAGE - TAG_LEN;
/// Bytes of the length prefix of every Noise message.
pub const LEN_PREFIX: usize = 2;
/// Lengths of the three XX handshake messages with empty payloads:
/// `e`; `e, ee, s, es`; `s, se`.
pub const HANDSHAKE_LENS: [usize; 3] = [32, 96, 64];

/// Why the handshake or a transport message failed. Every one closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    /// The network failed or the peer closed.
    #[error("{}", crate::text::io_message(.0))]
    Io(#[from] io::Error),
    /// The first bytes were a v1 frame (a length starting 0x0000): the peer speaks pex/1.
    #[error("the peer speaks pex/1, this node speaks pex/2")]
    V1Peer,
    /// A handshake message of the wrong length.
    #[error("Noise handshake message {index} is {len} bytes, expected {expected}")]
    BadLength {
        /// 0, 1 or 2.
        index: usize,
        /// Length received.
        len: usize,
        /// Length required.
        expected: usize,
    },
    /// The handshake did not authenticate (wrong prologue, tampered bytes, a
    /// non-empty payload).
    #[error("Noise handshake failed: {0}")]
    Handshake(String),
    /// A transport message failed to decrypt: tampered, reordered or forged.
    #[error("a transport message failed to decrypt")]
    Decrypt,
    /// A transport message too short to hold its tag.
    #[error("a transport message of {0} bytes is shorter than its tag")]
    Short(usize),
    /// This direction used every nonce it may (2^64 - 1 messages).
    #[error("the connection used every Noise nonce")]
    NoncesExhausted,
}

impl From<snow::Error> for NoiseError {
    fn from(e: snow::Error) -> Self {
        NoiseError::Handshake(e.to_string())
    }
}

/// This side's Noise keys: an X25519 static key (any, new for each process)
/// and, for test vectors only, a fixed ephemeral key.
#[derive(Clone)]
pub struct Keys {
    /// The X25519 static secret.
    pub static_secret: [u8; 32],
    /// A fixed ephemeral secret; `None` (always, outside fixtures) draws a fresh one.
    pub ephemeral: Option<[u8; 32]>,
}

impl Keys {
    /// A fresh random static key.
    pub fn generate() -> Keys {
        // Any 32 bytes are an X25519 secret (the DH clamps them).
        Keys { static_secret: crate::identity::random_secret(), ephemeral: None }
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

fn builder() -> Result<snow::Builder<'static>, NoiseError> {
    Ok(snow::Builder::new(PROTOCOL_NAME.parse()?))
}

/// What a finished handshake gives: the handshake hash (what HELLO signs),
/// the peer's static key, and one cipher per direction.
pub struct Session {
    /// The Noise handshake hash `h`, unique to this connection.
    pub handshake_hash: [u8; 32],
    /// The peer's X25519 static public key.
    pub remote_static: [u8; 32],
    /// Seals what this side sends.
    pub send: Cipher,
    /// Opens what this side receives.
    pub recv: Cipher,
}

/// Runs the XX handshake on `stream` as initiator (the dialler) or responder.
/// A responder whose first two bytes are zero gets [`NoiseError::V1Peer`] (the
/// caller answers with a plaintext v1 REJECT); so does an initiator answered by one.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    initiator: bool,
    keys: &Keys,
) -> Result<Session, NoiseError> {
    let mut b = builder()?.prologue(PROLOGUE)?.local_private_key(&keys.static_secret)?;
    if let Some(e) = &keys.ephemeral {
        b = b.fixed_ephemeral_key_for_testing_only(e);
    }
    let mut hs = if initiator { b.build_initiator()? } else { b.build_responder()? };
    let mut msg = [0u8; LEN_PREFIX + 96];
    let mut payload = [0u8; 96];
    for (index, &expected) in HANDSHAKE_LENS.iter().enumerate() {
        let ours = (index % 2 == 0) == initiator;
        if ours {
            let n = hs.write_message(&[], &mut msg[LEN_PREFIX..])?;
            debug_assert_eq!(n, expected);
            msg[..LEN_PREFIX].copy_from_slice(&(n as u16).to_be_bytes());
            stream.write_all(&msg[..LEN_PREFIX + n]).await?;
            stream.flush().await?;
        } else {
            let mut len = [0u8; LEN_PREFIX];
            stream.read_exact(&mut len).await?;
            let len = u16::from_be_bytes(len) as usize;
            if len == 0 && index <= 1 {
                return Err(NoiseError::V1Peer);
            }
            if len != expected {
                return Err(NoiseError::BadLength { index, len, expected });
            }
            stream.read_exact(&mut msg[..len]).await?;
            if hs.read_message(&msg[..len], &mut payload)? != 0 {
                return Err(NoiseError::Handshake("handshake payloads must be empty".into()));
            }
        }
    }
    let handshake_hash: [u8; 32] = hs
        .get_handshake_hash()
        .try_into()
        .map_err(|_| NoiseError::Handshake("handshake hash is not 32 bytes".into()))?;
    let remote_static: [u8; 32] =
        hs.get_remote_static().and_then(|k| k.try_into().ok()).ok_or(NoiseError::Handshake("no static key".into()))?;
    let (k1, k2) = hs.dangerously_get_raw_split();
    let (send, recv) = if initiator { (k1, k2) } else { (k2, k1) };
    Ok(Session { handshake_hash, remote_static, send: Cipher::new(&send), recv: Cipher::new(&recv) })
}

/// One direction's AES-256-GCM transport state: the key and the next nonce.
/// The Noise nonce is 4 zero bytes then the 64-bit counter, big-endian; the
/// associated data is empty.
pub struct Cipher {
    key: ring::aead::LessSafeKey,
    nonce: u64,
}

impl Cipher {
    /// A cipher at nonce 0.
    pub fn new(key: &[u8; 32]) -> Cipher {
        Cipher::at_nonce(key, 0)
    }

    /// A cipher whose next nonce is `nonce` (tests of nonce exhaustion).
    pub fn at_nonce(key: &[u8; 32], nonce: u64) -> Cipher {
        // ring refuses only a key of the wrong length, and this one is 32 bytes.
        #[allow(clippy::expect_used)]
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key).expect("a 32-byte AES-256 key");
        Cipher { key: ring::aead::LessSafeKey::new(key), nonce }
    }

    fn next(&mut self) -> Result<ring::aead::Nonce, NoiseError> {
        // 2^64 - 1 is reserved by Noise: reaching it ends the connection.
        if self.nonce == u64::MAX {
            return Err(NoiseError::NoncesExhausted);
        }
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.nonce.to_be_bytes());
        self.nonce += 1;
        Ok(ring::aead::Nonce::assume_unique_for_key(n))
    }

    /// Seals `buf[..len - TAG_LEN]` in place and writes the tag into the last
    /// [`TAG_LEN`] bytes of `buf`: one transport message.
    pub fn seal(&mut self, buf: &mut [u8]) -> Result<(), NoiseError> {
        let plain = buf.len().checked_sub(TAG_LEN).ok_or(NoiseError::Short(buf.len()))?;
        let nonce = self.next()?;
        let (data, tag_out) = buf.split_at_mut(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), data)
            .map_err(|_| NoiseError::NoncesExhausted)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens the transport message `in_out[src..]` and moves its plaintext to
    /// the start of `in_out` in the same pass (ring's `open_within`): a reader
    /// opens a run of messages and closes the gaps their prefixes and tags
    /// leave without copying anything twice.
    pub fn open_within<'a>(&mut self, in_out: &'a mut [u8], src: usize) -> Result<&'a mut [u8], NoiseError> {
        let len = in_out.len().saturating_sub(src);
        if len < TAG_LEN {
            return Err(NoiseError::Short(len));
        }
        let nonce = self.next()?;
        self.key.open_within(nonce, ring::aead::Aad::empty(), in_out, src..).map_err(|_| NoiseError::Decrypt)
    }

    /// Opens one transport message in place; returns its plaintext (the first
    /// `buf.len() - TAG_LEN` bytes of `buf`).
    pub fn open<'a>(&mut self, buf: &'a mut [u8]) -> Result<&'a mut [u8], NoiseError> {
        if buf.len() < TAG_LEN {
            return Err(NoiseError::Short(buf.len()));
        }
        let nonce = self.next()?;
        self.key.open_in_place(nonce, ring::aead::Aad::empty(), buf).map_err(|_| NoiseError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (Session, Session) {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let (ka, kb) = (Keys::generate(), Keys::generate());
        let (x, y) = tokio::join!(handshake(&mut a, true, &ka), handshake(&mut b, false, &kb));
        (x.unwrap(), y.unwrap())
    }

    #[tokio::test]
    async fn both_sides_agree_and_each_direction_has_its_own_key() {
        let (mut a, mut b) = pair().await;
        assert_eq!(a.handshake_hash, b.handshake_hash);
        let mut m = b"hello".to_vec();
        m.extend_from_slice(&[0; TAG_LEN]);
        a.send.seal(&mut m).unwrap();
        assert_ne!(&m[..5], b"hello");
        let mut copy = m.clone();
        assert!(a.recv.open(&mut copy).is_err(), "the other direction's key does not open it");
        assert_eq!(b.recv.open(&mut m).unwrap(), b"hello");
    }

    #[tokio::test]
    async fn a_flipped_bit_or_a_replay_fails_to_open() {
        let (mut a, mut b) = pair().await;
        let seal = |c: &mut Cipher| {
            let mut m = vec![1u8; 100 + TAG_LEN];
            c.seal(&mut m).unwrap();
            m
        };
        let (m0, m1) = (seal(&mut a.send), seal(&mut a.send));
        let mut flipped = m0.clone();
        flipped[3] ^= 0x10;
        assert!(matches!(b.recv.open(&mut flipped), Err(NoiseError::Decrypt)));
        // The failed open used nonce 0: the stream is now out of step, as a
        // connection would be (it closes instead).
        let mut replay = m0.clone();
        assert!(b.recv.open(&mut replay).is_err());
        let _ = m1;
    }

    #[test]
    fn an_empty_message_opens_and_one_shorter_than_its_tag_is_refused() {
        let (mut tx, mut rx) = (Cipher::new(&[7; 32]), Cipher::new(&[7; 32]));
        // Two bytes of earlier plaintext, then a message of only its tag.
        let mut buf = vec![b'a', b'b', 0, 0];
        buf.extend_from_slice(&[0; TAG_LEN]);
        tx.seal(&mut buf[4..]).unwrap();
        assert_eq!(rx.open_within(&mut buf[2..], 2).unwrap().len(), 0);
        let mut next = vec![1u8; 3 + TAG_LEN];
        tx.seal(&mut next).unwrap();
        assert_eq!(rx.open_within(&mut next, 0).unwrap(), &[1, 1, 1]);
        assert!(matches!(rx.open_within(&mut [0u8; TAG_LEN + 1], 2), Err(NoiseError::Short(15))));
    }

    #[test]
    fn new_static_keys_differ_and_debug_output_shows_none() {
        let (a, b) = (Keys::generate(), Keys::generate());
        assert_ne!(a.static_secret, b.static_secret);
        assert_eq!(format!("{a:?}"), "Keys(..)");
    }

    #[test]
    fn the_last_nonce_is_never_used() {
        let mut c = Cipher::at_nonce(&[9; 32], u64::MAX - 1);
        let mut m = vec![0u8; TAG_LEN];
        c.seal(&mut m).unwrap();
        assert!(matches!(c.seal(&mut [0u8; TAG_LEN]), Err(NoiseError::NoncesExhausted)));
        let mut d = Cipher::at_nonce(&[9; 32], u64::MAX - 1);
        assert!(d.open(&mut m).is_ok());
        assert!(matches!(d.open(&mut m.clone()), Err(NoiseError::NoncesExhausted)));
    }

    #[tokio::test]
    async fn a_wrong_prologue_or_tampered_message_fails_the_handshake() {
        // Tamper with message 1 (the responder's) on its way.
        let (mut a, mut relay_a) = tokio::io::duplex(1 << 16);
        let (mut b, mut relay_b) = tokio::io::duplex(1 << 16);
        let relay = async move {
            let mut m0 = [0u8; 34];
            relay_a.read_exact(&mut m0).await.unwrap();
            relay_b.write_all(&m0).await.unwrap();
            let mut m1 = [0u8; 98];
            relay_b.read_exact(&mut m1).await.unwrap();
            m1[50] ^= 1;
            relay_a.write_all(&m1).await.unwrap();
            (relay_a, relay_b)
        };
        let (ka, kb) = (Keys::generate(), Keys::generate());
        let responder = tokio::spawn(async move { handshake(&mut b, false, &kb).await.is_ok() });
        let (x, _keep) = tokio::join!(handshake(&mut a, true, &ka), relay);
        responder.abort();
        assert!(matches!(x, Err(NoiseError::Handshake(_))), "{:?}", x.err());
    }

    #[tokio::test]
    async fn a_v1_hello_is_recognised() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&[0, 0, 0, 39, 3, b'P', b'E', b'X', 1]).await.unwrap();
        let r = handshake(&mut b, false, &Keys::generate()).await;
        assert!(matches!(r, Err(NoiseError::V1Peer)));
    }
}
