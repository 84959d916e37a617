//! Connection set-up: handshake, identity, HELLO, PEERS (2.2, 2.3, 2.5, 4.4, 5.1, 5.2)

use super::*;

#[test]
fn handshake_then_signed_hello_then_peers() {
    let dir = tempfile::tempdir().unwrap();
    // The node's identity file holds the responder's secret of section 8 (2.2).
    let node = Node::start_as(&small_file(dir.path(), 1), &[], Some(&[2; 32]));
    assert_eq!(hex(&node.id), "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394");
    let out = crate::run(crate::pex().args(["id", "--json", "--data-dir"]).arg(node.data_dir()));
    assert!(out.status.success(), "pex id: {out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("pex id --json prints JSON");
    assert_eq!(json["node_id"].as_str(), Some(hex(&node.id).as_str()), "pex id --json");

    // The handshake by hand: 34 bytes out, 98 back (starting 00 60), 66 out.
    let mut s = tcp(node.port);
    let mut hs = Noise::random();
    let m1 = lp(&hs.write1());
    assert_eq!(m1.len(), 34);
    s.write_all(&m1).unwrap();
    hs.read2(&read_msg2(&mut s)).expect("message 2 decrypts");
    let m3 = lp(&hs.write3());
    assert_eq!(m3.len(), 66);
    s.write_all(&m3).unwrap();
    let (_, k1, k2) = hs.finish();
    let mut a = Conn::new(s, &k1, &k2, &hs);
    assert_ne!(a.remote_static, node.id, "2.2: the Noise static key is not the identity");

    // HELLO first, one message of 108 plaintext bytes, signed over this handshake hash.
    let me = Identity::random();
    a.send(&me.hello(&a.hh, 0, 0));
    let f = a.recv_raw().expect("the node's HELLO");
    assert_eq!(f.msgs, [108], "HELLO as one transport message of n = 124");
    let hello = a.check_hello(&f, Some(node.port)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(hello.id, node.id, "HELLO proves the identity file's node id");
    assert_eq!(hello.flags, 1, "a listening node sets flag bit 0");
    // A seeder started without --peer has dialled nobody, so it can list nobody (5.4).
    let entries = a.expect_peers();
    assert!(entries.is_empty(), "a seeder that dialled nobody listed {entries:?}");

    // A second connection: the same node id and Noise static key (one per run, 2.2), another
    // handshake hash, so another signature.
    let mut b = node.dial();
    let (hello_b, _) = b.handshake(&Identity::random(), Some(node.port));
    assert_eq!(hello_b.id, node.id);
    assert_eq!(b.remote_static, a.remote_static, "2.2: one Noise static key for each run of the process");
    assert_ne!(b.hh, a.hh, "2.3: the handshake hash is unique to the connection");
    assert_ne!(hello_b.sig, hello.sig);

    // Both connections are usable, with HELLO's own frames and answers in transport messages.
    let mut rng = Rng::new(11);
    a.probe(&mut rng);
    b.probe(&mut rng);
    a.probe(&mut rng);
}

#[test]
fn identity_file_is_a_raw_secret_and_refused_when_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let file = small_file(dir.path(), 2);

    // `pex id` creates the identity: 32 bytes, mode 0600, whose Ed25519 public key it prints.
    let fresh = dir.path().join("fresh");
    let out = crate::run(crate::pex().args(["id", "--data-dir"]).arg(&fresh));
    assert!(out.status.success(), "pex id: {out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let secret: Hash = fs::read(fresh.join("identity")).unwrap().try_into().expect("a 32-byte identity file");
    assert_eq!(printed.trim(), hex(&Identity::from_secret(&secret).id()), "the node id of the identity file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(fresh.join("identity")).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!fresh.join("identity.tmp").exists());

    // A file of another length, or one others may read, is an error: the node does not start.
    for (case, secret, mode) in
        [("31 bytes", vec![7u8; 31], 0o600), ("33 bytes", vec![7; 33], 0o600), ("mode 0640", vec![7; 32], 0o640)]
    {
        let data = dir.path().join(case.replace(' ', "-"));
        write_identity(&data, &secret, mode);
        let mut cmd = crate::pex();
        cmd.arg("seed").arg(&file).args(["--listen", "[::1]:0", "--data-dir"]).arg(&data);
        let out = crate::run(&mut cmd);
        assert!(!out.status.success(), "identity file of {case}: the node started: {out:?}");
        assert_eq!(fs::read(data.join("identity")).unwrap(), secret, "identity file of {case} was replaced");
    }
}

#[test]
fn broken_handshakes_are_closed_without_another_byte() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&small_file(dir.path(), 3), &[]);
    let mut rng = Rng::new(13);
    let mut good = node.peer();
    let mut wrong = Vec::new();

    // Message 1 of a wrong length: nothing at all comes back.
    for (case, sent) in [
        ("message 1 of 33 bytes", [&[0, 33][..], &[9; 33]].concat()),
        ("message 1 of 31 bytes", [&[0, 31][..], &[9; 31]].concat()),
    ] {
        let got = raw_exchange(node.port, &sent);
        if !got.is_empty() {
            wrong.push(format!("{case}: got {}", hex(&got)));
        }
    }

    // Failures at message 3: message 2 (98 bytes), then the close.
    type Third = fn(&mut Noise) -> Vec<u8>;
    let cases: Vec<(&str, &[u8], Third)> = vec![
        ("another prologue (pex/1)", b"pex/1", |_| lp(&[5; 64])),
        ("message 3 tampered", PROLOGUE, |hs| {
            let mut m = lp(&hs.write3());
            m[20] ^= 0x40;
            m
        }),
        ("message 3 of length 0", PROLOGUE, |_| vec![0, 0]),
        ("message 3 of 65 bytes", PROLOGUE, |hs| [&[0, 65][..], &hs.write3(), &[0]].concat()),
        ("message 3 of 63 bytes", PROLOGUE, |hs| lp(&hs.write3()[..63])),
        ("message 3 encrypted under another static key", PROLOGUE, |hs| {
            // A valid message 3 of another handshake state: the tags do not verify here.
            hs.s = random32();
            let mut other = Noise { sym: Symmetric::new(b"not this"), s: hs.s, e: hs.e, re: hs.re, rs: hs.rs };
            other.sym.mix_key(&[1]);
            lp(&other.write3())
        }),
    ];
    for (case, prologue, third) in cases {
        let mut s = tcp(node.port);
        let mut hs = Noise::new(prologue, random32(), random32());
        s.write_all(&lp(&hs.write1())).unwrap();
        let m2 = read_msg2(&mut s);
        let read2 = hs.read2(&m2);
        assert_eq!(read2.is_ok(), prologue == PROLOGUE, "{case}: message 2 decrypts exactly with the right prologue");
        s.write_all(&third(&mut hs)).unwrap();
        match read_to_close(&mut s) {
            Ok(got) if got.is_empty() => {}
            Ok(got) => wrong.push(format!("{case}: got {} after message 2", hex(&got))),
            Err(e) => wrong.push(format!("{case}: {e}")),
        }
    }

    // The peer closing in the middle of the handshake changes nothing for others.
    let mut s = tcp(node.port);
    s.write_all(&lp(&Noise::random().write1())).unwrap();
    read_msg2(&mut s);
    drop(s);

    good.probe(&mut rng);
    node.peer().probe(&mut rng);
    assert!(wrong.is_empty(), "answers that disagree with 2.3:\n{}", wrong.join("\n"));
}

#[test]
fn a_v1_client_gets_the_plaintext_v1_reject() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&small_file(dir.path(), 4), &[]);
    let v1_hello = unhex("000000270350455801000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2328");
    for (case, sent) in [
        ("a v1 HELLO", v1_hello.clone()),
        ("a v1 HELLO and PEERS", [v1_hello.clone(), unhex("0000000102")].concat()),
        ("two zero bytes", vec![0, 0]),
    ] {
        let got = raw_exchange(node.port, &sent);
        assert_eq!(hex(&got), hex(&v1_answer()), "2.5: the answer to {case}");
        // As a v1 node decodes it: REJECT(3) with the reason (appendix A layout).
        assert_eq!((got[4], got[5]), (REJECT, VIOLATION));
    }
    node.peer().probe(&mut Rng::new(14));
}

/// 4.4's strictness: `S + ℓ` in place of `S` (little-endian, 32 bytes).
fn add_group_order(s: &[u8]) -> [u8; 32] {
    let l = unhex("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010");
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let v = s[i] as u16 + l[i] as u16 + carry;
        out[i] = v as u8;
        carry = v >> 8;
    }
    assert_eq!(carry, 0);
    out
}

#[test]
fn hello_must_come_first_and_prove_its_node_id_on_this_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&small_file(dir.path(), 5), &[]);
    let mut rng = Rng::new(15);
    let me = Identity::random();
    let mut good = node.peer();
    let mut wrong = Vec::new();

    // Each case: what we send as our first frame(s), given this connection's handshake hash.
    type First = Box<dyn Fn(&Hash) -> Vec<u8>>;
    let other = Identity::random();
    let replayed = {
        // A HELLO that was valid on another connection (which stays open meanwhile).
        let mut c = node.dial();
        let hello = me.hello(&c.hh, 0, 0);
        c.send(&hello);
        c.expect_hello(Some(node.port));
        (c, hello)
    };
    let replayed_hello = replayed.1.clone();
    let me_secret = me.secret();
    let other_secret = other.secret();
    let cases: Vec<(&str, First, &[&str])> = vec![
        (
            "a HELLO replayed from another connection",
            Box::new(move |_| replayed_hello.clone()),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        (
            "a HELLO with one bit of its signature flipped",
            Box::new(move |hh| {
                let mut f = Identity::from_secret(&me_secret).hello(hh, 0, 0);
                f[50] ^= 1;
                f
            }),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        (
            "a HELLO signed by another key than its node id",
            Box::new(move |hh| {
                let sig = Identity::from_secret(&other_secret).sign_hello(hh);
                hello_frame(&Identity::from_secret(&me_secret).id(), 0, 0, &sig)
            }),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        (
            "a HELLO with a non-reduced S (S + l)",
            Box::new(move |hh| {
                let me = Identity::from_secret(&me_secret);
                let mut sig = me.sign_hello(hh);
                let s = add_group_order(&sig[32..]);
                sig[32..].copy_from_slice(&s);
                hello_frame(&me.id(), 0, 0, &sig)
            }),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        (
            "a small-order node id with R = identity, S = 0 (valid for any message unless strict)",
            Box::new(|_| {
                let mut id = [0u8; 32];
                id[0] = 1;
                let mut sig = [0u8; 64];
                sig[0] = 1;
                hello_frame(&id, 0, 0, &sig)
            }),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        (
            "a HELLO over the right hash signed without the \"pex/2 hello\" prefix",
            Box::new(move |hh| {
                let me = Identity::from_secret(&me_secret);
                hello_frame(&me.id(), 0, 0, &me.key.sign(hh).to_bytes())
            }),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        (
            "a signed HELLO of version 1 (103 bytes)",
            Box::new(move |hh| {
                let mut f = Identity::from_secret(&me_secret).hello(hh, 0, 0);
                f[8] = 1;
                f
            }),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        (
            "a signed HELLO with magic PEY",
            Box::new(move |hh| {
                let mut f = Identity::from_secret(&me_secret).hello(hh, 0, 0);
                f[7] = b'Y';
                f
            }),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        (
            "a v1 HELLO (v2 vector hello_v1)",
            Box::new(|_| {
                unhex("0000002703504558018a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c2328")
            }),
            &["HELLO", "REJECT(3)", "EOF"],
        ),
        ("a keep-alive", Box::new(|_| keepalive()), &["HELLO", "REJECT(3)", "EOF"]),
        ("an unknown type", Box::new(|_| frame(200, b"future")), &["HELLO", "REJECT(3)", "EOF"]),
        ("an ASK", Box::new(ask), &["HELLO", "REJECT(3)", "EOF"]),
        ("an empty PEERS", Box::new(|_| peers(&[])), &["HELLO", "REJECT(3)", "EOF"]),
        ("L = 1,048,610 (v1 vector too_long)", Box::new(|_| unhex("0010002201")), &["HELLO", "REJECT(3)", "EOF"]),
        ("a REJECT", Box::new(|_| reject(SHUTTING_DOWN, 10, "shutting down")), &["HELLO", "EOF"]),
    ];
    for (case, first, expected) in &cases {
        let mut c = node.dial();
        let sent = first(&c.hh);
        c.send(&sent);
        let got = transcript(&mut c, Some(node.port));
        if got != *expected {
            wrong.push(format!("{case}: sent {} got {got:?}", hex(&sent[..sent.len().min(64)])));
        }
    }

    // Flag bits 1-7 are ignored: a HELLO with flags fe is fine (4.4).
    let mut c = node.dial();
    c.send(&Identity::random().hello(&c.hh, 0, 0xfe));
    c.expect_hello(Some(node.port));
    c.expect_peers();
    c.probe(&mut rng);

    good.probe(&mut rng);
    drop(replayed);
    assert!(wrong.is_empty(), "answers that disagree with 4.4 and 5.1:\n{}", wrong.join("\n"));
}

#[test]
fn a_second_connection_of_one_identity_and_the_node_itself_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node_secret = [0x5a; 32];
    let node = Node::start_as(&small_file(dir.path(), 6), &[], Some(&node_secret));
    let mut rng = Rng::new(16);
    let me = Identity::random();
    let mut first = node.peer_as(&me);

    // 5.2: both connections dialled by us, so the older stays and the new one gets REJECT(1),
    // after the HELLOs and without PEERS (5.1 step 5.4).
    let mut dup = node.dial();
    dup.send(&me.hello(&dup.hh, 0, 0));
    dup.expect_hello(Some(node.port));
    let f = dup.expect_reject_then_close(DUPLICATE, "a second connection with a live node id");
    assert_eq!(
        (f.retry_after(), f.reason().as_str()),
        (60, "already connected (the older connection stays)"),
        "{}",
        f.show()
    );
    first.probe(&mut rng);

    // 5.1 step 5.2: the node's own id (we hold its identity file) gets REJECT(4).
    let itself = Identity::from_secret(&node_secret);
    assert_eq!(itself.id(), node.id);
    let mut c = node.dial();
    c.send(&itself.hello(&c.hh, 0, 0));
    c.expect_hello(Some(node.port));
    let f = c.expect_reject_then_close(SELF, "HELLO with the node's own id");
    assert_eq!(f.reason(), "connected to self", "{}", f.show());

    // Once the first connection is gone, the identity is welcome again (polled: the node sees
    // the close when it sees it).
    drop(first);
    node.peer_again_as(&me).probe(&mut rng);
}
