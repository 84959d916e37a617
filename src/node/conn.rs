//! Connections as the node sees them: the listener, dialling, admitting a
//! handshaken peer (self, bans, duplicates, PEERS as part of the handshake),
//! and the node's side of the two interfaces below it: [`Handler`] for each
//! connection and [`Swarm`] for each download.

use super::Shared;
use crate::bitfield;
use crate::connection::SOCKET_BUFFER;
use crate::fetch::Swarm;
use crate::hash::Hash;
use crate::mapping::Body;
use crate::peer::{self, Direction, Handler, PeerConn, PeerError};
use crate::ratelimit::RateLimiter;
use crate::text::shown;
use crate::wire::PeerEntry;
use crate::wire::{Frame, RejectCode};
use bytes::Bytes;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

/// A connection that closes cleanly sooner than this after its handshake
/// still counts toward the redial back-off of its address.
const GOOD_CONNECTION: Duration = Duration::from_secs(10);
/// Retry-after sent with REJECT(2) (at the connection limit): worth a later try.
pub(super) const RETRY_FULL: u16 = 5;
/// Retry-after sent with REJECT(6) (shutting down): it may come back.
pub(super) const RETRY_SHUTDOWN: u16 = 10;
/// REJECT(1)'s reason when the other connection stays by the smaller-id rule.
const KEPT_BY_ID: &str = "already connected (the connection dialled by the smaller node id stays)";
/// Retry-after sent with REJECT(1) (already connected): not while the other
/// connection lives, but the address stays worth knowing.
pub(super) const RETRY_DUPLICATE: u16 = 60;

/// Binds a listener with socket2: dual-stack IPv6 when the address is IPv6,
/// SO_REUSEADDR, large buffers. Falls back to IPv4 when IPv6 is unavailable.
pub(super) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let make = |addr: SocketAddr| -> io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        socket.set_tcp_nodelay(true)?;
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER as usize);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER as usize);
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket)
    };
    let socket = match make(addr) {
        Err(e) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            make(SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), addr.port()))?
        }
        r => r?,
    };
    TcpListener::from_std(socket.into())
}

pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, addr)) => {
                backoff = Duration::from_millis(10);
                // An IPv4 peer on the dual-stack listener is ::ffff:a.b.c.d: the same
                // node as a.b.c.d for bans, pins and the address table.
                let addr = match addr {
                    SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => {
                        SocketAddr::new(v6.ip().to_canonical(), v6.port())
                    }
                    other => other,
                };
                let shared2 = shared.clone();
                shared.tasks.spawn(async move {
                    match shared2.slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            if let Err(e) = admit(&shared2, stream, addr, Direction::Inbound, permit).await {
                                tracing::debug!(peer = %addr, "inbound connection refused: {e}");
                            }
                        }
                        Err(_) => {
                            let step = shared2.config.timeouts.hello;
                            let (code, reason) = (RejectCode::PeerLimit, "peer limit reached");
                            peer::refuse(stream, &shared2.local, step, code, RETRY_FULL, reason).await
                        }
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {}", crate::text::io_message(&e));
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Dials `addr` and admits the connection.
pub(super) async fn dial(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    permit: OwnedSemaphorePermit,
) -> Result<(), PeerError> {
    let stream = peer::dial(addr, shared.config.timeouts.dial).await?;
    admit(shared, stream, addr, Direction::Outbound, permit).await
}

/// Runs the handshake on a fresh connection; refuses ourselves, the banned and
/// duplicates; otherwise registers the peer, sends PEERS and starts its tasks.
async fn admit(
    shared: &Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    direction: Direction,
    permit: OwnedSemaphorePermit,
) -> Result<(), PeerError> {
    let step = shared.config.timeouts.hello;
    if shared.shutdown.is_cancelled() {
        if direction == Direction::Inbound {
            let reason = "shutting down";
            peer::refuse(stream, &shared.local, step, RejectCode::ShuttingDown, RETRY_SHUTDOWN, reason).await;
        }
        return Err(PeerError::ShuttingDown);
    }
    let mut hs = peer::handshake(stream, addr, direction, &shared.local, step).await?;
    let id = hs.hello.node_id;
    let expected = match direction {
        Direction::Outbound => shared.exchange.table().get(&addr).and_then(|e| Some((e.expected?, e.pinned))),
        Direction::Inbound => None,
    };
    if let Some((expected, user)) = expected.filter(|(e, _)| *e != id) {
        // Not the node we meant to reach: no frame beyond the HELLOs. One the
        // user named is refused for the rest of the run, on any connection.
        // Logged at info (-v): a fetch that gives up says it once, in its error.
        let err = PeerError::WrongNode { expected, got: id };
        tracing::info!(peer = %addr, "{err}");
        if user {
            shared.bans.ban(id, []);
        } else {
            // A learned pin that does not hold is forgotten with its address:
            // a later PEERS may teach it again, with the right id.
            shared.exchange.table().remove(&addr);
        }
        hs.refuse_silently().await;
        return Err(err);
    }
    let refusal = if shared.shutdown.is_cancelled() {
        // Shutdown began during the handshake: no PEERS, no registration.
        Some((RejectCode::ShuttingDown, "shutting down", PeerError::ShuttingDown))
    } else if id == shared.id {
        if direction == Direction::Outbound {
            shared.exchange.table().mark_self(addr);
        }
        Some((RejectCode::SelfConnection, "connected to self", PeerError::SelfConnection))
    } else if shared.bans.is_banned(&id, &addr) {
        Some((RejectCode::Misbehaving, "banned", PeerError::Banned))
    } else {
        None
    };
    if let Some((code, reason, err)) = refusal {
        tracing::debug!(peer = %addr, ?direction, "refusing: {err}");
        let retry = if code == RejectCode::ShuttingDown { RETRY_SHUTDOWN } else { 0 };
        hs.refuse(code, retry, reason).await;
        return Err(err);
    }
    let shareable = hs.hello.shareable();
    let newly_verified = direction == Direction::Outbound && shared.exchange.table().verified(addr, id, shareable);
    let newly_verified = newly_verified && shareable;
    let listen_addr = hs.listen_addr();
    let mut outbox = None;
    // Of two connections between the same nodes, the one dialled by the smaller node id stays.
    let keep = if shared.id.0 < id.0 { Direction::Outbound } else { Direction::Inbound };
    let conn = shared.registry.register(id, direction, keep, listen_addr.unwrap_or(addr), |conn_id, stats| {
        let (conn, o) = PeerConn::new(conn_id, &hs, stats, shared.shutdown.child_token());
        outbox = Some(o);
        conn
    });
    let (conn, displaced, outbox) = match (conn, outbox) {
        (Ok((conn, displaced)), Some(outbox)) => (conn, displaced, outbox),
        (stays, _) => {
            if newly_verified {
                shared.announce(PeerEntry { node_id: id, addr }, 0);
            }
            let reason = match stays {
                Err(d) if d == direction => "already connected (the older connection stays)",
                _ => KEPT_BY_ID,
            };
            hs.refuse(RejectCode::Duplicate, RETRY_DUPLICATE, reason).await;
            return Err(PeerError::Duplicate(id));
        }
    };
    if let Some(old) = displaced {
        tracing::debug!(peer = %old.addr, "closing a duplicate connection");
        old.close(Some(Frame::reject_retry(RejectCode::Duplicate, RETRY_DUPLICATE, KEPT_BY_ID)));
    }
    if newly_verified {
        // Immediate peer discovery: everyone connected learns the new address now, not in 60 s.
        shared.announce(PeerEntry { node_id: id, addr }, conn.conn_id);
    }
    tracing::info!(peer = %addr, id = %id.short(), ?direction, "peer joined");
    if let (Some(m), Some(at)) =
        (&shared.memory, if direction == Direction::Outbound { Some(addr) } else { listen_addr })
    {
        m.seen(id, at);
    }
    if direction == Direction::Inbound && shared.config.pex {
        if let Some(l) = listen_addr {
            // Learn where it listens; a dial there verifies the address before we share it.
            shared.learn(PeerEntry { node_id: id, addr: l });
        }
    }
    // PEERS is part of the handshake: written now, before anything else can be.
    if let Some(peers) = shared.peers_frame(&conn, None) {
        if let Err(e) = hs.send(&peers).await {
            shared.registry.remove(&conn);
            return Err(e);
        }
    }
    let run = hs.start(conn.clone(), outbox, shared.clone(), &shared.config.timeouts, permit);
    shared.tasks.spawn(run);
    shared.routes.peer_joined(&conn);
    shared.rooms_peer_joined(&conn);
    Ok(())
}

impl Handler for Shared {
    fn blob(&self, hash: &Hash) -> Option<Body> {
        self.store.get(hash)
    }

    fn on_peers(&self, _conn: &Arc<PeerConn>, peers: Vec<PeerEntry>) {
        if self.config.pex {
            for p in peers {
                if p.node_id != self.id {
                    self.learn(p);
                }
            }
        }
    }

    fn on_bitfield(&self, conn: &Arc<PeerConn>, root: Hash, first: u32, bits: Bytes) -> Result<(), PeerError> {
        let entry = self.store.file(&root);
        if let Some(e) = &entry {
            let n = e.info.pieces.len();
            let whole = first == 0 && bits.len() == n.div_ceil(8);
            if whole {
                bitfield::check(n, &bits).map_err(PeerError::Protocol)?;
            } else {
                bitfield::check_range(n, first, &bits).map_err(PeerError::Protocol)?;
            }
            // A peer that already holds every piece has no use for our HAVEs.
            if !(whole && bitfield::is_complete(n, &bits)) {
                conn.note_interest(root);
            }
            if e.holds_any() {
                conn.send_bitfield_once(root, bitfield::to_bytes(e.held()));
            }
        } else {
            conn.note_interest(root);
        }
        self.routes.bitfield(&root, conn.conn_id, first, bits);
        Ok(())
    }

    fn on_have(&self, conn: &Arc<PeerConn>, root: Hash, index: u32) -> Result<(), PeerError> {
        if let Some(e) = self.store.file(&root) {
            let n = e.info.pieces.len();
            if index as usize >= n {
                return Err(PeerError::Protocol(format!("HAVE for piece {index} of a {n}-piece file")));
            }
        }
        self.routes.have(&root, conn.conn_id, index);
        Ok(())
    }

    fn on_room(&self, conn: &Arc<PeerConn>, frame: Frame) -> Result<(), PeerError> {
        self.room_frame(conn, frame)
    }

    fn on_transfer(&self, up: u64, down: u64) {
        self.totals.add(up, down);
    }

    fn on_closed(&self, conn: &Arc<PeerConn>, ending: &Result<(), PeerError>) {
        if let Some(m) = &self.memory {
            if conn.stats.downloaded.load(Ordering::Relaxed) > 0 {
                m.shared(&conn.node_id);
            }
        }
        self.registry.remove(conn);
        self.routes.peer_left(conn.conn_id);
        self.rooms_peer_left(conn.conn_id);
        // The address we would dial it at: redials back off after a bad ending.
        let addr = match conn.direction {
            Direction::Outbound => Some(conn.addr),
            Direction::Inbound => conn.listen_addr,
        };
        if let (Some(addr), false) = (addr, self.shutdown.is_cancelled()) {
            let why = match ending {
                Err(e) => Some(e.to_string()),
                Ok(()) if conn.since.elapsed() < GOOD_CONNECTION => Some("closed soon after the handshake".into()),
                Ok(()) => None,
            };
            let mut table = self.exchange.table();
            table.ended(addr, why);
            if let Err(PeerError::Rejected { retry_after, .. }) = ending {
                table.retry_after(addr, *retry_after);
            }
        }
        self.exchange.wake();
    }

    fn farewell(&self) -> Option<Frame> {
        self.shutdown
            .is_cancelled()
            .then(|| Frame::reject_retry(RejectCode::ShuttingDown, RETRY_SHUTDOWN, "shutting down"))
    }

    fn limiter(&self) -> Option<&RateLimiter> {
        self.limiter.as_ref()
    }

    fn uploads(&self) -> &crate::peer::UploadLog {
        &self.uploads
    }
}

impl Swarm for Shared {
    fn connections(&self) -> Vec<Arc<PeerConn>> {
        self.registry.all()
    }

    fn dial_error(&self, addr: &SocketAddr) -> Option<String> {
        self.exchange.table().get(addr).and_then(|e| e.last_error.clone())
    }

    fn ban(&self, conn: &PeerConn, reason: &str) {
        tracing::warn!(peer = %conn.addr, id = %conn.node_id.short(), "banned: {}", shown(reason));
        self.bans.ban(conn.node_id, [conn.addr].into_iter().chain(conn.listen_addr));
        if let Some(l) = conn.listen_addr {
            self.exchange.table().remove(&l);
        }
        conn.close(Some(Frame::reject(RejectCode::Misbehaving, reason)));
    }

    fn broadcast_have(&self, root: Hash, index: u32) {
        for conn in self.registry.all() {
            if conn.is_interested(&root) {
                conn.send(Frame::Have { root, index });
            }
        }
    }

    fn piece_rejected(&self) {
        self.totals.pieces_rejected.fetch_add(1, Ordering::Relaxed);
    }
}
