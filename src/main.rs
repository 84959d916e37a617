//! The `pex` command: a thin layer of argument parsing, progress bars and
//! output over the library. All protocol and storage logic lives in `pex::*`.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use pex::datadir::DataDir;
use pex::{Config, FetchOptions, Hash, Node, Progress};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "pex",
    version,
    about = "Content-addressed piece exchange: seed a file, fetch it by hash from a swarm"
)]
struct Cli {
    /// More log output on stderr (-v: peers joining, leaving, banned; -vv: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hash a file, print its root hash and a fetch command, and serve it until Ctrl-C.
    Seed {
        /// The file to share.
        file: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Download a file by root hash from the swarm, verifying every piece.
    Fetch {
        /// Root hash: 64 hex digits.
        hash: String,
        /// Output path (default: the file's name in the current directory). Never overwritten.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Keep serving the file after the download completes, until Ctrl-C.
        #[arg(long)]
        seed: bool,
        /// Seconds to keep retrying the given peers before giving up.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        connect_timeout: u64,
        /// Seconds without a reachable peer, or without progress, before giving up.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        give_up_after: u64,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Print a file's root hash and nothing else.
    Hash {
        /// The file to hash.
        file: PathBuf,
    },
    /// Serve everything this data directory has seeded or fetched, and help peers find each other.
    Serve {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Show pex working: seed a generated file and fetch it through a second node on [::1].
    Demo {
        /// Size of the generated file, e.g. 64MiB.
        #[arg(long, default_value = "64MiB", value_parser = parse_size)]
        size: u64,
    },
}

#[derive(Args, Clone)]
struct NodeArgs {
    /// Address to accept connections on (seed and serve: [::]:9000; fetch: any free port).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// A node to connect to (repeatable), e.g. [::1]:9000.
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<String>,
    /// Where manifests and records of served files are kept (default: $XDG_DATA_HOME/pex).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Upload limit in bytes per second, e.g. 16MiB or 256KiB.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    max_upload_rate: Option<u64>,
    /// Most simultaneous connections.
    #[arg(long, value_name = "N", default_value_t = pex::node::DEFAULT_MAX_PEERS)]
    max_peers: usize,
    /// Only talk to the peers given with --peer: learn and share no others.
    #[arg(long)]
    no_pex: bool,
    /// Print one JSON summary on stdout when the command ends.
    #[arg(long)]
    json: bool,
    /// Seconds a new connection has to send HELLO.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, help_heading = "Timing")]
    hello_timeout: f64,
    /// Seconds of silence before a keep-alive is sent.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, help_heading = "Timing")]
    keepalive: f64,
    /// Seconds of silence after which a peer is dropped.
    #[arg(long, value_name = "SECS", default_value_t = 120.0, help_heading = "Timing")]
    idle_timeout: f64,
    /// Seconds an ASK may go unanswered before it moves to another peer.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, help_heading = "Timing")]
    ask_timeout: f64,
    /// Seconds between PEERS updates.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, help_heading = "Timing")]
    peers_interval: f64,
}

impl NodeArgs {
    fn timeouts(&self) -> Result<pex::Timeouts> {
        let secs = |name: &str, v: f64| -> Result<Duration> {
            Duration::try_from_secs_f64(v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| anyhow!("--{name} must be a positive number of seconds, got {v}"))
        };
        Ok(pex::Timeouts {
            hello: secs("hello-timeout", self.hello_timeout)?,
            keepalive: secs("keepalive", self.keepalive)?,
            idle: secs("idle-timeout", self.idle_timeout)?,
            ask: secs("ask-timeout", self.ask_timeout)?,
            peers_interval: secs("peers-interval", self.peers_interval)?,
            ..pex::Timeouts::default()
        })
    }
}

fn parse_rate(s: &str) -> Result<u64, String> {
    pex::ratelimit::parse_rate(s)
}

fn parse_size(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    pex::ratelimit::parse_rate(s).map_err(|e| e.replace("rate", "size"))
}

fn main() {
    // Keep freed 1 MiB frame buffers in the heap for reuse instead of handing
    // them back to the kernel and faulting in fresh zeroed pages for the next
    // (13% of a fetch's profile was clear_page; 1 GiB fetch: 1.8 → 1.35 s system time).
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes glibc's allocator; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let env = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // Colour only for a person at a terminal who has not asked for none (no-color.org).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(command: Command) -> Result<i32> {
    match command {
        Command::Hash { file } => {
            let (info, _) = hash_file(&file, false).await?;
            println!("{}", info.root);
            Ok(0)
        }
        Command::Seed { file, node } => seed(file, node).await,
        Command::Fetch { hash, output, seed, connect_timeout, give_up_after, node } => {
            let root: Hash = hash.parse().map_err(|e| anyhow!("invalid hash {hash:?}: {e}"))?;
            let opts = FetchOptions {
                output,
                peers: Vec::new(),
                connect_timeout: Duration::from_secs(connect_timeout),
                give_up_after: Duration::from_secs(give_up_after),
            };
            fetch(root, opts, seed, node).await
        }
        Command::Serve { node } => serve(node).await,
        Command::Demo { size } => demo(size).await,
    }
}

/// Cancels `token` on Ctrl-C or SIGTERM.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        token.cancel();
    });
}

async fn resolve(peers: &[String]) -> Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for p in peers {
        let addr = match p.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => tokio::net::lookup_host(p.as_str())
                .await
                .map_err(|_| anyhow!("invalid peer address {p:?}: expected HOST:PORT such as [::1]:9000"))?
                .next()
                .ok_or_else(|| anyhow!("peer address {p:?} resolves to nothing"))?,
        };
        if let Some(why) = pex::peers::undialable(&addr) {
            bail!("invalid peer address {p:?}: {why} can never be a peer");
        }
        out.push(addr);
    }
    Ok(out)
}

async fn start_node(
    args: &NodeArgs,
    default_listen: SocketAddr,
    token: CancellationToken,
) -> Result<(Node, Vec<SocketAddr>)> {
    let peers = resolve(&args.peers).await?;
    let dir = args.data_dir.clone().unwrap_or_else(DataDir::default_path);
    let data_dir = DataDir::open(&dir)?;
    let config = Config {
        listen: Some(args.listen.unwrap_or(default_listen)),
        max_peers: args.max_peers.max(1),
        pex: !args.no_pex,
        max_upload_rate: args.max_upload_rate,
        timeouts: args.timeouts()?,
    };
    let node = Node::start(config, Some(data_dir), token).await?;
    for p in &peers {
        node.add_peer(*p);
    }
    Ok((node, peers))
}

fn bar(len: u64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix:>9} [{bar:30.cyan/blue}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix.to_owned());
    bar
}

/// Hashes a file with a progress bar (on a terminal) without serving it.
async fn hash_file(path: &Path, _show: bool) -> Result<(Arc<pex::manifest::FileInfo>, ())> {
    let node =
        Node::start(Config { listen: None, pex: false, ..Config::default() }, None, CancellationToken::new()).await?;
    let size = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?.len();
    let pb = bar(size, "hashing");
    let pb2 = pb.clone();
    let info = node.seed(path, move |n| pb2.inc(n)).await?;
    pb.finish_and_clear();
    node.shutdown().await;
    Ok((info, ()))
}

fn advertised(node: &Node) -> String {
    match node.local_addr() {
        Some(a) if a.ip().is_unspecified() => format!("[::1]:{}", a.port()),
        Some(a) => a.to_string(),
        None => "?".into(),
    }
}

fn summary(node: &Node, root: Option<Hash>, file_bytes: u64, started: Instant) -> serde_json::Value {
    let stats = node.stats();
    json!({
        "root": root.map(|r| r.to_hex()),
        "file_bytes": file_bytes,
        "seconds": started.elapsed().as_secs_f64(),
        "uploaded_bytes": stats.uploaded_bytes,
        "downloaded_bytes": stats.downloaded_bytes,
        "pieces_rejected": stats.pieces_rejected,
        "peers": stats.peers,
        "node_id": node.id().to_hex(),
        "listen": node.local_addr().map(|a| a.to_string()),
    })
}

async fn seed(file: PathBuf, args: NodeArgs) -> Result<i32> {
    let started = Instant::now();
    let token = CancellationToken::new();
    let (node, _) = start_node(&args, "[::]:9000".parse()?, token.clone()).await?;
    cancel_on_signal(token.clone());
    let size = std::fs::metadata(&file).with_context(|| format!("{}", file.display()))?.len();
    let pb = bar(size, "hashing");
    let pb2 = pb.clone();
    let info = node.seed(&file, move |n| pb2.inc(n)).await?;
    pb.finish_and_clear();
    let hint = format!("pex fetch {} --peer {}", info.root, advertised(&node));
    if args.json {
        eprintln!("{}\n{hint}", info.root);
    } else {
        println!("{}\n{hint}", info.root);
    }
    eprintln!("serving {} ({} bytes) on {}; Ctrl-C to stop", info.manifest.name, size, advertised(&node));
    token.cancelled().await;
    node.shutdown().await;
    if args.json {
        println!("{}", summary(&node, Some(info.root), size, started));
    }
    Ok(0)
}

async fn serve(args: NodeArgs) -> Result<i32> {
    let started = Instant::now();
    let token = CancellationToken::new();
    let (node, _) = start_node(&args, "[::]:9000".parse()?, token.clone()).await?;
    cancel_on_signal(token.clone());
    let (served, problems) = node.serve_data_dir();
    for p in &problems {
        eprintln!("warning: {p}");
    }
    for info in &served {
        eprintln!("serving {} {} ({} bytes)", info.root, info.manifest.name, info.manifest.size);
    }
    eprintln!("serving {} files on {}; Ctrl-C to stop", served.len(), advertised(&node));
    token.cancelled().await;
    node.shutdown().await;
    if args.json {
        let mut s =
            summary(&node, served.first().map(|i| i.root), served.iter().map(|i| i.manifest.size).sum(), started);
        s["roots"] = json!(served.iter().map(|i| i.root.to_hex()).collect::<Vec<_>>());
        println!("{s}");
    }
    Ok(0)
}

/// Shows fetch progress on a terminal until the watch closes.
fn progress_ui(mut rx: watch::Receiver<Progress>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pb = bar(0, "fetching");
        let mut started = false;
        loop {
            {
                let p = rx.borrow_and_update().clone();
                if p.total_bytes > 0 || p.name.is_some() {
                    if !started {
                        pb.set_length(p.total_bytes);
                        pb.set_position(p.resumed_bytes);
                        pb.reset_eta();
                        started = true;
                    }
                    pb.set_position(p.have_bytes);
                }
                pb.set_message(format!("{} peers", p.peers));
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
        pb.finish_and_clear();
    })
}

async fn fetch(root: Hash, mut opts: FetchOptions, keep_seeding: bool, args: NodeArgs) -> Result<i32> {
    let started = Instant::now();
    let token = CancellationToken::new();
    if args.peers.is_empty() {
        bail!("no peer given: use --peer ADDR (for example --peer [::1]:9000)");
    }
    let (node, peers) = start_node(&args, "[::]:0".parse()?, token.clone()).await?;
    cancel_on_signal(token.clone());
    opts.peers = peers;
    let (tx, rx) = watch::channel(Progress::default());
    let known = rx.clone();
    let ui = progress_ui(rx);
    let result = node.fetch(root, opts, tx).await;
    let _ = ui.await;
    let code = match &result {
        Ok(outcome) => {
            if !args.json {
                println!("{}", outcome.path.display());
            }
            if keep_seeding {
                eprintln!("seeding {} on {}; Ctrl-C to stop", outcome.path.display(), advertised(&node));
                token.cancelled().await;
            }
            0
        }
        Err(pex::FetchError::Interrupted) => {
            eprintln!("error: interrupted");
            130
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    };
    node.shutdown().await;
    if args.json {
        // The size is known once the manifest arrived, even if the fetch then failed.
        let file_bytes = result.as_ref().map(|o| o.file_bytes).unwrap_or_else(|_| known.borrow().total_bytes);
        let mut s = summary(&node, Some(root), file_bytes, started);
        if let Ok(o) = &result {
            s["path"] = json!(o.path);
            s["resumed_bytes"] = json!(o.resumed_bytes);
        }
        s["ok"] = json!(result.is_ok());
        println!("{s}");
    }
    Ok(code)
}

async fn demo(size: u64) -> Result<i32> {
    let dir = tempfile_dir()?;
    let src = dir.join("demo.bin");
    eprintln!("generating {size} bytes of random data in {}", src.display());
    write_random(&src, size)?;
    let token = CancellationToken::new();
    let config = |listen: &str| -> Result<Config> { Ok(Config { listen: Some(listen.parse()?), ..Config::default() }) };
    let seeder = Node::start(config("[::1]:0")?, Some(DataDir::open(dir.join("seeder"))?), token.clone()).await?;
    let pb = bar(size, "hashing");
    let pb2 = pb.clone();
    let info = seeder.seed(&src, move |n| pb2.inc(n)).await?;
    pb.finish_and_clear();
    let seeder_addr = seeder.local_addr().ok_or_else(|| anyhow!("seeder is not listening"))?;
    eprintln!("seeder on {seeder_addr} serves root {}", info.root);
    let fetcher = Node::start(config("[::1]:0")?, Some(DataDir::open(dir.join("fetcher"))?), token.clone()).await?;
    let out = dir.join("demo.copy");
    let opts = FetchOptions { output: Some(out.clone()), peers: vec![seeder_addr], ..FetchOptions::default() };
    let (tx, rx) = watch::channel(Progress::default());
    let ui = progress_ui(rx);
    let started = Instant::now();
    let outcome = fetcher.fetch(info.root, opts, tx).await;
    let _ = ui.await;
    let secs = started.elapsed().as_secs_f64();
    let outcome = outcome?;
    let (copy, _) = hash_file(&outcome.path, false).await?;
    token.cancel();
    seeder.shutdown().await;
    fetcher.shutdown().await;
    let same = copy.pieces == info.pieces && copy.manifest.size == info.manifest.size;
    println!(
        "fetched {} bytes in {secs:.2} s ({:.0} MB/s) through [::1]; copy {} the original",
        size,
        size as f64 / secs / 1e6,
        if same { "is byte-identical to" } else { "DIFFERS from" }
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(if same { 0 } else { 1 })
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pex-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    Ok(dir)
}

fn write_random(path: &Path, size: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rng = fastrand::Rng::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}
