//! The node as initiator: peer exchange, duplicates across directions, pins (5.1-5.4)

use super::*;

fn entry(id: &Hash, port: u16) -> Entry {
    (*id, Ipv6Addr::LOCALHOST, port)
}

/// An identity whose node id compares with `than` as `order` (node ids compared bytewise, 5.2).
fn identity_ordered(than: &Hash, order: std::cmp::Ordering) -> Identity {
    loop {
        let me = Identity::random();
        if me.id().cmp(than) == order {
            return me;
        }
    }
}

fn peer_arg(me: &Identity, port: u16) -> String {
    format!("{}@[::1]:{port}", hex(&me.id()))
}

#[test]
fn peer_exchange_and_the_duplicate_rule_across_directions() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(30);
    // The node's identity in the middle of the id space, one of ours below it, one above.
    let (node_secret, node_id) = loop {
        let secret = random32();
        let id = Identity::from_secret(&secret).id();
        if (0x40..0xc0).contains(&id[0]) {
            break (secret, id);
        }
    };
    let low = identity_ordered(&node_id, std::cmp::Ordering::Less);
    let high = identity_ordered(&node_id, std::cmp::Ordering::Greater);
    let (l_low, l_high) = (Listener::new(), Listener::new());
    let node = Node::start_as(
        &small_file(dir.path(), 30),
        &["--peer", &peer_arg(&low, l_low.port), "--peer", &peer_arg(&high, l_high.port), "--hello-timeout", "30"],
        Some(&node_secret),
    );
    assert_eq!(node.id, node_id);

    // A client before any dial has completed: empty PEERS.
    let mut a = node.dial();
    let (_, entries) = a.handshake(&Identity::random(), Some(node.port));
    assert!(entries.is_empty(), "PEERS before any verified dial: {entries:?}");

    // The node dials our first listener: HELLO (its listen port, shareable), PEERS empty (it
    // verified nobody yet); then every other live connection learns of us at once (5.4).
    let (mut c_low, h, entries) = l_low.accept_peer(&low, IO_TIMEOUT);
    assert_eq!((h.id, h.port, h.flags), (node_id, node.port, 1), "the node's HELLO on its dial");
    assert!(entries.is_empty(), "PEERS to the first verified dial: {entries:?}");
    let f = a.recv();
    assert!(f.is(PEERS), "immediate discovery: expected PEERS, got {}", f.show());
    assert_eq!(parse_peers(&f.body), [entry(&low.id(), l_low.port)], "immediate discovery of the first dial");

    // The second dial: its PEERS lists the first; the others learn of the second.
    let (mut c_high, _, entries) = l_high.accept_peer(&high, IO_TIMEOUT);
    assert_eq!(entries, [entry(&low.id(), l_low.port)], "PEERS to the second dial");
    for (who, c) in [("the client", &mut a), ("the first dial", &mut c_low)] {
        let f = c.recv();
        assert!(f.is(PEERS), "{who}: expected PEERS, got {}", f.show());
        assert_eq!(
            parse_peers(&f.body),
            [entry(&high.id(), l_high.port)],
            "{who}: immediate discovery of the second dial"
        );
    }

    // A new client gets both, most recently contacted first.
    let mut c = node.dial();
    let (_, entries) = c.handshake(&Identity::random(), Some(node.port));
    assert_eq!(entries, [entry(&high.id(), l_high.port), entry(&low.id(), l_low.port)], "PEERS to a new client");

    // 5.2 with `low` < node id: the connection dialled by `low` (ours, inbound) stays; the
    // node's dial gets REJECT(1) with the reason.
    let reason = "already connected (the connection dialled by the smaller node id stays)";
    let mut d_low = node.dial();
    let (_, entries) = d_low.handshake(&low, Some(node.port));
    assert_eq!(entries, [entry(&high.id(), l_high.port)], "PEERS to `low` leaves out its own entry");
    let f = c_low.expect_reject_then_close(DUPLICATE, "the node's dial, when the smaller id dials in");
    assert_eq!((f.retry_after(), f.reason().as_str()), (60, reason), "{}", f.show());
    d_low.probe(&mut rng);

    // With `high` > node id: the node's own dial stays; ours gets REJECT(1) after the HELLOs.
    let mut d_high = node.dial();
    d_high.send(&high.hello(&d_high.hh, 0, 0));
    d_high.expect_hello(Some(node.port));
    let f = d_high.expect_reject_then_close(DUPLICATE, "dialling in while the node's dial to us is live");
    assert_eq!((f.retry_after(), f.reason().as_str()), (60, reason), "{}", f.show());
    c_high.probe(&mut rng);
    a.probe(&mut rng);
}

/// A `pex fetch` process, killed on drop; its stderr shown if the test fails.
struct Fetch {
    child: crate::Proc,
    dir: tempfile::TempDir,
}

impl Fetch {
    fn start(root: &Hash, peers: &[String], extra: &[&str]) -> Fetch {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = crate::pex();
        cmd.arg("fetch")
            .arg(hex(root))
            .args(["--quiet", "--listen", "[::1]:0", "--data-dir"])
            .arg(dir.path().join("data"));
        cmd.arg("-o").arg(dir.path().join("out"));
        for p in peers {
            cmd.args(["--peer", p]);
        }
        cmd.args(extra).stdin(Stdio::null()).stdout(Stdio::null());
        cmd.stderr(fs::File::create(dir.path().join("stderr.log")).unwrap());
        Fetch { child: crate::Proc::spawn(&mut cmd), dir }
    }

    fn output(&self) -> Option<Vec<u8>> {
        fs::read(self.dir.path().join("out")).ok()
    }
}

impl Drop for Fetch {
    fn drop(&mut self) {
        self.child.kill();
        if thread::panicking() {
            print_log_tail("pex fetch", &self.dir.path().join("stderr.log"));
        }
    }
}

/// What an independent seeder saw of a downloader (section 7).
#[derive(Default)]
struct Seen {
    asks: Vec<Hash>,
    bitfields: Vec<(Hash, u32, Vec<u8>)>,
    /// Pieces asked for before the first BITFIELD arrived.
    piece_asks_before_bitfield: usize,
    haves: Vec<(Hash, u32)>,
    cancels: Vec<Hash>,
    other: Vec<String>,
    end: String,
}

/// Serves `blobs` on `c` until the downloader goes (section 7 from the seeder's side).
fn serve(c: &mut Conn, blobs: &HashMap<Hash, Vec<u8>>, pieces: &HashSet<Hash>) -> Seen {
    let mut seen = Seen::default();
    loop {
        match c.try_recv() {
            Ok(Some(f)) => match f.ty {
                None => {}
                Some(ASK) => {
                    let h = f.hash();
                    seen.asks.push(h);
                    if pieces.contains(&h) && seen.bitfields.is_empty() {
                        seen.piece_asks_before_bitfield += 1;
                    }
                    // Unlike pex, cut at odd places, after an empty message (2.4: receivers
                    // accept any cutting).
                    let answer = match blobs.get(&h) {
                        Some(data) => give(data),
                        None => dont_have(&h),
                    };
                    let wire = [c.tx.seal(&[]), c.tx.seal_cut(&answer, 7777)].concat();
                    c.tx.send_raw(&wire);
                }
                Some(BITFIELD) => seen.bitfields.push((f.hash(), f.first(), f.body[36..].to_vec())),
                Some(HAVE) => seen.haves.push((f.hash(), f.first())),
                Some(CANCEL) => seen.cancels.push(f.hash()),
                _ => seen.other.push(f.show()),
            },
            Ok(None) => {
                seen.end = "EOF".to_owned();
                break;
            }
            Err(e) if is_reset(&e) => {
                seen.end = "reset".to_owned();
                break;
            }
            Err(e) => {
                seen.end = format!("error: {e}");
                break;
            }
        }
    }
    seen
}

#[test]
fn pex_fetch_downloads_from_an_independent_seeder() {
    // Six pieces, the last short; pieces 1 and 4 identical.
    let size = 5 * PIECE + 777;
    let mut data = Rng::new(31).bytes(size);
    data.copy_within(PIECE..2 * PIECE, 4 * PIECE);
    let (manifest, lists) = make_manifest("served.bin", &data);
    let root = sha(&manifest);
    let hashes = piece_hashes(&data);
    let p = hashes.len();
    let mut blobs: HashMap<Hash, Vec<u8>> = HashMap::new();
    blobs.insert(root, manifest.clone());
    for l in &lists {
        blobs.insert(sha(l), l.clone());
    }
    for chunk in data.chunks(PIECE) {
        blobs.insert(sha(chunk), chunk.to_vec());
    }
    let piece_set: HashSet<Hash> = hashes.iter().copied().collect();
    assert_eq!(piece_set.len(), p - 1);

    let me = Identity::random();
    let l = Listener::new();
    let mut fetch = Fetch::start(&root, &[peer_arg(&me, l.port)], &[]);
    let (mut c, hello, entries) = l.accept_peer(&me, IO_TIMEOUT);
    assert_ne!(hello.port, 0, "a fetch listening on [::1]:0 sends its port");
    assert!(entries.is_empty(), "the fetcher's PEERS: {entries:?}");
    // We hold every piece, told as a whole BITFIELD missing the last piece and a HAVE for it:
    // so the fetcher counts us as interested and owes us HAVEs (5.7).
    c.send(&[bitfield(&root, 0, &bits_where(p, |i| i + 1 < p)), have(&root, p as u32 - 1)].concat());
    let seen = serve(&mut c, &blobs, &piece_set);
    let status = fetch.child.wait_within(STARTUP);
    eprintln!(
        "pex fetch: {status}; it ASKed {} blobs, sent {} BITFIELD(s), {} HAVEs, {} CANCELs, {:?}, then {}",
        seen.asks.len(),
        seen.bitfields.len(),
        seen.haves.len(),
        seen.cancels.len(),
        seen.other,
        seen.end
    );
    assert!(status.success(), "pex fetch failed: {status}");
    assert!(fetch.output().is_some_and(|out| out == data), "the fetched file differs");

    // Section 7: the root first, then the list, each piece blob once (identical pieces once).
    assert_eq!(seen.asks.first(), Some(&root), "the first ASK is the root");
    assert_eq!(seen.asks.get(1), Some(&sha(&lists[0])), "then the hash list");
    let piece_asks: Vec<&Hash> = seen.asks[2..].iter().collect();
    assert_eq!(piece_asks.len(), p - 1, "each distinct piece asked once: {} ASKs", piece_asks.len());
    assert_eq!(piece_asks.iter().copied().copied().collect::<HashSet<Hash>>(), piece_set);
    // Its BITFIELD: all zero, from piece 0, ⌈P/8⌉ bytes, sent once it had the lists.
    assert_eq!(seen.bitfields.len(), 1, "BITFIELDs from the fetcher");
    assert_eq!(seen.bitfields[0], (root, 0, vec![0; p.div_ceil(8)]), "the fetcher's BITFIELD");
    assert_eq!(seen.piece_asks_before_bitfield, 0, "pieces were asked before the fetcher's BITFIELD (7, step 3)");
    // One HAVE per piece index (the twice-occurring blob yields two).
    let mut have_indices: Vec<u32> = seen
        .haves
        .iter()
        .map(|(r, i)| {
            assert_eq!(*r, root);
            *i
        })
        .collect();
    have_indices.sort_unstable();
    assert_eq!(have_indices, (0..p as u32).collect::<Vec<_>>(), "HAVEs from the fetcher");
    // Done, it shuts down: REJECT(6), retry-after 10 (5.9), then the close.
    let last = seen.other.last().map(String::as_str).unwrap_or("nothing");
    assert!(last.starts_with("REJECT(6) retry-after 10"), "the fetcher's last frame: {last}");
    assert!(
        seen.other[..seen.other.len() - 1].iter().all(|f| f.starts_with("PEERS")),
        "other frames: {:?}",
        seen.other
    );
    assert_eq!(seen.end, "EOF");
}

#[test]
fn pex_fetch_drops_a_v1_responder_and_a_node_that_proves_another_id() {
    let v1 = Listener::new();
    let pinned = Listener::new();
    let impostor = Identity::random();
    let expected = Identity::random();
    let root = Rng::new(32).hash();
    let fetch = Fetch::start(
        &root,
        &[format!("[::1]:{}", v1.port), peer_arg(&expected, pinned.port)],
        &["--connect-timeout", "10", "--give-up-after", "10"],
    );

    // Two dials of each: every one ends the same way (user-given addresses are redialled).
    let v1_side = thread::spawn(move || {
        for dial in 0..2 {
            let mut s = v1.accept(IO_TIMEOUT);
            let mut m1 = [0; 34];
            s.read_exact(&mut m1).unwrap();
            assert_eq!(m1[..2], [0x00, 0x20], "dial {dial}: handshake message 1");
            // A v1 node's HELLO where message 2 should be: the initiator closes, writing nothing.
            s.write_all(&unhex(
                "000000270350455801000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2328",
            ))
            .unwrap();
            let got = read_to_close(&mut s).unwrap();
            assert!(got.is_empty(), "dial {dial}: after a v1 HELLO the initiator wrote {}", hex(&got));
        }
    });
    let pin_side = thread::spawn(move || {
        for dial in 0..2 {
            let mut c = Conn::respond(pinned.accept(IO_TIMEOUT));
            let hello = impostor.hello(&c.hh, pinned.port, 1);
            c.send(&hello);
            // 5.1 step 5.1: the pin does not match: closed without any further frame.
            let got = transcript(&mut c, None);
            assert_eq!(got, ["HELLO", "EOF"], "dial {dial}: a pinned address proving another id");
        }
    });
    join(v1_side);
    join(pin_side);
    drop(fetch);
}

#[test]
fn pex_fetch_bans_a_peer_that_gives_a_bad_manifest() {
    let me = Identity::random();
    let l = Listener::new();
    let root = Rng::new(33).hash();
    let fetch = Fetch::start(&root, &[peer_arg(&me, l.port)], &["--give-up-after", "60"]);
    let (mut c, hello, _) = l.accept_peer(&me, IO_TIMEOUT);
    let f = c.recv();
    assert_eq!(f.wire(), ask(&root), "the fetcher's first request");
    // Data that does not hash to the root (7 step 1, 5.5): REJECT(5) and a ban.
    c.send(&give_as(&root, b"not the manifest"));
    let f = c.expect_reject_then_close(MISBEHAVING, "a GIVE of the root with other data");
    eprintln!("bad manifest: {}", f.show());

    // The ban is on the node id wherever it connects from (5.9): dialling in as `me` gets
    // REJECT(5) after the HELLOs; another identity is welcome.
    let mut c = Conn::dial(hello.port);
    c.send(&me.hello(&c.hh, 0, 0));
    c.expect_hello(Some(hello.port));
    let f = c.expect_reject_then_close(MISBEHAVING, "a banned node id dialling in");
    assert_eq!(f.reason(), "banned", "{}", f.show());
    let mut other = Conn::dial(hello.port);
    other.handshake(&Identity::random(), Some(hello.port));
    drop(fetch);
}

/// 4.3 and 5.4: an address learned from PEERS (IPv4 travels IPv4-mapped) is dialled, and the
/// node id of its entry is pinned to it: another id proven there ends the dial after the HELLOs.
#[test]
fn learned_addresses_are_dialled_and_held_to_their_node_ids() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&small_file(dir.path(), 34), &[]);
    let mut rng = Rng::new(34);
    let (honest, liar, claimed) = (Identity::random(), Identity::random(), Identity::random());
    let (l_honest, l_liar, l_self) =
        (Listener::on("127.0.0.1:0"), Listener::on("127.0.0.1:0"), Listener::on("127.0.0.1:0"));
    let v4 = ipv4("127.0.0.1");
    let mut a = node.peer();
    a.send(&peers(&[(node.id, v4, l_self.port), (honest.id(), v4, l_honest.port), (claimed.id(), v4, l_liar.port)]));

    // The honest entry: dialled over IPv4, set up, kept.
    let (mut c, hello, entries) = l_honest.accept_peer(&honest, IO_TIMEOUT);
    assert_eq!(hello.id, node.id);
    assert!(entries.is_empty(), "PEERS to the first verified dial: {entries:?}");
    c.probe(&mut rng);

    // The entry whose address proves another id: HELLO, then the close without another frame.
    let mut c = Conn::respond(l_liar.accept(IO_TIMEOUT));
    c.send(&liar.hello(&c.hh, l_liar.port, 1));
    assert_eq!(transcript(&mut c, None), ["HELLO", "EOF"], "a learned pin that does not match (5.1 step 5.1)");

    // The client now hears of the honest address, with its node id, decoded as sent.
    let f = a.recv();
    assert!(f.is(PEERS), "immediate discovery: expected PEERS, got {}", f.show());
    assert_eq!(parse_peers(&f.body), [(honest.id(), v4, l_honest.port)]);
    a.probe(&mut rng);

    // The entry with the node's own id was never dialled (a weak check: nothing has come yet).
    assert!(l_self.l.accept().is_err(), "the node dialled an entry carrying its own node id");
}
