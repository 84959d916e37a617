//! Wire protocol v2 against real nodes on [::1]: what a man in the middle sees
//! and can do, node ids that cannot be forged or replayed, pins, the duplicate
//! rule, retry-after, and the answer to a v1 client.

use super::*;
use pex::FetchOptions;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP relay on [::1] in front of `target` that records every byte in both
/// directions and, on its first connection only, may flip one bit of what
/// `target` sends, `flip_at` bytes into the connection.
struct Relay {
    addr: SocketAddr,
    captured: Arc<Mutex<Vec<u8>>>,
    conns: Arc<AtomicUsize>,
    /// Set once the client side of the tampered connection closed it.
    tampered_closed: Arc<tokio::sync::Notify>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Relay {
    async fn start(target: SocketAddr, flip_at: Option<usize>) -> Relay {
        let listener = TcpListener::bind("[::1]:0").await.unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            captured: Arc::new(Mutex::new(Vec::new())),
            conns: Arc::new(AtomicUsize::new(0)),
            tampered_closed: Arc::new(tokio::sync::Notify::new()),
            stop: tokio_util::sync::CancellationToken::new(),
        };
        let (captured, conns, closed, stop) =
            (relay.captured.clone(), relay.conns.clone(), relay.tampered_closed.clone(), relay.stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => r.unwrap().0,
                };
                let first = conns.fetch_add(1, Ordering::SeqCst) == 0;
                let Ok(server) = TcpStream::connect(target).await else { continue };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (up_cap, down_cap, closed, stop) =
                    (captured.clone(), captured.clone(), closed.clone(), stop.clone());
                let flip = if first { flip_at } else { None };
                tokio::spawn(async move {
                    let up = async {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    up_cap.lock().unwrap().extend_from_slice(&buf[..n]);
                                    if sw.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        if flip.is_some() {
                            closed.notify_one();
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async {
                        let mut buf = vec![0u8; 64 << 10];
                        let mut seen = 0usize;
                        loop {
                            match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if let Some(at) = flip.filter(|at| (seen..seen + n).contains(at)) {
                                        buf[at - seen] ^= 0x04;
                                    }
                                    seen += n;
                                    down_cap.lock().unwrap().extend_from_slice(&buf[..n]);
                                    if cw.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = cw.shutdown().await;
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = async { tokio::join!(up, down) } => {}
                    }
                });
            }
        });
        relay
    }

    fn captured(&self) -> Vec<u8> {
        self.captured.lock().unwrap().clone()
    }
}

/// Whether `haystack` contains any 32-byte run of `file`. Every such run
/// contains one of the file's 8-byte words at an offset divisible by 8, so
/// only those are indexed, and each hit is checked in full.
fn contains_a_run_of(haystack: &[u8], file: &[u8]) -> bool {
    let mut words: HashMap<[u8; 8], Vec<usize>> = HashMap::new();
    for (i, w) in file.chunks_exact(8).enumerate() {
        words.entry(w.try_into().unwrap()).or_default().push(i * 8);
    }
    for p in 0..haystack.len().saturating_sub(7) {
        let Some(offsets) = words.get(&haystack[p..p + 8]) else { continue };
        for &j in offsets {
            // The run starts up to 24 bytes before this word.
            for back in 0..=24usize {
                let (Some(h), Some(f)) = (p.checked_sub(back), j.checked_sub(back)) else { break };
                if haystack.get(h..h + 32).is_some_and(|run| Some(run) == file.get(f..f + 32)) {
                    return true;
                }
            }
        }
    }
    false
}

#[test]
fn the_run_search_finds_what_it_should() {
    let file = data(4096, 90);
    let mut hay = data(1000, 91);
    assert!(!contains_a_run_of(&hay, &file));
    hay.extend_from_slice(&file[1001..1033]);
    assert!(contains_a_run_of(&hay, &file), "a run at an odd offset");
    let mut short = data(1000, 92);
    short.extend_from_slice(&file[1001..1032]);
    assert!(!contains_a_run_of(&short, &file), "31 bytes are not a run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_in_the_middle_sees_neither_the_root_nor_any_run_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(3 * MIB + 777, 93);
    let (_seeder, info, addr) = seeder(dir.path(), "secret.bin", &bytes, test_config()).await;
    let relay = Relay::start(addr, None).await;
    let fetcher = node_in(&dir.path().join("fetcher"), Config { pex: false, ..test_config() }).await;
    let out = dir.path().join("out");
    fetch(&fetcher, info.root, vec![relay.addr], out.clone()).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes, "the fetch through the relay is exact");
    let seen = relay.captured();
    assert!(seen.len() > bytes.len(), "the relay carried the whole transfer ({} bytes)", seen.len());
    assert!(!seen.windows(32).any(|w| w == info.root.0), "the root crossed the wire in the clear");
    assert!(!contains_a_run_of(&seen, &bytes), "file content crossed the wire in the clear");
    assert!(!contains_a_run_of(&seen, &info.manifest_blob), "the manifest crossed the wire in the clear");
    assert!(!seen.windows(11).any(|w| w == b"secret.bin\0" || w.starts_with(b"secret.bin")), "the file name leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_ciphertext_bit_closes_that_connection_and_the_fetch_completes_from_another_peer() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(6 * MIB, 94);
    let (_a, info, a) = seeder(&dir.path().join("a").tap_mkdir(), "f", &bytes, test_config()).await;
    let (_b, _, b) = seeder(&dir.path().join("b").tap_mkdir(), "f", &bytes, test_config()).await;
    // 200 KiB into what seeder a sends: inside the first GIVEs.
    let relay = Relay::start(a, Some(200 << 10)).await;
    let fetcher = node_in(&dir.path().join("fetcher"), Config { pex: false, ..test_config() }).await;
    let closed = relay.tampered_closed.notified();
    let out = dir.path().join("out");
    let (task, _rx) = spawn_fetch(&fetcher, info.root, vec![relay.addr], out.clone());
    tokio::time::timeout(PATIENCE, closed).await.expect("the fetcher never closed the tampered connection");
    fetcher.add_peer(b);
    let outcome = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap().unwrap();
    assert!(std::fs::read(&outcome.path).unwrap() == bytes);
    assert_eq!(fetcher.stats().pieces_rejected, 0, "nothing tampered was ever taken for a piece");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_pinned_with_another_node_id_gets_no_frame_after_the_hellos() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(MIB, 95);
    let (_s, info, _) = seeder(dir.path(), "f", &bytes, test_config()).await;
    let impostor = FakePeer::new().serving_meta(&info).start().await;
    // The fetchers do not listen: a node of another test dialling a port this
    // process has reused would otherwise count as a connected peer, and the
    // fetch would give up on it instead of on the impostor.
    let quiet = || Config { listen: None, ..test_config() };
    let fetcher = node_in(&dir.path().join("fetcher"), quiet()).await;
    let wanted = Identity::generate().node_id();
    let opts = FetchOptions { expect: vec![(impostor.addr, wanted)], ..failing_fetch(dir.path().join("out"), vec![]) };
    let err = fetch_with(&fetcher, info.root, opts).await.unwrap_err().to_string();
    assert!(err.contains(&format!("expected node {}", wanted.short())), "{err}");
    assert!(impostor.accepted() >= 1, "it was dialled");
    assert_eq!(impostor.handshakes(), 0, "the node sent PEERS (or more) to a node it was not told to trust");
    assert!(!dir.path().join("out").exists());
    // The right id is accepted there.
    let fetcher = node_in(&dir.path().join("g"), quiet()).await;
    let opts =
        FetchOptions { expect: vec![(impostor.addr, impostor.id)], ..failing_fetch(dir.path().join("o2"), vec![]) };
    let _ = fetch_with(&fetcher, info.root, opts).await;
    assert!(impostor.handshakes() >= 1, "the pinned id was met, yet no PEERS followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_replayed_from_another_connection_or_badly_signed_gets_reject_3() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, _info, addr) = seeder(dir.path(), "f", b"x", test_config()).await;
    let me = Identity::generate();
    let (first, _) = Raw::handshake_as(addr, me.clone()).await;
    let replayed = first.hello(0);
    // The same identity, a new connection, the first connection's (valid) HELLO.
    let mut second = Raw::connect_as(addr, me.clone()).await;
    second.send(&replayed).await;
    assert_eq!(second.expect_reject().await, Some(RejectCode::ProtocolViolation as u8));
    // A HELLO whose signature is one bit off.
    let mut third = Raw::connect(addr).await;
    let Frame::Hello(mut h) = third.hello(0) else { unreachable!() };
    h.signature[10] ^= 1;
    third.send(&Frame::Hello(h)).await;
    assert_eq!(third.expect_reject().await, Some(RejectCode::ProtocolViolation as u8));
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_leave_exactly_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..4 {
        let a = node_in(&dir.path().join(format!("a{round}")), test_config()).await;
        let b = node_in(&dir.path().join(format!("b{round}")), test_config()).await;
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let to = |x: SocketAddr| SocketAddr::new("::1".parse().unwrap(), x.port());
        a.add_peer(to(ba));
        b.add_peer(to(aa));
        let settled = || {
            let (ca, cb) = (a.connections(), b.connections());
            ca.len() == 1 && cb.len() == 1 && ca[0].2 != cb[0].2
        };
        wait_until("one connection that both ends agree on", settled).await;
        // Whichever connections came up, one remains, the same one at both ends (the
        // rule that picks it is checked in the registry's unit tests).
        let (ca, cb) = (a.connections(), b.connections());
        assert_eq!((ca[0].0, cb[0].0), (b.id(), a.id()), "round {round}");
        a.shutdown().await;
        b.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_in_a_reject_delays_the_next_dial() {
    let dir = tempfile::tempdir().unwrap();
    let busy = Frame::Reject { code: RejectCode::PeerLimit as u8, retry_after: 3, reason: "busy".into() };
    let peer = FakePeer::new().then([Step::Frame(busy), Step::Close]).start().await;
    let node = node_in(dir.path(), test_config()).await;
    node.add_peer(peer.addr);
    wait_until("the peer was dialled twice", || peer.accepted() >= 2).await;
    let times = peer.accept_times();
    let gap = times[1] - times[0];
    assert!(gap >= Duration::from_secs(3), "redialled {gap:?} after a REJECT asking for 3 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_client_gets_a_plaintext_v1_reject_saying_this_node_speaks_pex_2() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, info, addr) = seeder(dir.path(), "f", b"still served", test_config()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut v1_hello = vec![0, 0, 0, 39, 3, b'P', b'E', b'X', 1];
    v1_hello.extend_from_slice(&[7; 32]);
    v1_hello.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&v1_hello).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert!(answer.len() > 6, "{answer:?}");
    let len = u32::from_be_bytes(answer[..4].try_into().unwrap()) as usize;
    assert_eq!(len, answer.len() - 4, "one v1 frame, then the close");
    assert_eq!(&answer[4..6], &[7, 3], "REJECT(3)");
    let reason = String::from_utf8(answer[6..].to_vec()).unwrap();
    assert!(reason.contains("pex/2"), "{reason}");
    // And it serves v2 peers as before.
    let (mut raw, _) = Raw::handshake(addr).await;
    raw.send(&Frame::Ask(info.root)).await;
    assert!(matches!(raw.next().await, Some(Frame::Give { .. })));
    drop(seeder);
}
