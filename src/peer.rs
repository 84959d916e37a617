//! One peer connection: the HELLO handshake, then a reader, a writer and an
//! ASK server running side by side until either end closes.
//!
//! The reader turns frames into calls on the node; the writer drains two
//! queues (small control frames first, then GIVE data) and sends keep-alives
//! when idle; the ASK server answers the peer's ASKs from the store through a
//! bounded queue, so an ASK flood slows the reader instead of growing memory.

use crate::connection::{FrameReader, FrameWriter, ReadError};
use crate::fetch::DownloadEvent;
use crate::hash::{Hash, NodeId};
use crate::lock;
use crate::node::{PeerStats, Shared};
use crate::wire::{Frame, Hello, RejectCode};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// ASKs one connection may have queued before its reader stops reading.
pub const MAX_QUEUED_ASKS: usize = 256;
/// GIVEs nobody asked for that a connection may send before it is closed.
pub const MAX_UNSOLICITED: u32 = 1024;
/// Roots one connection may declare interest in (by BITFIELD).
pub const MAX_INTEREST: usize = 1024;
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

/// Why a connection could not be set up or ended.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Network failure.
    #[error("{0}")]
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
    /// The peer refused us with REJECT.
    #[error("refused by peer: {reason} (code {code})")]
    Rejected {
        /// REJECT code.
        code: u8,
        /// Its reason text.
        reason: String,
    },
    /// We dialled ourselves.
    #[error("connected to self")]
    SelfConnection,
    /// Already connected to this node id.
    #[error("already connected to node {0:?}")]
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

impl From<ReadError> for PeerError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => PeerError::Io(e),
            ReadError::Protocol(e) => PeerError::Protocol(e.to_string()),
        }
    }
}

/// A live, handshaken connection, shared between its tasks, the node and downloads.
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
    /// Bytes exchanged with this node id, across its connections.
    pub stats: Arc<PeerStats>,
    /// Every byte received on this connection, frames complete or not.
    pub received: Arc<std::sync::atomic::AtomicU64>,
    ctrl: mpsc::UnboundedSender<Frame>,
    asks: Mutex<HashMap<Hash, Vec<mpsc::UnboundedSender<DownloadEvent>>>>,
    /// Hashes recently CANCELled or given up on: their late GIVEs are not held against the peer.
    withdrawn: Mutex<VecDeque<Hash>>,
    interest: Mutex<HashSet<Hash>>,
    bitfield_sent: Mutex<HashSet<Hash>>,
    close: CancellationToken,
    close_frame: Mutex<Option<Frame>>,
    unsolicited: AtomicU32,
    pub(crate) peers_sent: Mutex<Option<std::time::Instant>>,
}

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
    /// Queues a control frame; false if the connection is gone.
    pub fn send(&self, frame: Frame) -> bool {
        self.ctrl.send(frame).is_ok()
    }

    /// Sends an ASK whose answer is routed to `route` (several downloads may
    /// wait on one hash; the peer is asked once).
    pub fn ask(&self, hash: Hash, route: mpsc::UnboundedSender<DownloadEvent>) {
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
    pub fn cancel(&self, hash: Hash, route: &mpsc::UnboundedSender<DownloadEvent>) {
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

    pub(crate) fn note_interest(&self, root: Hash) {
        let mut interest = lock(&self.interest);
        if interest.len() < MAX_INTEREST {
            interest.insert(root);
        }
    }

    /// Sends our BITFIELD for `root` unless one was sent already.
    pub(crate) fn send_bitfield_once(&self, root: Hash, bits: bytes::Bytes) {
        if lock(&self.bitfield_sent).insert(root) {
            self.send(Frame::Bitfield { root, bits });
        }
    }
}

/// Dials `addr` and completes the handshake.
pub(crate) async fn dial(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    permit: OwnedSemaphorePermit,
) -> Result<Arc<PeerConn>, PeerError> {
    tracing::debug!(peer = %addr, "dialling");
    let socket = if addr.is_ipv6() { tokio::net::TcpSocket::new_v6()? } else { tokio::net::TcpSocket::new_v4()? };
    let _ = socket.set_send_buffer_size(crate::node::SOCKET_BUFFER);
    let _ = socket.set_recv_buffer_size(crate::node::SOCKET_BUFFER);
    let stream = match timeout(shared.config.timeouts.dial, socket.connect(addr)).await {
        Err(_) => return Err(PeerError::Timeout("connect")),
        Ok(r) => r?,
    };
    establish(shared, stream, addr, Direction::Outbound, permit).await
}

/// Sends a REJECT on a connection that never got going, then closes it gently.
pub(crate) async fn refuse(stream: TcpStream, code: RejectCode, reason: &str) {
    let (rd, wr) = stream.into_split();
    let mut writer = FrameWriter::new(wr);
    let mut reader = FrameReader::new(rd);
    linger_close(&mut writer, &mut reader, Some(Frame::reject(code, reason))).await;
}

/// Writes `last` if given, half-closes, and reads until the peer closes (bounded
/// in time and bytes) so the final frame is not lost to a TCP reset.
async fn linger_close(
    writer: &mut FrameWriter<OwnedWriteHalf>,
    reader: &mut FrameReader<OwnedReadHalf>,
    last: Option<Frame>,
) {
    let _ = timeout(LINGER, async {
        if let Some(frame) = last {
            writer.write_frame(&frame, None).await?;
        }
        writer.shutdown().await
    })
    .await;
    let _ = timeout(LINGER, async {
        use tokio::io::AsyncReadExt;
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < 256 * 1024 {
            match reader.get_mut().read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// Runs the handshake on a fresh connection; on success registers the peer and
/// starts its tasks.
pub(crate) async fn establish(
    shared: &Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    direction: Direction,
    permit: OwnedSemaphorePermit,
) -> Result<Arc<PeerConn>, PeerError> {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let mut reader = FrameReader::new(rd);
    let mut writer = FrameWriter::new(wr);
    let t = shared.config.timeouts.hello;
    if shared.shutdown.is_cancelled() {
        linger_close(&mut writer, &mut reader, Some(Frame::reject(RejectCode::ShuttingDown, "shutting down"))).await;
        return Err(PeerError::ShuttingDown);
    }
    let ours = Frame::Hello(Hello { node_id: shared.id, listen_port: shared.listen_port() });
    match timeout(t, writer.write_frame(&ours, None)).await {
        Err(_) => return Err(PeerError::Timeout("sending HELLO")),
        Ok(r) => r?,
    }
    let violation =
        |reason: String| (Some(Frame::reject(RejectCode::ProtocolViolation, &reason)), PeerError::Protocol(reason));
    let outcome: Result<Hello, (Option<Frame>, PeerError)> = match timeout(t, reader.read_frame()).await {
        Err(_) => Err(violation(format!("no HELLO within {} s", t.as_secs()))),
        Ok(Err(ReadError::Protocol(e))) => Err(violation(e.to_string())),
        Ok(Err(ReadError::Io(e))) => Err((None, PeerError::Io(e))),
        Ok(Ok(None)) => Err((None, PeerError::Closed)),
        Ok(Ok(Some(Frame::Hello(h)))) => Ok(h),
        Ok(Ok(Some(Frame::Reject { code, reason }))) => Err((None, PeerError::Rejected { code, reason })),
        Ok(Ok(Some(other))) => Err(violation(format!("expected HELLO, got {}", other.name()))),
    };
    let hello = match outcome {
        Ok(h) => h,
        Err((frame, err)) => {
            linger_close(&mut writer, &mut reader, frame).await;
            return Err(err);
        }
    };
    let refuse_with = |code, reason: &str, err| (Frame::reject(code, reason), err);
    let refusal = if hello.node_id == shared.id {
        if direction == Direction::Outbound {
            shared.table().mark_self(addr);
        }
        Some(refuse_with(RejectCode::SelfConnection, "connected to self", PeerError::SelfConnection))
    } else if shared.is_banned(&hello.node_id, &addr) {
        Some(refuse_with(RejectCode::Misbehaving, "banned", PeerError::Banned))
    } else {
        None
    };
    if let Some((frame, err)) = refusal {
        tracing::debug!(peer = %addr, ?direction, "refusing: {err}");
        linger_close(&mut writer, &mut reader, Some(frame)).await;
        return Err(err);
    }
    let newly_verified = direction == Direction::Outbound && shared.table().verified(addr, hello.node_id);
    let listen_addr = (hello.listen_port != 0).then(|| SocketAddr::new(addr.ip(), hello.listen_port));
    let (ctrl, ctrl_rx) = mpsc::unbounded_channel();
    let conn = shared.register(hello.node_id, listen_addr.unwrap_or(addr), |conn_id, stats| PeerConn {
        conn_id,
        node_id: hello.node_id,
        addr,
        listen_addr,
        direction,
        stats,
        ctrl,
        asks: Mutex::new(HashMap::new()),
        withdrawn: Mutex::new(VecDeque::new()),
        received: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        interest: Mutex::new(HashSet::new()),
        bitfield_sent: Mutex::new(HashSet::new()),
        close: shared.shutdown.child_token(),
        close_frame: Mutex::new(None),
        unsolicited: AtomicU32::new(0),
        peers_sent: Mutex::new(None),
    });
    let Some(conn) = conn else {
        if newly_verified {
            shared.announce(addr, 0);
        }
        let frame = Frame::reject(RejectCode::Duplicate, "already connected");
        linger_close(&mut writer, &mut reader, Some(frame)).await;
        return Err(PeerError::Duplicate(hello.node_id));
    };
    if newly_verified {
        // Immediate peer discovery: everyone connected learns the new address now, not in 60 s.
        shared.announce(addr, conn.conn_id);
    }
    tracing::info!(peer = %addr, id = %hello.node_id.short(), ?direction, "peer joined");
    if direction == Direction::Inbound && shared.config.pex {
        if let Some(l) = listen_addr {
            // Learn where it listens; a dial there verifies the address before we share it.
            shared.learn(l);
        }
    }
    // PEERS is part of the handshake: written now, before anything else can be.
    if let Some(peers) = shared.peers_frame(&conn, None) {
        let written = timeout(t, writer.write_frame(&peers, None)).await;
        if let Err(e) = written.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())) {
            shared.peer_left(&conn);
            return Err(e.into());
        }
    }
    reader.count_into(conn.received.clone());
    let task_conn = conn.clone();
    let task_shared = shared.clone();
    shared.tasks.spawn(async move {
        run(task_shared, task_conn, reader, writer, ctrl_rx, permit).await;
    });
    shared.peer_joined(&conn);
    Ok(conn)
}

/// A connection's queue of ASKs to answer, bounded by permits.
struct AskQueue {
    queue: Mutex<VecDeque<(Hash, OwnedSemaphorePermit)>>,
    slots: Arc<Semaphore>,
    ready: Notify,
}

impl AskQueue {
    async fn pop(&self) -> (Hash, OwnedSemaphorePermit) {
        loop {
            if let Some(item) = lock(&self.queue).pop_front() {
                return item;
            }
            self.ready.notified().await;
        }
    }
}

async fn run(
    shared: Arc<Shared>,
    conn: Arc<PeerConn>,
    mut reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
    ctrl_rx: mpsc::UnboundedReceiver<Frame>,
    _permit: OwnedSemaphorePermit,
) {
    let asks = Arc::new(AskQueue {
        queue: Mutex::new(VecDeque::new()),
        slots: Arc::new(Semaphore::new(MAX_QUEUED_ASKS)),
        ready: Notify::new(),
    });
    let (data_tx, data_rx) = mpsc::channel(1);
    let writer_task = tokio::spawn(write_loop(shared.clone(), conn.clone(), writer, ctrl_rx, data_rx));
    let server_task = tokio::spawn(serve_asks(shared.clone(), conn.clone(), asks.clone(), data_tx));
    let result = read_loop(&shared, &conn, &mut reader, &asks).await;
    match &result {
        Ok(()) => {}
        Err(PeerError::Protocol(reason)) => {
            tracing::info!(peer = %conn.addr, "protocol violation: {reason}");
            conn.close(Some(Frame::reject(RejectCode::ProtocolViolation, reason)));
        }
        Err(PeerError::Misbehaving(reason)) => {
            tracing::info!(peer = %conn.addr, "misbehaving: {reason}");
            conn.close(Some(Frame::reject(RejectCode::Misbehaving, reason)));
        }
        Err(e) => {
            tracing::debug!(peer = %conn.addr, "connection ended: {e}");
            conn.close(None);
        }
    }
    conn.close.cancel();
    server_task.abort();
    if let Ok(Some(mut writer)) = writer_task.await {
        let last = lock(&conn.close_frame).take().or_else(|| {
            shared.shutdown.is_cancelled().then(|| Frame::reject(RejectCode::ShuttingDown, "shutting down"))
        });
        linger_close(&mut writer, &mut reader, last).await;
    }
    shared.peer_left(&conn);
    tracing::info!(peer = %conn.addr, id = %conn.node_id.short(), "peer left");
}

async fn read_loop(
    shared: &Arc<Shared>,
    conn: &Arc<PeerConn>,
    reader: &mut FrameReader<OwnedReadHalf>,
    asks: &AskQueue,
) -> Result<(), PeerError> {
    let idle = shared.config.timeouts.idle;
    loop {
        let frame = tokio::select! {
            _ = conn.close.cancelled() => return Ok(()),
            r = reader.read_frame_idle(Some(idle)) => match r {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        };
        match frame {
            Frame::KeepAlive | Frame::Unknown { .. } => {}
            Frame::Hello(_) => return Err(PeerError::Protocol("second HELLO".into())),
            Frame::Reject { code, reason } => {
                tracing::debug!(peer = %conn.addr, code, "peer closed with REJECT: {reason}");
                return Ok(());
            }
            Frame::Ask(hash) => {
                let permit = tokio::select! {
                    _ = conn.close.cancelled() => return Ok(()),
                    p = asks.slots.clone().acquire_owned() => p.map_err(|_| PeerError::Closed)?,
                };
                lock(&asks.queue).push_back((hash, permit));
                asks.ready.notify_one();
            }
            Frame::Cancel(hash) => lock(&asks.queue).retain(|(h, _)| *h != hash),
            Frame::Give { hash, data } => {
                conn.stats.add_downloaded(data.len() as u64);
                shared.add_downloaded(data.len() as u64);
                let routes = lock(&conn.asks).remove(&hash);
                match routes {
                    Some(routes) => {
                        for tx in routes {
                            let _ = tx.send(DownloadEvent::Give { conn: conn.conn_id, hash, data: data.clone() });
                        }
                    }
                    None if conn.was_withdrawn(&hash) => {}
                    None => {
                        if conn.unsolicited.fetch_add(1, Ordering::Relaxed) >= MAX_UNSOLICITED {
                            return Err(PeerError::Misbehaving("too many GIVEs nobody asked for".into()));
                        }
                    }
                }
            }
            Frame::DontHave(hash) => {
                for tx in lock(&conn.asks).remove(&hash).unwrap_or_default() {
                    let _ = tx.send(DownloadEvent::DontHave { conn: conn.conn_id, hash });
                }
            }
            Frame::Peers(addrs) => shared.on_peers(conn, addrs),
            Frame::Bitfield { root, bits } => shared.on_bitfield(conn, root, bits)?,
            Frame::Have { root, index } => shared.on_have(conn, root, index)?,
        }
    }
}

/// Answers queued ASKs in order: GIVE from the store, or DONT_HAVE.
async fn serve_asks(shared: Arc<Shared>, conn: Arc<PeerConn>, asks: Arc<AskQueue>, data_tx: mpsc::Sender<Frame>) {
    loop {
        let (hash, permit) = tokio::select! {
            _ = conn.close.cancelled() => return,
            item = asks.pop() => item,
        };
        match shared.store.get(&hash) {
            Some(data) => {
                if data_tx.send(Frame::Give { hash, data }).await.is_err() {
                    return;
                }
            }
            None => {
                conn.send(Frame::DontHave(hash));
            }
        }
        drop(permit);
    }
}

/// Sends frames until the connection closes; returns the writer for the final REJECT.
async fn write_loop(
    shared: Arc<Shared>,
    conn: Arc<PeerConn>,
    mut writer: FrameWriter<OwnedWriteHalf>,
    mut ctrl_rx: mpsc::UnboundedReceiver<Frame>,
    mut data_rx: mpsc::Receiver<Frame>,
) -> Option<FrameWriter<OwnedWriteHalf>> {
    let keepalive = shared.config.timeouts.keepalive;
    let write_timeout = shared.config.timeouts.idle;
    let mut last_write = Instant::now();
    loop {
        let frame = tokio::select! {
            biased;
            _ = conn.close.cancelled() => return Some(writer),
            f = ctrl_rx.recv() => match f { Some(f) => f, None => return Some(writer) },
            f = data_rx.recv() => match f { Some(f) => f, None => return Some(writer) },
            _ = tokio::time::sleep_until(last_write + keepalive) => Frame::KeepAlive,
        };
        let limiter = match &frame {
            Frame::Give { .. } => shared.limiter.as_ref(),
            _ => None,
        };
        let written = tokio::select! {
            _ = conn.close.cancelled() => return None,
            r = writer.write_frame_within(&frame, limiter, Some(write_timeout)) => r,
        };
        if let Err(e) = written {
            tracing::debug!(peer = %conn.addr, "write failed: {e}");
            conn.close(None);
            return None;
        }
        if let Frame::Give { data, .. } = &frame {
            conn.stats.add_uploaded(data.len() as u64);
            shared.add_uploaded(data.len() as u64);
        }
        last_write = Instant::now();
    }
}
