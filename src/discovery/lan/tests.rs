use super::*;

fn key() -> LookupKey {
    LookupKey::of(&crate::hash::Hash([0x11; 32]))
}

#[test]
fn query_and_answer_have_exact_bytes_and_round_trip() {
    let q = Datagram::Query { nonce: [1, 2, 3, 4, 5, 6, 7, 8], key: key() };
    let bytes = q.encode();
    assert_eq!(bytes.len(), QUERY_LEN);
    // The examples in docs/PROTOCOL.md.
    assert_eq!(crate::hash::hex(&bytes), QUERY_HEX);
    assert_eq!(Datagram::decode(&bytes), Ok(q));
    let a = Datagram::Answer { nonce: [1, 2, 3, 4, 5, 6, 7, 8], key: key(), node_id: NodeId([0x22; 32]), port: 9000 };
    let bytes = a.encode();
    assert_eq!(bytes.len(), ANSWER_LEN);
    assert_eq!(crate::hash::hex(&bytes), ANSWER_HEX);
    assert_eq!(Datagram::decode(&bytes), Ok(a));
    // docs/PROTOCOL.md quotes both (spaced and wrapped).
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap();
    let doc: String = doc.split_whitespace().collect();
    assert!(doc.contains(&format!("QUERY{QUERY_HEX}ANSWER{ANSWER_HEX}")), "PROTOCOL.md 10.3 example");
}

/// QUERY, nonce 0102…08, for the lookup key of root 0x11 × 32.
const QUERY_HEX: &str = "7065786c01010102030405060708313f8a6d2e20bb4b9689fa21d09d330b7a8f4f8181f531dd69efebafa0d92460";
/// The ANSWER to it from node 0x22 × 32 listening on TCP port 9000.
const ANSWER_HEX: &str = "7065786c01020102030405060708313f8a6d2e20bb4b9689fa21d09d330b7a8f4f8181f531dd69efebafa0d92460\
2222222222222222222222222222222222222222222222222222222222222222\
2328";

#[test]
fn anything_but_an_exact_query_or_answer_is_refused() {
    let q = Datagram::Query { nonce: [9; 8], key: key() }.encode();
    let a = Datagram::Answer { nonce: [9; 8], key: key(), node_id: NodeId([3; 32]), port: 1 }.encode();
    let mut cases: Vec<Vec<u8>> = vec![Vec::new(), b"pexl".to_vec(), q[..45].to_vec(), a[..79].to_vec()];
    let mut long = q.clone();
    long.push(0);
    cases.push(long);
    let mut long = a.clone();
    long.extend_from_slice(&[0; 1000]);
    cases.push(long);
    for (i, v) in [(0, b'P'), (4, 2), (4, 0), (5, 0), (5, 3)] {
        let mut bad = q.clone();
        bad[i] = v;
        cases.push(bad);
    }
    let mut port0 = a.clone();
    port0[78..80].fill(0);
    cases.push(port0);
    // Each refusal says why (what a -vv log shows).
    assert_eq!(Datagram::decode(&q[..45]), Err("wrong length"));
    assert_eq!(Datagram::decode(&a[..70]), Err("wrong length"));
    assert_eq!(Datagram::decode(&q[..6]), Err("too short"));
    assert_eq!(Datagram::decode(&a[..79]), Err("wrong length"));
    for c in cases {
        assert!(Datagram::decode(&c).is_err(), "{}", crate::hash::hex(&c));
    }
}

fn answers(own: NodeId) -> Answers {
    Answers { key: key(), own, nonces: [[7; 8]].into(), seen: HashSet::new(), per_source: HashMap::new() }
}

fn answer(nonce: [u8; 8], id: u8, port: u16) -> Vec<u8> {
    Datagram::Answer { nonce, key: key(), node_id: NodeId([id; 32]), port }.encode()
}

#[test]
fn answers_must_echo_our_nonce_and_key_and_come_from_a_dialable_source() {
    let mut a = answers(NodeId([1; 32]));
    let src: SocketAddr = "[fe80::5%3]:40000".parse().unwrap();
    // The candidate is the source address (scope kept) with the answer's port.
    let c = a.take(&answer([7; 8], 2, 9000), src).unwrap().unwrap();
    assert_eq!(c.addr, "[fe80::5%3]:9000".parse::<SocketAddr>().unwrap());
    assert_eq!(c.node_id, Some(NodeId([2; 32])));
    assert_eq!(c.means, Means::Lan);
    // The same again is no new candidate; our own id neither.
    assert_eq!(a.take(&answer([7; 8], 2, 9000), src), Ok(None));
    assert_eq!(a.take(&answer([7; 8], 1, 9000), src), Ok(None));
    // A nonce we never sent, another key, a query, an unspecified source: dropped.
    assert!(a.take(&answer([8; 8], 3, 9000), src).is_err());
    let other = Datagram::Answer { nonce: [7; 8], key: LookupKey([0; 32]), node_id: NodeId([3; 32]), port: 1 };
    assert!(a.take(&other.encode(), src).is_err());
    assert!(a.take(&Datagram::Query { nonce: [7; 8], key: key() }.encode(), src).is_err());
    assert!(a.take(&answer([7; 8], 3, 9000), "[::]:1".parse().unwrap()).is_err());
}

#[test]
fn a_flood_of_answers_gives_a_bounded_number_of_candidates() {
    let mut a = answers(NodeId([1; 32]));
    let one: SocketAddr = "10.0.0.9:5000".parse().unwrap();
    // One source naming many node ids: CANDIDATES_PER_SOURCE of them.
    let taken = (2..200u8).filter(|id| matches!(a.take(&answer([7; 8], *id, 9000), one), Ok(Some(_)))).count();
    assert_eq!(taken, CANDIDATES_PER_SOURCE);
    // Many sources: MAX_CANDIDATES in all.
    let mut total = taken;
    for i in 0..=255u8 {
        let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, i)), 5000);
        if matches!(a.take(&answer([7; 8], i, 9000), src), Ok(Some(_))) {
            total += 1;
        }
    }
    assert_eq!(total, MAX_CANDIDATES);
}

#[test]
fn the_responder_budget_is_per_source_and_overall_per_second() {
    let mut b = Budget::default();
    let t = Instant::now();
    let src: IpAddr = "fe80::1".parse().unwrap();
    let n = (0..100).filter(|_| b.allow(src, t)).count();
    assert_eq!(n, ANSWERS_PER_SOURCE as usize);
    let all = (0..2000u32).filter(|i| b.allow(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), t)).count();
    assert_eq!(all + n, ANSWERS_PER_SECOND as usize);
    // A second later the budget is back.
    assert!(b.allow(src, t + Duration::from_secs(1)));
}

#[test]
fn only_local_sources_are_answered() {
    for ok in ["fe80::1", "fd00::2", "::1", "10.0.0.1", "192.168.1.1", "169.254.0.1", "127.0.0.1"] {
        assert!(local_source(&ok.parse().unwrap()), "{ok}");
    }
    for far in ["2001:db8::1", "8.8.8.8", "ff02::1"] {
        assert!(!local_source(&far.parse().unwrap()), "{far}");
    }
}

#[tokio::test]
async fn the_responder_answers_only_what_it_holds_and_counts_what_it_drops() {
    let stats = Arc::new(LanStats::default());
    let held = key();
    let r =
        Responder { node_id: NodeId([5; 32]), port: 4242, holds: Arc::new(move |k| *k == held), stats: stats.clone() };
    let stop = CancellationToken::new();
    // A port of its own (the group port is shared by every node on the machine).
    let probe = std::net::UdpSocket::bind("[::1]:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let _tasks = respond(r, port, stop.clone()).unwrap();
    let client = UdpSocket::bind("[::1]:0").await.unwrap();
    let to: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    client.send_to(b"pexl\x01\x01 too short", to).await.unwrap();
    client.send_to(&Datagram::Query { nonce: [4; 8], key: LookupKey([0; 32]) }.encode(), to).await.unwrap();
    client.send_to(&Datagram::Query { nonce: [3; 8], key: key() }.encode(), to).await.unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = tokio::time::timeout(Duration::from_secs(30), client.recv_from(&mut buf)).await.unwrap().unwrap();
    let want = Datagram::Answer { nonce: [3; 8], key: key(), node_id: NodeId([5; 32]), port: 4242 };
    assert_eq!(Datagram::decode(&buf[..n]), Ok(want));
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 1);
    assert_eq!(stats.queries.load(Ordering::Relaxed), 2);
    assert_eq!(stats.answered.load(Ordering::Relaxed), 1);
    stop.cancel();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]
    /// Any bytes: decoding never panics, and whatever decodes re-encodes to exactly those bytes.
    #[test]
    fn any_datagram_decodes_to_its_own_bytes_or_not_at_all(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120), magic in proptest::prelude::any::<bool>()) {
        let mut bytes = bytes;
        if magic && bytes.len() >= 6 {
            // Often a plausible header, so the typed paths are reached too.
            bytes[..4].copy_from_slice(&MAGIC);
            bytes[4] = VERSION;
            bytes[5] = 1 + (bytes[5] & 1);
        }
        if let Ok(d) = Datagram::decode(&bytes) {
            proptest::prop_assert_eq!(d.encode(), bytes);
        }
    }

    /// Every query and answer round-trips.
    #[test]
    fn every_datagram_round_trips(nonce in proptest::prelude::any::<[u8; 8]>(), key in proptest::prelude::any::<[u8; 32]>(), id in proptest::prelude::any::<[u8; 32]>(), port in 1u16..) {
        let q = Datagram::Query { nonce, key: LookupKey(key) };
        proptest::prop_assert_eq!(Datagram::decode(&q.encode()), Ok(q));
        let a = Datagram::Answer { nonce, key: LookupKey(key), node_id: NodeId(id), port };
        proptest::prop_assert_eq!(Datagram::decode(&a.encode()), Ok(a));
    }
}

#[tokio::test]
async fn a_responder_that_can_bind_neither_family_says_so() {
    // Another program holds the port without address reuse, on both families.
    let taken = std::net::UdpSocket::bind("[::]:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let _v4 = std::net::UdpSocket::bind(("0.0.0.0", port));
    let r = Responder {
        node_id: NodeId([5; 32]),
        port: 1,
        holds: Arc::new(|_| true),
        stats: Arc::new(LanStats::default()),
    };
    assert!(respond(r, port, CancellationToken::new()).is_err());
}
