//! Setting a connection up: dialling, the HELLO exchange, refusing with a
//! REJECT, and closing gently so that a final REJECT is not lost to a reset.

use super::{tasks, Handler, Outbox, PeerConn, PeerError, LINGER};
use crate::connection::{FrameReader, FrameWriter, ReadError, SOCKET_BUFFER};
use crate::timeouts::Timeouts;
use crate::wire::{Frame, Hello, RejectCode};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;

use super::Direction;

/// Opens a TCP connection to `addr` with large socket buffers, within `dial` time.
pub async fn dial(addr: SocketAddr, dial: Duration) -> Result<TcpStream, PeerError> {
    tracing::debug!(peer = %addr, "dialling");
    let socket = if addr.is_ipv6() { tokio::net::TcpSocket::new_v6()? } else { tokio::net::TcpSocket::new_v4()? };
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    match timeout(dial, socket.connect(addr)).await {
        Err(_) => Err(PeerError::Timeout("connect")),
        Ok(r) => Ok(r?),
    }
}

/// A connection whose HELLOs were exchanged; the owner decides to refuse it or
/// [`start`](Handshaken::start) it.
pub struct Handshaken {
    /// The peer's HELLO.
    pub hello: Hello,
    /// Its socket address.
    pub addr: SocketAddr,
    /// Who dialled.
    pub direction: Direction,
    reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
    step: Duration,
}

impl Handshaken {
    /// Where the peer accepts connections, from its HELLO (None if port 0).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        (self.hello.listen_port != 0).then(|| SocketAddr::new(self.addr.ip(), self.hello.listen_port))
    }

    /// Refuses the connection: REJECT, then a gentle close.
    pub async fn refuse(mut self, code: RejectCode, reason: &str) {
        linger_close(&mut self.writer, &mut self.reader, Some(Frame::reject(code, reason))).await;
    }

    /// Writes a frame before the connection starts (PEERS is part of the handshake).
    pub async fn send(&mut self, frame: &Frame) -> Result<(), PeerError> {
        match timeout(self.step, self.writer.write_frame(frame, None)).await {
            Err(_) => Err(PeerError::Timeout("writing the handshake")),
            Ok(r) => Ok(r?),
        }
    }

    /// The connection's life: reader, writer and ASK server until it closes,
    /// then [`Handler::on_closed`]. The owner spawns it on its task tracker.
    pub fn start<H: Handler>(
        mut self,
        conn: Arc<PeerConn>,
        outbox: Outbox,
        handler: Arc<H>,
        timeouts: &Timeouts,
        permit: OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send + 'static {
        self.reader.count_into(conn.received.clone());
        let (keepalive, idle) = (timeouts.keepalive, timeouts.idle);
        tasks::run(handler, conn, self.reader, self.writer, outbox, keepalive, idle, permit)
    }
}

/// Exchanges HELLOs on a fresh connection within `step` per direction. A peer
/// that sends anything else first gets REJECT(3); a REJECT from it is returned
/// as [`PeerError::Rejected`].
pub async fn handshake(
    stream: TcpStream,
    addr: SocketAddr,
    direction: Direction,
    ours: Hello,
    step: Duration,
) -> Result<Handshaken, PeerError> {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let mut reader = FrameReader::new(rd);
    let mut writer = FrameWriter::new(wr);
    match timeout(step, writer.write_frame(&Frame::Hello(ours), None)).await {
        Err(_) => return Err(PeerError::Timeout("sending HELLO")),
        Ok(r) => r?,
    }
    let violation =
        |reason: String| (Some(Frame::reject(RejectCode::ProtocolViolation, &reason)), PeerError::Protocol(reason));
    let outcome: Result<Hello, (Option<Frame>, PeerError)> = match timeout(step, reader.read_frame()).await {
        Err(_) => Err(violation(format!("no HELLO within {} s", step.as_secs()))),
        Ok(Err(ReadError::Protocol(e))) => Err(violation(e.to_string())),
        Ok(Err(ReadError::Io(e))) => Err((None, PeerError::Io(e))),
        Ok(Ok(None)) => Err((None, PeerError::Closed)),
        Ok(Ok(Some(Frame::Hello(h)))) => Ok(h),
        Ok(Ok(Some(Frame::Reject { code, reason }))) => Err((None, PeerError::Rejected { code, reason })),
        Ok(Ok(Some(other))) => Err(violation(format!("expected HELLO, got {}", other.name()))),
    };
    match outcome {
        Ok(hello) => Ok(Handshaken { hello, addr, direction, reader, writer, step }),
        Err((frame, err)) => {
            linger_close(&mut writer, &mut reader, frame).await;
            Err(err)
        }
    }
}

/// Sends a REJECT on a connection that never got going, then closes it gently.
pub async fn refuse(stream: TcpStream, code: RejectCode, reason: &str) {
    let (rd, wr) = stream.into_split();
    let mut writer = FrameWriter::new(wr);
    let mut reader = FrameReader::new(rd);
    linger_close(&mut writer, &mut reader, Some(Frame::reject(code, reason))).await;
}

/// Writes `last` if given, half-closes, and reads until the peer closes (bounded
/// in time and bytes) so the final frame is not lost to a TCP reset.
pub(super) async fn linger_close(
    writer: &mut FrameWriter<OwnedWriteHalf>,
    reader: &mut FrameReader<OwnedReadHalf>,
    last: Option<Frame>,
) {
    let _ = timeout(LINGER, async {
        if let Some(frame) = last {
            writer.write_frame(&frame, None).await?;
        }
        writer.shutdown().await
    })
    .await;
    let _ = timeout(LINGER, async {
        use tokio::io::AsyncReadExt;
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < 256 * 1024 {
            match reader.get_mut().read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}
