//! Tickets on the command line: `pex seed` and `pex serve` print one, `pex
//! fetch TICKET` needs nothing else, `pex ticket ROOT` prints one for a file
//! the node serves, and malformed ones are usage errors.

use super::*;

/// The seeder's ticket: the line after its fetch commands that starts with `pex:`.
fn ticket_of(seeder: &Seeder) -> String {
    loop {
        let line = seeder.lines.recv_timeout(PATIENCE).expect("the seeder printed no ticket");
        if line.starts_with("pex:") {
            return line;
        }
        assert!(line.starts_with("pex fetch "), "unexpected line before the ticket: {line:?}");
    }
}

#[test]
fn a_ticket_from_seed_is_all_a_fetch_needs() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _, bytes) = Seeder::with_file(dir.path(), (1 << 20) + 4321, 95, &[]);
    let ticket = ticket_of(&seeder);
    assert_eq!(ticket, format!("pex:{}?peer={}", seeder.root, seeder.peer), "the ticket names the root and the seeder");
    let out = dir.path().join("copy.bin");
    let fdd = dir.path().join("f");
    let o = run(crate::pex().args(["fetch", &ticket, "-q", "-o", out.to_str().unwrap(), "--data-dir"]).arg(&fdd));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == bytes);
    // `pex ticket` gives the same ticket for the file this data directory serves.
    let port = seeder.addr.rsplit(':').next().unwrap();
    let listen = format!("[::1]:{port}");
    let sdd = dir.path().join("s");
    let o = run(crate::pex().args(["ticket", &seeder.root, "--listen", &listen, "--data-dir"]).arg(&sdd));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), format!("{ticket}\n"));
    // ... and refuses a root it does not serve, in one line.
    let other = "00".repeat(32);
    let o = run(crate::pex().args(["ticket", &other, "--data-dir"]).arg(&sdd));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.lines().count() == 1 && err.contains("serves no file"), "{err}");
}

#[test]
fn a_ticket_pins_its_node_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _, _) = Seeder::with_file(dir.path(), 1000, 96, &[]);
    let wrong = node_id_of(&dir.path().join("someone-else"));
    let ticket = format!("pex:{}?peer={wrong}@{}", seeder.root, seeder.addr);
    let out = dir.path().join("copy.bin");
    let o = run(crate::pex()
        .args(["fetch", &ticket, "--connect-timeout", "3", "--give-up-after", "3", "-o", out.to_str().unwrap()])
        .arg("--data-dir")
        .arg(dir.path().join("f")));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains(&format!("expected node {}", &wrong[..8])), "{err}");
    assert!(!out.exists());
}

#[test]
fn malformed_tickets_are_usage_errors_in_one_line() {
    let root = "ab".repeat(32);
    let id = "cd".repeat(32);
    for bad in [
        "pex:abc".to_owned(),
        format!("pex:{root}?peer={id}"),
        format!("pex:{root}?peer={}@[::1]:9000", &id[..63]),
        format!("pex:{root}?peer={id}@[::1]:0"),
        format!("pex:{root}?peer"),
        format!("pex:{root}{}", "&peer=x".repeat(400)),
    ] {
        let o = run(crate::pex().args(["fetch", &bad]));
        assert_eq!(o.status.code(), Some(2), "{bad}");
        let err = String::from_utf8(o.stderr).unwrap();
        assert!(err.lines().count() == 1 && err.contains("invalid ticket"), "{bad}: {err}");
    }
}

#[test]
fn serve_prints_a_ticket_for_each_file() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _, _) = Seeder::with_file(dir.path(), 1000, 97, &[]);
    let (root, id) = (seeder.root.clone(), seeder.id.clone());
    seeder.interrupt();
    let mut serve = Proc::spawn(
        crate::pex()
            .args(["serve", "--listen", "[::1]:0", "-q", "--data-dir"])
            .arg(dir.path().join("s"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let (tx, lines) = mpsc::channel();
    forward(serve.stdout.take().unwrap(), tx);
    let line = lines.recv_timeout(PATIENCE).expect("serve printed no ticket");
    let prefix = format!("pex:{root}?peer={id}@[::1]:");
    assert!(line.starts_with(&prefix), "{line}");
    serve.signal(libc::SIGINT);
    assert_eq!(serve.wait_within(PATIENCE).code(), Some(130));
}

#[test]
fn seed_json_reports_its_ticket() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _, _) = Seeder::with_file(dir.path(), 1000, 98, &["--json"]);
    // With --json the address block goes to stderr, stdout keeps the summary.
    let printed = loop {
        let line = seeder.errs.recv_timeout(PATIENCE).expect("the seeder printed no ticket");
        if line.starts_with("pex:") {
            break line;
        }
    };
    let rest = seeder.interrupt();
    let summary: serde_json::Value = serde_json::from_str(rest.last().expect("no summary")).unwrap();
    assert_eq!(summary["ticket"], serde_json::json!(printed));
}
mod remembered;
