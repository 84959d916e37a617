//! Nodes on [::1] in one process: seed→fetch at boundary sizes, hostile and
//! malformed peers, connection limits, and the handshake rules.
//!
//! This file holds the helpers shared by the groups of tests; each group is a module in
//! `tests/swarm/` (not a test binary of its own: there is no `tests/swarm/main.rs`).

mod common;
mod secure;

#[path = "swarm/connections.rs"]
mod connections;
#[path = "swarm/dialling.rs"]
mod dialling;
#[path = "swarm/hostile.rs"]
mod hostile;
#[path = "swarm/rooms.rs"]
mod rooms;
#[path = "swarm/transfer.rs"]
mod transfer;

use bytes::Bytes;
use common::*;
use pex::identity::Identity;
use pex::manifest::{FileInfo, PIECE_SIZE};
use pex::peer::{self, Direction};
use pex::wire::{Frame, Hello, RejectCode};
use pex::{Config, FetchError, Hash};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const MIB: usize = PIECE_SIZE as usize;

/// A peer that serves `info`'s manifest and lists, claims every piece, and
/// answers every ASK for a piece with garbage.
async fn corrupting_peer(info: &FileInfo) -> FakePeer {
    FakePeer::new().serving_meta(info).claiming_all(info).corrupting().start().await
}

/// Starts a fetch in the background; returns its task and its progress.
fn spawn_fetch(
    node: &pex::Node,
    root: Hash,
    peers: Vec<SocketAddr>,
    out: PathBuf,
) -> (tokio::task::JoinHandle<Result<pex::FetchOutcome, FetchError>>, tokio::sync::watch::Receiver<pex::Progress>) {
    let (tx, rx) = tokio::sync::watch::channel(pex::Progress::default());
    let opts = pex::FetchOptions { output: Some(out), peers, ..Default::default() };
    let node = node.clone();
    (tokio::spawn(async move { node.fetch(root, opts, tx).await }), rx)
}

/// Waits for all fetches; each fetcher writes `out-<i>`.
async fn fetch_all(
    nodes: &[pex::Node],
    root: Hash,
    peers: Vec<Vec<SocketAddr>>,
    dir: &std::path::Path,
) -> Vec<PathBuf> {
    let mut tasks = Vec::new();
    for (i, (node, peers)) in nodes.iter().zip(peers).enumerate() {
        let (node, out) = (node.clone(), dir.join(format!("out-{i}")));
        tasks.push(tokio::spawn(async move {
            fetch(&node, root, peers, out.clone()).await.unwrap_or_else(|e| panic!("fetcher {i}: {e}"));
            out
        }));
    }
    let mut outs = Vec::new();
    for t in tasks {
        outs.push(t.await.unwrap());
    }
    outs
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
