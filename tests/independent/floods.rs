//! Floods with bounded memory (5.5)

use super::*;

const RSS_LIMIT_KIB: u64 = 150 * 1024;
/// How long a well-behaved client may wait for a GIVE while another connection floods the node.
const SERVE_LIMIT: Duration = Duration::from_secs(10);

/// A random address in 2001:db8::/32, the IPv6 documentation prefix (nobody's real host).
fn doc_addr(rng: &mut Rng) -> Ipv6Addr {
    let mut o = [0u8; 16];
    rng.fill(&mut o);
    o[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    Ipv6Addr::from(o)
}

type FloodSetup = (tempfile::TempDir, Node, Vec<(Hash, Vec<u8>)>, Conn, Conn, Rng);

/// A node seeding a 2-piece file, its pieces, a well-behaved connection and a flooding one, both
/// set up before any flood (outbound connections the node may make share the connection limit).
fn flood_setup(seed: u64) -> FloodSetup {
    let dir = tempfile::tempdir().unwrap();
    let (file, original) = write_file(dir.path(), "two.bin", PIECE + 4321, seed);
    let pieces: Vec<(Hash, Vec<u8>)> = original.chunks(PIECE).map(|d| (sha(d), d.to_vec())).collect();
    let node = Node::start(&file, &[]);
    let mut good = node.peer();
    good.fetch_expect(&pieces[0].0, &pieces[0].1);
    let flooder = node.peer();
    (dir, node, pieces, good, flooder, Rng::new(seed + 100))
}

/// Watches a node during a flood: samples its VmRSS every 10 ms, and has a well-behaved client
/// fetch a piece every 200 ms, each GIVE due within [`SERVE_LIMIT`].
struct Watch {
    stop: Arc<AtomicBool>,
    rss_before: u64,
    sampler: thread::JoinHandle<u64>,
    client: thread::JoinHandle<(Conn, usize, Duration, Option<String>)>,
}

struct WatchReport {
    rss_before: u64,
    rss_max: u64,
    rounds: usize,
    slowest: Duration,
    failure: Option<String>,
    good: Conn,
}

impl Watch {
    fn start(node: &Node, mut good: Conn, pieces: &[(Hash, Vec<u8>)]) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let pid = node.child.id();
        let sampler = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut most = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Some(rss) = try_rss_kib(pid) else { break };
                    most = most.max(rss);
                    thread::sleep(Duration::from_millis(10));
                }
                most
            })
        };
        let client = {
            let stop = stop.clone();
            let pieces = pieces.to_vec();
            thread::spawn(move || {
                good.rx.set_timeout(SERVE_LIMIT);
                let (mut rounds, mut slowest, mut failure) = (0, Duration::ZERO, None);
                while !stop.load(Ordering::Relaxed) {
                    let (h, data) = &pieces[rounds % pieces.len()];
                    let t = Instant::now();
                    if let Err(e) = good.try_fetch(h, data) {
                        failure = Some(format!("{e} (after {:?})", t.elapsed()));
                        break;
                    }
                    slowest = slowest.max(t.elapsed());
                    rounds += 1;
                    thread::sleep(Duration::from_millis(200));
                }
                good.rx.set_timeout(IO_TIMEOUT);
                (good, rounds, slowest, failure)
            })
        };
        Watch { stop, rss_before: node.rss_kib(), sampler, client }
    }

    fn finish(self) -> WatchReport {
        self.stop.store(true, Ordering::Relaxed);
        let rss_max = join(self.sampler);
        let (good, rounds, slowest, failure) = join(self.client);
        WatchReport { rss_before: self.rss_before, rss_max, rounds, slowest, failure, good }
    }
}

impl WatchReport {
    /// What went wrong during the flood, if anything.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.rss_max == 0 || self.rss_max >= RSS_LIMIT_KIB {
            problems.push(format!("the node's VmRSS reached {} KiB (limit {RSS_LIMIT_KIB} KiB)", self.rss_max));
        }
        if let Some(e) = &self.failure {
            problems.push(format!("the well-behaved client was not served within {SERVE_LIMIT:?}: {e}"));
        }
        if self.rounds == 0 && self.failure.is_none() {
            problems.push("the well-behaved client got no GIVE during the flood".to_owned());
        }
        problems
    }

    fn show(&self) -> String {
        format!(
            "VmRSS {} KiB before, at most {} KiB; the well-behaved client got {} GIVEs, slowest {:?}",
            self.rss_before, self.rss_max, self.rounds, self.slowest
        )
    }
}

/// (a) 3,000 PEERS frames of 50 random node ids and addresses each (7.5 MB), then an ASK whose
/// DONT_HAVE shows that every PEERS frame has been read.
#[test]
fn flood_of_peers_frames_keeps_memory_bounded_and_others_served() {
    let (_dir, mut node, pieces, good, mut flooder, mut rng) = flood_setup(8);
    let watch = Watch::start(&node, good, &pieces);

    let start = Instant::now();
    let probe = rng.hash();
    let writer = {
        let mut w = Tx {
            s: flooder.tx.s.try_clone().unwrap(),
            gcm: Gcm { key: flooder.tx.gcm.key.clone(), n: flooder.tx.gcm.n },
        };
        let mut rng = Rng::new(rng.next_u64());
        thread::spawn(move || -> io::Result<()> {
            let mut batch = Vec::with_capacity(100 * 2505);
            for i in 0..3_000 {
                let entries: Vec<Entry> = (0..50).map(|_| (rng.hash(), doc_addr(&mut rng), 9)).collect();
                batch.extend_from_slice(&peers(&entries));
                if i % 100 == 99 {
                    w.try_send(&batch)?;
                    batch.clear();
                }
            }
            w.try_send(&ask(&probe))?;
            Ok(())
        })
    };
    let digested = flooder.wait_for(&dont_have(&probe), start, IO_TIMEOUT);
    let report = watch.finish();
    eprintln!("PEERS flood: probe answered: {digested:?}; {}", report.show());
    let mut problems = report.problems();
    if let Err(e) = &digested {
        problems.push(format!(
            "the DONT_HAVE for an ASK sent after 3,000 PEERS frames did not come within {IO_TIMEOUT:?}: {e}"
        ));
    }
    assert!(problems.is_empty(), "PEERS flood:\n{}", problems.join("\n"));
    join(writer).expect("writing the PEERS flood");
    let mut good = report.good;
    good.fetch_expect(&pieces[1].0, &pieces[1].1);
    assert!(node.alive(), "the node exited");
}

/// (b) Unsolicited GIVEs of 1 KiB (right hashes): 1024 are tolerated, the next one closes the
/// connection with REJECT(5), without a ban (5.5).
#[test]
fn flood_of_unsolicited_gives_ends_with_reject_5_at_the_1025th() {
    let (_dir, mut node, pieces, good, mut flooder, mut rng) = flood_setup(9);
    let me = Identity::random();
    drop(flooder);
    flooder = node.peer_as(&me);
    let watch = Watch::start(&node, good, &pieces);

    let gives: Vec<u8> = (0..1024).flat_map(|_| give(&rng.bytes(1024))).collect();
    let mut w = flooder.tx.s.try_clone().unwrap();
    let wire = flooder.tx.seal_cut(&gives, MAX_PLAIN);
    let writer = thread::spawn(move || w.write_all(&wire));
    join(writer).unwrap();
    flooder.probe(&mut rng); // all 1024 read, the connection still open
    flooder.send(&give(&rng.bytes(1024)));
    let f = flooder.expect_reject_then_close(MISBEHAVING, "the 1025th unsolicited GIVE");
    let report = watch.finish();
    eprintln!("GIVE flood: {}; {}", f.show(), report.show());
    let problems = report.problems();
    assert!(problems.is_empty(), "GIVE flood:\n{}", problems.join("\n"));

    let mut good = report.good;
    good.fetch_expect(&pieces[1].0, &pieces[1].1);
    // No ban: the same identity is welcome again.
    drop(flooder);
    node.peer_again_as(&me).fetch_expect(&pieces[0].0, &pieces[0].1);
    assert!(node.alive(), "the node exited");
}

/// (c) 20,000 ASKs for random hashes without reading the replies for a while (the node must push
/// back, 5.5), then each answered by exactly one DONT_HAVE, in ASK order.
#[test]
fn flood_of_asks_keeps_memory_bounded_and_is_answered_in_order() {
    let (_dir, mut node, pieces, good, mut flooder, mut rng) = flood_setup(10);
    let watch = Watch::start(&node, good, &pieces);

    let start = Instant::now();
    let asked: Vec<Hash> = (0..20_000).map(|_| rng.hash()).collect();
    let asks: Vec<u8> = asked.iter().flat_map(ask).collect();
    let wire = flooder.tx.seal_cut(&asks, MAX_PLAIN);
    let mut w = flooder.tx.s.try_clone().unwrap();
    let writer = thread::spawn(move || w.write_all(&wire));
    thread::sleep(Duration::from_secs(1)); // deliberately not reading: back-pressure builds up
    for (i, h) in asked.iter().enumerate() {
        let f = flooder.recv();
        assert_eq!(f.wire(), dont_have(h), "ASK flood: answer {i}: {}", f.show());
    }
    join(writer).expect("writing the ASK flood");
    let took = start.elapsed();
    let report = watch.finish();
    eprintln!("ASK flood: 20,000 DONT_HAVEs after {took:?}; {}", report.show());
    let problems = report.problems();
    assert!(problems.is_empty(), "ASK flood:\n{}", problems.join("\n"));

    let mut good = report.good;
    good.fetch_expect(&pieces[1].0, &pieces[1].1);
    flooder.fetch_expect(&pieces[0].0, &pieces[0].1);
    assert!(node.alive(), "the node exited");
}
