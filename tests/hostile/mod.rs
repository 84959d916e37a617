//! Hostile peers and input against the real binary: terminal injection, ASK floods,
//! names at the limit, addresses that can never be peers.

use super::*;

// ---------------------------------------------------------------------------------------------
// Raw protocol connections on blocking sockets: fake peers and flooding clients
// ---------------------------------------------------------------------------------------------

/// One blocking v2 protocol connection: the Noise handshake (`pex::noise::handshake`, run once
/// on a current-thread runtime), then frames encoded and decoded with `pex::wire`, travelling in
/// transport messages sealed and opened with `pex::noise::Cipher` (u16 BE length, ciphertext
/// with its 16-byte tag; a frame may span messages and a message may hold many frames).
struct Wire {
    s: TcpStream,
    /// Opened plaintext not yet decoded into frames.
    buf: bytes::BytesMut,
    /// Ciphertext received and not yet opened (a partial transport message).
    raw: bytes::BytesMut,
    send: pex::noise::Cipher,
    recv: pex::noise::Cipher,
    /// The handshake hash: what this connection's HELLOs sign.
    hh: [u8; 32],
    identity: pex::identity::Identity,
}

impl Wire {
    /// Runs the Noise handshake on `s` (as initiator when we dialled); every step, and later
    /// every read and write, is bounded by `limit`.
    fn secure(
        s: TcpStream,
        initiator: bool,
        limit: Duration,
        identity: pex::identity::Identity,
    ) -> std::io::Result<Wire> {
        s.set_nodelay(true)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (s, session) = rt.block_on(async {
            s.set_nonblocking(true)?;
            let mut t = tokio::net::TcpStream::from_std(s)?;
            let keys = pex::noise::Keys::generate();
            let session = tokio::time::timeout(limit, pex::noise::handshake(&mut t, initiator, &keys))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "Noise handshake"))?
                .map_err(std::io::Error::other)?;
            std::io::Result::Ok((t.into_std()?, session))
        })?;
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(limit))?;
        s.set_write_timeout(Some(limit))?;
        Ok(Wire {
            s,
            buf: bytes::BytesMut::new(),
            raw: bytes::BytesMut::new(),
            send: session.send,
            recv: session.recv,
            hh: session.handshake_hash,
            identity,
        })
    }

    /// Connects to `addr` ("HOST:PORT"), runs Noise, sends a signed HELLO (not listening) and
    /// expects the node's HELLO, whose signature must verify for this connection.
    fn handshake(addr: &str) -> Wire {
        let (s, me) = (TcpStream::connect(addr).unwrap(), pex::identity::Identity::generate());
        let mut w = Wire::secure(s, true, PATIENCE, me).unwrap();
        w.send(&w.hello()).unwrap();
        match w.recv() {
            Ok(Some(Frame::Hello(h))) => {
                assert!(pex::identity::verify_hello(&h.node_id, &w.hh, &h.signature), "{addr}: HELLO not signed");
                w
            }
            other => panic!("expected HELLO from {addr}, got {other:?}"),
        }
    }

    /// This side's HELLO (not listening), signed for this connection.
    fn hello(&self) -> Frame {
        Frame::Hello(Hello {
            node_id: self.identity.node_id(),
            listen_port: 0,
            flags: 0,
            signature: self.identity.sign_hello(&self.hh),
        })
    }

    /// Appends `plain` to `out` as transport messages of at most `MAX_PLAINTEXT` bytes each.
    fn seal_into(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        use pex::noise::{MAX_PLAINTEXT, TAG_LEN};
        for chunk in plain.chunks(MAX_PLAINTEXT) {
            out.extend_from_slice(&((chunk.len() + TAG_LEN) as u16).to_be_bytes());
            let at = out.len();
            out.extend_from_slice(chunk);
            out.extend_from_slice(&[0; TAG_LEN]);
            self.send.seal(&mut out[at..]).unwrap();
        }
    }

    /// Seals and writes `plain`: frames, or any bytes of the frame stream.
    fn send_bytes(&mut self, plain: &[u8]) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(plain.len() + 64);
        self.seal_into(plain, &mut out);
        self.s.write_all(&out)
    }

    fn send(&mut self, f: &Frame) -> std::io::Result<()> {
        self.send_bytes(&f.to_bytes())
    }

    /// The next frame, or `None` at the end of the stream between transport messages and frames.
    fn recv(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            if let Some(f) = pex::wire::decode(&mut self.buf).map_err(std::io::Error::other)? {
                return Ok(Some(f));
            }
            // Open every whole transport message received.
            let mut opened = false;
            while self.raw.len() >= 2 {
                let len = u16::from_be_bytes([self.raw[0], self.raw[1]]) as usize;
                if self.raw.len() < 2 + len {
                    break;
                }
                let mut msg = self.raw.split_to(2 + len);
                let plain = self.recv.open(&mut msg[2..]).map_err(std::io::Error::other)?;
                self.buf.extend_from_slice(plain);
                opened = true;
            }
            if opened {
                continue;
            }
            let mut chunk = [0u8; 64 << 10];
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                if self.buf.is_empty() && self.raw.is_empty() {
                    return Ok(None);
                }
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.raw.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame other than keep-alive and PEERS; panics at the end of the stream.
    fn next(&mut self) -> Frame {
        loop {
            match self.recv() {
                Ok(Some(Frame::KeepAlive | Frame::Peers(_))) => {}
                Ok(Some(f)) => return f,
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }
}

/// What a [`FakePeer`] does on each connection, after the Noise handshake.
#[derive(Clone)]
enum Fake {
    /// REJECT(2) with this reason as the only frame (as a node at its connection limit does).
    RejectOnly(String),
    /// After the dialler's HELLO: HELLO, then REJECT(5) with this reason.
    RejectHello(String),
    /// After the dialler's HELLO: HELLO and PEERS, then REJECT(5) with this reason in answer
    /// to the first ASK.
    RejectAsk(String),
    /// After the dialler's HELLO: HELLO and PEERS, then this blob (a manifest; the root is its
    /// hash) in answer to every ASK.
    Manifest(Vec<u8>),
}

/// A fake peer listening on [::1]:0 that treats every connection (one at a time) as `Fake`
/// says, as the Noise responder; it stops when dropped.
struct FakePeer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakePeer {
    fn start(fake: Fake) -> FakePeer {
        let listener = TcpListener::bind("[::1]:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        // One node id on every connection, as a real node has.
        let identity = pex::identity::Identity::generate();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let w = Wire::secure(conn, false, Duration::from_secs(10), identity.clone());
                    let _ = w.and_then(|w| FakePeer::serve(w, &fake));
                }
            }
        });
        FakePeer { addr, stop, thread: Some(thread) }
    }

    /// One connection; an error (the dialler went away, a time-out) just ends it.
    fn serve(mut w: Wire, fake: &Fake) -> std::io::Result<()> {
        let reject = |reason: &str| Frame::Reject { code: 5, retry_after: 0, reason: reason.to_owned() };
        if let Fake::RejectOnly(reason) = fake {
            w.send(&Frame::Reject { code: 2, retry_after: 0, reason: reason.clone() })?;
            w.s.shutdown(Shutdown::Write)?;
            while w.recv()?.is_some() {}
            return Ok(());
        }
        match w.recv()? {
            Some(Frame::Hello(h)) if pex::identity::verify_hello(&h.node_id, &w.hh, &h.signature) => {}
            _ => return Ok(()),
        }
        w.send(&w.hello())?;
        if let Fake::RejectHello(reason) = fake {
            w.send(&reject(reason))?;
        } else {
            w.send(&Frame::Peers(Vec::new()))?;
            loop {
                match (w.recv()?, fake) {
                    (None, _) => return Ok(()),
                    (Some(Frame::Ask(_)), Fake::RejectAsk(reason)) => {
                        w.send(&reject(reason))?;
                        break;
                    }
                    (Some(Frame::Ask(hash)), Fake::Manifest(blob)) if hash == pex::Hash::of(blob) => {
                        w.send(&Frame::Give { hash, data: blob.clone().into() })?;
                    }
                    (Some(Frame::Ask(hash)), _) => w.send(&Frame::DontHave(hash))?,
                    _ => {}
                }
            }
        }
        // REJECT is the last frame: half-close, then read until the dialler closes (4.7).
        w.s.shutdown(Shutdown::Write)?;
        while w.recv()?.is_some() {}
        Ok(())
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A manifest blob (docs/PROTOCOL.md, 5) for an empty file called `name`, unchecked.
fn raw_manifest(name: &str) -> Vec<u8> {
    let mut m = b"PEXM\x01".to_vec();
    m.extend_from_slice(&(1u32 << 20).to_be_bytes());
    m.extend_from_slice(&0u64.to_be_bytes());
    m.extend_from_slice(&(name.len() as u16).to_be_bytes());
    m.extend_from_slice(name.as_bytes());
    m.extend_from_slice(&0u32.to_be_bytes());
    m
}

/// Text (within the 200-byte REJECT limit) that rewrites a terminal if printed as it is: sets
/// the window title, clears the screen, colours, forges an "error:" line, backspaces, moves the
/// cursor and erases, hides the cursor, plants a hyperlink, asks the terminal to type its cursor
/// position (ESC[6n), and the same with C1 controls (CSI, OSC, ST, NEL), NUL, DEL, FF and VT.
const HOSTILE: &str = "\x1b]0;pwned\x07\x1b[2J\x1b[31mforged error\r\nerror: all fine\x1b[0m ok\x08\x08\x1b[1A\x1b[2K\
    \x1b[?25l\x1b]8;;http://x.invalid/\x07link\x1b]8;;\x07\x00\x7f\u{9b}2J\u{9d}0;c1\u{9c}\u{85}\x1bPq\x1b\\\x0c\x0b\x1b[6n";

/// Why `stderr` is not safe to show on a terminal, if it is not: it may hold no control
/// character but '\n' (no ESC, BEL, CR, backspace, NUL, DEL, and no C1 control either), and no
/// line longer than 500 bytes.
fn terminal_unsafe(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let mut bad: Vec<char> = text.chars().filter(|&c| c != '\n' && c.is_control()).collect();
    let longest = stderr.split(|&b| b == b'\n').map(<[u8]>::len).max().unwrap_or(0);
    if bad.is_empty() && longest <= 500 {
        return None;
    }
    let count = bad.len();
    bad.sort_unstable();
    bad.dedup();
    let shown: Vec<String> = text
        .lines()
        .filter(|l| l.len() > 500 || l.chars().any(char::is_control))
        .take(3)
        .map(|l| format!("{:?}", l.chars().take(400).collect::<String>()))
        .collect();
    Some(format!(
        "{count} control characters {bad:?}, longest line {longest} bytes, in lines like\n  {}",
        shown.join("\n  ")
    ))
}

/// Runs `pex fetch ROOT --peer FAKE` with each verbosity (and with NO_COLOR set) against a fake
/// peer that behaves as `fake` says; each must fail with only safe text on stderr. Returns what
/// went wrong, each problem starting with `label`.
fn fetch_from_fake(label: &str, fake: Fake, root: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let peer = FakePeer::start(fake);
    let addr = peer.addr.to_string();
    for (i, (flags, no_color)) in
        [(&[][..], false), (&["-v"], false), (&["-v"], true), (&["-vv"], false)].into_iter().enumerate()
    {
        let out = dir.path().join(format!("out{i}"));
        let mut cmd = crate::pex();
        cmd.args(["fetch", root, "--peer", &addr, "--connect-timeout", "3", "--give-up-after", "3"])
            .args(["-o", out.to_str().unwrap(), "--data-dir", dir.path().join(format!("d{i}")).to_str().unwrap()])
            .args(flags)
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let result = run(&mut cmd);
        let what = format!("{label}: fetch {flags:?}{}", if no_color { " with NO_COLOR=1" } else { "" });
        if result.status.success() {
            problems.push(format!("{what} succeeded"));
        }
        if let Some(problem) = terminal_unsafe(&result.stderr) {
            problems.push(format!("{what}: {problem}"));
        }
        // The peer's text cannot start a line of its own, such as a forged "error: ..." line.
        let text = String::from_utf8_lossy(&result.stderr);
        let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error")).collect();
        if errors.len() != 1 {
            let some = &errors[..errors.len().min(2)];
            problems.push(format!("{what}: {} lines start with \"error\", such as {some:?}", errors.len()));
        }
        // At -vv at least, the peer's text reaches stderr (shown safely): what is checked
        // above was put to the test, not avoided by a connection that never got that far.
        if flags == ["-vv"] && !text.contains("pwned") {
            let some: String = text.chars().take(600).collect();
            problems.push(format!("{what}: the peer's text never reached stderr: {some:?}"));
        }
        if flags.is_empty() && text.lines().count() != 1 {
            let some: String = text.chars().take(600).collect();
            problems.push(format!("{what}: expected one line, got {some:?}"));
        }
    }
    problems
}

#[test]
fn a_reject_reason_cannot_put_terminal_escapes_on_stderr() {
    assert!(HOSTILE.len() <= pex::wire::MAX_REJECT_REASON, "{} bytes", HOSTILE.len());
    let mut problems =
        fetch_from_fake("REJECT instead of HELLO", Fake::RejectOnly(HOSTILE.to_owned()), &"ab".repeat(32));
    problems.extend(fetch_from_fake("HELLO then REJECT", Fake::RejectHello(HOSTILE.to_owned()), &"ab".repeat(32)));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_reject_after_the_handshake_cannot_put_terminal_escapes_on_stderr() {
    let problems = fetch_from_fake("REJECT in answer to ASK", Fake::RejectAsk(HOSTILE.to_owned()), &"cd".repeat(32));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_manifest_name_cannot_put_terminal_escapes_on_stderr() {
    // A name without separators, so that only its control characters make it invalid.
    let manifest = raw_manifest(&HOSTILE.replace(['/', '\\'], ""));
    let root = pex::Hash::of(&manifest).to_hex();
    let problems = fetch_from_fake("manifest name", Fake::Manifest(manifest), &root);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// VmHWM (peak resident set size) of process `pid`, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).expect("no VmHWM in /proc/PID/status");
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// Bytes that arrived on the TCP connection between local port `port` and remote port `peer`
/// (on [::1]) and that its owner has not read yet, from /proc/net/tcp6; `None` if it is gone.
fn unread_bytes(port: u16, peer: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp6").ok()?;
    let port_of = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if port_of(f.get(1)?)? == port && port_of(f.get(2)?)? == peer {
            u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()
        } else {
            None
        }
    })
}

/// A new connection to `addr`: handshake, ASK for `root`, expect its GIVE. Returns how long it took.
fn served(addr: &str, root: pex::Hash) -> Duration {
    let t = Instant::now();
    let mut w = Wire::handshake(addr);
    w.send(&Frame::Ask(root)).unwrap();
    match w.next() {
        Frame::Give { hash, data } => assert!(hash == root && pex::Hash::of(&data) == root, "a GIVE of other data"),
        other => panic!("ASK for the root: expected its GIVE, got {other:?}"),
    }
    t.elapsed()
}

#[test]
fn a_flood_of_asks_from_a_peer_that_never_reads_keeps_the_seeders_memory_bounded() {
    const ASKS: usize = 2_000_000;
    const BATCH: usize = 10_000;
    const LIMIT_KIB: u64 = 16 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let (mut seeder, _, _) = Seeder::with_file(dir.path(), 1000, 71, &[]);
    let root: pex::Hash = seeder.root.parse().unwrap();
    let port: u16 = seeder.addr.rsplit(':').next().unwrap().parse().unwrap();
    let pid = seeder.child.id();
    served(&seeder.addr, root);
    let mut flooder = Wire::handshake(&seeder.addr);
    let flooder_port = flooder.s.local_addr().unwrap().port();
    let before = vm_hwm_kib(pid);

    // ASKs for random hashes, never reading a reply: each batch is sealed into transport
    // messages of up to 64 KiB (about 1,770 ASKs each, frames spanning message boundaries).
    // When the seeder stops reading, TCP back-pressure stalls the writes and a write
    // time-out ends the flood.
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let written = written.clone();
        std::thread::spawn(move || {
            flooder.s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            let start = Instant::now();
            let mut rng = fastrand::Rng::with_seed(72);
            let mut batch = bytes::BytesMut::with_capacity(BATCH * 37);
            let mut sealed = Vec::with_capacity(BATCH * 37 + 1024);
            let mut sent = 0;
            while sent < ASKS && start.elapsed() < Duration::from_secs(30) {
                batch.clear();
                for _ in 0..BATCH {
                    let mut h = [0u8; 32];
                    rng.fill(&mut h);
                    Frame::Ask(pex::Hash(h)).encode(&mut batch);
                }
                sealed.clear();
                flooder.seal_into(&batch, &mut sealed);
                if flooder.s.write_all(&sealed).is_err() {
                    break;
                }
                sent += BATCH;
                written.store(sent, Ordering::SeqCst);
            }
            // The connection stays open (unread) until the test ends.
            (sent, start.elapsed(), flooder)
        })
    };

    // Meanwhile, once the flood is well under way, another client is served.
    let deadline = Instant::now() + PATIENCE;
    while written.load(Ordering::SeqCst) < 200_000 {
        assert!(Instant::now() < deadline, "the flood never got going");
        assert!(!writer.is_finished(), "the flood ended after {} ASKs", written.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(10));
    }
    let during = served(&seeder.addr, root);
    let (sent, took, mut flooder) = writer.join().unwrap();

    // Let the seeder take in what it will: wait until it has read everything that arrived, or
    // until what it left unread stops shrinking for 2 s (it stopped reading that connection).
    let deadline = Instant::now() + PATIENCE;
    let (mut least, mut since) = (u64::MAX, Instant::now());
    let unread = loop {
        let unread = unread_bytes(port, flooder_port).unwrap_or(0);
        if unread == 0 || since.elapsed() >= Duration::from_secs(2) || Instant::now() >= deadline {
            break unread;
        }
        if unread < least {
            (least, since) = (unread, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let after = vm_hwm_kib(pid);
    let after_flood = served(&seeder.addr, root);
    let grown = after.saturating_sub(before);
    eprintln!(
        "{sent} ASKs written in {took:?}, {unread} bytes left unread; VmHWM {before} KiB before, {after} KiB \
         after (+{grown} KiB); another client served in {during:?} during the flood, {after_flood:?} after"
    );
    assert!(seeder.child.try_wait().unwrap().is_none(), "the seeder exited");
    assert!(
        grown < LIMIT_KIB,
        "{sent} ASKs from a peer that never reads grew the seeder's VmHWM by {grown} KiB \
         ({before} → {after} KiB), limit {LIMIT_KIB} KiB"
    );
    // The seeder took the flood in as ASKs: what it sent back opens and decodes as answers.
    match flooder.next() {
        Frame::DontHave(_) => {}
        other => panic!("the flooder's first answer: expected DONT_HAVE, got {other:?}"),
    }
    drop(flooder);
}

#[test]
fn a_file_with_a_255_byte_name_is_fetched_under_that_name() {
    let dir = tempfile::tempdir().unwrap();
    // NAME_MAX is 255 bytes: the longest name a file can have, in ASCII and in 2-byte UTF-8.
    for (i, name) in ["a".repeat(255), format!("{}a", "é".repeat(127))].into_iter().enumerate() {
        assert_eq!(name.len(), 255);
        let src_dir = dir.path().join(format!("src{i}"));
        std::fs::create_dir(&src_dir).unwrap();
        let src = src_dir.join(&name);
        let bytes = data((1 << 20) + 4321, 80 + i as u64);
        std::fs::write(&src, &bytes).unwrap();
        let seeder = Seeder::start(&src, &dir.path().join(format!("s{i}")), &[]);
        // No -o: the file's own name, in the current directory.
        let cwd = dir.path().join(format!("cwd{i}"));
        std::fs::create_dir(&cwd).unwrap();
        let result = run(crate::pex()
            .current_dir(&cwd)
            .args(["fetch", &seeder.root, "--peer", &seeder.peer])
            .args(["--data-dir", dir.path().join(format!("f{i}")).to_str().unwrap()]));
        let err = String::from_utf8_lossy(&result.stderr);
        assert!(result.status.success(), "a {}-character name: {err}", name.chars().count());
        let printed = String::from_utf8(result.stdout).unwrap();
        let canonical = |p: std::path::PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
        assert_eq!(canonical(cwd.join(printed.trim())), canonical(cwd.join(&name)), "printed path");
        assert!(std::fs::read(cwd.join(&name)).unwrap() == bytes, "copy differs");
        let left: Vec<_> = std::fs::read_dir(&cwd).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [std::ffi::OsString::from(&name)], "only the file is left in the directory");
        seeder.interrupt();
    }
}

#[test]
fn peer_addresses_that_can_never_be_dialled_are_refused_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let dd = dir.path().join("d");
    let root = "ab".repeat(32);
    // Broadcast, multicast (IPv4 and IPv6) and port 0 name no TCP peer: dialling them only
    // earns an error from the system ("Permission denied", "Network is unreachable",
    // "Connection refused"), after a wasted --connect-timeout.
    for (addr, shown) in [
        ("255.255.255.255:9000", "255.255.255.255"),
        ("224.0.0.1:9000", "224.0.0.1"),
        ("[ff02::1]:9000", "ff02::1"),
        ("[::1]:0", "::1"),
    ] {
        let e = fails(&["fetch", &root, "--peer", addr, "--connect-timeout", "2", "--data-dir", dd.to_str().unwrap()]);
        assert!(e.starts_with("error:") && e.contains(shown), "--peer {addr}: {e}");
        for dial_error in ["os error", "Permission denied", "Network is unreachable", "Connection refused"] {
            assert!(!e.contains(dial_error), "--peer {addr} was dialled: {e}");
        }
    }
}
