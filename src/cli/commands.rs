//! The commands: seed, fetch, serve, hash and demo, over the library. Each
//! returns its exit code; Ctrl-C (or SIGTERM) ends any of them at any moment
//! with 130, after the summary of those that have one.

use super::{addrs, ui, Command, NodeArgs, EXIT_INTERRUPTED};
use anyhow::{anyhow, bail, Result};
use pex::datadir::DataDir;
use pex::fetch::Content;
use pex::text::{bytes, clean, io_message, shown_path};
use pex::{Config, FetchError, FetchOptions, Hash, Node, Progress};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often a seeder's status line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Runs one command; `quiet` hides bars and status lines.
pub async fn run(command: Command, quiet: bool) -> Result<i32> {
    let token = CancellationToken::new();
    cancel_on_signal(token.clone());
    match command {
        Command::Hash { file } if file.is_dir() => super::folders::hash_dir(&file, quiet, token).await,
        Command::Hash { file } => hash(&file, quiet, token).await,
        Command::Seed { file, rehash, node } if file.is_dir() => {
            super::folders::seed_dir(&file, rehash, node, quiet, token).await
        }
        Command::Seed { file, rehash, node } => seed(file, rehash, node, quiet, token).await,
        Command::Ls { hash: ticket, node } => {
            let mut expect: Vec<_> = node.peers.iter().filter_map(|p| Some((p.addr, p.node_id?))).collect();
            expect.extend(ticket.peers.iter().map(|(id, addr)| (*addr, *id)));
            let opts = FetchOptions {
                peers: node.peers.iter().filter(|p| p.node_id.is_none()).map(|p| p.addr).collect(),
                expect,
                ..FetchOptions::default()
            };
            super::folders::ls(ticket.root, opts, node, quiet, token).await
        }
        Command::Fetch { hash: ticket, output, only, seed, connect_timeout, give_up_after, node } => {
            let mut expect: Vec<_> = node.peers.iter().filter_map(|p| Some((p.addr, p.node_id?))).collect();
            expect.extend(ticket.peers.iter().map(|(id, addr)| (*addr, *id)));
            let hash = ticket.root;
            // `-o -`: the file to standard output, in order, as it arrives.
            let stdout = output.as_deref() == Some(Path::new("-"));
            if stdout && seed {
                eprintln!("error: --seed needs the file on disk; it cannot be combined with -o -");
                return Ok(2);
            }
            let opts = FetchOptions {
                output: output.filter(|_| !stdout),
                stdout,
                peers: node.peers.iter().filter(|p| p.node_id.is_none()).map(|p| p.addr).collect(),
                expect,
                remembered: Vec::new(),
                connect_timeout: Duration::from_secs(connect_timeout),
                give_up_after: Duration::from_secs(give_up_after),
                only,
                ..FetchOptions::default()
            };
            fetch(hash, opts, seed, node, quiet, token).await
        }
        Command::Serve { node } => serve(node, quiet, token).await,
        Command::Id { data_dir, json } => id(data_dir, json),
        Command::Ticket { root, listen, data_dir } => ticket(root, listen, data_dir),
        Command::Demo { size } => demo(size, quiet, token).await,
        Command::Chat { room, node } => super::chat::chat(room, node, quiet, token).await,
    }
}

/// Cancels `token` on Ctrl-C or SIGTERM. The handlers are installed before
/// this returns (not when a task first runs), so a signal that comes at once,
/// on a loaded machine, still ends the command with its summary and 130.
fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::spawn(async move {
        tokio::select! {
            _ = recv(int.as_mut()) => {}
            _ = recv(term.as_mut()) => {}
        }
        token.cancel();
    });
}

/// The next delivery of a signal, or never when its handler could not be installed.
async fn recv(s: Option<&mut tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

pub(super) async fn start_node(
    args: &NodeArgs,
    default_listen: &str,
    quiet: bool,
    token: CancellationToken,
) -> Result<Node> {
    start_node_with(args, default_listen, quiet, token, |_| {}).await
}

/// [`start_node`] with the configuration changed by `adjust` before the node starts.
pub(super) async fn start_node_with(
    args: &NodeArgs,
    default_listen: &str,
    quiet: bool,
    token: CancellationToken,
    adjust: impl FnOnce(&mut Config),
) -> Result<Node> {
    let dir = args.data_dir.clone().unwrap_or_else(DataDir::default_path);
    let data_dir = DataDir::open(&dir).map_err(|e| anyhow!("{}", io_message(&e)))?;
    let default: SocketAddr = default_listen.parse()?;
    let mut config = Config {
        listen: Some(args.listen.unwrap_or(default)),
        max_peers: args.max_peers.max(1),
        pex: !args.no_pex,
        max_upload_rate: args.max_upload_rate.filter(|r| *r > 0),
        timeouts: args.timeouts(),
        identity: None,
        remember: !args.no_remember,
        // --no-pex: only the peers given, so no discovery either way.
        lan: !args.no_lan && !args.no_pex,
        dht: (args.dht && !args.no_pex).then(|| pex::discovery::dht::DhtConfig {
            bootstrap: (!args.dht_bootstrap.is_empty())
                .then(|| args.dht_bootstrap.iter().filter(|b| *b != "none").cloned().collect()),
            port: args.dht_port,
            state: Some(data_dir.path().join("dht-nodes.json")),
        }),
        dial_learned: true,
    };
    adjust(&mut config);
    let node = Node::start(config, Some(data_dir), token).await?;
    if let (Some(port), false) = (node.dht_port(), quiet) {
        eprintln!("DHT node on UDP port {port}");
    }
    if let (Some(_), Some(SocketAddr::V6(l))) = (node.dht_port(), node.local_addr()) {
        if !l.ip().is_unspecified() {
            eprintln!("warning: the DHT is IPv4 only, and {l} takes no IPv4 connections: listen on [::]:PORT");
        }
    }
    for p in &args.peers {
        match p.node_id {
            Some(id) => node.add_peer_expecting(p.addr, id),
            None => node.add_peer(p.addr),
        }
    }
    Ok(node)
}

/// What `seed` prints first: the root, a fetch command per reachable address,
/// and a ticket (on stderr with --json, which keeps stdout for the summary).
pub(super) fn print_how_to_fetch(node: &Node, root: Hash, json: bool) {
    let mut out = vec![root.to_string()];
    if let Some(listen) = node.local_addr() {
        let id = node.id();
        out.extend(addrs::reachable(listen).iter().map(|a| format!("pex fetch {root} --peer {id}@{a}")));
        // Last, the whole of it in one string: `pex fetch TICKET` needs nothing else.
        out.push(ticket_for(root, id, listen).to_string());
    }
    say(json, out.join("\n"));
}

/// Prints a line of a long-running command (seed, serve) on stdout, or on
/// stderr when `to_stderr`, in one write, ignoring a reader that went away:
/// a script that reads the root and closes the pipe must not stop the node.
pub(super) fn say(to_stderr: bool, line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = if to_stderr {
        writeln!(std::io::stderr().lock(), "{line}")
    } else {
        writeln!(std::io::stdout().lock(), "{line}")
    };
}

/// A ticket for `root` at this node's routable addresses for `listen`.
pub(super) fn ticket_for(root: Hash, id: pex::NodeId, listen: SocketAddr) -> pex::ticket::Ticket {
    let peers = addrs::reachable(listen).into_iter().take(pex::ticket::MAX_PEERS).map(|a| (id, a)).collect();
    pex::ticket::Ticket { root, peers }
}

/// `pex ticket ROOT`: a ticket for a file this data directory serves.
fn ticket(root: Hash, listen: SocketAddr, data_dir: Option<PathBuf>) -> Result<i32> {
    let dir = data_dir.unwrap_or_else(DataDir::default_path);
    let dd = DataDir::open(&dir).map_err(|e| anyhow!("{}", io_message(&e)))?;
    let folder = || dd.folders().into_iter().flatten().any(|(f, _)| f.root == root);
    if !dd.seeds().into_iter().flatten().any(|(_, info)| info.root == root) && !folder() {
        bail!("this node serves no file with root {root} (see `pex serve`)");
    }
    let id = dd.identity().map_err(|e| anyhow!("{}", io_message(&e)))?.node_id();
    println!("{}", ticket_for(root, id, listen));
    Ok(0)
}

/// `pex id`: this data directory's node id (its identity is created if new).
fn id(data_dir: Option<PathBuf>, json: bool) -> Result<i32> {
    let dir = data_dir.unwrap_or_else(DataDir::default_path);
    let dd = DataDir::open(&dir).map_err(|e| anyhow!("{}", io_message(&e)))?;
    let id = dd.identity().map_err(|e| anyhow!("{}", io_message(&e)))?.node_id();
    if json {
        println!("{}", json!({ "node_id": id.to_hex() }));
    } else {
        println!("{id}");
    }
    Ok(0)
}

/// The regular file at `path`, or a one-line error naming it.
fn regular_file(path: &Path) -> Result<std::fs::Metadata> {
    let meta = std::fs::metadata(path).map_err(|e| anyhow!("{}: {}", shown_path(path), io_message(&e)))?;
    if !meta.is_file() {
        bail!("{}: not a regular file", shown_path(path));
    }
    Ok(meta)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Hashes `file` with a bar, unless Ctrl-C comes first (then `None`).
async fn hash_with_bar(
    node: &Node,
    file: &Path,
    rehash: bool,
    quiet: bool,
    token: &CancellationToken,
) -> Result<Option<pex::node::Seeded>> {
    let meta = regular_file(file)?;
    let pb = ui::hashing_bar(ui::interactive(quiet), meta.len(), &file_name(file));
    let pb2 = pb.clone();
    let seeded = tokio::select! {
        r = node.seed_file(file, rehash, move |n| pb2.inc(n)) => Some(r?),
        _ = token.cancelled() => None,
    };
    pb.finish_and_clear();
    Ok(seeded)
}

async fn hash(file: &Path, quiet: bool, token: CancellationToken) -> Result<i32> {
    let config = Config { listen: None, pex: false, ..Config::default() };
    let node = Node::start(config, None, CancellationToken::new()).await?;
    match hash_with_bar(&node, file, true, quiet, &token).await? {
        Some(seeded) => {
            println!("{}", seeded.info.root);
            Ok(0)
        }
        None => Ok(EXIT_INTERRUPTED),
    }
}

pub(super) fn summary(node: &Node, root: Option<Hash>, file_bytes: u64, started: Instant) -> serde_json::Value {
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
        "dht_port": node.dht_port(),
        "lan": node.lan_stats().map(|l| {
            let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            json!({ "queries": n(&l.queries), "answered": n(&l.answered), "dropped": n(&l.dropped), "limited": n(&l.limited) })
        }),
    })
}

/// Where the node listens, for messages.
pub(super) fn listening(node: &Node) -> String {
    node.local_addr().map_or("?".into(), |a| a.to_string())
}

/// Shows a seeder's status line until `token` is cancelled.
pub(super) async fn serve_until_cancelled(node: &Node, what: &str, quiet: bool, token: &CancellationToken) {
    let mut status = ui::StatusLine::new(ui::interactive(quiet));
    let mut announced = 0;
    loop {
        let now = node.dht_announced();
        if now > announced && !quiet {
            status.say(&format!("announced on the DHT: {}", ui::count(now, "file", "files")));
        }
        announced = now;
        status.update(what, node.connected_peers(), node.stats().uploaded_bytes);
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tokio::time::sleep(STATUS_EVERY) => {}
        }
    }
    status.clear();
}

async fn seed(file: PathBuf, rehash: bool, args: NodeArgs, quiet: bool, token: CancellationToken) -> Result<i32> {
    let started = Instant::now();
    let node = start_node(&args, "[::]:9000", quiet, token.clone()).await?;
    let Some(seeded) = hash_with_bar(&node, &file, rehash, quiet, &token).await? else {
        return Ok(EXIT_INTERRUPTED);
    };
    let info = &seeded.info;
    print_how_to_fetch(&node, info.root, args.json);
    let name = clean(&info.manifest.name, 60);
    if !quiet {
        let known = if seeded.hashed { "" } else { " (known file, not re-hashed)" };
        let size = bytes(info.manifest.size);
        eprintln!("serving {name} ({size}){known} on {}; Ctrl-C to stop", listening(&node));
    }
    serve_until_cancelled(&node, &format!("serving {name}"), quiet, &token).await;
    node.shutdown().await;
    if args.json {
        let mut s = summary(&node, Some(info.root), info.manifest.size, started);
        if let Some(listen) = node.local_addr() {
            s["ticket"] = json!(ticket_for(info.root, node.id(), listen).to_string());
        }
        say(false, s);
    }
    Ok(EXIT_INTERRUPTED)
}

async fn serve(args: NodeArgs, quiet: bool, token: CancellationToken) -> Result<i32> {
    let started = Instant::now();
    let node = start_node(&args, "[::]:9000", quiet, token.clone()).await?;
    let (served, mut problems) = node.serve_data_dir();
    let (folders, folder_problems) = node.serve_folders();
    problems.extend(folder_problems);
    for p in &problems {
        eprintln!("warning: {p}");
    }
    if !quiet {
        for info in &served {
            eprintln!("serving {} {} ({})", info.root, clean(&info.manifest.name, 60), bytes(info.manifest.size));
        }
        for f in &folders {
            let files = ui::count(f.files().count(), "file", "files");
            let (name, size) = (clean(&f.manifest.name, 60), bytes(f.manifest.total_size));
            eprintln!("serving {} {name}/ ({files}, {size})", f.root);
        }
        let mut what = ui::count(served.len(), "file", "files");
        if !folders.is_empty() {
            what += &format!(" and {}", ui::count(folders.len(), "folder", "folders"));
        }
        eprintln!("serving {what} on {}; Ctrl-C to stop", listening(&node));
    }
    // One ticket per file and folder served (on stderr with --json, which keeps stdout for the summary).
    let roots: Vec<Hash> = served.iter().map(|i| i.root).chain(folders.iter().map(|f| f.root)).collect();
    if let Some(listen) = node.local_addr() {
        for root in &roots {
            let t = ticket_for(*root, node.id(), listen);
            say(args.json, t);
        }
    }
    let files = ui::count(served.len(), "file", "files");
    serve_until_cancelled(&node, &format!("serving {files}"), quiet, &token).await;
    node.shutdown().await;
    if args.json {
        let total = served.iter().map(|i| i.manifest.size).sum();
        let mut s = summary(&node, served.first().map(|i| i.root), total, started);
        s["roots"] = json!(roots.iter().map(|r| r.to_hex()).collect::<Vec<_>>());
        say(false, s);
    }
    Ok(EXIT_INTERRUPTED)
}

/// Refuses an output path whose directory does not exist, before any network work.
fn check_output(output: &Option<PathBuf>) -> Result<()> {
    let Some(out) = output else { return Ok(()) };
    if out.is_dir() {
        return Ok(());
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!("cannot write {}: directory {} does not exist", shown_path(out), shown_path(parent));
    }
    Ok(())
}

/// What to add to an error when a partial download is kept.
fn resume_hint(progress: &Progress) -> String {
    match &progress.part {
        Some(part) if part.exists() && progress.have_bytes > 0 => format!(
            "; the partial download ({} of {}) is kept in {}: run the same command to resume",
            bytes(progress.have_bytes),
            bytes(progress.total_bytes),
            shown_path(part)
        ),
        _ => String::new(),
    }
}

async fn fetch(
    root: Hash,
    opts: FetchOptions,
    keep_seeding: bool,
    args: NodeArgs,
    quiet: bool,
    token: CancellationToken,
) -> Result<i32> {
    let started = Instant::now();
    let mut opts = opts;
    check_output(&opts.output)?;
    let streaming = opts.stdout;
    let node = start_node(&args, "[::]:0", quiet, token.clone()).await?;
    let tickets = opts.expect.len() - args.peers.iter().filter(|p| p.node_id.is_some()).count();
    if args.peers.is_empty() && opts.expect.is_empty() {
        // No address given: start from the peers this data directory remembers,
        // and whatever the LAN and the DHT find.
        opts.remembered = node.remembered_peers();
    }
    let (tx, rx) = watch::channel(Progress::default());
    let known = rx.clone();
    let show = ui::interactive(quiet);
    let bars = tokio::spawn(ui::fetch_progress(rx, show));
    let result = node.fetch(root, opts, tx).await;
    let _ = bars.await;
    let code = match &result {
        Ok(outcome) => {
            if !args.json && !streaming {
                println!("{}", outcome.path.display());
            }
            if show {
                eprintln!("{}", done_line(&node, outcome, started));
            }
            if keep_seeding {
                if !quiet {
                    let path = shown_path(&outcome.path);
                    eprintln!("seeding {path} on {}; Ctrl-C to stop", listening(&node));
                }
                let name = clean(&content_name(outcome), 60);
                serve_until_cancelled(&node, &format!("seeding {name}"), quiet, &token).await;
                EXIT_INTERRUPTED
            } else {
                0
            }
        }
        // The reader of `-o -` closed it (`| head`): what it wanted, it got.
        Err(FetchError::OutputClosed) => {
            node.shutdown().await;
            return Ok(0);
        }
        Err(FetchError::Interrupted) => {
            eprintln!("error: interrupted{}", resume_hint(&known.borrow()));
            EXIT_INTERRUPTED
        }
        Err(e) => {
            eprintln!("error: {e}{}", resume_hint(&known.borrow()));
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
            if let Content::Folder(f) = &o.content {
                s["files"] = json!(known.borrow().files_done);
                s["folder_files"] = json!(f.files().count());
            }
        }
        s["ok"] = json!(result.is_ok());
        let mut found = serde_json::to_value(known.borrow().discovered).unwrap_or_default();
        found["ticket"] = json!(tickets);
        s["discovered"] = found;
        // With -o -, stdout carries the file.
        if streaming {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    }
    Ok(code)
}

/// The name of what a fetch fetched: a file's, or a folder's with its file count.
fn content_name(o: &pex::FetchOutcome) -> String {
    match &o.content {
        Content::File(f) => f.manifest.name.clone(),
        Content::Listed(m) => m.name.clone(),
        Content::Folder(f) => format!("{}/ ({})", f.manifest.name, ui::count(f.files().count(), "file", "files")),
    }
}

/// The one line a finished fetch prints on a terminal.
fn done_line(node: &Node, o: &pex::FetchOutcome, started: Instant) -> String {
    let name = clean(&content_name(o), 60);
    let size = bytes(o.file_bytes);
    if o.already_complete {
        return format!("{name} is already complete ({size}, every piece verified)");
    }
    let secs = started.elapsed().as_secs_f64();
    let fetched = o.file_bytes - o.resumed_bytes;
    let used = node.stats().peers.iter().filter(|p| p.downloaded_bytes > 0).count();
    let resumed =
        if o.resumed_bytes > 0 { format!(", {} already on disk", bytes(o.resumed_bytes)) } else { String::new() };
    format!(
        "fetched {name}: {size} in {secs:.1} s ({}) from {}{resumed}, every piece verified",
        ui::rate(fetched as f64 / secs.max(1e-3)),
        ui::count(used, "peer", "peers"),
    )
}

async fn demo(size: u64, quiet: bool, token: CancellationToken) -> Result<i32> {
    let dir = std::env::temp_dir().join(format!("pex-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| anyhow!("{}: {}", shown_path(&dir), io_message(&e)))?;
    let result = demo_in(&dir, size, quiet, token).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn demo_in(dir: &Path, size: u64, quiet: bool, token: CancellationToken) -> Result<i32> {
    let src = dir.join("demo.bin");
    eprintln!("generating {} of random data in {}", bytes(size), shown_path(&src));
    write_random(&src, size)?;
    let config = |listen: &str| -> Result<Config> { Ok(Config { listen: Some(listen.parse()?), ..Config::default() }) };
    let seeder = Node::start(config("[::1]:0")?, Some(DataDir::open(dir.join("seeder"))?), token.clone()).await?;
    let Some(seeded) = hash_with_bar(&seeder, &src, true, quiet, &token).await? else {
        return Ok(EXIT_INTERRUPTED);
    };
    let info = seeded.info;
    let seeder_addr = seeder.local_addr().ok_or_else(|| anyhow!("seeder is not listening"))?;
    eprintln!("seeder on {seeder_addr} serves root {}", info.root);
    let fetcher = Node::start(config("[::1]:0")?, Some(DataDir::open(dir.join("fetcher"))?), token.clone()).await?;
    let out = dir.join("demo.copy");
    let opts = FetchOptions { output: Some(out.clone()), peers: vec![seeder_addr], ..FetchOptions::default() };
    let (tx, rx) = watch::channel(Progress::default());
    let bars = tokio::spawn(ui::fetch_progress(rx, ui::interactive(quiet)));
    let started = Instant::now();
    let outcome = fetcher.fetch(info.root, opts, tx).await;
    let _ = bars.await;
    let secs = started.elapsed().as_secs_f64();
    let outcome = match outcome {
        Err(FetchError::Interrupted) => return Ok(EXIT_INTERRUPTED),
        r => r?,
    };
    // Check the copy independently of the fetch: hash it again, with its own bar.
    let checker = Node::start(Config { listen: None, pex: false, ..Config::default() }, None, token.clone()).await?;
    let pb = ui::hashing_bar(ui::interactive(quiet), size, "copy");
    pb.set_prefix("verifying copy");
    let pb2 = pb.clone();
    let copy = checker.seed_file(&outcome.path, true, move |n| pb2.inc(n)).await?;
    pb.finish_and_clear();
    token.cancel();
    seeder.shutdown().await;
    fetcher.shutdown().await;
    let same = copy.info.pieces == info.pieces && copy.info.manifest.size == info.manifest.size;
    println!(
        "fetched {} in {secs:.2} s ({}) through [::1]; the copy {} the original",
        bytes(size),
        ui::rate(size as f64 / secs.max(1e-3)),
        if same { "is byte-identical to" } else { "DIFFERS from" }
    );
    Ok(if same { 0 } else { 1 })
}

fn write_random(path: &Path, size: u64) -> Result<()> {
    use std::io::Write;
    let err = |e: std::io::Error| anyhow!("{}: {}", shown_path(path), io_message(&e));
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
    let mut rng = fastrand::Rng::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).map_err(err)?;
        left -= n as u64;
    }
    f.flush().map_err(err)?;
    Ok(())
}
