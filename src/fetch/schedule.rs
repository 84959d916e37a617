//! Choosing what to ask whom: each peer as this download sees it, the ASK
//! window per peer, time-outs that move ASKs elsewhere, and giving up.

use super::download::{Download, Phase, Sink};
use super::{FetchError, MAX_INFLIGHT};
use crate::bitfield;
use crate::hash::Hash;
use crate::manifest::PIECE_SIZE;
use crate::peer::{PeerConn, Route};
use bitvec::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// ASKs per peer at least once its bitfield is known (all it gets before its rate is): a seed answers the
/// piece sent least lately among those queued, so it needs a few to choose from.
pub(super) const MIN_DEPTH: usize = 6;
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

/// One connected peer as this download sees it.
pub(super) struct PeerState {
    pub conn: Arc<PeerConn>,
    /// Blobs the peer holds; `None` until it tells us (then it may have anything).
    pub has: Option<BitVec>,
    /// How many of them: a peer that holds every blob is a seed.
    held: usize,
    /// Our outstanding ASKs to it.
    pub asked: HashSet<Hash>,
    /// Last answer (or when the first ASK went out): time-outs count from here.
    last_answer: Instant,
    strikes: u32,
    /// Bytes seen on the connection at the last tick: a moving frame is progress.
    seen_bytes: u64,
    /// It answered DONT_HAVE for the root or a hash list.
    pub lacks_root: bool,
    /// Blobs it answered DONT_HAVE for while its bitfield is unknown.
    lacks: HashSet<u32>,
    /// Bytes per second, smoothed.
    rate: f64,
    window_start: Instant,
    window_bytes: u64,
}

impl PeerState {
    pub fn new(conn: Arc<PeerConn>) -> PeerState {
        let now = Instant::now();
        PeerState {
            conn,
            has: None,
            held: 0,
            asked: HashSet::new(),
            last_answer: now,
            strikes: 0,
            seen_bytes: 0,
            lacks_root: false,
            lacks: HashSet::new(),
            rate: 0.0,
            window_start: now,
            window_bytes: 0,
        }
    }

    /// How many ASKs it may have outstanding: 1 while its bitfield is unknown,
    /// then enough to cover [`QUEUE_TIME`] at its measured rate, at least [`MIN_DEPTH`].
    pub(super) fn depth(&self) -> usize {
        if self.has.is_none() {
            return 1;
        }
        if self.rate == 0.0 {
            return MIN_DEPTH;
        }
        (2 + (self.rate * QUEUE_TIME / PIECE_SIZE as f64) as usize).clamp(MIN_DEPTH, MAX_DEPTH)
    }

    /// True once it has told us it holds every blob.
    fn is_seed(&self) -> bool {
        self.has.as_ref().is_some_and(|h| self.held == h.len())
    }

    /// An answer (GIVE of `bytes`) to the ASK for `hash` arrived.
    pub fn answered(&mut self, hash: &Hash, bytes: u64) {
        self.asked.remove(hash);
        self.last_answer = Instant::now();
        self.strikes = 0;
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

    fn ask(&mut self, hash: Hash, route: &Route, now: Instant) {
        if self.asked.is_empty() {
            self.last_answer = now;
        }
        self.asked.insert(hash);
        self.conn.ask(hash, route.clone());
    }
}

/// Asks each of the `missing` blobs (hash lists, entry blobs) not yet asked
/// of anyone of one peer: the one not lacking the root with fewest ASKs outstanding.
fn ask_each<'a>(
    peers: &mut HashMap<u64, PeerState>,
    missing: impl Iterator<Item = &'a Hash>,
    route: &Route,
    now: Instant,
) {
    for h in missing {
        if peers.values().any(|p| p.asked.contains(h)) {
            continue;
        }
        if let Some(p) = peers.values_mut().filter(|p| !p.lacks_root).min_by_key(|p| p.asked.len()) {
            p.ask(*h, route, now);
        }
    }
}

impl Download {
    /// Hands out ASKs: the manifest to everyone, lists one peer each, pieces by the picker.
    pub(super) fn schedule(&mut self) {
        let now = Instant::now();
        match &mut self.phase {
            Phase::Complete { .. } | Phase::Done(_) => {}
            Phase::Entries(e) => {
                let missing = e.manifest.blobs.iter().zip(&e.blobs).filter(|(_, b)| b.is_none()).map(|(h, _)| h);
                ask_each(&mut self.peers, missing, &self.route, now);
            }
            Phase::Manifest => {
                for p in self.peers.values_mut() {
                    // A peer that lacked the root may be fetching it itself: ask again now and then.
                    if p.lacks_root && now.duration_since(p.last_answer) >= REASK_ROOT {
                        p.lacks_root = false;
                    }
                    if !p.lacks_root && !p.asked.contains(&self.root) {
                        p.ask(self.root, &self.route, now);
                    }
                }
            }
            Phase::Lists(l) => {
                let missing = l.manifest.lists.iter().zip(&l.lists).filter(|(_, b)| b.is_none()).map(|(h, _)| h);
                ask_each(&mut self.peers, missing, &self.route, now);
            }
            Phase::Pieces(pc) => {
                let mut inflight: usize =
                    self.peers.values().map(|p| p.asked.len()).sum::<usize>() + pc.verifying.len();
                let mut ids: Vec<u64> = self.peers.keys().copied().collect();
                self.rng.shuffle(&mut ids);
                for id in ids {
                    let Some(p) = self.peers.get_mut(&id) else { continue };
                    if p.lacks_root && p.has.is_none() {
                        continue;
                    }
                    while p.asked.len() < p.depth() && inflight < MAX_INFLIGHT {
                        let (blobs, verifying, sink) = (&pc.blobs, &pc.verifying, &pc.sink);
                        let skip = |b: usize| {
                            p.asked.contains(&blobs.hashes[b])
                                || verifying.contains(&(b as u32))
                                || p.lacks.contains(&(b as u32))
                                || matches!(sink, Sink::Stream(s) if s.beyond_window(blobs, b))
                        };
                        let Some(b) = pc.picker.pick(p.has.as_deref(), skip, &mut self.rng) else { break };
                        pc.picker.requested(b);
                        p.ask(blobs.hashes[b], &self.route, now);
                        inflight += 1;
                    }
                }
            }
        }
    }

    /// Time-outs, giving up, and progress.
    pub(super) fn on_tick(&mut self) -> Result<(), FetchError> {
        let now = Instant::now();
        let ask_timeout = self.env.timeouts.ask;
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
                p.conn.cancel(h, &self.route);
                if let Phase::Pieces(pc) = &mut self.phase {
                    if let Some(b) = pc.blobs.by_hash.get(&h) {
                        pc.picker.unrequested(*b as usize);
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
            self.clock.last_peer = now;
        }
        let give_up = self.opts.give_up_after;
        if !self.clock.ever_connected {
            if now.duration_since(self.clock.started) > self.opts.connect_timeout {
                let reasons: Vec<String> = self
                    .opts
                    .peers
                    .iter()
                    .map(|a| format!("{a}: {}", self.env.swarm.dial_error(a).unwrap_or_else(|| "no answer".into())))
                    .collect();
                let detail = if reasons.is_empty() { "no peers given".to_owned() } else { reasons.join("; ") };
                return Err(FetchError::Unreachable(detail));
            }
        } else if self.peers.is_empty() && now.duration_since(self.clock.last_peer) > give_up {
            return Err(FetchError::Stalled(format!("no peer reachable for {} s", give_up.as_secs())));
        }
        if matches!(self.phase, Phase::Manifest)
            && !self.peers.is_empty()
            && self.peers.values().all(|p| p.lacks_root)
            && now.duration_since(self.clock.last_join) > NOT_FOUND_GRACE
        {
            return Err(FetchError::NotFound(self.root));
        }
        if !self.peers.is_empty() && now.duration_since(self.clock.last_progress) > give_up {
            return Err(FetchError::Stalled(format!(
                "no progress for {} s: the connected peers do not hold the missing pieces",
                give_up.as_secs()
            )));
        }
        self.publish();
        Ok(())
    }

    /// Forgets a peer: its availability and its outstanding ASKs.
    pub(super) fn drop_peer(&mut self, id: u64) {
        let Some(p) = self.peers.remove(&id) else { return };
        if let Phase::Pieces(pc) = &mut self.phase {
            if let Some(has) = &p.has {
                pc.picker.remove_peer(has);
            }
            for h in &p.asked {
                if let Some(b) = pc.blobs.by_hash.get(h) {
                    pc.picker.unrequested(*b as usize);
                }
            }
        }
        self.clock.last_peer = Instant::now();
    }

    /// Withdraws every outstanding ASK, telling peers (used when the download ends).
    pub(super) fn release_asks(&mut self) {
        for p in self.peers.values_mut() {
            for h in p.asked.drain() {
                p.conn.cancel(h, &self.route);
            }
        }
    }

    pub(super) fn on_dont_have(&mut self, conn: u64, hash: Hash) {
        let Some(p) = self.peers.get_mut(&conn) else { return };
        p.asked.remove(&hash);
        p.last_answer = Instant::now();
        // Whatever the phase (a late answer included), no root means no file.
        if hash == self.root {
            p.lacks_root = true;
            return;
        }
        let pc = match &mut self.phase {
            Phase::Complete { .. } | Phase::Manifest | Phase::Done(_) => return,
            Phase::Entries(e) => {
                p.lacks_root |= e.manifest.blobs.contains(&hash);
                return;
            }
            Phase::Lists(l) => {
                p.lacks_root |= l.manifest.lists.contains(&hash);
                return;
            }
            Phase::Pieces(pc) => pc,
        };
        if pc.info.manifest.lists.contains(&hash) {
            p.lacks_root = true;
            return;
        }
        let Some(&b) = pc.blobs.by_hash.get(&hash) else { return };
        pc.picker.unrequested(b as usize);
        match &mut p.has {
            // Bitfield unknown: it lacks this blob, and may still have others.
            None => {
                p.lacks.insert(b);
            }
            Some(has) if has[b as usize] => {
                has.set(b as usize, false);
                p.held -= 1;
                let mut one = bitvec![0; pc.blobs.len()];
                one.set(b as usize, true);
                pc.picker.remove_peer(&one);
            }
            Some(_) => {}
        }
    }

    pub(super) fn apply_bitfield(&mut self, conn: u64, bits: &[u8]) {
        let Phase::Pieces(pc) = &mut self.phase else { return };
        let Some(p) = self.peers.get_mut(&conn) else { return };
        let pieces = pc.blobs.blob_of.len();
        if bits.len() != pieces.div_ceil(8) {
            // A range from piece 0 that stops short (the first of several for a
            // file over 8 TiB): what it says, piece by piece.
            if let Err(e) = bitfield::check_range(pieces, 0, bits) {
                let reject = crate::wire::Frame::reject(crate::wire::RejectCode::ProtocolViolation, e);
                p.conn.close(Some(reject));
                return;
            }
            for index in bitfield::set_indices(0, bits) {
                self.apply_have(conn, index);
            }
            return;
        }
        if let Err(e) = bitfield::check(pieces, bits) {
            let reject = crate::wire::Frame::reject(crate::wire::RejectCode::ProtocolViolation, e);
            p.conn.close(Some(reject));
            return;
        }
        let new = pc.blobs.blob_bits(BitSlice::<u8, Msb0>::from_slice(bits));
        if let Some(old) = p.has.take() {
            pc.picker.remove_peer(&old);
        }
        p.lacks.clear();
        pc.picker.add_peer(&new);
        p.held = new.count_ones();
        if new.any() {
            p.lacks_root = false;
        }
        p.has = Some(new);
    }

    pub(super) fn apply_have(&mut self, conn: u64, index: u32) {
        let Phase::Pieces(pc) = &mut self.phase else { return };
        let Some(p) = self.peers.get_mut(&conn) else { return };
        let Some(&b) = pc.blobs.blob_of.get(index as usize) else { return };
        let has = p.has.get_or_insert_with(|| bitvec![0; pc.blobs.len()]);
        if !has[b as usize] {
            has.set(b as usize, true);
            p.held += 1;
            pc.picker.peer_got(b as usize);
        }
        p.lacks_root = false;
        if p.is_seed() {
            return;
        }
        // A partial peer has it now: an ASK for it still waiting at a seed is
        // withdrawn, so the seed's upload goes to pieces nobody else has yet
        // (the next schedule asks again, rarest first).
        let hash = pc.blobs.hashes[b as usize];
        for q in self.peers.values_mut() {
            if q.is_seed() && q.asked.remove(&hash) {
                q.conn.cancel(hash, &self.route);
                pc.picker.unrequested(b as usize);
            }
        }
    }
}
