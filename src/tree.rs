//! Reading a directory tree to share it: walking it without following links,
//! skipping (with one warning each) what cannot be shared, and hashing every
//! file into its own manifest, many small files at once on all cores.

use crate::hash::Hash;
use crate::manifest::{hash_pieces, validate_name, Entry, EntryKind, FileInfo, FolderInfo, PIECE_SIZE};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// A file of the tree as it was when hashed.
#[derive(Clone, Debug)]
pub struct TreeFile {
    /// Path relative to the tree, components joined by `/`.
    pub rel: String,
    /// Absolute path.
    pub path: PathBuf,
    /// Its manifest and piece hashes.
    pub info: std::sync::Arc<FileInfo>,
    /// Size, modification time and inode when hashed: a change means the file changed.
    pub size: u64,
    /// See [`TreeFile::size`].
    pub mtime: Option<SystemTime>,
    /// See [`TreeFile::size`].
    pub inode: u64,
    /// Whether any executable bit is set.
    pub exec: bool,
}

/// A hashed tree: the folder and each of its files.
#[derive(Debug)]
pub struct Tree {
    /// The folder manifest and entries.
    pub folder: FolderInfo,
    /// Its files, in the order of the folder's file entries.
    pub files: Vec<TreeFile>,
    /// One line for each thing skipped (symlinks, devices, unreadable files, unusable names).
    pub skipped: Vec<String>,
    /// Files whose earlier hashes were reused (unchanged since then).
    pub reused: usize,
}

/// A file found by the walk, not yet hashed.
struct Found {
    rel: String,
    path: PathBuf,
    meta: fs::Metadata,
}

/// Files at least this big are hashed one at a time on all cores; smaller ones
/// are hashed whole, one per core.
const BIG: u64 = 8 * PIECE_SIZE;

/// Walks and hashes the tree at `dir`. `known` gives the earlier hashes of files
/// by relative path: reused when size, modification time and inode still match.
/// `progress` is called with bytes hashed.
pub fn read_tree(dir: &Path, known: &HashMap<String, TreeFile>, progress: &(dyn Fn(u64) + Sync)) -> io::Result<Tree> {
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a directory"));
    }
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "folder".into());
    let name = crate::manifest::sanitize_name(&name);
    let (mut found, mut dirs, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    walk(dir, "", &mut found, &mut dirs, &mut skipped)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hashed: Mutex<Vec<Option<io::Result<TreeFile>>>> = Mutex::new((0..found.len()).map(|_| None).collect());
    let reused = AtomicUsize::new(0);
    let hash_one = |i: usize, threads: usize| {
        let f = &found[i];
        let result = match known.get(&f.rel) {
            Some(k) if k.size == f.meta.len() && k.mtime == f.meta.modified().ok() && k.inode == f.meta.ino() => {
                reused.fetch_add(1, Ordering::Relaxed);
                progress(k.size);
                Ok(TreeFile { path: f.path.clone(), exec: f.meta.permissions().mode() & 0o111 != 0, ..k.clone() })
            }
            _ => hash_file(f, threads, progress),
        };
        crate::lock(&hashed)[i] = Some(result);
    };
    // Big files one by one on every core, then the small ones spread over the cores.
    let (big, small): (Vec<usize>, Vec<usize>) = (0..found.len()).partition(|&i| found[i].meta.len() >= BIG);
    big.iter().for_each(|&i| hash_one(i, threads));
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.min(small.len()) {
            s.spawn(|| {
                while let Some(&i) = small.get(next.fetch_add(1, Ordering::Relaxed)) {
                    hash_one(i, 1);
                }
            });
        }
    });
    let mut files = Vec::with_capacity(found.len());
    let mut entries = Vec::with_capacity(found.len() + dirs.len());
    for (f, r) in found.iter().zip(hashed.into_inner().unwrap_or_else(|e| e.into_inner())) {
        match r.unwrap_or_else(|| Err(io::Error::other("not hashed"))) {
            Ok(t) => {
                let kind = if t.exec { EntryKind::Executable } else { EntryKind::File };
                entries.push(Entry { kind, size: t.size, root: t.info.root, path: t.rel.clone() });
                files.push(t);
            }
            Err(e) => skipped.push(format!("{}: {}", f.path.display(), crate::text::io_message(&e))),
        }
    }
    // Directories left with nothing in them (their contents all skipped included) are listed.
    let mut holding = std::collections::HashSet::new();
    for e in &entries {
        let mut p = e.path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if !holding.insert(parent.to_owned()) {
                break;
            }
            p = parent;
        }
    }
    for d in dirs {
        if !holding.contains(&d) {
            entries.push(Entry { kind: EntryKind::Directory, size: 0, root: Hash::default(), path: d });
        }
    }
    let folder = FolderInfo::new(&name, entries).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    // Put the files in the folder's (canonical) order.
    let mut by_rel: HashMap<String, TreeFile> = files.into_iter().map(|t| (t.rel.clone(), t)).collect();
    let files = folder.files().filter_map(|e| by_rel.remove(&e.path)).collect();
    Ok(Tree { folder, files, skipped, reused: reused.into_inner() })
}

/// Collects the regular files and directories below `dir`, never following a
/// symbolic link, and a warning for everything else.
fn walk(
    dir: &Path,
    rel: &str,
    found: &mut Vec<Found>,
    dirs: &mut Vec<String>,
    skipped: &mut Vec<String>,
) -> io::Result<()> {
    let mut children: Vec<fs::DirEntry> = match fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(Result::ok).collect(),
        Err(e) if rel.is_empty() => return Err(e),
        Err(e) => {
            skipped.push(format!("{}: {}", dir.display(), crate::text::io_message(&e)));
            return Ok(());
        }
    };
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let path = child.path();
        let Some(name) = child.file_name().to_str().map(str::to_owned) else {
            skipped.push(format!("{}: name is not UTF-8", path.display()));
            continue;
        };
        if let Err(e) = validate_name(&name) {
            skipped.push(format!("{}: {e}", path.display()));
            continue;
        }
        let child_rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                skipped.push(format!("{}: {}", path.display(), crate::text::io_message(&e)));
                continue;
            }
        };
        let t = meta.file_type();
        if t.is_dir() {
            dirs.push(child_rel.clone());
            walk(&path, &child_rel, found, dirs, skipped)?;
        } else if t.is_file() {
            found.push(Found { rel: child_rel, path, meta });
        } else {
            let what = if t.is_symlink() {
                "a symbolic link"
            } else if t.is_socket() {
                "a socket"
            } else if t.is_fifo() {
                "a named pipe"
            } else {
                "a device"
            };
            skipped.push(format!("{}: {what}, not shared", path.display()));
        }
    }
    Ok(())
}

/// Hashes one file, refusing one that changes meanwhile.
fn hash_file(f: &Found, threads: usize, progress: &(dyn Fn(u64) + Sync)) -> io::Result<TreeFile> {
    let file = File::open(&f.path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.ino() != f.meta.ino() {
        return Err(io::Error::other("replaced while the tree was read"));
    }
    let pieces = hash_pieces(&file, meta.len(), threads, progress)?;
    let after = file.metadata()?;
    if after.len() != meta.len() || after.modified().ok() != meta.modified().ok() {
        return Err(io::Error::other("changed while it was being hashed"));
    }
    let name = f.rel.rsplit('/').next().unwrap_or(&f.rel);
    Ok(TreeFile {
        rel: f.rel.clone(),
        path: f.path.clone(),
        info: std::sync::Arc::new(FileInfo::new(name, meta.len(), pieces)),
        size: meta.len(),
        mtime: meta.modified().ok(),
        inode: meta.ino(),
        exec: meta.permissions().mode() & 0o111 != 0,
    })
}
