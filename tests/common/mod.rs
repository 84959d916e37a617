//! Helpers shared by the integration tests: nodes on [::1], files, raw clients.
#![allow(dead_code)]

use pex::connection::{FrameReader, FrameWriter};
use pex::datadir::DataDir;
use pex::manifest::FileInfo;
use pex::wire::{Frame, Hello};
use pex::{Config, FetchOptions, Hash, Node, NodeId, Progress, Timeouts};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

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

/// A hand-driven protocol client built on the codec.
pub struct Raw {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: FrameWriter<OwnedWriteHalf>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).await.unwrap();
        let (r, w) = s.into_split();
        Raw { reader: FrameReader::new(r), writer: FrameWriter::new(w) }
    }

    /// Connects and completes a HELLO exchange with a random id; returns the node's HELLO.
    pub async fn handshake(addr: SocketAddr) -> (Raw, Hello) {
        Self::handshake_as(addr, NodeId::random()).await
    }

    pub async fn handshake_as(addr: SocketAddr, id: NodeId) -> (Raw, Hello) {
        let mut raw = Raw::connect(addr).await;
        raw.send(&Frame::Hello(Hello { node_id: id, listen_port: 0 })).await;
        match raw.next().await {
            Some(Frame::Hello(h)) => (raw, h),
            other => panic!("expected HELLO, got {other:?}"),
        }
    }

    pub async fn send(&mut self, f: &Frame) {
        self.writer.write_frame(f, None).await.unwrap();
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let _ = self.writer_inner().write_all(b).await;
    }

    fn writer_inner(&mut self) -> &mut OwnedWriteHalf {
        self.writer.get_mut()
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
