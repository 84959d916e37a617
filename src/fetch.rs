//! Downloading one file from the swarm. A single task per download (an actor)
//! owns all scheduling state: it asks for the manifest, then the hash lists,
//! then pieces chosen by the [`Picker`] from every connected peer; verifies
//! each blob on a blocking thread, writes it into the `.part` file, announces
//! it with HAVE and serves it onwards. Peers reach it through [`DownloadEvent`]s.

use crate::datadir::{PartialRecord, SeedRecord};
use crate::hash::Hash;
use crate::manifest::{hash_pieces_at, FileInfo, Manifest, ManifestError, PIECE_SIZE};
use crate::node::{bits_to_bytes, check_bitfield, Node, Shared};
use crate::peer::PeerConn;
use crate::picker::Picker;
use crate::store::{free_space, Bits, FileEntry, PartFile, StoreError};
use bitvec::prelude::*;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Most blobs asked for and not yet verified, across all peers: bounds the
/// memory held by GIVE data in transit (and by pages mapped while it is
/// written) to 16 MiB each, whatever the number of peers. 16 ms at 1 GB/s.
pub const MAX_INFLIGHT: usize = 16;
/// ASKs per peer before its rate is known.
const START_DEPTH: usize = 4;
/// ASKs per peer at most.
const MAX_DEPTH: usize = 32;
/// Each peer gets enough ASKs to cover this much transfer at its measured rate.
const QUEUE_TIME: f64 = 0.1;
/// How long to wait for more peers once every connected one lacks the file.
const NOT_FOUND_GRACE: Duration = Duration::from_secs(3);
/// A peer that answered DONT_HAVE for the root is asked again after this.
const REASK_ROOT: Duration = Duration::from_millis(500);
/// Strikes (time-outs) after which a peer is dropped.
const MAX_STRIKES: u32 = 2;
/// How often the partial-download state is flushed and recorded while pieces arrive.
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// Scheduling tick: time-outs and progress are checked this often.
const TICK: Duration = Duration::from_millis(200);

/// What peers tell a download.
#[derive(Debug)]
pub enum DownloadEvent {
    /// A connection came up.
    PeerJoined(Arc<PeerConn>),
    /// A connection closed.
    PeerLeft(u64),
    /// A GIVE answering one of this download's ASKs (not yet verified).
    Give {
        /// Connection it came on.
        conn: u64,
        /// Claimed hash.
        hash: Hash,
        /// The data.
        data: Bytes,
    },
    /// A DONT_HAVE answering one of this download's ASKs.
    DontHave {
        /// Connection it came on.
        conn: u64,
        /// The hash asked for.
        hash: Hash,
    },
    /// The peer's BITFIELD for this file.
    Bitfield {
        /// Connection it came on.
        conn: u64,
        /// Raw bits.
        bits: Bytes,
    },
    /// The peer completed piece `index`.
    Have {
        /// Connection it came on.
        conn: u64,
        /// Piece index.
        index: u32,
    },
}

/// How to fetch.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Output path; `None` means the manifest's name in the current directory.
    pub output: Option<PathBuf>,
    /// Peers to start from.
    pub peers: Vec<SocketAddr>,
    /// How long to keep retrying when no peer could be reached yet (30 s).
    pub connect_timeout: Duration,
    /// Give up once no peer has been reachable, or no progress made, for this long (60 s).
    pub give_up_after: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            output: None,
            peers: Vec::new(),
            connect_timeout: Duration::from_secs(30),
            give_up_after: Duration::from_secs(60),
        }
    }
}

/// Progress of a download, published for UIs.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// File name, once the manifest arrived.
    pub name: Option<String>,
    /// File size, once known.
    pub total_bytes: u64,
    /// Verified bytes held.
    pub have_bytes: u64,
    /// Bytes that were already in the `.part` file when the download started.
    pub resumed_bytes: u64,
    /// Connected peers.
    pub peers: usize,
}

/// A finished download.
#[derive(Clone, Debug)]
pub struct FetchOutcome {
    /// Root hash fetched.
    pub root: Hash,
    /// Where the file now is.
    pub path: PathBuf,
    /// Its size.
    pub file_bytes: u64,
    /// Bytes reused from an earlier, interrupted run.
    pub resumed_bytes: u64,
    /// The manifest and piece hashes.
    pub info: Arc<FileInfo>,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// None of the given peers could be reached.
    #[error("cannot reach any peer: {0}")]
    Unreachable(String),
    /// Every peer reached answered DONT_HAVE for the root.
    #[error("no peer holds {0}")]
    NotFound(Hash),
    /// The output path is taken; pex never overwrites.
    #[error("{} already exists; remove it or choose another path with -o", .0.display())]
    OutputExists(PathBuf),
    /// A `.part` file from some other download is in the way.
    #[error("{} belongs to another download; remove it or choose another path with -o", .0.display())]
    ForeignPart(PathBuf),
    /// The root hash names something that is not a valid manifest.
    #[error("{root} is not a valid pex manifest: {error}")]
    BadManifest {
        /// The root asked for.
        root: Hash,
        /// What is wrong.
        error: ManifestError,
    },
    /// Peers stopped delivering.
    #[error("{0}")]
    Stalled(String),
    /// Disk or file system error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Data directory error.
    #[error("data directory: {0}")]
    DataDir(io::Error),
    /// The node was shut down.
    #[error("interrupted")]
    Interrupted,
    /// Another fetch of this root runs in this node.
    #[error("{0} is already being fetched")]
    AlreadyFetching(Hash),
}

impl Node {
    /// Fetches `root` into a verified file, publishing progress on `progress`.
    pub async fn fetch(
        &self,
        root: Hash,
        opts: FetchOptions,
        progress: watch::Sender<Progress>,
    ) -> Result<FetchOutcome, FetchError> {
        if let Some(out) = &opts.output {
            if out.exists() {
                return Err(FetchError::OutputExists(out.clone()));
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut downloads = crate::lock(&self.shared.downloads);
            if downloads.contains_key(&root) {
                return Err(FetchError::AlreadyFetching(root));
            }
            downloads.insert(root, tx.clone());
        }
        let _guard = Registration { shared: self.shared.clone(), root };
        for conn in self.shared.connections() {
            let _ = tx.send(DownloadEvent::PeerJoined(conn));
        }
        for addr in &opts.peers {
            self.add_peer(*addr);
        }
        let now = Instant::now();
        let mut dl = Download {
            node: self.clone(),
            shared: self.shared.clone(),
            root,
            tx,
            opts,
            progress,
            peers: HashMap::new(),
            manifest: None,
            lists: Vec::new(),
            out: None,
            blobs: None,
            picker: None,
            verifying: JoinSet::new(),
            verifying_blobs: HashSet::new(),
            rng: fastrand::Rng::new(),
            started: now,
            ever_connected: false,
            last_peer: now,
            last_join: now,
            last_progress: now,
            have_bytes: 0,
            resumed_bytes: 0,
            pending_bits: HashMap::new(),
            pending_haves: Vec::new(),
            claimed: None,
            part_abs: PathBuf::new(),
            persisting: None,
            unpersisted: 0,
            last_persist: now,
        };
        let result = dl.run(rx).await;
        dl.release_asks();
        if result.is_err() {
            // Interrupted or failed: leave the freshest resumable state behind.
            dl.persist(true).await;
        }
        result
    }
}

/// Removes the download from the node's routing table when it ends, however it ends.
struct Registration {
    shared: Arc<Shared>,
    root: Hash,
}

impl Drop for Registration {
    fn drop(&mut self) {
        crate::lock(&self.shared.downloads).remove(&self.root);
    }
}

/// One connected peer as this download sees it.
struct PeerState {
    conn: Arc<PeerConn>,
    /// Blobs the peer holds; `None` until it tells us (then it may have anything).
    has: Option<BitVec>,
    /// Our outstanding ASKs to it.
    asked: HashSet<Hash>,
    /// Last answer (or when the first ASK went out): time-outs count from here.
    last_answer: Instant,
    strikes: u32,
    /// Bytes seen on the connection at the last tick: a moving frame is progress.
    seen_bytes: u64,
    lacks_root: bool,
    /// Bytes per second, smoothed.
    rate: f64,
    window_start: Instant,
    window_bytes: u64,
}

impl PeerState {
    fn depth(&self) -> usize {
        if self.has.is_none() {
            return 1;
        }
        if self.rate == 0.0 {
            return START_DEPTH;
        }
        (2 + (self.rate * QUEUE_TIME / PIECE_SIZE as f64) as usize).min(MAX_DEPTH)
    }

    fn record(&mut self, bytes: u64) {
        let now = Instant::now();
        self.window_bytes += bytes;
        let elapsed = now.duration_since(self.window_start).as_secs_f64();
        if elapsed >= 0.1 {
            let rate = self.window_bytes as f64 / elapsed;
            self.rate = if self.rate == 0.0 { rate } else { 0.5 * self.rate + 0.5 * rate };
            self.window_start = now;
            self.window_bytes = 0;
        }
    }
}

/// Where verified pieces go.
struct Output {
    path: PathBuf,
    part: Arc<PartFile>,
    entry: Option<Arc<FileEntry>>,
}

/// Distinct piece hashes (blobs) and where each lands in the file.
struct Blobs {
    hashes: Vec<Hash>,
    by_hash: HashMap<Hash, u32>,
    /// Blob of each piece.
    blob_of: Vec<u32>,
    /// Pieces of each blob: almost always one.
    pieces_of: Vec<Vec<u32>>,
}

impl Blobs {
    fn new(pieces: &[Hash]) -> Blobs {
        let mut b = Blobs {
            hashes: Vec::new(),
            by_hash: HashMap::new(),
            blob_of: Vec::with_capacity(pieces.len()),
            pieces_of: Vec::new(),
        };
        for (i, h) in pieces.iter().enumerate() {
            let id = *b.by_hash.entry(*h).or_insert_with(|| {
                b.hashes.push(*h);
                b.pieces_of.push(Vec::new());
                (b.hashes.len() - 1) as u32
            });
            b.blob_of.push(id);
            b.pieces_of[id as usize].push(i as u32);
        }
        b
    }

    /// Piece-level bits (BITFIELD order) to blob-level bits.
    fn blob_bits(&self, bits: &BitSlice<u8, Msb0>) -> BitVec {
        let mut out = bitvec![0; self.hashes.len()];
        for i in bits.iter_ones() {
            if let Some(b) = self.blob_of.get(i) {
                out.set(*b as usize, true);
            }
        }
        out
    }
}

enum Verified {
    Ok,
    Mismatch,
    Failed(StoreError),
}

struct Download {
    node: Node,
    shared: Arc<Shared>,
    root: Hash,
    tx: mpsc::UnboundedSender<DownloadEvent>,
    opts: FetchOptions,
    progress: watch::Sender<Progress>,
    peers: HashMap<u64, PeerState>,
    manifest: Option<(Bytes, Manifest)>,
    lists: Vec<Option<Bytes>>,
    out: Option<Output>,
    blobs: Option<Blobs>,
    picker: Option<Picker>,
    verifying: JoinSet<(u32, u64, Verified)>,
    verifying_blobs: HashSet<u32>,
    rng: fastrand::Rng,
    started: Instant,
    ever_connected: bool,
    last_peer: Instant,
    last_join: Instant,
    last_progress: Instant,
    have_bytes: u64,
    resumed_bytes: u64,
    pending_bits: HashMap<u64, Bytes>,
    pending_haves: Vec<(u64, u32)>,
    /// Pieces an earlier run recorded as flushed (BITFIELD bytes), to be re-checked.
    claimed: Option<Vec<u8>>,
    /// Absolute path of the `.part`, as recorded.
    part_abs: PathBuf,
    /// A flush-then-record of the partial state in progress.
    persisting: Option<tokio::task::JoinHandle<io::Result<()>>>,
    /// Pieces completed since the last record.
    unpersisted: usize,
    last_persist: Instant,
}

impl Download {
    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<DownloadEvent>) -> Result<FetchOutcome, FetchError> {
        let mut tick = tokio::time::interval(TICK);
        let shutdown = self.shared.shutdown.clone();
        loop {
            if let Some(outcome) = self.try_finish().await? {
                return Ok(outcome);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(FetchError::Interrupted),
                ev = rx.recv() => match ev {
                    Some(ev) => self.on_event(ev)?,
                    None => return Err(FetchError::Interrupted),
                },
                Some(done) = self.verifying.join_next(), if !self.verifying.is_empty() => {
                    let (blob, conn, verdict) = done.map_err(|e| StoreError::Io { path: PathBuf::new(), source: io::Error::other(e) })?;
                    self.on_verified(blob, conn, verdict)?;
                }
                _ = tick.tick() => {
                    self.on_tick()?;
                    if self.last_persist.elapsed() >= PERSIST_INTERVAL {
                        self.persist(false).await;
                    }
                }
            }
            self.schedule();
        }
    }

    fn on_event(&mut self, ev: DownloadEvent) -> Result<(), FetchError> {
        match ev {
            DownloadEvent::PeerJoined(conn) => {
                if conn.is_closed() || self.peers.contains_key(&conn.conn_id) {
                    return Ok(());
                }
                let now = Instant::now();
                self.ever_connected = true;
                self.last_join = now;
                if let (Some(out), Some(_)) = (&self.out, &self.blobs) {
                    if let Some(entry) = &out.entry {
                        conn.send_bitfield_once(self.root, bits_to_bytes(entry.held()));
                    }
                }
                self.peers.insert(
                    conn.conn_id,
                    PeerState {
                        conn,
                        has: None,
                        asked: HashSet::new(),
                        last_answer: now,
                        strikes: 0,
                        seen_bytes: 0,
                        lacks_root: false,
                        rate: 0.0,
                        window_start: now,
                        window_bytes: 0,
                    },
                );
            }
            DownloadEvent::PeerLeft(id) => self.drop_peer(id),
            DownloadEvent::Give { conn, hash, data } => self.on_give(conn, hash, data)?,
            DownloadEvent::DontHave { conn, hash } => self.on_dont_have(conn, hash),
            DownloadEvent::Bitfield { conn, bits } => {
                if let Some(p) = self.peers.get_mut(&conn) {
                    // It holds some of the file, so it has the manifest too.
                    if bits.iter().any(|b| *b != 0) {
                        p.lacks_root = false;
                    }
                }
                if self.blobs.is_some() {
                    self.apply_bitfield(conn, &bits);
                } else {
                    self.pending_bits.insert(conn, bits);
                }
            }
            DownloadEvent::Have { conn, index } => {
                if let Some(p) = self.peers.get_mut(&conn) {
                    p.lacks_root = false;
                }
                if self.blobs.is_some() {
                    self.apply_have(conn, index);
                } else {
                    self.pending_haves.push((conn, index));
                }
            }
        }
        Ok(())
    }

    fn drop_peer(&mut self, id: u64) {
        let Some(p) = self.peers.remove(&id) else { return };
        if let (Some(picker), Some(blobs)) = (&mut self.picker, &self.blobs) {
            if let Some(has) = &p.has {
                picker.remove_peer(has);
            }
            for h in &p.asked {
                if let Some(b) = blobs.by_hash.get(h) {
                    picker.unrequested(*b as usize);
                }
            }
        }
        self.last_peer = Instant::now();
    }

    /// Forgets every outstanding ASK, telling peers (used when the download ends).
    fn release_asks(&mut self) {
        for p in self.peers.values_mut() {
            for h in p.asked.drain() {
                p.conn.cancel(h, &self.tx);
            }
        }
    }

    fn on_give(&mut self, conn: u64, hash: Hash, data: Bytes) -> Result<(), FetchError> {
        if let Some(p) = self.peers.get_mut(&conn) {
            p.asked.remove(&hash);
            p.last_answer = Instant::now();
            p.strikes = 0;
            p.record(data.len() as u64);
        }
        if hash == self.root && self.manifest.is_none() {
            if Hash::of(&data) != hash {
                return self.misbehaved(conn, "sent a manifest that does not match its hash");
            }
            let manifest =
                Manifest::parse(&data).map_err(|error| FetchError::BadManifest { root: self.root, error })?;
            return self.accept_manifest(data, manifest);
        }
        if let Some((_, manifest)) = &self.manifest {
            if self.blobs.is_none() {
                if let Some(i) = manifest.lists.iter().position(|h| *h == hash) {
                    if self.lists[i].is_none() {
                        if Hash::of(&data) != hash {
                            return self.misbehaved(conn, "sent a hash list that does not match its hash");
                        }
                        if let Err(error) = manifest.parse_list(i, &data) {
                            return Err(FetchError::BadManifest { root: self.root, error });
                        }
                        self.lists[i] = Some(data);
                        return self.maybe_start_pieces();
                    }
                    return Ok(());
                }
            }
        }
        let (Some(blobs), Some(picker), Some(out)) = (&self.blobs, &mut self.picker, &self.out) else { return Ok(()) };
        let Some(&b) = blobs.by_hash.get(&hash) else { return Ok(()) };
        if picker.is_held(b as usize) {
            return Ok(());
        }
        if self.verifying_blobs.contains(&b) {
            picker.unrequested(b as usize);
            return Ok(());
        }
        self.verifying_blobs.insert(b);
        let part = out.part.clone();
        let pieces = blobs.pieces_of[b as usize].clone();
        self.verifying.spawn_blocking(move || {
            if Hash::of(&data) != hash {
                return (b, conn, Verified::Mismatch);
            }
            for p in pieces {
                if let Err(e) = part.write_piece(p as u64, &data) {
                    return (b, conn, Verified::Failed(e));
                }
            }
            (b, conn, Verified::Ok)
        });
        Ok(())
    }

    fn misbehaved(&mut self, conn: u64, reason: &str) -> Result<(), FetchError> {
        self.shared.pieces_rejected.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = self.peers.get(&conn) {
            self.shared.ban(&p.conn, reason);
        }
        self.drop_peer(conn);
        Ok(())
    }

    fn on_verified(&mut self, b: u32, conn: u64, verdict: Verified) -> Result<(), FetchError> {
        self.verifying_blobs.remove(&b);
        let (Some(blobs), Some(picker), Some(out)) = (&self.blobs, &mut self.picker, &self.out) else { return Ok(()) };
        match verdict {
            Verified::Failed(e) => Err(e.into()),
            Verified::Mismatch => {
                picker.unrequested(b as usize);
                let piece = blobs.pieces_of[b as usize][0];
                tracing::warn!(piece, "piece failed verification; asking another peer");
                self.misbehaved(conn, "sent a piece that does not match its hash")
            }
            Verified::Ok => {
                if !picker.completed(b as usize) {
                    return Ok(());
                }
                let hash = blobs.hashes[b as usize];
                let info = out.entry.as_ref().map(|e| e.info.clone());
                for &p in &blobs.pieces_of[b as usize] {
                    if let (Some(entry), Some(info)) = (&out.entry, &info) {
                        self.shared.store.mark_held(entry, p as usize);
                        self.have_bytes += info.manifest.piece_len(p as u64) as u64;
                    }
                    self.shared.broadcast_have(self.root, p);
                }
                for peer in self.peers.values_mut() {
                    if peer.asked.remove(&hash) {
                        peer.conn.cancel(hash, &self.tx);
                    }
                }
                self.last_progress = Instant::now();
                self.unpersisted += 1;
                self.publish();
                Ok(())
            }
        }
    }

    /// Flushes the `.part` and then records which pieces it holds, so a crash
    /// loses at most the pieces since the last record. Runs off the actor; with
    /// `wait`, waits for it (used when the download ends early).
    async fn persist(&mut self, wait: bool) {
        if let Some(h) = &self.persisting {
            if !h.is_finished() && !wait {
                return;
            }
        }
        if let Some(h) = self.persisting.take() {
            match h.await {
                Ok(Err(e)) => tracing::warn!("could not record download progress: {e}"),
                Err(e) => tracing::warn!("could not record download progress: {e}"),
                Ok(Ok(())) => {}
            }
        }
        let (Some(dd), Some(out)) = (self.shared.data_dir.clone(), &self.out) else { return };
        let (Some(entry), true) = (&out.entry, self.unpersisted > 0) else { return };
        let held = bits_to_bytes(entry.held());
        let (part, root, path) = (out.part.clone(), self.root, self.part_abs.clone());
        self.unpersisted = 0;
        self.last_persist = Instant::now();
        let job = tokio::task::spawn_blocking(move || -> io::Result<()> {
            part.sync().map_err(|e| io::Error::other(e.to_string()))?;
            dd.save_partial(&root, &path, Some(&held))
        });
        self.persisting = Some(job);
        if wait {
            if let Some(h) = self.persisting.take() {
                let _ = h.await;
            }
        }
    }

    fn on_dont_have(&mut self, conn: u64, hash: Hash) {
        let Some(p) = self.peers.get_mut(&conn) else { return };
        p.asked.remove(&hash);
        p.last_answer = Instant::now();
        let is_meta = hash == self.root || self.manifest.as_ref().is_some_and(|(_, m)| m.lists.contains(&hash));
        if is_meta {
            p.lacks_root = true;
            return;
        }
        let (Some(blobs), Some(picker)) = (&self.blobs, &mut self.picker) else { return };
        let Some(&b) = blobs.by_hash.get(&hash) else { return };
        picker.unrequested(b as usize);
        let has = p.has.get_or_insert_with(|| bitvec![0; blobs.hashes.len()]);
        if has[b as usize] {
            has.set(b as usize, false);
            picker.remove_peer(&bits_with(blobs.hashes.len(), b as usize));
        }
    }

    fn apply_bitfield(&mut self, conn: u64, bits: &Bytes) {
        let (Some(blobs), Some(picker)) = (&self.blobs, &mut self.picker) else { return };
        let Some(p) = self.peers.get_mut(&conn) else { return };
        if let Err(e) = check_bitfield(blobs.blob_of.len(), bits) {
            p.conn.close(Some(crate::wire::Frame::reject(crate::wire::RejectCode::ProtocolViolation, e)));
            return;
        }
        let new = blobs.blob_bits(BitSlice::<u8, Msb0>::from_slice(bits));
        if let Some(old) = p.has.take() {
            picker.remove_peer(&old);
        }
        picker.add_peer(&new);
        if new.any() {
            p.lacks_root = false;
        }
        p.has = Some(new);
    }

    fn apply_have(&mut self, conn: u64, index: u32) {
        let (Some(blobs), Some(picker)) = (&self.blobs, &mut self.picker) else { return };
        let Some(p) = self.peers.get_mut(&conn) else { return };
        let Some(&b) = blobs.blob_of.get(index as usize) else { return };
        let has = p.has.get_or_insert_with(|| bitvec![0; blobs.hashes.len()]);
        if !has[b as usize] {
            has.set(b as usize, true);
            picker.peer_got(b as usize);
        }
        p.lacks_root = false;
    }

    /// The manifest arrived: pick the output path, check space, open the `.part`.
    fn accept_manifest(&mut self, blob: Bytes, manifest: Manifest) -> Result<(), FetchError> {
        let path = match &self.opts.output {
            Some(p) => p.clone(),
            None => PathBuf::from(crate::manifest::sanitize_name(&manifest.name)),
        };
        if path.exists() {
            return Err(FetchError::OutputExists(path));
        }
        let part_path = part_path(&path);
        let resuming = part_path.exists();
        let earlier = if resuming {
            match self.earlier_run(&part_path)? {
                Some(record) => Some(record),
                None => return Err(FetchError::ForeignPart(part_path)),
            }
        } else {
            None
        };
        if !resuming {
            let free = free_space(&part_path).unwrap_or(u64::MAX);
            if free < manifest.size {
                return Err(StoreError::NoSpace { path: part_path, need: manifest.size, free }.into());
            }
        }
        let abs = std::path::absolute(&part_path).unwrap_or(part_path.clone());
        if let (Some(dd), None) = (&self.shared.data_dir, &earlier) {
            // Written before the .part exists, so a .part is never left without an owner.
            dd.save_partial(&self.root, &abs, None).map_err(FetchError::DataDir)?;
        }
        let part = Arc::new(PartFile::open(&part_path, manifest.size)?);
        self.claimed = earlier.and_then(|r| r.claimed(manifest.piece_count() as usize));
        self.part_abs = abs;
        self.lists = vec![None; manifest.lists.len()];
        self.shared.store.add_blob(self.root, blob.clone());
        self.progress.send_modify(|p| {
            p.name = Some(manifest.name.clone());
            p.total_bytes = manifest.size;
        });
        self.manifest = Some((blob, manifest));
        self.out = Some(Output { path, part, entry: None });
        self.maybe_start_pieces()
    }

    /// The record of an earlier run of this download at `part_path`, if there is one.
    fn earlier_run(&self, part_path: &Path) -> Result<Option<PartialRecord>, FetchError> {
        let Some(dd) = &self.shared.data_dir else { return Ok(None) };
        let abs = std::path::absolute(part_path).unwrap_or(part_path.to_owned());
        let record = dd.load_partial(&self.root).map_err(|e| FetchError::DataDir(io::Error::other(e.to_string())))?;
        Ok(record.filter(|r| r.part == abs))
    }

    /// Once every hash list is here: check what the `.part` already holds, then fetch pieces.
    fn maybe_start_pieces(&mut self) -> Result<(), FetchError> {
        if self.blobs.is_some() || self.lists.iter().any(Option::is_none) {
            return Ok(());
        }
        let Some((blob, _)) = &self.manifest else { return Ok(()) };
        let lists: Vec<Bytes> = self.lists.iter().flatten().cloned().collect();
        let info = FileInfo::from_parts(blob.clone(), lists)
            .map_err(|error| FetchError::BadManifest { root: self.root, error })?;
        let info = Arc::new(info);
        if let Some(dd) = &self.shared.data_dir {
            dd.save_info(&info).map_err(FetchError::DataDir)?;
        }
        let Some(out) = &mut self.out else { return Ok(()) };
        let held = match &self.claimed {
            Some(claimed) => verify_claimed(&out.part, &info, BitSlice::from_slice(claimed))?,
            None => bitvec![u8, Msb0; 0; info.pieces.len()],
        };
        let blobs = Blobs::new(&info.pieces);
        let mut held_blobs = bitvec![0; blobs.hashes.len()];
        for (b, pieces) in blobs.pieces_of.iter().enumerate() {
            if pieces.iter().all(|p| held[*p as usize]) {
                held_blobs.set(b, true);
            }
        }
        self.resumed_bytes = held.iter_ones().map(|p| info.manifest.piece_len(p as u64) as u64).sum();
        self.have_bytes = self.resumed_bytes;
        let entry = self.shared.store.add_partial(info.clone(), out.part.clone(), held.clone());
        out.entry = Some(entry.clone());
        self.picker = Some(Picker::new(held_blobs));
        self.blobs = Some(blobs);
        let bits = bits_to_bytes(held);
        for p in self.peers.values() {
            p.conn.send_bitfield_once(self.root, bits.clone());
        }
        for (conn, bits) in std::mem::take(&mut self.pending_bits) {
            self.apply_bitfield(conn, &bits);
        }
        for (conn, index) in std::mem::take(&mut self.pending_haves) {
            self.apply_have(conn, index);
        }
        let resumed = self.resumed_bytes;
        self.progress.send_modify(|p| {
            p.resumed_bytes = resumed;
            p.have_bytes = resumed;
        });
        self.last_progress = Instant::now();
        Ok(())
    }

    /// Hands out ASKs: the manifest to everyone, lists one peer each, pieces by the picker.
    fn schedule(&mut self) {
        let now = Instant::now();
        if self.manifest.is_none() {
            for p in self.peers.values_mut() {
                // A peer that lacked the root may be fetching it itself: ask again now and then.
                if p.lacks_root && now.duration_since(p.last_answer) >= REASK_ROOT {
                    p.lacks_root = false;
                }
                if !p.lacks_root && !p.asked.contains(&self.root) {
                    ask(p, self.root, &self.tx, now);
                }
            }
            return;
        }
        if self.blobs.is_none() {
            let Some((_, manifest)) = &self.manifest else { return };
            for (i, h) in manifest.lists.iter().enumerate() {
                if self.lists[i].is_some() || self.peers.values().any(|p| p.asked.contains(h)) {
                    continue;
                }
                let best = self.peers.values_mut().filter(|p| !p.lacks_root).min_by_key(|p| p.asked.len());
                if let Some(p) = best {
                    ask(p, *h, &self.tx, now);
                }
            }
            return;
        }
        let (Some(blobs), Some(picker)) = (&self.blobs, &mut self.picker) else { return };
        let mut inflight: usize =
            self.peers.values().map(|p| p.asked.len()).sum::<usize>() + self.verifying_blobs.len();
        let mut ids: Vec<u64> = self.peers.keys().copied().collect();
        self.rng.shuffle(&mut ids);
        for id in ids {
            let Some(p) = self.peers.get_mut(&id) else { continue };
            if p.lacks_root && p.has.is_none() {
                continue;
            }
            while p.asked.len() < p.depth() && inflight < MAX_INFLIGHT {
                let verifying = &self.verifying_blobs;
                let skip = |b: usize| p.asked.contains(&blobs.hashes[b]) || verifying.contains(&(b as u32));
                let Some(b) = picker.pick(p.has.as_deref(), skip, &mut self.rng) else { break };
                picker.requested(b);
                ask(p, blobs.hashes[b], &self.tx, now);
                inflight += 1;
            }
        }
    }

    /// Time-outs, giving up, and progress.
    fn on_tick(&mut self) -> Result<(), FetchError> {
        let now = Instant::now();
        let ask_timeout = self.shared.config.timeouts.ask;
        let mut dropped = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            let seen = p.conn.received.load(Ordering::Relaxed);
            if seen != p.seen_bytes {
                p.seen_bytes = seen;
                p.last_answer = now;
            }
            if p.asked.is_empty() || now.duration_since(p.last_answer) < ask_timeout {
                continue;
            }
            p.strikes += 1;
            tracing::info!(peer = %p.conn.addr, strikes = p.strikes, "ASKs unanswered for {} s; moving them elsewhere", ask_timeout.as_secs());
            for h in p.asked.drain() {
                p.conn.cancel(h, &self.tx);
                if let (Some(blobs), Some(picker)) = (&self.blobs, &mut self.picker) {
                    if let Some(b) = blobs.by_hash.get(&h) {
                        picker.unrequested(*b as usize);
                    }
                }
            }
            p.last_answer = now;
            if p.strikes >= MAX_STRIKES {
                p.conn.close(None);
                dropped.push(*id);
            }
        }
        for id in dropped {
            self.drop_peer(id);
        }
        if !self.peers.is_empty() {
            self.last_peer = now;
        }
        if !self.ever_connected {
            if now.duration_since(self.started) > self.opts.connect_timeout {
                let reasons: Vec<String> = self
                    .opts
                    .peers
                    .iter()
                    .map(|a| format!("{a}: {}", self.node.dial_error(a).unwrap_or_else(|| "no answer".into())))
                    .collect();
                let detail = if reasons.is_empty() { "no peers given".to_owned() } else { reasons.join("; ") };
                return Err(FetchError::Unreachable(detail));
            }
        } else if self.peers.is_empty() && now.duration_since(self.last_peer) > self.opts.give_up_after {
            return Err(FetchError::Stalled(format!("no peer reachable for {} s", self.opts.give_up_after.as_secs())));
        }
        if self.manifest.is_none()
            && !self.peers.is_empty()
            && self.peers.values().all(|p| p.lacks_root)
            && now.duration_since(self.last_join) > NOT_FOUND_GRACE
        {
            return Err(FetchError::NotFound(self.root));
        }
        if !self.peers.is_empty() && now.duration_since(self.last_progress) > self.opts.give_up_after {
            return Err(FetchError::Stalled(format!(
                "no progress for {} s: the connected peers do not hold the missing pieces",
                self.opts.give_up_after.as_secs()
            )));
        }
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        let (have, peers) = (self.have_bytes, self.peers.len());
        self.progress.send_modify(|p| {
            p.have_bytes = have;
            p.peers = peers;
        });
    }

    /// When every piece is verified: flush, move into place without overwriting, record.
    async fn try_finish(&mut self) -> Result<Option<FetchOutcome>, FetchError> {
        let done = self.picker.as_ref().is_some_and(|p| p.remaining() == 0) && self.verifying.is_empty();
        if !done {
            return Ok(None);
        }
        let Some(out) = &self.out else { return Ok(None) };
        let Some(entry) = &out.entry else { return Ok(None) };
        let info = entry.info.clone();
        let (part, path) = (out.part.clone(), out.path.clone());
        let final_path = path.clone();
        tokio::task::spawn_blocking(move || -> Result<(), FetchError> {
            part.sync()?;
            publish_file(part.path(), &final_path)
        })
        .await
        .map_err(|e| StoreError::Io { path: path.clone(), source: io::Error::other(e) })??;
        if let Some(h) = self.persisting.take() {
            let _ = h.await;
        }
        let abs = std::path::absolute(&path).unwrap_or(path.clone());
        if let Some(dd) = &self.shared.data_dir {
            let mtime = std::fs::metadata(&abs).ok().and_then(|m| m.modified().ok());
            let record = SeedRecord { path: abs.clone(), size: info.manifest.size, mtime };
            dd.save_seed(&self.root, &record).map_err(FetchError::DataDir)?;
            let _ = dd.remove_partial(&self.root);
        }
        self.publish();
        Ok(Some(FetchOutcome {
            root: self.root,
            path: abs,
            file_bytes: info.manifest.size,
            resumed_bytes: self.resumed_bytes,
            info,
        }))
    }
}

fn ask(p: &mut PeerState, hash: Hash, tx: &mpsc::UnboundedSender<DownloadEvent>, now: Instant) {
    if p.asked.is_empty() {
        p.last_answer = now;
    }
    p.asked.insert(hash);
    p.conn.ask(hash, tx.clone());
}

fn bits_with(n: usize, b: usize) -> BitVec {
    let mut v = bitvec![0; n];
    v.set(b, true);
    v
}

/// `<output>.part`
pub fn part_path(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// Which of the pieces an earlier run claims really are in the `.part`, by
/// hashing them on all cores: a crash can leave the record ahead of the data.
fn verify_claimed(part: &PartFile, info: &FileInfo, claimed: &BitSlice<u8, Msb0>) -> Result<Bits, FetchError> {
    let n = info.pieces.len();
    let mut held = bitvec![u8, Msb0; 0; n];
    let todo: Vec<u64> = claimed.iter_ones().filter(|i| *i < n).map(|i| i as u64).collect();
    let threads = std::thread::available_parallelism().map_or(2, |t| t.get());
    let hashes = hash_pieces_at(part.file(), info.manifest.size, &todo, threads, &|_| {})
        .map_err(|source| StoreError::Io { path: part.path().to_owned(), source })?;
    for (i, h) in hashes {
        if h == info.pieces[i as usize] {
            held.set(i as usize, true);
        }
    }
    Ok(held)
}

/// Moves a complete `.part` to its final name, never replacing an existing file.
fn publish_file(part: &Path, path: &Path) -> Result<(), FetchError> {
    match std::fs::hard_link(part, path) {
        Ok(()) => {
            let _ = std::fs::remove_file(part);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(FetchError::OutputExists(path.to_owned())),
        Err(_) => {
            // File systems without hard links: check, then rename.
            if path.exists() {
                return Err(FetchError::OutputExists(path.to_owned()));
            }
            std::fs::rename(part, path).map_err(|source| StoreError::Io { path: path.to_owned(), source }.into())
        }
    }
}
