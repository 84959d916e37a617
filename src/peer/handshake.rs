//! Setting a connection up: dialling, the Noise handshake, the signed HELLO
//! exchange, refusing with a REJECT, answering a v1 peer, and closing gently
//! so that a final REJECT is not lost to a reset.

use super::{tasks, Handler, Outbox, PeerConn, PeerError, LINGER};
use crate::connection::{FrameReader, FrameWriter, ReadError, SOCKET_BUFFER, UNSENT_MARK};
use crate::identity::{self, Identity};
use crate::noise::{self, NoiseError};
use crate::timeouts::Timeouts;
use crate::wire::{self, Frame, Hello, RejectCode};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;

use super::Direction;

/// Who this node is on every connection: the identity its HELLO proves, its
/// Noise keys, and what else its HELLO says.
#[derive(Debug)]
pub struct Local {
    /// The Ed25519 identity; its public key is the node id.
    pub identity: Identity,
    /// The Noise static key (new for each process).
    pub keys: noise::Keys,
    /// The port this node accepts connections on, 0 if none.
    pub listen_port: u16,
    /// HELLO flags ([`wire::FLAG_SHAREABLE`]).
    pub flags: u8,
}

impl Local {
    /// This node's HELLO on the connection whose handshake hash is `hh`.
    pub fn hello(&self, hh: &[u8; 32]) -> Hello {
        Hello {
            node_id: self.identity.node_id(),
            listen_port: self.listen_port,
            flags: self.flags,
            signature: self.identity.sign_hello(hh),
        }
    }
}

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
        (self.hello.listen_port != 0).then(|| {
            // The same address with the listen port; a link-local one keeps its scope.
            let mut a = self.addr;
            a.set_port(self.hello.listen_port);
            a
        })
    }

    /// Refuses the connection: REJECT (asking the peer to wait `retry_after`
    /// seconds before dialling again; 0: not to), then a gentle close.
    pub async fn refuse(mut self, code: RejectCode, retry_after: u16, reason: &str) {
        let reject = Frame::reject_retry(code, retry_after, reason);
        linger_close(&mut self.writer, &mut self.reader, Some(reject)).await;
    }

    /// The encrypted frame reader and writer, for tools and tests that go on by hand.
    pub fn into_parts(self) -> (FrameReader<OwnedReadHalf>, FrameWriter<OwnedWriteHalf>) {
        (self.reader, self.writer)
    }

    /// Closes without a REJECT (the peer is not the node we meant to reach).
    pub async fn refuse_silently(mut self) {
        linger_close(&mut self.writer, &mut self.reader, None).await;
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

/// The Noise handshake within `step`, as initiator when we dialled; returns
/// the encrypted frame reader and writer and the handshake hash (what HELLO
/// signs). A v1 peer dialling us gets the plaintext v1 REJECT(3) explaining
/// that we speak pex/2. Public for tools and tests that speak frames by hand.
pub async fn secure(
    mut stream: TcpStream,
    direction: Direction,
    local: &Local,
    step: Duration,
) -> Result<(FrameReader<OwnedReadHalf>, FrameWriter<OwnedWriteHalf>, [u8; 32]), PeerError> {
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(UNSENT_MARK);
    let initiator = direction == Direction::Outbound;
    let session = match timeout(step, noise::handshake(&mut stream, initiator, &local.keys)).await {
        Err(_) => return Err(PeerError::Timeout("the Noise handshake")),
        Ok(Ok(s)) => s,
        Ok(Err(NoiseError::V1Peer)) => {
            if !initiator {
                answer_v1(stream).await;
            }
            return Err(PeerError::OldProtocol);
        }
        Ok(Err(NoiseError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(PeerError::Closed),
        Ok(Err(NoiseError::Io(e))) => return Err(PeerError::Io(e)),
        Ok(Err(e)) => return Err(PeerError::Protocol(e.to_string())),
    };
    let (rd, wr) = stream.into_split();
    let reader = FrameReader::encrypted(rd, session.recv);
    let writer = FrameWriter::encrypted(wr, session.send);
    Ok((reader, writer, session.handshake_hash))
}

/// Answers a v1 HELLO: one plaintext v1 REJECT(3), then a gentle close.
async fn answer_v1(stream: TcpStream) {
    let (rd, wr) = stream.into_split();
    let (mut reader, mut writer) = (FrameReader::new(rd), FrameWriter::new(wr));
    let bytes = wire::v1_reject(RejectCode::ProtocolViolation, wire::V1_REJECT_REASON);
    let _ = timeout(LINGER, writer.get_mut().write_all(&bytes)).await;
    linger_close(&mut writer, &mut reader, None).await;
}

/// Secures a fresh connection (Noise) and exchanges signed HELLOs within
/// `step` per step. A peer that sends anything else first, or a HELLO whose
/// signature does not verify for this connection, gets REJECT(3); a REJECT
/// from it is returned as [`PeerError::Rejected`].
pub async fn handshake(
    stream: TcpStream,
    addr: SocketAddr,
    direction: Direction,
    local: &Local,
    step: Duration,
) -> Result<Handshaken, PeerError> {
    let (mut reader, mut writer, hh) = secure(stream, direction, local, step).await?;
    match timeout(step, writer.write_frame(&Frame::Hello(local.hello(&hh)), None)).await {
        Err(_) => return Err(PeerError::Timeout("sending HELLO")),
        Ok(r) => r?,
    }
    let violation =
        |reason: String| (Some(Frame::reject(RejectCode::ProtocolViolation, &reason)), PeerError::Protocol(reason));
    let outcome: Result<Hello, (Option<Frame>, PeerError)> = match timeout(step, reader.read_frame()).await {
        Err(_) => Err(violation(format!("no HELLO within {} s", step.as_secs()))),
        Ok(Err(ReadError::Protocol(e))) => Err(violation(e.to_string())),
        Ok(Err(ReadError::Crypto(e))) => Err((None, PeerError::Protocol(e.to_string()))),
        Ok(Err(ReadError::Io(e))) => Err((None, PeerError::Io(e))),
        Ok(Ok(None)) => Err((None, PeerError::Closed)),
        Ok(Ok(Some(Frame::Hello(h)))) if identity::verify_hello(&h.node_id, &hh, &h.signature) => Ok(h),
        Ok(Ok(Some(Frame::Hello(_)))) => Err(violation("HELLO signature does not verify for this connection".into())),
        Ok(Ok(Some(Frame::Reject { code, retry_after, reason }))) => {
            Err((None, PeerError::Rejected { code, retry_after, reason }))
        }
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

/// Refuses an inbound connection that never got going (peer limit, shutting
/// down): the Noise handshake, then a REJECT as the only frame, then a gentle close.
pub async fn refuse(
    stream: TcpStream,
    local: &Local,
    step: Duration,
    code: RejectCode,
    retry_after: u16,
    reason: &str,
) {
    if let Ok((mut reader, mut writer, _)) = secure(stream, Direction::Inbound, local, step).await {
        linger_close(&mut writer, &mut reader, Some(Frame::reject_retry(code, retry_after, reason))).await;
    }
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
