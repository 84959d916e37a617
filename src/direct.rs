//! Whole pieces written to a `.part` file with `O_DIRECT`: from an aligned
//! buffer straight to the disk, bypassing the page cache.
//!
//! Why: filling a fresh file through the page cache costs more CPU than
//! anything else in a fetch. Through a shared mapping each page faults, is
//! zero-filled and marked dirty, then written back; through `pwrite` it costs
//! more still. A direct write hands the disk the buffer (measured on 1 GiB:
//! see README, Performance). Pieces whose length is not a multiple of the
//! block size (the last one), and file systems that refuse `O_DIRECT`, take
//! the caller's other path.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Alignment of buffer, offset and length: the largest logical block size in use.
pub const ALIGN: usize = 4096;

/// A second descriptor of a file, opened with `O_DIRECT`.
#[derive(Debug)]
pub struct DirectFile {
    file: File,
    /// Cleared when the file system refuses a direct write.
    working: AtomicBool,
}

thread_local! {
    /// One aligned staging buffer per writing thread, grown as needed.
    static STAGING: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl DirectFile {
    /// Opens `path` for direct writes; `None` where the file system has no `O_DIRECT`.
    pub fn open(path: &Path) -> Option<DirectFile> {
        let file = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path).ok()?;
        Some(DirectFile { file, working: AtomicBool::new(true) })
    }

    /// Writes `data` at `off` if both are block-aligned and direct writes work
    /// here; `Ok(false)` when the caller must write it another way.
    pub fn write_at(&self, off: u64, data: &[u8]) -> io::Result<bool> {
        if !self.working.load(Ordering::Relaxed)
            || data.is_empty()
            || data.len() % ALIGN != 0
            || off % ALIGN as u64 != 0
        {
            return Ok(false);
        }
        let written = STAGING.with(|staging| {
            let mut staging = staging.borrow_mut();
            let need = data.len() + ALIGN;
            if staging.len() < need {
                staging.resize(need, 0);
            }
            let start = staging.as_ptr().align_offset(ALIGN);
            let buf = &mut staging[start..start + data.len()];
            buf.copy_from_slice(data);
            self.file.write_all_at(buf, off)
        });
        match written {
            Ok(()) => Ok(true),
            // The file system takes O_DIRECT at open but not this write: stop trying.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.working.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_pieces_go_direct_and_the_rest_is_left_to_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.part");
        std::fs::write(&path, vec![0u8; 3 * 65536 + 100]).unwrap();
        let Some(d) = DirectFile::open(&path) else {
            eprintln!("SKIPPED: the temp directory's file system has no O_DIRECT");
            return;
        };
        let piece: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        assert!(d.write_at(65536, &piece).unwrap());
        assert!(!d.write_at(3 * 65536, &[1u8; 100]).unwrap(), "not a whole block");
        assert!(!d.write_at(100, &piece).unwrap(), "not at a block boundary");
        // Unaligned source memory is staged, so any slice works.
        assert!(d.write_at(2 * 65536, &piece[..]).unwrap());
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[65536..131072], &piece[..]);
        assert_eq!(&back[131072..196608], &piece[..]);
        assert!(back[..65536].iter().all(|b| *b == 0));
    }
}
