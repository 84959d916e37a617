//! Helpers shared by the integration tests: nodes on [::1], files, raw clients.
#![allow(dead_code)]

use bytes::Bytes;
use pex::connection::{FrameReader, FrameWriter};
use pex::datadir::DataDir;
use pex::identity::Identity;
use pex::manifest::FileInfo;
use pex::peer::{self, Direction, Local};
use pex::wire::{Frame, Hello, PeerEntry};
use pex::{Config, FetchOptions, Hash, Node, NodeId, Progress, Timeouts};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Generous bound for anything a test waits on; never reached when things work.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

pub fn test_config() -> Config {
    Config {
        listen: Some("[::1]:0".parse().unwrap()),
        timeouts: Timeouts { hello: Duration::from_secs(10), ask: Duration::from_secs(10), ..Timeouts::default() },
        ..Config::default()
    }
}

pub async fn node_in(dir: &Path, config: Config) -> Node {
    Node::start(config, Some(DataDir::open(dir).unwrap()), CancellationToken::new()).await.unwrap()
}

/// A node serving `bytes` as a file named `name` under `dir`.
pub async fn seeder(dir: &Path, name: &str, bytes: &[u8], config: Config) -> (Node, Arc<FileInfo>, SocketAddr) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let node = node_in(&dir.join("seeder-data"), config).await;
    let info = node.seed(&path, |_| {}).await.unwrap();
    let addr = node.local_addr().unwrap();
    (node, info, addr)
}

pub async fn fetch(
    node: &Node,
    root: Hash,
    peers: Vec<SocketAddr>,
    out: PathBuf,
) -> Result<pex::FetchOutcome, pex::FetchError> {
    let (tx, _rx) = tokio::sync::watch::channel(Progress::default());
    let opts = FetchOptions { output: Some(out), peers, ..FetchOptions::default() };
    tokio::time::timeout(PATIENCE, node.fetch(root, opts, tx)).await.expect("fetch took too long")
}

/// What a test client or fake peer presents: `identity`, a fresh Noise key.
pub fn local(identity: Identity, listen_port: u16) -> Local {
    Local { identity, keys: pex::noise::Keys::generate(), listen_port, flags: pex::wire::FLAG_SHAREABLE }
}

/// A hand-driven protocol client built on the codec, over a v2 (Noise) link.
pub struct Raw {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: FrameWriter<OwnedWriteHalf>,
    /// The Noise handshake hash of this connection: what its HELLO signs.
    pub hh: [u8; 32],
    /// Who this client is.
    pub identity: Identity,
}

impl Raw {
    /// Connects and completes the Noise handshake (no HELLO yet), as a new identity.
    pub async fn connect(addr: SocketAddr) -> Raw {
        Self::connect_as(addr, Identity::generate()).await
    }

    /// [`Raw::connect`] as `identity`.
    pub async fn connect_as(addr: SocketAddr, identity: Identity) -> Raw {
        let s = TcpStream::connect(addr).await.unwrap();
        let me = local(identity.clone(), 0);
        let (reader, writer, hh) = peer::secure(s, Direction::Outbound, &me, PATIENCE).await.unwrap();
        Raw { reader, writer, hh, identity }
    }

    /// A plaintext TCP connection, as a v1 client would open.
    pub async fn plain(addr: SocketAddr) -> (FrameReader<OwnedReadHalf>, FrameWriter<OwnedWriteHalf>) {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        (FrameReader::new(r), FrameWriter::new(w))
    }

    /// This connection's HELLO, signed for it.
    pub fn hello(&self, listen_port: u16) -> Frame {
        Frame::Hello(Hello {
            node_id: self.identity.node_id(),
            listen_port,
            flags: 0,
            signature: self.identity.sign_hello(&self.hh),
        })
    }

    /// Connects and completes a HELLO exchange as a new identity; returns the node's HELLO.
    pub async fn handshake(addr: SocketAddr) -> (Raw, Hello) {
        Self::handshake_as(addr, Identity::generate()).await
    }

    /// [`Raw::handshake`] as `identity`.
    pub async fn handshake_as(addr: SocketAddr, identity: Identity) -> (Raw, Hello) {
        let mut raw = Raw::connect_as(addr, identity).await;
        raw.send(&raw.hello(0)).await;
        match raw.next().await {
            Some(Frame::Hello(h)) => (raw, h),
            other => panic!("expected HELLO, got {other:?}"),
        }
    }

    pub async fn send(&mut self, f: &Frame) {
        self.writer.write_frame(f, None).await.unwrap();
    }

    /// Sends bytes the codec would never produce, sealed like frames.
    pub async fn send_bytes(&mut self, b: &[u8]) {
        let _ = self.writer.write_bytes(b).await;
    }

    /// Next frame other than keep-alive and PEERS, or None on close.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            match tokio::time::timeout(PATIENCE, self.reader.read_frame()).await.expect("no frame in time") {
                Ok(Some(Frame::KeepAlive)) | Ok(Some(Frame::Peers(_))) => continue,
                Ok(f) => return f,
                Err(_) => return None,
            }
        }
    }

    /// Next frame of any kind, or None on close.
    pub async fn next_any(&mut self) -> Option<Frame> {
        tokio::time::timeout(PATIENCE, self.reader.read_frame()).await.expect("no frame in time").unwrap_or_default()
    }

    /// Reads until the node closes; returns the REJECT code seen, if any.
    pub async fn expect_reject(&mut self) -> Option<u8> {
        let mut code = None;
        while let Some(f) = self.next().await {
            if let Frame::Reject { code: c, .. } = f {
                code = Some(c);
            }
        }
        code
    }
}

/// Fetches with explicit options (short time-outs for fetches meant to fail).
pub async fn fetch_with(node: &Node, root: Hash, opts: FetchOptions) -> Result<pex::FetchOutcome, pex::FetchError> {
    let (tx, _rx) = tokio::sync::watch::channel(Progress::default());
    tokio::time::timeout(PATIENCE, node.fetch(root, opts, tx)).await.expect("fetch took too long")
}

/// Options for a fetch that is expected to fail: it gives up after 3 s instead of 60.
pub fn failing_fetch(out: PathBuf, peers: Vec<SocketAddr>) -> FetchOptions {
    FetchOptions {
        output: Some(out),
        peers,
        connect_timeout: Duration::from_secs(3),
        give_up_after: Duration::from_secs(3),
        ..FetchOptions::default()
    }
}

/// Polls `done` every 20 ms until it holds; panics with `what` after [`PATIENCE`].
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a [`FakePeer`] sends once the handshake is complete on both sides
/// (the node's PEERS has arrived).
#[derive(Clone, Debug)]
pub enum Step {
    /// A frame.
    Frame(Frame),
    /// Raw bytes: frames the codec would never produce.
    Bytes(Bytes),
    /// Half-close: nothing more is sent; the fake still reads until the node closes.
    Close,
}

/// A hand-driven peer on `[::1]`, built with [`FakePeer::new`]: it accepts any
/// number of connections, counts them, sends HELLO with a fixed node id and
/// PEERS, then answers ASKs from its blobs (DONT_HAVE for anything else), and
/// plays its script. Like a real peer it reads while it writes, reports each
/// REJECT it is sent, and closes once the node closes. Dropping it closes the
/// listener and every connection.
pub struct FakePeer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The node id in its HELLO (its identity's public key).
    pub id: NodeId,
    /// Connections accepted; with only one node that knows it, that node's dials.
    pub accepted: Arc<AtomicUsize>,
    accept_times: Arc<Mutex<Vec<Instant>>>,
    handshakes: Arc<AtomicUsize>,
    rejects: tokio::sync::Mutex<mpsc::UnboundedReceiver<(u8, Instant)>>,
    stop: CancellationToken,
}

/// How a [`FakePeer`] behaves; see its methods.
#[derive(Clone)]
pub struct FakePeerBuilder {
    identity: Identity,
    hello: bool,
    listen_port: Option<u16>,
    advertise: Vec<PeerEntry>,
    blobs: HashMap<Hash, Bytes>,
    corrupt: bool,
    silent: bool,
    bitfield: Option<(Hash, Bytes)>,
    script: Vec<Step>,
}

impl FakePeer {
    /// A peer that completes the handshake and answers every ASK with DONT_HAVE.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> FakePeerBuilder {
        FakePeerBuilder {
            identity: Identity::generate(),
            hello: true,
            listen_port: None,
            advertise: Vec::new(),
            blobs: HashMap::new(),
            corrupt: false,
            silent: false,
            bitfield: None,
            script: Vec::new(),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// When each connection was accepted, in order.
    pub fn accept_times(&self) -> Vec<Instant> {
        lock(&self.accept_times).clone()
    }

    /// Connections accepted after `t`.
    pub fn accepted_since(&self, t: Instant) -> usize {
        lock(&self.accept_times).iter().filter(|a| **a > t).count()
    }

    /// Connections on which the node completed its side of the handshake (sent PEERS).
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// The code of the next REJECT the node sends it (on any connection).
    pub async fn next_reject(&self) -> u8 {
        self.next_reject_at().await.0
    }

    /// The next REJECT's code and when it arrived.
    pub async fn next_reject_at(&self) -> (u8, Instant) {
        let mut rx = self.rejects.lock().await;
        tokio::time::timeout(PATIENCE, rx.recv()).await.expect("no REJECT in time").expect("fake peer stopped")
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakePeerBuilder {
    /// Uses this identity (default: a new one, the same for every connection).
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = identity;
        self
    }

    /// Closes every connection at once, before the Noise handshake: every dial of it fails.
    pub fn no_hello(mut self) -> Self {
        self.hello = false;
        self
    }

    /// The listen port its HELLO advertises (default: the one it listens on).
    pub fn listen_port(mut self, port: u16) -> Self {
        self.listen_port = Some(port);
        self
    }

    /// The addresses its handshake PEERS lists (default: none), each with a new node id.
    pub fn advertising(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.advertise
            .extend(addrs.into_iter().map(|addr| PeerEntry { node_id: Identity::generate().node_id(), addr }));
        self
    }

    /// The entries its handshake PEERS lists.
    pub fn advertising_entries(mut self, entries: impl IntoIterator<Item = PeerEntry>) -> Self {
        self.advertise.extend(entries);
        self
    }

    /// Serves these blobs, each under its SHA-256.
    pub fn serving(mut self, blobs: impl IntoIterator<Item = Bytes>) -> Self {
        self.blobs.extend(blobs.into_iter().map(|b| (Hash::of(&b), b)));
        self
    }

    /// Serves a file's manifest and hash lists (not its pieces).
    pub fn serving_meta(self, info: &FileInfo) -> Self {
        let meta: Vec<Bytes> = std::iter::once(info.manifest_blob.clone()).chain(info.lists.iter().cloned()).collect();
        self.serving(meta)
    }

    /// Answers an ASK for anything it does not serve with 1 MiB of garbage under the asked hash.
    pub fn corrupting(mut self) -> Self {
        self.corrupt = true;
        self
    }

    /// Never answers an ASK.
    pub fn silent(mut self) -> Self {
        self.silent = true;
        self
    }

    /// Answers a BITFIELD for `root` with `bits`.
    pub fn bitfield(mut self, root: Hash, bits: Bytes) -> Self {
        self.bitfield = Some((root, bits));
        self
    }

    /// Claims every piece of `info`'s file (answers its BITFIELD with all bits set).
    pub fn claiming_all(self, info: &FileInfo) -> Self {
        let n = info.pieces.len();
        let mut bits = vec![0xFFu8; n.div_ceil(8)];
        if n % 8 != 0 {
            *bits.last_mut().unwrap() = 0xFF << (8 - n % 8);
        }
        self.bitfield(info.root, bits.into())
    }

    /// Sends these once the handshake is complete on both sides, on every connection.
    pub fn then(mut self, steps: impl IntoIterator<Item = Step>) -> Self {
        self.script.extend(steps);
        self
    }

    /// Binds `[::1]:0` and starts accepting.
    pub async fn start(self) -> FakePeer {
        let listener = TcpListener::bind("[::1]:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reject_tx, reject_rx) = mpsc::unbounded_channel();
        let peer = FakePeer {
            addr,
            id: self.identity.node_id(),
            accepted: Arc::new(AtomicUsize::new(0)),
            accept_times: Arc::new(Mutex::new(Vec::new())),
            handshakes: Arc::new(AtomicUsize::new(0)),
            rejects: tokio::sync::Mutex::new(reject_rx),
            stop: CancellationToken::new(),
        };
        let shared = Arc::new(FakeShared {
            behaviour: self,
            addr,
            handshakes: peer.handshakes.clone(),
            rejects: reject_tx,
            garbage: Bytes::from(vec![0xEE; pex::manifest::PIECE_SIZE as usize]),
        });
        let (accepted, times, stop) = (peer.accepted.clone(), peer.accept_times.clone(), peer.stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => {
                            // Out of descriptors and the like: do not spin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                lock(&times).push(Instant::now());
                accepted.fetch_add(1, Ordering::SeqCst);
                let (shared, stop) = (shared.clone(), stop.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = shared.converse(stream) => {}
                    }
                });
            }
        });
        peer
    }
}

struct FakeShared {
    behaviour: FakePeerBuilder,
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    rejects: mpsc::UnboundedSender<(u8, Instant)>,
    garbage: Bytes,
}

impl FakeShared {
    async fn converse(&self, stream: TcpStream) {
        let b = &self.behaviour;
        if !b.hello {
            return;
        }
        let me = local(b.identity.clone(), b.listen_port.unwrap_or(self.addr.port()));
        let Ok((mut reader, mut writer, hh)) = peer::secure(stream, Direction::Inbound, &me, PATIENCE).await else {
            return;
        };
        let (out, mut queue) = mpsc::unbounded_channel::<Step>();
        let hello = Frame::Hello(me.hello(&hh));
        let peers = Frame::Peers(b.advertise.clone());
        let write = async move {
            for f in [hello, peers] {
                if writer.write_frame(&f, None).await.is_err() {
                    return;
                }
            }
            while let Some(step) = queue.recv().await {
                let ok = match step {
                    Step::Frame(f) => writer.write_frame(&f, None).await.is_ok(),
                    Step::Bytes(bytes) => writer.write_bytes(&bytes).await.is_ok(),
                    Step::Close => {
                        let _ = writer.shutdown().await;
                        // Keep the half-closed writer until the reader is done.
                        while queue.recv().await.is_some() {}
                        return;
                    }
                };
                if !ok {
                    return;
                }
            }
        };
        let read = async move {
            let mut scripted = false;
            while let Ok(Some(frame)) = reader.read_frame().await {
                let reply = match frame {
                    Frame::Peers(_) if !scripted => {
                        scripted = true;
                        self.handshakes.fetch_add(1, Ordering::SeqCst);
                        for step in &b.script {
                            let _ = out.send(step.clone());
                        }
                        continue;
                    }
                    Frame::Reject { code, .. } => {
                        let _ = self.rejects.send((code, Instant::now()));
                        continue;
                    }
                    Frame::Ask(_) if b.silent => continue,
                    Frame::Ask(h) => match b.blobs.get(&h) {
                        Some(data) => Frame::Give { hash: h, data: data.clone() },
                        None if b.corrupt => Frame::Give { hash: h, data: self.garbage.clone() },
                        None => Frame::DontHave(h),
                    },
                    Frame::Bitfield { root, .. } => match &b.bitfield {
                        Some((r, bits)) if *r == root => Frame::Bitfield { root, first: 0, bits: bits.clone() },
                        _ => continue,
                    },
                    _ => continue,
                };
                let _ = out.send(Step::Frame(reply));
            }
        };
        tokio::join!(write, read);
    }
}
