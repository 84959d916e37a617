//! Framed I/O over one TCP connection: whole frames in, whole frames out,
//! sealed into Noise transport messages once the v2 handshake is done
//! ([`FrameReader::encrypted`], [`FrameWriter::encrypted`]). Knows the frame
//! layout, not what messages mean. A GIVE whose data lies in a mapped file is
//! read from the file with positioned reads, never through the mapping
//! (a truncated file is an error, not SIGBUS), straight into the buffer where
//! it is sealed; unencrypted (tests, the v1 answer) the kernel reads it from
//! the mapping itself ([`FrameWriter::write_give`]).

use crate::hash::Hash;
use crate::mapping::Body;
use crate::noise::{Cipher, NoiseError, LEN_PREFIX as MSG_PREFIX, MAX_MESSAGE, MAX_PLAINTEXT, TAG_LEN};
use crate::ratelimit::RateLimiter;
use crate::wire::{self, Frame, FrameError};
use bytes::BytesMut;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Send and receive buffer size asked of the kernel for every socket: large
/// enough to keep a fast link full while the other side hashes.
pub const SOCKET_BUFFER: u32 = 4 << 20;

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

/// Ciphertext received and not yet opened, and the cipher that opens it.
struct Opening {
    cipher: Cipher,
    raw: BytesMut,
}

impl Opening {
    /// Opens every whole transport message in `raw`, appending the plaintext
    /// to `plain`; returns how many plaintext bytes it added.
    fn open_into(&mut self, plain: &mut BytesMut) -> Result<usize, NoiseError> {
        let before = plain.len();
        loop {
            if self.raw.len() < MSG_PREFIX {
                break;
            }
            let len = u16::from_be_bytes([self.raw[0], self.raw[1]]) as usize;
            if self.raw.len() < MSG_PREFIX + len {
                break;
            }
            let mut msg = self.raw.split_to(MSG_PREFIX + len);
            let text = self.cipher.open(&mut msg[MSG_PREFIX..])?;
            plain.extend_from_slice(text);
        }
        Ok(plain.len() - before)
    }

    /// Bytes still missing from the transport message at the front of `raw`.
    fn missing(&self) -> usize {
        if self.raw.len() < MSG_PREFIX {
            return MSG_PREFIX - self.raw.len();
        }
        let len = u16::from_be_bytes([self.raw[0], self.raw[1]]) as usize;
        (MSG_PREFIX + len).saturating_sub(self.raw.len())
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
        r.opening = Some(Opening { cipher, raw: BytesMut::with_capacity(MAX_MESSAGE + MSG_PREFIX) });
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
            if let Some(frame) = wire::decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            let want = wire::frame_size(&self.buf)?.unwrap_or(wire::LEN_PREFIX);
            let missing = want.saturating_sub(self.buf.len()).max(1);
            // Grow by READ_CHUNK while a peer has sent little of a large frame; once it
            // has sent that much, take the rest at once (growing in steps would copy).
            let step = if self.buf.len() >= READ_CHUNK / 4 { missing } else { missing.clamp(8 * 1024, READ_CHUNK) };
            self.buf.reserve(step);
            let target = match &mut self.opening {
                Some(o) => {
                    if o.open_into(&mut self.buf)? > 0 {
                        continue;
                    }
                    // Room for the rest of this transport message and a few more.
                    o.raw.reserve(o.missing().max(READ_CHUNK));
                    &mut o.raw
                }
                None => &mut self.buf,
            };
            let read = self.inner.read_buf(target);
            let n = match idle {
                Some(idle) => tokio::time::timeout(idle, read)
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer silent"))??,
                None => read.await?,
            };
            if let Some(c) = &self.received {
                c.fetch_add(n as u64, Ordering::Relaxed);
            }
            if n == 0 {
                let partial = self.opening.as_ref().is_some_and(|o| !o.raw.is_empty());
                if self.buf.is_empty() && !partial {
                    return Ok(None);
                }
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed in the middle of a frame").into());
            }
        }
    }

    /// Bytes received but not yet decoded (a partial frame or transport message).
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.opening.as_ref().map_or(0, |o| o.raw.len())
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// Runs an I/O future, failing with `TimedOut` after `limit` if one is given.
async fn bounded<T>(
    limit: Option<std::time::Duration>,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer accepts no data"))?,
        None => fut.await,
    }
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
            self.out.clear();
            let batch_start = done;
            for _ in 0..SEAL_BATCH {
                if done == total {
                    break;
                }
                let n = chunk.min(total - done);
                let at = self.out.len();
                self.out.resize(at + MSG_PREFIX + n + TAG_LEN, 0);
                self.out[at..at + MSG_PREFIX].copy_from_slice(&((n + TAG_LEN) as u16).to_be_bytes());
                let msg = &mut self.out[at + MSG_PREFIX..];
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
            bounded(stall, inner.write_all(&self.out)).await?;
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

impl<W: AsyncWrite + Unpin + AsRef<TcpStream>> FrameWriter<W> {
    /// Writes a GIVE of `body` with `sendmsg`, the kernel reading the data from
    /// where it lies (a mapped file, see [`crate::mapping`]): a page that
    /// vanished because the file was truncated fails the write with `EFAULT`
    /// instead of raising SIGBUS. Paced by `limiter` in small chunks when there
    /// is one; fails with `TimedOut` when the socket accepts nothing for `stall`.
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
        let body = body.iovec();
        // Addresses as integers: the vectors are rebuilt for each system call, so
        // nothing that is not `Send` lives across an await.
        let parts = [(self.head.as_ptr() as usize, self.head.len()), (body.iov_base as usize, body.iov_len)];
        let total = self.head.len() + body.iov_len;
        let stream: &TcpStream = self.inner.as_ref();
        let mut sent = 0;
        while sent < total {
            let end = match limiter {
                Some(l) => {
                    let n = l.chunk().min(total - sent);
                    l.acquire(n).await;
                    sent + n
                }
                None => total,
            };
            while sent < end {
                let n = bounded(stall, send_raw(stream, window(&parts, sent, end))).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                sent += n;
            }
        }
        Ok(())
    }
}

/// The bytes `from..to` of the concatenation of `parts` (address, length).
fn window(parts: &[(usize, usize); 2], from: usize, to: usize) -> [(usize, usize); 2] {
    let mut out = [(0, 0); 2];
    let mut base = 0;
    for (i, &(addr, len)) in parts.iter().enumerate() {
        let (start, end) = (from.max(base), to.min(base + len));
        if start < end {
            out[i] = (addr + (start - base), end - start);
        }
        base += len;
    }
    out
}

/// One `sendmsg` of the non-empty `parts` on a non-blocking socket, waiting for it to be writable.
async fn send_raw(stream: &TcpStream, parts: [(usize, usize); 2]) -> io::Result<usize> {
    loop {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            let mut iovs = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2];
            let mut count = 0;
            for &(addr, len) in parts.iter().filter(|p| p.1 > 0) {
                iovs[count] = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: len };
                count += 1;
            }
            // SAFETY: msghdr is plain data, zeroed is a valid empty header.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iovs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = count as _;
            // SAFETY: the vectors point at live memory: the writer's head buffer and a
            // blob body that the caller keeps alive across this call. The kernel only
            // reads them, and reports an unmapped page as EFAULT. MSG_NOSIGNAL: a
            // closed peer is an EPIPE error, not a signal.
            let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}
