//! Node identities on the command line (wire protocol v2): `pex id`, the id a
//! seeder prints in its fetch commands, `--peer NODEID@HOST:PORT` accepting only
//! the node that proves that id, and a v1 client turned away in plaintext.

use super::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn pex_id_prints_the_data_directorys_id_and_the_seeder_proves_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    // The first run creates the identity, the second reads it back; another directory is
    // another node.
    let id = node_id_of(&a);
    let out = run(crate::pex().args(["id", "--data-dir", a.to_str().unwrap()]));
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{id}\n"), "one line: the id");
    assert_ne!(node_id_of(&b), id, "two data directories, one id");
    let json = run(crate::pex().args(["id", "--json", "--data-dir", a.to_str().unwrap()]));
    assert!(json.status.success());
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("pex id --json prints JSON");
    assert_eq!(json, serde_json::json!({ "node_id": id }));
    // The secret key: 32 bytes only its owner may read.
    let file = a.join("identity");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "identity file mode");
    assert_eq!(meta.len(), 32, "identity file size");
    assert!(!std::fs::read(&file).unwrap().iter().all(|&b| b == 0), "an all-zero key");

    // A seeder on that data directory prints that id in its fetch command ...
    let src = dir.path().join("f.bin");
    std::fs::write(&src, data(1000, 90)).unwrap();
    let seeder = Seeder::start(&src, &a, &[]);
    assert_eq!(seeder.id, id);
    seeder.interrupt();
    assert_eq!(node_id_of(&a), id, "seeding kept the identity");
    // ... and so does one whose data directory was new: `pex id` then shows the id it created.
    let c = dir.path().join("c");
    let seeder = Seeder::start(&src, &c, &[]);
    let created = seeder.id.clone();
    seeder.interrupt();
    assert_eq!(node_id_of(&c), created);
    assert!(created != id && node_id_of(&b) != created);
    assert_eq!(std::fs::metadata(c.join("identity")).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_peer_that_proves_another_node_id_is_not_fetched_from() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _, bytes) = Seeder::with_file(dir.path(), (1 << 20) + 77, 91, &[]);
    // A real node id, of a node that is not there.
    let wrong = node_id_of(&dir.path().join("someone-else"));
    assert_ne!(wrong, seeder.id);
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("copy.bin");
    let fdd = dir.path().join("f");
    let mut args = fetch_args(&seeder.root, &format!("{wrong}@{}", seeder.addr), &out, &fdd);
    args.extend(["--connect-timeout", "3", "--give-up-after", "3"].map(String::from));
    let o = run(crate::pex().args(&args));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // The ids as pex shows them in messages: their first 8 hex digits.
    let (expected, proved) = (&wrong[..8], &seeder.id[..8]);
    assert!(
        err.starts_with("error: cannot reach any peer:")
            && err.contains(&seeder.addr)
            && err.contains(&format!("expected node {expected}, but the peer proved it is node {proved}")),
        "{err}"
    );
    assert!(o.stdout.is_empty(), "{}", String::from_utf8_lossy(&o.stdout));
    let left: Vec<_> = std::fs::read_dir(&outdir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "a refused peer left {left:?}");

    // The same address with the id it proves: fetched.
    let o = fetch(&seeder.root, &seeder.peer, &out, &fdd);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == bytes, "copy differs");
    seeder.interrupt();
}

#[test]
fn a_malformed_node_id_in_peer_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let dd = dir.path().join("d");
    let root = "ab".repeat(32);
    let id = "0123456789abcdef".repeat(4);
    for peer in [
        format!("{}@[::1]:9000", &id[..63]),
        format!("{id}0@[::1]:9000"),
        format!("{}g@[::1]:9000", &id[..63]),
        format!("{}é@[::1]:9000", &id[..62]),
        "@[::1]:9000".to_owned(),
        format!("{id}@nonsense"),
        format!("{id}@[::1]:0"),
    ] {
        let o = run(crate::pex().args(["fetch", &root, "--peer", &peer, "--data-dir", dd.to_str().unwrap()]));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "--peer {peer}: {err}");
        assert_eq!(err.lines().count(), 1, "--peer {peer}: {err}");
        assert!(err.starts_with("error:") && err.contains("--peer"), "--peer {peer}: {err}");
    }
    // The node id's own errors say what a node id is.
    for bad in [&id[..63], &format!("{}g", &id[..63])] {
        let o = run(crate::pex().args(["fetch", &root, "--peer", &format!("{bad}@[::1]:9000")]));
        assert!(String::from_utf8_lossy(&o.stderr).contains("64 hex digits"), "{bad}");
    }
    assert!(!dd.join("identity").exists(), "a usage error started a node");
}

#[test]
fn a_v1_client_gets_a_plaintext_v1_reject_and_the_seeder_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _, bytes) = Seeder::with_file(dir.path(), 2 << 20, 92, &[]);
    for _ in 0..2 {
        // A v1 HELLO: length 39, type 3, "PEX", version 1, a 32-byte node id, listen port 0.
        let mut hello = 39u32.to_be_bytes().to_vec();
        hello.push(3);
        hello.extend_from_slice(b"PEX\x01");
        hello.extend_from_slice(&data(32, 93));
        hello.extend_from_slice(&0u16.to_be_bytes());
        assert_eq!(hello.len(), 4 + 39);
        let mut s = TcpStream::connect(&seeder.addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(&hello).unwrap();
        // One plaintext v1 frame, REJECT (type 7) with code 3 and a reason, then the end.
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).unwrap();
        assert!(reply.len() >= 6, "{reply:?}");
        let len = u32::from_be_bytes(reply[..4].try_into().unwrap()) as usize;
        assert_eq!(reply.len(), 4 + len, "not exactly one v1 frame: {reply:?}");
        assert_eq!((reply[4], reply[5]), (7, 3), "not REJECT(3): {reply:?}");
        let reason = std::str::from_utf8(&reply[6..]).expect("a UTF-8 reason");
        assert!(reason.contains("pex/2") && reason.len() <= 200, "{reason:?}");
    }
    // Others are served as before.
    let out = dir.path().join("copy.bin");
    let o = fetch(&seeder.root, &seeder.peer, &out, &dir.path().join("f"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == bytes, "copy differs");
    seeder.interrupt();
}

/// A TCP relay on [::1] in front of `target` that records what crosses it in
/// both directions, until the returned flag is set.
fn recording_relay(target: &str) -> (String, Arc<std::sync::Mutex<Vec<u8>>>, Arc<AtomicBool>) {
    let listener = TcpListener::bind("[::1]:0").unwrap();
    let addr = format!("[::1]:{}", listener.local_addr().unwrap().port());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (target, seen2, stop2) = (target.to_owned(), seen.clone(), stop.clone());
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            let Ok((client, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            client.set_nonblocking(false).unwrap();
            let Ok(server) = TcpStream::connect(&target) else { continue };
            for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                let seen = seen2.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        seen.lock().unwrap().extend_from_slice(&buf[..n]);
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                });
            }
        }
    });
    (addr, seen, stop)
}

#[test]
fn a_capture_of_a_fetch_between_two_processes_holds_neither_the_root_nor_any_32_bytes_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _, bytes) = Seeder::with_file(dir.path(), 2 * (1 << 20) + 999, 93, &[]);
    let (relay, seen, stop) = recording_relay(&seeder.addr);
    let out = dir.path().join("copy.bin");
    // The seeder's node id, at the relay's address: the relay cannot pose as anyone.
    // --no-pex: the fetcher advertises no port, so the seeder cannot dial it back around the relay.
    let mut args = fetch_args(&seeder.root, &format!("{}@{relay}", seeder.id), &out, &dir.path().join("f"));
    args.push("--no-pex".into());
    let o = run(crate::pex().args(&args));
    stop.store(true, Ordering::SeqCst);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == bytes);
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > bytes.len(), "the relay carried the transfer ({} bytes)", seen.len());
    let root: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&seeder.root[2 * i..2 * i + 2], 16).unwrap()).collect();
    assert!(!seen.windows(32).any(|w| w == root), "the root crossed the wire in the clear");
    // Every 32-byte run of the file holds one of its 8-byte words at an offset divisible by 8.
    let words: std::collections::HashSet<&[u8]> = bytes.chunks_exact(8).collect();
    let hits = seen.windows(8).filter(|w| words.contains(w)).count();
    assert_eq!(hits, 0, "{hits} 8-byte words of the file crossed the wire in the clear");
    assert!(!seen.windows(5).any(|w| w == b"f.bin"), "the file name crossed the wire in the clear");
}
