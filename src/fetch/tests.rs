//! The download engine without a node: a fake [`Swarm`], connections with no
//! socket behind them (their frames land on an outbox), and answers delivered
//! by hand.

use super::*;
use crate::manifest::PIECE_SIZE;
use crate::peer::Outbox;
use crate::wire::Frame;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::{mpsc, watch};

const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct FakeSwarm {
    banned: Mutex<Vec<u64>>,
    rejected: AtomicU64,
    /// HAVEs broadcast: one per piece verified.
    haves: AtomicU64,
}

impl Swarm for FakeSwarm {
    fn connections(&self) -> Vec<Arc<PeerConn>> {
        Vec::new()
    }
    fn dial_error(&self, _: &SocketAddr) -> Option<String> {
        None
    }
    fn ban(&self, conn: &PeerConn, _: &str) {
        self.banned.lock().unwrap().push(conn.conn_id);
        conn.close(None);
    }
    fn broadcast_have(&self, _: Hash, _: u32) {
        self.haves.fetch_add(1, Ordering::Relaxed);
    }
    fn piece_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }
}

struct Harness {
    swarm: Arc<FakeSwarm>,
    events: mpsc::UnboundedSender<DownloadEvent>,
    task: tokio::task::JoinHandle<Result<FetchOutcome, FetchError>>,
    dir: tempfile::TempDir,
}

fn start(root: Hash, timeouts: Timeouts) -> Harness {
    start_with(root, timeouts, FetchOptions::default())
}

fn start_with(root: Hash, timeouts: Timeouts, opts: FetchOptions) -> Harness {
    let swarm = Arc::new(FakeSwarm::default());
    let dir = tempfile::tempdir().unwrap();
    let env = Env {
        swarm: swarm.clone(),
        store: Arc::new(Store::new()),
        data_dir: None,
        timeouts,
        shutdown: CancellationToken::new(),
    };
    let opts = FetchOptions { output: Some(dir.path().join("out")), ..opts };
    let (events, rx) = mpsc::unbounded_channel();
    let (progress, _) = watch::channel(Progress::default());
    let task = tokio::spawn(download(env, root, opts, progress, rx));
    Harness { swarm, events, task, dir }
}

/// A download actor's state with no task around it, for driving its steps by hand.
fn bare_download(
    root: Hash,
    phase: download::Phase,
) -> (download::Download, mpsc::UnboundedReceiver<crate::peer::Answer>) {
    let env = Env {
        swarm: Arc::new(FakeSwarm::default()),
        store: Arc::new(Store::new()),
        data_dir: None,
        timeouts: Timeouts::default(),
        shutdown: CancellationToken::new(),
    };
    let (route, answers) = mpsc::unbounded_channel();
    let now = tokio::time::Instant::now();
    let dl = download::Download {
        env,
        root,
        opts: FetchOptions::default(),
        progress: Arc::new(watch::channel(Progress::default()).0),
        route,
        peers: std::collections::HashMap::new(),
        phase,
        pending_bits: std::collections::HashMap::new(),
        pending_haves: Vec::new(),
        verifying: tokio::task::JoinSet::new(),
        rng: fastrand::Rng::with_seed(1),
        clock: download::Clock {
            started: now,
            ever_connected: true,
            last_peer: now,
            last_join: now,
            last_progress: now,
        },
        have_bytes: 0,
        resumed_bytes: 0,
        received_bytes: 0,
    };
    (dl, answers)
}

fn join(h: &Harness, id: u64) -> (Arc<PeerConn>, Outbox) {
    let (conn, outbox) = PeerConn::detached(id);
    h.events.send(DownloadEvent::PeerJoined(conn.clone())).unwrap();
    (conn, outbox)
}

/// The next ASK sent on a connection, skipping other frames.
async fn next_ask(out: &mut Outbox) -> Hash {
    loop {
        match tokio::time::timeout(PATIENCE, out.0.recv()).await.expect("no ASK in time") {
            Some(Frame::Ask(h)) => return h,
            Some(_) => {}
            None => panic!("connection gone"),
        }
    }
}

/// Frames sent so far, without waiting.
fn sent(out: &mut Outbox) -> Vec<Frame> {
    std::iter::from_fn(|| out.0.try_recv().ok()).collect()
}

fn pieces(n: usize, last: usize) -> Vec<Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..n)
        .map(|i| {
            let len = if i + 1 == n { last } else { PIECE_SIZE as usize };
            let mut v = vec![0u8; len];
            rng.fill(&mut v);
            v
        })
        .collect()
}

/// Hands over the manifest and hash lists of `info` through `conn`.
async fn give_meta(conn: &PeerConn, out: &mut Outbox, info: &FileInfo) {
    assert_eq!(next_ask(out).await, info.root, "the root is asked first");
    assert!(conn.deliver_give(info.root, info.manifest_blob.clone()));
    for (h, list) in info.manifest.lists.iter().zip(&info.lists) {
        assert_eq!(next_ask(out).await, *h);
        assert!(conn.deliver_give(*h, list.clone()));
    }
}

fn full_bitfield(n: usize) -> Bytes {
    crate::bitfield::to_bytes(bitvec::bitvec![u8, bitvec::order::Msb0; 1; n])
}

// On the paused clock: on a loaded machine the real one could let 0.1 s pass
// during the handshake of metadata, measure a rate and narrow the window.
#[tokio::test(start_paused = true)]
async fn asks_follow_each_peers_window_and_the_download_wide_cap() {
    let data = pieces(24, 1000);
    let hashes: Vec<Hash> = data.iter().map(|d| Hash::of(d)).collect();
    let size = 23 * PIECE_SIZE + 1000;
    let info = FileInfo::new("f", size, hashes);
    let h = start(info.root, Timeouts::default());
    let (c1, mut o1) = join(&h, 1);
    give_meta(&c1, &mut o1, &info).await;
    // Bitfield unknown: one ASK at a time.
    next_ask(&mut o1).await;
    h.events.send(DownloadEvent::Bitfield { conn: 1, bits: full_bitfield(24) }).unwrap();
    // Known but no rate yet: four.
    for _ in 0..3 {
        next_ask(&mut o1).await;
    }
    let mut outboxes = vec![o1];
    for id in 2..=5 {
        let (_, mut o) = join(&h, id);
        h.events.send(DownloadEvent::Bitfield { conn: id, bits: full_bitfield(24) }).unwrap();
        if id <= 4 {
            for _ in 0..4 {
                next_ask(&mut o).await;
            }
        }
        outboxes.push(o);
    }
    // Four peers with four ASKs each: the 16-blob cap. The fifth gets none,
    // and no peer gets a fifth.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra: usize = outboxes.iter_mut().map(|o| sent(o).iter().filter(|f| matches!(f, Frame::Ask(_))).count()).sum();
    assert_eq!(extra, 0, "more than {MAX_INFLIGHT} blobs in flight or a window overrun");
    h.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_of_the_wrong_length_is_a_lie_and_fails_the_fetch_when_nobody_else_has_it() {
    let mut data = pieces(3, 10);
    data[1].truncate(PIECE_SIZE as usize - 1000); // a middle piece shorter than its slot
    let hashes: Vec<Hash> = data.iter().map(|d| Hash::of(d)).collect();
    let info = FileInfo::new("f", 2 * PIECE_SIZE + 10, hashes.clone());
    let h = start(info.root, Timeouts::default());
    let (c1, mut o1) = join(&h, 1);
    give_meta(&c1, &mut o1, &info).await;
    h.events.send(DownloadEvent::Bitfield { conn: 1, bits: full_bitfield(3) }).unwrap();
    let responder = tokio::spawn(async move {
        while let Ok(Some(f)) = tokio::time::timeout(PATIENCE, o1.0.recv()).await {
            if let Frame::Ask(a) = f {
                let i = hashes.iter().position(|x| *x == a).unwrap();
                c1.deliver_give(a, Bytes::from(data[i].clone()));
            }
        }
    });
    let result = tokio::time::timeout(PATIENCE, h.task).await.expect("the fetch did not end").unwrap();
    match result {
        Err(FetchError::BadPiece { index: 1, .. }) => {}
        other => panic!("expected piece 1 to be refused, got {other:?}"),
    }
    assert_eq!(*h.swarm.banned.lock().unwrap(), vec![1], "the sender is banned");
    assert!(h.swarm.rejected.load(Ordering::Relaxed) >= 1);
    assert!(!h.dir.path().join("out").exists(), "nothing under the final name");
    responder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_asks_are_withdrawn_and_move_to_another_peer() {
    let data = pieces(2, 10);
    let hashes: Vec<Hash> = data.iter().map(|d| Hash::of(d)).collect();
    let info = FileInfo::new("f", PIECE_SIZE + 10, hashes);
    let timeouts = Timeouts { ask: Duration::from_secs(1), ..Timeouts::default() };
    let h = start(info.root, timeouts);
    let (c1, mut o1) = join(&h, 1);
    give_meta(&c1, &mut o1, &info).await;
    h.events.send(DownloadEvent::Bitfield { conn: 1, bits: full_bitfield(2) }).unwrap();
    let asked = [next_ask(&mut o1).await, next_ask(&mut o1).await];
    let (_c2, mut o2) = join(&h, 2);
    // The silent peer's ASKs are cancelled after the ASK time-out ...
    let mut cancelled = Vec::new();
    while cancelled.len() < 2 {
        match tokio::time::timeout(PATIENCE, o1.0.recv()).await.expect("no CANCEL in time") {
            Some(Frame::Cancel(x)) => cancelled.push(x),
            Some(_) => {}
            None => panic!("connection gone"),
        }
    }
    cancelled.sort();
    let mut expected = asked.to_vec();
    expected.sort();
    assert_eq!(cancelled, expected);
    // ... and asked of the other peer once it says what it has (on a loaded
    // machine its own ASKs may time out and be asked again: count distinct ones).
    h.events.send(DownloadEvent::Bitfield { conn: 2, bits: full_bitfield(2) }).unwrap();
    let mut moved = std::collections::BTreeSet::new();
    while moved.len() < 2 {
        moved.insert(next_ask(&mut o2).await);
    }
    assert_eq!(moved.into_iter().collect::<Vec<_>>(), expected);
    h.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dont_have_from_a_peer_without_a_bitfield_rules_out_only_that_blob() {
    let data = pieces(3, 10);
    let hashes: Vec<Hash> = data.iter().map(|d| Hash::of(d)).collect();
    let info = FileInfo::new("f", 2 * PIECE_SIZE + 10, hashes);
    let h = start(info.root, Timeouts::default());
    let (c1, mut o1) = join(&h, 1);
    give_meta(&c1, &mut o1, &info).await;
    let first = next_ask(&mut o1).await;
    c1.deliver_dont_have(first);
    let second = next_ask(&mut o1).await;
    assert_ne!(second, first, "the blob it lacks is not asked again");
    c1.deliver_dont_have(second);
    let third = next_ask(&mut o1).await;
    assert!(third != first && third != second, "and it is still asked for the others");
    h.task.abort();
}

// ---------------------------------------------------------------------------
// Scheduling rules on a paused clock (docs/PROTOCOL.md section 6, DESIGN.md
// "Downloads"). Tokio's test clock moves only when every task waits, and never
// while a blocking task (a piece being verified) runs, so "not before" and
// "within" below are exact whatever the load on the machine.

/// A file of `n` distinct pieces, the last one `last` bytes long.
struct File {
    data: Vec<Bytes>,
    info: FileInfo,
}

impl File {
    fn new(n: usize, last: usize) -> File {
        let data: Vec<Bytes> = pieces(n, last).into_iter().map(Bytes::from).collect();
        let hashes = data.iter().map(|d| Hash::of(d)).collect();
        let size = (n as u64 - 1) * PIECE_SIZE + last as u64;
        File { info: FileInfo::new("f", size, hashes), data }
    }

    fn index(&self, h: &Hash) -> usize {
        self.info.pieces.iter().position(|x| x == h).expect("not a piece of the file")
    }

    fn piece(&self, h: &Hash) -> Bytes {
        self.data[self.index(h)].clone()
    }

    /// A BITFIELD holding pieces `held`.
    fn bits(&self, held: impl IntoIterator<Item = usize>) -> Bytes {
        let mut bits = bitvec::bitvec![u8, bitvec::order::Msb0; 0; self.data.len()];
        for i in held {
            bits.set(i, true);
        }
        crate::bitfield::to_bytes(bits)
    }

    fn all(&self) -> Bytes {
        self.bits(0..self.data.len())
    }
}

/// One connected peer as a test sees it: every frame sent to it so far.
struct Peer {
    id: u64,
    conn: Arc<PeerConn>,
    out: Outbox,
    seen: Vec<Frame>,
}

impl Peer {
    fn join(h: &Harness, id: u64) -> Peer {
        let (conn, out) = join(h, id);
        Peer { id, conn, out, seen: Vec::new() }
    }

    /// Takes in the frames sent since the last look.
    fn pump(&mut self) -> &mut Self {
        self.seen.extend(sent(&mut self.out));
        self
    }

    fn asks(&mut self) -> Vec<Hash> {
        self.pump().seen.iter().filter_map(|f| if let Frame::Ask(h) = f { Some(*h) } else { None }).collect()
    }

    fn cancels(&mut self) -> Vec<Hash> {
        self.pump().seen.iter().filter_map(|f| if let Frame::Cancel(h) = f { Some(*h) } else { None }).collect()
    }

    fn bitfield(&self, h: &Harness, bits: Bytes) {
        h.events.send(DownloadEvent::Bitfield { conn: self.id, bits }).unwrap();
    }

    /// Answers every ASK with DONT_HAVE; after 100 answers (a download
    /// re-asking in a loop: the paused clock would never move) it stops answering.
    fn refuse(mut self) -> tokio::task::JoinHandle<Peer> {
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
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Polls `cond` every 10 ms (test clock) for up to `wait`; whether it came true.
async fn until(wait: Duration, mut cond: impl FnMut() -> bool) -> bool {
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
async fn outcome(h: &mut Harness, wait: Duration) -> (Result<FetchOutcome, FetchError>, Duration) {
    let t0 = tokio::time::Instant::now();
    let r = tokio::time::timeout(wait, &mut h.task).await.expect("the download did not end in time").unwrap();
    (r, t0.elapsed())
}

fn short_asks(ask: Duration) -> Timeouts {
    Timeouts { ask, ..Timeouts::default() }
}

#[tokio::test(start_paused = true)]
async fn a_peer_gets_one_ask_until_its_bitfield_then_four() {
    let f = File::new(12, 10);
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
    assert_eq!(p1.asks().len(), 4, "four once it said what it has, before its rate is known");
    assert_eq!(p2.asks().len(), 1);
    p2.bitfield(&h, f.all());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(p2.asks().len(), 4);
    let mut all = [p1.asks(), p2.asks()].concat();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 8, "nothing asked twice before the endgame");
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_peers_window_covers_a_tenth_of_a_second_at_its_measured_rate_from_2_to_32() {
    let (conn, _out) = PeerConn::detached(1);
    let mut p = schedule::PeerState::new(conn);
    assert_eq!(p.depth(), 1, "holdings unknown");
    p.has = Some(bitvec::bitvec![1; 8]);
    assert_eq!(p.depth(), 4, "rate not measured yet");
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
    assert_eq!(p.depth(), 2, "at least 2");
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
            assert!(outstanding.len() <= 4, "{} ASKs before its rate was measured", outstanding.len());
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
    assert!(widest > 4, "a peer delivering 1 MiB per 30 ms never got more than {widest} ASKs");
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
                assert!(a.len() - n <= 4, "more than 4 ASKs to a peer whose rate is unknown");
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
async fn a_silent_peers_asks_move_elsewhere_after_the_ask_timeout_and_a_second_strike_drops_it() {
    let f = File::new(20, 10);
    let h = start(f.info.root, short_asks(Duration::from_secs(2)));
    let mut p1 = Peer::join(&h, 1);
    give_meta(&p1.conn, &mut p1.out, &f.info).await;
    p1.bitfield(&h, f.all());
    settle().await;
    let first = p1.asks();
    assert_eq!(first.len(), 4);
    let t0 = tokio::time::Instant::now();
    // The other peer holds only what the first was asked for: nothing for it yet.
    let mut p2 = Peer::join(&h, 2);
    settle().await;
    p2.bitfield(&h, f.bits(first.iter().map(|a| f.index(a))));
    let moved = |p2: &mut Peer| p2.asks().iter().filter(|a| first.contains(a)).count();
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert!(p1.cancels().is_empty(), "withdrawn before the ASK time-out");
    assert_eq!(moved(&mut p2), 0);
    // Withdrawn after it ...
    assert!(until(Duration::from_secs(1), || p1.cancels().len() >= 4).await, "no CANCEL");
    assert!(t0.elapsed() >= Duration::from_secs(2) - Duration::from_millis(10));
    let mut cancelled = p1.cancels();
    cancelled.sort();
    let mut want = first.clone();
    want.sort();
    assert_eq!(cancelled, want);
    assert!(!p1.conn.is_closed(), "one strike does not close");
    // ... and asked of the other peer.
    assert!(until(Duration::from_secs(3), || moved(&mut p2) > 0).await, "the ASKs did not move");
    // A second time-out with no GIVE in between closes the connection and drops the peer.
    assert!(until(Duration::from_secs(3), || p1.conn.is_closed()).await, "not closed after two strikes");
    assert!(t0.elapsed() >= Duration::from_secs(4) - Duration::from_millis(10));
    let n = p1.asks().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(p1.asks().len(), n, "a dropped peer is asked nothing");
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_give_between_two_time_outs_forgives_the_first_strike() {
    let f = File::new(20, 10);
    let h = start(f.info.root, short_asks(Duration::from_secs(2)));
    let mut p = Peer::join(&h, 1);
    give_meta(&p.conn, &mut p.out, &f.info).await;
    p.bitfield(&h, f.all());
    settle().await;
    assert!(until(Duration::from_secs(3), || p.cancels().len() >= 4).await, "no first strike");
    // Asked again at once; it delivers one piece.
    assert!(until(Duration::from_secs(1), || p.asks().len() > 4).await);
    let a = *p.asks().last().unwrap();
    assert!(p.conn.deliver_give(a, f.piece(&a)));
    settle().await;
    let before = p.cancels().len();
    assert!(until(Duration::from_secs(3), || p.cancels().len() > before).await, "no second time-out");
    assert!(!p.conn.is_closed(), "the GIVE in between forgave the first strike");
    assert!(until(Duration::from_secs(3), || p.conn.is_closed()).await, "two strikes in a row did not close");
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn bytes_arriving_on_the_connection_keep_a_peers_asks() {
    let f = File::new(20, 10);
    let h = start(f.info.root, short_asks(Duration::from_secs(2)));
    let mut p = Peer::join(&h, 1);
    give_meta(&p.conn, &mut p.out, &f.info).await;
    p.bitfield(&h, f.all());
    settle().await;
    let asked = p.asks();
    assert_eq!(asked.len(), 4);
    // A slow GIVE: a few bytes every 100 ms, for three ASK time-outs.
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.conn.received.fetch_add(100, Ordering::Relaxed);
    }
    assert!(p.cancels().is_empty(), "ASKs withdrawn while bytes kept arriving");
    assert_eq!(p.asks(), asked);
    // Silence: withdrawn an ASK time-out after the last byte.
    let t = tokio::time::Instant::now();
    assert!(until(Duration::from_secs(3), || p.cancels().len() >= 4).await, "never withdrawn");
    assert!(t.elapsed() >= Duration::from_millis(1900), "withdrawn {:?} after the last byte", t.elapsed());
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_piece_that_fails_its_hash_bans_the_sender_and_is_asked_elsewhere() {
    let f = File::new(12, 10);
    let h = start(f.info.root, short_asks(Duration::from_secs(2)));
    let mut p1 = Peer::join(&h, 1);
    give_meta(&p1.conn, &mut p1.out, &f.info).await;
    p1.bitfield(&h, f.all());
    settle().await;
    let x = p1.asks()[0];
    // The other peer holds only x, which is asked of p1: nothing for it yet.
    let mut p2 = Peer::join(&h, 2);
    settle().await;
    p2.bitfield(&h, f.bits([f.index(&x)]));
    settle().await;
    assert!(!p2.asks().contains(&x));
    let mut bad = f.piece(&x).to_vec();
    bad[0] ^= 1;
    assert!(p1.conn.deliver_give(x, Bytes::from(bad)));
    settle().await;
    assert_eq!(*h.swarm.banned.lock().unwrap(), vec![1], "the sender is banned");
    assert_eq!(h.swarm.rejected.load(Ordering::Relaxed), 1, "and the piece counted as rejected");
    assert!(p1.conn.is_closed());
    assert!(until(Duration::from_secs(1), || p2.asks().contains(&x)).await, "not asked elsewhere");
    // The banned peer is dropped: nothing more is sent to it, not even when
    // its last ASKs would have timed out.
    let n = p1.pump().seen.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(p1.pump().seen.len(), n, "{:?}", &p1.seen[n..]);
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_manifest_or_hash_list_that_fails_its_hash_bans_the_sender() {
    let f = File::new(12, 10);
    let root = f.info.root;
    let list = f.info.manifest.lists[0];
    let h = start(root, Timeouts::default());
    let mut p: Vec<Peer> = (1..=3).map(|id| Peer::join(&h, id)).collect();
    settle().await;
    let mut bad = f.info.manifest_blob.to_vec();
    bad[0] ^= 1;
    assert!(p[0].conn.deliver_give(root, Bytes::from(bad)));
    settle().await;
    assert_eq!(*h.swarm.banned.lock().unwrap(), vec![1]);
    assert!(p[0].conn.is_closed());
    // The good manifest from the second; the list goes to it (the third still owes the root).
    assert!(p[1].conn.deliver_give(root, f.info.manifest_blob.clone()));
    settle().await;
    assert_eq!(p[1].asks(), vec![root, list]);
    let mut bad = f.info.lists[0].to_vec();
    bad[0] ^= 1;
    assert!(p[1].conn.deliver_give(list, Bytes::from(bad)));
    settle().await;
    assert_eq!(*h.swarm.banned.lock().unwrap(), vec![1, 2]);
    assert_eq!(p[2].asks(), vec![root, list], "the list is asked elsewhere");
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn without_a_peer_for_give_up_after_the_download_stalls() {
    let f = File::new(2, 10);
    // give_up_after outlasts the 3 s grace of "no peer holds it", which needs a peer.
    let opts = FetchOptions {
        connect_timeout: Duration::from_secs(1),
        give_up_after: Duration::from_secs(5),
        ..FetchOptions::default()
    };
    let mut h = start_with(f.info.root, Timeouts::default(), opts);
    let _p = Peer::join(&h, 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.events.send(DownloadEvent::PeerLeft(1)).unwrap();
    let (result, waited) = outcome(&mut h, Duration::from_secs(10)).await;
    match result {
        Err(FetchError::Stalled(why)) => assert!(why.contains("no peer reachable"), "{why}"),
        other => panic!("expected a stall, got {other:?}"),
    }
    assert!(waited > Duration::from_secs(5) && waited <= Duration::from_millis(5500), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn without_any_connection_the_download_fails_after_the_connect_timeout() {
    let f = File::new(2, 10);
    let addr: SocketAddr = "[fd00::9]:9000".parse().unwrap();
    let opts = FetchOptions {
        peers: vec![addr],
        connect_timeout: Duration::from_secs(1),
        give_up_after: Duration::from_secs(10),
        ..FetchOptions::default()
    };
    let mut h = start_with(f.info.root, Timeouts::default(), opts);
    let (result, waited) = outcome(&mut h, Duration::from_secs(20)).await;
    match result {
        Err(FetchError::Unreachable(why)) => assert!(why.contains("[fd00::9]:9000: no answer"), "{why}"),
        other => panic!("expected unreachable, got {other:?}"),
    }
    assert!(waited > Duration::from_secs(1) && waited <= Duration::from_millis(1500), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn connected_peers_that_make_no_progress_for_give_up_after_stall_the_download() {
    let f = File::new(12, 10);
    let opts = FetchOptions { give_up_after: Duration::from_secs(2), ..FetchOptions::default() };
    let mut h = start_with(f.info.root, Timeouts::default(), opts);
    let t0 = tokio::time::Instant::now();
    let mut p = Peer::join(&h, 1);
    // The hash lists completing is progress ...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    give_meta(&p.conn, &mut p.out, &f.info).await;
    p.bitfield(&h, f.all());
    // ... and so is a verified piece.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let a = p.asks()[0];
    assert!(p.conn.deliver_give(a, f.piece(&a)));
    let (result, _) = outcome(&mut h, Duration::from_secs(10)).await;
    match result {
        Err(FetchError::Stalled(why)) => assert!(why.contains("no progress"), "{why}"),
        other => panic!("expected a stall, got {other:?}"),
    }
    let waited = t0.elapsed();
    assert!(waited > Duration::from_secs(5) && waited <= Duration::from_millis(5500), "{waited:?}");
    // A download that ends withdraws what it still asked for.
    let mut open: Vec<Hash> = p.asks().into_iter().filter(|x| *x != a).collect();
    let mut cancelled = p.cancels();
    open.sort();
    cancelled.sort();
    assert!(!open.is_empty());
    assert_eq!(cancelled, open);
}

#[tokio::test(start_paused = true)]
async fn an_asks_time_out_counts_from_when_it_went_out() {
    let f = File::new(12, 10);
    let h = start(f.info.root, short_asks(Duration::from_secs(2)));
    let mut p = Peer::join(&h, 1);
    p.bitfield(&h, f.bits(std::iter::empty()));
    give_meta(&p.conn, &mut p.out, &f.info).await;
    // Nothing to ask it for a while (longer than the ASK time-out) ...
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(p.asks().is_empty());
    // ... then it has a piece.
    h.events.send(DownloadEvent::Have { conn: 1, index: 3 }).unwrap();
    settle().await;
    assert_eq!(p.asks(), vec![f.info.pieces[3]]);
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert!(p.cancels().is_empty(), "withdrawn before its own time-out");
    assert!(until(Duration::from_secs(1), || !p.cancels().is_empty()).await, "never withdrawn");
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_lacks_the_file_is_asked_for_no_piece_until_it_shows_some() {
    let f = File::new(12, 10);
    let root = f.info.root;
    let h = start(root, Timeouts::default());
    let mut p1 = Peer::join(&h, 1);
    let mut p2 = Peer::join(&h, 2);
    settle().await;
    p2.conn.deliver_dont_have(root);
    // p1 holds everything but piece 3.
    p1.bitfield(&h, f.bits((0..12).filter(|&i| i != 3)));
    give_meta(&p1.conn, &mut p1.out, &f.info).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(p2.asks(), vec![root], "asked for pieces though it lacks the file");
    h.events.send(DownloadEvent::Have { conn: 2, index: 3 }).unwrap();
    settle().await;
    assert_eq!(p2.asks(), vec![root, f.info.pieces[3]]);
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_leaves_hands_its_asks_back() {
    let f = File::new(20, 10);
    let h = start(f.info.root, Timeouts::default());
    let mut p1 = Peer::join(&h, 1);
    p1.bitfield(&h, f.all());
    give_meta(&p1.conn, &mut p1.out, &f.info).await;
    settle().await;
    let first = p1.asks();
    assert_eq!(first.len(), 4);
    // The other peer holds only what the first was asked for.
    let mut p2 = Peer::join(&h, 2);
    settle().await;
    p2.bitfield(&h, f.bits(first.iter().map(|a| f.index(a))));
    settle().await;
    let moved = |p2: &mut Peer| p2.asks().iter().filter(|a| first.contains(a)).count();
    assert_eq!(moved(&mut p2), 0);
    h.events.send(DownloadEvent::PeerLeft(1)).unwrap();
    settle().await;
    assert!(moved(&mut p2) > 0, "what the peer that left was asked for is asked elsewhere");
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_dont_have_clears_the_blob_from_the_peers_bitfield() {
    let f = File::new(12, 10);
    let mut h = start(f.info.root, Timeouts::default());
    let mut p1 = Peer::join(&h, 1);
    p1.bitfield(&h, f.all());
    give_meta(&p1.conn, &mut p1.out, &f.info).await;
    settle().await;
    // It lacks x after all; it delivers everything else.
    let x = p1.asks()[0];
    let mut answered = 0;
    while h.swarm.haves.load(Ordering::Relaxed) < 11 {
        let asks = p1.asks();
        for a in &asks[answered..] {
            if *a == x {
                p1.conn.deliver_dont_have(x);
            } else {
                p1.conn.deliver_give(*a, f.piece(a));
            }
        }
        answered = asks.len();
        settle().await;
        assert!(answered <= 12, "{answered} ASKs");
        assert!(!h.task.is_finished(), "the download ended");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(p1.asks().iter().filter(|a| **a == x).count(), 1, "asked again for a piece it said it lacks");
    let mut p2 = Peer::join(&h, 2);
    settle().await;
    assert_eq!(p2.asks(), vec![x]);
    p2.conn.deliver_give(x, f.piece(&x));
    outcome(&mut h, PATIENCE).await.0.expect("the download failed");
}

#[tokio::test(start_paused = true)]
async fn a_piece_a_peer_lacks_is_asked_of_another_at_once() {
    let f = File::new(12, 10);
    let h = start(f.info.root, Timeouts::default());
    let mut p1 = Peer::join(&h, 1);
    p1.bitfield(&h, f.all());
    give_meta(&p1.conn, &mut p1.out, &f.info).await;
    settle().await;
    let x = p1.asks()[0];
    // The other peer holds only x, which is asked of p1: nothing for it yet.
    let mut p2 = Peer::join(&h, 2);
    settle().await;
    p2.bitfield(&h, f.bits([f.index(&x)]));
    settle().await;
    assert!(!p2.asks().contains(&x));
    p1.conn.deliver_dont_have(x);
    settle().await;
    assert!(p2.asks().contains(&x), "not asked of the peer that has it");
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_verified_blob_is_cancelled_at_the_other_peer_asked_for_it() {
    let f = File::new(3, 10);
    let mut h = start(f.info.root, Timeouts::default());
    let mut p1 = Peer::join(&h, 1);
    p1.bitfield(&h, f.all());
    give_meta(&p1.conn, &mut p1.out, &f.info).await;
    settle().await;
    assert_eq!(p1.asks().len(), 3);
    // Every blob is asked for: the endgame asks the second peer too.
    let mut p2 = Peer::join(&h, 2);
    p2.bitfield(&h, f.all());
    settle().await;
    assert_eq!(p2.asks().len(), 3, "at most 2 outstanding ASKs per blob in the endgame");
    let a = p1.asks()[0];
    p1.conn.deliver_give(a, f.piece(&a));
    settle().await;
    assert_eq!(p2.cancels(), vec![a], "verified: withdrawn from the other peer");
    assert!(p1.cancels().is_empty());
    for b in p1.asks().into_iter().skip(1) {
        p1.conn.deliver_give(b, f.piece(&b));
    }
    outcome(&mut h, PATIENCE).await.0.expect("the download failed");
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_leaves_while_its_bad_piece_is_verified_is_banned_all_the_same() {
    let f = File::new(12, 10);
    let h = start(f.info.root, Timeouts::default());
    let mut p1 = Peer::join(&h, 1);
    p1.bitfield(&h, f.all());
    give_meta(&p1.conn, &mut p1.out, &f.info).await;
    settle().await;
    let x = p1.asks()[0];
    let mut bad = f.piece(&x).to_vec();
    bad[0] ^= 1;
    assert!(p1.conn.deliver_give(x, Bytes::from(bad)));
    // The download takes the GIVE in and starts hashing it; the peer leaves meanwhile.
    tokio::task::yield_now().await;
    h.events.send(DownloadEvent::PeerLeft(1)).unwrap();
    settle().await;
    assert_eq!(*h.swarm.banned.lock().unwrap(), vec![1], "a liar escapes its ban by leaving");
    assert_eq!(h.swarm.rejected.load(Ordering::Relaxed), 1);
    h.task.abort();
}
