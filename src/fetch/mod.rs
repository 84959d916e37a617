//! Downloading one file from the swarm. One task per download (an actor, see
//! [`download`]) owns all of its scheduling state and goes through three
//! phases: the manifest, the hash lists, the pieces. It picks pieces with the
//! [`Picker`](crate::picker::Picker), verifies each blob (hash and exact
//! length) on a blocking thread, writes it into the `.part` file, announces it
//! and serves it onwards.
//!
//! The engine knows no node: it reaches the swarm through the [`Swarm`] trait
//! and hears about peers through [`DownloadEvent`]s and ASK [`Answer`]s.
//!
//! [`Answer`]: crate::peer::Answer

mod blobs;
mod download;
pub mod folder;
mod output;
mod schedule;
mod stream;

pub use download::download;
pub use output::part_path;
pub use stream::WINDOW as STREAM_WINDOW;

use crate::datadir::DataDir;
use crate::hash::Hash;
use crate::manifest::{FileInfo, FolderInfo, Manifest, ManifestError};
use crate::peer::PeerConn;
use crate::store::{Store, StoreError};
use crate::timeouts::Timeouts;
use bytes::Bytes;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most blobs asked for and not yet verified, across all peers: bounds the
/// memory held by GIVE data in transit (and by pages mapped while it is
/// written) to 16 MiB each, whatever the number of peers. 16 ms at 1 GB/s.
pub const MAX_INFLIGHT: usize = 16;
/// How often the partial-download state is flushed and recorded while pieces arrive.
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// What a download needs from the swarm around it (the node).
pub trait Swarm: Send + Sync + 'static {
    /// Every live connection.
    fn connections(&self) -> Vec<Arc<PeerConn>>;
    /// The last dial error for an address, if its dials are failing.
    fn dial_error(&self, addr: &SocketAddr) -> Option<String>;
    /// Bans a peer that lied (its node id and addresses) and closes it with REJECT(5).
    fn ban(&self, conn: &PeerConn, reason: &str);
    /// Tells every peer interested in `root` that piece `index` is now held.
    fn broadcast_have(&self, root: Hash, index: u32);
    /// Counts a piece that failed verification.
    fn piece_rejected(&self);
}

/// Everything a download runs with.
#[derive(Clone)]
pub struct Env {
    /// The swarm.
    pub swarm: Arc<dyn Swarm>,
    /// Where verified pieces are served from.
    pub store: Arc<Store>,
    /// Records for resuming, if the node keeps any.
    pub data_dir: Option<DataDir>,
    /// Protocol intervals (the ASK time-out).
    pub timeouts: Timeouts,
    /// Cancelled when the node stops: the download ends with [`FetchError::Interrupted`].
    pub shutdown: CancellationToken,
}

/// What the node tells a download about its peers.
#[derive(Debug)]
pub enum DownloadEvent {
    /// A connection came up.
    PeerJoined(Arc<PeerConn>),
    /// A connection closed.
    PeerLeft(u64),
    /// The peer's BITFIELD for this file.
    Bitfield {
        /// Connection it came on.
        conn: u64,
        /// Raw bits.
        bits: Bytes,
    },
    /// The peer completed piece `index`.
    Have {
        /// Connection it came on.
        conn: u64,
        /// Piece index.
        index: u32,
    },
}

/// How to fetch.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Output path; `None` means the manifest's name in the current directory.
    pub output: Option<PathBuf>,
    /// Peers to start from.
    pub peers: Vec<SocketAddr>,
    /// Node ids the peers at these addresses must prove (`--peer NODEID@HOST:PORT`);
    /// the addresses are dialled too.
    pub expect: Vec<(SocketAddr, crate::hash::NodeId)>,
    /// Remembered peers to start from (see `Node::remembered_peers`): dialled as
    /// learned addresses pinned to their ids.
    pub remembered: Vec<(SocketAddr, crate::hash::NodeId)>,
    /// How long to keep retrying when no peer could be reached yet (30 s).
    pub connect_timeout: Duration,
    /// Give up once no peer has been reachable, or no progress made, for this long (60 s).
    pub give_up_after: Duration,
    /// Write the file to this process's standard output, in order, as pieces
    /// verify, instead of to `output`: nothing is written to disk and memory
    /// stays bounded (pieces are asked for within [`STREAM_WINDOW`] of the write position).
    pub stdout: bool,
    /// Fetch only the manifests: a file's manifest, or a folder's manifest and
    /// entries (`pex ls`). Nothing is written.
    pub list_only: bool,
    /// For a folder, fetch only the files whose path matches one of these
    /// patterns (see [`folder::Selection`]); all when empty.
    pub only: Vec<String>,
    /// A file of a folder fetch: a `.part` at its path is this folder's own
    /// from an earlier run, kept and re-checked even if no piece in it verifies.
    pub folder_member: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            output: None,
            peers: Vec::new(),
            expect: Vec::new(),
            remembered: Vec::new(),
            connect_timeout: Duration::from_secs(30),
            give_up_after: Duration::from_secs(60),
            stdout: false,
            list_only: false,
            only: Vec::new(),
            folder_member: false,
        }
    }
}

/// What a download is doing, for UIs that say so.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Stage {
    /// No peer connected yet: dialling (see [`Progress::dialing`]).
    #[default]
    Connecting,
    /// Connected; asking for the manifest.
    Manifest,
    /// Fetching the hash lists.
    Lists,
    /// Re-checking the pieces an earlier run left in the `.part`
    /// ([`Progress::checked_bytes`] of [`Progress::checking_bytes`]).
    Checking,
    /// Fetching pieces.
    Pieces,
    /// Every peer is gone; the fetch gives up at the end of `give_up_in` unless one returns.
    NoPeers {
        /// Time left before giving up.
        give_up_in: Duration,
    },
}

/// Progress of a download, published for UIs.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// What the download is doing.
    pub stage: Stage,
    /// File name, once the manifest arrived.
    pub name: Option<String>,
    /// File size, once known.
    pub total_bytes: u64,
    /// Verified bytes held.
    pub have_bytes: u64,
    /// Bytes that were already in the `.part` file when the download started.
    pub resumed_bytes: u64,
    /// GIVE payload bytes received by this download so far (what a rate is computed from).
    pub received_bytes: u64,
    /// While re-checking: bytes an earlier run claimed, and how many of them are checked.
    pub checking_bytes: u64,
    /// See [`Progress::checking_bytes`].
    pub checked_bytes: u64,
    /// Connected peers.
    pub peers: usize,
    /// The peers given to dial, with the last error of each that is failing.
    pub dialing: Vec<(SocketAddr, Option<String>)>,
    /// The `.part` being written, once it exists (kept when a fetch fails after verifying pieces).
    pub part: Option<PathBuf>,
    /// Peers found by each means of discovery so far (set by the node).
    pub discovered: crate::discovery::Discovered,
    /// A folder: its selected file entries, and how many are in place.
    pub files_total: usize,
    /// See [`Progress::files_total`].
    pub files_done: usize,
    /// A folder: the path of a file being fetched now.
    pub current: Option<String>,
}

/// A finished download.
#[derive(Clone, Debug)]
pub struct FetchOutcome {
    /// Root hash fetched.
    pub root: Hash,
    /// Where the file now is.
    pub path: PathBuf,
    /// Its size.
    pub file_bytes: u64,
    /// Bytes reused from an earlier, interrupted run.
    pub resumed_bytes: u64,
    /// The complete file was already at the output path: nothing was fetched.
    pub already_complete: bool,
    /// What the root named, and what of it was fetched.
    pub content: Content,
}

/// What a root names, as far as a fetch took it.
#[derive(Clone, Debug)]
pub enum Content {
    /// A file, fetched: its manifest and piece hashes.
    File(Arc<FileInfo>),
    /// A file's manifest alone ([`FetchOptions::list_only`]).
    Listed(Manifest),
    /// A folder: its manifest and entries (and its files too when `path` is set).
    Folder(Arc<FolderInfo>),
}

impl FetchOutcome {
    /// The file fetched, if the root named a file and it was fetched.
    pub fn file(&self) -> Option<&Arc<FileInfo>> {
        match &self.content {
            Content::File(f) => Some(f),
            _ => None,
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// None of the given peers could be reached.
    #[error("cannot reach any peer: {0}")]
    Unreachable(String),
    /// No peer was given, and every means of discovery was tried without
    /// reaching a holder: what each found.
    #[error("no peer found: {0}")]
    NothingFound(String),
    /// Every peer reached answered DONT_HAVE for the root.
    #[error("no peer holds {0}")]
    NotFound(Hash),
    /// The output path is taken; pex never overwrites.
    #[error("{} already exists; remove it or choose another path with -o", crate::text::shown_path(.0))]
    OutputExists(PathBuf),
    /// A `.part` file from some other download is in the way.
    #[error("{} belongs to another download; remove it or choose another path with -o", crate::text::shown_path(.0))]
    ForeignPart(PathBuf),
    /// The root hash names something that is not a valid manifest.
    #[error("{root} is not a valid pex manifest: {error}")]
    BadManifest {
        /// The root asked for.
        root: Hash,
        /// What is wrong.
        error: ManifestError,
    },
    /// A piece that no peer can deliver as the manifest describes it.
    #[error("piece {index} cannot be fetched: {reason}")]
    BadPiece {
        /// The piece.
        index: u64,
        /// Why.
        reason: String,
    },
    /// Peers stopped delivering.
    #[error("{0}")]
    Stalled(String),
    /// Disk or file system error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Data directory error.
    #[error("data directory: {}", crate::text::io_message(.0))]
    DataDir(io::Error),
    /// The node was shut down.
    #[error("interrupted")]
    Interrupted,
    /// Streaming to standard output, and the reader closed it (a pipe into `head`).
    #[error("the output was closed")]
    OutputClosed,
    /// Something on disk is where a folder's entry goes.
    #[error("{} is in the way: {why}", crate::text::shown_path(.path))]
    Blocked {
        /// The path.
        path: PathBuf,
        /// What is there.
        why: &'static str,
    },
    /// An `--only` pattern that is not a valid glob.
    #[error("bad --only pattern {0}")]
    BadPattern(String),
    /// A folder's file could not be fetched: its path, and why.
    #[error("{}: {error}", crate::text::clean(.path, 120))]
    InFolder {
        /// The entry's path in the folder.
        path: String,
        /// What went wrong.
        error: Box<FetchError>,
    },
    /// `-o -` of a folder.
    #[error("{0} is a folder; -o - streams one file: fetch the folder with -o DIR, or one of its files by its own root (see pex ls)")]
    FolderToStdout(Hash),
    /// Another fetch of this root runs in this node.
    #[error("{0} is already being fetched")]
    AlreadyFetching(Hash),
}

/// Runs blocking work (hashing, fsync, record writes) off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FetchError> + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FetchError::Store(StoreError::Io { path: PathBuf::new(), source: io::Error::other(e) }))?
}

#[cfg(test)]
mod tests;
