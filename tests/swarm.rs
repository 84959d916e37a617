//! Nodes on [::1] in one process: seed→fetch at boundary sizes, hostile and
//! malformed peers, connection limits, and the handshake rules.

mod common;
mod secure;

use bytes::Bytes;
use common::*;
use pex::identity::Identity;
use pex::manifest::{FileInfo, PIECE_SIZE};
use pex::peer::{self, Direction};
use pex::wire::{Frame, Hello, RejectCode};
use pex::{Config, FetchError, Hash};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const MIB: usize = PIECE_SIZE as usize;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_then_fetch_is_byte_exact_at_boundary_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let seeder = node_in(&dir.path().join("s"), test_config()).await;
    let fetcher = node_in(&dir.path().join("f"), test_config()).await;
    let addr = seeder.local_addr().unwrap();
    for (i, size) in [0, 1, MIB - 1, MIB, MIB + 1, 5 * MIB + 7].into_iter().enumerate() {
        let bytes = data(size, i as u64);
        let src = dir.path().join(format!("src-{size}"));
        std::fs::write(&src, &bytes).unwrap();
        let info = seeder.seed(&src, |_| {}).await.unwrap();
        let out = dir.path().join(format!("out-{size}"));
        let outcome = fetch(&fetcher, info.root, vec![addr], out.clone()).await.unwrap();
        assert_eq!(outcome.file_bytes, size as u64);
        assert_eq!(std::fs::read(&out).unwrap(), bytes, "size {size}");
        assert!(!pex::fetch::part_path(&out).exists(), "no .part left behind");
    }
    let stats = fetcher.stats();
    assert_eq!(stats.pieces_rejected, 0);
    assert!(stats.downloaded_bytes >= (7 * MIB) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_pieces_are_one_blob() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = vec![0u8; 3 * MIB + 5];
    let (_seeder, info, addr) = seeder(dir.path(), "zeros", &bytes, test_config()).await;
    assert_eq!(info.pieces[0], info.pieces[2]);
    let fetcher = node_in(&dir.path().join("f"), test_config()).await;
    let out = dir.path().join("zeros.out");
    fetch(&fetcher, info.root, vec![addr], out.clone()).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    // Three identical full pieces travel once, plus the short last piece.
    assert_eq!(fetcher.stats().downloaded_bytes, (MIB + 5) as u64 + info.manifest_blob.len() as u64 + 32 * 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_output_is_never_overwritten_and_unknown_roots_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (_seeder, info, addr) = seeder(dir.path(), "f", &data(1000, 1), test_config()).await;
    let fetcher = node_in(&dir.path().join("f-data"), test_config()).await;
    let out = dir.path().join("taken");
    std::fs::write(&out, b"precious").unwrap();
    let err = fetch(&fetcher, info.root, vec![addr], out.clone()).await.unwrap_err();
    assert!(matches!(err, FetchError::OutputExists(_)), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let err = fetch(&fetcher, Hash::of(b"nobody has this"), vec![addr], dir.path().join("x")).await.unwrap_err();
    assert!(matches!(err, FetchError::NotFound(_)), "{err}");
}

/// A peer that serves `info`'s manifest and lists, claims every piece, and
/// answers every ASK for a piece with garbage.
async fn corrupting_peer(info: &FileInfo) -> FakePeer {
    FakePeer::new().serving_meta(info).claiming_all(info).corrupting().start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupting_peer_is_banned_and_the_fetch_completes_from_an_honest_one() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(4 * MIB, 9);
    // The honest seeder is slow, so the liar is certainly asked for pieces.
    let slow = Config { max_upload_rate: Some(2 << 20), ..test_config() };
    let (_seeder, info, honest) = seeder(dir.path(), "f", &bytes, slow).await;
    let liar = corrupting_peer(&info).await;
    let fetcher = node_in(&dir.path().join("f-data"), test_config()).await;
    let out = dir.path().join("out");
    fetch(&fetcher, info.root, vec![liar.addr, honest], out.clone()).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert!(fetcher.stats().pieces_rejected >= 1);
    assert_eq!(liar.next_reject().await, RejectCode::Misbehaving as u8);
}

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

/// Starts a fetch in the background; returns its task and its progress.
fn spawn_fetch(
    node: &pex::Node,
    root: Hash,
    peers: Vec<SocketAddr>,
    out: PathBuf,
) -> (tokio::task::JoinHandle<Result<pex::FetchOutcome, FetchError>>, tokio::sync::watch::Receiver<pex::Progress>) {
    let (tx, rx) = tokio::sync::watch::channel(pex::Progress::default());
    let opts = pex::FetchOptions { output: Some(out), peers, ..Default::default() };
    let node = node.clone();
    (tokio::spawn(async move { node.fetch(root, opts, tx).await }), rx)
}

/// Waits for all fetches; each fetcher writes `out-<i>`.
async fn fetch_all(
    nodes: &[pex::Node],
    root: Hash,
    peers: Vec<Vec<SocketAddr>>,
    dir: &std::path::Path,
) -> Vec<PathBuf> {
    let mut tasks = Vec::new();
    for (i, (node, peers)) in nodes.iter().zip(peers).enumerate() {
        let (node, out) = (node.clone(), dir.join(format!("out-{i}")));
        tasks.push(tokio::spawn(async move {
            fetch(&node, root, peers, out.clone()).await.unwrap_or_else(|e| panic!("fetcher {i}: {e}"));
            out
        }));
    }
    let mut outs = Vec::new();
    for t in tasks {
        outs.push(t.await.unwrap());
    }
    outs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_fetchers_finds_the_seeder_by_peer_exchange_and_trades_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(24 * MIB, 11);
    // A slow seeder: the fetchers can only finish in reasonable time by trading.
    let (seeder, info, addr) =
        seeder(dir.path(), "f", &bytes, Config { max_upload_rate: Some(16 << 20), ..test_config() }).await;
    let mut fetchers = Vec::new();
    for i in 0..4 {
        fetchers.push(node_in(&dir.path().join(format!("n{i}")), test_config()).await);
    }
    // Fetcher k knows only fetcher k-1; the first knows the seeder.
    let mut peers = vec![vec![addr]];
    for f in &fetchers[..3] {
        peers.push(vec![f.local_addr().unwrap()]);
    }
    for out in fetch_all(&fetchers, info.root, peers, dir.path()).await {
        assert!(std::fs::read(&out).unwrap() == bytes, "{} differs", out.display());
    }
    let uploaded = seeder.stats().uploaded_bytes;
    // Four separate copies would be 96 MiB from the seeder.
    assert!(uploaded < 3 * bytes.len() as u64, "seeder uploaded {uploaded} bytes: fetchers did not trade");
    let traded: u64 = fetchers.iter().map(|f| f.stats().uploaded_bytes).sum();
    assert!(traded > 0, "fetchers served each other nothing");
    // The last fetcher met the seeder through peer exchange.
    assert!(fetchers[3].stats().peers.iter().any(|p| p.node_id == seeder.id().to_hex()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeder_that_disappears_mid_transfer_costs_only_its_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(8 * MIB, 12);
    let slow = || Config { max_upload_rate: Some(4 << 20), ..test_config() };
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let (first, info, a) = seeder(&dir.path().join("a"), "f", &bytes, slow()).await;
    let (_second, info2, b) = seeder(&dir.path().join("b"), "f", &bytes, slow()).await;
    assert_eq!(info.root, info2.root);
    let fetcher = node_in(&dir.path().join("f"), test_config()).await;
    let (task, mut rx) = spawn_fetch(&fetcher, info.root, vec![a, b], dir.path().join("out"));
    // Once some data has arrived, the first seeder goes away.
    tokio::time::timeout(PATIENCE, rx.wait_for(|p| p.have_bytes >= 2 * MIB as u64)).await.unwrap().unwrap();
    first.shutdown().await;
    let outcome = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap().unwrap();
    assert!(std::fs::read(&outcome.path).unwrap() == bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liar_in_the_swarm_is_banned_by_every_fetcher_that_meets_it() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(6 * MIB, 13);
    let (_seeder, info, honest) =
        seeder(dir.path(), "f", &bytes, Config { max_upload_rate: Some(4 << 20), ..test_config() }).await;
    let liar = corrupting_peer(&info).await;
    let fetchers =
        [node_in(&dir.path().join("x"), test_config()).await, node_in(&dir.path().join("y"), test_config()).await];
    let peers = vec![vec![liar.addr, honest], vec![liar.addr, honest]];
    let outs = fetch_all(&fetchers, info.root, peers, dir.path()).await;
    for (f, out) in fetchers.iter().zip(outs) {
        assert!(std::fs::read(&out).unwrap() == bytes);
        assert!(f.stats().pieces_rejected >= 1);
    }
    for _ in 0..2 {
        assert_eq!(liar.next_reject().await, RejectCode::Misbehaving as u8);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_limit_below_one_piece_per_second_still_moves_data() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(MIB + 1, 14);
    let (_seeder, info, addr) =
        seeder(dir.path(), "f", &bytes, Config { max_upload_rate: Some(256 << 10), ..test_config() }).await;
    // One piece takes 4 s at 256 KiB/s; an ASK time-out of 2 s must not fire while bytes flow.
    let impatient =
        Config { timeouts: pex::Timeouts { ask: Duration::from_secs(2), ..test_config().timeouts }, ..test_config() };
    let fetcher = node_in(&dir.path().join("fetcher"), impatient).await;
    let out = dir.path().join("out");
    fetch(&fetcher, info.root, vec![addr], out.clone()).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes);
    // Nothing was asked twice: the slow peer was never given up on.
    assert_eq!(fetcher.stats().downloaded_bytes, (MIB + 1 + info.manifest_blob.len() + 64) as u64);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_manifests_are_refused_with_a_clear_error_before_anything_is_written() {
    use pex::manifest::{Manifest, MANIFEST_MAGIC};
    let dir = tempfile::tempdir().unwrap();
    let fetcher = node_in(&dir.path().join("f"), test_config()).await;
    let list = Bytes::from(Hash::of(b"piece").0.to_vec());
    let good = Manifest { name: "ok".into(), size: 10, lists: vec![Hash::of(&list)] };
    let mut cases: Vec<(&str, Bytes)> = Vec::new();
    for name in ["", "..", "a/b", "/etc/passwd", "x\u{1}y", "..\\..\\win"] {
        cases.push(("unsafe file name", Manifest { name: name.into(), ..good.clone() }.encode()));
    }
    cases.push(("needs", Manifest { size: 40 << 40, ..good.clone() }.encode()));
    let mut half_pieces = good.encode().to_vec();
    half_pieces[5..9].copy_from_slice(&(1u32 << 19).to_be_bytes());
    cases.push(("piece size", half_pieces.into()));
    cases.push(("bad magic", Bytes::from_static(b"this is not a manifest at all")));
    let mut truncated = MANIFEST_MAGIC.to_vec();
    truncated.push(1);
    cases.push(("truncated", truncated.into()));
    for (i, (expect, blob)) in cases.into_iter().enumerate() {
        let root = Hash::of(&blob);
        let peer = FakePeer::new().serving([blob, list.clone()]).start().await;
        let out = dir.path().join(format!("out{i}"));
        let err = fetch(&fetcher, root, vec![peer.addr], out.clone()).await.unwrap_err();
        assert!(matches!(err, FetchError::BadManifest { .. }), "case {i}: {err}");
        assert!(err.to_string().contains(expect), "case {i}: {err}");
        assert!(!out.exists() && !pex::fetch::part_path(&out).exists(), "case {i} wrote something");
    }
    // A consistent manifest for 100 TiB: refused before downloading, with the numbers.
    let size: u64 = 100 << 40;
    let lists = Manifest::lists_for(Manifest::pieces_for(size)) as usize;
    let huge = Manifest { name: "huge".into(), size, lists: vec![Hash::of(b"l"); lists] }.encode();
    let root = Hash::of(&huge);
    let peer = FakePeer::new().serving([huge]).start().await;
    let err = fetch(&fetcher, root, vec![peer.addr], dir.path().join("huge")).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("not enough disk space") && text.contains("need 100 TiB"), "{text}");
    assert!(!pex::fetch::part_path(&dir.path().join("huge")).exists());
}

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

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endgame_does_not_wait_on_a_very_slow_peer() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(4 * MIB, 21);
    // The slow seeder alone would need 64 s for this file; the fast one a blink.
    let crawl = Config { max_upload_rate: Some(64 << 10), ..test_config() };
    let (slow, info, s) = seeder(&dir.path().join("slow").tap_mkdir(), "f", &bytes, crawl).await;
    let (_fast, _, f) = seeder(&dir.path().join("fast").tap_mkdir(), "f", &bytes, test_config()).await;
    let fetcher = node_in(&dir.path().join("fetcher"), test_config()).await;
    let out = dir.path().join("out");
    // Only the slow peer at first, so it certainly holds ASKs; then the fast one.
    let (task, mut rx) = spawn_fetch(&fetcher, info.root, vec![s], out.clone());
    tokio::time::timeout(PATIENCE, rx.wait_for(|p| p.total_bytes > 0)).await.unwrap().unwrap();
    fetcher.add_peer(f);
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap().unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes);
    // Whatever the slow peer was asked for was fetched again from the fast one.
    assert!(slow.stats().uploaded_bytes < MIB as u64, "the slow peer delivered {} bytes", slow.stats().uploaded_bytes);
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

/// A file described by hand: its manifest, one hash list naming `pieces`, and the blobs.
fn file_of(name: &str, size: u64, pieces: &[Bytes]) -> (Hash, Vec<Bytes>) {
    use pex::manifest::Manifest;
    let list: Vec<u8> = pieces.iter().flat_map(|p| Hash::of(p).0).collect();
    let list = Bytes::from(list);
    let manifest = Manifest { name: name.into(), size, lists: vec![Hash::of(&list)] }.encode();
    let root = Hash::of(&manifest);
    let mut blobs = vec![manifest, list];
    blobs.extend(pieces.iter().cloned());
    (root, blobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_of_the_wrong_length_is_rejected_even_though_its_hash_matches() {
    let dir = tempfile::tempdir().unwrap();
    let fetcher = node_in(&dir.path().join("f"), test_config()).await;
    let piece = |len: usize, seed: u64| Bytes::from(data(len, seed));
    let cases = [
        // The hash list names, for the middle piece, a blob 1,000 bytes short of 1 MiB.
        ("short middle piece", 3 * MIB as u64, vec![piece(MIB, 1), piece(MIB - 1000, 2), piece(MIB, 3)]),
        // The last piece should be 5,000 bytes; the blob the list names has 4,000.
        ("short last piece", 2 * MIB as u64 + 5000, vec![piece(MIB, 4), piece(MIB, 5), piece(4000, 6)]),
        // And 6,000: longer than the file has room for.
        ("long last piece", 2 * MIB as u64 + 5000, vec![piece(MIB, 7), piece(MIB, 8), piece(6000, 9)]),
    ];
    for (i, (case, size, pieces)) in cases.into_iter().enumerate() {
        let (root, blobs) = file_of(&format!("f{i}"), size, &pieces);
        let seeder = FakePeer::new().serving(blobs).start().await;
        let out = dir.path().join(format!("out{i}"));
        let rejected = fetcher.stats().pieces_rejected;
        let result = fetch_with(&fetcher, root, failing_fetch(out.clone(), vec![seeder.addr])).await;
        if let Ok(done) = &result {
            let file = std::fs::read(&done.path).unwrap();
            let hole = if i == 0 { &file[2 * MIB - 1000..2 * MIB] } else { &file[2 * MIB + 4000..] };
            let zeros = hole.iter().all(|b| *b == 0);
            panic!(
                "{case}: the fetch succeeded: {} bytes at the output path, the bytes no piece gave all zero: {zeros}",
                file.len()
            );
        }
        assert!(!out.exists(), "{case}: something appeared at the output path");
        assert!(fetcher.stats().pieces_rejected > rejected, "{case}: no piece was rejected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_list_of_the_wrong_length_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fetcher = node_in(&dir.path().join("f"), test_config()).await;
    let pieces: Vec<Bytes> = (0..3).map(|i| Bytes::from(data(MIB, 30 + i))).collect();
    // A 3-piece file whose list names 2 pieces, and one whose list names 4.
    for (i, (size, named)) in
        [(3 * MIB as u64, &pieces[..2]), (3 * MIB as u64 - 1, &[&pieces[..], &pieces[..1]].concat()[..])]
            .into_iter()
            .enumerate()
    {
        let (root, blobs) = file_of(&format!("f{i}"), size, named);
        let seeder = FakePeer::new().serving(blobs).start().await;
        let out = dir.path().join(format!("out{i}"));
        let err = fetch_with(&fetcher, root, failing_fetch(out.clone(), vec![seeder.addr])).await.unwrap_err();
        assert!(matches!(err, FetchError::BadManifest { .. }), "case {i}: {err}");
        assert!(!out.exists(), "case {i}: something appeared at the output path");
    }
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
    // The honest seeder is slow, so the liar is certainly asked for pieces.
    let slow = Config { max_upload_rate: Some(2 << 20), ..test_config() };
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

/// Files under `dir`, at any depth, whose contents mention `needle`.
fn files_mentioning(dir: &std::path::Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_mentioning(&path, needle));
        } else if std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes())) {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_fails_before_any_piece_is_verified_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let fetcher = node_in(&dir.path().join("f"), test_config()).await;
    let data_dir = fetcher.data_dir().unwrap().path().to_owned();
    let pieces: Vec<Bytes> = (0..3).map(|i| Bytes::from(data(MIB, 50 + i))).collect();
    let (short_root, short_list) = file_of("short", 3 * MIB as u64, &pieces[..2]);
    let (corrupt_root, corrupt) = file_of("corrupt", 3 * MIB as u64, &pieces);
    let (missing_root, missing) = file_of("missing", 3 * MIB as u64, &pieces);
    let cases = [
        ("a hash list one hash short", short_root, FakePeer::new().serving(short_list)),
        // Manifest and list only: every piece is answered with garbage, or with DONT_HAVE.
        ("pieces that never verify", corrupt_root, FakePeer::new().serving(corrupt[..2].to_vec()).corrupting()),
        ("pieces nobody has", missing_root, FakePeer::new().serving(missing[..2].to_vec())),
    ];
    for (i, (case, root, peer)) in cases.into_iter().enumerate() {
        let peer = peer.start().await;
        let out = dir.path().join(format!("out{i}"));
        let part = pex::fetch::part_path(&out);
        let err = fetch_with(&fetcher, root, failing_fetch(out.clone(), vec![peer.addr])).await.unwrap_err();
        let part_name = part.file_name().unwrap().to_str().unwrap();
        let records = files_mentioning(&data_dir, part_name);
        assert!(!out.exists(), "{case} ({err}): something appeared at the output path");
        assert!(!part.exists(), "{case} ({err}): {} was left behind", part.display());
        assert!(
            fetcher.data_dir().unwrap().load_partial(&root).unwrap().is_none(),
            "{case}: a partial record was left"
        );
        assert!(records.is_empty(), "{case}: left behind, naming the .part: {records:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_fails_after_verifying_a_piece_keeps_the_part_and_its_record_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(3 * MIB, 53);
    let (_seeder, info, honest) = seeder(dir.path(), "f", &bytes, test_config()).await;
    // A peer with only the first piece (it says so when asked for its BITFIELD).
    let partial = FakePeer::new()
        .serving_meta(&info)
        .serving([Bytes::copy_from_slice(&bytes[..MIB])])
        .bitfield(info.root, Bytes::from_static(&[0x80]))
        .start()
        .await;
    let fetcher = node_in(&dir.path().join("fetcher"), test_config()).await;
    let data_dir = fetcher.data_dir().unwrap().path().to_owned();
    let out = dir.path().join("out");
    let part = pex::fetch::part_path(&out);
    let err = fetch_with(&fetcher, info.root, failing_fetch(out.clone(), vec![partial.addr])).await.unwrap_err();
    assert!(!out.exists(), "{err}");
    assert!(part.exists(), "{err}: the .part holding a verified piece is gone");
    assert!(fetcher.data_dir().unwrap().load_partial(&info.root).unwrap().is_some(), "{err}: no partial record");
    let part_name = part.file_name().unwrap().to_str().unwrap();
    assert!(!files_mentioning(&data_dir, part_name).is_empty(), "no record in the data directory names the .part");
    // The same command again, now with a peer that has it all, resumes.
    let outcome = fetch(&fetcher, info.root, vec![honest], out.clone()).await.unwrap();
    assert_eq!(outcome.resumed_bytes, MIB as u64);
    assert!(std::fs::read(&out).unwrap() == bytes);
    assert!(!part.exists());
    assert!(fetcher.data_dir().unwrap().load_partial(&info.root).unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_name_of_255_bytes_seeds_and_fetches_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    // The spec's longest name, in bytes (127 two-byte characters and one more).
    let name = "é".repeat(127) + "x";
    assert_eq!(name.len(), pex::manifest::MAX_NAME_LEN);
    let bytes = data(2 * MIB + 3, 54);
    let (_seeder, info, addr) = seeder(&dir.path().join("s").tap_mkdir(), &name, &bytes, test_config()).await;
    assert_eq!(info.manifest.name, name);
    let fetcher = node_in(&dir.path().join("fetcher"), test_config()).await;
    let out_dir = dir.path().join("out").tap_mkdir();
    let outcome = fetch(&fetcher, info.root, vec![addr], out_dir.join(&name)).await.unwrap();
    assert!(std::fs::read(&outcome.path).unwrap() == bytes);
    let names: Vec<_> = std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [std::ffi::OsString::from(&name)], "only the file itself is left");
}
