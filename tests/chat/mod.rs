//! `pex chat` as separate processes talking through pipes: broadcast, direct
//! messages, JSON lines, hostile text, Ctrl-C leaving cleanly, and a member
//! killed with SIGKILL reported as left by every other member.

use super::{forward, Proc, PATIENCE};
use std::io::Write;
use std::path::Path;
use std::process::{ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One `pex chat` process, its stdin and its output lines.
pub struct Chatter {
    child: Proc,
    stdin: Option<ChildStdin>,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
    /// Its node id's first 8 hex digits, as others print it.
    pub short: String,
    /// What another member passes to `--peer`: `NODEID@[::1]:PORT`.
    pub peer: String,
}

impl Chatter {
    pub fn start(dir: &Path, name: &str, extra: &[&str]) -> Chatter {
        let data = dir.join(name);
        let mut child = Proc::spawn(
            crate::pex()
                .args(["chat", "lobby", "--listen", "[::1]:0", "--data-dir", data.to_str().unwrap()])
                .args(extra)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let (otx, out) = mpsc::channel();
        let (etx, err) = mpsc::channel();
        forward(child.stdout.take().unwrap(), otx);
        forward(child.stderr.take().unwrap(), etx);
        let stdin = child.stdin.take();
        let joined = err.recv_timeout(PATIENCE).expect("chat printed nothing");
        // "joined room lobby as 1a2b3c4d on [::1]:PORT; Ctrl-C to leave"
        let short = joined.split(" as ").nth(1).and_then(|r| r.split(' ').next()).unwrap().to_owned();
        let hint = err.recv_timeout(PATIENCE).expect("chat printed no join hint");
        let peer = hint.rsplit(' ').next().unwrap().to_owned();
        assert!(hint.starts_with("others join with: pex chat lobby --peer "), "{hint:?}");
        assert!(peer.starts_with(&short), "{joined:?} / {hint:?}");
        Chatter { child, stdin, out, err, short, peer }
    }

    pub fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Reads `stream` until a line satisfies `want`; returns the lines before it and it.
    fn until(stream: &mpsc::Receiver<String>, what: &str, want: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match stream.recv_timeout(PATIENCE) {
                Ok(line) => {
                    let done = want(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("no line {what} in time; got {seen:?}"),
            }
        }
    }

    pub fn stdout_until(&self, want: &str) -> Vec<String> {
        Self::until(&self.out, want, |l| l == want)
    }

    pub fn stderr_until(&self, want: &str) -> Vec<String> {
        Self::until(&self.err, want, |l| l == want)
    }

    /// Reads stderr until it has shown "X joined" for every other member, in any order.
    fn sees_joined(&self, others: &[&Chatter]) {
        let mut missing: Vec<String> = others.iter().map(|o| format!("{} joined", o.short)).collect();
        while !missing.is_empty() {
            let line = self.err.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("never saw {missing:?}"));
            missing.retain(|m| *m != line);
        }
    }
}

#[test]
fn three_chat_processes_talk_through_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Chatter::start(dir.path(), "a", &["--json"]);
    let mut b = Chatter::start(dir.path(), "b", &["--peer", &a.peer.clone()]);
    let mut c = Chatter::start(dir.path(), "c", &["--peer", &a.peer.clone()]);
    for (who, others) in [(&a, [&b, &c]), (&b, [&a, &c]), (&c, [&a, &b])] {
        who.sees_joined(&others);
    }
    // A broadcast from B reaches A (as JSON) and C, and not B itself.
    b.say("hello from b");
    let from_b =
        a.stdout_until(&format!(r#"{{"direct":false,"from":"{}","text":"hello from b"}}"#, b.peer[..64].to_owned()));
    assert_eq!(from_b.len(), 1, "{from_b:?}");
    assert_eq!(c.stdout_until(&format!("<{}> hello from b", b.short)).len(), 1);
    // A direct message from C to B, by a prefix of B's id: B alone gets it.
    c.say(&format!("/msg {} for b alone", &b.short[..6]));
    b.stdout_until(&format!("<{}> (direct) for b alone", c.short));
    // Text from the network cannot drive a terminal: escapes are shown, not sent.
    c.say("\u{1b}[2J cleared?");
    b.stdout_until(&format!("<{}> \\x1b[2J cleared?", c.short));
    c.say("marker");
    let at_a = a.stdout_until(&format!(r#"{{"direct":false,"from":"{}","text":"marker"}}"#, &c.peer[..64]));
    assert_eq!(at_a.len(), 2, "A never saw the direct message: {at_a:?}");
    assert!(at_a[0].contains(r#""text":"\u001b[2J cleared?""#), "{at_a:?}");
    let at_b = b.stdout_until(&format!("<{}> marker", c.short));
    assert_eq!(at_b.len(), 1, "B never hears its own broadcast: {at_b:?}");
    // Usage mistakes are one line on stderr; the chat goes on.
    c.say("/msg zz hi");
    Chatter::until(&c.err, "a /msg error", |l| l.starts_with("error: /msg takes a node id"));
    // Ctrl-C leaves cleanly: exit 130, and the others hear at once that it left.
    b.child.signal(libc::SIGINT);
    assert_eq!(b.child.wait_within(PATIENCE).code(), Some(130));
    Chatter::until(&b.err, "the goodbye", |l| l.starts_with("left room lobby"));
    a.stderr_until(&format!("{} left", b.short));
    c.stderr_until(&format!("{} left", b.short));
    // End of input does not end the chat: A and C still talk.
    drop(a.stdin.take());
    c.say("after b left");
    a.stdout_until(&format!(r#"{{"direct":false,"from":"{}","text":"after b left"}}"#, &c.peer[..64]));
}

#[test]
fn a_member_killed_with_sigkill_is_reported_left_by_every_other_member() {
    const IDLE: &str = "3";
    let dir = tempfile::tempdir().unwrap();
    let timing = ["--idle-timeout", IDLE, "--keepalive", "1"];
    let a = Chatter::start(dir.path(), "a", &timing);
    let with = |name: &str| {
        let mut args = timing.to_vec();
        args.extend(["--peer", a.peer.as_str()]);
        Chatter::start(dir.path(), name, &args)
    };
    let (b, c, mut d) = (with("b"), with("c"), with("d"));
    let all = [&a, &b, &c, &d];
    for who in all {
        let others: Vec<&Chatter> = all.iter().copied().filter(|o| o.short != who.short).collect();
        who.sees_joined(&others);
    }
    let killed = Instant::now();
    d.child.signal(libc::SIGKILL);
    d.child.wait_within(PATIENCE);
    for who in [&a, &b, &c] {
        let before = who.stderr_until(&format!("{} left", d.short));
        let after = killed.elapsed();
        eprintln!("{} reported {} left {after:?} after the kill", who.short, d.short);
        assert!(!before.iter().any(|l| l.ends_with(" left") && !l.starts_with(&d.short)), "{before:?}");
        // Within the idle time-out; the margin is for a loaded machine, not the design.
        assert!(after < Duration::from_secs(3 + 15), "{after:?}");
    }
}

#[test]
fn a_chat_whose_only_member_cannot_be_reached_says_so_and_keeps_trying() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1 of [::1].
    let alone = Chatter::start(dir.path(), "alone", &["--peer", "[::1]:1"]);
    Chatter::until(&alone.err, "the dial error", |l| {
        l.starts_with("cannot reach [::1]:1: ") && l.ends_with("(retrying)")
    });
}
