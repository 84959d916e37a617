//! Raw connections to a node: the handshake rules, malformed frames, the connection limit, files changing under load.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_client_handshakes_pipelines_and_gets_dont_have() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(9 * MIB + 3, 4);
    let (_seeder, info, addr) = seeder(dir.path(), "f", &bytes, test_config()).await;
    let (mut raw, hello) = Raw::handshake(addr).await;
    assert_eq!(hello.listen_port, addr.port());
    // PEERS comes right after HELLO.
    assert!(matches!(raw.next_any().await, Some(Frame::Peers(_))));
    raw.send(&Frame::Ask(info.root)).await;
    let Some(Frame::Give { hash, data: manifest }) = raw.next().await else { panic!("no manifest") };
    assert_eq!((hash, &manifest[..]), (info.root, &info.manifest_blob[..]));
    // Eight pipelined ASKs, plus one for a hash nobody has.
    let unknown = Hash::of(b"unknown");
    for h in &info.pieces[..8] {
        raw.send(&Frame::Ask(*h)).await;
    }
    raw.send(&Frame::Ask(unknown)).await;
    let (mut gives, mut dont_have) = (0, false);
    while gives < 8 || !dont_have {
        match raw.next().await.unwrap() {
            Frame::Give { hash, data } => {
                let i = info.pieces.iter().position(|h| *h == hash).unwrap();
                assert_eq!(&data[..], &bytes[i * MIB..(i + 1) * MIB]);
                gives += 1;
            }
            Frame::DontHave(h) => {
                assert_eq!(h, unknown);
                dont_have = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // BITFIELD is answered with the seeder's: all ten pieces.
    raw.send(&Frame::Bitfield { root: info.root, first: 0, bits: Bytes::from_static(&[0, 0]) }).await;
    assert_eq!(
        raw.next().await,
        Some(Frame::Bitfield { root: info.root, first: 0, bits: Bytes::from_static(&[0xFF, 0xC0]) })
    );
    // A BITFIELD for a root the node has nothing of gets no answer; the next reply is for the ASK.
    raw.send(&Frame::Bitfield { root: unknown, first: 0, bits: Bytes::new() }).await;
    raw.send(&Frame::Ask(unknown)).await;
    assert_eq!(raw.next().await, Some(Frame::DontHave(unknown)));
    // HAVE beyond the file's pieces is a violation.
    raw.send(&Frame::Have { root: info.root, index: 10 }).await;
    assert_eq!(raw.expect_reject().await, Some(RejectCode::ProtocolViolation as u8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_the_offending_connection() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(2 * MIB, 5);
    let (seeder, info, addr) = seeder(dir.path(), "f", &bytes, test_config()).await;
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/protocol-vectors.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    // A bystander that stays connected throughout.
    let (mut bystander, _) = Raw::handshake(addr).await;
    for v in json["vectors"].as_array().unwrap().iter().filter(|v| !v["valid"].as_bool().unwrap()) {
        let name = v["name"].as_str().unwrap();
        let bad = hex(v["hex"].as_str().unwrap());
        // HELLO-shaped violations are sent as the first frame, the rest after a good HELLO.
        let mut raw = if name.starts_with("hello") {
            let mut raw = Raw::connect(addr).await;
            assert!(matches!(raw.next_any().await, Some(Frame::Hello(_))));
            raw
        } else {
            Raw::handshake(addr).await.0
        };
        raw.send_bytes(&bad).await;
        assert_eq!(raw.expect_reject().await, Some(RejectCode::ProtocolViolation as u8), "{name}");
    }
    // A frame other than HELLO first is a violation too.
    let mut raw = Raw::connect(addr).await;
    raw.send(&Frame::Ask(info.root)).await;
    assert_eq!(raw.expect_reject().await, Some(RejectCode::ProtocolViolation as u8));
    // The bystander is still served.
    bystander.send(&Frame::Ask(info.pieces[1])).await;
    let Some(Frame::Give { data, .. }) = bystander.next().await else { panic!("bystander lost") };
    assert_eq!(&data[..], &bytes[MIB..]);
    assert!(seeder.connected_peers() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_each_get_hello_or_peer_limit() {
    let _turn = MANY_SOCKETS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _info, addr) = seeder(dir.path(), "f", b"x", test_config()).await;
    let mut conns = Vec::new();
    for _ in 0..200 {
        let mut raw = Raw::connect(addr).await;
        raw.send(&raw.hello(0)).await;
        conns.push(raw);
    }
    let (mut hellos, mut limits) = (0, 0);
    for raw in &mut conns {
        match raw.next_any().await {
            Some(Frame::Hello(_)) => hellos += 1,
            Some(Frame::Reject { code, .. }) if code == RejectCode::PeerLimit as u8 => limits += 1,
            other => panic!("expected HELLO or REJECT(2), got {other:?}"),
        }
    }
    assert_eq!(hellos, pex::node::DEFAULT_MAX_PEERS);
    assert_eq!(hellos + limits, 200);
    drop(conns);
    // Slots come back once those connections close.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while seeder.connected_peers() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "connections never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_raw, _) = Raw::handshake(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_self_connections_silence_and_shutdown_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        Config { timeouts: pex::Timeouts { hello: Duration::from_secs(1), ..test_config().timeouts }, ..test_config() };
    let (seeder, _info, addr) = seeder(dir.path(), "f", b"x", config).await;
    let me = Identity::generate();
    let (mut first, _) = Raw::handshake_as(addr, me.clone()).await;
    // PEERS is written once the node has registered the connection.
    assert!(matches!(first.next_any().await, Some(Frame::Peers(_))));
    // The same node again, in the same direction: the older connection stays.
    let mut second = Raw::connect_as(addr, me.clone()).await;
    second.send(&second.hello(0)).await;
    assert_eq!(second.expect_reject().await, Some(RejectCode::Duplicate as u8));
    // Claiming the node's own id cannot be signed without its key: a violation.
    let mut mirror = Raw::connect(addr).await;
    let forged = Hello { node_id: seeder.id(), listen_port: 0, flags: 0, signature: [0x5A; 64] };
    mirror.send(&Frame::Hello(forged)).await;
    assert_eq!(mirror.expect_reject().await, Some(RejectCode::ProtocolViolation as u8));
    // Silence: closed with REJECT(3) once the HELLO time-out passes.
    let mut silent = Raw::connect(addr).await;
    assert_eq!(silent.expect_reject().await, Some(RejectCode::ProtocolViolation as u8));
    // Shutdown tells connected peers.
    let (mut watcher, _) = Raw::handshake(addr).await;
    seeder.shutdown().await;
    assert_eq!(watcher.expect_reject().await, Some(RejectCode::ShuttingDown as u8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dials_itself_notices_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { listen: Some("[::]:0".parse().unwrap()), ..test_config() };
    let node = node_in(dir.path(), config).await;
    let me: SocketAddr = format!("[::1]:{}", node.local_addr().unwrap().port()).parse().unwrap();
    node.add_peer(me);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !node.is_self_address(&me) {
        assert!(tokio::time::Instant::now() < deadline, "self-connection never detected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node.connected_peers(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_file_truncated_or_rewritten_under_load_stops_being_served_and_nothing_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(32 * MIB, 15);
    let (seeder, info, addr) = seeder(dir.path(), "big", &bytes, test_config()).await;
    let other = dir.path().join("other");
    std::fs::write(&other, data(MIB, 16)).unwrap();
    let other_info = seeder.seed(&other, |_| {}).await.unwrap();
    // A client keeps 32 ASKs in flight while the file is truncated under it.
    let (mut raw, _) = Raw::handshake(addr).await;
    for h in &info.pieces {
        raw.send(&Frame::Ask(*h)).await;
    }
    let mut gives = 0;
    while gives < 4 {
        if let Some(Frame::Give { .. }) = raw.next().await {
            gives += 1;
        }
    }
    std::fs::OpenOptions::new().write(true).open(dir.path().join("big")).unwrap().set_len(MIB as u64 / 2).unwrap();
    // Whatever comes now is a valid GIVE, a DONT_HAVE, or a close: never bad data, never a crash.
    let mut dont_have = 0;
    while let Some(f) = raw.next().await {
        match f {
            Frame::Give { hash, data } => {
                assert_eq!(Hash::of(&data), hash);
                gives += 1;
            }
            Frame::DontHave(_) => dont_have += 1,
            other => panic!("unexpected {other:?}"),
        }
        if gives + dont_have >= info.pieces.len() {
            break;
        }
    }
    // New ASKs for it get DONT_HAVE; the other file is still served.
    let (mut fresh, _) = Raw::handshake(addr).await;
    fresh.send(&Frame::Ask(info.pieces[0])).await;
    assert_eq!(fresh.next().await, Some(Frame::DontHave(info.pieces[0])));
    fresh.send(&Frame::Ask(other_info.pieces[0])).await;
    assert!(matches!(fresh.next().await, Some(Frame::Give { .. })));
    // Rewriting in place (same size, new contents) is noticed too.
    std::fs::write(&other, data(MIB, 17)).unwrap();
    fresh.send(&Frame::Ask(other_info.pieces[0])).await;
    assert_eq!(fresh.next().await, Some(Frame::DontHave(other_info.pieces[0])));
}

/// Tests that open hundreds of sockets take turns: both ends of every connection
/// are in this process, so together they could exceed its open-file limit.
static MANY_SOCKETS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Raises this process's soft limit on open files to its hard limit; returns the
/// soft limit now in force.
fn raise_open_file_limit() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connection_attempts_meet_the_limit() {
    const ATTEMPTS: usize = 1000;
    let max = pex::node::DEFAULT_MAX_PEERS;
    let _turn = MANY_SOCKETS.lock().await;
    let limit = raise_open_file_limit();
    let dir = tempfile::tempdir().unwrap();
    let (seeder, info, addr) = seeder(dir.path(), "f", b"still here", test_config()).await;
    // Every connection costs a descriptor at each end, and admitted ones stay open to the
    // end. All attempts come in one burst when the limit allows (2 × 1,000 and some);
    // under a lower limit (`ulimit -n 1024`) in bursts that fit, leaving room for the
    // tests running alongside: either way many times the connection limit at once.
    let room = limit.saturating_sub(open_files() + 256) / 2;
    let burst = room.saturating_sub(max).min(ATTEMPTS);
    assert!(burst >= 4 * max, "an open-file limit of {limit} leaves room for only {burst} connections at once");
    // Admitted connections keep their slots to the end: no attempt, early or late, gets past the limit.
    let (mut admitted, mut turned_away, mut attempts) = (Vec::new(), 0, 0);
    while attempts < ATTEMPTS {
        let n = burst.min(ATTEMPTS - attempts);
        attempts += n;
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => conns.push(s),
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                    turned_away += 1;
                }
            }
        }
        for s in conns {
            let me = local(Identity::generate(), 0);
            let Ok((reader, writer, hh)) = peer::secure(s, Direction::Outbound, &me, PATIENCE).await else {
                turned_away += 1; // refused outright
                continue;
            };
            let mut raw = Raw { reader, writer, hh, identity: me.identity.clone() };
            let _ = raw.writer.write_frame(&raw.hello(0), None).await;
            match tokio::time::timeout(PATIENCE, raw.reader.read_frame()).await.unwrap() {
                Ok(Some(Frame::Hello(_))) => admitted.push(raw),
                Ok(Some(Frame::Reject { code, .. })) => {
                    assert_eq!(code, RejectCode::PeerLimit as u8);
                    turned_away += 1;
                }
                Ok(None) | Err(_) => turned_away += 1, // refused outright
                Ok(Some(other)) => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(admitted.len(), max, "connections admitted out of {ATTEMPTS} (bursts of {burst})");
    assert_eq!(admitted.len() + turned_away, ATTEMPTS);
    assert!(seeder.connected_peers() <= max);
    drop(admitted);
    // And it still serves.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            let me = local(Identity::generate(), 0);
            let Ok((reader, writer, hh)) = peer::secure(s, Direction::Outbound, &me, PATIENCE).await else { continue };
            let mut raw = Raw { reader, writer, hh, identity: me.identity.clone() };
            raw.send(&raw.hello(0)).await;
            if let Some(Frame::Hello(_)) = raw.next_any().await {
                raw.send(&Frame::Ask(info.root)).await;
                assert!(matches!(raw.next().await, Some(Frame::Give { .. })));
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
