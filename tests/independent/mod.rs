//! An independent client of the pex wire protocol, written only from `docs/PROTOCOL.md`.
//!
//! Nothing here uses the `pex` crate: frames, manifests and bitfields are encoded and decoded by
//! hand from the specification, and the node under test is the real `pex seed` process, reached
//! over TCP on [::1] with blocking sockets. Every blocking read is bounded by a socket time-out.

use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

const PEX: &str = env!("CARGO_BIN_EXE_pex");
/// Bound on every blocking socket read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the seeder may take to print its root and fetch command.
const STARTUP: Duration = Duration::from_secs(120);

// Section 1 and 2.
const PIECE: usize = 1 << 20;
const LIST_HASHES: usize = 32_768;
const MAX_L: usize = 1 + 32 + PIECE;

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

// Section 3.8: REJECT codes.
const DUPLICATE: u8 = 1;
const LIMIT: u8 = 2;
const VIOLATION: u8 = 3;
const SELF: u8 = 4;
const MISBEHAVING: u8 = 5;

type Hash = [u8; 32];

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

fn sha(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex string {s}");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn hash_from_hex(s: &str) -> Hash {
    unhex(s).try_into().unwrap()
}

/// xorshift64: deterministic pseudo-random bytes, ids and hashes.
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

// ---------------------------------------------------------------------------------------------
// Encoding (sections 2 and 3)
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

fn hello(id: &Hash, listen_port: u16) -> Vec<u8> {
    let mut body = b"PEX\x01".to_vec();
    body.extend_from_slice(id);
    body.extend_from_slice(&listen_port.to_be_bytes());
    frame(HELLO, &body)
}

fn ask(h: &Hash) -> Vec<u8> {
    frame(ASK, h)
}

fn give(data: &[u8]) -> Vec<u8> {
    let mut body = sha(data).to_vec();
    body.extend_from_slice(data);
    frame(GIVE, &body)
}

fn peers(entries: &[(Ipv6Addr, u16)]) -> Vec<u8> {
    let mut body = Vec::with_capacity(18 * entries.len());
    for (ip, port) in entries {
        body.extend_from_slice(&ip.octets());
        body.extend_from_slice(&port.to_be_bytes());
    }
    frame(PEERS, &body)
}

fn dont_have(h: &Hash) -> Vec<u8> {
    frame(DONT_HAVE, h)
}

fn bitfield(root: &Hash, bits: &[u8]) -> Vec<u8> {
    let mut body = root.to_vec();
    body.extend_from_slice(bits);
    frame(BITFIELD, &body)
}

fn have(root: &Hash, index: u32) -> Vec<u8> {
    let mut body = root.to_vec();
    body.extend_from_slice(&index.to_be_bytes());
    frame(HAVE, &body)
}

fn reject(code: u8, reason: &str) -> Vec<u8> {
    let mut body = vec![code];
    body.extend_from_slice(reason.as_bytes());
    frame(REJECT, &body)
}

fn cancel(h: &Hash) -> Vec<u8> {
    frame(CANCEL, h)
}

/// Bits for `pieces` pieces, all set, spare bits zero (section 3.6).
fn full_bits(pieces: usize) -> Vec<u8> {
    let mut bits = vec![0u8; pieces.div_ceil(8)];
    for i in 0..pieces {
        bits[i / 8] |= 0x80 >> (i % 8);
    }
    bits
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// One received frame; `ty` is `None` for a keep-alive.
struct Frame {
    ty: Option<u8>,
    body: Vec<u8>,
}

impl Frame {
    /// The frame as it was on the wire, length prefix included.
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
            Some(REJECT) => format!(
                "{name} code {} {:?} [{}{more}]",
                self.body[0],
                String::from_utf8_lossy(&self.body[1..]),
                hex(shown)
            ),
            _ => format!("{name} [{}{more}]", hex(shown)),
        }
    }
}

fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut prefix[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::Error::new(ErrorKind::UnexpectedEof, "EOF inside a length prefix")),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_L {
        let msg = format!("node sent a length prefix of {len} > {MAX_L}: {}", hex(&prefix));
        return Err(io::Error::new(ErrorKind::InvalidData, msg));
    }
    if len == 0 {
        return Ok(Some(Frame { ty: None, body: Vec::new() }));
    }
    let mut ty = [0u8];
    r.read_exact(&mut ty)?;
    let mut body = vec![0; len - 1];
    r.read_exact(&mut body)?;
    Ok(Some(Frame { ty: Some(ty[0]), body }))
}

/// Panics if a frame the node sent breaks the length rules of section 3.
fn check_rules(f: &Frame) {
    let n = f.body.len();
    let ok = match f.ty {
        None => true,
        Some(ASK | DONT_HAVE | CANCEL) => n == 32,
        Some(GIVE) => (32..=32 + PIECE).contains(&n),
        Some(PEERS) => n % 18 == 0 && n <= 900,
        Some(HELLO) => n == 38,
        Some(BITFIELD) => n >= 32,
        Some(HAVE) => n == 36,
        Some(REJECT) => (1..=201).contains(&n) && std::str::from_utf8(&f.body[1..]).is_ok(),
        Some(_) => true,
    };
    assert!(ok, "the node sent a frame that breaks section 3: {}", f.show());
}

fn is_reset(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe)
}

/// A parsed manifest (section 5).
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

// ---------------------------------------------------------------------------------------------
// The node under test and connections to it
// ---------------------------------------------------------------------------------------------

/// A running `pex seed`; killed and reaped on drop.
struct Node {
    child: super::Proc,
    port: u16,
    root: Hash,
    dir: tempfile::TempDir,
}

impl Node {
    fn start(file: &Path, extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let log = fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut child = super::Proc::spawn(
            Command::new(PEX)
                .arg("seed")
                .arg(file)
                .args(["--listen", "[::1]:0", "--data-dir"])
                .arg(dir.path().join("data"))
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log),
        );
        let stdout = child.stdout.take().unwrap();
        let mut node = Node { child, port: 0, root: [0; 32], dir };
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line); // keep draining even when nobody listens
            }
        });
        let root = lines.recv_timeout(STARTUP).expect("seeder printed no root");
        assert!(root.len() == 64 && root.bytes().all(|c| c.is_ascii_hexdigit()), "root line {root:?}");
        node.root = hash_from_hex(&root);
        let hint = lines.recv_timeout(STARTUP).expect("seeder printed no fetch command");
        let prefix = format!("pex fetch {root} --peer [::1]:");
        let port = hint.strip_prefix(&prefix).unwrap_or_else(|| panic!("second line {hint:?}"));
        node.port = port.parse().unwrap_or_else(|_| panic!("second line {hint:?}"));
        node
    }

    fn connect(&self) -> Conn {
        Conn::open(self.port)
    }

    /// A connection that has completed the handshake (HELLO both ways, the node's PEERS read).
    fn peer(&self, rng: &mut Rng) -> Conn {
        let mut c = self.connect();
        c.handshake(&rng.hash(), self.port);
        c
    }

    /// Resident set size of the node in KiB, from /proc.
    fn rss_kib(&self) -> u64 {
        try_rss_kib(self.child.id()).expect("the node's /proc/<pid>/status has no VmRSS")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.child.kill(); // before reading its log; Proc's own drop would do it too late
        if thread::panicking() {
            let log = fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("--- seeder stderr (last lines) ---\n{}", tail.join("\n"));
        }
    }
}

/// VmRSS in KiB from /proc/<pid>/status; `None` once the process is gone.
fn try_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A blocking client connection, reads and writes bounded by [`IO_TIMEOUT`].
struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect to the node");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        let w = s.try_clone().unwrap();
        Conn { r: BufReader::with_capacity(256 << 10, s), w }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap_or_else(|e| panic!("sending {}: {e}", hex(&bytes[..bytes.len().min(64)])));
    }

    fn try_recv(&mut self) -> io::Result<Option<Frame>> {
        let f = read_frame(&mut self.r)?;
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

    /// Expects the node's HELLO (section 3.4); returns its node id.
    fn expect_hello(&mut self, port: u16) -> Hash {
        let f = self.recv();
        assert!(f.is(HELLO), "expected HELLO, got {}", f.show());
        assert_eq!(f.wire().len(), 4 + 39, "HELLO frame length");
        assert_eq!(&f.body[0..3], b"PEX", "HELLO magic: {}", f.show());
        assert_eq!(f.body[3], 1, "HELLO version: {}", f.show());
        assert_eq!(u16::from_be_bytes([f.body[36], f.body[37]]), port, "HELLO listen port: {}", f.show());
        f.body[4..36].try_into().unwrap()
    }

    /// Expects PEERS (section 3.3); returns its entries.
    fn expect_peers(&mut self) -> Vec<(Ipv6Addr, u16)> {
        let f = self.recv();
        assert!(f.is(PEERS), "expected PEERS, got {}", f.show());
        f.body
            .chunks(18)
            .map(|e| {
                let ip: [u8; 16] = e[..16].try_into().unwrap();
                (Ipv6Addr::from(ip), u16::from_be_bytes([e[16], e[17]]))
            })
            .collect()
    }

    /// Sends HELLO (listening on no port), expects HELLO then PEERS; returns the node's id.
    fn handshake(&mut self, id: &Hash, port: u16) -> Hash {
        self.send(&hello(id, 0));
        let node_id = self.expect_hello(port);
        self.expect_peers();
        node_id
    }

    /// Expects REJECT with `code` as the next frame, then EOF with nothing after it.
    fn expect_reject_then_close(&mut self, code: u8, context: &str) {
        let f = self.recv();
        assert!(f.is(REJECT), "{context}: expected REJECT({code}), got {}", f.show());
        assert_eq!(f.body[0], code, "{context}: REJECT code: {}", f.show());
        self.expect_close(context);
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
        self.w.write_all(&ask(h)).map_err(|e| format!("ASK {}: {e}", hex(h)))?;
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

    /// Reads until `expected` arrives (keep-alives aside) or `deadline` passes; returns when.
    fn wait_for(&mut self, expected: &[u8], start: Instant, deadline: Duration) -> Result<Duration, String> {
        let result = loop {
            let left = deadline.saturating_sub(start.elapsed()).max(Duration::from_millis(1));
            self.r.get_ref().set_read_timeout(Some(left)).unwrap();
            match self.try_recv() {
                Ok(Some(f)) if f.ty.is_none() => {}
                Ok(Some(f)) if f.wire() == expected => break Ok(start.elapsed()),
                Ok(Some(f)) => break Err(format!("expected {}, got {}", hex(expected), f.show())),
                Ok(None) => break Err("the node closed the connection".to_owned()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break Err(format!("no answer {:?} after the start", start.elapsed()))
                }
                Err(e) => break Err(e.to_string()),
            }
        };
        self.r.get_ref().set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        result
    }
}

/// Everything the node sends until it closes, one token per frame ("HELLO", "PEERS",
/// "REJECT(3)", …), then "EOF" (a reset after a REJECT counts as a close too).
fn transcript(c: &mut Conn, port: u16) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    loop {
        match c.try_recv() {
            Ok(Some(f)) => out.push(match f.ty {
                None => "keep-alive".to_owned(),
                Some(HELLO) if f.body[..4] == *b"PEX\x01" && f.body[36..] == port.to_be_bytes() => "HELLO".to_owned(),
                Some(PEERS) => "PEERS".to_owned(),
                Some(REJECT) => format!("REJECT({})", f.body[0]),
                _ => f.show(),
            }),
            Ok(None) => break out.push("EOF".to_owned()),
            Err(e) if is_reset(&e) && out.last().is_some_and(|l| l.starts_with("REJECT")) => {
                break out.push("EOF".to_owned())
            }
            Err(e) => break out.push(format!("error: {e}")),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The encoder and manifest parser against the examples quoted in the specification
// ---------------------------------------------------------------------------------------------

#[test]
fn encoder_reproduces_the_spec_vectors() {
    let h_pex = sha(b"pex");
    assert_eq!(hex(&h_pex), "262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a");
    let id: Hash = std::array::from_fn(|i| i as u8);
    let vectors: Vec<(&str, Vec<u8>, &str)> = vec![
        ("keepalive", keepalive(), "00000000"),
        ("ask", ask(&h_pex), "0000002100262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a"),
        (
            "give",
            give(b"hello, swarm\n"),
            "0000002e013a2ec73c897660e1919f07a073a741d8e9ba378834fa3b4947d84cb52e03ca7668656c6c6f2c20737761726d0a",
        ),
        ("give_empty", give(b""), "0000002101e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("peers_empty", peers(&[]), "0000000102"),
        (
            "peers_two",
            peers(&[
                (Ipv6Addr::LOCALHOST, 9000),
                ("127.0.0.1".parse::<std::net::Ipv4Addr>().unwrap().to_ipv6_mapped(), 6881),
            ]),
            "000000250200000000000000000000000000000001232800000000000000000000ffff7f0000011ae1",
        ),
        (
            "hello",
            hello(&id, 9000),
            "000000270350455801000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2328",
        ),
        (
            "hello_not_listening",
            hello(&id, 0),
            "000000270350455801000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f0000",
        ),
        ("dont_have", dont_have(&h_pex), "0000002104262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a"),
        (
            "bitfield",
            bitfield(&h_pex, &[0xa0, 0x40]),
            "0000002305262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932aa040",
        ),
        (
            "have",
            have(&h_pex, 70000),
            "0000002506262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a00011170",
        ),
        ("reject_full", reject(2, "peer limit reached"), "00000014070270656572206c696d69742072656163686564"),
        ("cancel", cancel(&h_pex), "0000002108262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a"),
        ("unknown_type", frame(200, b"future"), "00000007c8667574757265"),
    ];
    for (name, ours, spec) in &vectors {
        assert_eq!(hex(ours), *spec, "vector {name}");
        // And the decoder reads each back to the same bytes.
        let f = read_frame(&mut &unhex(spec)[..]).unwrap().unwrap();
        check_rules(&f);
        assert_eq!(hex(&f.wire()), *spec, "vector {name} decoded");
    }
    assert_eq!(full_bits(10), [0xff, 0xc0]);
    assert_eq!(full_bits(1), [0x80]);

    // Section 5.1: the worked example.
    let manifest = unhex(concat!(
        "5045584d",
        "01",
        "00100000",
        "000000000000000d",
        "0009",
        "68656c6c6f2e747874",
        "00000001",
        "7fb72fd845b3b37be652e6155323f0e2d9437c671b08cba3850862cf152851d8"
    ));
    let m = parse_manifest(&manifest);
    assert_eq!((m.name.as_str(), m.size), ("hello.txt", 13));
    assert_eq!(hex(&m.lists[0]), hex(&sha(&sha(b"hello, swarm\n"))));
    assert_eq!(hex(&sha(&manifest)), "d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de4");
}

// ---------------------------------------------------------------------------------------------
// 1. Handshake
// ---------------------------------------------------------------------------------------------

#[test]
fn handshake_hello_then_peers() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = write_file(dir.path(), "small.bin", 100_000, 1);
    let node = Node::start(&file, &[]);
    let mut rng = Rng::new(11);

    let mut a = node.connect();
    let our_id = rng.hash();
    a.send(&hello(&our_id, 0));
    let node_id = a.expect_hello(node.port);
    assert_ne!(node_id, our_id);
    let peers = a.expect_peers();
    // A seeder started without --peer has dialled nobody, so it can list nobody (4.2).
    assert!(peers.is_empty(), "a seeder that dialled nobody listed {peers:?}");

    // The node id is chosen once per run: a second connection sees the same one.
    let mut b = node.connect();
    assert_eq!(b.handshake(&rng.hash(), node.port), node_id, "node id changed between connections");

    // Both connections remain usable.
    let h = rng.hash();
    for c in [&mut a, &mut b] {
        c.send(&ask(&h));
        let f = c.recv();
        assert_eq!(f.wire(), dont_have(&h), "got {}", f.show());
    }
}

#[test]
fn handshake_duplicate_and_self_ids_are_rejected_after_hello() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = write_file(dir.path(), "small.bin", 100_000, 2);
    let node = Node::start(&file, &[]);
    let mut rng = Rng::new(12);

    let id = rng.hash();
    let mut first = node.connect();
    let node_id = first.handshake(&id, node.port);

    // 4.1.3: an id already registered gets REJECT(1), sent after our HELLO.
    let mut dup = node.connect();
    dup.send(&hello(&id, 0));
    dup.expect_hello(node.port);
    dup.expect_reject_then_close(DUPLICATE, "HELLO with an id already connected");

    // 4.1.3: the node's own id gets REJECT(4).
    let mut me = node.connect();
    me.send(&hello(&node_id, 0));
    me.expect_hello(node.port);
    me.expect_reject_then_close(SELF, "HELLO with the node's own id");

    // 4.1.2: a REJECT as the first frame: the node closes without answering (after its HELLO).
    let mut rej = node.connect();
    rej.send(&reject(6, "bye"));
    rej.expect_hello(node.port);
    rej.expect_close("REJECT as the first frame");

    // The first connection was not disturbed.
    let h = rng.hash();
    first.send(&ask(&h));
    assert_eq!(first.recv().wire(), dont_have(&h));
}

// ---------------------------------------------------------------------------------------------
// 2. A complete download by hand
// ---------------------------------------------------------------------------------------------

#[test]
fn fetch_whole_file_by_hand_with_eight_pipelined_asks() {
    let dir = tempfile::tempdir().unwrap();
    let size = 9 * PIECE + 12345;
    let (file, original) = write_file(dir.path(), "nine-and-a-bit.bin", size, 3);
    let node = Node::start(&file, &[]);
    let mut rng = Rng::new(13);
    let mut c = node.peer(&mut rng);

    // The manifest is the blob whose hash is the root.
    c.send(&ask(&node.root));
    let f = c.recv();
    assert!(f.is(GIVE) && f.hash() == node.root, "ASK root: got {}", f.show());
    let manifest_blob = &f.body[32..];
    assert_eq!(sha(manifest_blob), node.root, "the manifest does not hash to the root");
    let m = parse_manifest(manifest_blob);
    assert_eq!(m.name, "nine-and-a-bit.bin");
    assert_eq!(m.size, size as u64);
    let pieces = size.div_ceil(PIECE);
    assert_eq!(pieces, 10);
    assert_eq!(m.lists.len(), 1);

    // Hash lists.
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
    assert_eq!(hashes.len(), pieces);
    assert_eq!(hashes, piece_hashes(&original), "the lists name other pieces than the file's");

    // Pieces: identical pieces are one blob, fetched once and written at every position.
    let mut positions: HashMap<Hash, Vec<usize>> = HashMap::new();
    let mut todo: VecDeque<Hash> = VecDeque::new();
    for (i, h) in hashes.iter().enumerate() {
        let at = positions.entry(*h).or_default();
        if at.is_empty() {
            todo.push_back(*h);
        }
        at.push(i);
    }
    let mut out = vec![0u8; size];
    let mut outstanding: HashSet<Hash> = HashSet::new();
    let mut most_outstanding = 0;
    while !todo.is_empty() || !outstanding.is_empty() {
        while outstanding.len() < 8 {
            let Some(h) = todo.pop_front() else { break };
            c.send(&ask(&h));
            outstanding.insert(h);
        }
        most_outstanding = most_outstanding.max(outstanding.len());
        let f = c.recv();
        assert!(f.is(GIVE), "expected a GIVE, got {}", f.show());
        let h = f.hash();
        assert!(outstanding.remove(&h), "GIVE for a hash not asked: {}", f.show());
        let data = &f.body[32..];
        assert_eq!(sha(data), h, "GIVE data does not hash to {}", hex(&h));
        for &i in &positions[&h] {
            let range = i * PIECE..((i + 1) * PIECE).min(size);
            assert_eq!(data.len(), range.len(), "length of piece {i}");
            out[range].copy_from_slice(data);
        }
    }
    assert_eq!(most_outstanding, 8);
    assert!(out == original, "the reassembled file differs from the original");
}

/// Section 5.1 frame by frame: the node must produce exactly the quoted bytes.
#[test]
fn worked_example_frames_match_the_spec_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.txt");
    fs::write(&file, b"hello, swarm\n").unwrap();
    let node = Node::start(&file, &[]);
    assert_eq!(hex(&node.root), "d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de4");
    let mut c = node.peer(&mut Rng::new(14));

    let ask_root = ask(&node.root);
    assert_eq!(hex(&ask_root), "0000002100d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de4");
    c.send(&ask_root);
    assert_eq!(
        hex(&c.recv().wire()),
        concat!(
            "0000006101d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de4",
            "5045584d0100100000000000000000000d000968656c6c6f2e747874000000017fb72fd845b3b37be652e6155323f0e2d943",
            "7c671b08cba3850862cf152851d8"
        ),
        "GIVE manifest"
    );
    c.send(&ask(&hash_from_hex("7fb72fd845b3b37be652e6155323f0e2d9437c671b08cba3850862cf152851d8")));
    assert_eq!(
        hex(&c.recv().wire()),
        "00000041017fb72fd845b3b37be652e6155323f0e2d9437c671b08cba3850862cf152851d83a2ec73c897660e1919f07a073a741d8e9ba378834fa3b4947d84cb52e03ca76",
        "GIVE list"
    );
    c.send(&bitfield(&node.root, &[0]));
    assert_eq!(
        hex(&c.recv().wire()),
        "0000002205d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de480",
        "BITFIELD (all)"
    );
    c.send(&ask(&sha(b"hello, swarm\n")));
    assert_eq!(
        hex(&c.recv().wire()),
        "0000002e013a2ec73c897660e1919f07a073a741d8e9ba378834fa3b4947d84cb52e03ca7668656c6c6f2c20737761726d0a",
        "GIVE piece (vector give)"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. DONT_HAVE, BITFIELD, HAVE, CANCEL
// ---------------------------------------------------------------------------------------------

#[test]
fn dont_have_bitfield_have_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let size = 9 * PIECE + 12345; // 10 pieces: two bitfield bytes, six spare bits
    let (file, original) = write_file(dir.path(), "ten.bin", size, 4);
    let hashes = piece_hashes(&original);
    let node = Node::start(&file, &[]);
    let mut rng = Rng::new(15);
    let mut c = node.peer(&mut rng);

    // An unknown hash: DONT_HAVE for exactly that hash, once per ASK, repeats included.
    let missing = rng.hash();
    c.send(&ask(&missing));
    let f = c.recv();
    assert_eq!(f.wire(), dont_have(&missing), "ASK {}: got {}", hex(&missing), f.show());
    c.send(&[ask(&missing), ask(&missing)].concat());
    for _ in 0..2 {
        let f = c.recv();
        assert_eq!(f.wire(), dont_have(&missing), "repeated ASK: got {}", f.show());
    }

    // BITFIELD with no bits set declares interest; the seeder answers with all pieces set.
    c.send(&bitfield(&node.root, &[0, 0]));
    let f = c.recv();
    assert_eq!(f.wire(), bitfield(&node.root, &full_bits(10)), "BITFIELD reply: got {}", f.show());
    assert_eq!(&f.body[32..], [0xff, 0xc0], "10 pieces set, spare bits zero");

    // HAVE (known root, in range; unknown root), CANCEL of a hash never asked, a keep-alive, an
    // unknown type and a second BITFIELD for the same root (at most one reply per connection and
    // root): none has a reply and the connection stays usable.
    let other_root = rng.hash();
    let quiet = [
        have(&node.root, 9),
        have(&other_root, 70000),
        cancel(&rng.hash()),
        keepalive(),
        frame(200, b"future"),
        bitfield(&node.root, &[0, 0]),
    ]
    .concat();
    c.send(&quiet);
    c.fetch_expect(&hashes[3], &original[3 * PIECE..4 * PIECE]);

    // A repeated ASK for a piece gets one GIVE each.
    let last = &original[9 * PIECE..];
    c.send(&[ask(&hashes[9]), ask(&hashes[9])].concat());
    for _ in 0..2 {
        let f = c.recv();
        assert!(f.is(GIVE) && f.hash() == hashes[9], "repeated ASK of piece 9: got {}", f.show());
        assert!(f.body[32..] == *last);
    }

    // CANCEL of a hash asked and already answered is harmless too.
    c.send(&cancel(&hashes[9]));
    c.fetch_expect(&hashes[0], &original[..PIECE]);
}

// ---------------------------------------------------------------------------------------------
// 4. Malformed frames
// ---------------------------------------------------------------------------------------------

/// Frames that are not a valid HELLO, sent in place of HELLO (section 2 vectors, 4.1.2).
fn bad_first_frames(rng: &mut Rng) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("too_long (vector) as first frame", unhex("0010002201")),
        ("hello_short (vector)", unhex("0000000f035045580100010203040506070809")),
        (
            "hello_bad_magic (vector)",
            unhex("000000270350455901000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2328"),
        ),
        (
            "hello_bad_version (vector)",
            unhex("000000270350455802000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2328"),
        ),
        ("HELLO with a 39-byte body", [&[0, 0, 0, 40][..], &hello(&rng.hash(), 0)[4..], &[0]].concat()),
        (
            "ASK (vector) as first frame",
            unhex("0000002100262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a"),
        ),
        ("PEERS as first frame", peers(&[])),
    ]
}

/// Violations after the handshake (section 2 vectors, section 3 length rules, 4.4, 4.5), for a
/// node that seeds the 10-piece file `root`.
fn violations(root: &Hash, rng: &mut Rng) -> Vec<(&'static str, Vec<u8>)> {
    let many: Vec<(Ipv6Addr, u16)> = (0..51).map(|i| (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i), 9)).collect();
    vec![
        ("too_long (vector)", unhex("0010002201")),
        ("ask_short (vector)", unhex("0000002000262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab27184979893")),
        ("peers_ragged (vector)", unhex("00000012020000000000000000000000000000000000")),
        (
            "have_short (vector)",
            unhex("0000002306262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a0001"),
        ),
        ("ASK with a 33-byte body", frame(ASK, &[7; 33])),
        ("GIVE with a 31-byte body", frame(GIVE, &[7; 31])),
        ("PEERS with 51 entries", peers(&many)),
        ("DONT_HAVE with a 31-byte body", frame(DONT_HAVE, &[7; 31])),
        ("BITFIELD with a 31-byte body", frame(BITFIELD, &[7; 31])),
        ("BITFIELD of 3 bytes for a known 10-piece file", bitfield(root, &[0, 0, 0])),
        ("BITFIELD of a known file with spare bits set", bitfield(root, &[0, 0x20])),
        ("HAVE with a 37-byte body", frame(HAVE, &[7; 37])),
        ("HAVE out of range for a known file", have(root, 10)),
        ("REJECT with an empty body", frame(REJECT, &[])),
        ("CANCEL with a 33-byte body", frame(CANCEL, &[7; 33])),
        ("a second HELLO", hello(&rng.hash(), 0)),
    ]
}

#[test]
fn malformed_frames_get_reject_3_and_close_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let size = 9 * PIECE + 12345; // 10 pieces
    let (file, original) = write_file(dir.path(), "ten.bin", size, 5);
    let hashes = piece_hashes(&original);
    let node = Node::start(&file, &[]);
    let mut rng = Rng::new(16);

    let mut good = node.peer(&mut rng);
    let mut wrong = Vec::new();

    // In place of HELLO (4.1.2): the node's HELLO, then REJECT(3), then EOF.
    for (case, bytes) in bad_first_frames(&mut rng) {
        let mut c = node.connect();
        c.send(&bytes);
        let got = transcript(&mut c, node.port);
        if got != ["HELLO", "REJECT(3)", "EOF"] {
            wrong.push(format!("{case}: sent {} got {got:?}", hex(&bytes[..bytes.len().min(64)])));
        }
    }

    // After a complete handshake (4.4): REJECT(3), then EOF.
    for (case, bytes) in violations(&node.root, &mut rng) {
        let mut c = node.peer(&mut rng);
        c.send(&bytes);
        let got = transcript(&mut c, node.port);
        if got != ["REJECT(3)", "EOF"] {
            wrong.push(format!("handshake, then {case}: sent {} got {got:?}", hex(&bytes[..bytes.len().min(64)])));
        }
    }

    // The well-behaved connection outlived all of them.
    good.fetch_expect(&hashes[9], &original[9 * PIECE..]);
    good.fetch_expect(&hashes[0], &original[..PIECE]);
    assert!(wrong.is_empty(), "answers that disagree with sections 4.1 and 4.4:\n{}", wrong.join("\n"));
}

/// 4.2: PEERS follows a successful handshake "always, even empty — before any other frame",
/// so also before the REJECT(3) for a violation that arrives together with our HELLO.
#[test]
fn peers_precedes_the_reject_for_a_violation_sent_with_hello() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = write_file(dir.path(), "ten.bin", 9 * PIECE + 12345, 5);
    let node = Node::start(&file, &[]);
    let mut rng = Rng::new(20);
    let mut wrong = Vec::new();
    for (case, bytes) in violations(&node.root, &mut rng) {
        let mut c = node.connect();
        let sent = [hello(&rng.hash(), 0), bytes].concat();
        c.send(&sent);
        let got = transcript(&mut c, node.port);
        if got != ["HELLO", "PEERS", "REJECT(3)", "EOF"] {
            wrong.push(format!("HELLO + {case}: sent {} got {got:?}", hex(&sent[..sent.len().min(96)])));
        }
    }
    assert!(wrong.is_empty(), "PEERS missing before REJECT (section 4.2):\n{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 5. The connection limit
// ---------------------------------------------------------------------------------------------

#[test]
fn two_hundred_connections_get_fifty_hellos_and_reject_2() {
    let dir = tempfile::tempdir().unwrap();
    let (file, original) = write_file(dir.path(), "small.bin", 300_000, 6);
    let node = Node::start(&file, &[]);
    let mut rng = Rng::new(17);

    let mut conns: Vec<Conn> = (0..200)
        .map(|_| {
            let mut c = node.connect();
            c.send(&hello(&rng.hash(), 0));
            c
        })
        .collect();
    let mut hellos = Vec::new();
    let mut rejects = 0;
    for (i, c) in conns.iter_mut().enumerate() {
        let f = c.recv();
        if f.is(HELLO) {
            assert_eq!(&f.body[0..4], b"PEX\x01", "connection {i}: {}", f.show());
            c.expect_peers();
            hellos.push(i);
        } else {
            assert!(
                f.is(REJECT) && f.body[0] == LIMIT,
                "connection {i}: expected HELLO or REJECT(2), got {}",
                f.show()
            );
            c.expect_close("REJECT(2) is the only frame");
            rejects += 1;
        }
    }
    assert_eq!(hellos.len(), 50, "HELLOs with --max-peers 50 (and {rejects} REJECT(2))");
    assert_eq!(rejects, 150);

    // The admitted connections work.
    let missing = rng.hash();
    for &i in &hellos {
        conns[i].send(&ask(&missing));
        assert_eq!(conns[i].recv().wire(), dont_have(&missing), "connection {i}");
    }
    conns[hellos[49]].fetch_expect(&sha(&original), &original);
}

// ---------------------------------------------------------------------------------------------
// 6. Slow and silent connections
// ---------------------------------------------------------------------------------------------

/// Reads frames from `r` on a thread of its own until EOF or an error (which ends the stream).
fn frame_reader(mut r: impl Read + Send + 'static) -> mpsc::Receiver<io::Result<Option<Frame>>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || loop {
        let f = read_frame(&mut r);
        let more = matches!(f, Ok(Some(_)));
        if tx.send(f).is_err() || !more {
            break;
        }
    });
    rx
}

/// Sends a valid HELLO one byte every 300 ms until the node closes the connection. Expects the
/// node's HELLO, then REJECT(3), then EOF; returns when REJECT arrived and how many bytes of our
/// HELLO had been sent by then.
fn dribble_hello(port: u16, id: &Hash) -> (Duration, usize) {
    let t0 = Instant::now();
    let Conn { r, mut w } = Conn::open(port);
    let rx = frame_reader(r);
    let bytes = hello(id, 0);
    let (mut sent, mut writing, mut next) = (0, true, Instant::now());
    let mut frames: Vec<(Duration, usize, Frame)> = Vec::new();
    loop {
        let shown = || frames.iter().map(|(_, _, f)| f.show()).collect::<Vec<_>>();
        assert!(t0.elapsed() < Duration::from_secs(20), "dribbling connection still open; got {:?}", shown());
        if writing && sent < bytes.len() && Instant::now() >= next {
            match w.write_all(&bytes[sent..=sent]) {
                Ok(()) => sent += 1,
                Err(_) => writing = false, // the node has closed; its frames are still to be read
            }
            next += Duration::from_millis(300);
        }
        let wait = if writing && sent < bytes.len() {
            next.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(1)
        };
        match rx.recv_timeout(wait) {
            Ok(Ok(Some(f))) if f.ty.is_none() => {}
            Ok(Ok(Some(f))) => {
                check_rules(&f);
                frames.push((t0.elapsed(), sent, f));
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) if is_reset(&e) => break,
            Ok(Err(e)) => panic!("dribbling connection: {e}; got {:?}", shown()),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("the reader ends with EOF or an error"),
        }
    }
    let shown: Vec<String> = frames.iter().map(|(_, _, f)| f.show()).collect();
    assert!(
        frames.len() == 2
            && frames[0].2.is(HELLO)
            && frames[0].2.body[..4] == *b"PEX\x01"
            && frames[1].2.is(REJECT)
            && frames[1].2.body[0] == VIOLATION,
        "dribbled HELLO: expected HELLO, REJECT(3), EOF; got {shown:?}"
    );
    (frames[1].0, frames[1].1)
}

fn join<T>(h: thread::JoinHandle<T>) -> T {
    h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

#[test]
fn silent_dribbling_and_stalled_connections_are_closed_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let size = 2 * PIECE + 1000; // 3 pieces, the last one short
    let (file, original) = write_file(dir.path(), "three.bin", size, 7);
    let hashes = piece_hashes(&original);
    let mut node = Node::start(&file, &["--hello-timeout", "1.5", "--idle-timeout", "2"]);
    let port = node.port;
    let mut rng = Rng::new(18);
    let mut normal = node.peer(&mut rng);

    // (a) Sends nothing: REJECT(3) once the HELLO time-out passes, then EOF.
    let silent = thread::spawn(move || {
        let t0 = Instant::now();
        let mut c = Conn::open(port);
        c.expect_hello(port);
        let f = c.recv();
        let at = t0.elapsed();
        assert!(f.is(REJECT) && f.body[0] == VIOLATION, "silent connection: expected REJECT(3), got {}", f.show());
        c.expect_close("silent connection");
        at
    });

    // (b) A valid HELLO, one byte every 300 ms: it would take 12.9 s, far beyond 1.5 s.
    let id = rng.hash();
    let dribbler = thread::spawn(move || dribble_hello(port, &id));

    // (c) After the handshake, a frame announced as 1 MiB whose body stops after 11 bytes: closed
    // once the 2 s idle time-out passes, without REJECT (4.6).
    let id = rng.hash();
    let staller = thread::spawn(move || {
        let mut c = Conn::open(port);
        c.handshake(&id, port);
        c.send(&[0x00, 0x10, 0x00, 0x00, GIVE, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let t0 = Instant::now();
        loop {
            match c.try_recv() {
                Ok(Some(f)) if f.ty.is_none() => {}
                Ok(Some(f)) => panic!("stalled connection: expected a close without REJECT, got {}", f.show()),
                Ok(None) => break,
                Err(e) if is_reset(&e) => break,
                Err(e) => panic!("stalled connection: {e}"),
            }
        }
        t0.elapsed()
    });

    // (d) Meanwhile a normal client keeps ASKing and getting its pieces.
    let workers = [silent, staller];
    let (mut rounds, mut slowest) = (0, Duration::ZERO);
    while !(dribbler.is_finished() && workers.iter().all(|w| w.is_finished())) {
        let i = rounds % hashes.len();
        let t = Instant::now();
        normal.fetch_expect(&hashes[i], &original[i * PIECE..((i + 1) * PIECE).min(size)]);
        slowest = slowest.max(t.elapsed());
        rounds += 1;
        thread::sleep(Duration::from_millis(100)); // pacing, well inside the 2 s idle time-out
    }
    let [silent, stalled] = workers.map(join);
    let (dribble_rejected, dribbled) = join(dribbler);
    eprintln!(
        "silent closed after {silent:?}; dribbler rejected after {dribble_rejected:?} ({dribbled} of 43 bytes); \
         stalled closed after {stalled:?}; normal client: {rounds} rounds, slowest {slowest:?}"
    );
    let few_seconds = Duration::from_secs(10);
    assert!(silent >= Duration::from_secs(1) && silent <= few_seconds, "silent connection closed after {silent:?}");
    assert!(
        dribble_rejected >= Duration::from_secs(1) && dribble_rejected <= few_seconds,
        "dribbling connection rejected after {dribble_rejected:?}"
    );
    assert!(dribbled < 43, "the dribbled HELLO was complete before the REJECT");
    assert!(
        stalled >= Duration::from_secs(1) && stalled <= Duration::from_secs(15),
        "stalled connection closed after {stalled:?}"
    );
    assert!(rounds >= 5, "the normal client completed only {rounds} ASKs");
    assert!(slowest < Duration::from_secs(5), "the normal client waited {slowest:?} for a GIVE");
    normal.fetch_expect(&hashes[2], &original[2 * PIECE..]);
    assert!(node.child.try_wait().unwrap().is_none(), "the node exited");
}

// ---------------------------------------------------------------------------------------------
// 7. Floods with bounded memory
// ---------------------------------------------------------------------------------------------

const RSS_LIMIT_KIB: u64 = 150 * 1024;
/// How long a well-behaved client may wait for a GIVE while another connection floods the node.
const SERVE_LIMIT: Duration = Duration::from_secs(5);

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
    let mut rng = Rng::new(seed + 100);
    let mut good = node.peer(&mut rng);
    good.fetch_expect(&pieces[0].0, &pieces[0].1);
    let flooder = node.peer(&mut rng);
    (dir, node, pieces, good, flooder, rng)
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
                good.r.get_ref().set_read_timeout(Some(SERVE_LIMIT)).unwrap();
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
                good.r.get_ref().set_read_timeout(Some(IO_TIMEOUT)).unwrap();
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

/// (a) 10,000 PEERS frames of 50 random addresses each (9 MB), then an ASK whose DONT_HAVE shows
/// that every PEERS frame has been read.
#[test]
fn flood_of_peers_frames_keeps_memory_bounded_and_others_served() {
    // The spec sets no pace, but a node that needs longer than the read bound of this suite for
    // 9 MB of PEERS lets one peer keep it busy with a trickle of traffic.
    const DIGEST_LIMIT: Duration = IO_TIMEOUT;
    let (_dir, mut node, pieces, good, mut flooder, mut rng) = flood_setup(8);
    let watch = Watch::start(&node, good, &pieces);

    let start = Instant::now();
    let probe = rng.hash();
    let writer = {
        let mut w = flooder.w.try_clone().unwrap();
        let mut rng = Rng::new(rng.next_u64());
        thread::spawn(move || -> io::Result<()> {
            let mut batch = Vec::with_capacity(100 * 905);
            for i in 0..10_000 {
                let entries: Vec<(Ipv6Addr, u16)> = (0..50).map(|_| (doc_addr(&mut rng), 9)).collect();
                batch.extend_from_slice(&peers(&entries));
                if i % 100 == 99 {
                    w.write_all(&batch)?;
                    batch.clear();
                }
            }
            w.write_all(&ask(&probe))
        })
    };
    let digested = flooder.wait_for(&dont_have(&probe), start, DIGEST_LIMIT);
    let report = watch.finish();
    eprintln!("PEERS flood: probe answered: {digested:?}; {}", report.show());
    let mut problems = report.problems();
    if let Err(e) = &digested {
        problems.push(format!(
            "the DONT_HAVE for an ASK sent after 10,000 PEERS frames of 50 new addresses each did not come \
             within {DIGEST_LIMIT:?}: {e}"
        ));
    }
    assert!(problems.is_empty(), "PEERS flood:\n{}", problems.join("\n"));

    join(writer).expect("writing the PEERS flood");
    let mut good = report.good;
    good.fetch_expect(&pieces[1].0, &pieces[1].1);
    let probe = rng.hash();
    flooder.send(&ask(&probe));
    assert_eq!(flooder.recv().wire(), dont_have(&probe), "the flooding connection, afterwards");
    assert!(node.child.try_wait().unwrap().is_none(), "the node exited");
}

/// (b) 2,000 unsolicited GIVEs of 1 KiB (correct hashes). 4.3 allows 1024 and closes with
/// REJECT(5) on the next; either outcome is accepted, but the node must keep serving others.
#[test]
fn flood_of_unsolicited_gives_keeps_memory_bounded_and_others_served() {
    let (_dir, mut node, pieces, good, flooder, mut rng) = flood_setup(9);
    let watch = Watch::start(&node, good, &pieces);

    let start = Instant::now();
    let Conn { r, mut w } = flooder;
    let rx = frame_reader(r);
    let gives: Vec<u8> = (0..2000).flat_map(|_| give(&rng.bytes(1024))).collect();
    let wrote = gives.chunks(64 << 10).try_for_each(|chunk| w.write_all(chunk));
    let probe = rng.hash();
    let wrote_probe = wrote.is_ok() && w.write_all(&ask(&probe)).is_ok();
    let outcome = loop {
        match rx.recv_timeout(IO_TIMEOUT) {
            Ok(Ok(Some(f))) if f.ty.is_none() => {}
            Ok(Ok(Some(f))) if f.is(REJECT) => {
                check_rules(&f);
                assert_eq!(f.body[0], MISBEHAVING, "GIVE flood: got {}", f.show());
                match rx.recv_timeout(IO_TIMEOUT) {
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) if is_reset(&e) => {}
                    Ok(Ok(Some(f))) => panic!("GIVE flood: a frame after REJECT: {}", f.show()),
                    other => panic!("GIVE flood: no close after REJECT: {:?}", other.map(|r| r.map(|_| ()))),
                }
                break format!("REJECT(5) {:?} and close", String::from_utf8_lossy(&f.body[1..]));
            }
            Ok(Ok(Some(f))) if wrote_probe && f.wire() == dont_have(&probe) => break "still open".to_owned(),
            Ok(Ok(Some(f))) => panic!("GIVE flood: unexpected {}", f.show()),
            Ok(Ok(None)) => panic!("GIVE flood: closed without REJECT"),
            Ok(Err(e)) => panic!("GIVE flood: {e} without REJECT"),
            Err(e) => panic!("GIVE flood: no answer within {IO_TIMEOUT:?}: {e}"),
        }
    };
    let took = start.elapsed();
    let report = watch.finish();
    eprintln!("GIVE flood: {outcome} after {took:?}; {}", report.show());
    let problems = report.problems();
    assert!(problems.is_empty(), "GIVE flood:\n{}", problems.join("\n"));

    let mut good = report.good;
    good.fetch_expect(&pieces[1].0, &pieces[1].1);
    let mut fresh = node.peer(&mut rng);
    fresh.fetch_expect(&pieces[0].0, &pieces[0].1);
    assert!(node.child.try_wait().unwrap().is_none(), "the node exited");
}

/// (c) 50,000 ASKs for random hashes without reading the replies for a while (the node must push
/// back, 4.3), then each must be answered by exactly one DONT_HAVE.
#[test]
fn flood_of_asks_keeps_memory_bounded_and_others_served() {
    let (_dir, mut node, pieces, good, mut flooder, mut rng) = flood_setup(10);
    let watch = Watch::start(&node, good, &pieces);

    let start = Instant::now();
    let asked: Vec<Hash> = (0..50_000).map(|_| rng.hash()).collect();
    let asks: Vec<u8> = asked.iter().flat_map(ask).collect();
    let mut w = flooder.w.try_clone().unwrap();
    let writer = thread::spawn(move || w.write_all(&asks));
    thread::sleep(Duration::from_secs(1)); // deliberately not reading: back-pressure builds up
    let mut pending: HashSet<Hash> = asked.into_iter().collect();
    assert_eq!(pending.len(), 50_000);
    while !pending.is_empty() {
        let f = flooder.recv();
        assert!(f.is(DONT_HAVE), "ASK flood: expected DONT_HAVE, got {} ({} pending)", f.show(), pending.len());
        assert!(pending.remove(&f.hash()), "ASK flood: DONT_HAVE for a hash not asked, or twice: {}", f.show());
    }
    join(writer).expect("writing the ASK flood");
    let took = start.elapsed();
    let report = watch.finish();
    eprintln!("ASK flood: 50,000 DONT_HAVEs after {took:?}; {}", report.show());
    let problems = report.problems();
    assert!(problems.is_empty(), "ASK flood:\n{}", problems.join("\n"));

    let mut good = report.good;
    good.fetch_expect(&pieces[1].0, &pieces[1].1);
    flooder.fetch_expect(&pieces[0].0, &pieces[0].1);
    assert!(node.child.try_wait().unwrap().is_none(), "the node exited");
}
