//! Time-outs, strikes, bans and giving up, on a paused clock.

use super::clock::*;
use super::*;

#[tokio::test(start_paused = true)]
async fn a_silent_peers_asks_move_elsewhere_after_the_ask_timeout_and_a_second_strike_drops_it() {
    let f = File::new(20, 10);
    let h = start(f.info.root, short_asks(Duration::from_secs(2)));
    let mut p1 = Peer::join(&h, 1);
    give_meta(&p1.conn, &mut p1.out, &f.info).await;
    p1.bitfield(&h, f.all());
    settle().await;
    let first = p1.asks();
    assert_eq!(first.len(), MIN_DEPTH);
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
    assert_eq!(asked.len(), MIN_DEPTH);
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
    let mut p1 = Peer::seeding(&h, 1, &f).await;
    let first = p1.asks();
    assert_eq!(first.len(), MIN_DEPTH);
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
    let mut p1 = Peer::seeding(&h, 1, &f).await;
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
    let mut p1 = Peer::seeding(&h, 1, &f).await;
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
    let mut p1 = Peer::seeding(&h, 1, &f).await;
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
    let mut p1 = Peer::seeding(&h, 1, &f).await;
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
