//! Scheduling rules on a paused clock.

use super::*;

// ---------------------------------------------------------------------------
// Scheduling rules on a paused clock (docs/PROTOCOL.md section 7, DESIGN.md
// "Downloads"). Tokio's test clock moves only when every task waits, and never
// while a blocking task (a piece being verified) runs, so "not before" and
// "within" below are exact whatever the load on the machine.

/// A file of `n` distinct pieces, the last one `last` bytes long.
pub(super) struct File {
    pub(super) data: Vec<Bytes>,
    pub(super) info: FileInfo,
}

impl File {
    pub(super) fn new(n: usize, last: usize) -> File {
        let data: Vec<Bytes> = pieces(n, last).into_iter().map(Bytes::from).collect();
        let hashes = data.iter().map(|d| Hash::of(d)).collect();
        let size = (n as u64 - 1) * PIECE_SIZE + last as u64;
        File { info: FileInfo::new("f", size, hashes), data }
    }

    pub(super) fn index(&self, h: &Hash) -> usize {
        self.info.pieces.iter().position(|x| x == h).expect("not a piece of the file")
    }

    pub(super) fn piece(&self, h: &Hash) -> Bytes {
        self.data[self.index(h)].clone()
    }

    /// A BITFIELD holding pieces `held`.
    pub(super) fn bits(&self, held: impl IntoIterator<Item = usize>) -> Bytes {
        let mut bits = bitvec::bitvec![u8, bitvec::order::Msb0; 0; self.data.len()];
        for i in held {
            bits.set(i, true);
        }
        crate::bitfield::to_bytes(bits)
    }

    pub(super) fn all(&self) -> Bytes {
        self.bits(0..self.data.len())
    }
}

/// One connected peer as a test sees it: every frame sent to it so far.
pub(super) struct Peer {
    pub(super) id: u64,
    pub(super) conn: Arc<PeerConn>,
    pub(super) out: Outbox,
    pub(super) seen: Vec<Frame>,
}

impl Peer {
    /// A peer that holds the whole file and has handed over the manifest and
    /// hash lists, once the download has settled.
    pub(super) async fn seeding(h: &Harness, id: u64, f: &File) -> Peer {
        let mut p = Peer::join(h, id);
        p.bitfield(h, f.all());
        give_meta(&p.conn, &mut p.out, &f.info).await;
        settle().await;
        p
    }

    pub(super) fn join(h: &Harness, id: u64) -> Peer {
        let (conn, out) = join(h, id);
        Peer { id, conn, out, seen: Vec::new() }
    }

    /// Takes in the frames sent since the last look.
    pub(super) fn pump(&mut self) -> &mut Self {
        self.seen.extend(sent(&mut self.out));
        self
    }

    pub(super) fn asks(&mut self) -> Vec<Hash> {
        self.pump().seen.iter().filter_map(|f| if let Frame::Ask(h) = f { Some(*h) } else { None }).collect()
    }

    pub(super) fn cancels(&mut self) -> Vec<Hash> {
        self.pump().seen.iter().filter_map(|f| if let Frame::Cancel(h) = f { Some(*h) } else { None }).collect()
    }

    pub(super) fn bitfield(&self, h: &Harness, bits: Bytes) {
        h.events.send(DownloadEvent::Bitfield { conn: self.id, bits }).unwrap();
    }

    /// Answers every ASK with DONT_HAVE; after 100 answers (a download
    /// re-asking in a loop: the paused clock would never move) it stops answering.
    pub(super) fn refuse(mut self) -> tokio::task::JoinHandle<Peer> {
        tokio::spawn(async move {
            let mut answers = 0;
            while let Some(f) = self.out.0.recv().await {
                if let Frame::Ask(a) = f {
                    answers += 1;
                    if answers <= 100 {
                        self.conn.deliver_dont_have(a);
                    }
                }
                self.seen.push(f);
            }
            self
        })
    }
}

/// Lets every task run, and every piece being verified finish, moving the clock by 1 ms only.
pub(super) async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Polls `cond` every 10 ms (test clock) for up to `wait`; whether it came true.
pub(super) async fn until(wait: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How the download ended, within `wait` (test clock), and when.
pub(super) async fn outcome(h: &mut Harness, wait: Duration) -> (Result<FetchOutcome, FetchError>, Duration) {
    let t0 = tokio::time::Instant::now();
    let r = tokio::time::timeout(wait, &mut h.task).await.expect("the download did not end in time").unwrap();
    (r, t0.elapsed())
}

pub(super) fn short_asks(ask: Duration) -> Timeouts {
    Timeouts { ask, ..Timeouts::default() }
}

#[tokio::test(start_paused = true)]
async fn a_peer_gets_one_ask_until_its_bitfield_then_min_depth() {
    let f = File::new(20, 10);
    let h = start(f.info.root, Timeouts::default());
    let mut p1 = Peer::join(&h, 1);
    give_meta(&p1.conn, &mut p1.out, &f.info).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(p1.asks().len(), 1, "one ASK at a time while its holdings are unknown");
    let mut p2 = Peer::join(&h, 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(p2.asks().len(), 1, "the same for a peer that joins later");
    p1.bitfield(&h, f.all());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(p1.asks().len(), MIN_DEPTH, "MIN_DEPTH once it said what it has, before its rate is known");
    assert_eq!(p2.asks().len(), 1);
    p2.bitfield(&h, f.all());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(p2.asks().len(), MIN_DEPTH);
    let mut all = [p1.asks(), p2.asks()].concat();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 2 * MIN_DEPTH, "nothing asked twice before the endgame");
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_peers_window_covers_a_tenth_of_a_second_at_its_measured_rate_from_min_depth_to_32() {
    let (conn, _out) = PeerConn::detached(1);
    let mut p = schedule::PeerState::new(conn);
    assert_eq!(p.depth(), 1, "holdings unknown");
    p.has = Some(bitvec::bitvec![1; 8]);
    assert_eq!(p.depth(), MIN_DEPTH, "rate not measured yet");
    let h = Hash::of(b"x");
    // 25 MiB every 0.2 s: 125 MiB/s, 12.5 MiB per 0.1 s.
    for _ in 0..5 {
        tokio::time::advance(Duration::from_millis(200)).await;
        p.answered(&h, 25 * PIECE_SIZE);
        assert_eq!(p.depth(), 2 + 12);
    }
    tokio::time::advance(Duration::from_millis(200)).await;
    p.answered(&h, 100_000 * PIECE_SIZE);
    assert_eq!(p.depth(), 32, "at most 32");
    for _ in 0..40 {
        tokio::time::advance(Duration::from_secs(1)).await;
        p.answered(&h, 0);
    }
    assert_eq!(p.depth(), MIN_DEPTH, "at least MIN_DEPTH");
}

#[tokio::test(start_paused = true)]
async fn a_fast_peers_window_grows_with_its_rate() {
    let f = File::new(40, 10);
    let mut h = start(f.info.root, Timeouts::default());
    let mut p = Peer::join(&h, 1);
    p.bitfield(&h, f.all());
    give_meta(&p.conn, &mut p.out, &f.info).await;
    let t0 = tokio::time::Instant::now();
    let (mut answered, mut widest) = (0, 0);
    while h.swarm.haves.load(Ordering::Relaxed) < 40 {
        settle().await;
        let asks = p.asks();
        let outstanding = &asks[answered..];
        if t0.elapsed() < Duration::from_millis(100) {
            assert!(outstanding.len() <= MIN_DEPTH, "{} ASKs before its rate was measured", outstanding.len());
        }
        assert!(outstanding.len() <= 16);
        widest = widest.max(outstanding.len());
        for a in outstanding {
            p.conn.deliver_give(*a, f.piece(a));
        }
        answered = asks.len();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(t0.elapsed() < Duration::from_secs(20), "the download does not progress");
    }
    assert!(widest > MIN_DEPTH, "a peer delivering 1 MiB per 30 ms never got more than {widest} ASKs");
    outcome(&mut h, PATIENCE).await.0.expect("the download failed");
}

#[tokio::test(start_paused = true)]
async fn at_most_16_blobs_are_asked_for_or_being_verified_at_once() {
    let f = File::new(40, 10);
    let mut h = start(f.info.root, Timeouts::default());
    let mut p1 = Peer::join(&h, 1);
    give_meta(&p1.conn, &mut p1.out, &f.info).await;
    let mut peers = vec![p1];
    peers.extend((2..=5).map(|id| Peer::join(&h, id)));
    for p in &peers {
        p.bitfield(&h, f.all());
    }
    let mut answered = [0usize; 5];
    let t0 = tokio::time::Instant::now();
    let check = |peers: &mut [Peer], answered: &[usize; 5], h: &Harness| {
        let asks: Vec<Vec<Hash>> = peers.iter_mut().map(Peer::asks).collect();
        let distinct: std::collections::HashSet<&Hash> = asks.iter().flatten().collect();
        // Before the endgame every ASK is for a blob not asked before, so
        // ASKs sent minus pieces verified is what is asked for or being verified.
        if distinct.len() < 40 {
            let total: usize = asks.iter().map(Vec::len).sum();
            let haves = h.swarm.haves.load(Ordering::Relaxed) as usize;
            assert!(total - haves <= 16, "{total} ASKs sent, {haves} pieces verified");
            for (a, n) in asks.iter().zip(answered) {
                assert!(a.len() - n <= MIN_DEPTH, "more than MIN_DEPTH ASKs to a peer whose rate is unknown");
            }
        }
        asks
    };
    loop {
        settle().await;
        let asks = check(&mut peers, &answered, &h);
        if h.swarm.haves.load(Ordering::Relaxed) == 40 {
            break;
        }
        for (i, p) in peers.iter().enumerate() {
            for a in &asks[i][answered[i]..] {
                p.conn.deliver_give(*a, f.piece(a));
            }
            answered[i] = asks[i].len();
        }
        // The download takes the answers in and may ask again while the
        // pieces are still being verified: those count against the cap too.
        tokio::task::yield_now().await;
        check(&mut peers, &answered, &h);
        assert!(t0.elapsed() < Duration::from_secs(1), "the download does not progress");
    }
    let (result, _) = outcome(&mut h, PATIENCE).await;
    result.expect("the download failed");
}

#[tokio::test(start_paused = true)]
async fn the_manifest_is_asked_of_every_peer_and_again_of_those_that_lacked_it() {
    let f = File::new(2, 10);
    let h = start(f.info.root, Timeouts::default());
    let root = f.info.root;
    let mut p: Vec<Peer> = (1..=3).map(|id| Peer::join(&h, id)).collect();
    settle().await;
    for q in p.iter_mut() {
        assert_eq!(q.asks(), vec![root], "every peer is asked for the root");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for q in p.iter_mut() {
        assert_eq!(q.asks().len(), 1, "an outstanding ASK is not repeated");
    }
    // A DONT_HAVE: asked again 500 ms after it, not before.
    p[1].conn.deliver_dont_have(root);
    let t = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(480)).await;
    assert_eq!(p[1].asks().len(), 1, "asked again within 500 ms");
    assert!(until(Duration::from_secs(1), || p[1].asks().len() == 2).await, "never asked again");
    assert!(t.elapsed() <= Duration::from_millis(800));
    // Any byte received from it postpones that.
    p[2].conn.deliver_dont_have(root);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        p[2].conn.received.fetch_add(10, Ordering::Relaxed);
    }
    assert_eq!(p[2].asks().len(), 1, "asked again while bytes were arriving");
    let t = tokio::time::Instant::now();
    assert!(until(Duration::from_secs(2), || p[2].asks().len() == 2).await, "never asked again");
    assert!(t.elapsed() >= Duration::from_millis(300));
    // A BITFIELD with a bit set, or a HAVE, clears the mark at once; an empty BITFIELD does not.
    p[1].conn.deliver_dont_have(root);
    p[2].conn.deliver_dont_have(root);
    settle().await;
    p[1].bitfield(&h, f.bits([1]));
    p[2].bitfield(&h, f.bits(std::iter::empty()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(p[1].asks().len(), 3, "a peer holding pieces has the manifest");
    assert_eq!(p[2].asks().len(), 2, "an empty bitfield says nothing");
    h.events.send(DownloadEvent::Have { conn: 3, index: 0 }).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(p[2].asks().len(), 3);
    // A peer that joins later is asked too.
    let mut late = Peer::join(&h, 4);
    settle().await;
    assert_eq!(late.asks(), vec![root]);
    assert!(p[0].asks().len() == 1 && p[0].cancels().is_empty());
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn no_peer_holds_it_once_every_peer_lacked_the_root_for_3_s_after_the_last_join() {
    let f = File::new(2, 10);
    let mut h = start(f.info.root, Timeouts::default());
    let t0 = tokio::time::Instant::now();
    let _r = [Peer::join(&h, 1).refuse(), Peer::join(&h, 2).refuse()];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _r3 = Peer::join(&h, 3).refuse();
    let (result, _) = outcome(&mut h, Duration::from_secs(10)).await;
    assert!(matches!(result, Err(FetchError::NotFound(r)) if r == f.info.root), "{result:?}");
    let waited = t0.elapsed();
    assert!(waited > Duration::from_secs(5) && waited <= Duration::from_millis(5500), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_has_not_answered_for_the_root_keeps_the_download_going() {
    let f = File::new(2, 10);
    let mut h = start(f.info.root, Timeouts::default());
    let _r = Peer::join(&h, 1).refuse();
    let mut silent = Peer::join(&h, 2);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!h.task.is_finished(), "gave up while a peer had not answered");
    assert_eq!(silent.asks(), vec![f.info.root]);
    silent.conn.deliver_dont_have(f.info.root);
    let (result, waited) = outcome(&mut h, Duration::from_secs(2)).await;
    assert!(matches!(result, Err(FetchError::NotFound(_))), "{result:?}");
    assert!(waited <= Duration::from_millis(500));
}

#[tokio::test]
async fn each_missing_hash_list_is_asked_of_one_peer_the_least_busy_one() {
    let dir = tempfile::tempdir().unwrap();
    let part_path = dir.path().join("f.part");
    let part = Arc::new(crate::store::PartFile::open(&part_path, 1).unwrap());
    let lists: Vec<Hash> = (0..2u8).map(|i| Hash::of(&[i])).collect();
    let size = 2 * crate::manifest::HASHES_PER_LIST * PIECE_SIZE;
    let manifest = crate::manifest::Manifest { name: "f".into(), size, lists: lists.clone() };
    let phase = download::Phase::Lists(download::Lists {
        blob: Bytes::new(),
        manifest,
        lists: vec![None; 2],
        out: output::Output::for_tests(part_path, part),
        claimed: None,
    });
    let (mut dl, _answers) = bare_download(Hash::of(b"root"), phase);
    let mut peers: Vec<(Arc<PeerConn>, Outbox)> = (1..=4).map(PeerConn::detached).collect();
    for (conn, _) in &peers {
        let mut p = schedule::PeerState::new(conn.clone());
        // The fourth answered DONT_HAVE for the root; the others owe one answer
        // each, so the fourth is the least busy.
        p.lacks_root = conn.conn_id == 4;
        if !p.lacks_root {
            p.asked.insert(Hash::of(b"an earlier ASK"));
        }
        dl.peers.insert(conn.conn_id, p);
    }
    let asked = |peers: &mut Vec<(Arc<PeerConn>, Outbox)>| -> Vec<Vec<Hash>> {
        peers
            .iter_mut()
            .map(|(_, o)| {
                sent(o).into_iter().filter_map(|f| if let Frame::Ask(h) = f { Some(h) } else { None }).collect()
            })
            .collect()
    };
    dl.schedule();
    let a = asked(&mut peers);
    assert!(a[3].is_empty(), "a peer that lacks the file is not asked");
    assert!(a.iter().all(|x| x.len() <= 1), "one list per peer: {a:?}");
    let mut all = a.concat();
    all.sort();
    let mut want = lists.clone();
    want.sort();
    assert_eq!(all, want, "each list asked once");
    dl.schedule();
    assert!(asked(&mut peers).iter().all(Vec::is_empty), "an outstanding list is not asked again");
    // The peer asked for list 0 lacks it: list 0 goes to the idle peer, not to the busy one.
    let holder = a.iter().position(|x| x == &vec![lists[0]]).unwrap();
    let idle = (0..3).find(|&i| a[i].is_empty()).unwrap();
    dl.on_dont_have(holder as u64 + 1, lists[0]);
    dl.schedule();
    let b = asked(&mut peers);
    assert_eq!(b[idle], vec![lists[0]], "{b:?}");
    assert_eq!(b.concat().len(), 1);
    // Once it arrived, list 0 is never asked again, even of a peer that lacks list 1.
    if let download::Phase::Lists(l) = &mut dl.phase {
        l.lists[0] = Some(Bytes::new());
    }
    dl.peers.get_mut(&(idle as u64 + 1)).unwrap().answered(&lists[0], 0);
    let other = (0..3).find(|&i| a[i] == vec![lists[1]]).unwrap();
    dl.on_dont_have(other as u64 + 1, lists[1]);
    dl.schedule();
    let c = asked(&mut peers);
    assert_eq!(c[idle], vec![lists[1]], "{c:?}");
    assert_eq!(c.concat().len(), 1, "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn a_have_from_a_partial_peer_withdraws_the_seeds_ask_for_that_piece() {
    let f = File::new(20, 10);
    let h = start(f.info.root, Timeouts::default());
    let mut seed = Peer::seeding(&h, 1, &f).await;
    let asked = seed.asks();
    assert_eq!(asked.len(), MIN_DEPTH);
    let mut partial = Peer::join(&h, 2);
    settle().await;
    // Before its bitfield it may be asked for one piece; not one the seed was asked for.
    let early = partial.asks();
    assert!(early.len() <= 1 && !early.iter().any(|a| asked.contains(a)));
    partial.bitfield(&h, f.bits([]));
    settle().await;
    assert_eq!(partial.asks(), early, "it holds nothing");
    // The partial peer got one of the pieces the seed was asked for.
    h.events.send(DownloadEvent::Have { conn: 2, index: f.index(&asked[0]) as u32 }).unwrap();
    settle().await;
    assert_eq!(seed.cancels(), vec![asked[0]], "the seed's ASK for it is withdrawn");
    assert_eq!(partial.asks().last(), Some(&asked[0]), "and the piece asked of the partial peer");
    // A seed's HAVE withdraws nothing.
    let seed2 = Peer::join(&h, 3);
    seed2.bitfield(&h, f.all());
    h.events.send(DownloadEvent::Have { conn: 3, index: f.index(&asked[1]) as u32 }).unwrap();
    settle().await;
    assert_eq!(seed.cancels(), vec![asked[0]]);
    h.task.abort();
}
