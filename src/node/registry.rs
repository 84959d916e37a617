//! The node's bookkeeping of peers, one concern and one lock each: the live
//! connections ([`Registry`]), the banned ([`Bans`]), the downloads that want
//! to hear about peers ([`Routes`]) and this run's byte totals ([`Totals`]).

use crate::fetch::DownloadEvent;
use crate::hash::{Hash, NodeId};
use crate::lock;
use crate::peer::{Direction, PeerConn, PeerStats};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Live connections by connection and by node id (at most one per node id),
/// and the byte counters of every node id met in this run.
#[derive(Default)]
pub(crate) struct Registry(Mutex<RegistryInner>);

#[derive(Default)]
struct RegistryInner {
    next_id: u64,
    by_conn: HashMap<u64, Arc<PeerConn>>,
    by_node: HashMap<NodeId, u64>,
    history: HashMap<NodeId, Arc<PeerStats>>,
}

impl Registry {
    /// Registers a connection built by `make` (given its connection id and the
    /// node id's counters). With `node_id` already connected, only one of the
    /// two stays: the one in direction `keep` (dialled by the smaller node id);
    /// two in the same direction keep the older. Returns the new one and the
    /// connection it displaced (to close with REJECT(1)), or, when the new one
    /// is refused, the direction of the one that stays. `shown` is the address
    /// reported for it in statistics.
    pub fn register(
        &self,
        node_id: NodeId,
        direction: Direction,
        keep: Direction,
        shown: SocketAddr,
        make: impl FnOnce(u64, Arc<PeerStats>) -> PeerConn,
    ) -> Result<(Arc<PeerConn>, Option<Arc<PeerConn>>), Direction> {
        let mut reg = lock(&self.0);
        let mut displaced = None;
        if let Some(old) = reg.by_node.get(&node_id).and_then(|c| reg.by_conn.get(c)).cloned() {
            if old.is_closed() {
                // Ending already (a REJECT, an error, the peer's end of stream): it
                // gives up the node id, so a peer that reconnects at once is taken.
                reg.by_node.remove(&node_id);
            } else if old.direction == direction || direction != keep {
                return Err(old.direction);
            } else {
                reg.by_conn.remove(&old.conn_id);
                reg.by_node.remove(&node_id);
                displaced = Some(old);
            }
        }
        reg.next_id += 1;
        let conn_id = reg.next_id;
        let stats = reg.history.entry(node_id).or_insert_with(|| Arc::new(PeerStats::new(shown))).clone();
        *lock(&stats.addr) = shown;
        let conn = Arc::new(make(conn_id, stats));
        reg.by_node.insert(node_id, conn_id);
        reg.by_conn.insert(conn_id, conn.clone());
        Ok((conn, displaced))
    }

    /// Unregisters a closed connection (not another one of the same node id).
    pub fn remove(&self, conn: &PeerConn) {
        let mut reg = lock(&self.0);
        if reg.by_conn.remove(&conn.conn_id).is_some() && reg.by_node.get(&conn.node_id) == Some(&conn.conn_id) {
            reg.by_node.remove(&conn.node_id);
        }
    }

    /// Every live connection.
    pub fn all(&self) -> Vec<Arc<PeerConn>> {
        lock(&self.0).by_conn.values().cloned().collect()
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        lock(&self.0).by_conn.len()
    }

    /// Whether a connection to `id` is up.
    pub fn has_node(&self, id: &NodeId) -> bool {
        lock(&self.0).by_node.contains_key(id)
    }

    /// The live connection to `id`, if any.
    pub fn by_node(&self, id: &NodeId) -> Option<Arc<PeerConn>> {
        let reg = lock(&self.0);
        reg.by_node.get(id).and_then(|c| reg.by_conn.get(c)).cloned()
    }

    /// Whether some connection comes from `addr`.
    pub fn has_addr(&self, addr: &SocketAddr) -> bool {
        lock(&self.0).by_conn.values().any(|c| c.addr == *addr)
    }

    /// Counters of every node id met: (id, stats).
    pub fn history(&self) -> Vec<(NodeId, Arc<PeerStats>)> {
        lock(&self.0).history.iter().map(|(id, s)| (*id, s.clone())).collect()
    }
}

/// Node ids and addresses banned for the rest of this run.
#[derive(Default)]
pub(crate) struct Bans(Mutex<BansInner>);

#[derive(Default)]
struct BansInner {
    ids: HashSet<NodeId>,
    addrs: HashSet<SocketAddr>,
}

impl Bans {
    /// Bans a node id and the addresses it was seen at.
    pub fn ban(&self, id: NodeId, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut b = lock(&self.0);
        b.ids.insert(id);
        b.addrs.extend(addrs);
    }

    /// Whether the node id or the address is banned.
    pub fn is_banned(&self, id: &NodeId, addr: &SocketAddr) -> bool {
        let b = lock(&self.0);
        b.ids.contains(id) || b.addrs.contains(addr)
    }

    /// Whether the address is banned.
    pub fn has_addr(&self, addr: &SocketAddr) -> bool {
        lock(&self.0).addrs.contains(addr)
    }
}

/// The downloads running in this node, by root: where to send what peers do.
#[derive(Default)]
pub(crate) struct Routes(Mutex<HashMap<Hash, mpsc::UnboundedSender<DownloadEvent>>>);

impl Routes {
    /// Adds a download; false if `root` is being fetched already.
    pub fn add(&self, root: Hash, tx: mpsc::UnboundedSender<DownloadEvent>) -> bool {
        let mut r = lock(&self.0);
        if r.contains_key(&root) {
            return false;
        }
        r.insert(root, tx);
        true
    }

    /// Removes a download that ended.
    pub fn remove(&self, root: &Hash) {
        lock(&self.0).remove(root);
    }

    /// Tells every download about a new connection.
    pub fn peer_joined(&self, conn: &Arc<PeerConn>) {
        for tx in lock(&self.0).values() {
            let _ = tx.send(DownloadEvent::PeerJoined(conn.clone()));
        }
    }

    /// Tells every download a connection closed.
    pub fn peer_left(&self, conn_id: u64) {
        for tx in lock(&self.0).values() {
            let _ = tx.send(DownloadEvent::PeerLeft(conn_id));
        }
    }

    /// Passes a BITFIELD to the download of `root`, if one runs.
    /// A range that does not start at piece 0, or that fills a whole frame
    /// (part of a file over 8 TiB), reaches the download as one HAVE per set bit.
    pub fn bitfield(&self, root: &Hash, conn: u64, first: u32, bits: Bytes) {
        if let Some(tx) = lock(&self.0).get(root) {
            if first == 0 && bits.len() < crate::peer::MAX_BITFIELD_BYTES {
                let _ = tx.send(DownloadEvent::Bitfield { conn, bits });
            } else {
                for index in crate::bitfield::set_indices(first, &bits) {
                    let _ = tx.send(DownloadEvent::Have { conn, index });
                }
            }
        }
    }

    /// Passes a HAVE to the download of `root`, if one runs.
    pub fn have(&self, root: &Hash, conn: u64, index: u32) {
        if let Some(tx) = lock(&self.0).get(root) {
            let _ = tx.send(DownloadEvent::Have { conn, index });
        }
    }
}

/// This run's totals.
#[derive(Default)]
pub(crate) struct Totals {
    /// GIVE payload bytes sent.
    pub uploaded: AtomicU64,
    /// GIVE payload bytes received.
    pub downloaded: AtomicU64,
    /// Pieces that failed verification.
    pub pieces_rejected: AtomicU64,
}

impl Totals {
    /// Adds transferred bytes.
    pub fn add(&self, up: u64, down: u64) {
        if up > 0 {
            self.uploaded.fetch_add(up, Ordering::Relaxed);
        }
        if down > 0 {
            self.downloaded.fetch_add(down, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_connection_per_node_id_and_counters_survive_reconnects() {
        let reg = Registry::default();
        let id = NodeId([7; 32]);
        let addr: SocketAddr = "[fd00::7]:9000".parse().unwrap();
        let make = |conn_id, stats| PeerConn::detached_with(conn_id, id, stats).0;
        let (out, inb) = (Direction::Outbound, Direction::Outbound);
        let (first, _) = reg.register(id, out, out, addr, make).expect("the first connection is registered");
        assert!(
            reg.register(id, inb, out, addr, make).is_err(),
            "a second connection in the same direction is refused"
        );
        assert!(reg.has_node(&id) && reg.has_addr(&first.addr) && reg.len() == 1);
        first.stats.uploaded.fetch_add(5, Ordering::Relaxed);
        reg.remove(&first);
        assert_eq!(reg.len(), 0);
        assert!(!reg.has_node(&id));
        // The same node id again: allowed, with a new connection id, and its byte counters carry on.
        let (again, _) = reg.register(id, out, out, addr, make).expect("reconnecting is allowed");
        assert_ne!(again.conn_id, first.conn_id);
        assert_eq!(reg.history().len(), 1);
        assert_eq!(reg.history()[0].1.uploaded.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn of_two_connections_the_one_in_the_kept_direction_stays() {
        let reg = Registry::default();
        let id = NodeId([7; 32]);
        let addr: SocketAddr = "[fd00::7]:9000".parse().unwrap();
        let (out, inb) = (Direction::Outbound, Direction::Inbound);
        let inbound = |conn_id, stats| {
            let (mut c, _) = PeerConn::detached_with(conn_id, id, stats);
            c.direction = Direction::Inbound;
            c
        };
        let outbound = |conn_id, stats| PeerConn::detached_with(conn_id, id, stats).0;
        let (first, _) = reg.register(id, inb, out, addr, inbound).unwrap();
        assert_eq!(reg.register(id, inb, out, addr, inbound).err(), Some(inb), "same direction: the older stays");
        let (kept, displaced) = reg.register(id, out, out, addr, outbound).expect("the kept direction wins");
        assert_eq!(displaced.unwrap().conn_id, first.conn_id);
        assert_eq!(reg.len(), 1);
        reg.remove(&first);
        assert!(reg.has_node(&id), "removing the displaced one leaves the kept one registered");
        assert_eq!(
            reg.register(id, inb, out, addr, inbound).err(),
            Some(out),
            "the other direction never displaces it"
        );
        reg.remove(&kept);
        assert!(!reg.has_node(&id));
    }

    #[test]
    fn a_closing_connection_gives_up_its_node_id_at_once() {
        let reg = Registry::default();
        let id = NodeId([7; 32]);
        let addr: SocketAddr = "[fd00::7]:9000".parse().unwrap();
        let make = |conn_id, stats| PeerConn::detached_with(conn_id, id, stats).0;
        let out = Direction::Outbound;
        let (first, _) = reg.register(id, out, out, addr, make).unwrap();
        first.close(None);
        // Still lingering (not removed), yet the same node in the same direction is taken.
        let (second, displaced) = reg.register(id, out, out, addr, make).expect("a closing one holds no id");
        assert!(displaced.is_none(), "nothing to close: it is closing already");
        reg.remove(&first);
        assert!(reg.has_node(&id), "the lingering one's removal leaves the new one");
        assert_eq!(reg.len(), 1);
        reg.remove(&second);
        assert!(!reg.has_node(&id));
    }

    #[test]
    fn bans_cover_the_node_id_and_every_address_given() {
        let bans = Bans::default();
        let (a, b): (SocketAddr, SocketAddr) = ("[fd00::1]:1".parse().unwrap(), "[fd00::1]:9000".parse().unwrap());
        bans.ban(NodeId([1; 32]), [a, b]);
        let other: SocketAddr = "[fd00::2]:1".parse().unwrap();
        assert!(bans.is_banned(&NodeId([1; 32]), &other), "the node id, wherever it comes from");
        assert!(bans.is_banned(&NodeId([2; 32]), &b), "the address, whoever it claims to be");
        assert!(!bans.is_banned(&NodeId([2; 32]), &other));
        assert!(bans.has_addr(&a) && !bans.has_addr(&other));
    }

    #[test]
    fn routes_reach_only_the_download_of_their_root() {
        let routes = Routes::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (r1, r2) = (Hash([1; 32]), Hash([2; 32]));
        assert!(routes.add(r1, tx.clone()));
        assert!(!routes.add(r1, tx), "one download per root");
        routes.have(&r2, 1, 0);
        routes.have(&r1, 1, 3);
        routes.peer_left(9);
        assert!(matches!(rx.try_recv(), Ok(DownloadEvent::Have { conn: 1, index: 3 })));
        assert!(matches!(rx.try_recv(), Ok(DownloadEvent::PeerLeft(9))));
        assert!(rx.try_recv().is_err());
        routes.remove(&r1);
        routes.peer_left(9);
        assert!(rx.try_recv().is_err(), "a removed download hears nothing");
    }
}
