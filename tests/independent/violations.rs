//! Violations and failures (5.6, 2.4), and refusals before HELLO (5.1 steps 1-2, 5.9).

use super::*;

/// Protocol violations after the set-up, for a node that seeds the 10-piece file `root`
/// (section 3 and its vectors, 5.1 step 6, 5.7); `hh` is the connection's handshake hash.
fn violations(root: &Hash, hh: &Hash, me: &Identity) -> Vec<(String, Vec<u8>)> {
    let v2 = fixture("v2-vectors.json");
    let mut out: Vec<(String, Vec<u8>)> = v2["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["valid"] == false)
        .map(|v| (format!("v2 vector {}", v["name"].as_str().unwrap()), unhex(v["hex"].as_str().unwrap())))
        .collect();
    let more: Vec<(&str, Vec<u8>)> = vec![
        ("v1 vector too_long", unhex("0010002201")),
        ("v1 vector ask_short", unhex("0000002000262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab27184979893")),
        (
            "v1 vector have_short",
            unhex("0000002306262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a0001"),
        ),
        ("ASK with a 33-byte body", frame(ASK, &[7; 33])),
        ("GIVE with a 31-byte body", frame(GIVE, &[7; 31])),
        ("DONT_HAVE with a 31-byte body", frame(DONT_HAVE, &[7; 31])),
        ("HAVE with a 37-byte body", frame(HAVE, &[7; 37])),
        ("CANCEL with a 33-byte body", frame(CANCEL, &[7; 33])),
        ("REJECT with an empty body", frame(REJECT, &[])),
        ("BITFIELD of the known file, whole, spare bit set", bitfield(root, 0, &[0, 0x20])),
        ("BITFIELD of the known file from 0 with 3 bytes", bitfield(root, 0, &[0, 0, 0])),
        ("BITFIELD of the known file from piece 10 (= P)", bitfield(root, 10, &[0])),
        ("BITFIELD of the known file from piece 8 with 2 bytes", bitfield(root, 8, &[0, 0])),
        ("BITFIELD of the known file from piece 8, bit of piece 10 set", bitfield(root, 8, &[0x20])),
        ("HAVE of the known file, index 10 (= P)", have(root, 10)),
        ("a second HELLO, validly signed for this connection", me.hello(hh, 0, 0)),
    ];
    out.extend(more.into_iter().map(|(n, b)| (n.to_owned(), b)));
    out
}

#[test]
fn violations_get_reject_3_and_close_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (file, original) = write_file(dir.path(), "ten.bin", 9 * PIECE + 12345, 5);
    let hashes = piece_hashes(&original);
    let node = Node::start(&file, &[]);
    let mut good = node.peer();
    let mut wrong = Vec::new();

    // After the set-up: REJECT(3), then the close (no ban: the same identity comes back).
    let me = Identity::random();
    let count = violations(&node.root, &[0; 32], &me).len();
    for i in 0..count {
        let mut c = node.peer_as(&me);
        let (case, bytes) = violations(&node.root, &c.hh, &me).swap_remove(i);
        c.send(&bytes);
        let got = transcript(&mut c, None);
        if got != ["REJECT(3)", "EOF"] {
            wrong.push(format!("set up, then {case}: sent {} got {got:?}", hex(&bytes[..bytes.len().min(64)])));
        }
    }

    // In the same transport message as our HELLO: PEERS still precedes the REJECT (5.1 step 5.5).
    for i in 0..count {
        let mut c = node.dial();
        let (case, bytes) = violations(&node.root, &c.hh, &me).swap_remove(i);
        let sent = [me.hello(&c.hh, 0, 0), bytes].concat();
        c.send(&sent);
        let got = transcript(&mut c, Some(node.port));
        if got != ["HELLO", "PEERS", "REJECT(3)", "EOF"] {
            wrong.push(format!("HELLO + {case}: sent {} got {got:?}", hex(&sent[..sent.len().min(160)])));
        }
    }

    // The well-behaved connection outlived all of them.
    good.fetch_expect(&hashes[9], &original[9 * PIECE..]);
    assert!(wrong.is_empty(), "answers that disagree with 5.6:\n{}", wrong.join("\n"));
}

#[test]
fn a_failed_transport_message_closes_the_connection_without_reject() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&small_file(dir.path(), 6), &[]);
    let mut rng = Rng::new(22);
    let mut good = node.peer();
    let mut wrong = Vec::new();

    type Breach = fn(&mut Conn, &[u8]) -> (Vec<u8>, bool);
    // Each returns the bytes to send (an ASK spoiled one way or another) and whether to
    // half-close afterwards.
    let breaches: Vec<(&str, Breach)> = vec![
        ("a flipped ciphertext bit", |c, ask| {
            let mut m = c.tx.seal(ask);
            m[5] ^= 0x01;
            (m, false)
        }),
        ("a flipped tag bit", |c, ask| {
            let mut m = c.tx.seal(ask);
            let n = m.len();
            m[n - 1] ^= 0x80;
            (m, false)
        }),
        ("a replayed message (our HELLO again)", |c, _| {
            let hello = Identity::random().hello(&c.hh, 0, 0);
            (lp(&c.tx.gcm.seal_at(0, &[], &hello)), false)
        }),
        ("a skipped nonce", |c, ask| {
            c.tx.gcm.n += 1;
            (c.tx.seal(ask), false)
        }),
        ("sealed with the other direction's key", |c, ask| (lp(&c.rx.gcm.seal_at(c.tx.gcm.n, &[], ask)), false)),
        ("n = 15", |_, _| ([&[0, 15][..], &[0; 15]].concat(), false)),
        ("n = 0", |_, _| (vec![0, 0], false)),
        ("the stream ending inside a message", |_, _| ([&[0, 64][..], &[1; 10]].concat(), true)),
        ("the stream ending inside a length", |_, _| (vec![0], true)),
    ];
    for (case, breach) in &breaches {
        let mut c = node.peer();
        let (bytes, half_close) = breach(&mut c, &ask(&rng.hash()));
        c.tx.send_raw(&bytes);
        if half_close {
            c.tx.s.shutdown(Shutdown::Write).unwrap();
        }
        let got = transcript(&mut c, None);
        if got != ["EOF"] {
            wrong.push(format!("{case}: got {got:?}"));
        }
    }

    // In place of our HELLO: the node's own HELLO went out at once, then the close.
    let mut c = node.dial();
    let mut m = c.tx.seal(&Identity::random().hello(&c.hh, 0, 0));
    m[40] ^= 0x04;
    c.tx.send_raw(&m);
    let got = transcript(&mut c, Some(node.port));
    if got != ["HELLO", "EOF"] {
        wrong.push(format!("a tampered HELLO message: got {got:?}"));
    }

    // The peer closing between messages (5.1 step 4): the node closes, sending nothing.
    let mut c = node.dial();
    c.tx.s.shutdown(Shutdown::Write).unwrap();
    let got = transcript(&mut c, Some(node.port));
    if got != ["HELLO", "EOF"] {
        wrong.push(format!("closing before HELLO: got {got:?}"));
    }

    good.probe(&mut rng);
    assert!(wrong.is_empty(), "answers that disagree with 2.4:\n{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 5. Refusals before HELLO: the connection limit and shutting down (5.1 steps 1-2, 5.9)
// ---------------------------------------------------------------------------------------------

#[test]
fn beyond_the_connection_limit_reject_2_is_the_only_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (file, original) = write_file(dir.path(), "small.bin", 300_000, 7);
    let node = Node::start(&file, &["--max-peers", "3"]);
    let mut rng = Rng::new(23);
    let mut live: Vec<Conn> = (0..3).map(|_| node.peer()).collect();

    for with_hello in [false, true, true] {
        let mut c = node.dial();
        if with_hello {
            c.send(&Identity::random().hello(&c.hh, 0, 0));
        }
        let f = c.expect_reject_then_close(LIMIT, "a fourth connection with --max-peers 3");
        assert_eq!((f.retry_after(), f.reason().as_str()), (5, "peer limit reached"), "{}", f.show());
    }
    // A v1 dialler gets the v1 answer instead (5.1 step 2).
    assert_eq!(hex(&raw_exchange(node.port, &[0, 0, 0, 0x27, 3])), hex(&v1_answer()));

    for c in &mut live {
        c.probe(&mut rng);
    }
    live[2].fetch_expect(&sha(&original), &original);

    // A slot frees once a live connection is gone (polled: the node sees the close when it does).
    drop(live.pop());
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut admitted = loop {
        let mut c = node.dial();
        c.send(&Identity::random().hello(&c.hh, 0, 0));
        let f = c.recv();
        if f.is(HELLO) {
            c.check_hello(&f, Some(node.port)).unwrap();
            c.expect_peers();
            break c;
        }
        assert!(f.is(REJECT) && f.body[0] == LIMIT, "after a slot freed: {}", f.show());
        assert!(Instant::now() < deadline, "no slot freed after a connection closed");
        thread::sleep(Duration::from_millis(50));
    };
    admitted.probe(&mut rng);
}

#[test]
fn shutting_down_sends_reject_6_with_retry_after_10() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(&small_file(dir.path(), 8), &[]);
    let mut live = node.peer();

    // A connection in the middle of its handshake: message 1 sent, message 2 read.
    let mut s = tcp(node.port);
    let mut hs = Noise::random();
    s.write_all(&lp(&hs.write1())).unwrap();
    hs.read2(&read_msg2(&mut s)).unwrap();

    node.child.signal(libc::SIGINT);
    let f = live.expect_reject_then_close(SHUTTING_DOWN, "a live connection at shutdown");
    assert_eq!((f.retry_after(), f.reason().as_str()), (10, "shutting down"), "{}", f.show());

    // The half-set-up connection completes its handshake after the node began shutting down:
    // 5.1 step 1 says its HELLO exchange completes, then REJECT(6) comes instead of PEERS.
    s.write_all(&lp(&hs.write3())).unwrap();
    let (_, k1, k2) = hs.finish();
    let mut c = Conn::new(s, &k1, &k2, &hs);
    c.send(&Identity::random().hello(&c.hh, 0, 0));
    let got = transcript(&mut c, Some(node.port));
    eprintln!("a connection half set up at shutdown got {got:?}");
    assert_eq!(got, ["HELLO", "REJECT(6)", "EOF"], "a connection half set up at shutdown");
    let status = node.child.wait_within(IO_TIMEOUT);
    eprintln!("pex seed after SIGINT: {status}");
}
