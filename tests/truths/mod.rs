//! The command line tells the truth in pipes too: dead ends that are not dead
//! ends (already complete, -o DIR, another data directory's .part), known files
//! not hashed again, errors worded once, usage errors exit 2, -q.

use super::{fails, fetch, fetch_args, run, Seeder};
use std::path::Path;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_complete_file_already_at_the_output_path_is_success_and_o_dir_saves_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _, bytes) = Seeder::with_file(dir.path(), 3 << 20, 71, &[]);
    let out = dir.path().join("copy.bin");
    let first = fetch(&seeder.root, &seeder.peer, &out, &dir.path().join("f1"));
    assert!(first.status.success(), "{}", stderr(&first));
    // The same command again, even from another data directory: already complete.
    let again = fetch(&seeder.root, &seeder.peer, &out, &dir.path().join("f2"));
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), out.to_str().unwrap());
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    // An existing directory: the file goes into it under its own name, as cp does.
    let into = dir.path().join("into");
    std::fs::create_dir(&into).unwrap();
    let o = fetch(&seeder.root, &seeder.peer, &into, &dir.path().join("f3"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(into.join("f.bin")).unwrap(), bytes);
    // A missing directory is reported before any network work, naming what the user typed.
    let e = fails(&fetch_args(&seeder.root, "[::1]:1", &dir.path().join("no/such/x.bin"), &dir.path().join("f4")));
    assert!(e.contains("no/such") && e.contains("does not exist") && !e.contains(".part"), "{e}");
    seeder.interrupt();
}

#[test]
fn a_part_left_by_another_data_dir_is_reverified_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _, bytes) = Seeder::with_file(dir.path(), 4 << 20, 72, &[]);
    let out = dir.path().join("copy.bin");
    // A .part of the right root, half written, whose record is in a data directory we do not use.
    let part = pex::fetch::part_path(&out);
    let mut half = bytes.clone();
    half[2 << 20..].fill(0);
    std::fs::write(&part, &half).unwrap();
    let mut args = fetch_args(&seeder.root, &seeder.peer, &out, &dir.path().join("other"));
    args.push("--json".into());
    let o = run(crate::pex().args(&args));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["resumed_bytes"], 2 << 20, "the two verified pieces were kept");
    seeder.interrupt();
}

#[test]
fn seeding_a_known_unchanged_file_does_not_hash_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("f.bin");
    std::fs::write(&src, super::data(3 << 20, 73)).unwrap();
    let dd = dir.path().join("s");
    let first = Seeder::start(&src, &dd, &[]);
    let root = first.root.clone();
    first.interrupt();
    let second = Seeder::start(&src, &dd, &[]);
    assert_eq!(second.root, root);
    let said = second.stderr_until(|l| l.starts_with("serving"));
    assert!(said.contains("known file, not re-hashed"), "{said}");
    second.interrupt();
    // --rehash hashes anyway; a changed file is hashed again without being asked.
    let third = Seeder::start(&src, &dd, &["--rehash"]);
    assert!(!third.stderr_until(|l| l.starts_with("serving")).contains("not re-hashed"));
    third.interrupt();
    std::fs::write(&src, super::data(3 << 20, 74)).unwrap();
    let fourth = Seeder::start(&src, &dd, &[]);
    assert_ne!(fourth.root, root);
    fourth.interrupt();
}

#[test]
fn usage_errors_exit_2_and_every_error_is_one_line_without_errno() {
    let dir = tempfile::tempdir().unwrap();
    let dd = dir.path().join("d");
    let dd = dd.to_str().unwrap();
    let root = "ab".repeat(32);
    for args in [
        vec!["fetch", "xyz", "--peer", "[::1]:1"],
        vec!["fetch", &root, "--peer", "nonsense"],
        vec!["fetch", &root, "--peer", "[::1]:1", "--listen", "nonsense"],
        vec!["seed", "x", "--listen", "[::1]:99999"],
        vec!["fetch", &root, "--peer", "[::1]:1", "--ask-timeout", "-1"],
        vec!["frobnicate"],
    ] {
        let o = run(crate::pex().args(&args));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{args:?}: {}", stderr(&o));
    }
    // A missing argument is named on that one line (clap lists it below its heading).
    for (args, named) in [
        (vec!["fetch", &root, "--dht-bootstrap", "127.0.0.1:6881"], "--dht"),
        (vec!["fetch"], "<ROOT|TICKET>"),
        (vec!["fetch", &root, "--dht", "--dht-bootstrap", "[::1]:6881"], "IPv4 only"),
    ] {
        let o = run(crate::pex().args(&args));
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(e.lines().count() == 1 && e.contains(named), "{args:?}: {e}");
    }
    // A port in use: one line, the cause once, no "(os error N)".
    let taken = std::net::TcpListener::bind("[::1]:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let e = fails(&["seed", file.to_str().unwrap(), "--listen", &port, "--data-dir", dd]);
    assert!(e.contains("cannot listen") && !e.contains("os error"), "{e}");
    assert_eq!(e.matches("in use").count(), 1, "{e}");
    let e = fails(&["seed", "/dev/null", "--listen", "[::1]:0", "--data-dir", dd]);
    assert_eq!(e.matches("not a regular file").count(), 1, "{e}");
    // Rates of 0 mean unlimited.
    let help = run(crate::pex().args(["seed", "--help"]));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("[::]:9000") && help.contains("~/.local/share/pex") && help.contains("0 means unlimited"));
}

#[test]
fn quiet_shows_only_results() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _, _) = Seeder::with_file(dir.path(), 1 << 20, 75, &[]);
    let out = dir.path().join("q.bin");
    let mut args = fetch_args(&seeder.root, &seeder.peer, &out, Path::new(&dir.path().join("f")));
    args.push("-q".into());
    let o = run(crate::pex().args(&args));
    assert!(o.status.success());
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), out.to_str().unwrap());
    seeder.interrupt();
}

#[test]
fn an_upload_rate_of_0_means_unlimited_and_the_demo_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _, bytes) = Seeder::with_file(dir.path(), 2 << 20, 76, &["--max-upload-rate", "0"]);
    let out = dir.path().join("u.bin");
    let o = fetch(&seeder.root, &seeder.peer, &out, &dir.path().join("f"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    seeder.interrupt();
    let demo = run(crate::pex().args(["demo", "--size", "3MiB"]));
    assert!(demo.status.success(), "{}", stderr(&demo));
    let said = String::from_utf8_lossy(&demo.stdout);
    assert!(said.contains("fetched 3.00 MiB") && said.contains("MiB/s") && said.contains("byte-identical"), "{said}");
}
