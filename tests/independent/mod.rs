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
//!
//! This file holds the constants of the specification and the utilities and fixtures shared by
//! the rest; the client itself is in `noise`, `codec`, `conn` and `node`, and each remaining
//! submodule is one group of tests.

mod codec;
mod conn;
mod node;
mod noise;

mod dialler;
mod download;
mod floods;
mod handshake;
mod timeouts;
mod vectors;
mod violations;

use codec::*;
use conn::*;
use node::*;
use noise::*;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

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
// Section 3: the room frames (4.11 to 4.16).
const JOIN: u8 = 9;
const LEAVE: u8 = 10;
const MEMBERS: u8 = 11;
const MESSAGE: u8 = 12;
const DIRECT: u8 = 13;
const PRESENCE: u8 = 14;
// Section "Rooms (4.11 to 4.15)": a room id is `SHA-256("pex-room" ‖ name)`.
const ROOM_CONTEXT: &[u8] = b"pex-room";
// Section 4.14: what a MESSAGE signature signs begins with these 18 bytes.
const ROOM_MESSAGE_CONTEXT: &[u8] = b"pex/2 room message";
// Section 4.16: what a PRESENCE signature signs begins with these 19 bytes.
const ROOM_PRESENCE_CONTEXT: &[u8] = b"pex/2 room presence";
// Sections 4.14 and 4.15: the largest MESSAGE or DIRECT payload.
const MAX_ROOM_PAYLOAD: usize = 65_536;

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
        DUPLICATE => Some(60),
        LIMIT => Some(5),
        SHUTTING_DOWN => Some(10),
        3..=5 => Some(0),
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
// Fixtures and files shared by several groups of tests
// ---------------------------------------------------------------------------------------------

fn fixture(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
    serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap()
}

fn ipv4(s: &str) -> Ipv6Addr {
    s.parse::<Ipv4Addr>().unwrap().to_ipv6_mapped()
}

fn small_file(dir: &Path, seed: u64) -> PathBuf {
    write_file(dir, "small.bin", 100_000, seed).0
}

/// What the node writes, by hand, after `sent` on a raw connection, until it closes.
fn raw_exchange(port: u16, sent: &[u8]) -> Vec<u8> {
    let mut s = tcp(port);
    s.write_all(sent).unwrap();
    read_to_close(&mut s).unwrap_or_else(|e| panic!("after sending {}: {e}", hex(&sent[..sent.len().min(64)])))
}

/// The 72 bytes of 2.5.
fn v1_answer() -> Vec<u8> {
    let reason = "this node speaks pex/2 (Noise_XX_25519_AESGCM_SHA256); upgrade pex";
    frame(REJECT, &[&[VIOLATION][..], reason.as_bytes()].concat())
}
