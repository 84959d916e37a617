//! Whom a node dials and when: silent and absent peers, peer exchange, bootstrap, back-off, bans, undialable addresses.

use super::*;

fn short_timeouts() -> Config {
    Config { timeouts: pex::Timeouts { ask: Duration::from_secs(1), ..test_config().timeouts }, ..test_config() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asks_to_a_silent_peer_move_elsewhere_and_silence_alone_ends_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(3 * MIB, 18);
    let (_seeder, info, honest) = seeder(dir.path(), "f", &bytes, test_config()).await;
    let mute = FakePeer::new().silent().start().await;
    let fetcher = node_in(&dir.path().join("fetcher"), short_timeouts()).await;
    let out = dir.path().join("out");
    fetch(&fetcher, info.root, vec![mute.addr, honest], out.clone()).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes);
    // With only the silent peer: a clear error, not a hang.
    let lonely = node_in(&dir.path().join("lonely"), short_timeouts()).await;
    let (tx, _rx) = tokio::sync::watch::channel(pex::Progress::default());
    let opts = pex::FetchOptions {
        output: Some(dir.path().join("never")),
        peers: vec![mute.addr],
        give_up_after: Duration::from_secs(3),
        ..Default::default()
    };
    let err = tokio::time::timeout(PATIENCE, lonely.fetch(info.root, opts, tx)).await.unwrap().unwrap_err();
    assert!(matches!(err, FetchError::Stalled(_) | FetchError::NotFound(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_not_up_yet_is_retried_and_a_blip_does_not_end_a_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(6 * MIB, 19);
    let src = dir.path().join("f");
    std::fs::write(&src, &bytes).unwrap();
    // Reserve a port, then start the fetch before anything listens there.
    let port = std::net::TcpListener::bind("[::1]:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let info = {
        let hasher = node_in(&dir.path().join("h"), Config { listen: None, ..test_config() }).await;
        hasher.seed(&src, |_| {}).await.unwrap()
    };
    let fetcher = node_in(&dir.path().join("fetcher"), test_config()).await;
    let (task, mut rx) = spawn_fetch(&fetcher, info.root, vec![addr], dir.path().join("out"));
    let slow = || Config { listen: Some(addr), max_upload_rate: Some(2 << 20), ..test_config() };
    let start_seeder = |name: &'static str| {
        let (dir, src, slow) = (dir.path().join(name), src.clone(), slow());
        async move {
            let node = node_in(&dir, slow).await;
            node.seed(&src, |_| {}).await.unwrap();
            node
        }
    };
    // Nothing listens yet: the fetch tries, fails, and keeps going.
    wait_until("a dial of the absent seeder failed", || fetcher.dial_error(&addr).is_some()).await;
    assert!(!task.is_finished());
    let first = start_seeder("s1").await;
    tokio::time::timeout(PATIENCE, rx.wait_for(|p| p.have_bytes >= MIB as u64)).await.unwrap().unwrap();
    // A blip: the only peer goes away, then comes back on the same address.
    first.shutdown().await;
    drop(first);
    wait_until("a redial during the blip failed", || fetcher.dial_error(&addr).is_some()).await;
    assert!(!task.is_finished());
    let _second = start_seeder("s2").await;
    let outcome = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap().unwrap();
    assert!(std::fs::read(&outcome.path).unwrap() == bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pex_a_node_talks_only_to_the_peers_it_was_given() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(2 * MIB, 20);
    let (first, info, a) = seeder(&dir.path().join("a").tap_mkdir(), "f", &bytes, test_config()).await;
    let (second, _, b) = seeder(&dir.path().join("b").tap_mkdir(), "f", &bytes, test_config()).await;
    // The first seeder knows the second, and would tell others about it.
    first.add_peer(b);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !first.is_connected(&second.id()) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for pex in [false, true] {
        let node = node_in(&dir.path().join(format!("f-{pex}")), Config { pex, ..test_config() }).await;
        fetch(&node, info.root, vec![a], dir.path().join(format!("out-{pex}"))).await.unwrap();
        let met = |id: pex::NodeId| node.stats().peers.iter().any(|p| p.node_id == id.to_hex());
        if pex {
            // With peer exchange it learns the second seeder (given time to dial it).
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while !met(second.id()) {
                assert!(tokio::time::Instant::now() < deadline, "pex never reached the second seeder");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            assert!(met(first.id()) && !met(second.id()), "--no-pex dialled a peer it learned");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_node_introduces_verified_peers_only() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(2 * MIB, 22);
    let bootstrap = node_in(&dir.path().join("boot"), test_config()).await;
    let boot = bootstrap.local_addr().unwrap();
    // A liar claims to listen on a port where nothing answers.
    let dead_port = std::net::TcpListener::bind("[::1]:0").unwrap().local_addr().unwrap().port();
    let mut claimer = Raw::connect(boot).await;
    claimer.send(&claimer.hello(dead_port)).await;
    assert!(matches!(claimer.next_any().await, Some(Frame::Hello(_))));
    // A seeder that only dialled the bootstrap.
    let (seeder, info, seeder_addr) = seeder(&dir.path().join("s").tap_mkdir(), "f", &bytes, test_config()).await;
    seeder.add_peer(boot);
    // A fetcher that knows only the bootstrap finds the seeder through it.
    let fetcher = node_in(&dir.path().join("fetcher"), test_config()).await;
    let out = dir.path().join("out");
    fetch(&fetcher, info.root, vec![boot], out.clone()).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes);
    assert!(fetcher.stats().peers.iter().any(|p| p.node_id == seeder.id().to_hex()));
    // What the bootstrap shares now: the seeder (verified), never the dead address.
    let (mut late, _) = Raw::handshake(boot).await;
    let Some(Frame::Peers(shared)) = late.next_any().await else { panic!("no PEERS") };
    assert!(shared.iter().any(|e| e.addr == seeder_addr && e.node_id == seeder.id()), "{shared:?}");
    assert!(!shared.iter().any(|e| e.addr.port() == dead_port), "{shared:?}");
    drop(claimer);
}

/// Dials a node may make in [`REDIAL_WINDOW`] to a peer that ends every connection:
/// a back-off starting at 0.5 s and doubling allows about 5.
const MAX_REDIALS: usize = 12;
const REDIAL_WINDOW: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_ends_every_connection_is_redialled_with_backoff_not_in_a_storm() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("served");
    std::fs::write(&src, data(3 * MIB + 5, 40)).unwrap();
    let mut runs = Vec::new();
    for i in 0..5 {
        // Each node serves a 4-piece file; behaviour (b) sends a BITFIELD for it of the wrong length.
        let node = node_in(&dir.path().join(format!("n{i}")), test_config()).await;
        let info = node.seed(&src, |_| {}).await.unwrap();
        let reject = |code: u8| Step::Frame(Frame::Reject { code, retry_after: 0, reason: "go away".into() });
        let (what, script) = match i {
            // An ASK with a 31-byte hash (vector ask_short).
            0 => ("a malformed frame", vec![Step::Bytes(hex(ASK_SHORT).into())]),
            1 => (
                "a BITFIELD of the wrong length",
                vec![Step::Frame(Frame::Bitfield { root: info.root, first: 0, bits: Bytes::from_static(&[0xF0, 0]) })],
            ),
            2 => ("REJECT(2)", vec![reject(RejectCode::PeerLimit as u8), Step::Close]),
            3 => ("REJECT(6)", vec![reject(RejectCode::ShuttingDown as u8), Step::Close]),
            _ => ("a close", vec![Step::Close]),
        };
        let peer = FakePeer::new().then(script).start().await;
        runs.push((what, node, peer));
    }
    let start = tokio::time::Instant::now();
    for (_, node, peer) in &runs {
        node.add_peer(peer.addr);
    }
    // Each node's dials in the window, or as soon as there are too many (that node is then
    // stopped: a storm slows every other test on the machine).
    let mut seen: Vec<Option<(usize, Duration)>> = vec![None; runs.len()];
    while seen.iter().any(Option::is_none) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let elapsed = start.elapsed();
        for ((_, node, peer), seen) in runs.iter().zip(&mut seen) {
            if seen.is_none() && peer.accepted() > MAX_REDIALS {
                *seen = Some((peer.accepted(), elapsed));
                node.shutdown_token().cancel();
            } else if seen.is_none() && elapsed >= REDIAL_WINDOW {
                *seen = Some((peer.accepted(), elapsed));
            }
        }
    }
    let report: Vec<String> = runs
        .iter()
        .zip(&seen)
        .map(|((what, _, _), s)| {
            let (dials, t) = s.unwrap();
            format!("after {what}: {dials} in {:.2} s", t.as_secs_f64())
        })
        .collect();
    assert!(
        seen.iter().all(|s| s.unwrap().0 <= MAX_REDIALS),
        "dials to a peer that ends every connection (at most {MAX_REDIALS} in {} s allowed): {}",
        REDIAL_WINDOW.as_secs(),
        report.join(", ")
    );
    // The connections did end the way each case says (a handshake, then the peer's move).
    for (what, node, peer) in &runs {
        wait_until(&format!("a handshake completed before {what}"), || peer.handshakes() >= 1).await;
        node.shutdown().await;
    }
}

const ASK_SHORT: &str = "0000002000262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab27184979893";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_peer_is_never_dialled_again() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(4 * MIB, 41);
    // The honest seeder is slow, so the liar is certainly asked for pieces. It takes no
    // part in peer exchange: it would learn the liar's address from the fetcher and
    // dial it itself, which the liar's count of accepted connections would show.
    let slow = Config { max_upload_rate: Some(2 << 20), pex: false, ..test_config() };
    let (_seeder, info, honest) = seeder(dir.path(), "f", &bytes, slow).await;
    let liar = corrupting_peer(&info).await;
    let fetcher = node_in(&dir.path().join("f-data"), test_config()).await;
    fetch(&fetcher, info.root, vec![liar.addr, honest], dir.path().join("out")).await.unwrap();
    let (code, banned_at) = liar.next_reject_at().await;
    assert_eq!(code, RejectCode::Misbehaving as u8);
    // Even asked to, the node does not dial it again; the control shows that it dials meanwhile.
    fetcher.add_peer(liar.addr);
    let control = FakePeer::new().then([Step::Close]).start().await;
    fetcher.add_peer(control.addr);
    let watch_from = tokio::time::Instant::now();
    wait_until("the control was dialled 3 times over 3 s", || {
        control.accepted() >= 3 && watch_from.elapsed() >= Duration::from_secs(3)
    })
    .await;
    assert_eq!(liar.accepted_since(banned_at), 0, "the banned peer was dialled again");
}

/// Addresses no node may dial: broadcast, unspecified, multicast, port 0. The two
/// unspecified ones use `trap`'s port: Linux connects `[::]` to `[::1]`, so a dial of
/// `[::]:port` would reach the trap and show in its count (and not as a dial error).
fn undialable(trap: &FakePeer) -> Vec<SocketAddr> {
    let p = trap.addr.port();
    [
        "[::ffff:255.255.255.255]:9000".to_owned(),
        "255.255.255.255:9000".to_owned(),
        format!("[::ffff:0.0.0.0]:{p}"),
        format!("0.0.0.0:{p}"),
        format!("[::]:{p}"),
        "[ff02::1]:9000".to_owned(),
        "[::ffff:224.0.0.1]:9000".to_owned(),
        "224.0.0.1:9000".to_owned(),
        "[::1]:0".to_owned(),
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect()
}

/// Waits until `node` has dialled `control` (a peer that closes at once) twice, which
/// takes it through its dial queue at least twice; then no address in `never` may
/// have been dialled.
async fn assert_never_dialled(node: &pex::Node, control: &FakePeer, trap: &FakePeer, never: &[SocketAddr]) {
    wait_until("the control was dialled twice", || control.accepted() >= 2 && node.dial_error(&control.addr).is_some())
        .await;
    let mut dialled: Vec<String> =
        never.iter().filter_map(|a| node.dial_error(a).map(|e| format!("{a} ({e})"))).collect();
    if trap.accepted() > 0 {
        dialled.push(format!("[::]:{} (reached [::1] {} times)", trap.addr.port(), trap.accepted()));
    }
    assert!(dialled.is_empty(), "dialled: {}", dialled.join(", "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_unspecified_multicast_and_port_zero_addresses_are_never_dialled() {
    let dir = tempfile::tempdir().unwrap();
    let trap = FakePeer::new().start().await;
    let never = undialable(&trap);
    // Learned from a peer's PEERS, along with the control.
    let control = FakePeer::new().no_hello().start().await;
    let gossip = FakePeer::new().advertising(never.iter().copied().chain([control.addr])).start().await;
    let node = node_in(&dir.path().join("a"), test_config()).await;
    node.add_peer(gossip.addr);
    assert_never_dialled(&node, &control, &trap, &never).await;
    // Given by the user.
    let control = FakePeer::new().no_hello().start().await;
    let node = node_in(&dir.path().join("b"), test_config()).await;
    for a in &never {
        node.add_peer(*a);
    }
    node.add_peer(control.addr);
    assert_never_dialled(&node, &control, &trap, &never).await;
}
