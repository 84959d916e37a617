//! Piece storage: every blob this node can serve, and the `.part` files it writes.
//!
//! Two kinds of file back pieces:
//! - **Sources** (files a user seeds) are mapped read-only. pex never reads them
//!   through the mapping: GIVE data is read with `pread` into the buffer it is
//!   sealed in, so if another program truncates the file the read fails instead
//!   of raising SIGBUS. Before every GIVE the file's size and modification time
//!   are checked; a changed or vanished source stops being served.
//! - **Partial downloads** are `.part` files pex creates, preallocates and maps
//!   writable; a verified piece is copied into place and from then on served too.
//!
//! Mapped pages are released (`MADV_DONTNEED`) once sent or written, so resident
//! memory does not grow with the file size.

use crate::bitfield::Bits;
use crate::direct::DirectFile;
use crate::hash::Hash;
use crate::manifest::FolderInfo;
use crate::manifest::{FileInfo, PIECE_SIZE};
use crate::mapping::{Body, FileRange, MappedRange, Mapping};
use bitvec::prelude::*;
use bytes::Bytes;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// Errors of the storage layer: always the disk or the file system, never a peer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error on a named file.
    #[error("{}: {}", crate::text::shown_path(.path), crate::text::io_message(.source))]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Not enough free space for a download.
    #[error("not enough disk space for {}: need {}, {} free", crate::text::shown_path(.path), crate::text::bytes(*.need), crate::text::bytes(*.free))]
    NoSpace {
        /// The file to be written.
        path: PathBuf,
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        free: u64,
    },
    /// A piece of the wrong length for its slot, or a slot written twice: a bug in the caller.
    #[error("{}: piece {index}: {why}", crate::text::shown_path(.path))]
    BadWrite {
        /// The `.part` file.
        path: PathBuf,
        /// The piece index.
        index: u64,
        /// What was wrong.
        why: &'static str,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// A seeded file, identified by its size and modification time when hashed.
struct Source {
    path: PathBuf,
    file: Arc<File>,
    map: Option<Arc<Mapping>>,
    size: u64,
    mtime: Option<SystemTime>,
}

impl Source {
    /// True while the file on disk is the one that was hashed.
    fn is_fresh(&self) -> bool {
        let same = |m: io::Result<std::fs::Metadata>| match m {
            Ok(m) => m.len() == self.size && m.modified().ok() == self.mtime,
            Err(_) => false,
        };
        same(self.file.metadata()) && same(std::fs::metadata(&self.path))
    }
}

/// A `.part` file being filled, mapped writable. Each piece's slot is written
/// at most once ([`PartFile::write_piece`] claims it first), and a piece is
/// served only once held, after its write: no piece is ever written while it
/// may be read.
pub struct PartFile {
    path: PathBuf,
    file: Arc<File>,
    map: Option<Arc<Mapping>>,
    /// Whole pieces go here (`O_DIRECT`), where the file system allows it.
    direct: Option<DirectFile>,
    size: u64,
    /// Slots written (or found verified on disk): never written again.
    claimed: Mutex<Bits>,
}

impl PartFile {
    /// Opens or creates `path` with length `size`, reserving the disk blocks up
    /// front so a full disk is reported now rather than as SIGBUS later.
    pub fn open(path: &Path, size: u64) -> Result<PartFile, StoreError> {
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io_err(path))?;
        let existing = file.metadata().map_err(io_err(path))?.len();
        if existing != size {
            file.set_len(size).map_err(io_err(path))?;
        }
        reserve(&file, path, size)?;
        let file = Arc::new(file);
        let map = if size == 0 {
            None
        } else {
            Some(Arc::new(Mapping::writable(file.clone(), size as usize).map_err(io_err(path))?))
        };
        let pieces = size.div_ceil(PIECE_SIZE) as usize;
        // PEX_NO_DIRECT=1 writes every piece through the mapping (for measuring).
        let direct = if std::env::var_os("PEX_NO_DIRECT").is_some() { None } else { DirectFile::open(path) };
        Ok(PartFile {
            path: path.to_owned(),
            file,
            map,
            direct,
            size,
            claimed: Mutex::new(bitvec![u8, Msb0; 0; pieces]),
        })
    }

    /// Path of the `.part` file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The length piece `index` must have: 1 MiB, the last one the remainder.
    pub fn slot_len(&self, index: u64) -> Option<usize> {
        let off = index.checked_mul(PIECE_SIZE)?;
        (off < self.size).then(|| (self.size - off).min(PIECE_SIZE) as usize)
    }

    /// Writes a verified piece into its slot: a whole 1 MiB piece with a direct
    /// write ([`DirectFile`]), otherwise (the last piece, or no `O_DIRECT`)
    /// copied in through the mapping, whose pages are then released. Fails if
    /// `data` is not exactly the slot's length or the slot was written before.
    ///
    /// Measured on 1 GiB over [::1]: positioned writes (`pwrite`) through the
    /// page cache cost more system time than the mapping, and direct writes
    /// far less than either (README, Performance).
    pub fn write_piece(&self, index: u64, data: &[u8]) -> Result<(), StoreError> {
        let bad = |why| StoreError::BadWrite { path: self.path.clone(), index, why };
        if self.slot_len(index) != Some(data.len()) {
            return Err(bad("length does not match its slot"));
        }
        {
            let mut claimed = crate::lock(&self.claimed);
            if claimed[index as usize] {
                return Err(bad("slot already written"));
            }
            claimed.set(index as usize, true);
        }
        if let Some(direct) = &self.direct {
            if direct.write_at(index * PIECE_SIZE, data).map_err(io_err(&self.path))? {
                return Ok(());
            }
        }
        let Some(map) = &self.map else { return Ok(()) };
        // SAFETY: the slot was unclaimed and is now claimed by this call alone, so
        // no other thread writes it; it is served only after it is marked held,
        // which the store allows only for claimed slots once this write returned.
        unsafe { map.write((index * PIECE_SIZE) as usize, data) }.map_err(io_err(&self.path))
    }

    /// Marks pieces found verified on disk (a resume) as written, so they are never written again.
    fn claim_present(&self, held: &Bits) {
        let mut claimed = crate::lock(&self.claimed);
        for i in held.iter_ones() {
            if i < claimed.len() {
                claimed.set(i, true);
            }
        }
    }

    fn is_claimed(&self, index: usize) -> bool {
        crate::lock(&self.claimed).get(index).is_some_and(|b| *b)
    }

    /// The open `.part`, for positioned reads (re-verifying a resumed download).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Flushes written pieces to disk.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(io_err(&self.path))
    }
}

/// Reserves disk blocks for `size` bytes, failing early with the numbers when the disk is too small.
fn reserve(file: &File, path: &Path, size: u64) -> Result<(), StoreError> {
    use std::os::fd::AsRawFd;
    if size == 0 {
        return Ok(());
    }
    // SAFETY: plain syscall on an open descriptor.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
    match rc {
        0 => Ok(()),
        libc::ENOSPC => {
            Err(StoreError::NoSpace { path: path.to_owned(), need: size, free: free_space(path).unwrap_or(0) })
        }
        // File systems without fallocate: fall back to a sparse file.
        libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        rc => Err(StoreError::Io { path: path.to_owned(), source: io::Error::from_raw_os_error(rc) }),
    }
}

/// Free bytes on the file system holding `path` (or its parent directory).
pub fn free_space(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs writes into the zeroed struct we pass; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

enum Backing {
    Source(Source),
    Partial(Arc<PartFile>),
    /// A file of a folder: opened for each GIVE, never kept open.
    Lazy {
        path: PathBuf,
        size: u64,
        mtime: Option<SystemTime>,
    },
}

/// A file this node serves pieces of: a seeded source or a download in progress.
pub struct FileEntry {
    /// Manifest, lists and piece hashes.
    pub info: Arc<FileInfo>,
    backing: Backing,
    held: Mutex<Bits>,
    stale: AtomicBool,
}

impl FileEntry {
    /// Which pieces this node holds, in BITFIELD order.
    pub fn held(&self) -> Bits {
        crate::lock(&self.held).clone()
    }

    /// Whether any piece is held (a node that holds nothing answers no BITFIELD).
    pub fn holds_any(&self) -> bool {
        !self.stale.load(Ordering::Relaxed) && crate::lock(&self.held).any()
    }

    fn holds(&self, index: usize) -> bool {
        crate::lock(&self.held).get(index).is_some_and(|b| *b)
    }

    /// Bytes of piece `index`, straight from the mapping, or `None` if not held
    /// or the source changed on disk.
    fn piece(&self, index: usize) -> Option<Body> {
        if self.stale.load(Ordering::Relaxed) || !self.holds(index) {
            return None;
        }
        let (map, size) = match &self.backing {
            Backing::Source(src) => {
                if !src.is_fresh() {
                    if !self.stale.swap(true, Ordering::Relaxed) {
                        tracing::warn!(path = %src.path.display(), "seeded file changed or vanished; no longer serving it");
                    }
                    return None;
                }
                (src.map.as_ref(), src.size)
            }
            Backing::Partial(part) => (part.map.as_ref(), part.size),
            Backing::Lazy { path, size, mtime } => return self.lazy_piece(path, *size, *mtime, index),
        };
        let off = index as u64 * PIECE_SIZE;
        let len = (size - off).min(PIECE_SIZE) as usize;
        match map {
            Some(map) => MappedRange::new(map.clone(), off as usize, len).map(Body::Mapped),
            None => Some(Body::Memory(Bytes::new())),
        }
    }

    /// Piece `index` of a folder's file, opened now; `None` (and the file no
    /// longer served) if it changed since it was hashed.
    fn lazy_piece(&self, path: &Path, size: u64, mtime: Option<SystemTime>, index: usize) -> Option<Body> {
        let fresh = File::open(path).and_then(|f| f.metadata().map(|m| (f, m)));
        let file = match fresh {
            Ok((f, m)) if m.len() == size && m.modified().ok() == mtime => f,
            _ => {
                if !self.stale.swap(true, Ordering::Relaxed) {
                    tracing::warn!(path = %path.display(), "seeded file changed or vanished; no longer serving it");
                }
                return None;
            }
        };
        let off = index as u64 * PIECE_SIZE;
        let len = size.checked_sub(off)?.min(PIECE_SIZE) as usize;
        Some(Body::File(FileRange::new(file, off, len)))
    }

    /// False once a seeded source was seen changed or gone.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
enum BlobSource {
    Memory(Bytes),
    Piece(Arc<FileEntry>, usize),
}

/// Every blob this node can GIVE, by hash, and the files behind them.
#[derive(Default)]
pub struct Store {
    inner: RwLock<StoreInner>,
}

#[derive(Default)]
struct StoreInner {
    blobs: HashMap<Hash, Vec<BlobSource>>,
    files: HashMap<Hash, Arc<FileEntry>>,
    folders: HashMap<Hash, Arc<FolderInfo>>,
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store::default()
    }

    /// Serves a seeded file: maps it read-only and registers its manifest, lists and pieces.
    /// `mtime` is the modification time the pieces were hashed at.
    pub fn add_source(
        &self,
        info: Arc<FileInfo>,
        path: &Path,
        mtime: Option<SystemTime>,
    ) -> Result<Arc<FileEntry>, StoreError> {
        let file = Arc::new(File::open(path).map_err(io_err(path))?);
        let size = info.manifest.size;
        let map = if size == 0 {
            None
        } else {
            Some(Arc::new(Mapping::read_only(file.clone(), size as usize).map_err(io_err(path))?))
        };
        let pieces = info.pieces.len();
        let source = Source { path: path.to_owned(), file, map, size, mtime };
        let entry = Arc::new(FileEntry {
            info,
            backing: Backing::Source(source),
            held: Mutex::new(bitvec![u8, Msb0; 1; pieces]),
            stale: AtomicBool::new(false),
        });
        self.write().insert_whole(&entry);
        Ok(entry)
    }

    /// Serves a file of a folder from `path`, opening it for each GIVE rather
    /// than keeping it open: a folder of any number of files fits the
    /// descriptor limit. Replaces whatever served `info.root` before (the
    /// `.part` of a file just fetched).
    pub fn add_lazy_source(&self, info: Arc<FileInfo>, path: &Path, mtime: Option<SystemTime>) -> Arc<FileEntry> {
        let pieces = info.pieces.len();
        let size = info.manifest.size;
        let entry = Arc::new(FileEntry {
            info,
            backing: Backing::Lazy { path: path.to_owned(), size, mtime },
            held: Mutex::new(bitvec![u8, Msb0; 1; pieces]),
            stale: AtomicBool::new(false),
        });
        let mut inner = self.write();
        inner.drop_file(&entry.info.root);
        inner.insert_whole(&entry);
        entry
    }

    /// Serves a folder's manifest and entry blobs (its files are added one by one).
    pub fn add_folder(&self, info: Arc<FolderInfo>) {
        let mut inner = self.write();
        inner.add_memory(info.root, &info.manifest_blob);
        for (h, b) in info.manifest.blobs.iter().zip(&info.blobs) {
            inner.add_memory(*h, b);
        }
        inner.folders.insert(info.root, info);
    }

    /// The folder registered under `root`, if any.
    pub fn folder(&self, root: &Hash) -> Option<Arc<FolderInfo>> {
        self.read().folders.get(root).cloned()
    }

    /// Serves the manifest and lists of a download, and its pieces as they are verified.
    pub fn add_partial(&self, info: Arc<FileInfo>, part: Arc<PartFile>, held: Bits) -> Arc<FileEntry> {
        part.claim_present(&held);
        let entry = Arc::new(FileEntry {
            info,
            backing: Backing::Partial(part),
            held: Mutex::new(held.clone()),
            stale: AtomicBool::new(false),
        });
        let mut inner = self.write();
        inner.register_meta(&entry);
        for i in held.iter_ones() {
            inner.blobs.entry(entry.info.pieces[i]).or_default().push(BlobSource::Piece(entry.clone(), i));
        }
        inner.files.insert(entry.info.root, entry.clone());
        entry
    }

    /// Records that a download now holds piece `index`, written into its slot,
    /// and serves it. False (and nothing served) if the slot was never written.
    pub fn mark_held(&self, entry: &Arc<FileEntry>, index: usize) -> bool {
        let written = match &entry.backing {
            Backing::Partial(part) => part.is_claimed(index),
            Backing::Source(_) | Backing::Lazy { .. } => index < entry.info.pieces.len(),
        };
        if !written {
            return false;
        }
        crate::lock(&entry.held).set(index, true);
        let mut inner = self.write();
        inner.blobs.entry(entry.info.pieces[index]).or_default().push(BlobSource::Piece(entry.clone(), index));
        true
    }

    /// Adds a small blob kept in memory (a fetched manifest or hash list).
    pub fn add_blob(&self, hash: Hash, data: Bytes) {
        self.write().add_memory(hash, &data);
    }

    /// Stops serving a blob added with [`Store::add_blob`] (a streamed piece once written).
    pub fn remove_blob(&self, hash: &Hash) {
        let mut inner = self.write();
        if let Some(sources) = inner.blobs.get_mut(hash) {
            sources.retain(|s| !matches!(s, BlobSource::Memory(_)));
            if sources.is_empty() {
                inner.blobs.remove(hash);
            }
        }
    }

    /// Stops serving everything of `root`'s file.
    pub fn remove_file(&self, root: &Hash) {
        self.write().drop_file(root);
    }

    /// The file registered under `root`, if any.
    pub fn file(&self, root: &Hash) -> Option<Arc<FileEntry>> {
        self.read().files.get(root).cloned()
    }

    /// Roots of every file and folder this node serves.
    pub fn roots(&self) -> Vec<Hash> {
        let inner = self.read();
        inner.files.keys().chain(inner.folders.keys()).copied().collect()
    }

    /// The blob with this hash, if this node can serve it now. A piece comes
    /// as a mapped range read only with `pread` (see [`crate::mapping`]).
    pub fn get(&self, hash: &Hash) -> Option<Body> {
        let inner = self.read();
        inner.blobs.get(hash)?.iter().find_map(|s| match s {
            BlobSource::Memory(b) => Some(Body::Memory(b.clone())),
            BlobSource::Piece(entry, i) => entry.piece(*i),
        })
    }
}

impl Store {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, StoreInner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, StoreInner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl StoreInner {
    /// Forgets `root`'s file and its pieces (not its manifest and lists, kept in memory).
    fn drop_file(&mut self, root: &Hash) {
        let Some(entry) = self.files.remove(root) else { return };
        for h in &entry.info.pieces {
            if let Some(sources) = self.blobs.get_mut(h) {
                sources.retain(|s| !matches!(s, BlobSource::Piece(e, _) if Arc::ptr_eq(e, &entry)));
                if sources.is_empty() {
                    self.blobs.remove(h);
                }
            }
        }
    }

    fn register_meta(&mut self, entry: &Arc<FileEntry>) {
        let info = &entry.info;
        self.add_memory(info.root, &info.manifest_blob);
        for (h, b) in info.manifest.lists.iter().zip(&info.lists) {
            self.add_memory(*h, b);
        }
    }

    /// Serves `data` from memory under `hash`, once however often it is added.
    fn add_memory(&mut self, hash: Hash, data: &Bytes) {
        let sources = self.blobs.entry(hash).or_default();
        if !sources.iter().any(|s| matches!(s, BlobSource::Memory(_))) {
            sources.push(BlobSource::Memory(data.clone()));
        }
    }

    /// Serves a file whose every piece is held: its manifest, lists and pieces.
    fn insert_whole(&mut self, entry: &Arc<FileEntry>) {
        self.register_meta(entry);
        for (i, h) in entry.info.pieces.iter().enumerate() {
            self.blobs.entry(*h).or_default().push(BlobSource::Piece(entry.clone(), i));
        }
        self.files.insert(entry.info.root, entry.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::hash_pieces;
    use std::io::Write;

    #[test]
    fn serves_source_pieces_and_stops_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..PIECE_SIZE as usize + 10).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let pieces = hash_pieces(&file, data.len() as u64, 2, &|_| {}).unwrap();
        let info = Arc::new(FileInfo::new("f", data.len() as u64, pieces));
        let mtime = file.metadata().unwrap().modified().ok();
        let store = Store::new();
        store.add_source(info.clone(), &path, mtime).unwrap();
        assert_eq!(store.get(&info.root).unwrap().to_vec().unwrap(), info.manifest_blob);
        assert_eq!(store.get(&info.pieces[1]).unwrap().to_vec().unwrap(), &data[PIECE_SIZE as usize..]);
        // A piece looked up before the file is truncated only ever reaches the
        // kernel: copying it out fails cleanly instead of raising SIGBUS.
        let looked_up = store.get(&info.pieces[0]).unwrap();
        OpenOptions::new().write(true).open(&path).unwrap().set_len(5).unwrap();
        assert!(looked_up.to_vec().is_err());
        // Truncating the source makes the node stop serving it, without touching the pages.
        assert!(store.get(&info.pieces[0]).is_none());
        assert!(store.file(&info.root).unwrap().is_stale());
    }

    #[test]
    fn part_file_pieces_are_served_once_held() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![3u8; 1000];
        let info = Arc::new(FileInfo::new("p", 1000, vec![Hash::of(&data)]));
        let part = Arc::new(PartFile::open(&dir.path().join("p.part"), 1000).unwrap());
        let store = Store::new();
        let entry = store.add_partial(info.clone(), part.clone(), bitvec![u8, Msb0; 0; 1]);
        assert!(store.get(&info.pieces[0]).is_none());
        assert!(!store.mark_held(&entry, 0), "an unwritten slot is never served");
        assert!(part.write_piece(0, &data[..999]).is_err(), "a short piece does not fit its slot");
        part.write_piece(0, &data).unwrap();
        assert!(part.write_piece(0, &data).is_err(), "a slot is written once");
        assert!(store.mark_held(&entry, 0));
        assert_eq!(store.get(&info.pieces[0]).unwrap().to_vec().unwrap(), data);
        part.sync().unwrap();
        let mut f = File::open(dir.path().join("p.part")).unwrap();
        f.flush().unwrap();
        assert_eq!(std::fs::read(dir.path().join("p.part")).unwrap(), data);
    }
}
