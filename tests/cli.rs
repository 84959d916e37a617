//! The `pex` binary end to end: separate seeder and fetcher processes on [::1].

mod chat;
mod common;
mod discovery;
mod folders;
mod hostile;
mod identity;
mod independent;
mod stream;
mod terminal;
mod tickets;
mod truths;

use common::{data, PATIENCE};
use pex::wire::{Frame, Hello};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const PEX: &str = env!("CARGO_BIN_EXE_pex");

/// The `pex` binary with local-network discovery off (`PEX_NO_LAN`): tests
/// talk over [::1] and namespaces they create, and never multicast on this
/// machine's own interfaces. The discovery tests turn it back on.
pub fn pex() -> Command {
    let mut cmd = Command::new(PEX);
    cmd.env("PEX_NO_LAN", "1");
    cmd
}

/// A child process that is killed (SIGKILL) and reaped when dropped, so that a test that
/// fails, or returns early, never leaves a `pex seed`, `serve` or `fetch` running.
pub struct Proc(Child);

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        Proc(cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")))
    }

    /// Sends `sig`, unless the process has already exited.
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.0.try_wait().unwrap().is_none() {
            // SAFETY: kill(2) on our own child; it is not reaped yet, so its pid is not reused.
            unsafe { libc::kill(self.0.id() as i32, sig) };
        }
    }

    /// Waits for the process to exit; panics (and so kills it) if it runs longer than `limit`.
    pub fn wait_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "pex (pid {}) still running after {limit:?}", self.0.id());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Like [`Child::wait_with_output`], bounded by `limit`.
    pub fn output_within(mut self, limit: Duration) -> Output {
        fn drain(stream: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut s) = stream {
                    let _ = s.read_to_end(&mut bytes);
                }
                bytes
            })
        }
        let (stdout, stderr) = (drain(self.0.stdout.take()), drain(self.0.stderr.take()));
        let status = self.wait_within(limit);
        Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
    }

    /// Kills the process and reaps it (also done on drop).
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command to completion (at most [`PATIENCE`]) with stdout and stderr captured.
fn run(cmd: &mut Command) -> Output {
    Proc::spawn(cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped())).output_within(PATIENCE)
}

/// A running `pex seed`, with its root and where it serves.
struct Seeder {
    child: Proc,
    root: String,
    /// What its fetch command passes to `--peer`: `NODEID@[::1]:PORT`.
    peer: String,
    /// Its node id (64 hex digits), from `peer`.
    id: String,
    /// Its address `[::1]:PORT`, from `peer`.
    addr: String,
    lines: mpsc::Receiver<String>,
    errs: mpsc::Receiver<String>,
}

impl Seeder {
    /// Writes `size` pseudo-random bytes to `dir/f.bin` and seeds them from `dir/s`.
    fn with_file(dir: &Path, size: usize, seed: u64, extra: &[&str]) -> (Seeder, std::path::PathBuf, Vec<u8>) {
        let src = dir.join("f.bin");
        let bytes = data(size, seed);
        std::fs::write(&src, &bytes).unwrap();
        (Seeder::start(&src, &dir.join("s"), extra), src, bytes)
    }

    fn start(file: &Path, data_dir: &Path, extra: &[&str]) -> Seeder {
        let mut child = Proc::spawn(
            crate::pex()
                .args(["seed", file.to_str().unwrap(), "--listen", "[::1]:0", "--data-dir", data_dir.to_str().unwrap()])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        // With --json, stdout is kept for the final summary and the root goes to stderr.
        let json = extra.contains(&"--json");
        let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let (tx, lines) = mpsc::channel();
        let (etx, elines) = mpsc::channel();
        forward(stdout, tx);
        forward(stderr, etx);
        let announce = if json { &elines } else { &lines };
        let root = announce.recv_timeout(PATIENCE).expect("seeder printed no root");
        let hint = announce.recv_timeout(PATIENCE).expect("seeder printed no fetch command");
        // "pex fetch <root> --peer NODEID@[::1]:PORT"
        let peer = hint.rsplit(' ').next().unwrap().to_owned();
        assert_eq!(hint, format!("pex fetch {root} --peer {peer}"));
        let (id, addr) = peer.split_once('@').unwrap_or_else(|| panic!("no NODEID@ in {hint:?}"));
        assert!(is_node_id(id), "{hint:?}");
        let (id, addr) = (id.to_owned(), addr.to_owned());
        Seeder { child, root, peer, id, addr, lines, errs: elines }
    }

    /// Its stderr up to and including the first line that satisfies `last`.
    fn stderr_until(&self, last: impl Fn(&str) -> bool) -> String {
        let mut seen = String::new();
        loop {
            let line = self.errs.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("stderr so far: {seen}"));
            seen.push_str(&line);
            seen.push('\n');
            if last(&line) {
                return seen;
            }
        }
    }

    /// Ctrl-C: the seeder must exit 130 (interrupted); returns the rest of its stdout.
    fn interrupt(mut self) -> Vec<String> {
        self.child.signal(libc::SIGINT);
        let status = self.child.wait_within(PATIENCE);
        assert_eq!(status.code(), Some(130), "seeder exited with {status}");
        // The reader thread may still be forwarding the last lines after exit.
        let mut rest = Vec::new();
        // The channel closes when the reader thread reaches the end of the pipe.
        while let Ok(line) = self.lines.recv_timeout(PATIENCE) {
            rest.push(line);
        }
        rest
    }
}

/// Whether `s` is a node id as pex prints it: 64 lowercase hex digits.
fn is_node_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The node id `pex id` prints for `data_dir` (creating its identity if new).
fn node_id_of(data_dir: &Path) -> String {
    let out = run(crate::pex().args(["id", "--data-dir", data_dir.to_str().unwrap()]));
    assert!(out.status.success(), "pex id: {}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8(out.stdout).unwrap().trim_end_matches('\n').to_owned();
    assert!(is_node_id(&id), "pex id printed {id:?}");
    id
}

/// Sends each line of `stream` to `tx`, and keeps draining it once nobody listens (a closed
/// pipe would make the process's next write to it fail).
fn forward(stream: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
}

/// `pex fetch ROOT --peer PEER -o OUT --data-dir DIR` as arguments.
fn fetch_args(root: &str, peer: &str, out: &Path, data_dir: &Path) -> Vec<String> {
    let args = ["fetch", root, "--peer", peer, "-o", out.to_str().unwrap(), "--data-dir", data_dir.to_str().unwrap()];
    args.map(str::to_owned).to_vec()
}

fn fetch(root: &str, peer: &str, out: &Path, data_dir: &Path) -> std::process::Output {
    run(crate::pex().args(fetch_args(root, peer, out, data_dir)))
}

#[test]
fn seed_and_fetch_as_separate_processes_at_boundary_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let mib = 1 << 20;
    for (i, size) in [0, 1, mib - 1, mib, mib + 1, 32 * mib + 123].into_iter().enumerate() {
        let src = dir.path().join(format!("src{i}.bin"));
        let bytes = data(size, i as u64);
        std::fs::write(&src, &bytes).unwrap();
        let seeder = Seeder::start(&src, &dir.path().join(format!("seed{i}")), &[]);
        let out = dir.path().join(format!("out{i}.bin"));
        let result = fetch(&seeder.root, &seeder.peer, &out, &dir.path().join(format!("fetch{i}")));
        assert!(result.status.success(), "size {size}: {}", String::from_utf8_lossy(&result.stderr));
        let printed = String::from_utf8(result.stdout).unwrap();
        assert_eq!(Path::new(printed.trim()), std::path::absolute(&out).unwrap());
        assert!(std::fs::read(&out).unwrap() == bytes, "size {size}: copy differs");
        // `pex hash` of the source prints exactly the root the seeder announced.
        let hashed = run(crate::pex().args(["hash", src.to_str().unwrap()]));
        assert_eq!(String::from_utf8(hashed.stdout).unwrap(), format!("{}\n", seeder.root));
        seeder.interrupt();
    }
}

#[test]
fn json_summary_reports_the_transfer_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _, bytes) = Seeder::with_file(dir.path(), 3 << 20, 7, &["--json"]);
    let out = dir.path().join("copy.bin");
    let result = run(crate::pex()
        .args(["fetch", &seeder.root, "--peer", &seeder.peer, "-o", out.to_str().unwrap(), "--json"])
        .args(["--data-dir", dir.path().join("f").to_str().unwrap()]));
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let summary: serde_json::Value =
        serde_json::from_slice(&result.stdout).expect("fetch --json prints one JSON object");
    assert_eq!(summary["root"], seeder.root.as_str());
    assert_eq!(summary["file_bytes"], bytes.len() as u64);
    assert!(summary["downloaded_bytes"].as_u64().unwrap() >= bytes.len() as u64);
    assert_eq!(summary["pieces_rejected"], 0);
    assert!(summary["seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(summary["peers"].as_array().unwrap().len(), 1);
    // Node ids: each side's own is what `pex id` prints for its data directory, and each
    // lists the other under the id its signed HELLO proved.
    let (seeder_id, fetcher_id) = (node_id_of(&dir.path().join("s")), node_id_of(&dir.path().join("f")));
    assert_ne!(seeder_id, fetcher_id);
    assert_eq!(summary["node_id"], fetcher_id.as_str());
    assert_eq!(summary["peers"][0]["node_id"], seeder_id.as_str());
    assert_eq!(summary["peers"][0]["address"], seeder.addr.as_str());
    let rest = seeder.interrupt();
    let seeded: serde_json::Value = serde_json::from_str(rest.last().expect("seed --json prints a summary")).unwrap();
    assert!(seeded["uploaded_bytes"].as_u64().unwrap() >= bytes.len() as u64);
    assert_eq!(seeded["node_id"], seeder_id.as_str());
    assert_eq!(seeded["peers"].as_array().unwrap().len(), 1);
    assert_eq!(seeded["peers"][0]["node_id"], fetcher_id.as_str());
    assert_eq!(seeded["peers"][0]["downloaded_bytes"], 0);
    assert!(seeded["peers"][0]["uploaded_bytes"].as_u64().unwrap() >= bytes.len() as u64);
}

/// Runs pex expecting failure; returns its single stderr line.
fn fails<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = run(crate::pex().args(args));
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got {err:?}");
    lines[0].to_owned()
}

#[test]
fn bad_input_gets_one_clear_line_and_a_failing_exit() {
    let dir = tempfile::tempdir().unwrap();
    let dd = dir.path().join("d");
    let dd = dd.to_str().unwrap();
    let root = "ab".repeat(32);
    assert!(fails(&["fetch", "xyz", "--peer", "[::1]:1", "--data-dir", dd]).contains("invalid hash"));
    let e = fails(&["fetch", &root, "--peer", "[::1]:1", "--connect-timeout", "1", "--data-dir", dd]);
    assert!(e.contains("cannot reach") && e.contains("[::1]:1"), "{e}");
    assert!(fails(&["hash", dir.path().join("missing").to_str().unwrap()]).contains("missing"));
    // A device is neither a file nor a folder (a directory is a folder: tests/folders).
    assert!(fails(&["seed", "/dev/null", "--listen", "[::1]:0", "--data-dir", dd]).contains("not a regular file"));

    let (seeder, _, _) = Seeder::with_file(dir.path(), 1000, 1, &[]);
    let taken = dir.path().join("taken");
    std::fs::write(&taken, b"keep me").unwrap();
    let dd = Path::new(dd);
    let e = fails(&fetch_args(&seeder.root, &seeder.peer, &taken, dd));
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(std::fs::read(&taken).unwrap(), b"keep me");
    let e = fails(&fetch_args(&root, &seeder.peer, &dir.path().join("n"), dd));
    assert!(e.contains("no peer holds"), "{e}");
    seeder.interrupt();
}

#[test]
fn help_and_version_work() {
    let help = run(crate::pex().arg("--help"));
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for cmd in ["seed", "fetch", "hash", "serve"] {
        assert!(text.contains(cmd), "--help lists {cmd}");
    }
    let version = run(crate::pex().arg("--version"));
    assert_eq!(String::from_utf8(version.stdout).unwrap(), format!("pex {}\n", env!("CARGO_PKG_VERSION")));
}

/// The pieces (indices) the partial record of `root` in `data_dir` claims, if it exists yet.
fn claimed_set(data_dir: &Path, root: &str) -> Option<Vec<usize>> {
    let text = std::fs::read_to_string(data_dir.join("partial").join(format!("{root}.json"))).ok()?;
    let record: serde_json::Value = serde_json::from_str(&text).ok()?;
    let held = record["held"].as_str()?;
    let bits = (0..held.len()).step_by(2).map(|i| u8::from_str_radix(&held[i..i + 2], 16).unwrap());
    Some(
        bits.enumerate()
            .flat_map(|(i, b)| (0..8).filter(move |j| b & (0x80 >> j) != 0).map(move |j| i * 8 + j))
            .collect(),
    )
}

/// How many pieces the partial record of `root` in `data_dir` claims, if it exists yet.
fn claimed_pieces(data_dir: &Path, root: &str) -> Option<usize> {
    claimed_set(data_dir, root).map(|s| s.len())
}

/// The pieces (indices) of `expected` that the file at `part` holds byte for byte.
fn pieces_in(part: &Path, expected: &[u8]) -> Vec<usize> {
    let have = std::fs::read(part).unwrap_or_default();
    let piece = 1 << 20;
    (0..expected.len().div_ceil(piece))
        .filter(|&i| {
            let want = &expected[i * piece..((i + 1) * piece).min(expected.len())];
            have.get(i * piece..i * piece + want.len()) == Some(want)
        })
        .collect()
}

/// Starts a fetch of an 8-piece file from a seeder at 1 MiB/s. Once the fetch's
/// record claims `kill_at - 1` pieces, the seeder is frozen (SIGSTOP) so nothing
/// more can complete, the record is let catch up with the `.part` (it claims exactly the
/// pieces the `.part` holds), and the fetch is SIGKILLed. The
/// same command then runs again (seeder thawed) and must complete byte-exact,
/// downloading only what was not claimed.
fn kill_and_resume(kill_at: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (mut seeder, _, bytes) =
        Seeder::with_file(dir.path(), 8 << 20, 21 + kill_at as u64, &["--max-upload-rate", "1MiB"]);
    let (out, fdd) = (dir.path().join("out.bin"), dir.path().join("f"));
    let mut args = fetch_args(&seeder.root, &seeder.peer, &out, &fdd);
    args.push("--json".into());
    let mut first = Proc::spawn(crate::pex().args(&args).stdout(Stdio::null()).stderr(Stdio::null()));
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let claimed = claimed_pieces(&fdd, &seeder.root);
        if claimed.is_some_and(|n| n + 1 >= kill_at) && pex::fetch::part_path(&out).exists() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "fetch never got near {kill_at} pieces");
        assert!(first.try_wait().unwrap().is_none(), "fetch ended before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    seeder.child.signal(libc::SIGSTOP);
    // The record (written every second) catches up with what arrived: wait until it claims
    // exactly the pieces the .part holds. Only verified pieces are written to the .part.
    let part = pex::fetch::part_path(&out);
    let deadline = std::time::Instant::now() + PATIENCE;
    let claimed = loop {
        let (claimed, held) = (claimed_set(&fdd, &seeder.root).unwrap_or_default(), pieces_in(&part, &bytes));
        if claimed == held {
            break claimed.len();
        }
        assert!(std::time::Instant::now() < deadline, "the record claims {claimed:?}, the .part holds {held:?}");
        assert!(first.try_wait().unwrap().is_none(), "fetch ended before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(first.try_wait().unwrap().is_none(), "fetch ended before it could be killed");
    first.kill(); // SIGKILL
    seeder.child.signal(libc::SIGCONT);
    assert!(claimed + 1 >= kill_at && claimed < 8, "killed with {claimed} of 8 pieces claimed, wanted about {kill_at}");
    assert!(!out.exists(), "a killed fetch must not leave the final name");
    let second = run(crate::pex().args(&args));
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert!(std::fs::read(&out).unwrap() == bytes, "resumed copy differs");
    let summary: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    let downloaded = summary["downloaded_bytes"].as_u64().unwrap();
    let resumed = summary["resumed_bytes"].as_u64().unwrap();
    assert!(resumed >= (claimed as u64) << 20, "claimed {claimed} pieces, resumed {resumed} bytes");
    assert!(
        downloaded <= ((8 - claimed as u64) << 20) + 4096,
        "downloaded {downloaded} bytes after {claimed} were held"
    );
    seeder.interrupt();
}

#[test]
fn sigkill_early_then_resume() {
    kill_and_resume(0);
}

#[test]
fn sigkill_midway_then_resume() {
    kill_and_resume(4);
}

#[test]
fn sigkill_during_the_last_piece_then_resume() {
    kill_and_resume(7);
}

#[test]
fn a_part_file_of_another_download_is_never_mixed_in() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _, _) = Seeder::with_file(dir.path(), 3000, 3, &[]);
    let out = dir.path().join("out.bin");
    std::fs::write(pex::fetch::part_path(&out), b"someone else's bytes").unwrap();
    let dd = dir.path().join("f");
    let e = fails(&fetch_args(&seeder.root, &seeder.peer, &out, &dd));
    assert!(e.contains("belongs to another download"), "{e}");
    assert_eq!(std::fs::read(pex::fetch::part_path(&out)).unwrap(), b"someone else's bytes");
    seeder.interrupt();
}

#[test]
fn a_restarted_serve_serves_what_was_seeded_and_names_damaged_records() {
    let dir = tempfile::tempdir().unwrap();
    let dd = dir.path().join("node");
    let (a, b) = (dir.path().join("a.bin"), dir.path().join("b.bin"));
    std::fs::write(&a, data(2 << 20, 31)).unwrap();
    std::fs::write(&b, data(1000, 32)).unwrap();
    let first = Seeder::start(&a, &dd, &[]);
    let (root_a, first_id) = (first.root.clone(), first.id.clone());
    first.interrupt();
    let second = Seeder::start(&b, &dd, &[]);
    let root_b = second.root.clone();
    assert_eq!(second.id, first_id, "a restarted node keeps its identity");
    second.interrupt();
    // Damage b's record; a must still be served.
    let damaged = dd.join("seeds").join(format!("{root_b}.json"));
    std::fs::write(&damaged, b"{ truncated").unwrap();
    let mut serve = Proc::spawn(
        crate::pex()
            .args(["serve", "--listen", "[::1]:0", "--data-dir", dd.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let (tx, lines) = mpsc::channel();
    forward(serve.stderr.take().unwrap(), tx);
    let mut warned = false;
    let port = loop {
        let line = lines.recv_timeout(PATIENCE).expect("serve printed nothing");
        warned |= line.contains("warning") && line.contains(damaged.to_str().unwrap());
        if let Some(rest) = line.strip_prefix("serving ").and_then(|l| l.split(" on ").nth(1)) {
            break rest.split(';').next().unwrap().to_owned();
        }
    };
    assert!(warned, "the damaged record is named in a warning");
    // Still the same node: a fetch that accepts only that id there succeeds.
    let out = dir.path().join("copy.bin");
    let result = fetch(&root_a, &format!("{first_id}@{port}"), &out, &dir.path().join("f"));
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&a).unwrap());
    serve.signal(libc::SIGINT);
    assert_eq!(serve.wait_within(PATIENCE).code(), Some(130));
}

#[test]
fn fetch_with_seed_keeps_serving_after_it_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, src, bytes) = Seeder::with_file(dir.path(), 3 << 20, 41, &[]);
    let first_copy = dir.path().join("first.bin");
    let mut relay = Proc::spawn(
        crate::pex()
            .args(["fetch", &seeder.root, "--peer", &seeder.peer, "--seed", "--listen", "[::1]:0"])
            .args(["-o", first_copy.to_str().unwrap(), "--data-dir", dir.path().join("r").to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let (tx, lines) = mpsc::channel();
    forward(relay.stdout.take().unwrap(), tx);
    let (etx, elines) = mpsc::channel();
    forward(relay.stderr.take().unwrap(), etx);
    // It prints the path when the download completes, then keeps serving.
    let printed = lines.recv_timeout(PATIENCE).expect("relay printed no path");
    assert_eq!(Path::new(&printed), std::path::absolute(&first_copy).unwrap());
    // "seeding PATH on [::1]:PORT; Ctrl-C to stop"
    let relay_addr = loop {
        let line = elines.recv_timeout(PATIENCE).expect("relay did not say where it seeds");
        if let Some(rest) = line.strip_prefix("seeding ").and_then(|l| l.rsplit(" on ").next()) {
            break rest.split(';').next().unwrap().to_owned();
        }
    };
    seeder.interrupt();
    assert!(relay.try_wait().unwrap().is_none(), "fetch --seed exited after completing");
    let second_copy = dir.path().join("second.bin");
    let result = fetch(&Seeder::root_of(&src), &relay_addr, &second_copy, &dir.path().join("f2"));
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    assert!(std::fs::read(&second_copy).unwrap() == bytes);
    relay.signal(libc::SIGINT);
    assert_eq!(relay.wait_within(PATIENCE).code(), Some(130));
}

#[test]
fn a_seeder_whose_stdout_reader_went_away_keeps_serving_and_exits_130() {
    // A script reads what it needs and closes the pipe: the root, the fetch
    // command and the summary then meet a closed stdout, which must not stop the node.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("f.bin");
    let bytes = data(2 << 20, 43);
    std::fs::write(&src, &bytes).unwrap();
    let root = Seeder::root_of(&src);
    for json in [false, true] {
        let data_dir = dir.path().join(format!("s{json}"));
        let mut seeder = Proc::spawn(
            crate::pex()
                .args(["seed", src.to_str().unwrap(), "--listen", "[::1]:0", "--data-dir", data_dir.to_str().unwrap()])
                .args(if json { &["--json"][..] } else { &[][..] })
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        drop(seeder.stdout.take());
        let (etx, errs) = mpsc::channel();
        forward(seeder.stderr.take().unwrap(), etx);
        // "serving f.bin (2.00 MiB) on [::1]:PORT; Ctrl-C to stop"
        let addr = loop {
            let line = errs.recv_timeout(PATIENCE).expect("the seeder stopped before serving");
            if let Some(rest) = line.strip_prefix("serving ").and_then(|l| l.rsplit(" on ").next()) {
                break rest.split(';').next().unwrap().to_owned();
            }
        };
        let out = dir.path().join(format!("out{json}.bin"));
        let result = fetch(&root, &addr, &out, &dir.path().join(format!("f{json}")));
        assert!(result.status.success(), "json {json}: {}", String::from_utf8_lossy(&result.stderr));
        assert!(std::fs::read(&out).unwrap() == bytes);
        seeder.signal(libc::SIGINT);
        assert_eq!(seeder.wait_within(PATIENCE).code(), Some(130), "json {json}: not a clean exit");
    }
}

impl Seeder {
    /// The root `pex hash` prints for a file.
    fn root_of(file: &Path) -> String {
        let out = run(crate::pex().args(["hash", file.to_str().unwrap()]));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

#[test]
fn ctrl_c_during_a_fetch_exits_130_with_a_summary_and_a_resumable_record() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _, _) = Seeder::with_file(dir.path(), 8 << 20, 51, &["--max-upload-rate", "2MiB"]);
    let (out, fdd) = (dir.path().join("out.bin"), dir.path().join("f"));
    let mut args = fetch_args(&seeder.root, &seeder.peer, &out, &fdd);
    args.push("--json".into());
    let mut fetch = Proc::spawn(crate::pex().args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()));
    let deadline = std::time::Instant::now() + PATIENCE;
    while claimed_pieces(&fdd, &seeder.root).unwrap_or(0) < 1 {
        assert!(std::time::Instant::now() < deadline, "no progress recorded");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    fetch.signal(libc::SIGINT);
    let result = fetch.output_within(PATIENCE);
    assert_eq!(result.status.code(), Some(130));
    let err = String::from_utf8_lossy(&result.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: interrupted; the partial download"), "{err}");
    assert!(err.contains("run the same command to resume"), "{err}");
    let summary: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(summary["ok"], false);
    assert_eq!(summary["file_bytes"], 8 << 20);
    assert!(summary["downloaded_bytes"].as_u64().unwrap() > 0);
    assert!(claimed_pieces(&fdd, &seeder.root).unwrap() >= 1 && !out.exists());
    seeder.interrupt();
}
