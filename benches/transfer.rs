//! End-to-end transfer benchmark over [::1], in one run, interleaved:
//! - a plain Rust baseline (tokio TCP copy of the same bytes, SHA-256 of each
//!   1 MiB on the receiver, written into a file) against pex seed → fetch in
//!   this process;
//! - `pex seed` → `pex fetch` as two processes, wire protocol v2 (this build)
//!   against v1 (the last v1 build, commit 06f5fac, made by scripts/build-v1.sh
//!   into target/v1/release/pex, or the binary PEX_V1_BIN names), with the
//!   CPU-seconds per GiB of both processes together; and this build again with
//!   `PEX_NO_DIRECT=1` (pieces written through the mapping, not `O_DIRECT`).
//!
//! Size: PEX_BENCH_SIZE (bytes or e.g. 1GiB), default 256 MiB; PEX_BENCH_RUNS
//! runs of each (default 3), the median is reported.

use pex::datadir::DataDir;
use pex::{Config, FetchOptions, Node, Progress};
use sha2::{Digest, Sha256};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const PIECE: usize = 1 << 20;

fn main() {
    // `cargo test --benches` runs bench binaries with --bench absent: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let size = match std::env::var("PEX_BENCH_SIZE") {
        Ok(s) => pex::ratelimit::parse_rate(&s).expect("PEX_BENCH_SIZE"),
        Err(_) if quick => 8 << 20,
        Err(_) => 256 << 20,
    } as usize;
    let runs: usize =
        std::env::var("PEX_BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(if quick { 1 } else { 3 });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    let mut data = vec![0u8; size];
    fastrand::Rng::with_seed(42).fill(&mut data);
    std::fs::write(&src, &data).unwrap();
    drop(data);
    let v2_bin = PathBuf::from(env!("CARGO_BIN_EXE_pex"));
    let v1_bin = std::env::var_os("PEX_V1_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/v1/release/pex"));
    let v1_bin = v1_bin.exists().then_some(v1_bin);
    let mut base = Vec::new();
    let mut pex = Vec::new();
    let (mut v1, mut v2, mut mapped) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        base.push(rt.block_on(baseline(&src, &dir.path().join(format!("base{run}")))));
        pex.push(rt.block_on(pex_transfer(&src, dir.path(), run)));
        if let Some(bin) = &v1_bin {
            v1.push(processes(bin, &src, &dir.path().join(format!("v1-{run}")), &[]));
        }
        v2.push(processes(&v2_bin, &src, &dir.path().join(format!("v2-{run}")), &[]));
        let no_direct = [("PEX_NO_DIRECT", "1")];
        mapped.push(processes(&v2_bin, &src, &dir.path().join(format!("v2m-{run}")), &no_direct));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (b, p) = (median(&mut base), median(&mut pex));
    let mbs = |secs: f64| size as f64 / secs / 1e6;
    println!("transfer of {} MiB over [::1], median of {runs}:", size >> 20);
    println!("  baseline (tokio TCP + SHA-256 + file write): {:8.0} MB/s ({b:.3} s)", mbs(b));
    println!("  pex seed -> fetch:                          {:8.0} MB/s ({p:.3} s)", mbs(p));
    println!("  pex / baseline: {:.2}", b / p);
    let gib = size as f64 / (1u64 << 30) as f64;
    let show = |name: &str, runs: &mut Vec<Run>| -> (f64, f64) {
        let mut secs: Vec<f64> = runs.iter().map(|r| r.secs).collect();
        let mut cpu: Vec<f64> = runs.iter().map(|r| r.cpu).collect();
        let (s, c) = (median(&mut secs), median(&mut cpu));
        println!("  {name}: {:8.0} MB/s ({s:.3} s), {:.2} CPU-s per GiB (both processes)", mbs(s), c / gib);
        (s, c)
    };
    println!("pex seed -> pex fetch as processes, median of {runs}:");
    let (s2, c2) = show("wire v2 (Noise, AES-256-GCM)", &mut v2);
    let (sm, cm) = show("v2, pieces via the mapping  ", &mut mapped);
    println!("  direct writes / mapping throughput: {:.2}; CPU per GiB: {:.2}", sm / s2, c2 / cm);
    match v1_bin {
        Some(_) => {
            let (s1, c1) = show("wire v1 (plaintext)         ", &mut v1);
            println!("  v2 / v1 throughput: {:.2}; CPU per GiB v2 / v1: {:.2}", s1 / s2, c2 / c1);
        }
        None => println!("  v1 baseline skipped: run scripts/build-v1.sh (or set PEX_V1_BIN) first"),
    }
}

/// One process-level transfer: its wall time and the CPU-seconds both processes used.
struct Run {
    secs: f64,
    cpu: f64,
}

/// CPU-seconds a live process has used so far, from /proc.
fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// `bin seed src` and `bin fetch` of it as two processes on [::1]. The fetch is
/// timed; CPU is the seeder's during the fetch plus the whole fetcher's.
fn processes(bin: &Path, src: &Path, dir: &Path, env: &[(&str, &str)]) -> Run {
    std::fs::create_dir_all(dir).unwrap();
    let mut seeder = Command::new(bin)
        .env("PEX_NO_LAN", "1")
        .args(["seed", "--listen", "[::1]:0", "-q", "--data-dir"])
        .arg(dir.join("s"))
        .arg(src)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the seeder");
    // Its stdout: the root, then one fetch command per address (`--peer [ID@][::1]:PORT`).
    let mut lines = std::io::BufReader::new(seeder.stdout.take().unwrap()).lines();
    let root = lines.next().unwrap().unwrap();
    let peer = lines
        .map(|l| l.unwrap())
        .find_map(|l| l.split("--peer ").nth(1).filter(|p| p.contains("[::1]")).map(str::to_owned))
        .expect("a fetch command for [::1]");
    let before = cpu_of(seeder.id());
    let start = Instant::now();
    // Reaped below with wait4, which also reports its CPU time.
    #[allow(clippy::zombie_processes)]
    let fetcher = Command::new(bin)
        .env("PEX_NO_LAN", "1")
        .envs(env.iter().copied())
        .args(["fetch", &root, "--peer", &peer, "-q", "-o"])
        .arg(dir.join("out"))
        .arg("--data-dir")
        .arg(dir.join("f"))
        .stdout(Stdio::null())
        .spawn()
        .expect("start the fetcher");
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, which std's `Child` is not waiting on.
    let pid = unsafe { libc::wait4(fetcher.id() as i32, &mut status, 0, &mut usage) };
    let secs = start.elapsed().as_secs_f64();
    assert!(pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the fetch failed");
    let seeder_cpu = cpu_of(seeder.id()) - before;
    let _ = seeder.kill();
    let _ = seeder.wait();
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let _ = std::fs::remove_dir_all(dir);
    Run { secs, cpu: tv(usage.ru_utime) + tv(usage.ru_stime) + seeder_cpu }
}

/// Sends the file over one TCP connection; the receiver hashes each 1 MiB and writes it out.
async fn baseline(src: &Path, out: &Path) -> f64 {
    let listener = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let src = src.to_owned();
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        let mut file = tokio::fs::File::open(&src).await.unwrap();
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = vec![0u8; PIECE];
        loop {
            let n = file.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            sock.write_all(&buf[..n]).await.unwrap();
        }
    });
    let (mut sock, _) = listener.accept().await.unwrap();
    // A plain blocking write: the simplest thing a receiver would do.
    let mut file = std::fs::File::create(out).unwrap();
    let mut buf = vec![0u8; PIECE];
    let mut digests = Vec::new();
    loop {
        let mut filled = 0;
        while filled < PIECE {
            let n = sock.read(&mut buf[filled..]).await.unwrap();
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        digests.push(<[u8; 32]>::from(Sha256::digest(&buf[..filled])));
        std::io::Write::write_all(&mut file, &buf[..filled]).unwrap();
    }
    sender.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    std::hint::black_box(digests);
    let _ = std::fs::remove_file(out);
    secs
}

/// Seeds the file from one node and fetches it with another, both on [::1].
async fn pex_transfer(src: &Path, dir: &Path, run: usize) -> f64 {
    let token = CancellationToken::new();
    let config = || Config { listen: Some("[::1]:0".parse().unwrap()), ..Config::default() };
    let seeder =
        Node::start(config(), Some(DataDir::open(dir.join(format!("s{run}"))).unwrap()), token.clone()).await.unwrap();
    let info = seeder.seed(src, |_| {}).await.unwrap();
    let fetcher =
        Node::start(config(), Some(DataDir::open(dir.join(format!("f{run}"))).unwrap()), token.clone()).await.unwrap();
    let out = dir.join(format!("pex{run}.bin"));
    let opts =
        FetchOptions { output: Some(out.clone()), peers: vec![seeder.local_addr().unwrap()], ..Default::default() };
    let (tx, _rx) = tokio::sync::watch::channel(Progress::default());
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(600), fetcher.fetch(info.root, opts, tx)).await.unwrap().unwrap();
    let secs = start.elapsed().as_secs_f64();
    token.cancel();
    seeder.shutdown().await;
    fetcher.shutdown().await;
    let _ = std::fs::remove_file(out);
    secs
}
