//! `pex fetch ROOT -o -`: the file on standard output, in order, as it
//! arrives; nothing on disk; a closed pipe is a clean end; memory bounded by
//! the window however slowly the reader reads.

use super::{run, Proc, Seeder, PATIENCE};
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

/// A file whose pieces repeat (0 = 5 and 2 = 3 = 9), so that one verified
/// blob feeds several slots, some beyond the window when it arrives.
fn repeating(size: usize) -> Vec<u8> {
    let mib = 1 << 20;
    let pieces: Vec<Vec<u8>> = (0..4).map(|i| super::data(mib, 200 + i)).collect();
    let order = [0, 1, 2, 2, 3, 0, 1, 3, 1, 2];
    let mut out: Vec<u8> = order.iter().flat_map(|&i| pieces[i].clone()).collect();
    out.truncate(size);
    out
}

fn stream_args(seeder: &Seeder, dd: &std::path::Path) -> Vec<String> {
    let args = ["fetch", &seeder.root, "--peer", &seeder.peer, "-o", "-", "--data-dir", dd.to_str().unwrap()];
    args.map(str::to_owned).to_vec()
}

#[test]
fn the_file_comes_out_on_stdout_in_order_and_nothing_is_written_to_disk() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = repeating(10 * (1 << 20) - 12345);
    let src = dir.path().join("f.bin");
    std::fs::write(&src, &bytes).unwrap();
    let seeder = Seeder::start(&src, &dir.path().join("s"), &[]);
    let cwd = dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let dd = dir.path().join("f");
    let mut args = stream_args(&seeder, &dd);
    args.push("--json".into());
    let o = run(crate::pex().args(&args).current_dir(&cwd));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout == bytes, "stdout differs from the file ({} bytes of {})", o.stdout.len(), bytes.len());
    // The summary goes to stderr, as stdout carries the file.
    let summary: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stderr).trim()).unwrap();
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["path"], "-");
    // Nothing on disk: no file, no .part, no record of a partial or finished download.
    assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0);
    for records in ["partial", "seeds"] {
        let n = std::fs::read_dir(dd.join(records)).map(|d| d.count()).unwrap_or(0);
        assert_eq!(n, 0, "{records} records written for a stream");
    }
    // --seed needs the file on disk.
    let mut seed_args = stream_args(&seeder, &dd);
    seed_args.push("--seed".into());
    let o = run(crate::pex().args(&seed_args));
    assert_eq!(o.status.code(), Some(2));
    seeder.interrupt();
}

#[test]
fn a_closed_pipe_ends_the_fetch_with_exit_0_and_nothing_said() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _, bytes) = Seeder::with_file(dir.path(), 24 << 20, 77, &[]);
    let mut fetch = Proc::spawn(
        crate::pex()
            .args(stream_args(&seeder, &dir.path().join("f")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    // Like `| head -c 1000`: read a little, then close the pipe.
    let mut head = vec![0u8; 1000];
    fetch.0.stdout.take().unwrap().read_exact(&mut head).unwrap();
    assert_eq!(head, bytes[..1000]);
    let o = fetch.output_within(PATIENCE);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stderr.is_empty(), "said: {}", String::from_utf8_lossy(&o.stderr));
    seeder.interrupt();
}

/// The peak resident memory of a running process (VmHWM), in bytes: 0 once it has exited.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).map(|v| v.trim().trim_end_matches(" kB"));
    kib.and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0) * 1024
}

#[test]
fn memory_stays_bounded_by_the_window_when_the_reader_is_slow() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _, bytes) = Seeder::with_file(dir.path(), 96 << 20, 78, &[]);
    let mut fetch = Proc::spawn(
        crate::pex()
            .args(stream_args(&seeder, &dir.path().join("f")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let pid = fetch.id();
    let mut out = fetch.0.stdout.take().unwrap();
    // A reader far slower than the link: pieces wait for it, and the window must hold them back.
    // VmHWM (the peak since exec; wait4's ru_maxrss would include this test's own
    // memory, which the child had until it exec'd) is read as it goes.
    let mut got = Vec::with_capacity(bytes.len());
    let mut buf = vec![0u8; 64 << 10];
    let mut peak = 0;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        peak = peak.max(peak_rss(pid));
        std::thread::sleep(Duration::from_micros(500));
    }
    assert!(fetch.wait_within(PATIENCE).success(), "the stream failed");
    assert!(peak > 0, "no VmHWM read");
    assert!(got == bytes, "stdout differs from the file");
    // 96 MiB streamed; held at once: the window (16 MiB), 16 MiB in flight, the process itself.
    assert!(peak < 64 << 20, "peak RSS {} MiB while streaming 96 MiB", peak >> 20);
    seeder.interrupt();
}
