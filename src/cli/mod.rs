//! The `pex` command line: arguments, exit codes and signals. The commands
//! themselves are in `commands`, what the screen shows in `ui`.
//!
//! Exit codes: 0 success, 1 failure, 2 a usage error (bad arguments, a bad
//! hash, `--peer` or `--listen`), 130 interrupted by Ctrl-C or SIGTERM.

mod addrs;
mod chat;
mod commands;
mod folders;
mod ui;

use clap::{Args, Parser, Subcommand};
use pex::{Hash, NodeId};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// Exit code of an interrupted command.
pub const EXIT_INTERRUPTED: i32 = 130;

#[derive(Parser)]
#[command(
    name = "pex",
    version,
    about = "Content-addressed piece exchange: seed a file, fetch it by hash from a swarm",
    after_help = "Exit codes: 0 success, 1 failure, 2 usage error, 130 interrupted (Ctrl-C)."
)]
struct Cli {
    /// More log output on stderr (-v: peers joining, leaving, banned; -vv: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// No progress bars or status lines: only results and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hash a file or a folder, print its root hash and fetch commands, and serve it until Ctrl-C.
    Seed {
        /// The file or directory to share (a directory's symlinks, devices
        /// and sockets are skipped with a warning).
        file: PathBuf,
        /// Hash the file even if this data directory knows it unchanged.
        #[arg(long)]
        rehash: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Download a file by root hash (or ticket) from the swarm, verifying every piece.
    Fetch {
        /// Root hash (64 hex digits), or a ticket `pex:ROOT?peer=NODEID@[ADDR]:PORT&…`
        /// as `seed` prints (its peers are dialled like `--peer NODEID@ADDR`).
        #[arg(value_parser = parse_target, value_name = "ROOT|TICKET")]
        hash: pex::ticket::Ticket,
        /// Output file, or an existing directory to save into (default: the
        /// file's name in the current directory). Never overwritten. For a
        /// folder: the directory to recreate it as (default: the folder's name).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// For a folder, fetch only the files matching this glob (repeatable):
        /// without `/` it matches a file's or a directory's name anywhere
        /// (`*.txt`, `docs`), with `/` the path from the folder (`src/**/*.rs`).
        #[arg(long, value_name = "GLOB")]
        only: Vec<String>,
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
    /// Print a file's or a folder's root hash and nothing else.
    Hash {
        /// The file or directory to hash.
        file: PathBuf,
    },
    /// List what a root names without fetching its data: a file's name, size
    /// and pieces, or every entry of a folder (size, root, path) and the total.
    Ls {
        /// Root hash (64 hex digits), or a ticket.
        #[arg(value_parser = parse_target, value_name = "ROOT|TICKET")]
        hash: pex::ticket::Ticket,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Serve everything this data directory has seeded or fetched, and help peers find each other.
    Serve {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Print a ticket for a file this node serves: its root and this node's addresses.
    Ticket {
        /// Root hash: 64 hex digits.
        #[arg(value_parser = parse_root)]
        root: Hash,
        /// Where this node accepts connections (as given to `serve` or `seed`).
        #[arg(long, value_name = "ADDR", default_value = "[::]:9000")]
        listen: SocketAddr,
        /// The data directory whose files and identity to use [default: as for seed].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Print this node's id (the public key of the identity in the data directory).
    Id {
        /// Where the identity is kept [default: $XDG_DATA_HOME/pex, else ~/.local/share/pex].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Print {"node_id": ...} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Join a room: lines read from stdin are broadcast to its members,
    /// `/msg NODEID text` sends to one member (`/members` lists them);
    /// messages print on stdout as `<short id> text`, joins and leaves on stderr.
    Chat {
        /// The room's name: nodes that join the same name meet.
        room: String,
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
    /// Address to accept connections on [default: [::]:9000 for seed and serve,
    /// [::]:0 (any free port) for fetch and chat].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// A node to connect to (repeatable), e.g. [::1]:9000 or host:9000; as
    /// NODEID@HOST:PORT only the node that proves that id is accepted there.
    #[arg(long = "peer", value_name = "[NODEID@]ADDR", value_parser = parse_peer)]
    peers: Vec<PeerArg>,
    /// Where manifests and records of served files are kept
    /// [default: $XDG_DATA_HOME/pex, else ~/.local/share/pex].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Upload limit in bytes per second, e.g. 16MiB or 256KiB; 0 means unlimited.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    max_upload_rate: Option<u64>,
    /// Most simultaneous connections.
    #[arg(long, value_name = "N", default_value_t = pex::node::DEFAULT_MAX_PEERS)]
    max_peers: usize,
    /// Only talk to the peers given with --peer: learn and share no others.
    #[arg(long)]
    no_pex: bool,
    /// Neither remember the peers met in the data directory nor start from those remembered.
    #[arg(long)]
    no_remember: bool,
    /// Print one JSON summary on stdout when the command ends (chat: one JSON
    /// object per message received).
    #[arg(long)]
    json: bool,
    /// Neither answer nor send local-network discovery queries (UDP multicast).
    #[arg(long, env = "PEX_NO_LAN", value_parser = clap::builder::BoolishValueParser::new())]
    no_lan: bool,
    /// Join the BitTorrent Mainline DHT: announce what this node holds, look up
    /// what it fetches. Off by default: it contacts the public DHT routers
    /// unless --dht-bootstrap names others.
    #[arg(long)]
    dht: bool,
    /// A DHT node to bootstrap from in place of the public routers
    /// (repeatable), e.g. 127.0.0.1:6881; `none` starts a new DHT network.
    #[arg(long, value_name = "ADDR", requires = "dht", value_parser = parse_bootstrap)]
    dht_bootstrap: Vec<String>,
    /// UDP port of the DHT node [default: 6881 if free, else any].
    #[arg(long, value_name = "PORT", requires = "dht")]
    dht_port: Option<u16>,
    /// Seconds a new connection has to send HELLO.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, help_heading = "Timing", value_parser = parse_secs)]
    hello_timeout: f64,
    /// Seconds of silence before a keep-alive is sent.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, help_heading = "Timing", value_parser = parse_secs)]
    keepalive: f64,
    /// Seconds of silence after which a peer is dropped.
    #[arg(long, value_name = "SECS", default_value_t = 120.0, help_heading = "Timing", value_parser = parse_secs)]
    idle_timeout: f64,
    /// Seconds an ASK may go unanswered before it moves to another peer.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, help_heading = "Timing", value_parser = parse_secs)]
    ask_timeout: f64,
    /// Seconds between PEERS updates.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, help_heading = "Timing", value_parser = parse_secs)]
    peers_interval: f64,
}

impl NodeArgs {
    fn timeouts(&self) -> pex::Timeouts {
        let d = Duration::from_secs_f64;
        pex::Timeouts {
            hello: d(self.hello_timeout),
            keepalive: d(self.keepalive),
            idle: d(self.idle_timeout),
            ask: d(self.ask_timeout),
            peers_interval: d(self.peers_interval),
            ..pex::Timeouts::default()
        }
    }
}

fn parse_root(s: &str) -> Result<Hash, String> {
    s.parse().map_err(|e| format!("invalid hash: {e}"))
}

/// A root hash, or a ticket (a root and the peers to fetch it from).
fn parse_target(s: &str) -> Result<pex::ticket::Ticket, String> {
    if pex::ticket::Ticket::looks_like(s) {
        return pex::ticket::Ticket::parse(s).map_err(|e| format!("invalid ticket: {e}"));
    }
    Ok(pex::ticket::Ticket { root: parse_root(s)?, peers: Vec::new() })
}

/// A `--peer`: an address, and the node id expected there if one was given.
#[derive(Clone, Copy, Debug)]
struct PeerArg {
    addr: SocketAddr,
    node_id: Option<NodeId>,
}

fn parse_peer(s: &str) -> Result<PeerArg, String> {
    let (node_id, s) = match s.split_once('@') {
        Some((id, rest)) => {
            if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("expected NODEID@HOST:PORT with a node id of 64 hex digits".into());
            }
            (Some(id.parse::<NodeId>().map_err(|e| format!("invalid node id: {e}"))?), rest)
        }
        None => (None, s),
    };
    Ok(PeerArg { addr: parse_addr(s)?, node_id })
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let addr = match s.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => s
            .to_socket_addrs()
            .map_err(|_| "expected HOST:PORT such as [::1]:9000".to_owned())?
            .next()
            .ok_or_else(|| "resolves to no address".to_owned())?,
    };
    match pex::peers::undialable(&addr) {
        Some(why) => Err(format!("{why} can never be a peer")),
        None => Ok(addr),
    }
}

/// A rate; `0` means unlimited.
fn parse_bootstrap(s: &str) -> Result<String, String> {
    if s == "none" {
        return Ok(s.to_owned());
    }
    pex::discovery::dht::check_bootstrap(s)
}

fn parse_rate(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    pex::ratelimit::parse_rate(s)
}

fn parse_size(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    pex::ratelimit::parse_rate(s).map_err(|e| e.replace("rate", "size"))
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && Duration::try_from_secs_f64(v).is_ok() => Ok(v),
        _ => Err("expected a positive number of seconds".into()),
    }
}

/// Parses the command line, runs the command, and returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            // One clear line, not clap's usage block (`--help` has that): the
            // first paragraph joined, so "not provided:" keeps the names under it.
            let text = e.render().to_string();
            let line: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            let line = if line.is_empty() { "error: invalid arguments".to_owned() } else { line.join(" ") };
            eprintln!("{line}");
            return 2;
        }
    };
    init_logs(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {}", pex::text::io_message(&e));
            return 1;
        }
    };
    // The runtime is never dropped: `main` exits the process, so blocking work
    // still running (hashing a large file when Ctrl-C came) does not delay the exit.
    let code = runtime.block_on(commands::run(cli.command, cli.quiet));
    std::mem::forget(runtime);
    match code {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn init_logs(verbose: u8) {
    let filter = match verbose {
        // The DHT crate's own reports (a failed bootstrap) reach the user
        // through pex's messages; its log is for -v.
        0 => "warn,mainline=off",
        1 => "info,mainline=warn",
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
}
