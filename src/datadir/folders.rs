//! Records of folders served: `folders/<root>.pexf` holds the folder manifest,
//! its entry blobs and each file's manifest and piece hashes (binary, each
//! part length-prefixed); `folders/<root>.json` the folder's path and each
//! file's size, modification time and inode when hashed. Two atomic writes per
//! folder, whatever its number of files.

use super::{write_atomic, DataDir, RecordError};
use crate::hash::Hash;
use crate::manifest::{FileInfo, FolderInfo, HASHES_PER_LIST};
use crate::tree::TreeFile;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// Where a folder is served from, and each file's identity when hashed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FolderRecord {
    /// Absolute path of the folder.
    pub path: PathBuf,
    /// One per file entry, in the folder's order.
    pub files: Vec<FileStamp>,
}

/// A file's size, modification time and inode when hashed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: Option<SystemTime>,
    /// Inode number.
    pub inode: u64,
}

impl DataDir {
    fn folder_path(&self, root: &Hash, ext: &str) -> PathBuf {
        self.root.join("folders").join(format!("{root}.{ext}"))
    }

    /// Records that this node serves the folder `info` from `path`, with its files as hashed.
    pub fn save_folder(&self, info: &FolderInfo, path: &Path, files: &[TreeFile]) -> io::Result<()> {
        fs::create_dir_all(self.root.join("folders"))?;
        let mut b = BytesMut::new();
        let put = |b: &mut BytesMut, data: &[u8]| {
            b.put_u64(data.len() as u64);
            b.put_slice(data);
        };
        put(&mut b, &info.manifest_blob);
        for blob in &info.blobs {
            put(&mut b, blob);
        }
        for f in files {
            put(&mut b, &f.info.manifest_blob);
            let hashes: Vec<u8> = f.info.lists.iter().flat_map(|l| l.iter().copied()).collect();
            put(&mut b, &hashes);
        }
        write_atomic(&self.folder_path(&info.root, "pexf"), &b)?;
        let stamps = files.iter().map(|f| FileStamp { size: f.size, mtime: f.mtime, inode: f.inode }).collect();
        let record = FolderRecord { path: path.to_owned(), files: stamps };
        write_atomic(&self.folder_path(&info.root, "json"), &serde_json::to_vec(&record).map_err(io::Error::other)?)
    }

    /// Every folder recorded, each with its files as hashed (paths as recorded),
    /// or the error that names a damaged record.
    pub fn folders(&self) -> Vec<Result<(FolderInfo, Vec<TreeFile>), RecordError>> {
        let Ok(dir) = fs::read_dir(self.root.join("folders")) else { return Vec::new() };
        let mut out = Vec::new();
        for entry in dir.flatten() {
            let path = entry.path();
            let Some(stem) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let err = |reason: String| RecordError { path: path.clone(), reason };
            match stem.parse::<Hash>() {
                Ok(root) => out.push(self.load_folder(&root).map_err(err)),
                Err(e) => out.push(Err(err(format!("file name is not a root hash: {e}")))),
            }
        }
        out
    }

    fn load_folder(&self, root: &Hash) -> Result<(FolderInfo, Vec<TreeFile>), String> {
        let json = fs::read(self.folder_path(root, "json")).map_err(|e| e.to_string())?;
        let record: FolderRecord = serde_json::from_slice(&json).map_err(|e| format!("damaged record: {e}"))?;
        let bin = fs::read(self.folder_path(root, "pexf")).map_err(|e| format!("its manifests: {e}"))?;
        let mut bin = Bytes::from(bin);
        let mut take = || -> Result<Bytes, String> {
            let n = bin.try_get_u64().map_err(|_| "manifests cut short".to_owned())? as usize;
            (bin.len() >= n).then(|| bin.split_to(n)).ok_or_else(|| "manifests cut short".to_owned())
        };
        let manifest = take()?;
        if Hash::of(&manifest) != *root {
            return Err("folder manifest does not match its root hash".into());
        }
        let count = crate::manifest::FolderManifest::parse(&manifest).map_err(|e| e.to_string())?.blobs.len();
        let blobs = (0..count).map(|_| take()).collect::<Result<Vec<_>, _>>()?;
        let folder = FolderInfo::from_parts(manifest, blobs).map_err(|e| e.to_string())?;
        let entries: Vec<_> = folder.files().cloned().collect();
        if entries.len() != record.files.len() {
            return Err("record does not match the folder".into());
        }
        let mut files = Vec::with_capacity(entries.len());
        for (e, stamp) in entries.iter().zip(&record.files) {
            let (m, hashes) = (take()?, take()?);
            let lists = hashes.chunks(HASHES_PER_LIST as usize * Hash::LEN).map(Bytes::copy_from_slice).collect();
            let info = FileInfo::from_parts(m, lists).map_err(|e| e.to_string())?;
            if info.root != e.root || info.lists.iter().zip(&info.manifest.lists).any(|(l, h)| Hash::of(l) != *h) {
                return Err(format!("{}: piece hashes do not match", e.path));
            }
            files.push(TreeFile {
                rel: e.path.clone(),
                path: record.path.join(&e.path),
                info: Arc::new(info),
                size: stamp.size,
                mtime: stamp.mtime,
                inode: stamp.inode,
                exec: e.kind == crate::manifest::EntryKind::Executable,
            });
        }
        Ok((folder, files))
    }
}
