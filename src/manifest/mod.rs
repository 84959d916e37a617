//! Manifests: what a root hash names. A file's pieces are listed in hash-list
//! blobs, and the manifest lists those, so every blob fits one GIVE while
//! files of petabytes still have a manifest (docs/PROTOCOL.md section 6).

mod folder;

pub use folder::{path_order, validate_path, Entry, EntryKind, FolderInfo, FolderManifest};

use crate::hash::Hash;
use bytes::{BufMut, Bytes, BytesMut};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Size of every piece but a file's last: 1 MiB.
pub const PIECE_SIZE: u64 = 1 << 20;
/// Piece hashes in one full hash-list blob (32,768 × 32 bytes = 1 MiB).
pub const HASHES_PER_LIST: u64 = PIECE_SIZE / Hash::LEN as u64;
/// First bytes of every manifest.
pub const MANIFEST_MAGIC: &[u8; 4] = b"PEXM";
/// Manifest format version.
pub const MANIFEST_VERSION: u8 = 1;
/// Longest file name a manifest may carry, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 255;
/// Bytes before the name: magic, version, piece size, file size, name length.
const FIXED_HEAD: usize = 4 + 1 + 4 + 8 + 2;

/// A decoded manifest: the file's name and size and the hashes of its hash-list blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// File name, a single safe path component.
    pub name: String,
    /// File size in bytes.
    pub size: u64,
    /// Hashes of the hash-list blobs, in order.
    pub lists: Vec<Hash>,
}

/// Why a manifest or hash list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Too short for its own fields.
    #[error("manifest is truncated")]
    Truncated,
    /// Does not start with "PEXM".
    #[error("not a pex manifest (bad magic)")]
    BadMagic,
    /// A version this build does not read.
    #[error("unsupported manifest version {0}")]
    BadVersion(u8),
    /// Piece size other than 1 MiB.
    #[error("piece size {0} is not 1048576")]
    BadPieceSize(u32),
    /// The name could escape the output directory or is unusable.
    #[error("unsafe file name in manifest: {0}")]
    BadName(String),
    /// Declared size and list count disagree, or extra bytes follow.
    #[error("manifest size {size} needs {expected} hash lists, it has {got}")]
    Inconsistent {
        /// Declared file size.
        size: u64,
        /// Lists that size needs.
        expected: u64,
        /// Lists present.
        got: u64,
    },
    /// A folder's entries are inconsistent or unsafe (see [`FolderInfo::from_parts`]).
    #[error("bad folder manifest: {0}")]
    BadFolder(String),
    /// Trailing bytes after the list hashes.
    #[error("manifest has {0} trailing bytes")]
    Trailing(usize),
    /// A hash-list blob of the wrong length.
    #[error("hash list {index} has {len} bytes, expected {expected}")]
    BadList {
        /// Which list.
        index: usize,
        /// Its length.
        len: usize,
        /// What the manifest implies.
        expected: usize,
    },
}

/// Checks that `name` is one path component that cannot escape a directory.
pub fn validate_name(name: &str) -> Result<(), ManifestError> {
    // The name may come from the network: shown escaped and cut.
    let bad = |why: &str| Err(ManifestError::BadName(format!("\"{}\" {why}", crate::text::clean(name, 64))));
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("is longer than 255 bytes");
    }
    if name == "." || name == ".." {
        return bad("is a directory reference");
    }
    if name.contains(['/', '\\']) {
        return bad("contains a path separator");
    }
    if name.chars().any(char::is_control) {
        return bad("contains control characters");
    }
    Ok(())
}

/// Turns any string into a name that passes [`validate_name`]: separators and
/// control characters become `_`, and an unusable result becomes "file".
pub fn sanitize_name(name: &str) -> String {
    let mut s: String = name.chars().map(|c| if c == '/' || c == '\\' || c.is_control() { '_' } else { c }).collect();
    while s.len() > MAX_NAME_LEN {
        s.pop();
    }
    if s.is_empty() || s == "." || s == ".." {
        s = "file".to_owned();
    }
    s
}

impl Manifest {
    /// Number of pieces of a file of `size` bytes.
    pub fn pieces_for(size: u64) -> u64 {
        size.div_ceil(PIECE_SIZE)
    }

    /// Number of hash lists for `pieces` pieces.
    pub fn lists_for(pieces: u64) -> u64 {
        pieces.div_ceil(HASHES_PER_LIST)
    }

    /// Number of pieces of this file.
    pub fn piece_count(&self) -> u64 {
        Self::pieces_for(self.size)
    }

    /// Length of piece `index` (the last one may be short; 0 past the end).
    pub fn piece_len(&self, index: u64) -> usize {
        let start = index.saturating_mul(PIECE_SIZE);
        self.size.saturating_sub(start).min(PIECE_SIZE) as usize
    }

    /// Number of piece hashes list `index` must hold (0 past the last list).
    pub fn list_len(&self, index: usize) -> usize {
        let pieces = self.piece_count();
        let before = (index as u64).saturating_mul(HASHES_PER_LIST);
        pieces.saturating_sub(before).min(HASHES_PER_LIST) as usize
    }

    /// The manifest blob; its SHA-256 is the root hash.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(FIXED_HEAD + self.name.len() + 4 + 32 * self.lists.len());
        b.put_slice(MANIFEST_MAGIC);
        b.put_u8(MANIFEST_VERSION);
        b.put_u32(PIECE_SIZE as u32);
        b.put_u64(self.size);
        b.put_u16(self.name.len() as u16);
        b.put_slice(self.name.as_bytes());
        b.put_u32(self.lists.len() as u32);
        for h in &self.lists {
            b.put_slice(&h.0);
        }
        b.freeze()
    }

    /// Parses and checks a manifest blob. Never panics on any input.
    pub fn parse(blob: &[u8]) -> Result<Manifest, ManifestError> {
        // A blob shorter than the fixed head is truncated (`get`, so no comparison
        // of its own: one a byte longer is refused as truncated a step later anyway).
        if blob.get(..FIXED_HEAD).is_none() {
            return Err(ManifestError::Truncated);
        }
        if &blob[..4] != MANIFEST_MAGIC {
            return Err(ManifestError::BadMagic);
        }
        if blob[4] != MANIFEST_VERSION {
            return Err(ManifestError::BadVersion(blob[4]));
        }
        let piece_size = u32::from_be_bytes(blob[5..9].try_into().map_err(|_| ManifestError::Truncated)?);
        if piece_size as u64 != PIECE_SIZE {
            return Err(ManifestError::BadPieceSize(piece_size));
        }
        let size = u64::from_be_bytes(blob[9..17].try_into().map_err(|_| ManifestError::Truncated)?);
        let name_len = u16::from_be_bytes([blob[17], blob[18]]) as usize;
        let rest = &blob[FIXED_HEAD..];
        if rest.len() < name_len + 4 {
            return Err(ManifestError::Truncated);
        }
        let name = std::str::from_utf8(&rest[..name_len])
            .map_err(|_| ManifestError::BadName("name is not UTF-8".into()))?
            .to_owned();
        validate_name(&name)?;
        let rest = &rest[name_len..];
        let count = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as u64;
        let expected = Self::lists_for(Self::pieces_for(size));
        if count != expected || Self::pieces_for(size) > u32::MAX as u64 {
            return Err(ManifestError::Inconsistent { size, expected, got: count });
        }
        let hashes = &rest[4..];
        let want = count as usize * Hash::LEN;
        if hashes.len() < want {
            return Err(ManifestError::Truncated);
        }
        if hashes.len() > want {
            return Err(ManifestError::Trailing(hashes.len() - want));
        }
        let lists = hashes.chunks_exact(Hash::LEN).filter_map(Hash::from_slice).collect();
        Ok(Manifest { name, size, lists })
    }

    /// Parses hash list `index` of this manifest into piece hashes.
    pub fn parse_list(&self, index: usize, blob: &[u8]) -> Result<Vec<Hash>, ManifestError> {
        let expected = self.list_len(index) * Hash::LEN;
        if index >= self.lists.len() || blob.len() != expected {
            return Err(ManifestError::BadList { index, len: blob.len(), expected });
        }
        Ok(blob.chunks_exact(Hash::LEN).filter_map(Hash::from_slice).collect())
    }
}

/// Everything a node needs to serve or fetch a file: the manifest, its blob and
/// root, the hash-list blobs and every piece hash.
#[derive(Clone, Debug)]
pub struct FileInfo {
    /// The decoded manifest.
    pub manifest: Manifest,
    /// The manifest blob as sent on the wire.
    pub manifest_blob: Bytes,
    /// SHA-256 of the manifest blob.
    pub root: Hash,
    /// The hash-list blobs, in order.
    pub lists: Vec<Bytes>,
    /// Every piece hash, in file order.
    pub pieces: Vec<Hash>,
}

impl FileInfo {
    /// Builds the manifest and lists for a file with these piece hashes.
    pub fn new(name: &str, size: u64, pieces: Vec<Hash>) -> FileInfo {
        let lists: Vec<Bytes> = pieces
            .chunks(HASHES_PER_LIST as usize)
            .map(|chunk| {
                let mut b = BytesMut::with_capacity(chunk.len() * Hash::LEN);
                chunk.iter().for_each(|h| b.put_slice(&h.0));
                b.freeze()
            })
            .collect();
        let manifest = Manifest { name: sanitize_name(name), size, lists: lists.iter().map(|l| Hash::of(l)).collect() };
        let manifest_blob = manifest.encode();
        FileInfo { root: Hash::of(&manifest_blob), manifest, manifest_blob, lists, pieces }
    }

    /// Rebuilds from a verified manifest blob and its verified hash lists.
    pub fn from_parts(manifest_blob: Bytes, lists: Vec<Bytes>) -> Result<FileInfo, ManifestError> {
        let manifest = Manifest::parse(&manifest_blob)?;
        if lists.len() != manifest.lists.len() {
            return Err(ManifestError::Truncated);
        }
        let mut pieces = Vec::with_capacity(manifest.piece_count() as usize);
        for (i, list) in lists.iter().enumerate() {
            pieces.extend(manifest.parse_list(i, list)?);
        }
        Ok(FileInfo { root: Hash::of(&manifest_blob), manifest, manifest_blob, lists, pieces })
    }
}

/// Hashes every piece of `file` (`size` bytes) on `threads` threads, calling
/// `progress` with each piece's length as it is done.
pub fn hash_pieces(
    file: &File,
    size: u64,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> std::io::Result<Vec<Hash>> {
    let count = Manifest::pieces_for(size);
    let all: Vec<u64> = (0..count).collect();
    let mut hashes = vec![Hash::default(); count as usize];
    for (i, h) in hash_pieces_at(file, size, &all, threads, progress)? {
        hashes[i as usize] = h;
    }
    Ok(hashes)
}

/// Hashes the pieces `indices` of `file` (`size` bytes) on `threads` threads
/// with positioned reads, returning (index, hash) pairs in no particular order.
/// Positioned reads, not a mapping: a file truncated meanwhile gives an error, not SIGBUS.
pub fn hash_pieces_at(
    file: &File,
    size: u64,
    indices: &[u64],
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> std::io::Result<Vec<(u64, Hash)>> {
    let next = AtomicU64::new(0);
    let threads = threads.clamp(1, indices.len().max(1));
    let results: Vec<std::io::Result<Vec<(u64, Hash)>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut buf = vec![0u8; PIECE_SIZE as usize];
                    let mut out = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(&i) = indices.get(k) else { return Ok(out) };
                        let len = (size.saturating_sub(i * PIECE_SIZE)).min(PIECE_SIZE) as usize;
                        file.read_exact_at(&mut buf[..len], i * PIECE_SIZE)?;
                        out.push((i, Hash::of(&buf[..len])));
                        progress(len as u64);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(std::io::Error::other("hash thread panicked"))))
            .collect()
    });
    let mut all = Vec::with_capacity(indices.len());
    for r in results {
        all.extend(r?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests;
