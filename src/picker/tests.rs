//! The picker's rules, each pinned by a test (and a proptest of random operation sequences).
use super::*;

fn rng() -> fastrand::Rng {
    fastrand::Rng::with_seed(7)
}

#[test]
fn prefers_the_rarest_blob_after_the_random_start() {
    let mut held = bitvec![0; 10];
    held[..RANDOM_FIRST].fill(true);
    let mut p = Picker::new(held);
    p.add_peer(&bitvec![1; 10]);
    let mut rare = bitvec![1; 10];
    rare.set(7, false);
    p.add_peer(&rare);
    p.add_peer(&rare);
    for _ in 0..20 {
        assert_eq!(p.pick(None, |_| false, &mut rng()), Some(7));
    }
}

#[test]
fn only_picks_what_the_peer_has_and_never_twice_before_the_endgame() {
    let mut p = Picker::new(bitvec![0; 4]);
    let has = bitvec![0, 1, 1, 0];
    let mut r = rng();
    let a = p.pick(Some(&has), |_| false, &mut r).unwrap();
    p.requested(a);
    let b = p.pick(Some(&has), |_| false, &mut r).unwrap();
    assert_ne!(a, b);
    assert!(has[a] && has[b]);
    p.requested(b);
    // Not the endgame yet (0 and 3 are unrequested), so no duplicate.
    assert_eq!(p.pick(Some(&has), |_| false, &mut r), None);
}

#[test]
fn endgame_duplicates_to_other_peers_up_to_the_limit() {
    let mut p = Picker::new(bitvec![0; 1]);
    let mut r = rng();
    p.requested(p.pick(None, |_| false, &mut r).unwrap());
    // Same peer: already asked.
    assert_eq!(p.pick(None, |b| b == 0, &mut r), None);
    // Another peer gets a duplicate, a third does not.
    assert_eq!(p.pick(None, |_| false, &mut r), Some(0));
    p.requested(0);
    assert_eq!(p.pick(None, |_| false, &mut r), None);
    assert!(p.completed(0));
    assert!(!p.completed(0));
    assert_eq!(p.remaining(), 0);
}

#[test]
fn a_failed_request_makes_the_blob_pickable_again() {
    let mut p = Picker::new(bitvec![0; 2]);
    p.requested(0);
    p.requested(1);
    assert!(!p.has_unrequested());
    p.unrequested(1);
    assert!(p.has_unrequested());
    assert_eq!(p.pick(None, |_| false, &mut rng()), Some(1));
}

/// A picker of `n` blobs, of which `held` are held.
fn picker(n: usize, held: &[usize]) -> Picker {
    Picker::new(set(n, held))
}

/// The bitfield of `n` blobs with `blobs` set.
fn set(n: usize, blobs: &[usize]) -> BitVec {
    let mut bits = bitvec![0; n];
    for &b in blobs {
        bits.set(b, true);
    }
    bits
}

/// Connects peers so that blob `b` is held by exactly `avail[b]` of them.
fn spread(p: &mut Picker, avail: &[u16]) {
    let most = avail.iter().copied().max().unwrap_or(0);
    for k in 0..most {
        let has: BitVec = avail.iter().map(|&a| a > k).collect();
        p.add_peer(&has);
    }
    assert_eq!(p.avail, avail);
}

/// How often each blob is picked in `rounds` picks (none of them requested).
fn tally(p: &Picker, has: Option<&BitSlice>, skip: impl Fn(usize) -> bool, rounds: usize, seed: u64) -> Vec<usize> {
    let mut r = fastrand::Rng::with_seed(seed);
    let mut counts = vec![0; p.len()];
    for _ in 0..rounds {
        counts[p.pick(has, &skip, &mut r).expect("something to pick")] += 1;
    }
    counts
}

/// The blobs picked at least once.
fn picked(counts: &[usize]) -> Vec<usize> {
    (0..counts.len()).filter(|&b| counts[b] > 0).collect()
}

#[test]
fn after_the_random_phase_picks_are_among_the_rarest_blobs_the_peer_has() {
    // Held blobs 0..4 are rarer than anything (nobody has them) and never picked.
    let mut p = picker(12, &[0, 1, 2, 3]);
    spread(&mut p, &[0, 0, 0, 0, 1, 3, 2, 2, 3, 4, 4, 3]);
    // A peer that may have anything: the one rarest blob, whatever the random start.
    assert_eq!(picked(&tally(&p, None, |_| false, 200, 1)), [4]);
    // A peer without blob 4: the rarest it has are 6 and 7, and both get picked.
    let has = set(12, &[5, 6, 7, 8, 9]);
    assert_eq!(picked(&tally(&p, Some(&has), |_| false, 200, 2)), [6, 7]);
    // Skipping 6 leaves 7.
    assert_eq!(picked(&tally(&p, Some(&has), |b| b == 6, 200, 3)), [7]);
    // Requested blobs are out of the running: next come 5 and 8 (3 peers each), never 9.
    p.requested(6);
    p.requested(7);
    assert_eq!(picked(&tally(&p, Some(&has), |_| false, 200, 4)), [5, 8]);
}

#[test]
fn the_rarest_blob_is_found_wherever_it_lies() {
    // Held blobs between the wanted ones; the one rarest wanted blob in every place.
    let held = [1, 3, 5, 7];
    for rare in [0, 2, 4, 6, 8, 9] {
        let mut p = picker(10, &held);
        let avail: Vec<u16> = (0..10).map(|b| if b == rare { 1 } else { 2 }).collect();
        spread(&mut p, &avail);
        for seed in 0..40 {
            assert_eq!(p.pick(None, |_| false, &mut fastrand::Rng::with_seed(seed)), Some(rare), "seed {seed}");
        }
    }
}

#[test]
fn equally_rare_blobs_are_picked_evenly_at_random() {
    // 5, 6 and 7 are the rarest (1 peer), 4, 8 and 9 more common; 0..4 are held.
    let mut p = picker(10, &[0, 1, 2, 3]);
    spread(&mut p, &[0, 0, 0, 0, 2, 1, 1, 1, 2, 3]);
    let counts = tally(&p, None, |_| false, 3000, 5);
    assert_eq!(picked(&counts), [5, 6, 7]);
    // Each about a third: a bias to the first or last one scanned shows.
    for b in [5, 6, 7] {
        assert!((850..1150).contains(&counts[b]), "{counts:?}");
    }
}

#[test]
fn the_first_blobs_are_picked_at_random_whatever_their_rarity() {
    // Blob 6 is the one rarest.
    let avail = [2, 2, 2, 2, 2, 2, 1, 2, 2, 2];
    let mut p = picker(10, &[]);
    spread(&mut p, &avail);
    // Nothing held: any blob, evenly enough.
    let counts = tally(&p, None, |_| false, 1000, 6);
    assert!(counts.iter().all(|&c| (50..150).contains(&c)), "{counts:?}");
    // One blob short of RANDOM_FIRST held: still at random.
    for b in 0..RANDOM_FIRST - 1 {
        assert!(p.completed(b));
    }
    let counts = tally(&p, None, |_| false, 1000, 7);
    assert!(picked(&counts).len() > 3, "{counts:?}");
    // RANDOM_FIRST held: rarest first from now on.
    assert!(p.completed(RANDOM_FIRST - 1));
    assert_eq!(picked(&tally(&p, None, |_| false, 500, 8)), [6]);
    // Blobs held from the start count too.
    let mut q = picker(10, &[0, 1, 2, 3]);
    spread(&mut q, &avail);
    assert_eq!(picked(&tally(&q, None, |_| false, 500, 9)), [6]);
}

/// One peer as the download sees it: its bitfield and its outstanding ASKs.
struct Peer {
    has: Option<BitVec>,
    asked: Vec<usize>,
}

impl Peer {
    /// Picks for this peer and sends the ASK.
    fn ask(&mut self, p: &mut Picker, r: &mut fastrand::Rng) -> Option<usize> {
        let b = p.pick(self.has.as_deref(), |b| self.asked.contains(&b), r)?;
        assert!(!self.asked.contains(&b), "asked {b} twice of one peer");
        p.requested(b);
        self.asked.push(b);
        Some(b)
    }
}

#[test]
fn endgame_duplicates_are_capped_and_never_asked_twice_of_one_peer() {
    let mut p = picker(6, &[0, 1, 2]);
    let mut r = rng();
    let mut a = Peer { has: Some(set(6, &[4, 5])), asked: Vec::new() };
    let mut b = Peer { has: None, asked: Vec::new() };
    let mut c = Peer { has: None, asked: Vec::new() };
    // Peer a gets 4 and 5; b gets only 3 (no duplicate: 3 was unrequested).
    a.ask(&mut p, &mut r).unwrap();
    a.ask(&mut p, &mut r).unwrap();
    assert_eq!(a.ask(&mut p, &mut r), None);
    a.asked.sort();
    assert_eq!(a.asked, [4, 5]);
    assert!(p.has_unrequested());
    assert_eq!(b.ask(&mut p, &mut r), Some(3));
    assert!(!p.has_unrequested());
    // The endgame: b gets a duplicate of 4 and of 5, and never 3 again.
    assert!(b.ask(&mut p, &mut r).is_some());
    assert!(b.ask(&mut p, &mut r).is_some());
    assert_eq!(b.ask(&mut p, &mut r), None);
    b.asked.sort();
    assert_eq!(b.asked, [3, 4, 5]);
    // c gets the second copy of 3, then nothing: every blob has two ASKs out.
    assert_eq!(c.ask(&mut p, &mut r), Some(3));
    assert_eq!(c.ask(&mut p, &mut r), None);
    assert_eq!(a.ask(&mut p, &mut r), None);
    assert_eq!((3..6).map(|x| p.inflight(x)).collect::<Vec<_>>(), [MAX_DUPLICATES; 3]);
    // b's ASK for 4 fails: c may have the second copy, and a, which has one, may not.
    p.unrequested(4);
    b.asked.retain(|&x| x != 4);
    assert!(!p.has_unrequested());
    assert_eq!(a.ask(&mut p, &mut r), None);
    assert_eq!(c.ask(&mut p, &mut r), Some(4));
    assert_eq!(c.ask(&mut p, &mut r), None);
    assert_eq!(b.ask(&mut p, &mut r), None);
}

#[test]
fn availability_follows_bitfields_haves_and_departures() {
    let mut p = picker(8, &[0, 1, 2, 3]);
    let picks = |p: &Picker, seed| picked(&tally(p, None, |_| false, 100, seed));
    let a = set(8, &[4, 5, 6, 7]);
    let mut b = set(8, &[4, 5, 6]);
    p.add_peer(&a);
    p.add_peer(&b);
    assert_eq!(p.avail, [0, 0, 0, 0, 2, 2, 2, 1]);
    assert_eq!(picks(&p, 10), [7]);
    // b announces 7; c joins without 5: 5 becomes the rarest.
    p.peer_got(7);
    b.set(7, true);
    let c = set(8, &[4, 6, 7]);
    p.add_peer(&c);
    assert_eq!(p.avail, [0, 0, 0, 0, 3, 2, 3, 3]);
    assert_eq!(picks(&p, 11), [5]);
    // c leaves: all equal again.
    p.remove_peer(&c);
    assert_eq!(p.avail, [0, 0, 0, 0, 2, 2, 2, 2]);
    assert_eq!(picks(&p, 12), [4, 5, 6, 7]);
    // b leaves (with the 7 it announced); a remains, d has all but 7.
    p.remove_peer(&b);
    p.add_peer(&set(8, &[4, 5, 6]));
    assert_eq!(p.avail, [0, 0, 0, 0, 2, 2, 2, 1]);
    assert_eq!(picks(&p, 13), [7]);
    // a leaves: 7 is held by nobody known, still the rarest for a peer of unknown bitfield.
    p.remove_peer(&a);
    assert_eq!(p.avail, [0, 0, 0, 0, 1, 1, 1, 0]);
    assert_eq!(picks(&p, 14), [7]);
}

#[test]
fn completing_counts_each_blob_once() {
    let mut p = picker(5, &[1]);
    assert_eq!(p.remaining(), 4);
    // Held from the start: not completed again.
    assert!(!p.completed(1));
    assert_eq!(p.remaining(), 4);
    p.requested(0);
    p.requested(0);
    let mut left = 4;
    for b in [0, 2, 4, 3] {
        assert!(p.completed(b));
        left -= 1;
        assert_eq!(p.remaining(), left);
        assert!(p.is_held(b));
        assert_eq!(p.inflight(b), 0);
        assert!(!p.completed(b));
        assert_eq!(p.remaining(), left);
    }
    assert_eq!(p.pick(None, |_| false, &mut rng()), None);
    assert!(!p.has_unrequested());
}

#[test]
fn a_blob_is_pickable_again_only_when_its_last_ask_ends() {
    let mut p = picker(6, &[0, 1, 2, 3]);
    let mut r = rng();
    // 4 is asked twice (the endgame), 5 once.
    p.requested(4);
    p.requested(5);
    p.requested(4);
    assert_eq!(p.inflight(4), 2);
    // One of 4's ASKs ends: still requested; a peer without 5 gets the duplicate slot.
    p.unrequested(4);
    assert_eq!(p.inflight(4), 1);
    assert!(!p.has_unrequested());
    assert_eq!(p.pick(None, |b| b == 5, &mut r), Some(4));
    // The last ASK for 4 ends: it is unrequested again.
    p.unrequested(4);
    assert_eq!(p.inflight(4), 0);
    assert!(p.has_unrequested());
    assert_eq!(p.unrequested, 1);
    // The end of an ASK that is not out changes nothing.
    p.unrequested(4);
    assert_eq!(p.inflight(4), 0);
    assert_eq!(p.unrequested, 1);
    // 4 is unrequested: no longer the endgame, so 5 gets no duplicate and 4 is the one pick.
    for _ in 0..20 {
        assert_eq!(p.pick(None, |_| false, &mut r), Some(4));
    }
    // 5's ASK ends too: both are pickable.
    p.unrequested(5);
    assert_eq!(picked(&tally(&p, None, |_| false, 100, 15)), [4, 5]);
    // An ASK ending for a held blob does not make it wanted.
    p.requested(4);
    p.requested(4);
    assert!(p.completed(4));
    p.unrequested(4);
    p.unrequested(4);
    p.requested(5);
    assert!(!p.has_unrequested());
    assert_eq!(p.pick(None, |_| false, &mut r), Some(5));
}

#[test]
fn has_unrequested_tracks_blobs_without_an_ask() {
    let mut p = picker(3, &[1]);
    assert!(p.has_unrequested());
    p.requested(0);
    assert!(p.has_unrequested());
    // Asking for a held blob (a race) does not count.
    p.requested(1);
    assert!(p.has_unrequested());
    p.requested(2);
    assert!(!p.has_unrequested());
    p.unrequested(2);
    assert!(p.has_unrequested());
    assert!(p.completed(2));
    assert!(!p.has_unrequested());
    assert!(p.completed(0));
    assert!(!p.has_unrequested());
    assert_eq!(p.remaining(), 0);
}

#[test]
fn skip_rules_out_blobs_in_every_phase() {
    // Random phase: only the blob not skipped.
    let mut p = picker(6, &[]);
    spread(&mut p, &[3, 3, 1, 3, 3, 3]);
    assert_eq!(picked(&tally(&p, None, |b| b != 4, 100, 16)), [4]);
    assert_eq!(p.pick(None, |_| true, &mut rng()), None);
    // Rarest first: skipping the rarest gives the next rarest.
    for b in [0, 1, 3, 4] {
        assert!(p.completed(b));
    }
    p.add_peer(&set(6, &[5]));
    assert_eq!(p.avail, [3, 3, 1, 3, 3, 4]);
    assert_eq!(picked(&tally(&p, None, |_| false, 100, 17)), [2]);
    assert_eq!(picked(&tally(&p, None, |b| b == 2, 100, 18)), [5]);
    assert_eq!(p.pick(None, |_| true, &mut rng()), None);
    // Endgame: the skipped blob gets no duplicate.
    p.requested(2);
    p.requested(5);
    assert!(!p.has_unrequested());
    assert_eq!(picked(&tally(&p, None, |b| b == 2, 100, 19)), [5]);
    assert_eq!(picked(&tally(&p, None, |b| b == 5, 100, 20)), [2]);
    assert_eq!(p.pick(None, |_| true, &mut rng()), None);
}

#[test]
fn a_pick_examines_a_bounded_number_of_candidates() {
    let n = SCAN_LIMIT + 1000;
    let p = picker(n, &[]);
    let calls = std::cell::Cell::new(0);
    let b = p.pick(
        None,
        |_| {
            calls.set(calls.get() + 1);
            false
        },
        &mut rng(),
    );
    assert!(b.is_some());
    assert_eq!(calls.get(), SCAN_LIMIT);
}

/// One step of a download, with raw indices reduced modulo what exists.
#[derive(Clone, Debug)]
enum Op {
    /// A peer connects, with its bitfield or (None) before it.
    Join(Option<Vec<bool>>),
    /// A peer leaves; its ASKs end.
    Leave(usize),
    /// A peer announces a blob.
    Have(usize, usize),
    /// A peer is picked for, and the ASK goes out.
    Ask(usize),
    /// One of a peer's ASKs ends without the blob.
    Fail(usize, usize),
    /// A blob arrives and verifies.
    Complete(usize),
}

const MAX_N: usize = 10;

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let bits = proptest::collection::vec(any::<bool>(), MAX_N);
    prop_oneof![
        2 => proptest::option::weighted(0.8, bits).prop_map(Op::Join),
        1 => any::<usize>().prop_map(Op::Leave),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(p, b)| Op::Have(p, b)),
        6 => any::<usize>().prop_map(Op::Ask),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(p, k)| Op::Fail(p, k)),
        2 => any::<usize>().prop_map(Op::Complete),
    ]
}

/// What the picker should know, kept the simple way.
struct Model {
    held: Vec<bool>,
    inflight: Vec<u8>,
    peers: Vec<(Option<Vec<bool>>, Vec<usize>)>,
}

impl Model {
    fn avail(&self, b: usize) -> u16 {
        self.peers.iter().filter(|(has, _)| has.as_ref().is_some_and(|h| h[b])).count() as u16
    }

    fn unrequested(&self) -> usize {
        (0..self.held.len()).filter(|&b| !self.held[b] && self.inflight[b] == 0).count()
    }

    /// Checks every invariant of the picker against the model.
    fn check(&self, p: &Picker) {
        let n = self.held.len();
        assert_eq!(p.len(), n);
        for b in 0..n {
            // Held or wanted, never both: the held bit is the model's.
            assert_eq!(p.is_held(b), self.held[b], "held {b}");
            assert_eq!(p.inflight(b), self.inflight[b], "inflight {b}");
            assert_eq!(p.avail[b], self.avail(b), "avail {b}");
            // Outstanding ASKs of wanted blobs are the peers' ASKs.
            if !self.held[b] {
                let asks = self.peers.iter().filter(|(_, asked)| asked.contains(&b)).count();
                assert_eq!(self.inflight[b] as usize, asks, "model inflight {b}");
            }
        }
        assert_eq!(p.remaining(), self.held.iter().filter(|&&h| !h).count());
        assert_eq!(p.unrequested, self.unrequested());
        assert_eq!(p.has_unrequested(), self.unrequested() > 0);
    }

    /// Checks a pick for peer `i` against the rules.
    fn check_pick(&self, i: usize, got: Option<usize>) {
        let (has, asked) = &self.peers[i];
        let endgame = self.unrequested() == 0;
        let candidates: Vec<usize> = (0..self.held.len())
            .filter(|&b| !self.held[b] && has.as_ref().is_none_or(|h| h[b]) && !asked.contains(&b))
            .filter(|&b| if endgame { self.inflight[b] < MAX_DUPLICATES } else { self.inflight[b] == 0 })
            .collect();
        let Some(b) = got else {
            assert!(candidates.is_empty(), "nothing picked of {candidates:?}");
            return;
        };
        assert!(candidates.contains(&b), "picked {b}, not one of {candidates:?}");
        let held = self.held.iter().filter(|&&h| h).count();
        if held >= RANDOM_FIRST {
            let key = |b: usize| (self.avail(b), self.inflight[b]);
            let least = candidates.iter().map(|&c| key(c)).min().unwrap();
            assert_eq!(key(b), least, "picked {b}, not the rarest of {candidates:?}");
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

    #[test]
    fn random_downloads_keep_the_invariants(
        n in 1..=MAX_N,
        held in proptest::collection::vec(proptest::prelude::any::<bool>(), MAX_N),
        ops in proptest::collection::vec(op(), 0..80),
        seed: u64,
    ) {
        let held = held[..n].to_vec();
        let mut p = Picker::new(held.iter().collect());
        let mut m = Model { held, inflight: vec![0; n], peers: Vec::new() };
        let mut r = fastrand::Rng::with_seed(seed);
        m.check(&p);
        for op in ops {
            let peers = m.peers.len();
            match op {
                Op::Join(has) => {
                    let has = has.map(|h| h[..n].to_vec());
                    if let Some(h) = &has {
                        p.add_peer(&h.iter().collect::<BitVec>());
                    }
                    m.peers.push((has, Vec::new()));
                }
                Op::Leave(i) if peers > 0 => {
                    let (has, asked) = m.peers.remove(i % peers);
                    if let Some(h) = has {
                        p.remove_peer(&h.iter().collect::<BitVec>());
                    }
                    for b in asked {
                        p.unrequested(b);
                        if m.inflight[b] > 0 {
                            m.inflight[b] -= 1;
                        }
                    }
                }
                Op::Have(i, b) if peers > 0 => {
                    let b = b % n;
                    let has = m.peers[i % peers].0.get_or_insert_with(|| vec![false; n]);
                    if !has[b] {
                        has[b] = true;
                        p.peer_got(b);
                    }
                }
                Op::Ask(i) if peers > 0 => {
                    let i = i % peers;
                    let (has, asked) = &m.peers[i];
                    let bits = has.as_ref().map(|h| h.iter().collect::<BitVec>());
                    let got = p.pick(bits.as_deref(), |b| asked.contains(&b), &mut r);
                    m.check_pick(i, got);
                    if let Some(b) = got {
                        p.requested(b);
                        m.peers[i].1.push(b);
                        m.inflight[b] += 1;
                    }
                }
                Op::Fail(i, k) if peers > 0 => {
                    let asked = &mut m.peers[i % peers].1;
                    if !asked.is_empty() {
                        let b = asked.remove(k % asked.len());
                        p.unrequested(b);
                        if m.inflight[b] > 0 {
                            m.inflight[b] -= 1;
                        }
                    }
                }
                Op::Complete(b) => {
                    // ASKs still out for it stay with their peers (their CANCELs may
                    // cross the GIVE); the blob is no longer requested.
                    let b = b % n;
                    proptest::prop_assert_eq!(p.completed(b), !m.held[b]);
                    m.held[b] = true;
                    m.inflight[b] = 0;
                }
                _ => {}
            }
            m.check(&p);
        }
    }
}

#[test]
fn a_picker_of_no_blobs_is_empty_and_picks_nothing() {
    let empty = Picker::new(bitvec![]);
    assert!(empty.is_empty());
    assert_eq!(empty.len(), 0);
    assert_eq!(empty.pick(None, |_| false, &mut rng()), None);
    let three = Picker::new(bitvec![0; 3]);
    assert!(!three.is_empty() && three.len() == 3);
}
