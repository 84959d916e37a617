//! Framed I/O over one TCP connection: whole frames in, whole frames out.
//! Knows the frame layout, not what messages mean. A GIVE whose data lies in
//! a mapped file is written by the kernel straight from the mapping
//! ([`FrameWriter::write_give`]), never read by pex itself.

use crate::hash::Hash;
use crate::mapping::Body;
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
}

/// The reading half of a connection.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    received: Option<Arc<AtomicU64>>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a byte stream.
    pub fn new(inner: R) -> Self {
        FrameReader { inner, buf: BytesMut::with_capacity(64 * 1024), received: None }
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
            let read = self.inner.read_buf(&mut self.buf);
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
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed in the middle of a frame").into());
            }
        }
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

/// The writing half of a connection.
pub struct FrameWriter<W> {
    inner: W,
    head: BytesMut,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a byte sink.
    pub fn new(inner: W) -> Self {
        FrameWriter { inner, head: BytesMut::with_capacity(1024) }
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
