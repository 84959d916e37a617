//! Transport messages (2.4) and connections to and from the node, over blocking sockets.

use super::*;

pub(super) fn tcp(port: u16) -> TcpStream {
    let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect to the node");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Fills `buf`; `Ok(false)` if the stream ended before its first byte.
pub(super) fn read_or_eof(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::Error::new(ErrorKind::UnexpectedEof, "the stream ended inside a unit")),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads one Noise message (u16 length, bytes); `None` at EOF before it.
pub(super) fn read_noise(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0; 2];
    if !read_or_eof(r, &mut len)? {
        return Ok(None);
    }
    let mut m = vec![0; u16::from_be_bytes(len) as usize];
    r.read_exact(&mut m)?;
    Ok(Some(m))
}

/// Everything the peer writes until it closes (a reset counts as a close).
pub(super) fn read_to_close(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut all = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(all),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_reset(&e) => return Ok(all),
            Err(e) => return Err(format!("{e} after {} bytes: {}", all.len(), hex(&all[..all.len().min(64)]))),
        }
    }
}

/// The receiving half of a connection: opens transport messages, cuts the frame stream.
pub(super) struct Rx {
    pub(super) s: BufReader<TcpStream>,
    pub(super) gcm: Gcm,
    /// Plaintext received but not yet part of a returned frame.
    pub(super) buf: Vec<u8>,
    /// The plaintext size pex cuts its frames into (2.4): 65,519, less under an upload limit.
    pub(super) cut: usize,
}

impl Rx {
    /// The plaintext of the next transport message; `None` at EOF between messages.
    pub(super) fn read_msg(&mut self) -> io::Result<Option<Vec<u8>>> {
        let Some(m) = read_noise(&mut self.s)? else { return Ok(None) };
        if m.len() < TAG {
            return Err(bad(format!("a transport message with n = {} < 16", m.len())));
        }
        let n = self.gcm.n;
        let p = self.gcm.open(&[], &m).ok_or_else(|| bad(format!("transport message {n}: the tag does not verify")))?;
        Ok(Some(p))
    }

    /// The next frame; `None` at EOF between frames. Checks what 2.4 says pex does as a sender:
    /// every frame starts a new message, is cut into messages of `cut` bytes (the last one
    /// shorter), no message is empty and none holds two frames.
    pub(super) fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        assert!(self.buf.is_empty());
        let mut msgs = Vec::new();
        loop {
            if self.buf.len() >= 4 {
                let l = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if l > MAX_L {
                    return Err(bad(format!("the node announced a frame of L = {l} > {MAX_L}")));
                }
                if self.buf.len() >= 4 + l {
                    if self.buf.len() > 4 + l {
                        return Err(bad(format!(
                            "two frames in one transport message (2.4 says pex never does that): {}",
                            hex(&self.buf[..self.buf.len().min(80)])
                        )));
                    }
                    let (last, whole) = msgs.split_last().unwrap();
                    if *last > self.cut || whole.iter().any(|&m| m != self.cut) {
                        return Err(bad(format!(
                            "a frame of {} bytes cut into messages of {msgs:?} plaintext bytes, not {} (2.4)",
                            4 + l,
                            self.cut
                        )));
                    }
                    let f = if l == 0 {
                        Frame { ty: None, body: Vec::new(), msgs }
                    } else {
                        Frame { ty: Some(self.buf[4]), body: self.buf[5..].to_vec(), msgs }
                    };
                    self.buf.clear();
                    return Ok(Some(f));
                }
            }
            match self.read_msg()? {
                None if msgs.is_empty() => return Ok(None),
                None => return Err(io::Error::new(ErrorKind::UnexpectedEof, "the stream ended inside a frame")),
                Some(p) if p.is_empty() => return Err(bad("an empty transport message (2.4: pex never sends one)")),
                Some(p) => {
                    msgs.push(p.len());
                    self.buf.extend_from_slice(&p);
                }
            }
        }
    }

    pub(super) fn set_timeout(&self, t: Duration) {
        self.s.get_ref().set_read_timeout(Some(t.max(Duration::from_millis(1)))).unwrap();
    }
}

/// The sending half of a connection: seals plaintext into transport messages.
pub(super) struct Tx {
    pub(super) s: TcpStream,
    pub(super) gcm: Gcm,
}

impl Tx {
    /// One transport message with `plain` (0 to 65,519 bytes), length prefix included.
    pub(super) fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        assert!(plain.len() <= MAX_PLAIN);
        lp(&self.gcm.seal(&[], plain))
    }

    /// `bytes` of frame stream, cut into messages of at most `cut` plaintext bytes.
    pub(super) fn seal_cut(&mut self, bytes: &[u8], cut: usize) -> Vec<u8> {
        bytes.chunks(cut).flat_map(|c| self.seal(c)).collect()
    }

    pub(super) fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let wire = self.seal_cut(bytes, MAX_PLAIN);
        self.s.write_all(&wire)
    }

    pub(super) fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).unwrap_or_else(|e| panic!("sending {}: {e}", hex(&bytes[..bytes.len().min(64)])));
    }

    pub(super) fn send_raw(&mut self, wire: &[u8]) {
        self.s.write_all(wire).unwrap_or_else(|e| panic!("sending {}: {e}", hex(&wire[..wire.len().min(64)])));
    }
}

/// A connection after a successful Noise handshake.
pub(super) struct Conn {
    pub(super) rx: Rx,
    pub(super) tx: Tx,
    /// The handshake hash (2.3).
    pub(super) hh: Hash,
    /// The peer's Noise static public key, learned in the handshake.
    pub(super) remote_static: Hash,
}

/// Message 2 as the initiator reads it: 98 bytes starting `00 60`.
pub(super) fn read_msg2(s: &mut TcpStream) -> Vec<u8> {
    let mut m = [0; 98];
    s.read_exact(&mut m).unwrap_or_else(|e| panic!("reading handshake message 2: {e}"));
    assert_eq!(m[..2], [0x00, 0x60], "handshake message 2 length (2.3)");
    m[2..].to_vec()
}

impl Conn {
    pub(super) fn new(s: TcpStream, send: &Hash, recv: &Hash, hs: &Noise) -> Conn {
        let w = s.try_clone().unwrap();
        Conn {
            rx: Rx { s: BufReader::with_capacity(256 << 10, s), gcm: Gcm::new(recv), buf: Vec::new(), cut: MAX_PLAIN },
            tx: Tx { s: w, gcm: Gcm::new(send) },
            hh: hs.sym.h,
            remote_static: hs.rs,
        }
    }

    /// Dials the node on [::1]:`port` and runs the handshake as initiator (2.3).
    pub(super) fn dial(port: u16) -> Conn {
        let mut s = tcp(port);
        let mut hs = Noise::random();
        s.write_all(&lp(&hs.write1())).expect("writing handshake message 1");
        let m2 = read_msg2(&mut s);
        hs.read2(&m2).expect("handshake message 2");
        s.write_all(&lp(&hs.write3())).expect("writing handshake message 3");
        let (_, k1, k2) = hs.finish();
        Conn::new(s, &k1, &k2, &hs)
    }

    /// Runs the handshake as responder on a connection the node dialled.
    pub(super) fn respond(mut s: TcpStream) -> Conn {
        let mut hs = Noise::random();
        let mut m1 = [0; 34];
        s.read_exact(&mut m1).unwrap_or_else(|e| panic!("reading handshake message 1: {e}"));
        assert_eq!(m1[..2], [0x00, 0x20], "handshake message 1 length (2.3)");
        hs.read1(&m1[2..]).expect("handshake message 1");
        s.write_all(&lp(&hs.write2())).expect("writing handshake message 2");
        let mut m3 = [0; 66];
        s.read_exact(&mut m3).unwrap_or_else(|e| panic!("reading handshake message 3: {e}"));
        assert_eq!(m3[..2], [0x00, 0x40], "handshake message 3 length (2.3)");
        hs.read3(&m3[2..]).expect("handshake message 3");
        let (_, k1, k2) = hs.finish();
        Conn::new(s, &k2, &k1, &hs)
    }

    pub(super) fn send(&mut self, bytes: &[u8]) {
        self.tx.send(bytes)
    }

    pub(super) fn try_recv(&mut self) -> io::Result<Option<Frame>> {
        let f = self.rx.read_frame()?;
        if let Some(f) = &f {
            check_rules(f);
        }
        Ok(f)
    }

    /// The next frame, keep-alives included; `None` at EOF.
    pub(super) fn recv_raw(&mut self) -> Option<Frame> {
        self.try_recv().unwrap_or_else(|e| panic!("reading a frame: {e}"))
    }

    /// The next frame that is not a keep-alive; panics at EOF.
    pub(super) fn recv(&mut self) -> Frame {
        loop {
            match self.recv_raw() {
                None => panic!("the node closed the connection"),
                Some(f) if f.ty.is_none() => continue,
                Some(f) => return f,
            }
        }
    }

    /// Checks a HELLO from the node (4.4): version 2, a signature by its node id over this
    /// connection's handshake hash, the listen port (if known) and flags 01 exactly when it listens.
    pub(super) fn check_hello(&self, f: &Frame, port: Option<u16>) -> Result<Hello, String> {
        if !f.is(HELLO) {
            return Err(format!("expected HELLO, got {}", f.show()));
        }
        if f.wire().len() != 108 || f.body[..4] != *b"PEX\x02" {
            return Err(format!("not a v2 HELLO: {}", f.show()));
        }
        let h = parse_hello(&f.body);
        if !hello_signature_ok(&h.id, &self.hh, &h.sig) {
            return Err(format!("the HELLO signature does not verify for this connection: {}", f.show()));
        }
        if port.is_some_and(|p| p != h.port) {
            return Err(format!("HELLO listen port {} instead of {port:?}: {}", h.port, f.show()));
        }
        if h.flags != u8::from(h.port != 0) {
            return Err(format!("HELLO flags {:02x} with listen port {} (4.4): {}", h.flags, h.port, f.show()));
        }
        Ok(h)
    }

    pub(super) fn expect_hello(&mut self, port: Option<u16>) -> Hello {
        let f = self.recv();
        self.check_hello(&f, port).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Expects PEERS (4.3); returns its entries.
    pub(super) fn expect_peers(&mut self) -> Vec<Entry> {
        let f = self.recv();
        assert!(f.is(PEERS), "expected PEERS, got {}", f.show());
        parse_peers(&f.body)
    }

    /// Sends `me`'s HELLO (not listening), expects the node's HELLO then PEERS.
    pub(super) fn handshake(&mut self, me: &Identity, port: Option<u16>) -> (Hello, Vec<Entry>) {
        let hello = me.hello(&self.hh, 0, 0);
        self.send(&hello);
        let h = self.expect_hello(port);
        (h, self.expect_peers())
    }

    /// Expects REJECT with `code` as the next frame, then the close; returns the REJECT.
    pub(super) fn expect_reject_then_close(&mut self, code: u8, context: &str) -> Frame {
        let f = self.recv();
        assert!(f.is(REJECT), "{context}: expected REJECT({code}), got {}", f.show());
        assert_eq!(f.body[0], code, "{context}: REJECT code: {}", f.show());
        self.expect_close(context);
        f
    }

    /// Reads until the node closes; any frame (keep-alives included) is an error.
    pub(super) fn expect_close(&mut self, context: &str) {
        match self.try_recv() {
            Ok(None) => {}
            Err(e) if is_reset(&e) => {}
            Ok(Some(f)) => panic!("{context}: expected the connection to close, got {}", f.show()),
            Err(e) => panic!("{context}: expected the connection to close: {e}"),
        }
    }

    /// ASKs for `h` and expects a GIVE of exactly `data`.
    pub(super) fn fetch_expect(&mut self, h: &Hash, data: &[u8]) {
        self.try_fetch(h, data).unwrap_or_else(|e| panic!("{e}"));
    }

    /// ASKs for `h` and expects a GIVE of exactly `data` (keep-alives aside) as the next frame.
    pub(super) fn try_fetch(&mut self, h: &Hash, data: &[u8]) -> Result<(), String> {
        self.tx.try_send(&ask(h)).map_err(|e| format!("ASK {}: {e}", hex(h)))?;
        let f = loop {
            match self.try_recv() {
                Ok(Some(f)) if f.ty.is_none() => {}
                Ok(Some(f)) => break f,
                Ok(None) => return Err(format!("ASK {}: the node closed the connection", hex(h))),
                Err(e) => return Err(format!("ASK {}: no answer: {e}", hex(h))),
            }
        };
        if !(f.is(GIVE) && f.hash() == *h) {
            return Err(format!("ASK {}: expected its GIVE, got {}", hex(h), f.show()));
        }
        if f.body[32..] != *data || sha(&f.body[32..]) != *h {
            return Err(format!("GIVE {} carries other data", hex(h)));
        }
        Ok(())
    }

    /// ASKs for a random hash and expects its DONT_HAVE: the connection is alive and in order.
    pub(super) fn probe(&mut self, rng: &mut Rng) {
        let h = rng.hash();
        self.send(&ask(&h));
        let f = self.recv();
        assert_eq!(f.wire(), dont_have(&h), "probe ASK: got {}", f.show());
    }

    /// Reads until `expected` arrives (keep-alives aside) or `deadline` passes.
    pub(super) fn wait_for(&mut self, expected: &[u8], start: Instant, deadline: Duration) -> Result<Duration, String> {
        let result = loop {
            self.rx.set_timeout(deadline.saturating_sub(start.elapsed()));
            match self.try_recv() {
                Ok(Some(f)) if f.ty.is_none() => {}
                Ok(Some(f)) if f.wire() == expected => break Ok(start.elapsed()),
                Ok(Some(f)) => break Err(format!("expected {}, got {}", hex(expected), f.show())),
                Ok(None) => break Err("the node closed the connection".to_owned()),
                Err(e) if is_timeout(&e) => break Err(format!("no answer {:?} after the start", start.elapsed())),
                Err(e) => break Err(e.to_string()),
            }
        };
        self.rx.set_timeout(IO_TIMEOUT);
        result
    }
}

/// Everything the node sends until it closes, one token per frame ("HELLO" for a valid HELLO,
/// "PEERS", "REJECT(3)", …), then "EOF" (a reset counts as a close too).
pub(super) fn transcript(c: &mut Conn, port: Option<u16>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    loop {
        match c.try_recv() {
            Ok(Some(f)) => out.push(match f.ty {
                None => "keep-alive".to_owned(),
                Some(HELLO) => match c.check_hello(&f, port) {
                    Ok(_) => "HELLO".to_owned(),
                    Err(e) => e,
                },
                Some(PEERS) => "PEERS".to_owned(),
                Some(REJECT) => format!("REJECT({})", f.body[0]),
                _ => f.show(),
            }),
            Ok(None) => break out.push("EOF".to_owned()),
            Err(e) if is_reset(&e) => break out.push("EOF".to_owned()),
            Err(e) => break out.push(format!("error: {e}")),
        }
    }
    out
}

/// A listening socket on [::1] for the node to dial (the node as initiator).
pub(super) struct Listener {
    pub(super) l: TcpListener,
    pub(super) port: u16,
}

impl Listener {
    pub(super) fn new() -> Listener {
        Listener::on("[::1]:0")
    }

    pub(super) fn on(addr: &str) -> Listener {
        let l = TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        Listener { l, port }
    }

    /// The next connection, polled for until `within` has passed.
    pub(super) fn accept(&self, within: Duration) -> TcpStream {
        let deadline = Instant::now() + within;
        loop {
            match self.l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                    s.set_nodelay(true).unwrap();
                    return s;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "the node did not dial [::1]:{} within {within:?}", self.port);
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }

    /// The node's next dial, handshake done as responder, HELLOs exchanged (ours as `me`,
    /// listening here, shareable) and PEERS read; returns the node's HELLO and PEERS.
    pub(super) fn accept_peer(&self, me: &Identity, within: Duration) -> (Conn, Hello, Vec<Entry>) {
        let mut c = Conn::respond(self.accept(within));
        let hello = me.hello(&c.hh, self.port, 1);
        c.send(&hello);
        let h = c.expect_hello(None);
        let p = c.expect_peers();
        c.send(&peers(&[]));
        (c, h, p)
    }
}
