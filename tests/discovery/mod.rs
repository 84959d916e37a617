//! Finding holders by the root alone, between real processes: on the local
//! network (namespaces on one bridge), by ticket, by remembered peers, and on
//! a local Mainline DHT (namespaces, and the crate's test network on
//! 127.0.0.1); hostile LAN answers; a capture of the bridge showing that no
//! datagram carries the root.

mod net;

use super::{forward, Proc, PATIENCE};
use net::{seen_in, Net};
use pex::discovery::{lan, LookupKey};
use pex::Hash;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `pex seed` (or `serve`) and the lines it printed.
struct Node {
    /// Killed when the test ends.
    _proc: Proc,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
}

impl Node {
    fn start(cmd: &mut Command) -> Node {
        let mut proc = Proc::spawn(cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()));
        let (tx, out) = mpsc::channel();
        let (etx, err) = mpsc::channel();
        forward(proc.0.stdout.take().unwrap(), tx);
        forward(proc.0.stderr.take().unwrap(), etx);
        Node { _proc: proc, out, err }
    }

    /// The first line of `stream` that satisfies `want`.
    fn line(stream: &mpsc::Receiver<String>, want: impl Fn(&str) -> bool, what: &str) -> String {
        let mut seen = Vec::new();
        loop {
            match stream.recv_timeout(PATIENCE) {
                Ok(l) if want(&l) => return l,
                Ok(l) => seen.push(l),
                Err(_) => panic!("no {what}; printed: {seen:?}"),
            }
        }
    }

    fn stdout_line(&self, want: impl Fn(&str) -> bool, what: &str) -> String {
        Node::line(&self.out, want, what)
    }

    fn stderr_line(&self, want: impl Fn(&str) -> bool, what: &str) -> String {
        Node::line(&self.err, want, what)
    }
}

/// `pex seed FILE --listen [::]:9000 --data-dir DIR EXTRA…`; its root and ticket.
fn seed(mut cmd: Command, file: &Path, data_dir: &Path, extra: &[&str]) -> (Node, String, String) {
    cmd.arg("seed").arg(file).args(["--listen", "[::]:9000", "--data-dir"]).arg(data_dir).args(extra);
    let node = Node::start(&mut cmd);
    // With --json the root and ticket go to stderr, keeping stdout for the summary.
    let lines = if extra.contains(&"--json") { &node.err } else { &node.out };
    let root = Node::line(lines, |l| l.len() == 64, "root");
    let ticket = Node::line(lines, |l| l.starts_with("pex:"), "ticket");
    (node, root, ticket)
}

/// Runs a fetch to completion (bounded by PATIENCE).
fn run(cmd: &mut Command) -> Output {
    Proc::spawn(cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped())).output_within(PATIENCE)
}

/// `pex fetch ROOT --json --no-remember -o DIR/got.bin --data-dir DIR/f` in host k: the root alone.
fn fetch_by_root(net: &Net, k: usize, root: &str, dir: &Path) -> Output {
    let mut cmd = net.pex(k);
    cmd.args(["fetch", root, "--json", "--no-remember", "-o"]).arg(dir.join("got.bin"));
    run(cmd.arg("--data-dir").arg(dir.join("f")))
}

fn summary(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "fetch failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// A 2.5 MiB file in `dir`, its bytes.
fn file(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let bytes = super::data(5 << 19, 91);
    let path = dir.join("shared.bin");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

fn root_of(hex: &str) -> Hash {
    hex.parse().unwrap()
}

/// The root may never cross the network in discovery: not as bytes, not as hex.
fn assert_no_root(udp: &[Vec<u8>], root: &str) {
    let raw = root_of(root).0;
    assert!(!seen_in(udp, &raw), "the root crossed the bridge in a datagram");
    assert!(!seen_in(udp, root.as_bytes()), "the root crossed the bridge as hex");
    assert!(!seen_in(udp, root.to_uppercase().as_bytes()), "the root crossed the bridge as HEX");
}

#[test]
fn the_lan_finds_a_seeder_in_another_namespace_by_root_alone() {
    let Some(net) = Net::new(2) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (src, bytes) = file(dir.path());
    // Nothing on the LAN yet: the fetch says what it tried, in one line, exit 1.
    let root_hex = pex::Hash::of(b"nobody has this").to_hex();
    let o = run(net.pex(2).args(["fetch", &root_hex, "--no-remember", "--data-dir"]).arg(dir.path().join("f0")));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.trim(),
        "error: no peer found: LAN: no answer in 3 s; DHT: off (use --dht); remembered peers: off",
        "{err}"
    );
    let capture = net.capture();
    let (mut seeder, root, _) = seed(net.pex(1), &src, &dir.path().join("s"), &["--json"]);
    let o = fetch_by_root(&net, 2, &root, dir.path());
    let s = summary(&o);
    let udp = capture.stop();
    assert_eq!(std::fs::read(dir.path().join("got.bin")).unwrap(), bytes);
    assert_eq!(s["discovered"]["lan"], 1, "{s}");
    assert_eq!(s["discovered"]["dht"], 0, "{s}");
    // The first query goes out at once and the answer comes at once: well under 3 s
    // from the start of the fetch to the whole (2.5 MiB) file.
    let secs = s["seconds"].as_f64().unwrap();
    assert!(secs < 3.0, "LAN fetch took {secs} s");
    // The capture saw the query for the lookup key, and never the root.
    let key = LookupKey::of(&root_of(&root));
    assert!(seen_in(&udp, &key.0), "no LAN query in the capture ({} datagrams)", udp.len());
    assert_no_root(&udp, &root);
    // The seeder counted the query it answered.
    seeder._proc.signal(libc::SIGINT);
    let s: serde_json::Value = serde_json::from_str(&seeder.stdout_line(|l| l.starts_with('{'), "summary")).unwrap();
    assert!(s["lan"]["queries"].as_u64().unwrap() >= 1 && s["lan"]["answered"].as_u64().unwrap() >= 1, "{s}");
}

#[test]
fn on_a_link_without_ipv6_the_lan_lookup_uses_ipv4_multicast() {
    let Some(net) = Net::ipv4_only(2) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (src, bytes) = file(dir.path());
    let (_seeder, root, _) = seed(net.pex(1), &src, &dir.path().join("s"), &[]);
    let o = fetch_by_root(&net, 2, &root, dir.path());
    let s = summary(&o);
    assert_eq!(std::fs::read(dir.path().join("got.bin")).unwrap(), bytes);
    assert_eq!(s["discovered"]["lan"], 1, "{s}");
    assert_eq!(s["peers"][0]["address"], "10.77.0.1:9000", "{s}");
}

#[test]
fn a_ticket_then_the_remembered_peers_fetch_across_namespaces_without_the_lan() {
    let Some(net) = Net::new(2) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (src, bytes) = file(dir.path());
    let (_seeder, root, ticket) = seed(net.pex(1), &src, &dir.path().join("s"), &["--no-lan"]);
    assert!(ticket.contains("fd77::1") && ticket.contains("10.77.0.1"), "{ticket}");
    let fdd = dir.path().join("f");
    let fetch = |target: &str, out: &str| {
        let mut cmd = net.pex(2);
        cmd.env("PEX_NO_LAN", "1").args(["fetch", target, "--json", "-o"]).arg(dir.path().join(out));
        run(cmd.arg("--data-dir").arg(&fdd))
    };
    let s = summary(&fetch(&ticket, "one.bin"));
    assert_eq!(std::fs::read(dir.path().join("one.bin")).unwrap(), bytes);
    assert!(s["discovered"]["ticket"].as_u64().unwrap() >= 2, "{s}");
    // Next time, the root alone: the data directory remembers the seeder.
    let s = summary(&fetch(&root, "two.bin"));
    assert_eq!(std::fs::read(dir.path().join("two.bin")).unwrap(), bytes);
    assert!(s["discovered"]["remembered"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["discovered"]["lan"], 0, "{s}");
}

#[test]
fn a_local_dht_in_namespaces_finds_the_seeder_by_root_alone() {
    let Some(net) = Net::new(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (src, bytes) = file(dir.path());
    let capture = net.capture();
    // Host 3 starts a new DHT; the others bootstrap from it. No LAN, no address.
    let mut boot = net.pex(3);
    boot.env("PEX_NO_LAN", "1").args(["serve", "--dht", "--dht-bootstrap", "none", "--dht-port", "6881"]);
    let boot = Node::start(boot.arg("--data-dir").arg(dir.path().join("b")));
    boot.stderr_line(|l| l == "DHT node on UDP port 6881", "DHT port line");
    let mut cmd = net.pex(1);
    cmd.env("PEX_NO_LAN", "1");
    let (seeder, root, _) = seed(cmd, &src, &dir.path().join("s"), &["--dht", "--dht-bootstrap", "10.77.0.3:6881"]);
    seeder.stderr_line(|l| l.starts_with("announced on the DHT"), "announce");
    let out = dir.path().join("got.bin");
    let mut cmd = net.pex(2);
    cmd.env("PEX_NO_LAN", "1").args(["fetch", &root, "--json", "--no-remember", "--dht"]);
    cmd.args(["--dht-bootstrap", "10.77.0.3:6881", "-o"]).arg(&out).arg("--data-dir").arg(dir.path().join("f"));
    let s = summary(&run(&mut cmd));
    let udp = capture.stop();
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert_eq!(s["discovered"]["dht"], 1, "{s}");
    assert!(s["dht_port"].as_u64().is_some_and(|p| p > 0), "{s}");
    // The DHT carried the 20-byte lookup key, never the root.
    let key = LookupKey::of(&root_of(&root));
    assert!(seen_in(&udp, &key.dht_id()), "no DHT traffic for the key in the capture");
    assert_no_root(&udp, &root);
    // The routing table was kept in the data directory.
    drop((seeder, boot));
}

#[test]
fn a_local_dht_on_loopback_where_a_pex_node_is_the_bootstrap() {
    // The crate's own test network on 127.0.0.1: no root privileges needed.
    let testnet = mainline::Testnet::builder(3).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (src, bytes) = file(dir.path());
    // The DHT is IPv4: the seeder listens on every address (it tells the DHT only its port).
    let mut args = vec!["--dht", "--listen", "[::]:0"];
    for b in &testnet.bootstrap {
        args.extend(["--dht-bootstrap", b.as_str()]);
    }
    let mut cmd = crate::pex();
    cmd.arg("seed").arg(&src).arg("--data-dir").arg(dir.path().join("s")).args(&args);
    let seeder = Node::start(&mut cmd);
    let root = seeder.stdout_line(|_| true, "root");
    let port = seeder.stderr_line(|l| l.starts_with("DHT node on UDP port "), "DHT port");
    let port = port.rsplit(' ').next().unwrap().to_owned();
    seeder.stderr_line(|l| l.starts_with("announced on the DHT"), "announce");
    // The fetcher knows only the seeder's DHT port: every pex node is a full DHT node.
    let out = dir.path().join("got.bin");
    let fdd = dir.path().join("f");
    let mut cmd = crate::pex();
    cmd.args(["fetch", &root, "--json", "--no-remember", "--dht", "--dht-bootstrap", &format!("127.0.0.1:{port}")]);
    let s = summary(&run(cmd.arg("-o").arg(&out).arg("--data-dir").arg(&fdd)));
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert_eq!(s["discovered"]["dht"], 1, "{s}");
    // It saved its routing table for the next run.
    let saved: Vec<String> = serde_json::from_slice(&std::fs::read(fdd.join("dht-nodes.json")).unwrap()).unwrap();
    assert!(!saved.is_empty());
    drop(seeder);
}

#[test]
fn forged_and_flooding_lan_answers_do_not_stop_a_fetch() {
    let Some(net) = Net::new(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (src, bytes) = file(dir.path());
    // Host 3 answers every query with a flood: node ids it is not, at ports where
    // nothing listens, each followed by an oversized datagram of garbage.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ready_tx, ready) = mpsc::channel();
    let stop2 = stop.clone();
    let forger = net.thread_in(3, move || {
        let sock = std::net::UdpSocket::bind(("::", lan::PORT)).unwrap();
        // SAFETY: if_nametoindex reads a NUL-terminated name.
        let eth0 = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        sock.join_multicast_v6(&lan::GROUP_V6, eth0).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 256];
        let mut forged = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
            let Ok(lan::Datagram::Query { nonce, key }) = lan::Datagram::decode(&buf[..n]) else { continue };
            for i in 0..200u16 {
                let node_id = pex::NodeId([(i % 251) as u8; 32]);
                let a = lan::Datagram::Answer { nonce, key, node_id, port: 1000 + i };
                let _ = sock.send_to(&a.encode(), from);
                let _ = sock.send_to(&[0x55; 1400], from);
                forged += 1;
            }
        }
        forged
    });
    ready.recv_timeout(PATIENCE).unwrap();
    let (_seeder, root, _) = seed(net.pex(1), &src, &dir.path().join("s"), &[]);
    let o = fetch_by_root(&net, 2, &root, dir.path());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let forged = forger.join().unwrap();
    let s = summary(&o);
    assert!(forged >= 200, "the forger answered {forged} times");
    assert_eq!(std::fs::read(dir.path().join("got.bin")).unwrap(), bytes);
    // One source gives at most 4 candidates: the seeder plus a bounded few from the forger.
    let lan = s["discovered"]["lan"].as_u64().unwrap();
    assert!((1..=1 + lan::CANDIDATES_PER_SOURCE as u64).contains(&lan), "{s}");
    // Only the seeder was ever connected (forged ids never completed a handshake).
    let peers = s["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{s}");
    assert_eq!(s["pieces_rejected"], 0);
}
