//! Piece choice, as pure data: which blob to ask a given peer for next.
//!
//! The picker works on *blobs* (distinct piece hashes): identical pieces are one
//! blob, fetched once. Invariants, for every blob:
//! - it is exactly one of held, or wanted;
//! - `inflight` counts the outstanding ASKs for it (0 = not requested);
//! - `avail` counts the connected peers known to hold it.
//!
//! Rules: the first [`RANDOM_FIRST`] blobs are picked at random (to get
//! something to trade quickly); after that the rarest wanted blob the peer has,
//! random among equals. When every wanted blob is already requested (the
//! endgame), a blob may be asked from up to [`MAX_DUPLICATES`] peers at once, so
//! the last pieces never wait on one slow peer.

use bitvec::prelude::*;

/// Blobs picked at random before rarest-first takes over.
pub const RANDOM_FIRST: usize = 4;
/// Most simultaneous ASKs for one blob in the endgame.
pub const MAX_DUPLICATES: u8 = 2;
/// Most candidates examined per pick, so a huge file costs bounded time; the
/// scan starts at a random place, so picks stay spread out.
const SCAN_LIMIT: usize = 8192;

/// The state of every blob of one download.
#[derive(Clone, Debug)]
pub struct Picker {
    held: BitVec,
    avail: Vec<u16>,
    inflight: Vec<u8>,
    remaining: usize,
    unrequested: usize,
}

impl Picker {
    /// A picker for `held.len()` blobs, some already held.
    pub fn new(held: BitVec) -> Picker {
        let n = held.len();
        let remaining = held.count_zeros();
        Picker { held, avail: vec![0; n], inflight: vec![0; n], remaining, unrequested: remaining }
    }

    /// Number of blobs.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True for a download of nothing.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Blobs still wanted.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Whether blob `b` is held.
    pub fn is_held(&self, b: usize) -> bool {
        self.held[b]
    }

    /// Outstanding ASKs for blob `b`.
    pub fn inflight(&self, b: usize) -> u8 {
        self.inflight[b]
    }

    /// A peer with these blobs connected (or sent its BITFIELD).
    pub fn add_peer(&mut self, has: &BitSlice) {
        for b in has.iter_ones() {
            self.avail[b] = self.avail[b].saturating_add(1);
        }
    }

    /// A peer with these blobs left.
    pub fn remove_peer(&mut self, has: &BitSlice) {
        for b in has.iter_ones() {
            self.avail[b] = self.avail[b].saturating_sub(1);
        }
    }

    /// A peer announced blob `b` (HAVE).
    pub fn peer_got(&mut self, b: usize) {
        self.avail[b] = self.avail[b].saturating_add(1);
    }

    /// The next blob to ask a peer for. `has` is the peer's blobs, `None` if
    /// unknown (it may have anything); `skip(b)` rules out blobs for this peer
    /// (an ASK for `b` already out to it, `b` being verified, or it said it lacks `b`).
    pub fn pick(&self, has: Option<&BitSlice>, skip: impl Fn(usize) -> bool, rng: &mut fastrand::Rng) -> Option<usize> {
        let n = self.len();
        // Nothing wanted (which is also the case for an empty picker: n = 0).
        if self.remaining == 0 {
            return None;
        }
        let peer_has = |b: usize| has.is_none_or(|h| h[b]);
        let random_phase = self.len() - self.remaining < RANDOM_FIRST;
        let endgame = self.unrequested == 0;
        let start = rng.usize(..n);
        let mut best: Option<(usize, (u16, u8))> = None;
        let mut ties = 0u32;
        let mut seen = 0;
        for k in 0..n {
            let b = (start + k) % n;
            if self.held[b] || !peer_has(b) {
                continue;
            }
            let ok = if endgame { self.inflight[b] < MAX_DUPLICATES } else { self.inflight[b] == 0 };
            if !ok || skip(b) {
                continue;
            }
            seen += 1;
            // Rarest first; in the endgame, fewest outstanding copies first.
            let key = if random_phase { (0, 0) } else { (self.avail[b], self.inflight[b]) };
            match best {
                Some((_, k0)) if key > k0 => {}
                Some((_, k0)) if key == k0 => {
                    ties += 1;
                    if rng.u32(..=ties) == 0 {
                        best = Some((b, key));
                    }
                }
                _ => {
                    best = Some((b, key));
                    ties = 0;
                }
            }
            if seen >= SCAN_LIMIT {
                break;
            }
        }
        best.map(|(b, _)| b)
    }

    /// An ASK for `b` went out.
    pub fn requested(&mut self, b: usize) {
        if self.inflight[b] == 0 && !self.held[b] {
            self.unrequested -= 1;
        }
        self.inflight[b] = self.inflight[b].saturating_add(1);
    }

    /// An ASK for `b` ended without the blob (DONT_HAVE, bad data, peer gone, time-out).
    pub fn unrequested(&mut self, b: usize) {
        if self.inflight[b] == 0 {
            return;
        }
        self.inflight[b] -= 1;
        if self.inflight[b] == 0 && !self.held[b] {
            self.unrequested += 1;
        }
    }

    /// Blob `b` arrived and verified. Returns false if it was already held.
    pub fn completed(&mut self, b: usize) -> bool {
        if self.held[b] {
            return false;
        }
        self.held.set(b, true);
        self.remaining -= 1;
        if self.inflight[b] == 0 {
            self.unrequested -= 1;
        }
        self.inflight[b] = 0;
        true
    }

    /// True while any wanted blob has no ASK out.
    pub fn has_unrequested(&self) -> bool {
        self.unrequested > 0
    }
}

#[cfg(test)]
mod tests;
