//! A live connection's two tasks: the reader (frames to the handler and to
//! ASK routes, ASKs into a queue) and the writer (control frames first, then
//! answers to queued ASKs; keep-alives when idle).
//!
//! The writer picks the next ASK to answer only when the socket can take more
//! (the socket's unsent-data mark keeps little queued in the kernel), and picks
//! it by the node's [`UploadLog`]: blobs sent least lately first, a blob just
//! sent to another peer held back while others can go. Until then a queued ASK
//! can still be CANCELled.
//!
//! Every ASK takes one of [`MAX_QUEUED_ASKS`] slots when it is read and gives
//! it back only once its answer (GIVE or DONT_HAVE) is written to the socket:
//! a peer that asks and never reads stops being read, whatever it asks for.

use super::handshake::linger_close;
use super::uploads::{Choice, UploadLog};
use super::{Handler, Outbox, PeerConn, PeerError, MAX_QUEUED_ASKS};
use crate::connection::{FrameReader, FrameWriter};
use crate::hash::Hash;
use crate::lock;
use crate::text::shown;
use crate::wire::{Frame, RejectCode};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Control frames a closing connection still writes, at most, before its last frame.
const MAX_DRAINED: usize = 64;

/// A connection's queue of ASKs to answer, bounded by permits.
struct AskQueue {
    queue: Mutex<VecDeque<(Hash, OwnedSemaphorePermit)>>,
    slots: Arc<Semaphore>,
    ready: Notify,
}

impl AskQueue {
    /// The next ASK to answer, as `log` ranks them; waits while the queue is
    /// empty or every blob in it is held back.
    async fn pop(&self, log: &UploadLog) -> (Hash, OwnedSemaphorePermit) {
        loop {
            let released = log.released();
            tokio::pin!(released);
            released.as_mut().enable();
            let wait = {
                let mut queue = lock(&self.queue);
                match log.choose(queue.iter().map(|(h, _)| h), Instant::now().into_std()) {
                    Some(Choice::Now(i)) => {
                        if let Some(item) = queue.remove(i) {
                            return item;
                        }
                        None
                    }
                    Some(Choice::Wait(at)) => Some(Instant::from_std(at)),
                    None => None,
                }
            };
            match wait {
                Some(at) => {
                    tokio::select! {
                        _ = self.ready.notified() => {}
                        _ = released => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => self.ready.notified().await,
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run<H: Handler>(
    handler: Arc<H>,
    conn: Arc<PeerConn>,
    mut reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
    outbox: Outbox,
    keepalive: Duration,
    idle: Duration,
    _permit: OwnedSemaphorePermit,
) {
    let asks = Arc::new(AskQueue {
        queue: Mutex::new(VecDeque::new()),
        slots: Arc::new(Semaphore::new(MAX_QUEUED_ASKS)),
        ready: Notify::new(),
    });
    let writer_task =
        tokio::spawn(write_loop(handler.clone(), conn.clone(), writer, outbox.0, asks.clone(), keepalive, idle));
    let result = read_loop(&*handler, &conn, &mut reader, &asks, idle).await;
    match &result {
        Ok(()) => {}
        Err(PeerError::Protocol(reason)) => {
            tracing::info!(peer = %conn.addr, "protocol violation: {}", shown(reason));
            conn.close(Some(Frame::reject(RejectCode::ProtocolViolation, reason)));
        }
        Err(PeerError::Misbehaving(reason)) => {
            tracing::info!(peer = %conn.addr, "misbehaving: {}", shown(reason));
            conn.close(Some(Frame::reject(RejectCode::Misbehaving, reason)));
        }
        Err(e) => {
            tracing::debug!(peer = %conn.addr, "connection ended: {e}");
            conn.close(None);
        }
    }
    conn.close.cancel();
    if let Ok(Some(mut writer)) = writer_task.await {
        let last = lock(&conn.close_frame).take().or_else(|| handler.farewell());
        linger_close(&mut writer, &mut reader, last).await;
    }
    handler.on_closed(&conn, &result);
    let stats = &conn.stats;
    tracing::info!(
        peer = %conn.addr,
        id = %conn.node_id.short(),
        uploaded = stats.uploaded.load(Ordering::Relaxed),
        downloaded = stats.downloaded.load(Ordering::Relaxed),
        "peer left"
    );
}

async fn read_loop<H: Handler>(
    handler: &H,
    conn: &Arc<PeerConn>,
    reader: &mut FrameReader<OwnedReadHalf>,
    asks: &AskQueue,
    idle: Duration,
) -> Result<(), PeerError> {
    loop {
        let frame = tokio::select! {
            _ = conn.close.cancelled() => return Ok(()),
            r = reader.read_frame_idle(Some(idle)) => match r {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        };
        match frame {
            Frame::KeepAlive | Frame::Unknown { .. } => {}
            Frame::Hello(_) => return Err(PeerError::Protocol("second HELLO".into())),
            Frame::Reject { code, retry_after, reason } => {
                tracing::debug!(peer = %conn.addr, code, retry_after, "peer closed with REJECT: {}", shown(&reason));
                return Err(PeerError::Rejected { code, retry_after, reason });
            }
            Frame::Ask(hash) => {
                let slot = tokio::select! {
                    _ = conn.close.cancelled() => return Ok(()),
                    p = asks.slots.clone().acquire_owned() => p.map_err(|_| PeerError::Closed)?,
                };
                lock(&asks.queue).push_back((hash, slot));
                asks.ready.notify_one();
            }
            Frame::Cancel(hash) => lock(&asks.queue).retain(|(h, _)| *h != hash),
            Frame::Give { hash, data } => {
                conn.stats.downloaded.fetch_add(data.len() as u64, Ordering::Relaxed);
                handler.on_transfer(0, data.len() as u64);
                if !conn.deliver_give(hash, data) && conn.unsolicited_give() {
                    return Err(PeerError::Misbehaving("too many GIVEs nobody asked for".into()));
                }
            }
            Frame::DontHave(hash) => conn.deliver_dont_have(hash),
            Frame::Peers(peers) => handler.on_peers(conn, peers),
            Frame::Bitfield { root, first, bits } => handler.on_bitfield(conn, root, first, bits)?,
            Frame::Have { root, index } => handler.on_have(conn, root, index)?,
            room @ (Frame::Join(_)
            | Frame::Leave(_)
            | Frame::Members { .. }
            | Frame::Message(_)
            | Frame::Direct { .. }
            | Frame::Presence(_)) => handler.on_room(conn, room)?,
        }
    }
}

/// Sends frames until the connection closes; returns the writer for the final REJECT.
async fn write_loop<H: Handler>(
    handler: Arc<H>,
    conn: Arc<PeerConn>,
    mut writer: FrameWriter<OwnedWriteHalf>,
    mut ctrl_rx: mpsc::UnboundedReceiver<Frame>,
    asks: Arc<AskQueue>,
    keepalive: Duration,
    write_timeout: Duration,
) -> Option<FrameWriter<OwnedWriteHalf>> {
    let mut last_write = Instant::now();
    loop {
        let next = tokio::select! {
            biased;
            _ = conn.close.cancelled() => {
                // What was queued before the close still goes out first (a room's
                // LEAVE and "leaving" PRESENCE before a shutdown's REJECT), within the linger.
                let drain = async {
                    for _ in 0..MAX_DRAINED {
                        let Ok(f) = ctrl_rx.try_recv() else { return true };
                        if writer.write_frame(&f, None).await.is_err() {
                            return false;
                        }
                    }
                    true
                };
                let drained = tokio::time::timeout(super::LINGER, drain).await.unwrap_or(false);
                return drained.then_some(writer);
            }
            f = ctrl_rx.recv() => match f { Some(f) => Ok(f), None => return Some(writer) },
            ask = asks.pop(handler.uploads()) => Err(ask),
            _ = tokio::time::sleep_until(last_write + keepalive) => Ok(Frame::KeepAlive),
        };
        let start = Instant::now();
        // An answer holds its ASK slot until written.
        let (frame, answer) = match next {
            Ok(frame) => (Some(frame), None),
            Err((hash, slot)) => match handler.blob(&hash) {
                Some(body) => (None, Some((hash, body, slot))),
                None => {
                    handler.uploads().finished(hash, 0, start.into_std(), start.into_std());
                    (Some(Frame::DontHave(hash)), None)
                }
            },
        };
        let written = {
            let write = async {
                match (&frame, &answer) {
                    (Some(frame), _) => writer.write_frame_within(frame, None, Some(write_timeout)).await,
                    (None, Some((hash, body, _))) => {
                        writer.write_give(hash, body, handler.limiter(), Some(write_timeout)).await
                    }
                    (None, None) => Ok(()),
                }
            };
            tokio::pin!(write);
            tokio::select! {
                // Closing mid-write: the frame is finished (within the linger) so that
                // the stream stays whole for what was queued and the last frame; a
                // peer that does not read gets no more.
                _ = conn.close.cancelled() => tokio::time::timeout(super::LINGER, &mut write).await.ok(),
                r = &mut write => Some(r),
            }
        };
        if !matches!(written, Some(Ok(()))) {
            // Not sent after all: others may have the blob at once.
            if let Some((hash, ..)) = answer {
                handler.uploads().finished(hash, 0, start.into_std(), start.into_std());
            }
            if let Some(Err(e)) = written {
                tracing::debug!(peer = %conn.addr, "write failed: {}", crate::text::io_message(&e));
                conn.close(None);
            }
            return None;
        }
        last_write = Instant::now();
        if let Some((hash, body, _slot)) = answer {
            handler.uploads().finished(hash, body.len(), start.into_std(), last_write.into_std());
            conn.stats.uploaded.fetch_add(body.len() as u64, Ordering::Relaxed);
            handler.on_transfer(body.len() as u64, 0);
        }
    }
}
