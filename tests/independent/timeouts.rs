//! Time-outs and keep-alives (5.8), and GIVEs under an upload limit (2.4).

use super::*;

/// Frames read on a thread of its own until EOF or an error (which ends the stream).
fn frame_reader(mut rx: Rx) -> mpsc::Receiver<io::Result<Option<Frame>>> {
    let (tx, out) = mpsc::channel();
    thread::spawn(move || loop {
        let f = rx.read_frame();
        let more = matches!(f, Ok(Some(_)));
        if tx.send(f).is_err() || !more {
            break;
        }
    });
    out
}

/// Writes `wire` one byte every `pace` until the node closes; returns the frames it sent
/// (keep-alives aside) and how many bytes had been written when the close was seen.
fn dribble(c: Conn, wire: Vec<u8>, pace: Duration, limit: Duration) -> (Vec<Frame>, usize) {
    let t0 = Instant::now();
    let Conn { rx, mut tx, .. } = c;
    let frames_rx = frame_reader(rx);
    let (mut sent, mut writing, mut next) = (0, true, Instant::now());
    let mut frames: Vec<Frame> = Vec::new();
    loop {
        let shown = |frames: &[Frame]| frames.iter().map(Frame::show).collect::<Vec<_>>();
        assert!(t0.elapsed() < limit, "dribbling connection still open after {limit:?}; got {:?}", shown(&frames));
        if writing && sent < wire.len() && Instant::now() >= next {
            match tx.s.write_all(&wire[sent..=sent]) {
                Ok(()) => sent += 1,
                Err(_) => writing = false, // the node has closed; its frames are still to be read
            }
            next += pace;
        }
        let wait = if writing && sent < wire.len() {
            next.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(1)
        };
        match frames_rx.recv_timeout(wait) {
            Ok(Ok(Some(f))) if f.ty.is_none() => {}
            Ok(Ok(Some(f))) => {
                check_rules(&f);
                let done = f.is(DONT_HAVE) && sent == wire.len();
                frames.push(f);
                if done {
                    return (frames, sent);
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) if is_reset(&e) => break,
            Ok(Err(e)) => panic!("dribbling connection: {e}; got {:?}", shown(&frames)),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("the reader ends with EOF or an error"),
        }
    }
    (frames, sent)
}

#[test]
fn silent_dribbling_and_stalled_connections_are_closed_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let size = 2 * PIECE + 1000; // 3 pieces, the last one short
    let (file, original) = write_file(dir.path(), "three.bin", size, 7);
    let hashes = piece_hashes(&original);
    let mut node = Node::start(&file, &["--hello-timeout", "1.5", "--idle-timeout", "2"]);
    let port = node.port;
    let mut normal = node.peer();
    let mut workers: Vec<(&str, thread::JoinHandle<String>)> = Vec::new();

    // (a) TCP only, nothing sent: the handshake does not complete, closed without a byte.
    workers.push((
        "no handshake",
        thread::spawn(move || {
            let t0 = Instant::now();
            let got = read_to_close(&mut tcp(port)).unwrap();
            assert!(got.is_empty(), "no handshake: the node wrote {}", hex(&got));
            format!("closed after {:?}", t0.elapsed())
        }),
    ));

    // (b) The handshake, then nothing: the node's HELLO, then REJECT(3) (5.1 step 4).
    workers.push((
        "no HELLO",
        thread::spawn(move || {
            let t0 = Instant::now();
            let mut c = Conn::dial(port);
            let got = transcript(&mut c, Some(port));
            assert_eq!(got, ["HELLO", "REJECT(3)", "EOF"], "no HELLO after the handshake");
            format!("REJECT(3) and closed after {:?}", t0.elapsed())
        }),
    ));

    // (c) A valid HELLO message, one byte every 300 ms (38 s in all): REJECT(3) long before.
    workers.push((
        "dribbled HELLO",
        thread::spawn(move || {
            let t0 = Instant::now();
            let mut c = Conn::dial(port);
            let wire = c.tx.seal(&Identity::random().hello(&c.hh, 0, 0));
            let total = wire.len();
            let (frames, sent) = dribble(c, wire, Duration::from_millis(300), Duration::from_secs(60));
            let shown: Vec<String> = frames.iter().map(Frame::show).collect();
            assert!(
                frames.len() == 2 && frames[0].is(HELLO) && frames[1].is(REJECT) && frames[1].body[0] == VIOLATION,
                "dribbled HELLO: expected HELLO, REJECT(3), EOF; got {shown:?}"
            );
            assert!(sent < total, "the dribbled HELLO was complete before the REJECT");
            format!("REJECT(3) after {:?}, {sent} of {total} bytes sent", t0.elapsed())
        }),
    ));

    // (d) After the set-up, a GIVE announced as 1 MiB that stops after 11 bytes, and (e) a
    // transport message announced as 1000 bytes that stops after 10: closed by the idle
    // time-out without REJECT.
    for (case, partial) in [("stalled frame", true), ("stalled message", false)] {
        workers.push((
            case,
            thread::spawn(move || {
                let mut c = Conn::dial(port);
                c.handshake(&Identity::random(), Some(port));
                let t0 = Instant::now();
                if partial {
                    c.send(&[0x00, 0x10, 0x00, 0x00, GIVE, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
                } else {
                    c.tx.send_raw(&[&[0x03, 0xe8][..], &[7; 10]].concat());
                }
                let got = transcript(&mut c, None);
                assert!(
                    got.iter().all(|t| t == "keep-alive" || t == "EOF"),
                    "{case}: expected a close without REJECT, got {got:?}"
                );
                format!("closed after {:?}", t0.elapsed())
            }),
        ));
    }

    // (f) A message arriving slowly (one byte every 100 ms, 2.75 times the idle time-out in
    // all) keeps the connection open: its ASK is answered.
    workers.push((
        "slow ASK",
        thread::spawn(move || {
            let mut c = Conn::dial(port);
            c.handshake(&Identity::random(), Some(port));
            let h = Rng::new(99).hash();
            let wire = c.tx.seal(&ask(&h));
            let t0 = Instant::now();
            let (frames, _) = dribble(c, wire, Duration::from_millis(100), Duration::from_secs(60));
            let shown: Vec<String> = frames.iter().map(Frame::show).collect();
            assert!(frames.len() == 1 && frames[0].wire() == dont_have(&h), "slow ASK: got {shown:?}");
            format!("answered after {:?}", t0.elapsed())
        }),
    ));

    // (g) Meanwhile a normal client keeps ASKing and getting its pieces.
    let mut rounds = 0;
    while !workers.iter().all(|(_, w)| w.is_finished()) {
        let i = rounds % hashes.len();
        normal.fetch_expect(&hashes[i], &original[i * PIECE..((i + 1) * PIECE).min(size)]);
        rounds += 1;
        thread::sleep(Duration::from_millis(100)); // pacing, well inside the 2 s idle time-out
    }
    for (case, w) in workers {
        eprintln!("{case}: {}", join(w));
    }
    eprintln!("the normal client completed {rounds} ASKs meanwhile");
    assert!(rounds >= 5, "the normal client completed only {rounds} ASKs");
    normal.fetch_expect(&hashes[2], &original[2 * PIECE..]);
    assert!(node.alive(), "the node exited");
}

#[test]
fn keep_alives_are_sent_and_keep_connections_open() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&small_file(dir.path(), 9), &["--keepalive", "0.5", "--idle-timeout", "3"]);
    let mut rng = Rng::new(19);
    let mut talker = node.peer();
    let mut mute = node.peer();

    // We send a keep-alive every 300 ms for 6 s (twice the idle time-out): the connection stays,
    // and the node, which has nothing else to say, sends keep-alives of its own.
    let t0 = Instant::now();
    let mut received = 0;
    while t0.elapsed() < Duration::from_secs(6) {
        talker.send(&keepalive());
        talker.rx.set_timeout(Duration::from_millis(300));
        loop {
            match talker.try_recv() {
                Ok(Some(f)) if f.ty.is_none() => received += 1,
                Ok(Some(f)) => panic!("unexpected {}", f.show()),
                Ok(None) => panic!("the node closed a connection that sent keep-alives"),
                Err(e) if is_timeout(&e) => break,
                Err(e) => panic!("{e}"),
            }
        }
    }
    talker.rx.set_timeout(IO_TIMEOUT);
    assert!(received >= 1, "no keep-alive from the node in 6 s with --keepalive 0.5");
    talker.probe(&mut rng);

    // The mute connection sent nothing all this while: closed without REJECT, although the
    // node's own keep-alives went out on it.
    let got = transcript(&mut mute, None);
    assert!(got.iter().all(|t| t == "keep-alive" || t == "EOF"), "a mute connection: {got:?}");
    assert!(got.len() > 1, "no keep-alive on the mute connection: {got:?}");
    eprintln!("keep-alives: {received} on the talking connection; the mute one got {got:?}");
}

// ---------------------------------------------------------------------------------------------
// 7. GIVEs under an upload limit (2.4)
// ---------------------------------------------------------------------------------------------

#[test]
fn an_upload_limit_cuts_gives_into_smaller_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (file, original) = write_file(dir.path(), "two.bin", PIECE + 5000, 10);
    let hashes = piece_hashes(&original);
    // c = limit / 64, bounded to 16 KiB … 256 KiB, at most 65,519.
    for (rate, cut) in [("2MiB", 32_768), ("512KiB", 16_384), ("64MiB", MAX_PLAIN)] {
        let node = Node::start(&file, &["--max-upload-rate", rate]);
        let mut c = node.peer();
        c.rx.cut = cut;
        let t0 = Instant::now();
        c.fetch_expect(&hashes[0], &original[..PIECE]);
        c.fetch_expect(&hashes[1], &original[PIECE..]);
        c.send(&ask(&node.root));
        let f = c.recv();
        assert!(f.is(GIVE) && f.msgs.len() == 1, "the manifest: {}", f.show());
        eprintln!("--max-upload-rate {rate}: two pieces in messages of {cut} bytes in {:?}", t0.elapsed());
    }
}
