//! Rooms between real nodes on [::1]: a chain that forwards, a 30-member room
//! formed through one bootstrap, direct messages, and hostile neighbours
//! (forged signatures, replayed ids, oversized messages).

use super::*;
use pex::identity::Identity;
use pex::wire::{room_id, Presence, RoomMessage, MAX_PAYLOAD};
use pex::{Node, NodeId, Room, RoomEvent, RoomOptions};
use std::time::Instant;

/// A node for rooms: on [::1], dialling only what its rooms pick, with a
/// 20 s idle time-out so presence and MEMBERS go out every 5 s.
async fn member() -> Node {
    let mut config = Config { dial_learned: false, remember: false, ..test_config() };
    config.timeouts.idle = Duration::from_secs(20);
    config.timeouts.keepalive = Duration::from_secs(2);
    Node::start(config, None, tokio_util::sync::CancellationToken::new()).await.unwrap()
}

/// Waits until `room` has delivered the message `want` (a broadcast or direct),
/// returning every message delivered before it; panics after [`PATIENCE`].
async fn messages_until(room: &mut Room, want: &[u8]) -> Vec<(NodeId, bool, Bytes)> {
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, room.recv()).await.expect("no message in time") {
            Some(RoomEvent::Message { from, direct, bytes }) => {
                let done = bytes == want;
                got.push((from, direct, bytes));
                if done {
                    return got;
                }
            }
            Some(_) => {}
            None => panic!("room closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_along_a_chain_reaches_the_far_end_exactly_once() {
    let nodes = [member().await, member().await, member().await, member().await];
    let opts = RoomOptions { min_neighbours: 1, max_neighbours: 2, hops: 8 };
    let mut rooms: Vec<Room> = nodes.iter().map(|n| n.join_room_with("chain", opts).unwrap()).collect();
    let addr = |i: usize| nodes[i].local_addr().unwrap();
    // B–C first, then A knows only B and D only C.
    for (from, to) in [(1, 2), (0, 1), (3, 2)] {
        nodes[from].add_peer(addr(to));
        let want = nodes[to].id();
        wait_until("the link is up", || rooms[from].neighbours().contains(&want)).await;
    }
    wait_until("every member knows the three others", || rooms.iter().all(|r| r.members().len() == 3)).await;
    assert_eq!(rooms[0].neighbours(), vec![nodes[1].id()], "A's only neighbour is B");
    assert!(!nodes[0].is_connected(&nodes[3].id()) && !nodes[0].is_connected(&nodes[2].id()));
    assert_eq!(rooms[0].broadcast(&b"hello, chain"[..]).unwrap(), 1);
    assert_eq!(rooms[0].broadcast(&b"end"[..]).unwrap(), 1);
    for (i, room) in rooms.iter_mut().enumerate().skip(1) {
        let got = messages_until(room, b"end").await;
        let texts: Vec<&[u8]> = got.iter().map(|(_, _, b)| &b[..]).collect();
        assert_eq!(texts, vec![&b"hello, chain"[..], b"end"], "node {i}");
        assert!(got.iter().all(|(from, direct, _)| *from == nodes[0].id() && !direct));
    }
    // Nobody hears its own broadcast back, however it travels.
    assert!(rooms[0].try_recv().into_iter().all(|e| !matches!(e, RoomEvent::Message { .. })));
    assert_eq!(rooms[0].stats().delivered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_of_30_formed_through_one_bootstrap_delivers_every_broadcast_once_to_all() {
    const N: usize = 30;
    let boot = member().await;
    let mut nodes = vec![boot.clone()];
    let mut rooms = vec![boot.join_room("thirty").unwrap()];
    for _ in 1..N {
        let n = member().await;
        n.add_peer(boot.local_addr().unwrap());
        rooms.push(n.join_room("thirty").unwrap());
        nodes.push(n);
    }
    wait_until("every member knows the 29 others", || rooms.iter().all(|r| r.members().len() == N - 1)).await;
    for (i, r) in rooms.iter().enumerate() {
        let k = r.neighbours().len();
        assert!((1..=pex::node::rooms::MAX_NEIGHBOURS).contains(&k), "node {i} has {k} neighbours");
    }
    let connections: usize = nodes.iter().map(|n| n.connected_peers()).sum::<usize>() / 2;
    let mut copies_per_message = Vec::new();
    for (k, origin) in [0, 7, 29].into_iter().enumerate() {
        let sent_before: u64 = rooms.iter().map(|r| r.stats().sent).sum();
        let text = format!("broadcast {k}");
        let started = Instant::now();
        rooms[origin].broadcast(text.clone().into_bytes()).unwrap();
        let mut last = Duration::ZERO;
        for (i, room) in rooms.iter_mut().enumerate() {
            if i != origin {
                let got = messages_until(room, text.as_bytes()).await;
                assert_eq!(got.len(), 1, "node {i} got {got:?}");
                last = last.max(started.elapsed());
            }
        }
        // Wait for the flood to settle before counting its copies.
        let settled = || rooms.iter().map(|r| r.stats().sent).sum::<u64>();
        let mut sent = settled();
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = settled();
            if now == sent {
                break;
            }
            sent = now;
        }
        let copies = sent - sent_before;
        assert!(copies <= 12 * N as u64, "{copies} copies of one broadcast to {N} members");
        copies_per_message.push(copies as f64 / (N - 1) as f64);
        eprintln!("broadcast from node {origin}: all {} others had it after {last:?}; {copies} copies", N - 1);
    }
    for (i, r) in rooms.iter().enumerate() {
        let s = r.stats();
        let expected = if [0, 7, 29].contains(&i) { 2 } else { 3 };
        assert_eq!(s.delivered, expected, "node {i}: {s:?}");
        assert_eq!((s.forged, s.limited), (0, 0), "node {i}: {s:?}");
    }
    eprintln!("{N} members, {connections} connections; copies per delivered message: {copies_per_message:.2?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_message_reaches_only_its_addressee_even_one_not_connected_yet() {
    let (a, b, c) = (member().await, member().await, member().await);
    // A and C take one neighbour each, B two: the mesh is A–B–C and stays so.
    let one = RoomOptions { min_neighbours: 1, max_neighbours: 1, hops: 8 };
    let mut room_b = b.join_room_with("dm", RoomOptions { max_neighbours: 2, ..one }).unwrap();
    let room_a = a.join_room_with("dm", one).unwrap();
    let mut room_c = c.join_room_with("dm", one).unwrap();
    a.add_peer(b.local_addr().unwrap());
    c.add_peer(b.local_addr().unwrap());
    wait_until("A and C hear of each other through B", || {
        room_a.members().contains(&c.id()) && room_c.members().contains(&a.id())
    })
    .await;
    assert!(!a.is_connected(&c.id()), "A and C are not neighbours");
    // C's address reaches A in B's MEMBERS; A then dials C for the message.
    let deadline = Instant::now() + PATIENCE;
    while let Err(e) = room_a.send_to(c.id(), &b"for C alone"[..]).await {
        assert!(Instant::now() < deadline, "never sent: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = messages_until(&mut room_c, b"for C alone").await;
    assert_eq!(got, vec![(a.id(), true, Bytes::from_static(b"for C alone"))]);
    assert!(a.is_connected(&c.id()), "a direct connection was dialled");
    room_c.broadcast(&b"end"[..]).unwrap();
    let at_b = messages_until(&mut room_b, b"end").await;
    assert_eq!(at_b.len(), 1, "B never saw the direct message: {at_b:?}");
    assert_eq!(room_b.stats().delivered, 1);
    // A node no one knows an address for cannot be reached; too large is refused.
    let stranger = Identity::generate().node_id();
    assert!(matches!(room_a.send_to(stranger, &b"?"[..]).await, Err(pex::RoomError::Unreachable(..))));
    assert!(matches!(room_a.broadcast(vec![0u8; MAX_PAYLOAD + 1]), Err(pex::RoomError::TooLarge(_))));
}

/// A raw client that has become `node`'s neighbour in `room`.
async fn raw_neighbour(node: &Node, room: pex::Hash) -> Raw {
    let (mut raw, _) = Raw::handshake(node.local_addr().unwrap()).await;
    raw.send(&Frame::Join(room)).await;
    loop {
        match raw.next().await {
            Some(Frame::Join(r)) if r == room => return raw,
            Some(Frame::Leave(_)) | None => panic!("the node declined"),
            _ => {}
        }
    }
}

fn signed(by: &Identity, room: pex::Hash, id: [u8; 16], payload: &'static [u8]) -> RoomMessage {
    let signature = by.sign_room_message(&room.0, &id, payload);
    RoomMessage { room, id, origin: by.node_id(), hops: 4, signature, payload: Bytes::from_static(payload) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_oversized_messages_are_dropped() {
    let node = member().await;
    let mut room = node.join_room("guarded").unwrap();
    let lobby = room_id("guarded");
    let author = Identity::generate();
    // A real message, then the same id again: delivered once.
    let mut honest = raw_neighbour(&node, lobby).await;
    let m = signed(&author, lobby, [1; 16], b"once");
    honest.send(&Frame::Message(m.clone())).await;
    honest.send(&Frame::Message(m.clone())).await;
    honest.send(&Frame::Message(RoomMessage { hops: 0, ..m.clone() })).await;
    honest.send(&Frame::Message(signed(&author, lobby, [2; 16], b"marker"))).await;
    let got = messages_until(&mut room, b"marker").await;
    assert_eq!(got.len(), 2, "the replays were dropped: {got:?}");
    assert_eq!(room.stats().duplicates, 2);
    // A forged signature: dropped, and the neighbour that sent it is banned.
    let mut forger = raw_neighbour(&node, lobby).await;
    let mut forged = signed(&author, lobby, [3; 16], b"forged");
    forged.payload = Bytes::from_static(b"altered");
    forger.send(&Frame::Message(forged)).await;
    assert_eq!(forger.expect_reject().await, Some(RejectCode::Misbehaving as u8));
    // A forged presence likewise.
    let mut liar = raw_neighbour(&node, lobby).await;
    let p = Presence { room: lobby, origin: author.node_id(), seq: 1, state: 0, hops: 1, signature: [7; 64] };
    liar.send(&Frame::Presence(p)).await;
    assert_eq!(liar.expect_reject().await, Some(RejectCode::Misbehaving as u8));
    // An oversized MESSAGE is a framing violation: closed with REJECT(3).
    let mut big = raw_neighbour(&node, lobby).await;
    let mut body = vec![0u8; 145 + MAX_PAYLOAD + 1];
    body[..32].copy_from_slice(&lobby.0);
    let mut frame = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    frame.push(12);
    frame.extend_from_slice(&body);
    big.send_bytes(&frame).await;
    assert_eq!(big.expect_reject().await, Some(RejectCode::ProtocolViolation as u8));
    // The honest neighbour is still served, and nothing else was delivered.
    honest.send(&Frame::Message(signed(&author, lobby, [4; 16], b"still here"))).await;
    let got = messages_until(&mut room, b"still here").await;
    assert_eq!(got.len(), 1, "{got:?}");
    let s = room.stats();
    assert_eq!((s.forged, s.delivered), (2, 3), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_the_room_declines_join_and_ignores_its_messages() {
    let node = member().await;
    let _other = node.join_room("elsewhere").unwrap();
    let (mut raw, _) = Raw::handshake(node.local_addr().unwrap()).await;
    let lobby = room_id("lobby");
    raw.send(&Frame::Join(lobby)).await;
    // The node asks us into its own room first; for ours it has only LEAVE.
    let elsewhere = room_id("elsewhere");
    assert_eq!(raw.next().await, Some(Frame::Join(elsewhere)));
    assert_eq!(raw.next().await, Some(Frame::Leave(lobby)));
    let author = Identity::generate();
    raw.send(&Frame::Message(signed(&author, lobby, [1; 16], b"ignored"))).await;
    raw.send(&Frame::Ask(pex::Hash([0; 32]))).await;
    assert!(matches!(raw.next().await, Some(Frame::DontHave(_))), "the connection is still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_at_its_connection_limit_refuses_with_reject_2_and_the_room_hears_it_is_full() {
    let config = Config { dial_learned: false, remember: false, max_peers: 1, ..test_config() };
    let full = Node::start(config, None, tokio_util::sync::CancellationToken::new()).await.unwrap();
    let _room = full.join_room("small").unwrap();
    let (first, second) = (member().await, member().await);
    let first_room = first.join_room("small").unwrap();
    first.add_peer(full.local_addr().unwrap());
    wait_until("the first member is in", || first_room.neighbours() == vec![full.id()]).await;
    let mut second_room = second.join_room("small").unwrap();
    second.add_peer(full.local_addr().unwrap());
    loop {
        match tokio::time::timeout(PATIENCE, second_room.recv()).await.expect("no event in time") {
            Some(RoomEvent::Full(addr)) => {
                assert_eq!(addr, full.local_addr().unwrap());
                break;
            }
            Some(RoomEvent::Message { .. }) | None => panic!("unexpected"),
            Some(_) => {}
        }
    }
    assert!(!second.is_connected(&full.id()));
}
