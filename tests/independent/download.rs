//! A complete download by hand (sections 6, 7, 2.4, 5.5), and DONT_HAVE, BITFIELD, HAVE, CANCEL (5.7).

use super::*;

#[test]
fn fetch_whole_file_by_hand_with_pipelined_asks() {
    let dir = tempfile::tempdir().unwrap();
    let size = 9 * PIECE + 12345; // 10 pieces, the last one short; pieces 2 and 6 identical
    let mut original = Rng::new(3).bytes(size);
    original.copy_within(2 * PIECE..3 * PIECE, 6 * PIECE);
    let file = dir.path().join("nine-and-a-bit.bin");
    fs::write(&file, &original).unwrap();
    let node = Node::start(&file, &[]);
    let mut c = node.peer();

    // The manifest is the blob whose hash is the root.
    c.send(&ask(&node.root));
    let f = c.recv();
    assert!(f.is(GIVE) && f.hash() == node.root, "ASK root: got {}", f.show());
    let manifest_blob = &f.body[32..];
    assert_eq!(sha(manifest_blob), node.root, "the manifest does not hash to the root");
    let m = parse_manifest(manifest_blob);
    assert_eq!((m.name.as_str(), m.size), ("nine-and-a-bit.bin", size as u64));
    let pieces = size.div_ceil(PIECE);
    assert_eq!((pieces, m.lists.len()), (10, 1));

    let mut hashes: Vec<Hash> = Vec::new();
    for (k, lh) in m.lists.iter().enumerate() {
        c.send(&ask(lh));
        let f = c.recv();
        assert!(f.is(GIVE) && f.hash() == *lh, "ASK list {k}: got {}", f.show());
        let list = &f.body[32..];
        assert_eq!(sha(list), *lh, "hash list {k} does not match its hash");
        assert_eq!(list.len(), 32 * LIST_HASHES.min(pieces - LIST_HASHES * k), "length of hash list {k}");
        hashes.extend(list.chunks(32).map(|h| -> Hash { h.try_into().unwrap() }));
    }
    assert_eq!(hashes, piece_hashes(&original), "the lists name other pieces than the file's");

    // Pieces, 8 ASKs in flight: identical pieces are one blob, fetched once, written twice.
    let mut positions: HashMap<Hash, Vec<usize>> = HashMap::new();
    let mut todo: VecDeque<Hash> = VecDeque::new();
    for (i, h) in hashes.iter().enumerate() {
        let at = positions.entry(*h).or_default();
        if at.is_empty() {
            todo.push_back(*h);
        }
        at.push(i);
    }
    assert_eq!(todo.len(), 9);
    let mut out = vec![0u8; size];
    let mut outstanding: VecDeque<Hash> = VecDeque::new();
    let mut most_outstanding = 0;
    while !todo.is_empty() || !outstanding.is_empty() {
        let mut batch = Vec::new();
        while outstanding.len() < 8 {
            let Some(h) = todo.pop_front() else { break };
            batch.extend(ask(&h));
            outstanding.push_back(h);
        }
        if !batch.is_empty() {
            c.send(&batch); // several ASKs in one transport message
        }
        most_outstanding = most_outstanding.max(outstanding.len());
        let f = c.recv();
        assert!(f.is(GIVE), "expected a GIVE, got {}", f.show());
        let h = f.hash();
        // 5.5: answers come in ASK order.
        assert_eq!(Some(h), outstanding.pop_front(), "GIVE out of ASK order: {}", f.show());
        let data = &f.body[32..];
        assert_eq!(sha(data), h, "GIVE data does not hash to {}", hex(&h));
        if data.len() == PIECE {
            // 2.4: a 1 MiB GIVE is 16 messages of n = 65,535 and one of n = 325.
            assert_eq!(f.msgs.len(), 17, "messages of a full-piece GIVE: {:?}", f.msgs);
            assert_eq!(f.msgs[16] + TAG, 325);
        }
        for &i in &positions[&h] {
            let range = i * PIECE..((i + 1) * PIECE).min(size);
            assert_eq!(data.len(), range.len(), "length of piece {i}");
            out[range].copy_from_slice(data);
        }
    }
    assert_eq!(most_outstanding, 8);
    assert!(out == original, "the reassembled file differs from the original");
}

/// Section 6.1 frame by frame on a live node: it must produce exactly the quoted bytes.
#[test]
fn worked_example_frames_on_the_live_node() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.txt");
    fs::write(&file, b"hello, swarm\n").unwrap();
    let node = Node::start(&file, &[]);
    assert_eq!(hex(&node.root), "d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de4");
    let mut c = node.peer();

    let list_hash = h32("7fb72fd845b3b37be652e6155323f0e2d9437c671b08cba3850862cf152851d8");
    let steps: Vec<(&str, Vec<u8>, &str)> = vec![
        ("GIVE manifest", ask(&node.root), "0000006101d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de45045584d0100100000000000000000000d000968656c6c6f2e747874000000017fb72fd845b3b37be652e6155323f0e2d9437c671b08cba3850862cf152851d8"),
        ("GIVE list", ask(&list_hash), "00000041017fb72fd845b3b37be652e6155323f0e2d9437c671b08cba3850862cf152851d83a2ec73c897660e1919f07a073a741d8e9ba378834fa3b4947d84cb52e03ca76"),
        ("BITFIELD (all)", bitfield(&node.root, 0, &[0]), "0000002605d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de40000000080"),
        ("GIVE piece (v1 vector give)", ask(&sha(b"hello, swarm\n")), "0000002e013a2ec73c897660e1919f07a073a741d8e9ba378834fa3b4947d84cb52e03ca7668656c6c6f2c20737761726d0a"),
    ];
    for (name, sent, expected) in steps {
        c.send(&sent);
        let f = c.recv();
        assert_eq!(hex(&f.wire()), expected, "{name}");
        assert_eq!(f.msgs, [expected.len() / 2], "{name} travels as one transport message");
    }
}

#[test]
fn an_empty_file_is_a_manifest_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("empty");
    fs::write(&file, b"").unwrap();
    let node = Node::start(&file, &[]);
    let mut c = node.peer();
    c.send(&ask(&node.root));
    let f = c.recv();
    assert!(f.is(GIVE) && f.hash() == node.root, "ASK root: got {}", f.show());
    let (manifest, lists) = make_manifest("empty", b"");
    assert!(lists.is_empty());
    assert_eq!(f.body[32..], manifest, "0 pieces, 0 hash lists (sections 1 and 6)");
    let m = parse_manifest(&f.body[32..]);
    assert_eq!((m.size, m.lists.len()), (0, 0));
    // A BITFIELD of no bits is valid for it; the node holds no piece, so it replies nothing (5.7).
    c.send(&bitfield(&node.root, 0, &[]));
    c.probe(&mut Rng::new(17));
    // The empty blob is not a piece of it: nobody need hold it.
    c.send(&ask(&sha(b"")));
    let f = c.recv();
    assert!(f.is(DONT_HAVE) || f.wire() == give(b""), "ASK the empty blob: {}", f.show());
}

// ---------------------------------------------------------------------------------------------
// 3. DONT_HAVE, BITFIELD, HAVE, CANCEL (5.5, 5.7)
// ---------------------------------------------------------------------------------------------

#[test]
fn dont_have_bitfield_have_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let size = 9 * PIECE + 12345; // 10 pieces: two bitfield bytes, six spare bits
    let (file, original) = write_file(dir.path(), "ten.bin", size, 4);
    let hashes = piece_hashes(&original);
    let node = Node::start(&file, &[]);
    let mut rng = Rng::new(15);
    let mut c = node.peer();
    let root = node.root;

    // An unknown hash: DONT_HAVE for exactly that hash, once per ASK, repeats included.
    let missing = rng.hash();
    c.send(&ask(&missing));
    assert_eq!(c.recv().wire(), dont_have(&missing));
    c.send(&[ask(&missing), ask(&missing)].concat());
    for _ in 0..2 {
        let f = c.recv();
        assert_eq!(f.wire(), dont_have(&missing), "repeated ASK: got {}", f.show());
    }

    // A whole BITFIELD with no bits set declares interest; the seeder answers with its own:
    // all 10 pieces from piece 0, spare bits zero.
    c.send(&bitfield(&root, 0, &[0, 0]));
    let f = c.recv();
    assert_eq!(f.wire(), bitfield(&root, 0, &[0xff, 0xc0]), "BITFIELD reply: got {}", f.show());

    // Frames with no reply, the connection stays usable: HAVE in range and for an unknown root,
    // CANCEL of a hash never asked, a keep-alive, an unknown type, a second BITFIELD for the same
    // root (at most one reply per connection and root), valid ranges (from piece 8 with pieces
    // 8 and 9; from piece 0 with one byte; no bits from far past the end), and BITFIELDs of any
    // shape for an unknown root.
    let other_root = rng.hash();
    let quiet = [
        have(&root, 9),
        have(&other_root, 70000),
        cancel(&rng.hash()),
        keepalive(),
        frame(200, b"future"),
        bitfield(&root, 0, &[0, 0]),
        bitfield(&root, 8, &[0xc0]),
        bitfield(&root, 0, &[0xff]),
        bitfield(&root, 1000, &[]),
        bitfield(&other_root, 0, &[0xff; 3]),
        bitfield(&other_root, 77, &[0x01]),
    ]
    .concat();
    c.send(&quiet);
    c.fetch_expect(&hashes[3], &original[3 * PIECE..4 * PIECE]);

    // A range BITFIELD on a fresh connection also gets the reply (5.7 "Replies").
    let mut d = node.peer();
    d.send(&bitfield(&root, 8, &[0x00]));
    let f = d.recv();
    assert_eq!(f.wire(), bitfield(&root, 0, &[0xff, 0xc0]), "BITFIELD reply to a range: got {}", f.show());

    // A repeated ASK for a piece gets one GIVE each.
    let last = &original[9 * PIECE..];
    c.send(&[ask(&hashes[9]), ask(&hashes[9])].concat());
    for _ in 0..2 {
        let f = c.recv();
        assert!(
            f.is(GIVE) && f.hash() == hashes[9] && f.body[32..] == *last,
            "repeated ASK of piece 9: got {}",
            f.show()
        );
    }
    // CANCEL of a hash asked and already answered is harmless.
    c.send(&cancel(&hashes[9]));
    c.fetch_expect(&hashes[0], &original[..PIECE]);

    // CANCEL removes the queued ASKs of that hash: 200 ASKs of one full piece, its CANCEL and a
    // probe ASK in one transport message. The GIVEs already being answered still come (each
    // whole and right), then the probe's DONT_HAVE, and nothing for the rest (5.5).
    let probe = rng.hash();
    let mut batch: Vec<u8> = (0..200).flat_map(|_| ask(&hashes[1])).collect();
    batch.extend(cancel(&hashes[1]));
    batch.extend(ask(&probe));
    c.send(&batch);
    let mut gives = 0;
    loop {
        let f = c.recv();
        if f.wire() == dont_have(&probe) {
            break;
        }
        assert!(f.is(GIVE) && f.hash() == hashes[1], "after CANCEL: {}", f.show());
        assert!(f.body[32..] == original[PIECE..2 * PIECE]);
        gives += 1;
    }
    eprintln!("CANCEL: {gives} of 200 queued ASKs were answered");
    assert!(gives < 200, "CANCEL removed none of 200 queued ASKs");
    c.probe(&mut rng);
}

/// 2.4: frames and transport messages need not align: a frame split over many messages, several
/// frames in one, and empty messages (n = 16) are all fine for a receiver.
#[test]
fn frames_may_be_split_and_joined_across_transport_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (file, original) = write_file(dir.path(), "two.bin", PIECE + 999, 21);
    let hashes = piece_hashes(&original);
    let node = Node::start(&file, &[]);
    let mut rng = Rng::new(21);
    let me = Identity::random();
    let mut c = node.dial();

    // HELLO in 3-byte messages with an empty message between each two.
    let hello = me.hello(&c.hh, 0, 0);
    let mut wire = Vec::new();
    for chunk in hello.chunks(3) {
        wire.extend(c.tx.seal(chunk));
        wire.extend(c.tx.seal(&[]));
    }
    c.tx.send_raw(&wire);
    c.expect_hello(Some(node.port));
    c.expect_peers();

    // An ASK one byte per message, then three frames in one message, then an ASK whose first
    // half shares a message with a keep-alive.
    let probe = rng.hash();
    let wire = c.tx.seal_cut(&ask(&probe), 1);
    c.tx.send_raw(&wire);
    assert_eq!(c.recv().wire(), dont_have(&probe));
    let probes = [rng.hash(), rng.hash()];
    c.send(&[ask(&probes[0]), keepalive(), ask(&probes[1])].concat());
    for p in &probes {
        assert_eq!(c.recv().wire(), dont_have(p));
    }
    let a = ask(&hashes[1]);
    let wire = [c.tx.seal(&[&keepalive()[..], &a[..10]].concat()), c.tx.seal(&[]), c.tx.seal(&a[10..])].concat();
    c.tx.send_raw(&wire);
    let f = c.recv();
    assert!(f.is(GIVE) && f.body[32..] == original[PIECE..], "GIVE of piece 1: {}", f.show());

    // A whole GIVE-sized stream of frames cut at odd places: 300 ASKs in 1000-byte messages.
    let asked: Vec<Hash> = (0..300).map(|_| rng.hash()).collect();
    let stream: Vec<u8> = asked.iter().flat_map(ask).collect();
    let wire = c.tx.seal_cut(&stream, 1000);
    let mut w = c.tx.s.try_clone().unwrap();
    let writer = thread::spawn(move || w.write_all(&wire));
    for h in &asked {
        assert_eq!(c.recv().wire(), dont_have(h), "answers in ASK order");
    }
    join(writer).unwrap();
    c.fetch_expect(&hashes[0], &original[..PIECE]);
}

#[test]
fn a_node_in_no_room_declines_a_join_and_ignores_the_other_room_frames() {
    // Section "Rooms": a node that is a member of no room answers JOIN with LEAVE
    // for that room and ignores LEAVE, MEMBERS, MESSAGE, DIRECT and PRESENCE.
    let dir = tempfile::tempdir().unwrap();
    let (file, original) = write_file(dir.path(), "one.bin", PIECE, 5);
    let hashes = piece_hashes(&original);
    let node = Node::start(&file, &[]);
    let mut rng = Rng::new(21);
    let mut c = node.peer();
    let room = rng.hash();
    c.send(&frame(9, &room));
    assert_eq!(c.recv().wire(), frame(10, &room), "JOIN is declined with LEAVE for that room");
    let id = [7u8; 16];
    let member = [&rng.hash()[..], &[0u8; 16], &9000u16.to_be_bytes()].concat();
    let quiet = [
        frame(10, &room),
        frame(11, &[&room[..], &member].concat()),
        frame(12, &[&room[..], &id, &rng.hash(), &[3], &[0u8; 64], b"hello"].concat()),
        frame(13, &[&room[..], &id, b"hi"].concat()),
        frame(14, &[&room[..], &rng.hash(), &1u64.to_be_bytes(), &[0, 3], &[0u8; 64]].concat()),
    ]
    .concat();
    c.send(&quiet);
    // Nothing came back for those: the next frame is the answer to this ASK.
    c.fetch_expect(&hashes[0], &original);
}
