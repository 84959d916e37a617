//! Folders in a node: seeding a directory tree (its files served each by its
//! own root, opened per GIVE), re-serving recorded folders, and fetching a
//! folder: its manifests first (by the download engine), then every selected
//! file by its own root, several at once, into the planned tree.

use super::{Node, NodeError};
use crate::fetch::folder::{plan, PlannedFile, Selection};
use crate::fetch::{blocking, Content, FetchError, FetchOptions, FetchOutcome, Progress};
use crate::manifest::{EntryKind, FolderInfo};
use crate::store::StoreError;
use crate::tree::{read_tree, Tree, TreeFile};
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Most files of a folder fetched at once: enough to hide round trips behind
/// each other when files are small.
pub const FILES_AT_ONCE: usize = 32;
/// Another file is started only while those being fetched have fewer bytes
/// left than this (big files one or two at a time, small ones many).
const BYTES_AT_ONCE: u64 = 64 << 20;

/// A folder being served after [`Node::seed_folder`].
#[derive(Debug)]
pub struct SeededFolder {
    /// The folder manifest and entries.
    pub info: Arc<FolderInfo>,
    /// One line per thing skipped (symlinks, devices, unreadable files).
    pub skipped: Vec<String>,
    /// Files whose recorded hashes were reused because they had not changed.
    pub reused: usize,
}

impl Node {
    /// Hashes the tree at `path` (calling `progress` with bytes done), serves
    /// the folder and each file by its own root, and records it in the data
    /// directory. Files unchanged since a recorded seed of this folder are not
    /// hashed again unless `rehash`.
    pub async fn seed_folder(
        &self,
        path: &Path,
        rehash: bool,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<SeededFolder, NodeError> {
        let path = std::path::absolute(path).map_err(|e| StoreError::Io { path: path.to_owned(), source: e })?;
        let (p, dd) = (path.clone(), self.shared.data_dir.clone());
        let tree: Tree = tokio::task::spawn_blocking(move || -> Result<Tree, NodeError> {
            let mut known = HashMap::new();
            if let (Some(dd), false) = (&dd, rehash) {
                for (_, files) in dd.folders().into_iter().flatten() {
                    for f in files.into_iter().filter(|f| f.path.starts_with(&p)) {
                        if let Ok(rel) = f.path.strip_prefix(&p) {
                            known.insert(rel.to_string_lossy().into_owned(), f);
                        }
                    }
                }
            }
            let tree = read_tree(&p, &known, &progress).map_err(|source| StoreError::Io { path: p.clone(), source })?;
            if let Some(dd) = &dd {
                dd.save_folder(&tree.folder, &p, &tree.files).map_err(NodeError::DataDir)?;
            }
            Ok(tree)
        })
        .await
        .map_err(|e| StoreError::Io { path: path.clone(), source: io::Error::other(e) })??;
        for f in &tree.files {
            self.shared.store.add_lazy_source(f.info.clone(), &f.path, f.mtime);
        }
        let info = Arc::new(tree.folder);
        self.shared.store.add_folder(info.clone());
        Ok(SeededFolder { info, skipped: tree.skipped, reused: tree.reused })
    }

    /// Serves every folder the data directory records: each file unchanged on
    /// disk by its own root, and the folder itself. Returns the folders and, for
    /// each file or record that could not be served, a one-line reason.
    pub fn serve_folders(&self) -> (Vec<Arc<FolderInfo>>, Vec<String>) {
        let Some(dd) = &self.shared.data_dir else { return (Vec::new(), Vec::new()) };
        let (mut served, mut problems) = (Vec::new(), Vec::new());
        for record in dd.folders() {
            let (folder, files) = match record {
                Ok(r) => r,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            for f in files {
                let unchanged = |m: std::fs::Metadata| m.len() == f.size && m.modified().ok() == f.mtime;
                match std::fs::metadata(&f.path).map(unchanged) {
                    Ok(true) => {
                        self.shared.store.add_lazy_source(f.info.clone(), &f.path, f.mtime);
                    }
                    Ok(false) => problems.push(format!("{}: changed since it was seeded", f.path.display())),
                    Err(e) => problems.push(format!("{}: {}", f.path.display(), crate::text::io_message(&e))),
                }
            }
            let folder = Arc::new(folder);
            self.shared.store.add_folder(folder.clone());
            served.push(folder);
        }
        (served, problems)
    }

    /// Fetches the files of `folder` (its manifests already fetched) as `opts`
    /// says, into `opts.output` or the folder's name.
    pub(super) async fn fetch_folder(
        &self,
        folder: Arc<FolderInfo>,
        opts: FetchOptions,
        progress: watch::Sender<Progress>,
    ) -> Result<FetchOutcome, FetchError> {
        if opts.stdout {
            return Err(FetchError::FolderToStdout(folder.root));
        }
        let only = Selection::new(&opts.only)?;
        let dest = opts.output.clone().unwrap_or_else(|| PathBuf::from(&folder.manifest.name));
        let (f, d) = (folder.clone(), dest.clone());
        let plan = blocking(move || {
            let plan = plan(&f, &d, &only)?;
            for dir in &plan.dirs {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::Io { path: dir.clone(), source })?;
            }
            Ok(plan)
        })
        .await?;
        if !opts.only.is_empty() && plan.file_count == 0 && plan.dirs.len() <= 1 {
            return Err(FetchError::BadPattern(format!("{}: matches nothing in the folder", opts.only.join(" "))));
        }
        progress.send_modify(|p| {
            p.name = Some(folder.manifest.name.clone());
            p.total_bytes = plan.total_bytes;
            p.files_total = plan.file_count;
            p.files_done = 0;
        });
        let complete = opts.only.is_empty();
        let mut run = FolderRun::new(self, opts, progress, dest.clone());
        run.fetch_all(plan.files).await?;
        if complete {
            self.shared.store.add_folder(folder.clone());
            if let Some(dd) = self.shared.data_dir.clone() {
                let (f, abs, files) = (folder.clone(), std::path::absolute(&dest).unwrap_or(dest.clone()), run.done);
                blocking(move || {
                    let mut ordered = HashMap::new();
                    for t in files {
                        ordered.insert(t.rel.clone(), t);
                    }
                    let files: Vec<TreeFile> = f.files().filter_map(|e| ordered.remove(&e.path)).collect();
                    dd.save_folder(&f, &abs, &files).map_err(FetchError::DataDir)
                })
                .await?;
            }
        }
        Ok(FetchOutcome {
            root: folder.root,
            path: std::path::absolute(&dest).unwrap_or(dest),
            file_bytes: plan.total_bytes,
            resumed_bytes: run.resumed_bytes,
            already_complete: run.fetched_bytes == 0 && plan.file_count > 0,
            content: Content::Folder(folder),
        })
    }
}

/// The state of one folder fetch's file downloads.
struct FolderRun {
    node: Node,
    opts: FetchOptions,
    progress: watch::Sender<Progress>,
    dest: PathBuf,
    /// Every file entry placed, as it is on disk now (for the folder's record).
    done: Vec<TreeFile>,
    files_done: usize,
    done_bytes: u64,
    received_done: u64,
    resumed_bytes: u64,
    fetched_bytes: u64,
}

/// A file download under way: its progress, size and path in the folder.
struct Active {
    progress: watch::Receiver<Progress>,
    size: u64,
    path: String,
}

type Finished = (PlannedFile, Result<FetchOutcome, FetchError>);

impl FolderRun {
    fn new(node: &Node, opts: FetchOptions, progress: watch::Sender<Progress>, dest: PathBuf) -> FolderRun {
        FolderRun {
            node: node.clone(),
            opts,
            progress,
            dest,
            done: Vec::new(),
            files_done: 0,
            done_bytes: 0,
            received_done: 0,
            resumed_bytes: 0,
            fetched_bytes: 0,
        }
    }

    /// Fetches every planned file, [`FILES_AT_ONCE`] at most at a time; the
    /// first failure ends the folder fetch (what was verified stays on disk).
    async fn fetch_all(&mut self, files: Vec<PlannedFile>) -> Result<(), FetchError> {
        let mut queue = files.into_iter();
        let mut running: JoinSet<Finished> = JoinSet::new();
        let mut active: HashMap<tokio::task::Id, Active> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            loop {
                let left: u64 = active.values().map(|a| a.size.saturating_sub(a.progress.borrow().have_bytes)).sum();
                if running.len() >= FILES_AT_ONCE || (!running.is_empty() && left >= BYTES_AT_ONCE) {
                    break;
                }
                let Some(file) = queue.next() else { break };
                let (tx, rx) = watch::channel(Progress::default());
                let opts = FetchOptions {
                    output: Some(self.dest.join(&file.entries[0].path)),
                    peers: Vec::new(),
                    expect: Vec::new(),
                    remembered: Vec::new(),
                    only: Vec::new(),
                    folder_member: true,
                    ..self.opts.clone()
                };
                let (node, root, path, size) = (self.node.clone(), file.root, file.entries[0].path.clone(), file.size);
                let handle = running.spawn(async move { (file, node.fetch_member(root, opts, tx).await) });
                active.insert(handle.id(), Active { progress: rx, size, path });
            }
            if running.is_empty() {
                return Ok(());
            }
            tokio::select! {
                Some(joined) = running.join_next_with_id() => {
                    let (id, (file, result)) = joined.map_err(|e| StoreError::Io { path: self.dest.clone(), source: io::Error::other(e) })?;
                    if let Some(a) = active.remove(&id) {
                        self.received_done += a.progress.borrow().received_bytes;
                    }
                    let path = file.entries[0].path.clone();
                    let outcome = result.map_err(|error| FetchError::InFolder { path, error: Box::new(error) })?;
                    self.place(file, outcome).await?;
                }
                _ = tick.tick() => {}
            }
            self.publish(&active);
        }
    }

    /// A file arrived: sets its executable bit, copies it to the folder's other
    /// paths with the same contents, and serves it from its final place.
    async fn place(&mut self, file: PlannedFile, outcome: FetchOutcome) -> Result<(), FetchError> {
        let Some(info) = outcome.file().cloned() else { return Ok(()) };
        let (dest, n) = (self.dest.clone(), file.entries.len() as u64);
        let placed = blocking(move || {
            let first = outcome.path.clone();
            let mut placed = Vec::new();
            for (i, e) in file.entries.iter().enumerate() {
                let target = dest.join(&e.path);
                if i > 0 {
                    crate::fetch::folder::copy_into_place(&first, &target, &info)?;
                }
                let err = |source| StoreError::Io { path: target.clone(), source };
                if e.kind == EntryKind::Executable {
                    let mode = std::fs::metadata(&target).map_err(err)?.permissions().mode();
                    let exec = std::fs::Permissions::from_mode(mode | ((mode & 0o444) >> 2));
                    std::fs::set_permissions(&target, exec).map_err(err)?;
                }
                let meta = std::fs::metadata(&target).map_err(err)?;
                placed.push(TreeFile {
                    rel: e.path.clone(),
                    path: std::path::absolute(&target).unwrap_or(target.clone()),
                    info: info.clone(),
                    size: meta.len(),
                    mtime: meta.modified().ok(),
                    inode: std::os::unix::fs::MetadataExt::ino(&meta),
                    exec: e.kind == EntryKind::Executable,
                });
            }
            Ok(placed)
        })
        .await?;
        if let Some(first) = placed.first() {
            // From the `.part`'s mapping to the file, opened per GIVE: no descriptor kept.
            self.node.shared.store.add_lazy_source(first.info.clone(), &first.path, first.mtime);
        }
        self.files_done += n as usize;
        self.done_bytes += file.size * n;
        self.resumed_bytes += outcome.resumed_bytes;
        if !outcome.already_complete {
            self.fetched_bytes += outcome.file_bytes - outcome.resumed_bytes;
        }
        self.done.extend(placed);
        Ok(())
    }

    /// Publishes the folder's progress: bytes and files done, the file now fetched.
    fn publish(&self, active: &HashMap<tokio::task::Id, Active>) {
        let (mut have, mut received) = (self.done_bytes, self.received_done);
        let mut stage = None;
        let mut current = None;
        for a in active.values() {
            let p = a.progress.borrow();
            have += p.have_bytes;
            received += p.received_bytes;
            if current.is_none() || p.stage == crate::fetch::Stage::Pieces {
                current = Some(a.path.clone());
            }
            if let crate::fetch::Stage::NoPeers { .. } = p.stage {
                stage = Some(p.stage.clone());
            }
        }
        let peers = self.node.connected_peers();
        let files_done = self.files_done;
        self.progress.send_modify(|p| {
            p.have_bytes = have;
            p.received_bytes = received;
            p.files_done = files_done;
            p.current = current;
            p.peers = peers;
            p.stage = stage.unwrap_or(crate::fetch::Stage::Pieces);
        });
    }
}
