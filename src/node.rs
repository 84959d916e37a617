//! A pex node: the listener, the registry of live connections, peer exchange,
//! bans, statistics and graceful shutdown. It knows no byte layout (`wire`,
//! `connection`) and no piece scheduling (`fetch`).

use crate::datadir::{DataDir, SeedRecord};
use crate::fetch::DownloadEvent;
use crate::hash::{Hash, NodeId};
use crate::lock;
use crate::manifest::{hash_pieces, FileInfo};
use crate::peer::{self, Direction, PeerConn, PeerError};
use crate::peers::PeerTable;
use crate::ratelimit::RateLimiter;
use crate::store::{Store, StoreError};
use crate::wire::{Frame, RejectCode, MAX_PEERS_PER_FRAME};
use bitvec::prelude::{BitSlice, Msb0};
use bytes::Bytes;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Send and receive buffer size asked of the kernel for every socket: large
/// enough to keep a fast link full while the other side hashes.
pub const SOCKET_BUFFER: u32 = 4 << 20;
/// Most dials in progress at once.
pub const MAX_DIALS: usize = 8;
/// Default connection limit.
pub const DEFAULT_MAX_PEERS: usize = 50;

/// Every interval and time-out of the protocol, in one place (tests shorten them).
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// Each side must send HELLO within this after connecting (protocol: 10 s).
    pub hello: Duration,
    /// A keep-alive goes out after this much silence (30 s).
    pub keepalive: Duration,
    /// A peer silent for this long is dropped (120 s).
    pub idle: Duration,
    /// An ASK unanswered this long counts against the peer and moves elsewhere (30 s).
    pub ask: Duration,
    /// PEERS with what is new is re-sent this often (60 s).
    pub peers_interval: Duration,
    /// A TCP connect that takes longer than this fails (10 s).
    pub dial: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            hello: Duration::from_secs(10),
            keepalive: Duration::from_secs(30),
            idle: Duration::from_secs(120),
            ask: Duration::from_secs(30),
            peers_interval: Duration::from_secs(60),
            dial: Duration::from_secs(10),
        }
    }
}

/// How a node runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to accept connections on; `None` to not listen.
    pub listen: Option<SocketAddr>,
    /// Most simultaneous connections; more are answered REJECT(2).
    pub max_peers: usize,
    /// Take part in peer exchange (learn and dial addresses from PEERS).
    pub pex: bool,
    /// Upload limit in bytes per second, shared by all connections.
    pub max_upload_rate: Option<u64>,
    /// Protocol intervals.
    pub timeouts: Timeouts,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 9000)),
            max_peers: DEFAULT_MAX_PEERS,
            pex: true,
            max_upload_rate: None,
            timeouts: Timeouts::default(),
        }
    }
}

/// Bytes exchanged with one node id during this run.
#[derive(Debug)]
pub struct PeerStats {
    addr: Mutex<SocketAddr>,
    uploaded: AtomicU64,
    downloaded: AtomicU64,
}

impl PeerStats {
    pub(crate) fn add_uploaded(&self, n: u64) {
        self.uploaded.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_downloaded(&self, n: u64) {
        self.downloaded.fetch_add(n, Ordering::Relaxed);
    }
}

/// One peer in a [`NodeStats`] report.
#[derive(Clone, Debug, Serialize)]
pub struct PeerReport {
    /// Where it listens (or its socket address if it does not).
    pub address: String,
    /// Its node id, hex.
    pub node_id: String,
    /// GIVE payload bytes sent to it.
    pub uploaded_bytes: u64,
    /// GIVE payload bytes received from it.
    pub downloaded_bytes: u64,
}

/// Totals for this run of the node.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStats {
    /// GIVE payload bytes sent.
    pub uploaded_bytes: u64,
    /// GIVE payload bytes received.
    pub downloaded_bytes: u64,
    /// Pieces that failed verification.
    pub pieces_rejected: u64,
    /// Every peer met.
    pub peers: Vec<PeerReport>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    by_conn: HashMap<u64, Arc<PeerConn>>,
    by_node: HashMap<NodeId, u64>,
    history: HashMap<NodeId, Arc<PeerStats>>,
}

#[derive(Default)]
struct Bans {
    ids: HashSet<NodeId>,
    addrs: HashSet<SocketAddr>,
}

/// State shared by the node's tasks. Crate-internal; users hold a [`Node`].
pub(crate) struct Shared {
    pub(crate) id: NodeId,
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) data_dir: Option<DataDir>,
    pub(crate) local_addr: Option<SocketAddr>,
    pub(crate) limiter: Option<RateLimiter>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) downloads: Mutex<HashMap<Hash, mpsc::UnboundedSender<DownloadEvent>>>,
    slots: Arc<Semaphore>,
    registry: Mutex<Registry>,
    table: Mutex<PeerTable>,
    bans: Mutex<Bans>,
    dialing: Mutex<HashSet<SocketAddr>>,
    wake_connector: Notify,
    uploaded: AtomicU64,
    downloaded: AtomicU64,
    pub(crate) pieces_rejected: AtomicU64,
}

/// Why a node could not start or seed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// Reading or mapping a file failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Data directory trouble.
    #[error("data directory: {0}")]
    DataDir(io::Error),
}

/// A running pex node. Cheap to clone; stops when [`Node::shutdown`] is called
/// or the token given to [`Node::start`] is cancelled.
#[derive(Clone)]
pub struct Node {
    pub(crate) shared: Arc<Shared>,
}

impl Node {
    /// Binds the listener (if any) and starts accepting, dialling and exchanging peers.
    pub async fn start(
        config: Config,
        data_dir: Option<DataDir>,
        shutdown: CancellationToken,
    ) -> Result<Node, NodeError> {
        let listener = match config.listen {
            Some(addr) => Some(bind(addr).map_err(|source| NodeError::Listen { addr, source })?),
            None => None,
        };
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let shared = Arc::new(Shared {
            id: NodeId::random(),
            limiter: config.max_upload_rate.map(RateLimiter::new),
            slots: Arc::new(Semaphore::new(config.max_peers)),
            config,
            store: Store::new(),
            data_dir,
            local_addr,
            shutdown,
            tasks: TaskTracker::new(),
            downloads: Mutex::new(HashMap::new()),
            registry: Mutex::new(Registry::default()),
            table: Mutex::new(PeerTable::default()),
            bans: Mutex::new(Bans::default()),
            dialing: Mutex::new(HashSet::new()),
            wake_connector: Notify::new(),
            uploaded: AtomicU64::new(0),
            downloaded: AtomicU64::new(0),
            pieces_rejected: AtomicU64::new(0),
        });
        if let Some(listener) = listener {
            shared.tasks.spawn(accept_loop(shared.clone(), listener));
        }
        shared.tasks.spawn(connect_loop(shared.clone()));
        shared.tasks.spawn(peers_loop(shared.clone()));
        Ok(Node { shared })
    }

    /// This run's node id.
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// The bound listen address, if listening.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.local_addr
    }

    /// Blobs this node serves.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The data directory, if the node has one.
    pub fn data_dir(&self) -> Option<&DataDir> {
        self.shared.data_dir.as_ref()
    }

    /// The token that stops this node.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    /// Adds a peer given by the user: dialled now, redialled with backoff when
    /// it drops, never forgotten.
    pub fn add_peer(&self, addr: SocketAddr) {
        lock(&self.shared.table).add(addr, true);
        self.shared.wake_connector.notify_one();
    }

    /// The last dial error for an address, if its dials are failing.
    pub fn dial_error(&self, addr: &SocketAddr) -> Option<String> {
        lock(&self.shared.table).get(addr).and_then(|e| e.last_error.clone())
    }

    /// Whether dialling `addr` reached this very node (it is then never dialled again).
    pub fn is_self_address(&self, addr: &SocketAddr) -> bool {
        lock(&self.shared.table).get(addr).is_some_and(|e| e.is_self)
    }

    /// Live connections.
    pub fn connected_peers(&self) -> usize {
        lock(&self.shared.registry).by_conn.len()
    }

    /// Whether a connection to this node id is up.
    pub fn is_connected(&self, id: &NodeId) -> bool {
        lock(&self.shared.registry).by_node.contains_key(id)
    }

    /// Hashes `path` on all cores (calling `progress` with bytes done), serves it,
    /// and records it in the data directory so `pex serve` serves it again.
    pub async fn seed(
        &self,
        path: &Path,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<Arc<FileInfo>, NodeError> {
        let path = std::path::absolute(path).map_err(|e| StoreError::Io { path: path.to_owned(), source: e })?;
        let p = path.clone();
        let (info, mtime) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let err = |source| StoreError::Io { path: p.clone(), source };
            let file = std::fs::File::open(&p).map_err(err)?;
            let meta = file.metadata().map_err(err)?;
            if !meta.is_file() {
                return Err(err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
            }
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let pieces = hash_pieces(&file, meta.len(), threads, &progress).map_err(err)?;
            let after = file.metadata().map_err(err)?;
            if after.len() != meta.len() || after.modified().ok() != meta.modified().ok() {
                return Err(err(io::Error::other("file changed while it was being hashed")));
            }
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            Ok((FileInfo::new(&name, meta.len(), pieces), meta.modified().ok()))
        })
        .await
        .map_err(|e| StoreError::Io { path: path.clone(), source: io::Error::other(e) })??;
        let info = Arc::new(info);
        self.shared.store.add_source(info.clone(), &path, mtime)?;
        if let Some(dd) = &self.shared.data_dir {
            dd.save_info(&info).map_err(NodeError::DataDir)?;
            dd.save_seed(&info.root, &SeedRecord { path, size: info.manifest.size, mtime })
                .map_err(NodeError::DataDir)?;
        }
        Ok(info)
    }

    /// Serves every file the data directory records as seeded or completed and
    /// still unchanged on disk. Returns what is served and, for each record that
    /// could not be, a one-line reason naming the file.
    pub fn serve_data_dir(&self) -> (Vec<Arc<FileInfo>>, Vec<String>) {
        let Some(dd) = &self.shared.data_dir else { return (Vec::new(), Vec::new()) };
        let (mut served, mut problems) = (Vec::new(), Vec::new());
        for record in dd.seeds() {
            match record {
                Err(e) => problems.push(e.to_string()),
                Ok((rec, info)) => {
                    let fresh =
                        std::fs::metadata(&rec.path).map(|m| m.len() == rec.size && m.modified().ok() == rec.mtime);
                    match fresh {
                        Ok(true) => {}
                        Ok(false) => {
                            problems.push(format!(
                                "{}: changed since it was seeded; run `pex seed` on it again",
                                rec.path.display()
                            ));
                            continue;
                        }
                        Err(e) => {
                            problems.push(format!("{}: {e}", rec.path.display()));
                            continue;
                        }
                    }
                    let info = Arc::new(info);
                    match self.shared.store.add_source(info.clone(), &rec.path, rec.mtime) {
                        Ok(_) => served.push(info),
                        Err(e) => problems.push(e.to_string()),
                    }
                }
            }
        }
        (served, problems)
    }

    /// Totals for this run.
    pub fn stats(&self) -> NodeStats {
        let reg = lock(&self.shared.registry);
        let mut peers: Vec<PeerReport> = reg
            .history
            .iter()
            .map(|(id, s)| PeerReport {
                address: lock(&s.addr).to_string(),
                node_id: id.to_hex(),
                uploaded_bytes: s.uploaded.load(Ordering::Relaxed),
                downloaded_bytes: s.downloaded.load(Ordering::Relaxed),
            })
            .collect();
        peers.sort_by(|a, b| a.address.cmp(&b.address));
        NodeStats {
            uploaded_bytes: self.shared.uploaded.load(Ordering::Relaxed),
            downloaded_bytes: self.shared.downloaded.load(Ordering::Relaxed),
            pieces_rejected: self.shared.pieces_rejected.load(Ordering::Relaxed),
            peers,
        }
    }

    /// Stops the node: peers get REJECT(6), every task is awaited.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}

/// Binds a listener with socket2: dual-stack IPv6 when the address is IPv6,
/// SO_REUSEADDR, large buffers. Falls back to IPv4 when IPv6 is unavailable.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let make = |addr: SocketAddr| -> io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        socket.set_tcp_nodelay(true)?;
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER as usize);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER as usize);
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket)
    };
    let socket = match make(addr) {
        Err(e) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            make(SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), addr.port()))?
        }
        r => r?,
    };
    TcpListener::from_std(socket.into())
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, addr)) => {
                backoff = Duration::from_millis(10);
                let shared2 = shared.clone();
                shared.tasks.spawn(async move {
                    match shared2.slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            if let Err(e) = peer::establish(&shared2, stream, addr, Direction::Inbound, permit).await {
                                tracing::debug!(peer = %addr, "inbound connection refused: {e}");
                            }
                        }
                        Err(_) => peer::refuse(stream, RejectCode::PeerLimit, "peer limit reached").await,
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Dials known addresses that are due, within the connection limit.
async fn connect_loop(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = shared.wake_connector.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let due = {
            let mut table = lock(&shared.table);
            table.prune();
            table.due(std::time::Instant::now(), shared.config.pex)
        };
        for addr in due {
            if shared.should_skip_dial(&addr) {
                continue;
            }
            let pinned = lock(&shared.table).get(&addr).is_some_and(|e| e.pinned);
            let dialing = lock(&shared.dialing).len();
            // Dials to learned addresses are bounded, and leave half the slots for
            // peers that connect to us, so a PEERS flood of dead addresses starves no one.
            let live = lock(&shared.registry).by_conn.len();
            if dialing >= MAX_DIALS || (!pinned && live + dialing >= shared.config.max_peers / 2) {
                continue;
            }
            let Ok(permit) = shared.slots.clone().try_acquire_owned() else { break };
            lock(&shared.dialing).insert(addr);
            let shared2 = shared.clone();
            shared.tasks.spawn(async move {
                match peer::dial(&shared2, addr, permit).await {
                    Ok(_) | Err(PeerError::Duplicate(_)) => {}
                    Err(PeerError::SelfConnection) => {}
                    Err(e) => {
                        tracing::debug!(peer = %addr, "dial failed: {e}");
                        lock(&shared2.table).failed(addr, e.to_string());
                    }
                }
                lock(&shared2.dialing).remove(&addr);
            });
        }
    }
}

/// Re-sends PEERS with what is new to every connection, every `peers_interval`.
async fn peers_loop(shared: Arc<Shared>) {
    if !shared.config.pex {
        return;
    }
    let mut tick = tokio::time::interval(shared.config.timeouts.peers_interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let conns: Vec<_> = lock(&shared.registry).by_conn.values().cloned().collect();
        for conn in conns {
            let since = *lock(&conn.peers_sent);
            if let Some(frame) = shared.peers_frame(&conn, since) {
                conn.send(frame);
            }
        }
    }
}

impl Shared {
    pub(crate) fn table(&self) -> MutexGuard<'_, PeerTable> {
        lock(&self.table)
    }

    /// The port to advertise in HELLO: 0 when not listening, and also without
    /// peer exchange, so that peers never verify and spread our address: a
    /// `--no-pex` node stays out of the swarm's address book in both directions
    /// (it still accepts connections from peers given its address directly).
    pub(crate) fn listen_port(&self) -> u16 {
        if !self.config.pex {
            return 0;
        }
        self.local_addr.map_or(0, |a| a.port())
    }

    pub(crate) fn add_uploaded(&self, n: u64) {
        self.uploaded.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_downloaded(&self, n: u64) {
        self.downloaded.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn is_banned(&self, id: &NodeId, addr: &SocketAddr) -> bool {
        let bans = lock(&self.bans);
        bans.ids.contains(id) || bans.addrs.contains(addr)
    }

    /// Bans a peer for the rest of this run (its node id and its addresses) and
    /// closes it with REJECT(5).
    pub(crate) fn ban(&self, conn: &PeerConn, reason: &str) {
        tracing::warn!(peer = %conn.addr, id = %conn.node_id.short(), "banned: {reason}");
        {
            let mut bans = lock(&self.bans);
            bans.ids.insert(conn.node_id);
            bans.addrs.insert(conn.addr);
            if let Some(l) = conn.listen_addr {
                bans.addrs.insert(l);
            }
        }
        if let Some(l) = conn.listen_addr {
            lock(&self.table).remove(&l);
        }
        conn.close(Some(Frame::reject(RejectCode::Misbehaving, reason)));
    }

    fn should_skip_dial(&self, addr: &SocketAddr) -> bool {
        if lock(&self.dialing).contains(addr) || lock(&self.bans).addrs.contains(addr) {
            return true;
        }
        if self.local_addr == Some(*addr) {
            return true;
        }
        let known_id = lock(&self.table).get(addr).and_then(|e| e.node_id);
        let reg = lock(&self.registry);
        if let Some(id) = known_id {
            if reg.by_node.contains_key(&id) {
                return true;
            }
        }
        // Already connected to whoever listens there, and the address is verified.
        reg.by_conn.values().any(|c| c.addr == *addr)
    }

    /// Registers a handshaken connection, or returns None if `node_id` is already connected.
    /// `shown` is the address reported for it in statistics.
    pub(crate) fn register(
        &self,
        node_id: NodeId,
        shown: SocketAddr,
        make: impl FnOnce(u64, Arc<PeerStats>) -> PeerConn,
    ) -> Option<Arc<PeerConn>> {
        let mut reg = lock(&self.registry);
        if reg.by_node.contains_key(&node_id) {
            return None;
        }
        reg.next_id += 1;
        let conn_id = reg.next_id;
        let stats = reg
            .history
            .entry(node_id)
            .or_insert_with(|| {
                Arc::new(PeerStats { addr: Mutex::new(shown), uploaded: 0.into(), downloaded: 0.into() })
            })
            .clone();
        *lock(&stats.addr) = shown;
        let conn = Arc::new(make(conn_id, stats));
        reg.by_node.insert(node_id, conn_id);
        reg.by_conn.insert(conn_id, conn.clone());
        Some(conn)
    }

    /// Tells downloads about a new connection.
    pub(crate) fn peer_joined(&self, conn: &Arc<PeerConn>) {
        for tx in lock(&self.downloads).values() {
            let _ = tx.send(DownloadEvent::PeerJoined(conn.clone()));
        }
    }

    /// Unregisters a closed connection and tells downloads.
    pub(crate) fn peer_left(&self, conn: &Arc<PeerConn>) {
        {
            let mut reg = lock(&self.registry);
            if reg.by_conn.remove(&conn.conn_id).is_some() {
                reg.by_node.remove(&conn.node_id);
            }
        }
        for tx in lock(&self.downloads).values() {
            let _ = tx.send(DownloadEvent::PeerLeft(conn.conn_id));
        }
        self.wake_connector.notify_one();
    }

    /// Every live connection.
    pub(crate) fn connections(&self) -> Vec<Arc<PeerConn>> {
        lock(&self.registry).by_conn.values().cloned().collect()
    }

    /// Adds an address to dial (peer exchange).
    pub(crate) fn learn(&self, addr: SocketAddr) {
        if addr.port() == 0
            || addr.ip().is_unspecified()
            || addr.ip().is_multicast()
            || lock(&self.bans).addrs.contains(&addr)
        {
            return;
        }
        lock(&self.table).add(addr, false);
        self.wake_connector.notify_one();
    }

    /// Tells every connection but `except` about a newly verified address.
    pub(crate) fn announce(&self, addr: SocketAddr, except: u64) {
        if !self.config.pex {
            return;
        }
        for conn in self.connections() {
            if conn.conn_id != except && conn.listen_addr != Some(addr) {
                conn.send(Frame::Peers(vec![addr]));
            }
        }
    }

    pub(crate) fn on_peers(&self, _conn: &PeerConn, addrs: Vec<SocketAddr>) {
        if self.config.pex {
            for a in addrs {
                self.learn(a);
            }
        }
    }

    /// The PEERS frame for `conn`: verified addresses (new since `since` if given),
    /// or None when a periodic update would be empty.
    pub(crate) fn peers_frame(&self, conn: &PeerConn, since: Option<std::time::Instant>) -> Option<Frame> {
        let mut list =
            if self.config.pex { lock(&self.table).shareable(MAX_PEERS_PER_FRAME + 1, since) } else { Vec::new() };
        list.retain(|a| Some(*a) != conn.listen_addr && *a != conn.addr);
        list.truncate(MAX_PEERS_PER_FRAME);
        *lock(&conn.peers_sent) = Some(std::time::Instant::now());
        (since.is_none() || !list.is_empty()).then_some(Frame::Peers(list))
    }

    /// Piece count of `root`'s file if this node knows its manifest.
    fn piece_count(&self, root: &Hash) -> Option<usize> {
        self.store.file(root).map(|e| e.info.pieces.len())
    }

    pub(crate) fn on_bitfield(&self, conn: &PeerConn, root: Hash, bits: Bytes) -> Result<(), PeerError> {
        let pieces = self.piece_count(&root);
        if let Some(n) = pieces {
            check_bitfield(n, &bits).map_err(PeerError::Protocol)?;
        }
        // A peer that already holds every piece has no use for our HAVEs.
        let complete = pieces.is_some_and(|n| BitSlice::<u8, Msb0>::from_slice(&bits)[..n].all());
        if !complete {
            conn.note_interest(root);
        }
        if let Some(entry) = self.store.file(&root) {
            if entry.holds_any() {
                conn.send_bitfield_once(root, bits_to_bytes(entry.held()));
            }
        }
        if let Some(tx) = lock(&self.downloads).get(&root) {
            let _ = tx.send(DownloadEvent::Bitfield { conn: conn.conn_id, bits });
        }
        Ok(())
    }

    pub(crate) fn on_have(&self, conn: &PeerConn, root: Hash, index: u32) -> Result<(), PeerError> {
        if let Some(n) = self.piece_count(&root) {
            if index as usize >= n {
                return Err(PeerError::Protocol(format!("HAVE for piece {index} of a {n}-piece file")));
            }
        }
        if let Some(tx) = lock(&self.downloads).get(&root) {
            let _ = tx.send(DownloadEvent::Have { conn: conn.conn_id, index });
        }
        Ok(())
    }

    /// Tells every peer interested in `root` that we now hold piece `index`.
    pub(crate) fn broadcast_have(&self, root: Hash, index: u32) {
        for conn in self.connections() {
            if conn.is_interested(&root) {
                conn.send(Frame::Have { root, index });
            }
        }
    }
}

/// Checks a BITFIELD body against a file of `pieces` pieces.
pub fn check_bitfield(pieces: usize, bits: &[u8]) -> Result<(), String> {
    if bits.len() != pieces.div_ceil(8) {
        return Err(format!("BITFIELD of {} bytes for a {pieces}-piece file", bits.len()));
    }
    let spare = bits.len() * 8 - pieces;
    if spare > 0 && bits[bits.len() - 1] & ((1u8 << spare) - 1) != 0 {
        return Err("BITFIELD has spare bits set".into());
    }
    Ok(())
}

/// A bitfield as BITFIELD bytes, spare bits zero.
pub fn bits_to_bytes(mut bits: crate::store::Bits) -> Bytes {
    bits.set_uninitialized(false);
    Bytes::from(bits.into_vec())
}
