//! End-to-end transfer benchmark over [::1], in one process run: a plain Rust
//! baseline (tokio TCP copy of the same bytes, SHA-256 of each 1 MiB on the
//! receiver, written into a file) against pex seed → fetch. Prints MB/s of
//! each and their ratio. Size: PEX_BENCH_SIZE (bytes or e.g. 1GiB), default 256 MiB;
//! PEX_BENCH_RUNS runs of each (default 3), the median is reported.

use pex::datadir::DataDir;
use pex::{Config, FetchOptions, Node, Progress};
use sha2::{Digest, Sha256};
use std::path::Path;
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
    let mut base = Vec::new();
    let mut pex = Vec::new();
    for run in 0..runs {
        base.push(rt.block_on(baseline(&src, &dir.path().join(format!("base{run}")))));
        pex.push(rt.block_on(pex_transfer(&src, dir.path(), run)));
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
