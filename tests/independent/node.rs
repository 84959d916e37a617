//! The node under test: a `pex seed` process, killed and reaped on drop.

use super::*;

/// A running `pex seed`; killed and reaped on drop.
pub(super) struct Node {
    pub(super) child: crate::Proc,
    pub(super) port: u16,
    pub(super) root: Hash,
    /// The node id in the printed fetch command (`--peer NODEID@[::1]:PORT`, 5.1).
    pub(super) id: Hash,
    pub(super) dir: tempfile::TempDir,
}

/// Writes an identity file (2.2): the 32-byte secret, mode 0600.
pub(super) fn write_identity(data_dir: &Path, secret: &[u8], mode: u32) {
    use std::os::unix::fs::OpenOptionsExt;
    fs::create_dir_all(data_dir).unwrap();
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(data_dir.join("identity")).unwrap();
    f.write_all(secret).unwrap();
}

impl Node {
    pub(super) fn start(file: &Path, extra: &[&str]) -> Node {
        Node::start_as(file, extra, None)
    }

    /// Starts `pex seed FILE` on [::1]; with `identity`, its data directory holds that secret.
    pub(super) fn start_as(file: &Path, extra: &[&str], identity: Option<&Hash>) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if let Some(secret) = identity {
            write_identity(&data, secret, 0o600);
        }
        let log = fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut child = crate::Proc::spawn(
            crate::pex()
                .arg("seed")
                .arg(file)
                .args(["--listen", "[::1]:0", "--data-dir"])
                .arg(&data)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log),
        );
        let stdout = child.stdout.take().unwrap();
        let mut node = Node { child, port: 0, root: [0; 32], id: [0; 32], dir };
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line); // keep draining even when nobody listens
            }
        });
        let root = lines.recv_timeout(STARTUP).expect("seeder printed no root");
        assert!(root.len() == 64 && root.bytes().all(|c| c.is_ascii_hexdigit()), "root line {root:?}");
        node.root = h32(&root);
        let hint = lines.recv_timeout(STARTUP).expect("seeder printed no fetch command");
        let peer = hint.strip_prefix(&format!("pex fetch {root} --peer ")).unwrap_or_else(|| panic!("line {hint:?}"));
        let (id, addr) = peer.split_once('@').unwrap_or_else(|| panic!("no NODEID@ in {hint:?}"));
        node.id = h32(id);
        let port = addr.strip_prefix("[::1]:").unwrap_or_else(|| panic!("address in {hint:?}"));
        node.port = port.parse().unwrap_or_else(|_| panic!("port in {hint:?}"));
        node
    }

    pub(super) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A new connection, the Noise handshake done, nothing else sent.
    pub(super) fn dial(&self) -> Conn {
        Conn::dial(self.port)
    }

    /// A connection that has completed the set-up (5.1) as `me`: HELLO both ways, PEERS read.
    pub(super) fn peer_as(&self, me: &Identity) -> Conn {
        let mut c = self.dial();
        let (h, _) = c.handshake(me, Some(self.port));
        assert_eq!(h.id, self.id, "the node's HELLO proves another id than the one it printed");
        c
    }

    pub(super) fn peer(&self) -> Conn {
        self.peer_as(&Identity::random())
    }

    /// Like [`Node::peer_as`] for an identity whose previous connection just closed: REJECT(1)
    /// is retried until the node has seen that close.
    pub(super) fn peer_again_as(&self, me: &Identity) -> Conn {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let mut c = self.dial();
            c.send(&me.hello(&c.hh, 0, 0));
            c.expect_hello(Some(self.port));
            let f = c.recv();
            if f.is(PEERS) {
                return c;
            }
            assert!(f.is(REJECT) && f.body[0] == DUPLICATE, "reconnecting: {}", f.show());
            assert!(Instant::now() < deadline, "the node still holds the closed connection");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident set size of the node in KiB, from /proc.
    pub(super) fn rss_kib(&self) -> u64 {
        try_rss_kib(self.child.id()).expect("the node's /proc/<pid>/status has no VmRSS")
    }

    pub(super) fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.child.kill(); // before reading its log; Proc's own drop would do it too late
        if thread::panicking() {
            print_log_tail("node", &self.dir.path().join("stderr.log"));
        }
    }
}

pub(super) fn print_log_tail(what: &str, path: &Path) {
    let log = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    eprintln!("--- {what} stderr (last lines) ---\n{}", lines[lines.len().saturating_sub(40)..].join("\n"));
}

/// VmRSS in KiB from /proc/<pid>/status; `None` once the process is gone.
pub(super) fn try_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
