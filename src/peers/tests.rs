//! The peers rules, each pinned by a test.
use super::*;

#[test]
fn addresses_that_can_never_be_peers_are_refused_in_every_form() {
    for bad in [
        "[::]:9000",
        "0.0.0.0:9000",
        "255.255.255.255:9000",
        "[::ffff:255.255.255.255]:9000",
        "[::ffff:0.0.0.0]:9000",
        "[::ffff:224.0.0.1]:9000",
        "224.0.0.1:9000",
        "[ff02::1]:9000",
        "[::1]:0",
    ] {
        let a: SocketAddr = bad.parse().unwrap();
        assert!(undialable(&a).is_some(), "{bad}");
        let mut t = PeerTable::default();
        t.add(a, true);
        assert!(t.is_empty(), "{bad} entered the table");
    }
    for good in ["[::1]:9000", "127.0.0.1:9000", "[::ffff:127.0.0.1]:9000", "[fd00::1]:1"] {
        assert_eq!(undialable(&good.parse().unwrap()), None, "{good}");
        let mut t = PeerTable::default();
        t.add(good.parse().unwrap(), false);
        assert!(!t.is_empty() && t.len() == 1, "{good} did not enter the table");
    }
}

#[test]
fn bad_endings_back_off_exponentially_and_a_good_one_resets() {
    let mut t = PeerTable::default();
    t.add(addr(1), true);
    let mut last = Duration::ZERO;
    for i in 0..8 {
        t.verified(addr(1), NodeId([1; 32]), true);
        t.ended(addr(1), Some("protocol violation".into()));
        let wait = t.get(&addr(1)).unwrap().next_try.saturating_duration_since(Instant::now());
        let base = BACKOFF_START.saturating_mul(1 << i).min(BACKOFF_MAX);
        assert!(wait + Duration::from_millis(50) >= base && wait <= base.mul_f64(1.25), "{i}: {wait:?}");
        assert!(wait + Duration::from_millis(50) >= last.min(BACKOFF_MAX));
        last = wait;
    }
    t.ended(addr(1), None);
    assert_eq!(t.get(&addr(1)).unwrap().failures, 0);
    assert!(t.due(Instant::now(), true).contains(&addr(1)));
}

fn addr(i: u32) -> SocketAddr {
    SocketAddr::new(std::net::Ipv6Addr::from((0xfd00_u128 << 112) | i as u128).into(), 9000)
}

#[test]
fn table_stays_bounded_and_keeps_verified_and_pinned_peers() {
    let mut t = PeerTable::default();
    t.add(addr(0), true);
    t.verified(addr(1), NodeId([1; 32]), true);
    for i in 2..(MAX_KNOWN_PEERS as u32 + 500) {
        t.add(addr(i), false);
    }
    assert_eq!(t.len(), MAX_KNOWN_PEERS);
    assert!(t.get(&addr(0)).is_some() && t.get(&addr(1)).is_some());
    // A full table still makes room for a verified address and a pinned one.
    t.verified(addr(9_999), NodeId([9; 32]), true);
    t.add(addr(10_000), true);
    assert!(t.get(&addr(9_999)).is_some() && t.get(&addr(10_000)).is_some());
    assert_eq!(t.len(), MAX_KNOWN_PEERS);
    // Learned addresses that keep failing are pruned.
    for _ in 0..MAX_FAILURES {
        t.failed(addr(5), "refused".into());
    }
    t.prune();
    assert!(t.get(&addr(5)).is_none());
}

#[test]
fn only_verified_peers_are_shared_and_failures_back_off() {
    let mut t = PeerTable::default();
    t.add(addr(1), false);
    t.verified(addr(2), NodeId([2; 32]), true);
    assert_eq!(addrs(&t, 50, None), vec![addr(2)]);
    let now = Instant::now();
    assert_eq!(t.due(now, true).len(), 2);
    assert_eq!(t.due(now, false).len(), 0, "without pex only pinned peers are dialled");
    t.failed(addr(1), "refused".into());
    assert!(!t.due(Instant::now(), true).contains(&addr(1)));
}

fn id(i: u8) -> NodeId {
    NodeId([i; 32])
}

/// Fills the table with learned addresses `range`.
fn learn(t: &mut PeerTable, range: std::ops::Range<u32>) {
    for i in range {
        t.add(addr(i), false);
    }
}

/// A short pause, so that two contacts get distinct instants.
fn tick() {
    std::thread::sleep(Duration::from_millis(2));
}

#[test]
fn a_full_table_drops_newly_learned_addresses_and_keeps_what_it_has() {
    let mut t = PeerTable::default();
    let max = MAX_KNOWN_PEERS as u32;
    learn(&mut t, 0..max);
    assert_eq!(t.len(), MAX_KNOWN_PEERS);
    learn(&mut t, max..max + 10);
    assert_eq!(t.len(), MAX_KNOWN_PEERS, "never more than {MAX_KNOWN_PEERS}");
    assert!((max..max + 10).all(|i| t.get(&addr(i)).is_none()), "a learned address is dropped");
    assert!((0..max).all(|i| t.get(&addr(i)).is_some()), "and evicts nothing");
    // An address already known may still be pinned by the user.
    t.add(addr(3), true);
    assert!(t.get(&addr(3)).unwrap().pinned);
    assert_eq!(t.len(), MAX_KNOWN_PEERS);
}

#[test]
fn a_pinned_address_evicts_a_never_verified_entry_before_any_verified_one() {
    let mut t = PeerTable::default();
    let max = MAX_KNOWN_PEERS as u32;
    // addr(1) is the worst verified entry: first contacted, three failures.
    t.verified(addr(1), id(1), true);
    tick();
    for i in 2..max {
        t.verified(addr(i), id(2), true);
    }
    for _ in 0..3 {
        t.failed(addr(1), "refused".into());
    }
    // The one never verified is fresh and has never failed.
    t.add(addr(max), false);
    assert_eq!(t.len(), MAX_KNOWN_PEERS);
    t.add(addr(max + 1), true);
    assert_eq!(t.len(), MAX_KNOWN_PEERS);
    assert!(t.get(&addr(max + 1)).is_some(), "the pinned address got in");
    assert!(t.get(&addr(max)).is_none(), "the never-verified entry made room");
    assert!((1..max).all(|i| t.get(&addr(i)).is_some()), "no verified entry was evicted");
}

#[test]
fn eviction_takes_the_entry_with_most_failures_then_the_longest_since_contact() {
    let mut t = PeerTable::default();
    let max = MAX_KNOWN_PEERS as u32;
    // addr(0) entered last but was contacted first.
    learn(&mut t, 1..max);
    t.add(addr(0), false);
    t.verified(addr(0), id(1), true);
    tick();
    for i in 1..max {
        t.verified(addr(i), id(2), true);
    }
    // addr(7), contacted recently, failed once.
    t.failed(addr(7), "refused".into());
    t.add(addr(max), true);
    assert!(t.get(&addr(7)).is_none(), "most failures goes first");
    assert!(t.get(&addr(0)).is_some());
    t.add(addr(max + 1), true);
    assert!(t.get(&addr(0)).is_none(), "then the longest since contact, not the first added");
    assert!(t.get(&addr(1)).is_some());
    assert_eq!(t.len(), MAX_KNOWN_PEERS);
    assert!(t.get(&addr(max)).is_some() && t.get(&addr(max + 1)).is_some());
}

#[test]
fn pinned_entries_are_never_evicted() {
    let mut t = PeerTable::default();
    let max = MAX_KNOWN_PEERS as u32;
    for i in 0..max - 1 {
        t.add(addr(i), true);
    }
    // Pinned entries that keep failing are still worth less than nothing to evict.
    for _ in 0..5 {
        t.failed(addr(0), "refused".into());
    }
    // The only unpinned entry is verified and has never failed.
    t.verified(addr(max), id(1), true);
    t.add(addr(max + 1), true);
    assert!(t.get(&addr(max)).is_none(), "the only unpinned entry made room");
    assert!((0..max - 1).all(|i| t.get(&addr(i)).is_some()));
    // All pinned now: nothing can make room.
    t.add(addr(max + 2), true);
    t.verified(addr(max + 3), id(3), true);
    assert!(t.get(&addr(max + 2)).is_none() && t.get(&addr(max + 3)).is_none());
    assert_eq!(t.len(), MAX_KNOWN_PEERS);
    assert!((0..max - 1).all(|i| t.get(&addr(i)).is_some()));
}

#[test]
fn a_verified_address_makes_room_in_a_full_table_and_so_does_one_found_to_be_self() {
    let mut t = PeerTable::default();
    let max = MAX_KNOWN_PEERS as u32;
    learn(&mut t, 0..max);
    assert!(t.verified(addr(max), id(1), true));
    assert!(t.get(&addr(max)).is_some_and(|e| e.verified));
    assert_eq!(addrs(&t, 50, None), vec![addr(max)]);
    // An address that turned out to be ourselves is remembered, never to be dialled again.
    t.mark_self(addr(max + 1));
    assert!(t.get(&addr(max + 1)).is_some_and(|e| e.is_self));
    assert_eq!(t.len(), MAX_KNOWN_PEERS);
}

#[test]
fn prune_forgets_only_learned_never_verified_addresses_after_4_failures() {
    let mut t = PeerTable::default();
    let fail = |t: &mut PeerTable, i: u32, n: u32| {
        for _ in 0..n {
            t.failed(addr(i), "refused".into());
        }
    };
    t.add(addr(0), false);
    t.add(addr(3), false);
    fail(&mut t, 3, 3);
    t.add(addr(4), false);
    fail(&mut t, 4, 4);
    t.add(addr(5), false);
    fail(&mut t, 5, 9);
    t.add(addr(10), true);
    fail(&mut t, 10, 9);
    t.verified(addr(11), id(11), true);
    fail(&mut t, 11, 9);
    t.mark_self(addr(12));
    fail(&mut t, 12, 9);
    t.prune();
    assert!(t.get(&addr(0)).is_some() && t.get(&addr(3)).is_some(), "fewer than 4 failures: kept");
    assert!(t.get(&addr(4)).is_none() && t.get(&addr(5)).is_none(), "4 failures or more: forgotten");
    assert!(t.get(&addr(10)).is_some(), "pinned: kept");
    assert!(t.get(&addr(11)).is_some(), "verified: kept");
    assert!(t.get(&addr(12)).is_some(), "self: kept (so it is never dialled again)");
    assert_eq!(t.len(), 5);
}

#[test]
fn due_lists_pinned_addresses_first_never_before_next_try_and_never_self() {
    let mut t = PeerTable::default();
    // Pinned addresses sort after the learned ones by address, so order
    // comes from pinning alone.
    learn(&mut t, 0..20);
    let pinned: Vec<SocketAddr> = (100..105).map(addr).collect();
    for a in &pinned {
        t.add(*a, true);
    }
    let now = Instant::now();
    let due = t.due(now, true);
    assert_eq!(due.len(), 25);
    let mut first: Vec<SocketAddr> = due[..5].to_vec();
    first.sort();
    assert_eq!(first, pinned, "pinned first: {due:?}");
    // Without peer exchange only pinned addresses are dialled.
    let mut without = t.due(now, false);
    without.sort();
    assert_eq!(without, pinned);
    // Not before next_try, and from then on.
    t.failed(addr(0), "refused".into());
    t.failed(addr(100), "refused".into());
    let now = Instant::now();
    assert!(!t.due(now, true).contains(&addr(0)));
    assert!(!t.due(now, true).contains(&addr(100)));
    let next = t.get(&addr(0)).unwrap().next_try;
    assert!(!t.due(next - Duration::from_millis(1), true).contains(&addr(0)));
    assert!(t.due(next, true).contains(&addr(0)));
    let next = t.get(&addr(100)).unwrap().next_try;
    assert_eq!(t.due(next, false).first(), Some(&addr(100)));
    // Ourselves: never, pinned or not.
    t.mark_self(addr(101));
    t.mark_self(addr(1));
    let later = Instant::now() + Duration::from_secs(3600);
    for pex in [true, false] {
        let due = t.due(later, pex);
        assert!(!due.contains(&addr(101)) && !due.contains(&addr(1)), "{due:?}");
    }
    assert_eq!(t.due(later, true).len(), 23);
}

#[test]
fn only_verified_addresses_are_shared_newest_contact_first_at_most_max() {
    let mut t = PeerTable::default();
    t.add(addr(1), false);
    t.add(addr(2), true);
    t.verified(addr(10), id(10), true);
    tick();
    t.verified(addr(11), id(11), true);
    tick();
    t.verified(addr(12), id(12), true);
    assert_eq!(addrs(&t, 50, None), vec![addr(12), addr(11), addr(10)]);
    assert_eq!(addrs(&t, 2, None), vec![addr(12), addr(11)]);
    assert_eq!(addrs(&t, 0, None), Vec::<SocketAddr>::new());
    tick();
    t.verified(addr(10), id(10), true);
    assert_eq!(addrs(&t, 50, None), vec![addr(10), addr(12), addr(11)], "a new contact moves it up");
}

#[test]
fn addresses_of_ourselves_or_failing_3_times_are_not_shared() {
    let mut t = PeerTable::default();
    t.verified(addr(1), id(1), true);
    t.failed(addr(1), "refused".into());
    t.failed(addr(1), "refused".into());
    assert_eq!(addrs(&t, 50, None), vec![addr(1)], "2 failures: still shared");
    t.failed(addr(1), "refused".into());
    assert!(addrs(&t, 50, None).is_empty(), "3 failures: not shared");
    t.ended(addr(1), None);
    assert_eq!(addrs(&t, 50, None), vec![addr(1)], "a good ending forgets the failures");
    // Ourselves, even if a HELLO completed there.
    t.verified(addr(2), id(2), true);
    t.mark_self(addr(2));
    assert_eq!(addrs(&t, 50, None), vec![addr(1)]);
    t.verified(addr(2), id(2), true);
    assert_eq!(addrs(&t, 50, None), vec![addr(1)]);
}

#[test]
fn shareable_since_keeps_addresses_added_or_verified_after_it() {
    let mut t = PeerTable::default();
    t.verified(addr(1), id(1), true);
    tick();
    t.verified(addr(2), id(2), true);
    let since = t.get(&addr(2)).unwrap().last_seen.unwrap();
    assert!(addrs(&t, 50, Some(since)).is_empty(), "nothing strictly after {since:?}");
    tick();
    t.verified(addr(3), id(3), true);
    assert_eq!(addrs(&t, 50, Some(since)), vec![addr(3)]);
    tick();
    t.verified(addr(1), id(1), true);
    assert_eq!(addrs(&t, 50, Some(since)), vec![addr(1), addr(3)], "re-verified counts as new");
    assert_eq!(addrs(&t, 1, Some(since)), vec![addr(1)]);
    assert_eq!(addrs(&t, 50, None).len(), 3);
}

#[test]
fn failed_dials_wait_half_a_second_then_double_up_to_8_s_plus_a_quarter_at_most() {
    let mut t = PeerTable::default();
    t.add(addr(1), false);
    for i in 0..40u32 {
        let before = Instant::now();
        t.failed(addr(1), format!("refused {i}"));
        let after = Instant::now();
        let e = t.get(&addr(1)).unwrap();
        assert_eq!(e.failures, i + 1);
        assert_eq!(e.last_error.as_deref(), Some(format!("refused {i}").as_str()));
        let base = Duration::from_millis(500).saturating_mul(1 << i.min(20)).min(Duration::from_secs(8));
        assert!(e.next_try >= before + base, "{i}: {:?} < {base:?}", e.next_try - before);
        assert!(e.next_try <= after + base.mul_f64(1.25), "{i}: {:?} > {base:?} + 25 %", e.next_try - after);
    }
}

#[test]
fn the_backoff_jitter_varies_up_to_a_quarter() {
    let base = Duration::from_millis(500);
    let (mut low, mut high) = (false, false);
    for i in 0..300 {
        let mut t = PeerTable::default();
        t.add(addr(i), false);
        let before = Instant::now();
        t.failed(addr(i), "refused".into());
        let after = Instant::now();
        let next = t.get(&addr(i)).unwrap().next_try;
        // The jitter lies between these two.
        let (most, least) = (next - before - base, next.saturating_duration_since(after + base));
        assert!(least <= base / 4);
        low |= most < base / 20;
        high |= least > base / 5;
    }
    assert!(low && high, "jitter spread over 0..25 %: some under 5 %: {low}, some over 20 %: {high}");
}

#[test]
fn a_completed_hello_does_not_reset_the_backoff_but_a_good_ending_does() {
    let mut t = PeerTable::default();
    t.add(addr(1), false);
    for _ in 0..3 {
        t.failed(addr(1), "refused".into());
    }
    let next = t.get(&addr(1)).unwrap().next_try;
    assert!(t.verified(addr(1), id(1), true), "verified the first time");
    assert!(!t.verified(addr(1), id(1), true), "not the second");
    let e = t.get(&addr(1)).unwrap();
    assert_eq!((e.failures, e.next_try), (3, next), "a HELLO alone resets nothing");
    assert_eq!(e.last_error, None);
    assert_eq!(e.node_id, Some(id(1)));
    assert!(!t.due(Instant::now(), true).contains(&addr(1)));
    // A bad ending counts as a failure ...
    let before = Instant::now();
    t.ended(addr(1), Some("closed after 1 s".into()));
    let e = t.get(&addr(1)).unwrap();
    assert_eq!(e.failures, 4);
    assert!(e.next_try >= before + Duration::from_secs(4));
    assert_eq!(e.last_error.as_deref(), Some("closed after 1 s"));
    // ... and a good one forgets them all.
    t.ended(addr(1), None);
    let e = t.get(&addr(1)).unwrap();
    assert_eq!(e.failures, 0);
    assert!(t.due(Instant::now(), true).contains(&addr(1)));
    let before = Instant::now();
    t.failed(addr(1), "refused".into());
    assert!(t.get(&addr(1)).unwrap().next_try <= Instant::now() + BACKOFF_START.mul_f64(1.25));
    assert!(t.get(&addr(1)).unwrap().next_try >= before + BACKOFF_START, "the back-off starts over");
    // Endings of unknown addresses are not recorded.
    t.ended(addr(2), None);
    t.ended(addr(3), Some("reset".into()));
    t.failed(addr(4), "refused".into());
    assert_eq!(t.len(), 1);
}

#[test]
fn undialable_names_the_reason_for_every_kind_of_address() {
    for (bad, why) in [
        ("1.2.3.4:0", "port 0"),
        ("[fd00::1]:0", "port 0"),
        ("[::ffff:1.2.3.4]:0", "port 0"),
        ("0.0.0.0:1", "an unspecified address"),
        ("[::]:1", "an unspecified address"),
        ("[::ffff:0.0.0.0]:1", "an unspecified address"),
        ("224.0.0.1:1", "a multicast address"),
        ("239.255.255.250:1900", "a multicast address"),
        ("[ff02::1]:1", "a multicast address"),
        ("[ff0e::1234]:1", "a multicast address"),
        ("[::ffff:239.1.2.3]:1", "a multicast address"),
        ("255.255.255.255:1", "the broadcast address"),
        ("[::ffff:255.255.255.255]:1", "the broadcast address"),
    ] {
        let a: SocketAddr = bad.parse().unwrap();
        assert_eq!(undialable(&a), Some(why), "{bad}");
        let mut t = PeerTable::default();
        t.add(a, true);
        t.add(a, false);
        t.verified(a, id(1), true);
        t.mark_self(a);
        assert!(t.is_empty(), "{bad} entered the table");
        assert!(t.due(Instant::now() + Duration::from_secs(60), true).is_empty());
    }
    for good in [
        "1.2.3.4:1",
        "127.0.0.1:65535",
        "255.255.255.254:1",
        "223.255.255.255:1",
        "240.0.0.1:1",
        "[::1]:1",
        "[::ffff:1.2.3.4]:1",
        "[fe80::1]:1",
        "[fd00::1]:9000",
    ] {
        let a: SocketAddr = good.parse().unwrap();
        assert_eq!(undialable(&a), None, "{good}");
        let mut t = PeerTable::default();
        t.add(a, false);
        assert_eq!(t.len(), 1, "{good}");
    }
}

#[test]
fn an_address_found_to_be_ourselves_is_never_dialled_or_shared() {
    let mut t = PeerTable::default();
    t.add(addr(1), true);
    t.verified(addr(1), id(1), true);
    assert_eq!(addrs(&t, 50, None), vec![addr(1)]);
    t.mark_self(addr(1));
    let e = t.get(&addr(1)).unwrap();
    assert!(e.is_self && !e.verified && e.pinned);
    assert!(addrs(&t, 50, None).is_empty());
    // Learning it again changes nothing.
    t.add(addr(1), false);
    t.add(addr(1), true);
    let later = Instant::now() + Duration::from_secs(3600);
    assert!(t.due(later, true).is_empty() && t.due(later, false).is_empty());
    t.prune();
    assert!(t.get(&addr(1)).is_some_and(|e| e.is_self), "remembered");
}

#[test]
fn removed_addresses_are_forgotten() {
    let mut t = PeerTable::default();
    t.add(addr(1), true);
    t.verified(addr(2), id(2), true);
    t.add(addr(3), false);
    t.remove(&addr(1));
    t.remove(&addr(2));
    t.remove(&addr(9));
    assert_eq!(t.len(), 1);
    assert!(t.get(&addr(1)).is_none() && t.get(&addr(2)).is_none());
    assert_eq!(t.due(Instant::now(), true), vec![addr(3)]);
    assert!(addrs(&t, 50, None).is_empty());
    t.remove(&addr(3));
    assert!(t.is_empty());
    // Coming back, it starts afresh.
    t.add(addr(2), false);
    assert!(t.get(&addr(2)).is_some_and(|e| !e.verified && !e.pinned));
}

#[test]
fn adding_a_known_address_may_pin_it_but_never_unpins_it() {
    let mut t = PeerTable::default();
    t.add(addr(1), false);
    assert!(!t.get(&addr(1)).unwrap().pinned);
    t.add(addr(1), true);
    assert!(t.get(&addr(1)).unwrap().pinned);
    t.add(addr(1), true);
    t.add(addr(1), false);
    t.verified(addr(1), id(1), true);
    assert!(t.get(&addr(1)).unwrap().pinned);
    assert_eq!(t.len(), 1);
    assert_eq!(t.due(Instant::now(), false), vec![addr(1)]);
}

/// The addresses [`PeerTable::shareable`] gives, without their node ids.
fn addrs(t: &PeerTable, max: usize, since: Option<Instant>) -> Vec<SocketAddr> {
    t.shareable(max, since).into_iter().map(|(a, _)| a).collect()
}

#[test]
fn only_nodes_that_allow_it_are_shared_and_with_their_ids() {
    let mut t = PeerTable::default();
    t.verified(addr(1), id(1), true);
    t.verified(addr(2), id(2), false);
    assert_eq!(t.shareable(50, None), vec![(addr(1), id(1))]);
}

#[test]
fn a_pin_from_the_user_replaces_a_learned_one_and_retry_after_is_honoured() {
    let mut t = PeerTable::default();
    t.add(addr(1), false);
    t.expect(addr(1), id(1), false);
    t.expect(addr(1), id(2), false);
    assert_eq!(t.get(&addr(1)).unwrap().expected, Some(id(1)), "a learned pin fills only an empty one");
    t.expect(addr(1), id(3), true);
    assert_eq!(t.get(&addr(1)).unwrap().expected, Some(id(3)));
    let now = Instant::now();
    t.retry_after(addr(1), 30);
    assert!(t.get(&addr(1)).unwrap().next_try >= now + std::time::Duration::from_secs(30));
    assert!(t.due(now + std::time::Duration::from_secs(29), true).is_empty());
    t.retry_after(addr(1), 0);
    assert!(t.get(&addr(1)).is_none(), "0: a learned address is forgotten");
    t.add(addr(2), true);
    t.expect(addr(2), id(2), false);
    assert_eq!(t.get(&addr(2)).unwrap().expected, None, "no learned pin on an address the user gave");
    t.retry_after(addr(2), 0);
    assert!(t.get(&addr(2)).is_some(), "one the user gave is kept");
}

#[test]
fn an_address_the_user_gives_after_learning_it_drops_the_learned_pin() {
    let mut t = PeerTable::default();
    t.add(addr(1), false);
    t.expect(addr(1), id(1), false);
    t.add(addr(1), true);
    assert_eq!(t.get(&addr(1)).unwrap().expected, None);
}
