//! A pex node: the listener and dialler ([`conn`]), the registry of live
//! connections, bans and download routes ([`registry`]), peer exchange
//! ([`exchange`]), seeding and fetching, statistics and graceful shutdown.
//! It knows no byte layout (`wire`, `connection`) and no piece scheduling
//! (`fetch`): connections reach it through [`peer::Handler`](crate::peer::Handler),
//! downloads through [`fetch::Swarm`](crate::fetch::Swarm).

mod conn;
mod discover;
mod exchange;
mod folder;
mod memory;
mod registry;
pub mod rooms;

use crate::datadir::{DataDir, SeedRecord};
pub use folder::{SeededFolder, FILES_AT_ONCE};

use crate::fetch::{self, Content, FetchError, FetchOptions, FetchOutcome, Progress};
use crate::hash::{Hash, NodeId};
use crate::identity::Identity;
use crate::manifest::{hash_pieces, FileInfo};
use crate::peer::Local;
use crate::ratelimit::RateLimiter;
use crate::store::{Store, StoreError};
use crate::timeouts::Timeouts;
use exchange::Exchange;
use registry::{Bans, Registry, Routes, Totals};
use serde::Serialize;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most dials in progress at once.
pub const MAX_DIALS: usize = 8;
/// Default connection limit.
pub const DEFAULT_MAX_PEERS: usize = 50;

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
    /// The identity to use; `None`: the data directory's (created on first
    /// use), or a new one for this run when there is no data directory.
    pub identity: Option<Identity>,
    /// Remember the peers met in the data directory, for fetches that give no address.
    pub remember: bool,
    /// Local-network discovery: answer multicast queries for what this node
    /// holds, and query the LAN for what it fetches (off by default in the
    /// library; the CLI turns it on unless `--no-lan`).
    pub lan: bool,
    /// Run a Mainline DHT node (`--dht`): announce what this node holds, look up what it fetches.
    pub dht: Option<crate::discovery::dht::DhtConfig>,
    /// Dial the addresses learned by peer exchange (a swarm wants as many peers as
    /// it can get). Off for a node that only talks in rooms: it dials only the
    /// `--peer` nodes and the members its rooms pick, so a room of thousands
    /// stays a partial mesh.
    pub dial_learned: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 9000)),
            max_peers: DEFAULT_MAX_PEERS,
            pex: true,
            max_upload_rate: None,
            timeouts: Timeouts::default(),
            identity: None,
            remember: true,
            lan: false,
            dht: None,
            dial_learned: true,
        }
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

/// State shared by the node's tasks, one lock per concern. Crate-internal;
/// users hold a [`Node`].
pub(crate) struct Shared {
    id: NodeId,
    local: Local,
    config: Config,
    store: Arc<Store>,
    data_dir: Option<DataDir>,
    local_addr: Option<SocketAddr>,
    limiter: Option<RateLimiter>,
    /// What every connection sent lately: the order ASKs are answered in.
    uploads: crate::peer::UploadLog,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Connection slots: `max_peers` permits.
    slots: Arc<Semaphore>,
    registry: Registry,
    memory: Option<memory::Memory>,
    discovery: discover::Services,
    exchange: Exchange,
    bans: Bans,
    routes: Routes,
    totals: Totals,
    rooms: rooms::Rooms,
}

/// A file being served after [`Node::seed_file`].
#[derive(Clone, Debug)]
pub struct Seeded {
    /// Its manifest and piece hashes.
    pub info: Arc<FileInfo>,
    /// False when a record of the unchanged file was trusted instead of hashing it.
    pub hashed: bool,
}

/// Why a node could not start or seed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {}", crate::text::io_message(.source))]
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
    #[error("data directory: {}", crate::text::io_message(.0))]
    DataDir(io::Error),
    /// The DHT node could not start.
    #[error("cannot start the DHT: {0}")]
    Dht(String),
}

/// A running pex node. Cheap to clone; stops when [`Node::shutdown`] is called
/// or the token given to [`Node::start`] is cancelled.
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
}

impl Node {
    /// Binds the listener (if any) and starts accepting, dialling and exchanging peers.
    pub async fn start(
        config: Config,
        data_dir: Option<DataDir>,
        shutdown: CancellationToken,
    ) -> Result<Node, NodeError> {
        let listener = match config.listen {
            Some(addr) => Some(conn::bind(addr).map_err(|source| NodeError::Listen { addr, source })?),
            None => None,
        };
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let identity = match (&config.identity, &data_dir) {
            (Some(id), _) => id.clone(),
            (None, Some(dd)) => dd.identity().map_err(NodeError::DataDir)?,
            (None, None) => Identity::generate(),
        };
        // Without peer exchange the HELLO advertises no port and forbids
        // sharing: a `--no-pex` node stays out of the swarm's address book.
        let listen_port = if config.pex { local_addr.map_or(0, |a| a.port()) } else { 0 };
        let local = Local {
            identity: identity.clone(),
            keys: crate::noise::Keys::generate(),
            listen_port,
            flags: if listen_port != 0 { crate::wire::FLAG_SHAREABLE } else { 0 },
        };
        let memory = data_dir.as_ref().filter(|_| config.remember).map(memory::Memory::load);
        let store = Arc::new(Store::new());
        let port = local_addr.map(|a| a.port());
        let discovery =
            discover::start(config.lan, config.dht.as_ref(), identity.node_id(), port, store.clone(), &shutdown)
                .await?;
        let shared = Arc::new(Shared {
            id: identity.node_id(),
            local,
            memory,
            limiter: config.max_upload_rate.map(RateLimiter::new),
            uploads: crate::peer::UploadLog::new(),
            slots: Arc::new(Semaphore::new(config.max_peers)),
            config,
            store,
            discovery,
            data_dir,
            local_addr,
            shutdown,
            tasks: TaskTracker::new(),
            registry: Registry::default(),
            exchange: Exchange::default(),
            bans: Bans::default(),
            routes: Routes::default(),
            totals: Totals::default(),
            rooms: rooms::Rooms::default(),
        });
        if let Some(listener) = listener {
            shared.tasks.spawn(conn::accept_loop(shared.clone(), listener));
        }
        shared.tasks.spawn(exchange::connect_loop(shared.clone()));
        shared.tasks.spawn(exchange::peers_loop(shared.clone()));
        shared.tasks.spawn(remember_loop(shared.clone()));
        shared.tasks.spawn(discover::announce_loop(shared.clone()));
        shared.tasks.spawn(rooms::room_loop(shared.clone()));
        Ok(Node { shared })
    }

    /// This node's id: the public key of its identity.
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

    /// The UDP port of this node's DHT node, with [`Config::dht`].
    pub fn dht_port(&self) -> Option<u16> {
        self.shared.discovery.dht.as_ref().map(|d| d.port())
    }

    /// How many of the roots this node holds were announced on the DHT (see [`Config::dht`]).
    pub fn dht_announced(&self) -> usize {
        self.shared.discovery.announced.load(Ordering::Relaxed)
    }

    /// LAN discovery counters, while the responder runs (see [`Config::lan`]).
    pub fn lan_stats(&self) -> Option<&crate::discovery::lan::LanStats> {
        self.shared.discovery.lan.as_deref()
    }

    /// The token that stops this node.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    /// Adds a peer given by the user: dialled now, redialled with back-off when
    /// it drops, never forgotten. Addresses that can never be a peer (see
    /// [`crate::peers::undialable`]) are ignored.
    pub fn add_peer(&self, addr: SocketAddr) {
        self.shared.exchange.add(addr, true);
    }

    /// [`Node::add_peer`] for a peer that must prove node id `id` (`NODEID@HOST:PORT`):
    /// any other node answering there is disconnected after its HELLO, before any other frame.
    pub fn add_peer_expecting(&self, addr: SocketAddr, id: NodeId) {
        self.shared.exchange.add(addr, true);
        self.shared.exchange.table().expect(addr, id, true);
    }

    /// The last dial error for an address, if its dials are failing.
    pub fn dial_error(&self, addr: &SocketAddr) -> Option<String> {
        self.shared.exchange.table().get(addr).and_then(|e| e.last_error.clone())
    }

    /// Whether dialling `addr` reached this very node (it is then never dialled again).
    pub fn is_self_address(&self, addr: &SocketAddr) -> bool {
        self.shared.exchange.table().get(addr).is_some_and(|e| e.is_self)
    }

    /// Live connections.
    pub fn connected_peers(&self) -> usize {
        self.shared.registry.len()
    }

    /// The live connections: who, where, and who dialled.
    pub fn connections(&self) -> Vec<(NodeId, SocketAddr, crate::peer::Direction)> {
        self.shared.registry.all().iter().map(|c| (c.node_id, c.addr, c.direction)).collect()
    }

    /// Whether a connection to this node id is up.
    pub fn is_connected(&self, id: &NodeId) -> bool {
        self.shared.registry.has_node(id)
    }

    /// Hashes `path` on all cores (calling `progress` with bytes done), serves it,
    /// and records it in the data directory so `pex serve` serves it again.
    /// A file the data directory already knows, unchanged (same size,
    /// modification time and inode), is not hashed again; see [`Node::seed_file`].
    pub async fn seed(
        &self,
        path: &Path,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<Arc<FileInfo>, NodeError> {
        Ok(self.seed_file(path, false, progress).await?.info)
    }

    /// [`Node::seed`], hashing the file even if it is known when `rehash` is set.
    pub async fn seed_file(
        &self,
        path: &Path,
        rehash: bool,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<Seeded, NodeError> {
        let path = std::path::absolute(path).map_err(|e| StoreError::Io { path: path.to_owned(), source: e })?;
        let p = path.clone();
        let dd = self.shared.data_dir.clone();
        let (info, record, hashed) = tokio::task::spawn_blocking(move || -> Result<_, NodeError> {
            let err = |source| StoreError::Io { path: p.clone(), source };
            let file = std::fs::File::open(&p).map_err(err)?;
            let meta = file.metadata().map_err(err)?;
            if !meta.is_file() {
                return Err(err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")).into());
            }
            let known = match (&dd, rehash) {
                (Some(dd), false) => dd.seeds().into_iter().flatten().find(|(r, _)| r.path == p && r.matches(&meta)),
                _ => None,
            };
            if let Some((record, info)) = known {
                return Ok((info, record, false));
            }
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let pieces = hash_pieces(&file, meta.len(), threads, &progress).map_err(err)?;
            let after = file.metadata().map_err(err)?;
            if after.len() != meta.len() || after.modified().ok() != meta.modified().ok() {
                return Err(err(io::Error::other("file changed while it was being hashed")).into());
            }
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let info = FileInfo::new(&name, meta.len(), pieces);
            let record = SeedRecord::of(p.clone(), &meta);
            if let Some(dd) = dd {
                dd.save_info(&info).map_err(NodeError::DataDir)?;
                dd.save_seed(&info.root, &record).map_err(NodeError::DataDir)?;
            }
            Ok((info, record, true))
        })
        .await
        .map_err(|e| StoreError::Io { path: path.clone(), source: io::Error::other(e) })??;
        let info = Arc::new(info);
        self.shared.store.add_source(info.clone(), &path, record.mtime)?;
        Ok(Seeded { info, hashed })
    }

    /// Serves every file the data directory records as seeded or completed and
    /// still unchanged on disk. Returns what is served and, for each record that
    /// could not be, a one-line reason naming the file.
    pub fn serve_data_dir(&self) -> (Vec<Arc<FileInfo>>, Vec<String>) {
        let Some(dd) = &self.shared.data_dir else { return (Vec::new(), Vec::new()) };
        let (mut served, mut problems) = (Vec::new(), Vec::new());
        for record in dd.seeds() {
            let (rec, info) = match record {
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
                Ok(r) => r,
            };
            let unchanged = |m: std::fs::Metadata| m.len() == rec.size && m.modified().ok() == rec.mtime;
            match std::fs::metadata(&rec.path).map(unchanged) {
                Ok(true) => {}
                Ok(false) => {
                    let shown = rec.path.display();
                    problems.push(format!("{shown}: changed since it was seeded; run `pex seed` on it again"));
                    continue;
                }
                Err(e) => {
                    problems.push(format!("{}: {}", rec.path.display(), crate::text::io_message(&e)));
                    continue;
                }
            }
            let info = Arc::new(info);
            match self.shared.store.add_source(info.clone(), &rec.path, rec.mtime) {
                Ok(_) => served.push(info),
                Err(e) => problems.push(e.to_string()),
            }
        }
        (served, problems)
    }

    /// Fetches `root` into a verified file, or, for a folder, a verified tree
    /// (see [`FetchOptions::only`]); with [`FetchOptions::list_only`], only its
    /// manifests. Publishes progress on `progress`.
    pub async fn fetch(
        &self,
        root: Hash,
        opts: FetchOptions,
        progress: watch::Sender<Progress>,
    ) -> Result<FetchOutcome, FetchError> {
        let outcome = self.fetch_root(root, opts.clone(), progress.clone(), false).await?;
        match outcome.content {
            Content::Folder(folder) if !opts.list_only => self.fetch_folder(folder, opts, progress).await,
            _ => Ok(outcome),
        }
    }

    /// Fetches one file of a folder: from the peers already connected, with no
    /// discovery and no records of its own (the folder is recorded as a whole).
    async fn fetch_member(
        &self,
        root: Hash,
        opts: FetchOptions,
        progress: watch::Sender<Progress>,
    ) -> Result<FetchOutcome, FetchError> {
        self.fetch_root(root, opts, progress, true).await
    }

    async fn fetch_root(
        &self,
        root: Hash,
        opts: FetchOptions,
        progress: watch::Sender<Progress>,
        member: bool,
    ) -> Result<FetchOutcome, FetchError> {
        let (tx, rx) = mpsc::unbounded_channel();
        if !self.shared.routes.add(root, tx.clone()) {
            return Err(FetchError::AlreadyFetching(root));
        }
        /// Removes the download's route when it ends, however it ends.
        struct Unroute<'a>(&'a Routes, Hash);
        impl Drop for Unroute<'_> {
            fn drop(&mut self) {
                self.0.remove(&self.1);
            }
        }
        let _unroute = Unroute(&self.shared.routes, root);
        for conn in self.shared.registry.all() {
            let _ = tx.send(fetch::DownloadEvent::PeerJoined(conn));
        }
        let mut opts = opts;
        // Given no address (no --peer, no ticket), the fetch stands on discovery alone.
        let discovering = opts.peers.is_empty() && opts.expect.is_empty() && !member;
        let remembered = opts.remembered.iter().map(|(a, _)| *a).collect();
        let finder = (!member).then(|| discover::Finder::start(&self.shared, root, remembered, &progress));
        for (addr, id) in &opts.expect {
            self.add_peer_expecting(*addr, *id);
        }
        let pinned: Vec<SocketAddr> = opts.expect.iter().map(|(a, _)| *a).filter(|a| !opts.peers.contains(a)).collect();
        opts.peers.extend(pinned);
        // Remembered peers are learned addresses with their ids pinned, not the user's.
        for (addr, id) in &opts.remembered {
            if !opts.peers.contains(addr) {
                self.shared.learn(crate::wire::PeerEntry { node_id: *id, addr: *addr });
                opts.peers.push(*addr);
            }
        }
        for addr in &opts.peers {
            self.add_peer(*addr);
        }
        let env = fetch::Env {
            swarm: self.shared.clone(),
            store: self.shared.store.clone(),
            data_dir: self.shared.data_dir.clone().filter(|_| !member),
            timeouts: self.shared.config.timeouts.clone(),
            shutdown: self.shared.shutdown.clone(),
        };
        let download = fetch::download(env, root, opts, progress, rx);
        tokio::pin!(download);
        loop {
            tokio::select! {
                result = &mut download => return match result {
                    Err(FetchError::Unreachable(_)) if discovering => {
                        Err(FetchError::NothingFound(finder.as_ref().map(|f| f.summary()).unwrap_or_default()))
                    }
                    other => other,
                },
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)), if discovering => {
                    if let Some(report) = finder.as_ref().and_then(|f| f.exhausted()) {
                        return Err(FetchError::NothingFound(report));
                    }
                }
            }
        }
    }

    /// Totals for this run.
    pub fn stats(&self) -> NodeStats {
        let mut peers: Vec<PeerReport> = self
            .shared
            .registry
            .history()
            .into_iter()
            .map(|(id, s)| PeerReport {
                address: crate::lock(&s.addr).to_string(),
                node_id: id.to_hex(),
                uploaded_bytes: s.uploaded.load(Ordering::Relaxed),
                downloaded_bytes: s.downloaded.load(Ordering::Relaxed),
            })
            .collect();
        peers.sort_by(|a, b| a.address.cmp(&b.address));
        let t = &self.shared.totals;
        NodeStats {
            uploaded_bytes: t.uploaded.load(Ordering::Relaxed),
            downloaded_bytes: t.downloaded.load(Ordering::Relaxed),
            pieces_rejected: t.pieces_rejected.load(Ordering::Relaxed),
            peers,
        }
    }

    /// Stops the node: peers get REJECT(6), every task is awaited.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        self.shared.save_memory();
    }

    /// Remembered peers to start a fetch from (see [`Config::remember`]):
    /// those that shared files with this node first, the most recently seen first.
    pub fn remembered_peers(&self) -> Vec<(SocketAddr, NodeId)> {
        self.shared.memory.as_ref().map(|m| m.peers()).unwrap_or_default()
    }
}

impl Shared {
    /// Writes the remembered peers, with whoever has sent us file data marked so.
    fn save_memory(&self) {
        let (Some(m), Some(dd)) = (&self.memory, &self.data_dir) else { return };
        for c in self.registry.all() {
            if c.stats.downloaded.load(Ordering::Relaxed) > 0 {
                m.shared(&c.node_id);
            }
        }
        m.save(dd);
    }
}

/// Saves the remembered peers every minute, so a killed node loses little.
async fn remember_loop(shared: Arc<Shared>) {
    if shared.memory.is_none() {
        return;
    }
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
        }
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || s.save_memory()).await;
    }
}
