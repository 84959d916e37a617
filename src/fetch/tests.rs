//! The download engine without a node: a fake [`Swarm`], connections with no
//! socket behind them (their frames land on an outbox), and answers delivered
//! by hand.

use super::schedule::MIN_DEPTH;
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
    // Known but no rate yet: MIN_DEPTH.
    for _ in 1..MIN_DEPTH {
        next_ask(&mut o1).await;
    }
    let mut outboxes = vec![o1];
    let mut left = MAX_INFLIGHT - MIN_DEPTH;
    for id in 2..=5 {
        let (_, mut o) = join(&h, id);
        h.events.send(DownloadEvent::Bitfield { conn: id, bits: full_bitfield(24) }).unwrap();
        let take = left.min(MIN_DEPTH);
        for _ in 0..take {
            next_ask(&mut o).await;
        }
        left -= take;
        outboxes.push(o);
    }
    // Peers fill their windows up to the 16-blob cap; after that nobody
    // gets more, and no peer more than its window.
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

mod clock;
mod faults;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bitfield_from_piece_0_that_stops_short_says_what_it_covers_and_is_no_violation() {
    let data = pieces(9, 10);
    let hashes: Vec<Hash> = data.iter().map(|d| Hash::of(d)).collect();
    let info = FileInfo::new("f", 8 * PIECE_SIZE + 10, hashes.clone());
    let h = start(info.root, Timeouts::default());
    let (c1, mut o1) = join(&h, 1);
    // Nine pieces take two bytes; one byte covers pieces 0-7 (the first range of several).
    // Sent before the lists, it is kept and read as soon as the pieces phase begins, so
    // no ASK goes out before the download knows what the peer holds.
    h.events.send(DownloadEvent::Bitfield { conn: 1, bits: Bytes::from_static(&[0xFF]) }).unwrap();
    give_meta(&c1, &mut o1, &info).await;
    for _ in 0..4 {
        let asked = next_ask(&mut o1).await;
        let i = hashes.iter().position(|x| *x == asked).unwrap();
        assert!(i < 8, "piece {i} asked of a peer whose range covers only pieces 0-7");
    }
    assert!(!c1.is_closed(), "a short range from piece 0 was taken for a violation");
    h.task.abort();
}
