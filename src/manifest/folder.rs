//! Folder manifests: what the root of a shared directory tree names. The tree's
//! entries (path, size, executable bit, each file's own root) form one byte
//! stream in canonical order, cut into 1 MiB entry blobs the way piece hashes
//! are cut into hash lists; the folder manifest names those blobs
//! (docs/PROTOCOL.md section 6.2).

use super::{validate_name, ManifestError, PIECE_SIZE};
use crate::hash::Hash;
use bytes::{BufMut, Bytes, BytesMut};
use std::cmp::Ordering;

/// First bytes of every folder manifest.
pub const FOLDER_MAGIC: &[u8; 4] = b"PEXD";
/// Folder manifest format version.
pub const FOLDER_VERSION: u8 = 1;
/// Longest path an entry may carry, in bytes (Linux's PATH_MAX less one).
pub const MAX_PATH_LEN: usize = 4095;
/// Most entries a folder may list: bounds what a fetcher holds in memory.
pub const MAX_ENTRIES: u64 = 1 << 22;
/// Most entry blobs (256 MiB of entries).
pub const MAX_ENTRY_BLOBS: u64 = 256;
/// Bytes of an entry before its path: kind, size, root, path length.
pub const ENTRY_HEAD: usize = 1 + 8 + 32 + 2;
/// Bytes of a folder manifest before the name: magic, version, name length.
const FIXED_HEAD: usize = 4 + 1 + 2;
/// Bytes after the name and before the blob hashes: entries, total size, entry bytes, blob count.
const COUNTS: usize = 8 + 8 + 8 + 4;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    File = 0,
    /// A regular file with the executable bit set.
    Executable = 1,
    /// An empty directory (directories with entries are implied by their paths).
    Directory = 2,
}

/// One entry of a folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// File, executable or empty directory.
    pub kind: EntryKind,
    /// Size in bytes (0 for a directory).
    pub size: u64,
    /// The file's own root (all zero for a directory): the root it has when shared alone.
    pub root: Hash,
    /// Relative path, components joined by `/`, each a valid file name.
    pub path: String,
}

impl Entry {
    /// Whether this is a file (executable or not).
    pub fn is_file(&self) -> bool {
        self.kind != EntryKind::Directory
    }

    /// The last component of the path: the name in the file's own manifest.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    fn encode_into(&self, b: &mut BytesMut) {
        b.put_u8(self.kind as u8);
        b.put_u64(self.size);
        b.put_slice(&self.root.0);
        b.put_u16(self.path.len() as u16);
        b.put_slice(self.path.as_bytes());
    }
}

/// The canonical order of entries: by path, component by component, each
/// compared as bytes. A directory's entries follow it, and come before a
/// sibling whose name extends the directory's (`a`, `a/b`, `a-b`).
pub fn path_order(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

/// Checks a relative path: 1 to 4,095 bytes, each `/`-separated component a valid file name.
pub fn validate_path(path: &str) -> Result<(), ManifestError> {
    if path.is_empty() || path.len() > MAX_PATH_LEN {
        let shown = crate::text::clean(path, 64);
        return Err(ManifestError::BadName(format!("path \"{shown}\" is empty or longer than {MAX_PATH_LEN} bytes")));
    }
    path.split('/').try_for_each(validate_name)
}

/// A decoded folder manifest: the folder's name, its counts, and the hashes of its entry blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderManifest {
    /// The folder's name, a single safe path component.
    pub name: String,
    /// Number of entries.
    pub entries: u64,
    /// Sum of the file sizes.
    pub total_size: u64,
    /// Length of the entry stream in bytes.
    pub entry_bytes: u64,
    /// Hashes of the entry blobs, in order.
    pub blobs: Vec<Hash>,
}

impl FolderManifest {
    /// Whether `blob` is a folder manifest (by its magic) rather than a file's.
    pub fn is_folder(blob: &[u8]) -> bool {
        blob.starts_with(FOLDER_MAGIC)
    }

    /// Length entry blob `index` must have: 1 MiB, the last the remainder.
    pub fn blob_len(&self, index: usize) -> usize {
        let start = (index as u64).saturating_mul(PIECE_SIZE);
        self.entry_bytes.saturating_sub(start).min(PIECE_SIZE) as usize
    }

    /// The folder manifest blob; its SHA-256 is the folder's root.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(FIXED_HEAD + self.name.len() + COUNTS + 32 * self.blobs.len());
        b.put_slice(FOLDER_MAGIC);
        b.put_u8(FOLDER_VERSION);
        b.put_u16(self.name.len() as u16);
        b.put_slice(self.name.as_bytes());
        b.put_u64(self.entries);
        b.put_u64(self.total_size);
        b.put_u64(self.entry_bytes);
        b.put_u32(self.blobs.len() as u32);
        for h in &self.blobs {
            b.put_slice(&h.0);
        }
        b.freeze()
    }

    /// Parses and checks a folder manifest blob. Never panics on any input.
    pub fn parse(blob: &[u8]) -> Result<FolderManifest, ManifestError> {
        let head = blob.get(..FIXED_HEAD).ok_or(ManifestError::Truncated)?;
        if &head[..4] != FOLDER_MAGIC {
            return Err(ManifestError::BadMagic);
        }
        if head[4] != FOLDER_VERSION {
            return Err(ManifestError::BadVersion(head[4]));
        }
        let name_len = u16::from_be_bytes([head[5], head[6]]) as usize;
        let rest = &blob[FIXED_HEAD..];
        let (name, rest) = (rest.get(..name_len), rest.get(name_len..));
        let (Some(name), Some(rest)) = (name, rest) else { return Err(ManifestError::Truncated) };
        let name = std::str::from_utf8(name).map_err(|_| ManifestError::BadName("name is not UTF-8".into()))?;
        validate_name(name)?;
        let counts = rest.get(..COUNTS).ok_or(ManifestError::Truncated)?;
        let u64_at = |i: usize| u64::from_be_bytes(counts[i..i + 8].try_into().unwrap_or_default());
        let (entries, total_size, entry_bytes) = (u64_at(0), u64_at(8), u64_at(16));
        let count = u32::from_be_bytes(counts[24..28].try_into().unwrap_or_default()) as u64;
        let bad = |why: String| Err(ManifestError::BadFolder(why));
        if entries > MAX_ENTRIES {
            return bad(format!("{entries} entries, more than {MAX_ENTRIES}"));
        }
        let expected = entry_bytes.div_ceil(PIECE_SIZE);
        if count != expected {
            return Err(ManifestError::Inconsistent { size: entry_bytes, expected, got: count });
        }
        if count > MAX_ENTRY_BLOBS {
            return bad(format!("{count} entry blobs, more than {MAX_ENTRY_BLOBS}"));
        }
        // Each entry takes between ENTRY_HEAD + 1 and ENTRY_HEAD + MAX_PATH_LEN bytes.
        let (least, most) = (entries * (ENTRY_HEAD as u64 + 1), entries * (ENTRY_HEAD + MAX_PATH_LEN) as u64);
        if entry_bytes < least || entry_bytes > most {
            return bad(format!("{entry_bytes} bytes cannot hold {entries} entries"));
        }
        let hashes = &rest[COUNTS..];
        let want = count as usize * Hash::LEN;
        match hashes.len().cmp(&want) {
            Ordering::Less => return Err(ManifestError::Truncated),
            Ordering::Greater => return Err(ManifestError::Trailing(hashes.len() - want)),
            Ordering::Equal => {}
        }
        let blobs = hashes.chunks_exact(Hash::LEN).filter_map(Hash::from_slice).collect();
        Ok(FolderManifest { name: name.to_owned(), entries, total_size, entry_bytes, blobs })
    }
}

/// A folder: its manifest, entry blobs and decoded, checked entries.
#[derive(Clone, Debug)]
pub struct FolderInfo {
    /// The decoded folder manifest.
    pub manifest: FolderManifest,
    /// The manifest blob as sent on the wire.
    pub manifest_blob: Bytes,
    /// SHA-256 of the manifest blob: the folder's root.
    pub root: Hash,
    /// The entry blobs, in order.
    pub blobs: Vec<Bytes>,
    /// The entries, in canonical order.
    pub entries: Vec<Entry>,
}

impl FolderInfo {
    /// Builds the manifest and entry blobs of a folder named `name`. The entries
    /// are sorted into canonical order; they must pass [`FolderInfo::from_parts`]'s checks.
    pub fn new(name: &str, mut entries: Vec<Entry>) -> Result<FolderInfo, ManifestError> {
        entries.sort_by(|a, b| path_order(&a.path, &b.path));
        let mut stream = BytesMut::new();
        entries.iter().for_each(|e| e.encode_into(&mut stream));
        let stream = stream.freeze();
        let blobs: Vec<Bytes> = (0..stream.len())
            .step_by(PIECE_SIZE as usize)
            .map(|s| stream.slice(s..stream.len().min(s + PIECE_SIZE as usize)))
            .collect();
        let manifest = FolderManifest {
            name: name.to_owned(),
            entries: entries.len() as u64,
            total_size: entries.iter().map(|e| e.size).sum(),
            entry_bytes: stream.len() as u64,
            blobs: blobs.iter().map(|b| Hash::of(b)).collect(),
        };
        FolderInfo::from_parts(manifest.encode(), blobs)
    }

    /// Rebuilds a folder from its manifest blob and entry blobs (each already
    /// checked against its hash), refusing any entry that could write outside
    /// the folder or collide with another: a path not in canonical order or
    /// repeated, an unsafe component, an entry below a file or below an empty
    /// directory, counts that disagree with the manifest.
    pub fn from_parts(manifest_blob: Bytes, blobs: Vec<Bytes>) -> Result<FolderInfo, ManifestError> {
        let manifest = FolderManifest::parse(&manifest_blob)?;
        if blobs.len() != manifest.blobs.len() {
            return Err(ManifestError::Truncated);
        }
        for (index, b) in blobs.iter().enumerate() {
            if b.len() != manifest.blob_len(index) {
                return Err(ManifestError::BadList { index, len: b.len(), expected: manifest.blob_len(index) });
            }
        }
        let stream: Vec<u8> = blobs.iter().flat_map(|b| b.iter().copied()).collect();
        let entries = parse_entries(&stream, &manifest)?;
        Ok(FolderInfo { root: Hash::of(&manifest_blob), manifest, manifest_blob, blobs, entries })
    }

    /// The entries that are files.
    pub fn files(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.is_file())
    }
}

/// Decodes and checks the entry stream against its manifest.
fn parse_entries(mut s: &[u8], m: &FolderManifest) -> Result<Vec<Entry>, ManifestError> {
    let bad = |why: String| Err(ManifestError::BadFolder(why));
    let mut entries: Vec<Entry> = Vec::with_capacity(m.entries.min(1 << 16) as usize);
    let mut total: u64 = 0;
    while !s.is_empty() {
        let Some(head) = s.get(..ENTRY_HEAD) else { return bad("the last entry is cut short".into()) };
        let kind = match head[0] {
            0 => EntryKind::File,
            1 => EntryKind::Executable,
            2 => EntryKind::Directory,
            k => return bad(format!("entry {} has unknown kind {k}", entries.len())),
        };
        let size = u64::from_be_bytes(head[1..9].try_into().unwrap_or_default());
        let root = Hash::from_slice(&head[9..41]).unwrap_or_default();
        let len = u16::from_be_bytes([head[41], head[42]]) as usize;
        let Some(path) = s.get(ENTRY_HEAD..ENTRY_HEAD + len) else { return bad("the last entry is cut short".into()) };
        let path = std::str::from_utf8(path).map_err(|_| ManifestError::BadName("a path is not UTF-8".into()))?;
        validate_path(path)?;
        let shown = crate::text::clean(path, 64);
        if kind == EntryKind::Directory && (size != 0 || root != Hash::default()) {
            return bad(format!("directory \"{shown}\" has a size or root"));
        }
        if let Some(prev) = entries.last() {
            match path_order(&prev.path, path) {
                Ordering::Equal => return bad(format!("\"{shown}\" is listed twice")),
                Ordering::Greater => return bad(format!("\"{shown}\" is out of canonical order")),
                Ordering::Less => {}
            }
            // In canonical order anything below `prev` comes right after it.
            if path.len() > prev.path.len() && path.starts_with(&prev.path) && path.as_bytes()[prev.path.len()] == b'/'
            {
                let what = if prev.is_file() { "a file" } else { "an empty directory" };
                return bad(format!("\"{shown}\" is below {what}"));
            }
        }
        if entries.len() as u64 == m.entries {
            return bad(format!("more than the {} entries declared", m.entries));
        }
        total = total.checked_add(size).ok_or(ManifestError::BadFolder("sizes overflow".into()))?;
        entries.push(Entry { kind, size, root, path: path.to_owned() });
        s = &s[ENTRY_HEAD + len..];
    }
    if entries.len() as u64 != m.entries {
        return bad(format!("{} entries where {} are declared", entries.len(), m.entries));
    }
    if total != m.total_size {
        return bad(format!("sizes add up to {total}, the manifest says {}", m.total_size));
    }
    Ok(entries)
}

#[cfg(test)]
#[path = "folder_tests.rs"]
mod tests;
