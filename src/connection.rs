//! Framed I/O over one TCP connection: whole frames in, whole frames out,
//! sealed into Noise transport messages once the v2 handshake is done
//! ([`FrameReader::encrypted`], [`FrameWriter::encrypted`]). Knows the frame
//! layout, not what messages mean. A GIVE whose data lies in a mapped file is
//! read from the file with positioned reads, never through the mapping
//! (a truncated file is an error, not SIGBUS), straight into the buffer where
//! it is sealed ([`FrameWriter::write_give`]).

use crate::hash::Hash;
use crate::mapping::Body;
use crate::noise::{Cipher, NoiseError, LEN_PREFIX as MSG_PREFIX, MAX_PLAINTEXT, TAG_LEN};
use crate::ratelimit::RateLimiter;
use crate::wire::{self, Frame, FrameError};
use bytes::BytesMut;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Send and receive buffer size asked of the kernel for every socket: large
/// enough to keep a fast link full while the other side hashes.
pub const SOCKET_BUFFER: u32 = 4 << 20;

/// Unsent bytes a socket may hold before the writer waits (`TCP_NOTSENT_LOWAT`):
/// the writer picks the next ASK to answer only when the socket is nearly
/// drained, so the pick is late (see `peer::uploads`) and a control frame
/// never waits behind megabytes already queued in the kernel.
pub const UNSENT_MARK: u32 = 128 * 1024;

/// How much the read buffer grows by at a time while a large frame arrives,
/// so a peer that announces 1 MiB and stalls costs little memory.
const READ_CHUNK: usize = 256 * 1024;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The network failed or the peer closed mid-frame.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not a legal frame.
    #[error("protocol violation: {0}")]
    Protocol(#[from] FrameError),
    /// A transport message failed to decrypt (or the nonces ran out).
    #[error("secure channel: {0}")]
    Crypto(#[from] NoiseError),
}

/// The cipher that opens what arrives, and how much of the read buffer is
/// opened plaintext (the rest is ciphertext not yet opened).
struct Opening {
    cipher: Cipher,
    plain: usize,
}

impl Opening {
    /// Opens every whole transport message after the plaintext in `buf`,
    /// moving each one's plaintext down to join the plaintext before it in the
    /// same pass, then closes the gap before the partial message left (if
    /// any). True if it opened at least one.
    fn open_ready(&mut self, buf: &mut BytesMut) -> Result<bool, NoiseError> {
        let mut at = self.plain;
        let mut opened = false;
        while buf.len() - at >= MSG_PREFIX {
            let len = u16::from_be_bytes([buf[at], buf[at + 1]]) as usize;
            let end = at + MSG_PREFIX + len;
            if end > buf.len() {
                break;
            }
            let n = self.cipher.open_within(&mut buf[self.plain..end], at + MSG_PREFIX - self.plain)?.len();
            self.plain += n;
            at = end;
            opened = true;
        }
        if at > self.plain {
            let rest = buf.len() - at;
            buf.copy_within(at.., self.plain);
            buf.truncate(self.plain + rest);
        }
        Ok(opened)
    }
}

/// The reading half of a connection.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    received: Option<Arc<AtomicU64>>,
    opening: Option<Opening>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a plaintext byte stream (v1 framing; tests).
    pub fn new(inner: R) -> Self {
        FrameReader { inner, buf: BytesMut::with_capacity(64 * 1024), received: None, opening: None }
    }

    /// Wraps a stream whose frames arrive inside Noise transport messages
    /// opened with `cipher` (the v2 transport).
    pub fn encrypted(inner: R, cipher: Cipher) -> Self {
        let mut r = FrameReader::new(inner);
        r.opening = Some(Opening { cipher, plain: 0 });
        r
    }

    /// Counts every byte received into `counter`, so others can see a slow frame moving.
    pub fn count_into(&mut self, counter: Arc<AtomicU64>) {
        self.received = Some(counter);
    }

    /// The next frame, or `None` when the peer closed cleanly between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        self.read_frame_idle(None).await
    }

    /// Like [`read_frame`](Self::read_frame), but fails with `TimedOut` when no byte at
    /// all arrives for `idle`: a slow but moving frame is not cut off.
    pub async fn read_frame_idle(&mut self, idle: Option<std::time::Duration>) -> Result<Option<Frame>, ReadError> {
        loop {
            let (decoded, plain) = self.decode_plain();
            if let Some(frame) = decoded? {
                return Ok(Some(frame));
            }
            if let Some(o) = &mut self.opening {
                if o.open_ready(&mut self.buf)? {
                    continue;
                }
            }
            let want = wire::frame_size(&self.buf[..plain])?.unwrap_or(wire::LEN_PREFIX);
            let missing = want.saturating_sub(plain).max(1);
            // Grow by READ_CHUNK while a peer has sent little of a large frame; once it
            // has sent that much, take the rest at once (growing in steps would copy).
            let step = if plain >= READ_CHUNK / 4 { missing } else { missing.clamp(8 * 1024, READ_CHUNK) };
            // Encrypted, room for the prefixes and tags of the messages too.
            let overhead = if self.opening.is_some() { (step / MAX_PLAINTEXT + 2) * (MSG_PREFIX + TAG_LEN) } else { 0 };
            self.buf.reserve((self.buf.len() - plain) + step + overhead);
            let n = timed(idle, self.inner.read_buf(&mut self.buf)).await?;
            if let Some(c) = &self.received {
                c.fetch_add(n as u64, Ordering::Relaxed);
            }
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed in the middle of a frame").into());
            }
        }
    }

    /// Decodes a frame from the opened plaintext only (all of the buffer when
    /// not encrypted); returns it and how many plaintext bytes remain.
    fn decode_plain(&mut self) -> (Result<Option<Frame>, FrameError>, usize) {
        let Some(o) = &mut self.opening else {
            let r = wire::decode(&mut self.buf);
            return (r, self.buf.len());
        };
        let sealed = self.buf.split_off(o.plain);
        let r = wire::decode(&mut self.buf);
        o.plain = self.buf.len();
        self.buf.unsplit(sealed);
        (r, o.plain)
    }

    /// Bytes received but not yet decoded (a partial frame).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// Runs an I/O future, failing with `TimedOut` (saying `why`) after `limit` if one is given.
async fn within<T>(
    limit: Option<std::time::Duration>,
    why: &'static str,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match limit {
        Some(limit) => {
            tokio::time::timeout(limit, fut).await.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, why))?
        }
        None => fut.await,
    }
}

/// A read that fails with `TimedOut` when no byte arrives for `idle`.
async fn timed<T>(
    idle: Option<std::time::Duration>,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    within(idle, "peer silent", fut).await
}

/// A write that fails with `TimedOut` when the socket accepts nothing for `stall`.
async fn bounded<T>(
    stall: Option<std::time::Duration>,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    within(stall, "peer accepts no data", fut).await
}

/// Transport messages written at most per system call: a GIVE of 1 MiB goes
/// out in five writes, and the sealing buffer stays at 256 KiB.
const SEAL_BATCH: usize = 4;

/// The cipher that seals what this side sends, and the one buffer it seals into.
struct Sealing {
    cipher: Cipher,
    out: Vec<u8>,
}

/// Where the plaintext of a frame comes from: its head, then its data.
enum Source<'a> {
    Slice(&'a [u8]),
    Body(&'a Body),
}

impl Source<'_> {
    fn len(&self) -> usize {
        match self {
            Source::Slice(s) => s.len(),
            Source::Body(b) => b.len(),
        }
    }

    /// Copies `dst.len()` bytes from offset `off`; a mapped body by a
    /// positioned read of its file.
    fn copy(&self, off: usize, dst: &mut [u8]) -> io::Result<()> {
        match self {
            Source::Slice(s) => dst.copy_from_slice(&s[off..off + dst.len()]),
            Source::Body(b) => b.read_at(off, dst)?,
        }
        Ok(())
    }
}

impl Sealing {
    /// Seals the plaintext `head ++ data` into transport messages of at most
    /// `chunk` plaintext bytes and writes them, [`SEAL_BATCH`] per write.
    async fn send<W: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut W,
        parts: [Source<'_>; 2],
        limiter: Option<&RateLimiter>,
        stall: Option<std::time::Duration>,
    ) -> io::Result<()> {
        let chunk = limiter.map_or(MAX_PLAINTEXT, |l| l.chunk().clamp(1, MAX_PLAINTEXT));
        let total = parts[0].len() + parts[1].len();
        let mut done = 0;
        while done < total {
            // The buffer only grows, so it is zero-filled once, not per batch.
            let mut used = 0;
            let batch_start = done;
            for _ in 0..SEAL_BATCH {
                if done == total {
                    break;
                }
                let n = chunk.min(total - done);
                let at = used;
                used += MSG_PREFIX + n + TAG_LEN;
                if self.out.len() < used {
                    self.out.resize(used, 0);
                }
                self.out[at..at + MSG_PREFIX].copy_from_slice(&((n + TAG_LEN) as u16).to_be_bytes());
                let msg = &mut self.out[at + MSG_PREFIX..used];
                // Fill the plaintext from the head and/or the data.
                let mut filled = 0;
                let mut base = 0;
                for part in &parts {
                    let (from, to) = ((done + filled).max(base), (done + n).min(base + part.len()));
                    if from < to {
                        part.copy(from - base, &mut msg[filled..filled + (to - from)])?;
                        filled += to - from;
                    }
                    base += part.len();
                }
                self.cipher.seal(msg).map_err(io::Error::other)?;
                done += n;
            }
            if let Some(l) = limiter {
                l.acquire(done - batch_start).await;
            }
            bounded(stall, inner.write_all(&self.out[..used])).await?;
        }
        Ok(())
    }
}

/// The writing half of a connection.
pub struct FrameWriter<W> {
    inner: W,
    head: BytesMut,
    sealing: Option<Sealing>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a plaintext byte sink (v1 framing; tests).
    pub fn new(inner: W) -> Self {
        FrameWriter { inner, head: BytesMut::with_capacity(1024), sealing: None }
    }

    /// Wraps a sink whose frames go out inside Noise transport messages sealed
    /// with `cipher` (the v2 transport).
    pub fn encrypted(inner: W, cipher: Cipher) -> Self {
        let mut w = FrameWriter::new(inner);
        w.sealing = Some(Sealing { cipher, out: Vec::new() });
        w
    }

    /// Writes one frame; a GIVE's data goes out from where it lies (one vectored
    /// write of header and data), paced by `limiter` when there is one: then in
    /// small chunks, so even a limit far below one piece per second moves bytes steadily.
    pub async fn write_frame(&mut self, frame: &Frame, limiter: Option<&RateLimiter>) -> io::Result<()> {
        self.write_frame_within(frame, limiter, None).await
    }

    /// Like [`write_frame`](Self::write_frame), but fails with `TimedOut` when the
    /// socket accepts no byte for `stall` (time spent waiting on `limiter` does not count).
    pub async fn write_frame_within(
        &mut self,
        frame: &Frame,
        limiter: Option<&RateLimiter>,
        stall: Option<std::time::Duration>,
    ) -> io::Result<()> {
        self.head.clear();
        let data = frame.encode_head(&mut self.head);
        if let Some(s) = &mut self.sealing {
            let data = data.map_or(&[][..], |d| &d[..]);
            return s.send(&mut self.inner, [Source::Slice(&self.head), Source::Slice(data)], limiter, stall).await;
        }
        match (data, limiter) {
            (None, _) => bounded(stall, self.inner.write_all(&self.head)).await?,
            (Some(data), None) => {
                let mut bufs = [IoSlice::new(&self.head), IoSlice::new(data)];
                let mut bufs = &mut bufs[..];
                while !bufs.is_empty() {
                    let n = bounded(stall, self.inner.write_vectored(bufs)).await?;
                    if n == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    IoSlice::advance_slices(&mut bufs, n);
                }
            }
            (Some(data), Some(limiter)) => {
                bounded(stall, self.inner.write_all(&self.head)).await?;
                for chunk in data.chunks(limiter.chunk()) {
                    limiter.acquire(chunk.len()).await;
                    bounded(stall, self.inner.write_all(chunk)).await?;
                }
            }
        }
        Ok(())
    }

    /// Writes a GIVE of `body`. Encrypted, the data is read from where it lies
    /// (a mapped piece by positioned reads of its file, never through the
    /// mapping: a file truncated meanwhile is an error, not SIGBUS) straight
    /// into the buffer it is sealed in. Paced by `limiter` in small chunks when
    /// there is one; fails with `TimedOut` when the socket accepts nothing for `stall`.
    pub async fn write_give(
        &mut self,
        hash: &Hash,
        body: &Body,
        limiter: Option<&RateLimiter>,
        stall: Option<std::time::Duration>,
    ) -> io::Result<()> {
        self.head.clear();
        Frame::encode_give_head(&mut self.head, hash, body.len());
        if let Some(s) = &mut self.sealing {
            return s.send(&mut self.inner, [Source::Slice(&self.head), Source::Body(body)], limiter, stall).await;
        }
        let data = bytes::Bytes::from(body.to_vec()?);
        self.write_frame_within(&Frame::Give { hash: *hash, data }, limiter, stall).await
    }

    /// Writes arbitrary bytes as part of the frame stream, sealed like frames
    /// when the connection is encrypted: for tools and tests that send what
    /// the codec would never produce.
    pub async fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.sealing {
            Some(s) => s.send(&mut self.inner, [Source::Slice(bytes), Source::Slice(&[])], None, None).await,
            None => self.inner.write_all(bytes).await,
        }
    }

    /// Flushes and closes the sending direction.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
    }

    /// The underlying sink, for writing raw bytes (tests, fuzzing peers).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::Cipher;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn frames(sizes: &[usize]) -> Vec<Frame> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| match i % 3 {
                0 => Frame::Give { hash: Hash([i as u8; 32]), data: Bytes::from(vec![i as u8; n]) },
                1 => Frame::Ask(Hash([i as u8; 32])),
                _ => Frame::KeepAlive,
            })
            .collect()
    }

    /// Seals `frames` (some as a GIVE from a body), then delivers the bytes in
    /// chunks of `cut` bytes and reads them back.
    async fn through(frames: &[Frame], cut: usize) -> Vec<Frame> {
        let key = [3u8; 32];
        let mut w = FrameWriter::encrypted(Vec::new(), Cipher::new(&key));
        for f in frames {
            match f {
                Frame::Give { hash, data } if data.len() % 2 == 0 => {
                    w.write_give(hash, &Body::Memory(data.clone()), None, None).await.unwrap()
                }
                f => w.write_frame(f, None).await.unwrap(),
            }
        }
        let sealed = std::mem::take(w.get_mut());
        let (mut tx, rx) = tokio::io::duplex(cut.max(1));
        let feed = tokio::spawn(async move {
            for c in sealed.chunks(cut.max(1)) {
                tx.write_all(c).await.unwrap();
            }
        });
        let mut r = FrameReader::encrypted(rx, Cipher::new(&key));
        let mut out = Vec::new();
        while let Some(f) = r.read_frame().await.unwrap() {
            out.push(f);
        }
        feed.await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_full_piece_and_small_frames_cross_message_boundaries_intact() {
        let fs = frames(&[wire::MAX_BLOB_LEN, 0, 0, 65_519 - 37, 3, 1, 200_000]);
        for cut in [1, 2, 7, 65_537, 1 << 20] {
            assert_eq!(through(&fs, cut).await, fs, "delivered in chunks of {cut}");
        }
    }

    #[tokio::test]
    async fn a_tampered_byte_anywhere_fails_the_read() {
        let key = [5u8; 32];
        let mut w = FrameWriter::encrypted(Vec::new(), Cipher::new(&key));
        w.write_frame(&Frame::Give { hash: Hash([1; 32]), data: Bytes::from(vec![9; 100_000]) }, None).await.unwrap();
        let sealed = std::mem::take(w.get_mut());
        for at in [2, 100, 65_536, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 0x80;
            let mut r = FrameReader::encrypted(&bad[..], Cipher::new(&key));
            assert!(matches!(r.read_frame().await, Err(ReadError::Crypto(_))), "byte {at}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_frames_in_any_chunks_come_back(sizes in proptest::collection::vec(0usize..150_000, 1..8), cut in 1usize..70_000) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let fs = frames(&sizes);
            prop_assert_eq!(rt.block_on(through(&fs, cut)), fs);
        }
    }
}
