//! What a person at a terminal sees: the real binary runs in a pseudo-terminal
//! (openpty), its output is parsed into a screen (vt100), and the tests assert
//! on that screen. Ctrl-C is the byte 0x03 typed into the terminal, so the
//! kernel's line discipline delivers SIGINT as it does for a person.

use super::{claimed_pieces, fetch_args, node_id_of, Proc, Seeder, PATIENCE};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A program running in a pseudo-terminal of `cols` × 24, and the screen it drew.
struct Terminal {
    proc: Proc,
    /// Whether a progress or status line ever wrapped onto the next row (wider than the terminal).
    wrapped: Arc<std::sync::atomic::AtomicBool>,
    master: File,
    screen: Arc<Mutex<vt100::Parser>>,
    /// Every screen seen (sampled by the reader after each chunk of output).
    history: Arc<Mutex<Vec<String>>>,
    /// Reads the terminal until the program (and every holder of the pty) is gone.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Terminal {
    fn spawn(args: &[&str], cols: u16, cwd: &Path) -> Terminal {
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize { ws_row: 24, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: openpty writes two descriptors; the others may be null.
        let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &size) };
        assert_eq!(rc, 0, "openpty failed");
        // SAFETY: both descriptors were just opened by openpty and are owned here.
        let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut cmd = crate::pex();
        cmd.args(args)
            .current_dir(cwd)
            .env("TERM", "xterm-256color")
            .env_remove("NO_COLOR")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec: a new
        // session whose controlling terminal is the pty (so 0x03 means SIGINT).
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let proc = Proc::spawn(&mut cmd);
        drop(cmd); // closes the parent's copies of the slave
        let screen = Arc::new(Mutex::new(vt100::Parser::new(
            std::num::NonZeroU16::new(24).unwrap(),
            std::num::NonZeroU16::new(cols).unwrap(),
            0,
        )));
        let history = Arc::new(Mutex::new(Vec::new()));
        let wrapped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (mut reader, s2, h2, w2) = (master.try_clone().unwrap(), screen.clone(), history.clone(), wrapped.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut parser = s2.lock().unwrap();
                parser.process(&buf[..n]);
                let screen = parser.screen();
                let bar_wrapped = (0..24).any(|r| {
                    let row = screen.contents_between(r, 0, r, screen.size().1.get());
                    screen.row_wrapped(r) && (row.contains('%') || row.contains('…'))
                });
                if bar_wrapped {
                    w2.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                h2.lock().unwrap().push(parser.screen().contents());
            }
        });
        Terminal { proc, wrapped, master, screen, history, reader: Some(reader) }
    }

    fn contents(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    /// Waits until the screen satisfies `done`; returns it and how long that took.
    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> (String, Duration) {
        let start = Instant::now();
        loop {
            let s = self.contents();
            if done(&s) {
                return (s, start.elapsed());
            }
            assert!(start.elapsed() < PATIENCE, "the screen never showed {what}:\n{s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types Ctrl-C.
    fn ctrl_c(&mut self) {
        self.master.write_all(&[3]).unwrap();
    }

    /// Waits for the program to exit and for everything it wrote to reach the screen.
    fn wait(&mut self) -> ExitStatus {
        let status = self.proc.wait_within(PATIENCE);
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        status
    }

    fn seen(&self) -> Vec<String> {
        self.history.lock().unwrap().clone()
    }
}

/// Every "N.N XiB/s" rate on a screen, in bytes per second.
fn rates(screen: &str) -> Vec<f64> {
    let words: Vec<&str> = screen.split_whitespace().collect();
    words
        .windows(2)
        .filter_map(|w| {
            let unit = w[1].strip_suffix("/s")?;
            let mult = match unit {
                "B" => 1.0,
                "KiB" => 1024.0,
                "MiB" => 1048576.0,
                "GiB" => 1073741824.0,
                _ => return None,
            };
            Some(w[0].parse::<f64>().ok()? * mult)
        })
        .collect()
}

#[test]
fn ctrl_c_while_hashing_exits_130_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A 64 GiB sparse file: hashing it takes far longer than this test waits.
    let big = dir.path().join("big.bin");
    File::create(&big).unwrap().set_len(64 << 30).unwrap();
    for cmd in ["hash", "seed"] {
        let dd = dir.path().join(format!("dd-{cmd}"));
        let mut args = vec![cmd, big.to_str().unwrap()];
        if cmd == "seed" {
            args.extend(["--listen", "[::1]:0", "--data-dir", dd.to_str().unwrap()]);
        }
        let mut term = Terminal::spawn(&args, 100, dir.path());
        term.wait_for("the hashing bar", |s| s.contains("hashing") && s.contains('%'));
        let typed = Instant::now();
        term.ctrl_c();
        let status = term.wait();
        let took = typed.elapsed();
        assert_eq!(status.code(), Some(130), "{cmd}: {status}");
        // The issue's bound is 0.5 s; a loaded machine gets some slack, hashing 64 GiB would take minutes.
        assert!(took < Duration::from_millis(1500), "{cmd}: exited {took:?} after Ctrl-C");
        eprintln!("{cmd}: exited {} ms after Ctrl-C", took.as_millis());
    }
}

#[test]
fn an_unreachable_peer_shows_connecting_and_retrying_and_never_a_full_bar() {
    let dir = tempfile::tempdir().unwrap();
    let dd = dir.path().join("d");
    let root = "ab".repeat(32);
    // Port 1 on [::1]: nothing listens, every dial is refused at once.
    let args = ["fetch", &root, "--peer", "[::1]:1", "--connect-timeout", "4", "--data-dir", dd.to_str().unwrap()];
    let mut term = Terminal::spawn(&args, 80, dir.path());
    let (screen, took) =
        term.wait_for("connecting and retrying", |s| s.contains("connecting to 1 peer") && s.contains("retrying"));
    assert!(screen.contains("[::1]:1"), "{screen}");
    eprintln!("connecting/retrying line after {} ms", took.as_millis());
    let status = term.wait();
    assert_eq!(status.code(), Some(1));
    for s in term.seen() {
        assert!(!s.contains("100%") && !s.contains("[=="), "a bar before the size was known:\n{s}");
        assert!(!s.contains("ETA"), "an ETA while nothing arrives:\n{s}");
    }
    let last = term.contents();
    assert!(last.contains("cannot reach any peer") && last.contains("[::1]:1"), "{last}");
}

#[test]
fn a_resumed_fetch_never_shows_a_rate_above_what_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 2 << 20;
    let (seeder, _, bytes) = Seeder::with_file(dir.path(), 24 << 20, 61, &["--max-upload-rate", "2MiB"]);
    let (out, fdd) = (dir.path().join("out.bin"), dir.path().join("f"));
    let args = fetch_args(&seeder.root, &seeder.peer, &out, &fdd);
    // A first run, killed once a third of the file is recorded.
    let mut first = Proc::spawn(crate::pex().args(&args).stdout(Stdio::null()).stderr(Stdio::null()));
    let deadline = Instant::now() + PATIENCE;
    while claimed_pieces(&fdd, &seeder.root).unwrap_or(0) < 8 {
        assert!(Instant::now() < deadline, "no progress recorded");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill();
    // The second run, on a terminal: the bar starts at what is on disk, and the
    // rate is what arrives (at most the seeder's 2 MiB/s), not the resumed bytes.
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    // 60 columns: every line must fit (a wrapped bar reprints itself on every redraw).
    let mut term = Terminal::spawn(&argv, 60, dir.path());
    let status = term.wait();
    assert!(status.success(), "{}", term.contents());
    assert!(!term.wrapped.load(std::sync::atomic::Ordering::Relaxed), "a line wider than 60 columns");
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    let seen = term.seen();
    let fetching: Vec<&String> = seen.iter().filter(|s| s.contains("f.bin [")).collect();
    assert!(!fetching.is_empty(), "no progress bar was drawn:\n{}", seen.join("\n---\n"));
    let first_bar = fetching[0];
    assert!(!first_bar.contains("  0%"), "the bar did not start at the resumed position:\n{first_bar}");
    let top = seen.iter().flat_map(|s| rates(s)).fold(0.0, f64::max);
    assert!(top > 0.0, "no rate was ever shown");
    assert!(top <= 1.5 * limit as f64, "a rate of {:.1} MiB/s shown with a 2 MiB/s seeder", top / 1048576.0);
    let last = term.contents();
    assert!(last.contains("fetched f.bin") && last.contains("already on disk") && last.contains("verified"), "{last}");
    seeder.interrupt();
}

#[test]
fn a_seeder_that_vanishes_shows_the_countdown_and_ctrl_c_says_how_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (mut seeder, _, _) = Seeder::with_file(dir.path(), 16 << 20, 62, &["--max-upload-rate", "1MiB"]);
    let (out, fdd) = (dir.path().join("out.bin"), dir.path().join("f"));
    let args = fetch_args(&seeder.root, &seeder.peer, &out, &fdd);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut term = Terminal::spawn(&argv, 100, dir.path());
    term.wait_for("a piece held", |s| s.contains("MiB/16.0 MiB") && !s.contains(" 0 B/16.0 MiB"));
    seeder.child.kill();
    let (screen, _) = term.wait_for("the give-up countdown", |s| s.contains("no peers connected — giving up in"));
    assert!(!screen.contains("ETA"), "an ETA with no peer:\n{screen}");
    term.ctrl_c();
    assert_eq!(term.wait().code(), Some(130));
    let last = term.contents();
    assert!(last.contains("interrupted") && last.contains("run the same command to resume"), "{last}");
}

#[test]
fn a_seeder_shows_a_live_status_line_and_ctrl_c_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("s.bin");
    std::fs::write(&src, super::data(2 << 20, 63)).unwrap();
    let dd = dir.path().join("d");
    // The identity `pex id` creates is the one the seeder then proves and prints.
    let id = node_id_of(&dd);
    let args = ["seed", src.to_str().unwrap(), "--listen", "[::1]:0", "--data-dir", dd.to_str().unwrap()];
    let mut term = Terminal::spawn(&args, 100, dir.path());
    let (screen, _) =
        term.wait_for("the status line", |s| s.contains("serving s.bin: 0 peers connected, 0 B uploaded"));
    // The fetch command is wider than the terminal: join the rows it wraps over.
    let joined = screen.replace('\n', "");
    assert!(joined.contains("pex fetch") && joined.contains(&format!("--peer {id}@[::1]:")), "{screen}");
    term.ctrl_c();
    assert_eq!(term.wait().code(), Some(130));
}

#[test]
fn chat_on_a_terminal_shows_what_arrives_and_ctrl_c_leaves_the_room() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = crate::chat::Chatter::start(dir.path(), "a", &[]);
    let data = dir.path().join("t");
    let args = ["chat", "lobby", "--listen", "[::1]:0", "--peer", &a.peer, "--data-dir", data.to_str().unwrap()];
    let mut t = Terminal::spawn(&args, 100, dir.path());
    let (screen, _) = t.wait_for("that A joined", |s| s.contains(&format!("{} joined", a.short)));
    let short = screen.split("joined room lobby as ").nth(1).and_then(|r| r.split(' ').next()).unwrap().to_owned();
    // A line typed at the terminal (Enter is a carriage return) goes to the room.
    t.master.write_all(b"typed at a terminal\r").unwrap();
    a.stdout_until(&format!("<{short}> typed at a terminal"));
    a.say("hello, terminal");
    t.wait_for("A's message", |s| s.contains(&format!("<{}> hello, terminal", a.short)));
    t.ctrl_c();
    assert_eq!(t.wait().code(), Some(130));
    assert!(t.contents().contains("left room lobby"), "{}", t.contents());
    a.stderr_until(&format!("{short} left"));
}
