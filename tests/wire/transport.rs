//! The rules of docs/PROTOCOL.md section 2 beyond the fixture connection,
//! with its keys: how frames are cut into transport messages, any cutting
//! read back, failures, nonce exhaustion, the handshake's own failures, and
//! a version 1 peer.

use crate::common::hex;
use crate::connection::{bytes32, key_of, messages, script, Side, Tap, INITIATOR, RESPONDER};
use crate::fixtures;
use crate::model;
use bytes::Bytes;
use pex::connection::{FrameReader, FrameWriter, ReadError};
use pex::hash::hex as to_hex;
use pex::noise::{self, Cipher, NoiseError};
use pex::wire::{self, Frame, RejectCode};
use pex::Hash;
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;

/// The transport messages in `stream`, opened with the model from nonce 0: their plaintexts.
fn open_all(key: &[u8; 32], stream: &[u8]) -> Vec<Vec<u8>> {
    messages(stream)
        .iter()
        .enumerate()
        .map(|(n, m)| model::open(key, n as u64, &[], &m[2..]).unwrap_or_else(|| panic!("message {n} does not open")))
        .collect()
}

#[tokio::test]
async fn a_frame_is_cut_into_messages_of_65519_plaintext_bytes_and_each_frame_starts_a_new_one() {
    let key = key_of(&fixtures::connection(), Side::Initiator);
    let data = Bytes::from(crate::common::data(1 << 20, 7));
    let give = Frame::Give { hash: Hash::of(&data), data };
    let ask = Frame::Ask(Hash::of(b"pex"));
    let mut w = FrameWriter::encrypted(Vec::new(), Cipher::new(&key));
    w.write_frame(&give, None).await.unwrap();
    w.write_frame(&ask, None).await.unwrap();
    w.write_frame(&Frame::KeepAlive, None).await.unwrap();
    let stream = std::mem::take(w.get_mut());
    let lens: Vec<usize> = messages(&stream).iter().map(|m| m.len() - 2).collect();
    // 1,048,613 bytes of GIVE: 16 messages of 65,519 + 16, then 309 + 16.
    let give_len = give.to_bytes().len();
    assert_eq!(give_len, 1_048_613);
    let mut want = vec![65_535; 16];
    want.extend([give_len - 16 * 65_519 + 16, 37 + 16, 4 + 16]);
    assert_eq!(lens, want);
    let plain = open_all(&key, &stream);
    assert_eq!(plain[..17].concat(), give.to_bytes()[..]);
    assert_eq!(plain[17], ask.to_bytes()[..]);
    assert_eq!(plain[18], [0, 0, 0, 0], "a keep-alive is a message of its own");
}

#[tokio::test]
async fn a_frame_of_exactly_65519_bytes_is_one_message_and_one_byte_more_two() {
    let key = key_of(&fixtures::connection(), Side::Responder);
    for (data_len, want) in [(65_519 - 37, vec![65_535]), (65_520 - 37, vec![65_535, 17])] {
        let data = Bytes::from(vec![0x5a; data_len]);
        let give = Frame::Give { hash: Hash::of(&data), data };
        let mut w = FrameWriter::encrypted(Vec::new(), Cipher::new(&key));
        w.write_frame(&give, None).await.unwrap();
        let stream = std::mem::take(w.get_mut());
        let lens: Vec<usize> = messages(&stream).iter().map(|m| m.len() - 2).collect();
        assert_eq!(lens, want, "a frame of {} bytes", give.to_bytes().len());
        assert_eq!(open_all(&key, &stream).concat(), give.to_bytes()[..]);
    }
}

/// Reads every frame from `stream` with pex's encrypted reader.
fn read_all(key: &[u8; 32], stream: &[u8]) -> Result<Vec<Frame>, String> {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let mut r = FrameReader::encrypted(stream, Cipher::new(key));
        let mut out = Vec::new();
        loop {
            match r.read_frame().await {
                Ok(Some(f)) => out.push(f),
                Ok(None) => return Ok(out),
                Err(e) => return Err(format!("{e:?}")),
            }
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Section 2: frames and transport messages need not align. However the
    /// sender cuts the frame stream (messages of 0 to 65,519 plaintext bytes,
    /// a frame split over several, several frames in one), the receiver reads
    /// the same frames.
    #[test]
    fn any_cutting_of_the_frame_stream_into_messages_reads_the_same_frames(
        cuts in proptest::collection::vec(prop_oneof![4 => 0usize..200, 1 => 0usize..=65_519], 1..40),
        big in 0usize..150_000,
    ) {
        let f = fixtures::connection();
        let key = key_of(&f, Side::Responder);
        let hh = bytes32(&f.handshake_hash);
        let data = Bytes::from(crate::common::data(big, big as u64));
        let mut frames: Vec<Frame> = script(&hh).into_iter().map(|s| s.2).collect();
        frames.insert(3, Frame::Give { hash: Hash::of(&data), data });
        frames.push(Frame::KeepAlive);
        let plain: Vec<u8> = frames.iter().flat_map(|f| f.to_bytes()).collect();
        let (mut at, mut n, mut stream) = (0, 0u64, Vec::new());
        // The largest message closes every round, so the stream always ends.
        for size in cuts.iter().copied().chain([65_519]).cycle() {
            if at == plain.len() {
                break;
            }
            let end = (at + size).min(plain.len());
            let sealed = model::seal(&key, n, &[], &plain[at..end]);
            stream.extend_from_slice(&(sealed.len() as u16).to_be_bytes());
            stream.extend_from_slice(&sealed);
            at = end;
            n += 1;
        }
        prop_assert_eq!(read_all(&key, &stream), Ok(frames));
    }
}

#[test]
fn a_tampered_reordered_or_short_transport_message_is_a_crypto_failure() {
    let f = fixtures::connection();
    let key = key_of(&f, Side::Initiator);
    let ours: Vec<Vec<u8>> = f.transport.iter().filter(|m| m.from == "initiator").map(|m| hex(&m.wire)).collect();
    let decrypt_failure = |stream: &[u8], what: &str| {
        let got = read_all(&key, stream);
        assert!(got.as_ref().is_err_and(|e| e.contains("Crypto(Decrypt)")), "{what}: {got:?}");
    };
    // Every byte after the prefix matters: ciphertext and tag.
    for at in [2, 3, 50, ours[0].len() - 17, ours[0].len() - 16, ours[0].len() - 1] {
        let mut m = ours[0].clone();
        m[at] ^= 0x01;
        decrypt_failure(&m, &format!("HELLO with byte {at} flipped"));
    }
    decrypt_failure(&ours[1], "the second message first (nonce 0 expected 1)");
    decrypt_failure(&[&ours[1][..], &ours[0]].concat(), "two messages swapped");
    decrypt_failure(&[&ours[0][..], &ours[0]].concat(), "a replayed message");
    assert_eq!(read_all(&key, &ours.concat()).unwrap().len(), ours.len(), "untouched, all read");
    // Fewer than 16 bytes cannot hold the tag.
    for len in [0u16, 1, 15] {
        let m = [&len.to_be_bytes()[..], &vec![0u8; len as usize]].concat();
        let got = read_all(&key, &m);
        assert!(got.as_ref().is_err_and(|e| e.contains(&format!("Short({len})"))), "a {len}-byte message: {got:?}");
    }
    // 16 bytes is an empty message: no frame, but not an error.
    let empty = model::seal(&key, 0, &[], &[]);
    let stream = [&[0, 16][..], &empty, &model_message(&key, 1, &Frame::KeepAlive.to_bytes())].concat();
    assert_eq!(read_all(&key, &stream), Ok(vec![Frame::KeepAlive]));
}

fn model_message(key: &[u8; 32], n: u64, plain: &[u8]) -> Vec<u8> {
    let sealed = model::seal(key, n, &[], plain);
    [&(sealed.len() as u16).to_be_bytes()[..], &sealed].concat()
}

#[tokio::test]
async fn nonce_2_pow_64_minus_1_is_never_used() {
    let key = key_of(&fixtures::connection(), Side::Initiator);
    let mut w = FrameWriter::encrypted(Vec::new(), Cipher::at_nonce(&key, u64::MAX - 1));
    w.write_frame(&Frame::KeepAlive, None).await.unwrap();
    let last = std::mem::take(w.get_mut());
    assert_eq!(
        model::open(&key, u64::MAX - 1, &[], &last[2..]),
        Some(vec![0, 0, 0, 0]),
        "2^64 - 2 is the last nonce used"
    );
    assert!(w.write_frame(&Frame::KeepAlive, None).await.is_err(), "nothing can be sent after it");
    let mut r = FrameReader::encrypted(&last[..], Cipher::at_nonce(&key, u64::MAX));
    assert!(matches!(r.read_frame().await, Err(ReadError::Crypto(NoiseError::NoncesExhausted))));
}

// ---------------------------------------------------------------------------
// The handshake's own failures, and v1.

#[tokio::test]
async fn a_handshake_under_another_prologue_fails_and_under_pex_2_succeeds() {
    let f = fixtures::connection();
    // The responder's message made by the model with the initiator's (fixed) ephemeral key:
    // under "pex/2" it is the fixture's, and pex goes on to send message 3; under "pex/1" it fails.
    for (prologue, ok) in [(&b"pex/2"[..], true), (b"pex/1", false), (b"", false)] {
        let t = model::xx(&f.protocol_name, prologue, &INITIATOR.party(), &RESPONDER.party());
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut a = Tap { inner: a, written: Vec::new() };
        b.write_all(&[&(96u16).to_be_bytes()[..], &t.messages[1]].concat()).await.unwrap();
        let got = noise::handshake(&mut a, true, &INITIATOR.keys()).await;
        match (ok, got) {
            (true, Ok(s)) => {
                assert_eq!(s.handshake_hash, bytes32(&f.handshake_hash));
                let wrote: Vec<u8> = [&f.handshake[0], &f.handshake[2]].iter().flat_map(|m| hex(&m.hex)).collect();
                assert_eq!(a.written, wrote);
            }
            (false, Err(NoiseError::Handshake(_))) => {}
            (ok, got) => panic!("prologue {prologue:?}: expected ok={ok}, got {:?}", got.err()),
        }
    }
}

#[tokio::test]
async fn handshake_messages_of_another_length_are_refused() {
    let f = fixtures::connection();
    let m1 = hex(&f.handshake[0].hex);
    for len in [31u16, 33, 96, 65_535] {
        let (mut a, mut b) = tokio::io::duplex(1 << 17);
        let mut msg = len.to_be_bytes().to_vec();
        msg.extend(std::iter::repeat_n(0x42, len as usize));
        a.write_all(&msg).await.unwrap();
        let got = noise::handshake(&mut b, false, &RESPONDER.keys()).await;
        assert!(
            matches!(got, Err(NoiseError::BadLength { index: 0, len: l, expected: 32 }) if l == len as usize),
            "a first message of {len} bytes: {:?}",
            got.err()
        );
    }
    // A third message of length 0 is just a wrong length, not a v1 peer.
    let (mut a, mut b) = tokio::io::duplex(1 << 17);
    a.write_all(&m1).await.unwrap();
    let responder = tokio::spawn(async move { noise::handshake(&mut b, false, &RESPONDER.keys()).await.err() });
    let mut m2 = [0u8; 98];
    tokio::io::AsyncReadExt::read_exact(&mut a, &mut m2).await.unwrap();
    assert_eq!(to_hex(&m2), f.handshake[1].hex, "the responder answers the fixture's first message with its second");
    a.write_all(&[0, 0]).await.unwrap();
    let got = responder.await.unwrap();
    assert!(matches!(got, Some(NoiseError::BadLength { index: 2, len: 0, expected: 64 })), "{got:?}");
}

fn v1_vector(name: &str) -> Vec<u8> {
    crate::vectors::v1_vectors().into_iter().find(|v| v.0 == name).unwrap().2
}

#[tokio::test]
async fn a_v1_hello_or_a_v1_answer_is_recognised_by_its_two_zero_bytes() {
    // A v1 node dialling a v2 node: its HELLO's length starts 00 00.
    for name in ["hello", "hello_not_listening", "keepalive"] {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&v1_vector(name)).await.unwrap();
        let got = noise::handshake(&mut b, false, &RESPONDER.keys()).await;
        assert!(matches!(got, Err(NoiseError::V1Peer)), "v1 {name}: {:?}", got.err());
    }
    // A v2 node dialling a v1 node that answers (after its own HELLO, or instead of one).
    let answer = hex(&fixtures::vectors().v1_answer.hex);
    for first in [v1_vector("hello"), answer.clone()] {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        b.write_all(&first).await.unwrap();
        let got = noise::handshake(&mut a, true, &INITIATOR.keys()).await;
        assert!(matches!(got, Err(NoiseError::V1Peer)), "{:?}", got.err());
    }
}

#[test]
fn the_answer_to_a_v1_peer_is_one_plaintext_v1_reject_3() {
    let fixture = fixtures::vectors().v1_answer;
    let bytes = wire::v1_reject(RejectCode::ProtocolViolation, wire::V1_REJECT_REASON);
    assert_eq!(to_hex(&bytes), fixture.hex);
    // The v1 layout (docs/PROTOCOL.md, appendix): u32 L, type 7, code, reason of L - 2 UTF-8 bytes ≤ 200.
    let l = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert_eq!(l + 4, bytes.len());
    assert_eq!(bytes[4..6], [7, 3]);
    let reason = std::str::from_utf8(&bytes[6..]).unwrap();
    assert!(reason.len() <= 200);
    assert_eq!(reason, wire::V1_REJECT_REASON);
    assert!(reason.contains("pex/2"));
}
