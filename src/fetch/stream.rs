//! Streaming a file to standard output (`pex fetch ROOT -o -`): pieces are
//! asked for only within [`WINDOW`] pieces of the write position (rarest
//! first inside it, so the swarm still trades), kept in memory once verified
//! (and served from there to other peers), and written in order. Memory is
//! bounded by the window plus the blobs in flight, whatever the file size.

use super::blobs::Blobs;
use crate::hash::Hash;
use crate::store::Store;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::io;
use tokio::io::AsyncWriteExt;

/// Pieces ahead of the write position that may be asked for: with
/// [`MAX_INFLIGHT`](super::MAX_INFLIGHT) in transit, at most 32 MiB of file
/// data is held.
pub const WINDOW: u32 = 16;

/// The write position and the verified pieces waiting for it.
pub(super) struct Stream {
    /// The next piece to write.
    next: u32,
    /// Verified pieces not yet written, by piece index. Identical pieces share one buffer.
    ready: BTreeMap<u32, Bytes>,
    out: tokio::io::Stdout,
}

impl Stream {
    pub fn new() -> Stream {
        Stream { next: 0, ready: BTreeMap::new(), out: tokio::io::stdout() }
    }

    /// Whether blob `b` may not be asked for yet: every piece of it still to
    /// be written lies at or beyond the window.
    pub fn beyond_window(&self, blobs: &Blobs, b: usize) -> bool {
        let end = self.next.saturating_add(WINDOW);
        !blobs.pieces_of[b].iter().any(|&p| p >= self.next && p < end)
    }

    /// Keeps a verified blob for every piece of it not yet written.
    pub fn hold(&mut self, pieces: &[u32], data: &Bytes) {
        for &p in pieces.iter().filter(|&&p| p >= self.next) {
            self.ready.insert(p, data.clone());
        }
    }

    /// Whether every piece has been written.
    pub fn is_drained(&self) -> bool {
        self.ready.is_empty()
    }

    /// Writes the pieces that are next in order; a blob no longer needed for
    /// a later piece stops being served. Returns the bytes written.
    pub async fn drain(&mut self, blobs: &Blobs, store: &Store) -> io::Result<u64> {
        let mut written = 0;
        while let Some(data) = self.ready.remove(&self.next) {
            self.out.write_all(&data).await?;
            written += data.len() as u64;
            let b = blobs.blob_of[self.next as usize] as usize;
            self.next += 1;
            if !blobs.pieces_of[b].iter().any(|p| self.ready.contains_key(p)) {
                store.remove_blob(&blobs.hashes[b]);
            }
        }
        if written > 0 {
            self.out.flush().await?;
        }
        Ok(written)
    }

    /// The hash of every blob still held (to stop serving them when the stream ends early).
    pub fn held(&self, blobs: &Blobs) -> Vec<Hash> {
        self.ready.keys().map(|p| blobs.hashes[blobs.blob_of[*p as usize] as usize]).collect()
    }
}
