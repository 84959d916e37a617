//! Peer exchange: the table of known addresses, dialling those that are due
//! within the connection limit, learning addresses from PEERS and sharing the
//! verified ones (at once when new, and every `peers_interval`).

use super::{conn, Shared, MAX_DIALS};
use crate::lock;
use crate::peer::{PeerConn, PeerError};
use crate::peers::{undialable, PeerTable};
use crate::wire::{Frame, PeerEntry, MAX_PEERS_PER_FRAME};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often the dialler looks for due addresses when nothing wakes it.
const DIAL_POLL: Duration = Duration::from_millis(250);

/// Known addresses and the dials in progress.
#[derive(Default)]
pub(crate) struct Exchange {
    table: Mutex<PeerTable>,
    dialing: Mutex<HashSet<SocketAddr>>,
    wake: Notify,
}

impl Exchange {
    /// The table of known addresses.
    pub fn table(&self) -> MutexGuard<'_, PeerTable> {
        lock(&self.table)
    }

    /// Adds an address to dial (`pinned`: given by the user, never forgotten).
    pub fn add(&self, addr: SocketAddr, pinned: bool) {
        if let Some(why) = undialable(&addr) {
            tracing::debug!(peer = %addr, "not dialling {why}");
            return;
        }
        self.table().add(addr, pinned);
        self.wake.notify_one();
    }

    /// Whether a dial to `addr` is in progress.
    pub fn is_dialing(&self, addr: &SocketAddr) -> bool {
        lock(&self.dialing).contains(addr)
    }

    /// Something changed that may make a dial due (a connection closed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Dials known addresses that are due, within the connection limit.
pub(super) async fn connect_loop(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = shared.exchange.wake.notified() => {}
            _ = tokio::time::sleep(DIAL_POLL) => {}
        }
        let due = {
            let mut table = shared.exchange.table();
            table.prune();
            table.due(Instant::now(), shared.config.pex && shared.config.dial_learned)
        };
        for addr in due {
            if shared.should_skip_dial(&addr) {
                continue;
            }
            let pinned = shared.exchange.table().get(&addr).is_some_and(|e| e.pinned);
            let dialing = lock(&shared.exchange.dialing).len();
            // Dials to learned addresses are bounded, and leave half the slots for
            // peers that connect to us, so a PEERS flood of dead addresses starves no one.
            let live = shared.registry.len();
            if dialing >= MAX_DIALS || (!pinned && live + dialing >= shared.config.max_peers / 2) {
                continue;
            }
            let Ok(permit) = shared.slots.clone().try_acquire_owned() else { break };
            shared.spawn_dial(addr, permit);
        }
    }
}

/// Re-sends PEERS with what is new to every connection, every `peers_interval`.
pub(super) async fn peers_loop(shared: Arc<Shared>) {
    if !shared.config.pex {
        return;
    }
    let mut tick = tokio::time::interval(shared.config.timeouts.peers_interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for conn in shared.registry.all() {
            let since = *lock(&conn.peers_sent);
            if let Some(frame) = shared.peers_frame(&conn, since) {
                conn.send(frame);
            }
        }
    }
}

impl Shared {
    /// Dials `addr` in the background with a connection slot already taken,
    /// recording a failure (and a REJECT's retry-after) in the table.
    pub(super) fn spawn_dial(self: &Arc<Self>, addr: SocketAddr, permit: tokio::sync::OwnedSemaphorePermit) {
        lock(&self.exchange.dialing).insert(addr);
        let shared = self.clone();
        self.tasks.spawn(async move {
            match conn::dial(&shared, addr, permit).await {
                Ok(()) | Err(PeerError::Duplicate(_)) | Err(PeerError::SelfConnection) => {}
                Err(e) => {
                    tracing::debug!(peer = %addr, "dial failed: {e}");
                    if let PeerError::Rejected { code: 2, .. } = e {
                        shared.rooms_full(addr);
                    }
                    let mut table = shared.exchange.table();
                    table.failed(addr, e.to_string());
                    if let PeerError::Rejected { retry_after, .. } = e {
                        table.retry_after(addr, retry_after);
                    }
                }
            }
            lock(&shared.exchange.dialing).remove(&addr);
        });
    }

    /// Dials `addr` now if a connection slot is free (a room wants the node there).
    pub(super) fn dial_now(self: &Arc<Self>, addr: SocketAddr) {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            self.spawn_dial(addr, permit);
        }
    }

    pub(super) fn should_skip_dial(&self, addr: &SocketAddr) -> bool {
        if lock(&self.exchange.dialing).contains(addr) || self.bans.has_addr(addr) || undialable(addr).is_some() {
            return true;
        }
        if self.local_addr == Some(*addr) {
            return true;
        }
        // Only the id verified there: an address must be dialled once to be
        // verified (and shared), even when its node is connected another way.
        let known_id = self.exchange.table().get(addr).and_then(|e| e.node_id);
        if known_id.is_some_and(|id| self.registry.has_node(&id) || self.bans.is_banned(&id, addr)) {
            return true;
        }
        // Already connected to whoever listens there, and the address is verified.
        self.registry.has_addr(addr)
    }

    /// Adds an address learned from a peer, with the node id a dial there must
    /// meet, unless the id or address is banned or the address undialable.
    pub(super) fn learn(&self, peer: PeerEntry) {
        if self.bans.is_banned(&peer.node_id, &peer.addr) {
            return;
        }
        self.exchange.add(peer.addr, false);
        self.exchange.table().expect(peer.addr, peer.node_id, false);
    }

    /// Tells every connection but `except` about a newly verified address.
    pub(super) fn announce(&self, peer: PeerEntry, except: u64) {
        if !self.config.pex {
            return;
        }
        for conn in self.registry.all() {
            if conn.conn_id != except && conn.listen_addr != Some(peer.addr) && conn.node_id != peer.node_id {
                conn.send(Frame::Peers(vec![peer]));
            }
        }
    }

    /// The PEERS frame for `conn`: verified addresses (new since `since` if given),
    /// or None when a periodic update would be empty.
    pub(super) fn peers_frame(&self, conn: &PeerConn, since: Option<Instant>) -> Option<Frame> {
        let mut list =
            if self.config.pex { self.exchange.table().shareable(MAX_PEERS_PER_FRAME + 1, since) } else { Vec::new() };
        list.retain(|(a, id)| Some(*a) != conn.listen_addr && *a != conn.addr && *id != conn.node_id);
        list.truncate(MAX_PEERS_PER_FRAME);
        *lock(&conn.peers_sent) = Some(Instant::now());
        let list = list.into_iter().map(|(addr, node_id)| PeerEntry { node_id, addr }).collect::<Vec<_>>();
        (since.is_none() || !list.is_empty()).then_some(Frame::Peers(list))
    }
}
