//! Memory-mapped files, and the only code in pex that touches mapped memory.
//!
//! A mapped file can change under us: another program may truncate or rewrite
//! a seeded file, or a `.part` we write. Reading such memory through a Rust
//! reference would be undefined behaviour (the bytes change under a `&[u8]`)
//! or a SIGBUS (pages past the new end of file). So pex's own code never reads
//! a mapping: a served range is a [`MappedRange`], an opaque value whose bytes
//! are copied out with positioned reads of the file (an error, not SIGBUS,
//! when the file shrank), straight into the buffer they are sealed in. Writes into a
//! writable mapping go through [`Mapping::write`], an `unsafe fn` whose
//! contract the store upholds.

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions, MmapRaw, UncheckedAdvice};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A whole file mapped, read-only (a seeded source) or writable (a `.part`).
pub struct Mapping {
    kind: Kind,
    file: Arc<File>,
    len: usize,
}

enum Kind {
    ReadOnly(Mmap),
    Writable(MmapRaw),
}

impl Mapping {
    /// Maps `len` bytes of `file` read-only.
    pub fn read_only(file: Arc<File>, len: usize) -> io::Result<Mapping> {
        // SAFETY: memmap2 marks `map` unsafe because the file may change while
        // mapped, which would make a `&[u8]` into it unsound. This module never
        // makes one: the mapping's bytes are never read through it (see the
        // module docs), so a change or truncation cannot reach Rust code.
        let map = unsafe { MmapOptions::new().len(len).map(&*file)? };
        Ok(Mapping { kind: Kind::ReadOnly(map), file, len })
    }

    /// Maps `len` bytes of `file` (opened read-write) writable and shared.
    pub fn writable(file: Arc<File>, len: usize) -> io::Result<Mapping> {
        let map = MmapOptions::new().len(len).map_raw(&*file)?;
        Ok(Mapping { kind: Kind::Writable(map), file, len })
    }

    /// Copies `data` to offset `off` of a writable mapping, faulting the pages
    /// in with one call, then drops them from our page tables.
    ///
    /// # Safety
    /// No other thread may read or write `off..off + data.len()` of this
    /// mapping during the call (the store hands each piece's range to one
    /// writer, once, before anyone may serve it). A file truncated by another
    /// process meanwhile makes the copy fault with SIGBUS, like any write to a
    /// mapping; pex creates `.part` files itself and never truncates them.
    pub(crate) unsafe fn write(&self, off: usize, data: &[u8]) -> io::Result<()> {
        let Kind::Writable(raw) = &self.kind else {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "mapping is read-only"));
        };
        if off.checked_add(data.len()).is_none_or(|end| end > self.len) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "write beyond the end of the mapping"));
        }
        // One call (Linux 5.14+) instead of one trap per 4 KiB page during the copy.
        let _ = raw.advise_range(memmap2::Advice::PopulateWrite, off, data.len());
        // SAFETY: the range is inside the mapping (checked above) and, by the
        // caller's contract, no other thread touches it during the copy.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), raw.as_mut_ptr().add(off), data.len()) };
        self.release(off, data.len());
        Ok(())
    }

    /// Drops the page-table entries for a range: the pages stay in the page
    /// cache (dirty ones are written back) but no longer count as our memory.
    fn release(&self, off: usize, len: usize) {
        // SAFETY: DONTNEED on a shared file mapping only unmaps pages; their
        // contents stay in the page cache and reappear on the next access.
        let _ = unsafe {
            match &self.kind {
                Kind::ReadOnly(m) => m.unchecked_advise_range(UncheckedAdvice::DontNeed, off, len),
                Kind::Writable(m) => m.unchecked_advise_range(UncheckedAdvice::DontNeed, off, len),
            }
        };
    }
}

/// A range of a mapped file, read only by positioned reads. It keeps the mapping
/// alive and releases its pages when dropped.
pub struct MappedRange {
    map: Arc<Mapping>,
    off: usize,
    len: usize,
}

impl MappedRange {
    /// The range `off..off + len` of `map`, if it lies inside it.
    pub fn new(map: Arc<Mapping>, off: usize, len: usize) -> Option<MappedRange> {
        (off.checked_add(len)? <= map.len).then_some(MappedRange { map, off, len })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty range.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads the range's current bytes from the file with a positioned read
    /// (never through the mapping): a truncated file gives an error, not SIGBUS.
    pub fn copy_out(&self) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; self.len];
        self.read_at(0, &mut v)?;
        Ok(v)
    }

    /// Reads `dst.len()` bytes at offset `off` of the range with a positioned
    /// read of the file (never through the mapping).
    pub fn read_at(&self, off: usize, dst: &mut [u8]) -> io::Result<()> {
        if off.checked_add(dst.len()).is_none_or(|end| end > self.len) {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.map.file.read_exact_at(dst, (self.off + off) as u64)
    }
}

impl Drop for MappedRange {
    fn drop(&mut self) {
        self.map.release(self.off, self.len);
    }
}

impl std::fmt::Debug for MappedRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedRange({}..{})", self.off, self.off + self.len)
    }
}

/// The bytes of a blob to send: in memory (manifests, hash lists) or a range
/// of a mapped file (pieces), read only by positioned reads of the file.
#[derive(Debug)]
pub enum Body {
    /// Owned bytes.
    Memory(Bytes),
    /// A piece in a mapped file.
    Mapped(MappedRange),
    /// A piece of a file opened for this GIVE alone: a folder's files are not
    /// kept open (or mapped), so a tree of any number of files fits the
    /// descriptor limit.
    File(FileRange),
}

/// A range of a file opened for one read, read with positioned reads.
#[derive(Debug)]
pub struct FileRange {
    file: File,
    off: u64,
    len: usize,
}

impl FileRange {
    /// The range `off..off + len` of `file`.
    pub fn new(file: File, off: u64, len: usize) -> FileRange {
        FileRange { file, off, len }
    }

    fn read_at(&self, off: usize, dst: &mut [u8]) -> io::Result<()> {
        if off.checked_add(dst.len()).is_none_or(|end| end > self.len) {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.file.read_exact_at(dst, self.off + off as u64)
    }
}

impl Body {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Body::Memory(b) => b.len(),
            Body::Mapped(m) => m.len(),
            Body::File(f) => f.len,
        }
    }

    /// True for an empty blob.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, copied (from the file for a mapped range). For tests and tools, not the data path.
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        match self {
            Body::Memory(b) => Ok(b.to_vec()),
            Body::Mapped(m) => m.copy_out(),
            Body::File(f) => {
                let mut v = vec![0u8; f.len];
                f.read_at(0, &mut v)?;
                Ok(v)
            }
        }
    }

    /// Copies `dst.len()` bytes from offset `off` into `dst`; a mapped range by
    /// a positioned read of its file (see [`MappedRange::read_at`]).
    pub fn read_at(&self, off: usize, dst: &mut [u8]) -> io::Result<()> {
        match self {
            Body::Memory(b) => {
                let src = b.get(off..off + dst.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
                dst.copy_from_slice(src);
                Ok(())
            }
            Body::Mapped(m) => m.read_at(off, dst),
            Body::File(f) => f.read_at(off, dst),
        }
    }
}
