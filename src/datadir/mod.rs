//! The data directory: manifests, hash lists and records of what this node
//! serves, so a later run can re-serve and resume. Every write is atomic
//! (temporary file, fsync, rename, fsync of the directory).
//!
//! Layout: `files/<root>.manifest` and `files/<root>.hashes` (all piece hashes,
//! the hash lists concatenated), `seeds/<root>.json` for each file served,
//! `folders/<root>.{pexf,json}` for each folder served (see `folders`),
//! `identity` (the node's key) and `peers.json` (remembered peers).

use crate::hash::Hash;
use crate::manifest::{FileInfo, HASHES_PER_LIST};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A record that could not be read or does not check out; names the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct RecordError {
    /// The damaged or unreadable file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// What this node serves a file from: a seeded source or a completed download.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeedRecord {
    /// Absolute path of the file.
    pub path: PathBuf,
    /// Its size when hashed.
    pub size: u64,
    /// Its modification time when hashed; a different one means the file changed.
    pub mtime: Option<SystemTime>,
    /// Its inode number when hashed (with size and mtime, what lets `pex seed`
    /// trust the record instead of hashing the file again).
    #[serde(default)]
    pub inode: Option<u64>,
}

impl SeedRecord {
    /// The record of the file at `path` as `meta` describes it.
    pub fn of(path: PathBuf, meta: &std::fs::Metadata) -> SeedRecord {
        use std::os::unix::fs::MetadataExt;
        SeedRecord { path, size: meta.len(), mtime: meta.modified().ok(), inode: Some(meta.ino()) }
    }

    /// Whether `meta` still describes the file this record was made from:
    /// same size, modification time and inode.
    pub fn matches(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.size == meta.len() && self.mtime == meta.modified().ok() && self.inode == Some(meta.ino())
    }
}

/// An unfinished download of a root: where it is written and which pieces
/// were verified and flushed to disk before this record was written.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartialRecord {
    /// Absolute path of the `.part` file.
    pub part: PathBuf,
    /// Held pieces as BITFIELD bytes in hex (MSB first); empty until the first flush.
    #[serde(default)]
    pub held: String,
}

impl PartialRecord {
    /// The claimed pieces, if the record holds a bitfield for `pieces` pieces.
    pub fn claimed(&self, pieces: usize) -> Option<Vec<u8>> {
        let bytes: Option<Vec<u8>> = (0..self.held.len())
            .step_by(2)
            // `from_str_radix` alone would take "+f" for 0x0f.
            .map(|i| {
                let pair = self.held.get(i..i + 2).filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
                pair.and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect();
        bytes.filter(|b| b.len() == pieces.div_ceil(8) && !self.held.is_empty())
    }
}

/// A node's data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// `$XDG_DATA_HOME/pex`, else `~/.local/share/pex`.
    pub fn default_path() -> PathBuf {
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("pex");
        }
        match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".local/share/pex"),
            None => PathBuf::from(".pex"),
        }
    }

    /// Opens (creating if needed) a data directory.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<DataDir> {
        let root = root.into();
        for sub in ["files", "seeds", "partial"] {
            fs::create_dir_all(root.join(sub)).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot create data directory {}: {e}", root.join(sub).display()))
            })?;
        }
        Ok(DataDir { root })
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// This node's identity, kept in `identity` (mode 0600), created on first use.
    pub fn identity(&self) -> io::Result<crate::identity::Identity> {
        crate::identity::Identity::load_or_create(&self.root.join("identity"))
    }

    fn manifest_path(&self, root: &Hash) -> PathBuf {
        self.root.join("files").join(format!("{root}.manifest"))
    }

    fn hashes_path(&self, root: &Hash) -> PathBuf {
        self.root.join("files").join(format!("{root}.hashes"))
    }

    fn seed_path(&self, root: &Hash) -> PathBuf {
        self.root.join("seeds").join(format!("{root}.json"))
    }

    /// Saves a file's manifest and piece hashes.
    pub fn save_info(&self, info: &FileInfo) -> io::Result<()> {
        let hashes: Vec<u8> = info.lists.iter().flat_map(|l| l.iter().copied()).collect();
        write_atomic(&self.hashes_path(&info.root), &hashes)?;
        write_atomic(&self.manifest_path(&info.root), &info.manifest_blob)
    }

    /// Loads a saved manifest and its piece hashes, checking both against `root`.
    pub fn load_info(&self, root: &Hash) -> Result<Option<FileInfo>, RecordError> {
        let mpath = self.manifest_path(root);
        let blob = match fs::read(&mpath) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RecordError { path: mpath, reason: e.to_string() }),
        };
        if Hash::of(&blob) != *root {
            return Err(RecordError { path: mpath, reason: "manifest does not match its root hash".into() });
        }
        let hpath = self.hashes_path(root);
        let hashes = fs::read(&hpath).map_err(|e| RecordError { path: hpath.clone(), reason: e.to_string() })?;
        let lists: Vec<Bytes> =
            hashes.chunks(HASHES_PER_LIST as usize * Hash::LEN).map(Bytes::copy_from_slice).collect();
        let info = FileInfo::from_parts(Bytes::from(blob), lists)
            .map_err(|e| RecordError { path: hpath.clone(), reason: e.to_string() })?;
        // `from_parts` checked the number of lists; each must also hash to its entry.
        let lists_ok = info.lists.iter().zip(&info.manifest.lists).all(|(l, h)| Hash::of(l) == *h);
        if !lists_ok {
            return Err(RecordError { path: hpath, reason: "piece hashes do not match the manifest".into() });
        }
        Ok(Some(info))
    }

    /// Records that this node serves `root` from `record.path`.
    pub fn save_seed(&self, root: &Hash, record: &SeedRecord) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        write_atomic(&self.seed_path(root), &json)
    }

    /// Forgets that this node serves `root`.
    pub fn remove_seed(&self, root: &Hash) -> io::Result<()> {
        match fs::remove_file(self.seed_path(root)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn partial_path(&self, root: &Hash) -> PathBuf {
        self.root.join("partial").join(format!("{root}.json"))
    }

    /// Records that `part` holds the download of `root`, and which pieces of it
    /// are flushed (`held`, BITFIELD bytes), so a later run resumes from it and a
    /// `.part` of another root is never mixed in. Callers flush data first.
    pub fn save_partial(&self, root: &Hash, part: &Path, held: Option<&[u8]>) -> io::Result<()> {
        let record = PartialRecord { part: part.to_owned(), held: held.map(crate::hash::hex).unwrap_or_default() };
        let json = serde_json::to_vec_pretty(&record).map_err(io::Error::other)?;
        write_atomic(&self.partial_path(root), &json)
    }

    /// The partial-download record for `root`, if any.
    pub fn load_partial(&self, root: &Hash) -> Result<Option<PartialRecord>, RecordError> {
        let path = self.partial_path(root);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice::<PartialRecord>(&b)
                .map(Some)
                .map_err(|e| RecordError { path, reason: format!("damaged record: {e}") }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RecordError { path, reason: e.to_string() }),
        }
    }

    /// Forgets a finished download's `.part`.
    pub fn remove_partial(&self, root: &Hash) -> io::Result<()> {
        match fs::remove_file(self.partial_path(root)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every file this node has seeded or completed, each with its manifest, or the
    /// error that names a damaged record (which does not stop the others).
    pub fn seeds(&self) -> Vec<Result<(SeedRecord, FileInfo), RecordError>> {
        let dir = self.root.join("seeds");
        let Ok(entries) = fs::read_dir(&dir) else { return Vec::new() };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(stem) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            out.push(self.load_seed(&path, stem));
        }
        out
    }

    fn load_seed(&self, path: &Path, stem: &str) -> Result<(SeedRecord, FileInfo), RecordError> {
        let err = |reason: String| RecordError { path: path.to_owned(), reason };
        let root: Hash = stem.parse().map_err(|e| err(format!("file name is not a root hash: {e}")))?;
        let text = fs::read(path).map_err(|e| err(e.to_string()))?;
        let record: SeedRecord = serde_json::from_slice(&text).map_err(|e| err(format!("damaged record: {e}")))?;
        let info = self.load_info(&root)?.ok_or_else(|| err("its manifest is missing".into()))?;
        Ok((record, info))
    }
}

/// Writes `data` to `path` so that readers see the old contents or the new, never a mix.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("record");
    let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), fastrand::u32(..)));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

mod folders;
mod remembered;
pub use folders::{FileStamp, FolderRecord};
pub use remembered::{
    now_secs as remembered_now, tidy as tidy_remembered, RememberedPeer, FORGET_AFTER, MAX_REMEMBERED,
};

#[cfg(test)]
mod tests;
