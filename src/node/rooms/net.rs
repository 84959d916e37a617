//! What the node does with room frames and for its rooms: answering JOIN and
//! LEAVE, checking, de-duplicating and forwarding MESSAGE and PRESENCE,
//! delivering DIRECT, and the room loop (heartbeat presence, MEMBERS to
//! neighbours, dialling members until the mesh has enough neighbours).

use super::{RoomError, RoomEvent, RoomState};
use crate::hash::{Hash, NodeId};
use crate::identity::{random_secret, verify_presence, verify_room_message};
use crate::node::Shared;
use crate::peer::{PeerConn, PeerError};
use crate::wire::{Frame, PeerEntry, Presence, RoomMessage, MAX_PAYLOAD, PRESENCE_HERE, PRESENCE_LEAVING};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the room loop runs.
const TICK: Duration = Duration::from_millis(200);
/// A member sends PRESENCE (and MEMBERS to its neighbours) this many times per idle time-out.
const HEARTBEATS_PER_IDLE: u32 = 4;

fn message_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id.copy_from_slice(&random_secret()[..16]);
    id
}

impl Shared {
    /// A room frame arrived on `conn` (see [`crate::peer::Handler::on_room`]).
    pub(crate) fn room_frame(&self, conn: &Arc<PeerConn>, frame: Frame) -> Result<(), PeerError> {
        let now = Instant::now();
        match frame {
            Frame::Join(room) => match self.rooms.with(&room, |r| r.on_join(conn, now)) {
                // In no such room: declined.
                None => {
                    conn.send(Frame::Leave(room));
                }
                Some(answer) => {
                    for f in answer {
                        conn.send(f);
                    }
                }
            },
            Frame::Leave(room) => {
                self.rooms.with(&room, |r| r.on_leave(conn, now));
            }
            Frame::Members { room, members } => {
                self.rooms.with(&room, |r| {
                    if r.is_linked(conn.conn_id) {
                        r.learn(self.id, members, now);
                    }
                });
            }
            Frame::Message(m) => self.on_message(conn, m, now),
            Frame::Presence(p) => self.on_presence(conn, p, now),
            Frame::Direct { room, id, payload } => {
                let from = conn.node_id;
                self.rooms.with(&room, |r| {
                    if r.admit(conn.conn_id, now) {
                        if r.remember(from, id, now) {
                            r.stats.delivered += 1;
                            r.emit(RoomEvent::Message { from, direct: true, bytes: payload });
                        } else {
                            r.stats.duplicates += 1;
                        }
                    }
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// Drops a neighbour that sent a room frame with a bad signature: an honest
    /// forwarder checks every signature first, so this one made it up.
    fn forged(&self, conn: &PeerConn, room: &Hash, what: &str) {
        self.rooms.with(room, |r| r.stats.forged += 1);
        crate::fetch::Swarm::ban(self, conn, &format!("forged room {what}"));
    }

    fn on_message(&self, conn: &Arc<PeerConn>, m: RoomMessage, now: Instant) {
        let fresh = self.rooms.with(&m.room, |r| {
            if !r.is_linked(conn.conn_id) {
                return false;
            }
            r.stats.received += 1;
            if !r.admit(conn.conn_id, now) {
                return false;
            }
            let seen = r.seen(&m.origin, &m.id);
            r.stats.duplicates += u64::from(seen);
            !seen
        });
        if fresh != Some(true) {
            return;
        }
        if !verify_room_message(&m.origin, &m.room.0, &m.id, &m.payload, &m.signature) {
            return self.forged(conn, &m.room, "message");
        }
        let me = self.id;
        self.rooms.with(&m.room, |r| {
            if !r.remember(m.origin, m.id, now) {
                r.stats.duplicates += 1;
                return;
            }
            if m.origin != me {
                r.heard(m.origin, None, now);
                r.stats.delivered += 1;
                r.emit(RoomEvent::Message { from: m.origin, direct: false, bytes: m.payload.clone() });
            }
            if m.hops > 0 {
                let origin = m.origin;
                let onward = Frame::Message(RoomMessage { hops: m.hops - 1, ..m });
                r.flood(&onward, conn.conn_id, origin);
            }
        });
    }

    fn on_presence(&self, conn: &Arc<PeerConn>, p: Presence, now: Instant) {
        if p.origin == self.id || !matches!(p.state, PRESENCE_HERE | PRESENCE_LEAVING) {
            return;
        }
        let fresh = self.rooms.with(&p.room, |r| {
            if !r.is_linked(conn.conn_id) || !r.admit(conn.conn_id, now) {
                return false;
            }
            r.presence_is_new(&p.origin, p.seq)
        });
        if fresh != Some(true) {
            return;
        }
        if !verify_presence(&p.origin, &p.room.0, p.seq, p.state, &p.signature) {
            return self.forged(conn, &p.room, "presence");
        }
        self.rooms.with(&p.room, |r| {
            if !r.presence_is_new(&p.origin, p.seq) {
                return;
            }
            let onward = Presence { hops: p.hops.saturating_sub(1), ..p };
            r.on_presence(&onward, now);
            if p.hops > 0 {
                r.flood(&Frame::Presence(onward.clone()), conn.conn_id, onward.origin);
            }
        });
    }

    /// Sends this node's PRESENCE (`state`) to its neighbours in `r`.
    fn send_presence(&self, r: &mut RoomState, state: u8, now: Instant) {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        r.seq = ms.max(r.seq + 1);
        let signature = self.local.identity.sign_presence(&r.id.0, r.seq, state);
        let p = Presence { room: r.id, origin: self.id, seq: r.seq, state, hops: r.opts.hops, signature };
        r.flood(&Frame::Presence(p.clone()), 0, self.id);
        r.own = Some(p);
        r.presence_sent = Some(now);
    }

    /// A new connection: every room still short of neighbours asks it to be one.
    pub(crate) fn rooms_peer_joined(&self, conn: &Arc<PeerConn>) {
        let now = Instant::now();
        self.rooms.each(|r| {
            r.join_if_wanted(conn, now);
        });
    }

    /// A connection closed: it is no one's neighbour any more.
    pub(crate) fn rooms_peer_left(&self, conn_id: u64) {
        self.rooms.each(|r| r.on_closed(conn_id));
    }

    /// A node this one dialled answered REJECT(2): every room hears it is full.
    pub(crate) fn rooms_full(&self, addr: SocketAddr) {
        self.rooms.each(|r| r.emit(RoomEvent::Full(addr)));
    }

    /// Room `id` was just joined: JOIN the connections there are, say we are here.
    pub(super) fn room_joined(&self, id: &Hash) {
        let conns = self.registry.all();
        let now = Instant::now();
        self.rooms.with(id, |r| {
            for c in &conns {
                r.join_if_wanted(c, now);
            }
            self.send_presence(r, PRESENCE_HERE, now);
        });
    }

    /// Leaves room `id`: a signed "leaving" to the mesh, LEAVE to each neighbour.
    pub(super) fn room_left(&self, id: &Hash) {
        let Some(mut r) = crate::lock(&self.rooms.0).remove(id) else { return };
        self.send_presence(&mut r, PRESENCE_LEAVING, Instant::now());
        for n in r.links.values() {
            n.conn.send(Frame::Leave(r.id));
        }
    }

    /// Signs `payload` and floods it to the room's neighbours.
    pub(super) fn room_broadcast(&self, id: &Hash, payload: Bytes) -> Result<usize, RoomError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(RoomError::TooLarge(payload.len()));
        }
        let mid = message_id();
        let signature = self.local.identity.sign_room_message(&id.0, &mid, &payload);
        let now = Instant::now();
        self.rooms
            .with(id, |r| {
                r.remember(self.id, mid, now);
                let m = RoomMessage { room: r.id, id: mid, origin: self.id, hops: r.opts.hops, signature, payload };
                r.flood(&Frame::Message(m), 0, self.id)
            })
            .ok_or(RoomError::NotJoined)
    }

    /// Sends DIRECT to `to`, dialling it at the address the room knows if not connected.
    pub(super) async fn room_send_to(self: &Arc<Self>, id: &Hash, to: NodeId, payload: Bytes) -> Result<(), RoomError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(RoomError::TooLarge(payload.len()));
        }
        let addr = self.rooms.with(id, |r| r.members.get(&to).and_then(|m| m.addr)).ok_or(RoomError::NotJoined)?;
        let conn = match self.registry.by_node(&to) {
            Some(c) => c,
            None => {
                let unreachable = |why: String| RoomError::Unreachable(to, why);
                let addr = addr.ok_or_else(|| unreachable("no address known for it in the room".into()))?;
                self.dial_member(addr, to, false);
                let t = &self.config.timeouts;
                let deadline = Instant::now() + t.dial + t.hello * 2;
                loop {
                    if let Some(c) = self.registry.by_node(&to) {
                        break c;
                    }
                    // No dial under way and (checked after, as a dial registers its
                    // connection before it ends) no connection: it failed or could not start.
                    let ended = !self.exchange.is_dialing(&addr) && self.registry.by_node(&to).is_none();
                    if Instant::now() > deadline || ended {
                        let why = self.exchange.table().get(&addr).and_then(|e| e.last_error.clone());
                        return Err(unreachable(why.unwrap_or_else(|| format!("no connection to {addr}"))));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        if conn.send(Frame::Direct { room: *id, id: message_id(), payload }) {
            Ok(())
        } else {
            Err(RoomError::Unreachable(to, "the connection closed".into()))
        }
    }

    /// Dials a room member at `addr`, expecting node id `id` there; with
    /// `patient`, not while the address is backing off after failures. True
    /// if a dial is under way.
    fn dial_member(self: &Arc<Self>, addr: SocketAddr, id: NodeId, patient: bool) -> bool {
        if self.registry.has_node(&id) || self.should_skip_dial(&addr) {
            return self.exchange.is_dialing(&addr);
        }
        let backing_off = self.exchange.table().get(&addr).is_some_and(|e| e.next_try > Instant::now());
        if patient && backing_off {
            return false;
        }
        self.learn(PeerEntry { node_id: id, addr });
        self.dial_now(addr);
        self.exchange.is_dialing(&addr)
    }
}

/// Heartbeats, MEMBERS, time-outs and mesh upkeep of every joined room, every [`TICK`].
pub(crate) async fn room_loop(shared: Arc<Shared>) {
    let idle = shared.config.timeouts.idle;
    let heartbeat = (idle / HEARTBEATS_PER_IDLE).max(TICK);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        if shared.rooms.is_empty() {
            continue;
        }
        let now = Instant::now();
        let due = |t: Option<Instant>| t.is_none_or(|t| now.saturating_duration_since(t) >= heartbeat);
        // Dials that ended without a connection give their place to other members at once.
        let mut pending = Vec::new();
        shared.rooms.each(|r| {
            pending.extend(r.dialling.keys().map(|id| (r.id, *id, r.members.get(id).and_then(|m| m.addr))));
        });
        for (room, id, addr) in pending {
            if !shared.registry.has_node(&id) && !addr.is_some_and(|a| shared.exchange.is_dialing(&a)) {
                shared.rooms.with(&room, |r| r.dialling.remove(&id));
            }
        }
        let mut wanted = Vec::new();
        shared.rooms.each(|r| {
            // One tick early, so that a silent member is reported within the idle time-out.
            r.expire(idle.saturating_sub(TICK), now);
            if due(r.presence_sent) {
                shared.send_presence(r, PRESENCE_HERE, now);
            }
            if due(r.members_sent) {
                let frames: Vec<_> = r.neighbours().map(|c| (c.clone(), r.members_frame(c))).collect();
                for (c, f) in frames {
                    c.send(f);
                }
                r.members_sent = Some(now);
            }
            let need = r.opts.min_neighbours.saturating_sub(r.linked() + r.dialling.len());
            for (id, addr) in r.candidates(shared.id, now).into_iter().take(need) {
                r.dialling.insert(id, now);
                wanted.push((r.id, id, addr));
            }
        });
        for (room, id, addr) in wanted {
            match shared.registry.by_node(&id) {
                Some(conn) => {
                    shared.rooms.with(&room, |r| r.join_if_wanted(&conn, now));
                }
                None => {
                    if !addr.is_some_and(|a| shared.dial_member(a, id, true)) {
                        shared.rooms.with(&room, |r| r.dialling.remove(&id));
                    }
                }
            }
        }
    }
}
