//! One peer connection: the HELLO handshake ([`handshake`]), then a reader
//! and a writer running side by side ([`run`]) until either end closes; the
//! writer answers queued ASKs in the order the node's [`UploadLog`] ranks them.
//!
//! A connection knows neither the node nor the download engine. It talks to
//! its owner through the [`Handler`] trait (blobs to serve, PEERS, BITFIELD
//! and HAVE received, the end of the connection) and delivers the answers to
//! ASKs, as [`Answer`]s, on the channel each ASK was routed to.

mod handshake;
mod tasks;
mod uploads;

pub use handshake::{dial, handshake, refuse, secure, Handshaken, Local};
pub use uploads::UploadLog;

use crate::hash::{Hash, NodeId};
use crate::lock;
use crate::mapping::Body;
use crate::ratelimit::RateLimiter;
use crate::wire::{Frame, PeerEntry};
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// ASKs one connection may have queued or in the writer, unanswered, before
/// its reader stops reading: every answer holds its slot until written, so an
/// ASK flood from a peer that never reads turns into TCP back-pressure.
pub const MAX_QUEUED_ASKS: usize = 256;
/// GIVEs nobody asked for that a connection may send before it is closed.
pub const MAX_UNSOLICITED: u32 = 1024;
/// Roots one connection may declare interest in (by BITFIELD).
pub const MAX_INTEREST: usize = 1024;
/// Most bytes of bits in one BITFIELD: what fits in the largest frame.
pub const MAX_BITFIELD_BYTES: usize = crate::wire::MAX_FRAME_LEN - 1 - crate::wire::BITFIELD_HEAD;
/// How long a closing connection waits to deliver its REJECT and drain.
const LINGER: Duration = Duration::from_secs(2);

/// Which side opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The peer dialled us.
    Inbound,
    /// We dialled the peer.
    Outbound,
}

/// Why a connection could not be set up, or how it ended badly.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Network failure.
    #[error("{}", crate::text::io_message(.0))]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer sent bad data or floods.
    #[error("misbehaving peer: {0}")]
    Misbehaving(String),
    /// A step took too long.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The peer refused us or closed with REJECT.
    #[error("refused by peer: {} (code {code})", crate::text::shown(.reason))]
    Rejected {
        /// REJECT code.
        code: u8,
        /// Seconds it asks us to wait before dialling again (0: do not retry).
        retry_after: u16,
        /// Its reason text, as sent (show it only through [`crate::text`]).
        reason: String,
    },
    /// The peer speaks wire protocol v1 (plaintext), not v2.
    #[error("the peer speaks pex/1; this node speaks pex/2 (encrypted): upgrade the other node")]
    OldProtocol,
    /// The peer proved a node id other than the one we expected at its address.
    #[error("expected node {}, but the peer proved it is node {}", .expected.short(), .got.short())]
    WrongNode {
        /// The node id we were told to expect (`--peer NODEID@…`, or PEERS).
        expected: NodeId,
        /// The node id its signed HELLO proves.
        got: NodeId,
    },
    /// A transport message failed to decrypt (tampered with on the way), or nonces ran out.
    #[error("secure channel failed: {0}")]
    Crypto(String),
    /// We dialled ourselves.
    #[error("connected to self")]
    SelfConnection,
    /// Already connected to this node id.
    #[error("already connected to node {}", .0.short())]
    Duplicate(NodeId),
    /// The peer is banned for this session.
    #[error("peer is banned")]
    Banned,
    /// The peer closed before the handshake completed.
    #[error("closed by peer")]
    Closed,
    /// This node is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

impl From<crate::connection::ReadError> for PeerError {
    fn from(e: crate::connection::ReadError) -> Self {
        match e {
            crate::connection::ReadError::Io(e) => PeerError::Io(e),
            crate::connection::ReadError::Protocol(e) => PeerError::Protocol(e.to_string()),
            crate::connection::ReadError::Crypto(e) => PeerError::Crypto(e.to_string()),
        }
    }
}

/// Bytes exchanged with one node id, across its connections in this run.
#[derive(Debug)]
pub struct PeerStats {
    /// Where it was last seen (its listen address when known).
    pub addr: Mutex<SocketAddr>,
    /// GIVE payload bytes sent to it.
    pub uploaded: AtomicU64,
    /// GIVE payload bytes received from it.
    pub downloaded: AtomicU64,
}

impl PeerStats {
    /// Counters at zero for a peer seen at `addr`.
    pub fn new(addr: SocketAddr) -> PeerStats {
        PeerStats { addr: Mutex::new(addr), uploaded: AtomicU64::new(0), downloaded: AtomicU64::new(0) }
    }
}

/// The answer to an ASK, delivered on the channel the ASK was routed to.
#[derive(Debug)]
pub enum Answer {
    /// A GIVE (not yet verified).
    Give {
        /// Connection it came on.
        conn: u64,
        /// Claimed hash.
        hash: Hash,
        /// The data.
        data: Bytes,
    },
    /// A DONT_HAVE.
    DontHave {
        /// Connection it came on.
        conn: u64,
        /// The hash asked for.
        hash: Hash,
    },
}

/// Where the answers to an ASK go.
pub type Route = mpsc::UnboundedSender<Answer>;

/// What a connection needs from its owner (the node; a fake in tests).
pub trait Handler: Send + Sync + 'static {
    /// The blob to answer an ASK for `hash` with, if held.
    fn blob(&self, hash: &Hash) -> Option<Body>;
    /// The peer sent PEERS.
    fn on_peers(&self, conn: &Arc<PeerConn>, peers: Vec<PeerEntry>);
    /// The peer sent BITFIELD for pieces `first..`; an error closes the connection with REJECT(3).
    fn on_bitfield(&self, conn: &Arc<PeerConn>, root: Hash, first: u32, bits: Bytes) -> Result<(), PeerError>;
    /// The peer sent HAVE; an error closes the connection with REJECT(3).
    fn on_have(&self, conn: &Arc<PeerConn>, root: Hash, index: u32) -> Result<(), PeerError>;
    /// The peer sent a room frame (JOIN, LEAVE, MEMBERS, MESSAGE, DIRECT);
    /// an error closes the connection.
    fn on_room(&self, conn: &Arc<PeerConn>, frame: Frame) -> Result<(), PeerError>;
    /// GIVE payload bytes were sent (`up`) or received (`down`).
    fn on_transfer(&self, up: u64, down: u64);
    /// The connection closed: `Ok` when it ended cleanly, else how it ended badly.
    fn on_closed(&self, conn: &Arc<PeerConn>, ending: &Result<(), PeerError>);
    /// The frame to close with when the connection ends without a reason of
    /// its own (the node sends REJECT(6) while shutting down).
    fn farewell(&self) -> Option<Frame>;
    /// The upload limit shared by every connection, if any.
    fn limiter(&self) -> Option<&RateLimiter>;
    /// What every connection of this node sent lately: the order queued ASKs are answered in.
    fn uploads(&self) -> &UploadLog;
}

/// A live, handshaken connection, shared between its tasks, its owner and downloads.
pub struct PeerConn {
    /// Unique per connection in this process.
    pub conn_id: u64,
    /// The peer's node id from HELLO.
    pub node_id: NodeId,
    /// The remote socket address.
    pub addr: SocketAddr,
    /// Where the peer accepts connections, from its HELLO (None if it does not listen).
    pub listen_addr: Option<SocketAddr>,
    /// Who dialled.
    pub direction: Direction,
    /// When the handshake completed.
    pub since: Instant,
    /// Bytes exchanged with this node id, across its connections.
    pub stats: Arc<PeerStats>,
    /// Every byte received on this connection, frames complete or not.
    pub received: Arc<AtomicU64>,
    /// When the owner last sent PEERS on this connection (peer exchange's bookkeeping).
    pub peers_sent: Mutex<Option<Instant>>,
    ctrl: mpsc::UnboundedSender<Frame>,
    asks: Mutex<HashMap<Hash, Vec<Route>>>,
    /// Hashes recently CANCELled or given up on: their late GIVEs are not held against the peer.
    withdrawn: Mutex<VecDeque<Hash>>,
    interest: Mutex<HashSet<Hash>>,
    bitfield_sent: Mutex<HashSet<Hash>>,
    close: CancellationToken,
    close_frame: Mutex<Option<Frame>>,
    unsolicited: AtomicU32,
}

/// The receiving end of a connection's control queue, handed to
/// [`Handshaken::start`].
pub struct Outbox(pub(crate) mpsc::UnboundedReceiver<Frame>);

impl std::fmt::Debug for PeerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConn")
            .field("conn_id", &self.conn_id)
            .field("node_id", &self.node_id)
            .field("addr", &self.addr)
            .finish()
    }
}

impl PeerConn {
    /// A connection record for a completed handshake. `close` is cancelled to
    /// close it (a child of the owner's shutdown token).
    pub fn new(conn_id: u64, hs: &Handshaken, stats: Arc<PeerStats>, close: CancellationToken) -> (PeerConn, Outbox) {
        let (id, addr, listen) = (hs.hello.node_id, hs.addr, hs.listen_addr());
        Self::build(conn_id, id, addr, listen, hs.direction, stats, close)
    }

    /// A connection record with no socket behind it, for unit tests of the
    /// layers above: frames it is asked to send appear on the [`Outbox`].
    #[cfg(test)]
    pub(crate) fn detached(conn_id: u64) -> (Arc<PeerConn>, Outbox) {
        let addr = SocketAddr::from(([0xfd00, 0, 0, 0, 0, 0, 0, conn_id as u16], 9000));
        let (conn, outbox) = Self::detached_with(conn_id, NodeId([conn_id as u8; 32]), Arc::new(PeerStats::new(addr)));
        (Arc::new(conn), outbox)
    }

    /// [`PeerConn::detached`] for node id `node_id` with the given counters.
    #[cfg(test)]
    pub(crate) fn detached_with(conn_id: u64, node_id: NodeId, stats: Arc<PeerStats>) -> (PeerConn, Outbox) {
        let addr = SocketAddr::from(([0xfd00, 0, 0, 0, 0, 0, 0, node_id.0[0] as u16], 9000));
        Self::build(conn_id, node_id, addr, Some(addr), Direction::Outbound, stats, CancellationToken::new())
    }

    fn build(
        conn_id: u64,
        node_id: NodeId,
        addr: SocketAddr,
        listen_addr: Option<SocketAddr>,
        direction: Direction,
        stats: Arc<PeerStats>,
        close: CancellationToken,
    ) -> (PeerConn, Outbox) {
        let (ctrl, rx) = mpsc::unbounded_channel();
        let conn = PeerConn {
            conn_id,
            node_id,
            addr,
            listen_addr,
            direction,
            since: Instant::now(),
            stats,
            received: Arc::new(AtomicU64::new(0)),
            peers_sent: Mutex::new(None),
            ctrl,
            asks: Mutex::new(HashMap::new()),
            withdrawn: Mutex::new(VecDeque::new()),
            interest: Mutex::new(HashSet::new()),
            bitfield_sent: Mutex::new(HashSet::new()),
            close,
            close_frame: Mutex::new(None),
            unsolicited: AtomicU32::new(0),
        };
        (conn, Outbox(rx))
    }

    /// Queues a control frame; false if the connection is gone.
    pub fn send(&self, frame: Frame) -> bool {
        self.ctrl.send(frame).is_ok()
    }

    /// Sends an ASK whose answer is routed to `route` (several downloads may
    /// wait on one hash; the peer is asked once).
    pub fn ask(&self, hash: Hash, route: Route) {
        let first = {
            let mut asks = lock(&self.asks);
            let routes = asks.entry(hash).or_default();
            routes.retain(|r| !r.same_channel(&route));
            routes.push(route);
            routes.len() == 1
        };
        if first {
            self.send(Frame::Ask(hash));
        }
    }

    /// Withdraws `route`'s ASK for `hash`; the peer gets CANCEL once nobody waits on it.
    pub fn cancel(&self, hash: Hash, route: &Route) {
        let last = {
            let mut asks = lock(&self.asks);
            match asks.get_mut(&hash) {
                Some(routes) => {
                    routes.retain(|r| !r.same_channel(route));
                    routes.is_empty() && asks.remove(&hash).is_some()
                }
                None => false,
            }
        };
        if last {
            let mut w = lock(&self.withdrawn);
            if w.len() >= MAX_UNSOLICITED as usize {
                w.pop_front();
            }
            w.push_back(hash);
            drop(w);
            self.send(Frame::Cancel(hash));
        }
    }

    /// Delivers a GIVE to the routes that asked for it. False if nobody asked
    /// (and it was not recently withdrawn either).
    pub(crate) fn deliver_give(&self, hash: Hash, data: Bytes) -> bool {
        match lock(&self.asks).remove(&hash) {
            Some(routes) => {
                for tx in routes {
                    let _ = tx.send(Answer::Give { conn: self.conn_id, hash, data: data.clone() });
                }
                true
            }
            None => self.was_withdrawn(&hash),
        }
    }

    /// Delivers a DONT_HAVE to the routes that asked.
    pub(crate) fn deliver_dont_have(&self, hash: Hash) {
        for tx in lock(&self.asks).remove(&hash).unwrap_or_default() {
            let _ = tx.send(Answer::DontHave { conn: self.conn_id, hash });
        }
    }

    /// True (once) if `hash` was recently withdrawn, so a late answer is expected.
    fn was_withdrawn(&self, hash: &Hash) -> bool {
        let mut w = lock(&self.withdrawn);
        match w.iter().position(|h| h == hash) {
            Some(i) => {
                w.remove(i);
                true
            }
            None => false,
        }
    }

    /// Counts a GIVE nobody asked for; true once there were too many.
    fn unsolicited_give(&self) -> bool {
        self.unsolicited.fetch_add(1, Ordering::Relaxed) >= MAX_UNSOLICITED
    }

    /// Closes the connection, sending `frame` (a REJECT) first if given.
    pub fn close(&self, frame: Option<Frame>) {
        let mut f = lock(&self.close_frame);
        if f.is_none() {
            *f = frame;
        }
        self.close.cancel();
    }

    /// True once closing has begun.
    pub fn is_closed(&self) -> bool {
        self.close.is_cancelled()
    }

    /// Whether the peer sent a BITFIELD for `root` (it wants HAVEs).
    pub fn is_interested(&self, root: &Hash) -> bool {
        lock(&self.interest).contains(root)
    }

    /// Records that the peer wants HAVEs for `root` (bounded per connection).
    pub fn note_interest(&self, root: Hash) {
        let mut interest = lock(&self.interest);
        if interest.len() < MAX_INTEREST {
            interest.insert(root);
        }
    }

    /// Sends our BITFIELD for `root` unless one was sent already: one frame,
    /// or several ranges when the bits do not fit in one (files over 8 TiB).
    pub fn send_bitfield_once(&self, root: Hash, bits: Bytes) {
        if lock(&self.bitfield_sent).insert(root) {
            if bits.is_empty() {
                self.send(Frame::Bitfield { root, first: 0, bits });
                return;
            }
            let mut at = 0;
            while at < bits.len() {
                let n = MAX_BITFIELD_BYTES.min(bits.len() - at);
                self.send(Frame::Bitfield { root, first: (at * 8) as u32, bits: bits.slice(at..at + n) });
                at += n;
            }
        }
    }
}

#[cfg(test)]
mod tests;
