//! Which blobs this node sent lately, shared by all its connections, so each
//! connection answers its queued ASKs for blobs sent least first and holds
//! back a blob it has just sent to someone else: in a swarm that copy reaches
//! the other fetchers through the one who got it (they see its HAVE and
//! withdraw their ASK), and the seeder's upload goes to pieces nobody has yet,
//! as BitTorrent's super-seeding intends.

use crate::hash::Hash;
use crate::lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// After a send, the blob is held back from others for twice as long as the
/// write took (the copy is still travelling, and the receiver's HAVE waits
/// behind its own uploads) plus this, for the HAVE to reach the others and
/// their CANCEL to come back.
const SPREAD: Duration = Duration::from_millis(250);
/// Longest a blob is held back, however slow its last write was; also how
/// long one being written is held before its write reports.
const MAX_HOLD: Duration = Duration::from_secs(3);
/// Blobs smaller than this are never held back: sending them again costs little
/// (manifests, most hash lists), and holding them would make every new
/// fetcher wait for the one before it.
const SMALL: usize = 64 * 1024;
/// Sends older than this are forgotten: by then the copy has spread or its
/// receiver is gone.
const MEMORY: Duration = Duration::from_secs(30);
/// Entries kept before old ones are swept (the map holds at most one entry
/// per blob sent within [`MEMORY`]).
const SWEEP_AT: usize = 4096;

/// One blob's recent sends.
#[derive(Clone, Copy, Debug)]
struct Sent {
    count: u32,
    /// Not sent again to anyone before this, while other ASKs can be answered.
    held_until: Instant,
    last: Instant,
}

/// What to answer next from a connection's queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice {
    /// The ASK at this position; it is now counted as being sent.
    Now(usize),
    /// Every queued blob is held back until this instant.
    Wait(Instant),
}

/// Recent sends by blob, shared by every connection of a node.
#[derive(Debug, Default)]
pub struct UploadLog {
    sent: Mutex<HashMap<Hash, Sent>>,
    /// Woken when a send finishes: the hold it had while being sent changes.
    released: Notify,
}

impl UploadLog {
    /// An empty log.
    pub fn new() -> UploadLog {
        UploadLog::default()
    }

    /// Picks from `queued` (oldest first) the blob sent least often lately,
    /// the oldest among equals, skipping those held back, and counts it as
    /// being sent (held until [`finished`](Self::finished)); if every one is
    /// held, says when the first is released.
    pub fn choose<'a>(&self, queued: impl Iterator<Item = &'a Hash>, now: Instant) -> Option<Choice> {
        let mut sent = lock(&self.sent);
        let mut best: Option<(u32, usize, Hash)> = None;
        let mut release: Option<Instant> = None;
        for (i, h) in queued.enumerate() {
            let count = match sent.get(h) {
                Some(s) if now.saturating_duration_since(s.last) >= MEMORY => 0,
                Some(s) if s.held_until > now => {
                    release = Some(release.map_or(s.held_until, |r| r.min(s.held_until)));
                    continue;
                }
                Some(s) => s.count,
                None => 0,
            };
            if best.is_none_or(|(c, _, _)| count < c) {
                best = Some((count, i, *h));
                if count == 0 {
                    break;
                }
            }
        }
        match (best, release) {
            (Some((_, i, hash)), _) => {
                if sent.len() >= SWEEP_AT {
                    sent.retain(|_, s| now.saturating_duration_since(s.last) < MEMORY);
                }
                let e = sent.entry(hash).or_insert(Sent { count: 0, held_until: now, last: now });
                if now.saturating_duration_since(e.last) >= MEMORY {
                    e.count = 0;
                }
                e.count += 1;
                e.held_until = now + MAX_HOLD;
                e.last = now;
                Some(Choice::Now(i))
            }
            (None, Some(at)) => Some(Choice::Wait(at)),
            (None, None) => None,
        }
    }

    /// The answer chosen for `hash` was written: `len` bytes (0 for
    /// DONT_HAVE or a failed write) from `start` to `end`. Sets how long it
    /// stays held back.
    pub fn finished(&self, hash: Hash, len: usize, start: Instant, end: Instant) {
        let mut sent = lock(&self.sent);
        let Some(e) = sent.get_mut(&hash) else { return };
        e.held_until =
            if len < SMALL { end } else { end + (2 * end.saturating_duration_since(start) + SPREAD).min(MAX_HOLD) };
        e.last = end;
        drop(sent);
        // Connections waiting on the hold it had while being sent look again.
        self.released.notify_waiters();
    }

    /// Completes when a send finishes and its hold changes; create it before calling [`choose`](Self::choose).
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIECE: usize = 1 << 20;

    fn h(n: u32) -> Hash {
        let mut b = [7u8; 32];
        b[..4].copy_from_slice(&n.to_be_bytes());
        Hash(b)
    }

    /// Sends `hash` alone at `at`, the write taking no time.
    fn send(log: &UploadLog, hash: Hash, at: Instant) {
        assert_eq!(log.choose([hash].iter(), at), Some(Choice::Now(0)));
        log.finished(hash, PIECE, at, at);
    }

    #[test]
    fn unsent_blobs_come_first_then_the_least_sent_then_the_oldest() {
        let log = UploadLog::new();
        let t = Instant::now();
        send(&log, h(1), t);
        send(&log, h(2), t);
        send(&log, h(2), t + SPREAD);
        let later = t + Duration::from_secs(5);
        assert_eq!(log.choose([h(2), h(1), h(3)].iter(), later), Some(Choice::Now(2)));
        // h(3) is now being sent; of the others h(1) went out fewer times.
        assert_eq!(log.choose([h(2), h(3), h(1)].iter(), later), Some(Choice::Now(2)));
        log.finished(h(1), PIECE, later, later);
        let much_later = later + Duration::from_secs(5);
        assert_eq!(log.choose([h(4), h(5)].iter(), much_later), Some(Choice::Now(0)));
        assert_eq!(log.choose([].iter(), much_later), None);
    }

    #[test]
    fn a_blob_being_sent_or_just_sent_is_held_back_while_others_can_go() {
        let log = UploadLog::new();
        let t = Instant::now();
        assert_eq!(log.choose([h(1)].iter(), t), Some(Choice::Now(0)));
        // Being written: another connection answers something else, or waits.
        assert_eq!(log.choose([h(1), h(2)].iter(), t), Some(Choice::Now(1)));
        assert_eq!(log.choose([h(1)].iter(), t), Some(Choice::Wait(t + MAX_HOLD)));
        // Written in 300 ms: held twice that long again, plus SPREAD.
        let end = t + Duration::from_millis(300);
        log.finished(h(1), PIECE, t, end);
        let release = end + Duration::from_millis(600) + SPREAD;
        assert_eq!(log.choose([h(1)].iter(), end), Some(Choice::Wait(release)));
        assert_eq!(log.choose([h(1)].iter(), release), Some(Choice::Now(0)));
        // A write that took very long holds for at most MAX_HOLD.
        log.choose([h(3)].iter(), t);
        log.finished(h(3), PIECE, t, t + Duration::from_secs(60));
        let end = t + Duration::from_secs(60);
        assert_eq!(log.choose([h(3)].iter(), end), Some(Choice::Wait(end + MAX_HOLD)));
    }

    #[test]
    fn small_blobs_and_failed_sends_are_not_held() {
        let log = UploadLog::new();
        let t = Instant::now();
        log.choose([h(1)].iter(), t);
        log.finished(h(1), 63, t, t);
        assert_eq!(log.choose([h(1)].iter(), t), Some(Choice::Now(0)), "a manifest goes to the next one at once");
        log.choose([h(2)].iter(), t);
        log.finished(h(2), 0, t, t);
        assert_eq!(log.choose([h(2)].iter(), t), Some(Choice::Now(0)), "a DONT_HAVE or failed write holds nothing");
    }

    #[tokio::test]
    async fn a_finished_send_wakes_those_waiting_on_its_hold() {
        let log = std::sync::Arc::new(UploadLog::new());
        let t = Instant::now();
        log.choose([h(1)].iter(), t);
        let waiter = {
            let log = log.clone();
            tokio::spawn(async move {
                let released = log.released();
                tokio::pin!(released);
                released.as_mut().enable();
                released.await;
            })
        };
        tokio::task::yield_now().await;
        log.finished(h(1), 63, t, t);
        tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap();
    }

    #[test]
    fn old_sends_are_forgotten_and_swept() {
        let log = UploadLog::new();
        let t = Instant::now();
        send(&log, h(1), t);
        send(&log, h(1), t + Duration::from_secs(1));
        let much_later = t + MEMORY + Duration::from_secs(2);
        assert_eq!(log.choose([h(2), h(1)].iter(), much_later), Some(Choice::Now(0)));
        assert_eq!(lock(&log.sent)[&h(1)].count, 2);
        for i in 10..SWEEP_AT as u32 + 10 {
            send(&log, h(i), much_later);
        }
        // Recent entries stay (a map of one entry per piece sent in MEMORY).
        assert_eq!(lock(&log.sent).len(), SWEEP_AT + 1, "h(1) was swept, h(2) stays");
        assert!(!lock(&log.sent).contains_key(&h(1)));
    }
}
