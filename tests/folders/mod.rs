//! Folders: `pex seed DIR` and `pex fetch` of the folder's root as separate
//! processes, compared with `diff -r`; hostile folder manifests refused before
//! anything is written; `--only`; a killed folder fetch resuming per file;
//! `pex ls`; `pex serve` re-serving a fetched folder and its files.

use super::{data, run, Proc, Seeder, PATIENCE};
use pex::hash::Hash;
use pex::manifest::{Entry, EntryKind, FolderInfo};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The tree the issue names: nested folders, an empty folder, an executable,
/// identical files, names with spaces and non-ASCII, a 0-byte file, a file of
/// exactly 1 MiB; plus a symbolic link and a named pipe, which are skipped.
fn make_tree(root: &Path) {
    for d in ["a/b/c", "empty", "with space/ünï cødé"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("a/same.txt"), b"identical\n").unwrap();
    std::fs::write(root.join("a/b/c/same.txt"), b"identical\n").unwrap();
    std::fs::write(root.join("a/b/other name.txt"), b"identical\n").unwrap();
    std::fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(root.join("zero"), b"").unwrap();
    std::fs::write(root.join("mib.bin"), data(1 << 20, 1)).unwrap();
    std::fs::write(root.join("with space/ünï cødé/日本語 file.dat"), data(3 << 20 | 17, 2)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
    let fifo = std::ffi::CString::new(s(&root.join("pipe"))).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
}

/// `diff -r` of two trees, ignoring the skipped link and pipe.
fn diff(a: &Path, b: &Path) {
    let o = run(std::process::Command::new("diff").args([
        "-r",
        "--no-dereference",
        "-x",
        "link",
        "-x",
        "pipe",
        s(a),
        s(b),
    ]));
    assert!(
        o.status.success(),
        "trees differ:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn a_tree_is_seeded_and_fetched_as_separate_processes_and_diff_finds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tree");
    make_tree(&src);
    let seeder = Seeder::start(&src, &dir.path().join("s"), &[]);
    let said = seeder.stderr_until(|l| l.starts_with("serving folder"));
    assert_eq!(said.matches("warning: skipped").count(), 2, "{said}");
    assert!(
        said.contains("a symbolic link") && said.contains("a named pipe") && said.contains("2 entries skipped"),
        "{said}"
    );
    let hashed = run(crate::pex().args(["hash", s(&src), "-q"]));
    assert_eq!(String::from_utf8_lossy(&hashed.stdout).trim(), seeder.root, "pex hash DIR names the same root");

    // pex ls: the manifests alone, nothing written.
    let cwd = dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let ls = run(crate::pex()
        .args(["ls", &seeder.root, "--peer", &seeder.peer, "--json", "--data-dir", s(&dir.path().join("l"))])
        .current_dir(&cwd));
    assert!(ls.status.success(), "{}", String::from_utf8_lossy(&ls.stderr));
    let v = json(&ls);
    assert_eq!(v["kind"], "folder");
    assert_eq!(v["files"], 7);
    let paths: Vec<&str> = v["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "a/b/c/same.txt",
            "a/b/other name.txt",
            "a/same.txt",
            "empty",
            "mib.bin",
            "run.sh",
            "with space/ünï cødé/日本語 file.dat",
            "zero"
        ]
    );
    assert_eq!(v["entries"][5]["kind"], "executable");
    assert_eq!(v["entries"][0]["root"], v["entries"][2]["root"], "identical files share a root");
    assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0, "ls wrote something");
    let text =
        run(crate::pex().args(["ls", &seeder.root, "--peer", &seeder.peer, "--data-dir", s(&dir.path().join("l"))]));
    let text = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.lines().count(), 9, "{text}");
    assert!(text.lines().last().unwrap().contains("7 files") && text.contains("empty/"), "{text}");

    // The fetch, with its --json summary.
    let out = dir.path().join("out");
    let f = dir.path().join("f");
    let fetch = || {
        run(crate::pex().args([
            "fetch",
            &seeder.root,
            "--peer",
            &seeder.peer,
            "-o",
            s(&out),
            "--json",
            "--data-dir",
            s(&f),
        ]))
    };
    let o = fetch();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = json(&o);
    assert_eq!((v["ok"].clone(), v["files"].clone()), (true.into(), 7.into()));
    diff(&src, &out);
    assert!(out.join("empty").is_dir());
    assert_eq!(std::fs::metadata(out.join("run.sh")).unwrap().permissions().mode() & 0o111, 0o111);
    assert_eq!(std::fs::metadata(out.join("zero")).unwrap().permissions().mode() & 0o111, 0);
    // Identical contents under one root were downloaded once: less than the tree's size twice over.
    assert!(v["downloaded_bytes"].as_u64().unwrap() < (4 << 20) + 100_000, "{v}");
    // No .part left anywhere.
    let find = run(std::process::Command::new("find").args([s(&out), "-name", "*.part"]));
    assert!(find.stdout.is_empty(), "{}", String::from_utf8_lossy(&find.stdout));
    // Again: everything is already there.
    let o = fetch();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(json(&o)["downloaded_bytes"].as_u64().unwrap() < 10_000);
    let root = seeder.root.clone();
    seeder.interrupt();

    // The fetcher's data directory re-serves the folder, and each file by its own root.
    let mut serve = Proc::spawn(
        crate::pex()
            .args(["serve", "--listen", "[::1]:0", "--data-dir", s(&f), "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    super::forward(serve.stderr.take().unwrap(), tx);
    let mut said = String::new();
    let addr = loop {
        let line = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("serve said: {said}"));
        said += &line;
        said.push('\n');
        if let Some(t) = line.strip_prefix("pex:") {
            break t.split('@').nth(1).unwrap().to_owned();
        }
    };
    assert!(said.contains("1 folder"), "{said}");
    let again = dir.path().join("again");
    let o = run(crate::pex().args([
        "fetch",
        &root,
        "--peer",
        &addr,
        "-o",
        s(&again),
        "--data-dir",
        s(&dir.path().join("g")),
    ]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    diff(&src, &again);
    let mib = run(crate::pex().args(["hash", s(&src.join("mib.bin")), "-q"]));
    let mib_root = String::from_utf8_lossy(&mib.stdout).trim().to_owned();
    let one = dir.path().join("one.bin");
    let o = run(crate::pex().args([
        "fetch",
        &mib_root,
        "--peer",
        &addr,
        "-o",
        s(&one),
        "--data-dir",
        s(&dir.path().join("h")),
    ]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&one).unwrap(), data(1 << 20, 1));
    serve.signal(libc::SIGINT);
    serve.wait_within(PATIENCE);
}

/// A node serving whatever blobs it is given, in this process: a folder
/// manifest and entry blobs no honest seeder would make.
struct Liar {
    rt: tokio::runtime::Runtime,
    node: pex::Node,
    addr: String,
}

impl Liar {
    fn start() -> Liar {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let config = pex::Config { listen: Some("[::1]:0".parse().unwrap()), ..pex::Config::default() };
        let node = rt.block_on(pex::Node::start(config, None, Default::default())).unwrap();
        let addr = node.local_addr().unwrap().to_string();
        Liar { rt, node, addr }
    }

    /// Serves a folder of these entries, in this order, whatever they are; returns its root.
    fn serve(&self, entries: &[Entry]) -> String {
        let mut stream = Vec::new();
        for e in entries {
            stream.push(e.kind as u8);
            stream.extend_from_slice(&e.size.to_be_bytes());
            stream.extend_from_slice(&e.root.0);
            stream.extend_from_slice(&(e.path.len() as u16).to_be_bytes());
            stream.extend_from_slice(e.path.as_bytes());
        }
        let blobs: Vec<bytes::Bytes> = stream.chunks(1 << 20).map(bytes::Bytes::copy_from_slice).collect();
        let m = pex::manifest::FolderManifest {
            name: "evil".into(),
            entries: entries.len() as u64,
            total_size: entries.iter().map(|e| e.size).sum(),
            entry_bytes: stream.len() as u64,
            blobs: blobs.iter().map(|b| Hash::of(b)).collect(),
        };
        let blob = m.encode();
        for (h, b) in m.blobs.iter().zip(&blobs) {
            self.node.store().add_blob(*h, b.clone());
        }
        let root = Hash::of(&blob);
        self.node.store().add_blob(root, blob);
        root.to_hex()
    }
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.rt.block_on(self.node.shutdown());
    }
}

fn file(path: &str, size: u64) -> Entry {
    Entry { kind: EntryKind::File, size, root: Hash::of(path.as_bytes()), path: path.into() }
}

#[test]
fn hostile_folder_manifests_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let liar = Liar::start();
    let dir_entry = |p: &str| Entry { kind: EntryKind::Directory, size: 0, root: Hash::default(), path: p.into() };
    // 100,000 files of a TiB each: a valid folder no disk can hold.
    let huge: Vec<Entry> = (0..100_000).map(|i| file(&format!("d{}/f{i:06}", i % 100), 1 << 40)).collect();
    let huge = FolderInfo::new("huge", huge).unwrap().entries;
    let cases: Vec<(&str, Vec<Entry>, &str)> = vec![
        ("dot-dot", vec![file("../escape", 1)], "directory reference"),
        ("dot-dot inside", vec![file("a/../../escape", 1)], "directory reference"),
        ("absolute", vec![file("/tmp/escape", 1)], "is empty"),
        ("collision of a file and a directory", vec![dir_entry("a"), file("a", 1)], "listed twice"),
        ("entry below a file", vec![file("a", 1), file("a/b", 1)], "below a file"),
        ("duplicate names", vec![file("a", 1), file("b", 1), file("b", 1)], "listed twice"),
        ("out of order", vec![file("b", 1), file("a", 1)], "canonical order"),
        ("100k entries bigger than the disk", huge, "not enough disk space"),
    ];
    for (why, entries, says) in cases {
        let root = liar.serve(&entries);
        let cwd = dir.path().join(format!("cwd-{}", why.replace(' ', "-")));
        std::fs::create_dir(&cwd).unwrap();
        let o = run(crate::pex()
            .args(["fetch", &root, "--peer", &liar.addr, "--data-dir", s(&dir.path().join("f"))])
            .current_dir(&cwd));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{why}: {err}");
        assert!(err.contains(says) && err.lines().count() == 1, "{why}: {err}");
        let left: Vec<_> = std::fs::read_dir(&cwd).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "{why}: wrote {left:?}");
        assert!(!dir.path().join("escape").exists() && !Path::new("/tmp/escape").exists(), "{why}");
    }
}

/// A tree of small files and two larger ones, fetched slowly enough to be killed midway.
fn slow_tree(root: &Path) {
    for i in 0..40 {
        std::fs::create_dir_all(root.join(format!("small/{}", i % 4))).unwrap();
        std::fs::write(root.join(format!("small/{}/f{i}.txt", i % 4)), data(1000 + i * 300, i as u64)).unwrap();
    }
    std::fs::write(root.join("z1.bin"), data(12 << 20, 91)).unwrap();
    std::fs::write(root.join("z2.bin"), data(12 << 20, 92)).unwrap();
}

#[test]
fn only_fetches_the_matching_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tree");
    slow_tree(&src);
    let seeder = Seeder::start(&src, &dir.path().join("s"), &[]);
    let out = dir.path().join("out");
    let f = s(&dir.path().join("f")).to_owned();
    let o = run(crate::pex().args([
        "fetch",
        &seeder.root,
        "--peer",
        &seeder.peer,
        "-o",
        s(&out),
        "--only",
        "*.txt",
        "--only",
        "z2*",
        "--data-dir",
        &f,
        "--json",
    ]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = run(std::process::Command::new("find").args([s(&out), "-type", "f"]));
    let got = String::from_utf8_lossy(&got.stdout);
    assert_eq!(got.lines().count(), 41, "{got}");
    assert!(got.contains("z2.bin") && !got.contains("z1.bin"), "{got}");
    assert_eq!(std::fs::read(out.join("small/3/f7.txt")).unwrap(), data(1000 + 7 * 300, 7));
    // A directory pattern takes what is below it; one that matches nothing is an error.
    let out2 = dir.path().join("out2");
    let o = run(crate::pex().args([
        "fetch",
        &seeder.root,
        "--peer",
        &seeder.peer,
        "-o",
        s(&out2),
        "--only",
        "small/1",
        "--data-dir",
        &f,
    ]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_dir(out2.join("small/1")).unwrap().count(), 10);
    assert!(!out2.join("small/2").exists() && !out2.join("z1.bin").exists());
    let o = run(crate::pex().args([
        "fetch",
        &seeder.root,
        "--peer",
        &seeder.peer,
        "-o",
        s(&dir.path().join("none")),
        "--only",
        "*.nothing",
        "--data-dir",
        &f,
    ]));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("matches nothing"));
    seeder.interrupt();
}

#[test]
fn a_folder_fetch_killed_with_sigkill_resumes_without_refetching_finished_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tree");
    slow_tree(&src);
    // Slow enough (24 MiB at 4 MiB/s) that the fetch is caught midway.
    let seeder = Seeder::start(&src, &dir.path().join("s"), &["--max-upload-rate", "4MiB"]);
    let out = dir.path().join("out");
    let f = s(&dir.path().join("f")).to_owned();
    let args = ["fetch", &seeder.root, "--peer", &seeder.peer, "-o", s(&out), "--data-dir", &f, "--json"];
    let mut fetch = Proc::spawn(crate::pex().args(args).stdout(Stdio::null()).stderr(Stdio::null()));
    let small_done = || (0..40).all(|i| out.join(format!("small/{}/f{i}.txt", i % 4)).exists());
    let deadline = Instant::now() + PATIENCE;
    while !(small_done() && out.join("z1.bin.part").exists()) {
        assert!(Instant::now() < deadline, "the fetch never got midway");
        std::thread::sleep(Duration::from_millis(20));
    }
    fetch.kill();
    assert!(!out.join("z1.bin").exists() || !out.join("z2.bin").exists(), "finished before the kill");
    let before: Vec<(u64, i64)> = (0..40)
        .map(|i| std::fs::metadata(out.join(format!("small/{}/f{i}.txt", i % 4))).unwrap())
        .map(|m| (m.ino(), m.mtime_nsec()))
        .collect();
    let o = run(crate::pex().args(args));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    diff(&src, &out);
    let after: Vec<(u64, i64)> = (0..40)
        .map(|i| std::fs::metadata(out.join(format!("small/{}/f{i}.txt", i % 4))).unwrap())
        .map(|m| (m.ino(), m.mtime_nsec()))
        .collect();
    assert_eq!(before, after, "finished files were written again");
    // Only what was missing crossed the wire: not the small files, not the verified pieces.
    let v = json(&o);
    let small: u64 = (0..40).map(|i| 1000 + i * 300).sum();
    assert!(v["downloaded_bytes"].as_u64().unwrap() < (24 << 20) + small, "{v}");
    seeder.interrupt();
}
