//! The download actor: its state, the phase it is in, and how it reacts to
//! peers' events and answers. Choosing what to ask lives in `schedule`, the
//! `.part` file and records in `output`.

use super::blobs::Blobs;
use super::output::Output;
use super::schedule::PeerState;
use super::stream::Stream;
use super::{Content, DownloadEvent, Env, FetchError, FetchOptions, FetchOutcome, Progress, Stage, PERSIST_INTERVAL};
use crate::hash::Hash;
use crate::manifest::{FileInfo, FolderInfo, FolderManifest, Manifest};
use crate::peer::{Answer, PeerConn, Route};
use crate::picker::Picker;
use crate::store::{FileEntry, PartFile, StoreError};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Scheduling tick: time-outs and progress are checked this often.
const TICK: Duration = Duration::from_millis(200);

/// Where a download is.
pub(super) enum Phase {
    /// Asking every peer for the root.
    Manifest,
    /// The manifest is accepted and the `.part` open; the hash lists are coming.
    Lists(Lists),
    /// Every piece hash is known; pieces are coming.
    Pieces(Pieces),
    /// The complete file was found already at the output path.
    Complete { info: Arc<FileInfo>, out: Output },
    /// The root names a folder; its entry blobs are coming.
    Entries(Entries),
    /// Nothing more to fetch: a folder's manifests, or a file's manifest when only listing.
    Done(Content),
}

/// The entry-blob phase of a folder.
pub(super) struct Entries {
    pub blob: Bytes,
    pub manifest: FolderManifest,
    pub blobs: Vec<Option<Bytes>>,
}

/// The hash-list phase.
pub(super) struct Lists {
    pub blob: Bytes,
    pub manifest: Manifest,
    pub lists: Vec<Option<Bytes>>,
    pub out: Output,
    /// Pieces an earlier run recorded as flushed (BITFIELD bytes), to be re-checked.
    pub claimed: Option<Vec<u8>>,
}

/// The piece phase.
pub(super) struct Pieces {
    pub info: Arc<FileInfo>,
    pub blobs: Blobs,
    pub picker: Picker,
    pub out: Output,
    pub sink: Sink,
    /// Blobs being hashed and written now.
    pub verifying: HashSet<u32>,
}

/// Where verified pieces go.
pub(super) enum Sink {
    /// Into their slots of the `.part`, served from there.
    Part { part: Arc<PartFile>, entry: Arc<FileEntry> },
    /// To standard output in order, held in memory until written (`-o -`).
    Stream(Box<Stream>),
}

impl Pieces {
    /// The pieces held, as BITFIELD bits (none for a stream: what it holds
    /// for a moment is announced with HAVE).
    pub fn held_bits(&self) -> Bytes {
        match &self.sink {
            Sink::Part { entry, .. } => crate::bitfield::to_bytes(entry.held()),
            Sink::Stream(_) => {
                crate::bitfield::to_bytes(bitvec::bitvec![u8, bitvec::order::Msb0; 0; self.info.pieces.len()])
            }
        }
    }
}

impl Phase {
    /// The output, once the manifest was accepted.
    pub fn output(&self) -> Option<&Output> {
        match self {
            Phase::Manifest | Phase::Entries(_) | Phase::Done(_) => None,
            Phase::Lists(l) => Some(&l.out),
            Phase::Pieces(p) => Some(&p.out),
            Phase::Complete { out, .. } => Some(out),
        }
    }
}

/// The verdict on one GIVE of a piece.
pub(super) enum Verified {
    /// Written into the `.part` (None), or verified to be streamed (the data).
    Ok(Option<Bytes>),
    /// With the sender's connection, which may have left while the piece was hashed.
    Mismatch(Option<Arc<PeerConn>>),
    Failed(StoreError),
}

/// Times that drive giving up.
pub(super) struct Clock {
    pub started: Instant,
    pub ever_connected: bool,
    pub last_peer: Instant,
    pub last_join: Instant,
    pub last_progress: Instant,
}

/// One download's whole state.
pub(super) struct Download {
    pub env: Env,
    pub root: Hash,
    pub opts: FetchOptions,
    pub progress: Arc<watch::Sender<Progress>>,
    /// Where peers deliver answers to this download's ASKs.
    pub route: Route,
    pub peers: HashMap<u64, PeerState>,
    pub phase: Phase,
    /// BITFIELDs and HAVEs that came before the piece hashes.
    pub pending_bits: HashMap<u64, Bytes>,
    pub pending_haves: Vec<(u64, u32)>,
    pub verifying: JoinSet<(u32, u64, Verified)>,
    pub rng: fastrand::Rng,
    pub clock: Clock,
    pub have_bytes: u64,
    pub resumed_bytes: u64,
    pub received_bytes: u64,
}

/// Fetches `root` into a verified file, publishing progress on `progress`.
/// `events` carries what the node learns of peers; peers already connected
/// should be sent as [`DownloadEvent::PeerJoined`] first.
pub async fn download(
    env: Env,
    root: Hash,
    opts: FetchOptions,
    progress: watch::Sender<Progress>,
    events: mpsc::UnboundedReceiver<DownloadEvent>,
) -> Result<FetchOutcome, FetchError> {
    let (route, answers) = mpsc::unbounded_channel();
    let now = Instant::now();
    let mut dl = Download {
        env,
        root,
        opts,
        progress: Arc::new(progress),
        route,
        peers: HashMap::new(),
        phase: Phase::Manifest,
        pending_bits: HashMap::new(),
        pending_haves: Vec::new(),
        verifying: JoinSet::new(),
        rng: fastrand::Rng::new(),
        clock: Clock { started: now, ever_connected: false, last_peer: now, last_join: now, last_progress: now },
        have_bytes: 0,
        resumed_bytes: 0,
        received_bytes: 0,
    };
    let result = dl.run(events, answers).await;
    dl.release_asks();
    if result.is_err() {
        dl.abandon().await;
    }
    result
}

impl Download {
    async fn run(
        &mut self,
        mut events: mpsc::UnboundedReceiver<DownloadEvent>,
        mut answers: mpsc::UnboundedReceiver<Answer>,
    ) -> Result<FetchOutcome, FetchError> {
        let mut tick = tokio::time::interval(TICK);
        let shutdown = self.env.shutdown.clone();
        loop {
            if let Some(outcome) = self.try_finish().await? {
                return Ok(outcome);
            }
            tokio::select! {
                // Answers before events: a peer's GIVE is queued before the news
                // that it left, so a lie is judged (and banned) while the peer is known.
                biased;
                _ = shutdown.cancelled() => return Err(FetchError::Interrupted),
                Some(answer) = answers.recv() => self.on_answer(answer).await?,
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => return Err(FetchError::Interrupted),
                },
                Some(done) = self.verifying.join_next(), if !self.verifying.is_empty() => {
                    let (blob, conn, verdict) = done.map_err(|e| StoreError::Io {
                        path: Default::default(),
                        source: std::io::Error::other(e),
                    })?;
                    self.on_verified(blob, conn, verdict)?;
                    self.drain_stream().await?;
                }
                _ = tick.tick() => {
                    self.on_tick()?;
                    if let Some(out) = self.phase.output() {
                        if out.persist_due(PERSIST_INTERVAL) {
                            self.persist(false).await;
                        }
                    }
                }
            }
            self.schedule();
        }
    }

    fn on_event(&mut self, ev: DownloadEvent) {
        match ev {
            DownloadEvent::PeerJoined(conn) => {
                if conn.is_closed() || self.peers.contains_key(&conn.conn_id) {
                    return;
                }
                self.clock.ever_connected = true;
                self.clock.last_join = Instant::now();
                if let Phase::Pieces(p) = &self.phase {
                    conn.send_bitfield_once(self.root, p.held_bits());
                }
                self.peers.insert(conn.conn_id, PeerState::new(conn));
            }
            DownloadEvent::PeerLeft(id) => self.drop_peer(id),
            DownloadEvent::Bitfield { conn, bits } => {
                if let Some(p) = self.peers.get_mut(&conn) {
                    // It holds some of the file, so it has the manifest too.
                    if bits.iter().any(|b| *b != 0) {
                        p.lacks_root = false;
                    }
                }
                if matches!(self.phase, Phase::Pieces(_)) {
                    self.apply_bitfield(conn, &bits);
                } else {
                    self.pending_bits.insert(conn, bits);
                }
            }
            DownloadEvent::Have { conn, index } => {
                if let Some(p) = self.peers.get_mut(&conn) {
                    p.lacks_root = false;
                }
                if matches!(self.phase, Phase::Pieces(_)) {
                    self.apply_have(conn, index);
                } else {
                    self.pending_haves.push((conn, index));
                }
            }
        }
    }

    async fn on_answer(&mut self, answer: Answer) -> Result<(), FetchError> {
        match answer {
            Answer::Give { conn, hash, data } => self.on_give(conn, hash, data).await,
            Answer::DontHave { conn, hash } => {
                self.on_dont_have(conn, hash);
                Ok(())
            }
        }
    }

    async fn on_give(&mut self, conn: u64, hash: Hash, data: Bytes) -> Result<(), FetchError> {
        if let Some(p) = self.peers.get_mut(&conn) {
            p.answered(&hash, data.len() as u64);
        }
        self.received_bytes += data.len() as u64;
        match &mut self.phase {
            Phase::Manifest if hash == self.root => {
                if Hash::of(&data) != hash {
                    return self.misbehaved(conn, None, "sent a manifest that does not match its hash");
                }
                let bad = |error| FetchError::BadManifest { root: hash, error };
                if FolderManifest::is_folder(&data) {
                    let manifest = FolderManifest::parse(&data).map_err(bad)?;
                    self.env.store.add_blob(self.root, data.clone());
                    self.progress.send_modify(|p| {
                        p.name = Some(manifest.name.clone());
                        p.total_bytes = manifest.total_size;
                    });
                    let blobs = vec![None; manifest.blobs.len()];
                    self.phase = Phase::Entries(Entries { blob: data, manifest, blobs });
                    return self.entries_done();
                }
                let manifest = Manifest::parse(&data).map_err(bad)?;
                if self.opts.list_only {
                    self.phase = Phase::Done(Content::Listed(manifest));
                    return Ok(());
                }
                self.accept_manifest(data, manifest).await
            }
            Phase::Manifest | Phase::Complete { .. } | Phase::Done(_) => Ok(()),
            Phase::Entries(e) => {
                let Some(i) = e.manifest.blobs.iter().position(|h| *h == hash) else { return Ok(()) };
                if e.blobs[i].is_some() {
                    return Ok(());
                }
                if Hash::of(&data) != hash {
                    return self.misbehaved(conn, None, "sent an entry blob that does not match its hash");
                }
                let want = e.manifest.blob_len(i);
                if data.len() != want {
                    let error = crate::manifest::ManifestError::BadList { index: i, len: data.len(), expected: want };
                    return Err(FetchError::BadManifest { root: self.root, error });
                }
                e.blobs[i] = Some(data);
                self.entries_done()
            }
            Phase::Lists(l) => {
                let Some(i) = l.manifest.lists.iter().position(|h| *h == hash) else { return Ok(()) };
                if l.lists[i].is_some() {
                    return Ok(());
                }
                if Hash::of(&data) != hash {
                    return self.misbehaved(conn, None, "sent a hash list that does not match its hash");
                }
                // Its length must be what the file size implies (checked here).
                if let Err(error) = l.manifest.parse_list(i, &data) {
                    return Err(FetchError::BadManifest { root: self.root, error });
                }
                l.lists[i] = Some(data);
                if l.lists.iter().all(Option::is_some) {
                    self.start_pieces().await?;
                }
                Ok(())
            }
            Phase::Pieces(p) => {
                let Some(&b) = p.blobs.by_hash.get(&hash) else { return Ok(()) };
                if p.picker.is_held(b as usize) {
                    return Ok(());
                }
                if p.verifying.contains(&b) {
                    p.picker.unrequested(b as usize);
                    return Ok(());
                }
                let want = p.blobs.len_of[b as usize];
                if data.len() != want {
                    // The hash may even match: the manifest names a blob that
                    // cannot fill its slot. Either way the sender lied.
                    p.picker.unrequested(b as usize);
                    let piece = p.blobs.pieces_of[b as usize][0];
                    tracing::warn!(piece, got = data.len(), want, "piece of the wrong length; asking another peer");
                    self.misbehaved(conn, None, "sent a piece of the wrong length for its slot")?;
                    return self.check_obtainable(b, data.len());
                }
                p.verifying.insert(b);
                let sender = self.peers.get(&conn).map(|peer| peer.conn.clone());
                let part = match &p.sink {
                    Sink::Part { part, .. } => Some(part.clone()),
                    Sink::Stream(_) => None,
                };
                let pieces = p.blobs.pieces_of[b as usize].clone();
                self.verifying.spawn_blocking(move || {
                    if Hash::of(&data) != hash {
                        return (b, conn, Verified::Mismatch(sender));
                    }
                    let Some(part) = part else { return (b, conn, Verified::Ok(Some(data))) };
                    for p in pieces {
                        if let Err(e) = part.write_piece(p as u64, &data) {
                            return (b, conn, Verified::Failed(e));
                        }
                    }
                    (b, conn, Verified::Ok(None))
                });
                Ok(())
            }
        }
    }

    /// With every entry blob of a folder in, checks the whole folder and ends.
    fn entries_done(&mut self) -> Result<(), FetchError> {
        let Phase::Entries(e) = &self.phase else { return Ok(()) };
        if e.blobs.iter().any(Option::is_none) {
            return Ok(());
        }
        let blobs: Vec<Bytes> = e.blobs.iter().flatten().cloned().collect();
        let folder = FolderInfo::from_parts(e.blob.clone(), blobs)
            .map_err(|error| FetchError::BadManifest { root: self.root, error })?;
        self.phase = Phase::Done(Content::Folder(Arc::new(folder)));
        Ok(())
    }

    /// After a lie about blob `b`: fails the download if no connected peer may
    /// still hold it.
    fn check_obtainable(&self, b: u32, got: usize) -> Result<(), FetchError> {
        let Phase::Pieces(p) = &self.phase else { return Ok(()) };
        let may_have = self.peers.values().any(|peer| peer.has.as_ref().is_none_or(|h| h[b as usize]));
        if may_have || p.picker.is_held(b as usize) {
            return Ok(());
        }
        let index = p.blobs.pieces_of[b as usize][0] as u64;
        let want = p.blobs.len_of[b as usize];
        Err(FetchError::BadPiece {
            index,
            reason: format!("its slot is {want} bytes, a peer sent {got}, and no other connected peer has it"),
        })
    }

    /// A peer lied (bad hash or length): count it, ban it, drop it. `sender`
    /// is its connection as it was when the lie arrived, if the peer may have
    /// left since.
    pub(super) fn misbehaved(
        &mut self,
        conn: u64,
        sender: Option<Arc<PeerConn>>,
        reason: &str,
    ) -> Result<(), FetchError> {
        self.env.swarm.piece_rejected();
        if let Some(c) = self.peers.get(&conn).map(|p| p.conn.clone()).or(sender) {
            self.env.swarm.ban(&c, reason);
        }
        self.drop_peer(conn);
        Ok(())
    }

    fn on_verified(&mut self, b: u32, conn: u64, verdict: Verified) -> Result<(), FetchError> {
        let Phase::Pieces(p) = &mut self.phase else { return Ok(()) };
        p.verifying.remove(&b);
        match verdict {
            Verified::Failed(e) => Err(e.into()),
            Verified::Mismatch(sender) => {
                p.picker.unrequested(b as usize);
                let piece = p.blobs.pieces_of[b as usize][0];
                tracing::warn!(piece, "piece failed verification; asking another peer");
                self.misbehaved(conn, sender, "sent a piece that does not match its hash")
            }
            Verified::Ok(data) => {
                if !p.picker.completed(b as usize) {
                    return Ok(());
                }
                let hash = p.blobs.hashes[b as usize];
                let pieces = &p.blobs.pieces_of[b as usize];
                match (&mut p.sink, data) {
                    (Sink::Part { entry, .. }, _) => {
                        for &i in pieces {
                            if self.env.store.mark_held(entry, i as usize) {
                                self.have_bytes += p.info.manifest.piece_len(i as u64) as u64;
                            }
                        }
                    }
                    (Sink::Stream(stream), Some(data)) => {
                        // Served from memory until written.
                        self.env.store.add_blob(hash, data.clone());
                        stream.hold(pieces, &data);
                        self.have_bytes += (data.len() * pieces.len()) as u64;
                    }
                    (Sink::Stream(_), None) => {}
                }
                for &i in pieces {
                    self.env.swarm.broadcast_have(self.root, i);
                }
                for peer in self.peers.values_mut() {
                    if peer.asked.remove(&hash) {
                        peer.conn.cancel(hash, &self.route);
                    }
                }
                self.clock.last_progress = Instant::now();
                p.out.note_progress();
                self.publish();
                Ok(())
            }
        }
    }

    /// Writes the streamed pieces that are next in order; a closed output ends the download.
    async fn drain_stream(&mut self) -> Result<(), FetchError> {
        let Phase::Pieces(Pieces { sink: Sink::Stream(stream), blobs, .. }) = &mut self.phase else { return Ok(()) };
        match stream.drain(blobs, &self.env.store).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(FetchError::OutputClosed),
            Err(e) => Err(StoreError::Io { path: "standard output".into(), source: e }.into()),
        }
    }

    /// Publishes the counters and what the download is doing now.
    pub(super) fn publish(&self) {
        let (have, received, peers) = (self.have_bytes, self.received_bytes, self.peers.len());
        let stage = match &self.phase {
            _ if self.peers.is_empty() && self.clock.ever_connected => {
                let gone = self.clock.last_peer.elapsed();
                Stage::NoPeers { give_up_in: self.opts.give_up_after.saturating_sub(gone) }
            }
            _ if self.peers.is_empty() => Stage::Connecting,
            Phase::Manifest => Stage::Manifest,
            Phase::Lists(_) | Phase::Entries(_) => Stage::Lists,
            Phase::Pieces(_) | Phase::Complete { .. } | Phase::Done(_) => Stage::Pieces,
        };
        let dialing = if peers == 0 {
            self.opts.peers.iter().map(|a| (*a, self.env.swarm.dial_error(a))).collect()
        } else {
            Vec::new()
        };
        self.progress.send_modify(|p| {
            p.have_bytes = have;
            p.received_bytes = received;
            p.peers = peers;
            p.stage = stage;
            p.dialing = dialing;
        });
    }
}
