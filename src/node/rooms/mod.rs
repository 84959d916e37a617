//! Rooms: members of a 32-byte topic keep a partial mesh of neighbours over
//! the node's connections, flood signed broadcasts through it once each,
//! send direct messages, and learn who joins and who is gone (docs/PROTOCOL.md
//! 4.11 to 4.16 and 5.10). This file is the application's side: [`Room`],
//! its events and options; `state.rs` holds one room's bookkeeping and
//! `net.rs` what the node does with room frames.

mod net;
mod state;

pub(crate) use net::room_loop;
pub(crate) use state::RoomState;

use super::{Node, Shared};
use crate::hash::{Hash, NodeId};
use crate::lock;
use bytes::Bytes;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Neighbours a member looks for (it dials members until it has this many).
pub const MIN_NEIGHBOURS: usize = 6;
/// Neighbours a member accepts at most; more JOINs are declined with LEAVE.
pub const MAX_NEIGHBOURS: usize = 12;
/// Hops a broadcast may travel: each forwarder lowers it by one.
pub const DEFAULT_HOPS: u8 = 16;
/// Events held for an application that does not read them; more are dropped and counted.
pub const EVENT_QUEUE: usize = 4096;

/// How a member takes part in a room's mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomOptions {
    /// Neighbours to look for ([`MIN_NEIGHBOURS`]).
    pub min_neighbours: usize,
    /// Neighbours to accept at most ([`MAX_NEIGHBOURS`]).
    pub max_neighbours: usize,
    /// Hop limit of the broadcasts this member sends ([`DEFAULT_HOPS`]).
    pub hops: u8,
}

impl Default for RoomOptions {
    fn default() -> Self {
        RoomOptions { min_neighbours: MIN_NEIGHBOURS, max_neighbours: MAX_NEIGHBOURS, hops: DEFAULT_HOPS }
    }
}

/// What happens in a room, as the application hears it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomEvent {
    /// A member is in the room (its signed presence, a message or a neighbour link proved it).
    Joined(NodeId),
    /// A member left, or has been silent for longer than the idle time-out.
    Left(NodeId),
    /// A message: a broadcast (`direct: false`, signed by `from`) or a direct
    /// message from the node at the other end of a connection.
    Message {
        /// Who wrote it.
        from: NodeId,
        /// Sent to this node alone.
        direct: bool,
        /// The payload, opaque to pex (show it only through [`crate::text`]).
        bytes: Bytes,
    },
    /// A node this one dialled is full: it refused with REJECT(2) (its `--max-peers`).
    Full(SocketAddr),
}

/// Counters of one room on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RoomStats {
    /// MESSAGE frames written: this node's broadcasts and forwards, one per neighbour.
    pub sent: u64,
    /// MESSAGE frames received.
    pub received: u64,
    /// Messages handed to the application (broadcast and direct).
    pub delivered: u64,
    /// Copies of messages already seen (dropped).
    pub duplicates: u64,
    /// Messages and presences with a bad signature (dropped; their sender banned).
    pub forged: u64,
    /// Room frames dropped because a neighbour sent too many.
    pub limited: u64,
    /// Events dropped because the application did not read them.
    pub events_dropped: u64,
}

/// Why a room operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    /// This node is in that room already.
    #[error("already in room {0:?}")]
    AlreadyJoined(String),
    /// The payload is over [`crate::wire::MAX_PAYLOAD`].
    #[error("a message of {0} bytes is over the limit of 65,536")]
    TooLarge(usize),
    /// No connection to that member and none could be made.
    #[error("cannot reach node {}: {}", .0.short(), .1)]
    Unreachable(NodeId, String),
    /// The room was left.
    #[error("not in the room")]
    NotJoined,
}

/// The node's rooms, one lock for all of them (room traffic is small).
#[derive(Default)]
pub(crate) struct Rooms(Mutex<HashMap<Hash, RoomState>>);

impl Rooms {
    /// Runs `f` on every joined room.
    pub(crate) fn each(&self, mut f: impl FnMut(&mut RoomState)) {
        for r in lock(&self.0).values_mut() {
            f(r);
        }
    }

    /// Runs `f` on room `id`, if joined.
    pub(crate) fn with<T>(&self, id: &Hash, f: impl FnOnce(&mut RoomState) -> T) -> Option<T> {
        lock(&self.0).get_mut(id).map(f)
    }

    fn is_empty(&self) -> bool {
        lock(&self.0).is_empty()
    }
}

/// A joined room. Dropping it leaves the room, as [`Room::leave`] does.
pub struct Room {
    shared: Arc<Shared>,
    id: Hash,
    name: String,
    events: mpsc::Receiver<RoomEvent>,
    left: bool,
}

impl Node {
    /// Joins room `name` (its id is `SHA-256("pex-room" ‖ name)`) with the default mesh.
    pub fn join_room(&self, name: &str) -> Result<Room, RoomError> {
        self.join_room_with(name, RoomOptions::default())
    }

    /// [`Node::join_room`] with other mesh sizes or hop limit.
    pub fn join_room_with(&self, name: &str, opts: RoomOptions) -> Result<Room, RoomError> {
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let room = RoomState::new(name, opts, tx);
        let id = room.id;
        {
            let mut rooms = lock(&self.shared.rooms.0);
            if rooms.contains_key(&id) {
                return Err(RoomError::AlreadyJoined(name.to_owned()));
            }
            rooms.insert(id, room);
        }
        self.shared.room_joined(&id);
        Ok(Room { shared: self.shared.clone(), id, name: name.to_owned(), events, left: false })
    }
}

impl Room {
    /// The room's id.
    pub fn id(&self) -> Hash {
        self.id
    }

    /// The room's name, as joined.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This node's id, as other members see it.
    pub fn node_id(&self) -> NodeId {
        self.shared.id
    }

    /// Sends `bytes` to every member, once each, through the mesh. Returns how
    /// many neighbours it went to (0: nobody is connected in the room yet).
    pub fn broadcast(&self, bytes: impl Into<Bytes>) -> Result<usize, RoomError> {
        self.shared.room_broadcast(&self.id, bytes.into())
    }

    /// Sends `bytes` to member `to` alone, over a direct connection (dialled
    /// at the address the room knows for it, if there is none yet).
    pub async fn send_to(&self, to: NodeId, bytes: impl Into<Bytes>) -> Result<(), RoomError> {
        self.shared.room_send_to(&self.id, to, bytes.into()).await
    }

    /// Members known to be in the room now (not this node).
    pub fn members(&self) -> Vec<NodeId> {
        self.shared.rooms.with(&self.id, |r| r.present()).unwrap_or_default()
    }

    /// This node's neighbours in the room's mesh.
    pub fn neighbours(&self) -> Vec<NodeId> {
        self.shared.rooms.with(&self.id, |r| r.neighbours().map(|c| c.node_id).collect()).unwrap_or_default()
    }

    /// Counters of this room on this node.
    pub fn stats(&self) -> RoomStats {
        self.shared.rooms.with(&self.id, |r| r.stats.clone()).unwrap_or_default()
    }

    /// The next event; `None` once the room is left.
    pub async fn recv(&mut self) -> Option<RoomEvent> {
        self.events.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<RoomEvent> {
        self.events.try_recv().ok()
    }

    /// Leaves the room: members hear a signed "leaving" presence and neighbours get LEAVE.
    pub fn leave(mut self) {
        self.depart();
    }

    fn depart(&mut self) {
        if !std::mem::replace(&mut self.left, true) {
            self.shared.room_left(&self.id);
        }
    }
}

/// The events as a stream, for applications that combine streams.
impl futures_core::Stream for Room {
    type Item = RoomEvent;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<RoomEvent>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.depart();
    }
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room").field("name", &self.name).field("id", &self.id).finish()
    }
}
