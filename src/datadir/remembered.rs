//! Remembered peers: nodes this node completed a handshake with, kept in the
//! data directory (`peers.json`) so that a later `pex fetch ROOT` with no
//! address starts from them. Bounded; entries not seen for 30 days are dropped.

use super::{write_atomic, DataDir};
use crate::hash::NodeId;
use serde::{Deserialize, Serialize};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Most peers remembered.
pub const MAX_REMEMBERED: usize = 256;
/// A peer not seen for this long is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);

/// One remembered peer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RememberedPeer {
    /// Its node id, hex.
    pub node_id: String,
    /// Where it accepts connections.
    pub addr: SocketAddr,
    /// When this node last completed a handshake with it (seconds since 1970).
    pub last_seen: u64,
    /// Whether it ever sent this node file data.
    #[serde(default)]
    pub shared: bool,
}

impl RememberedPeer {
    /// Its node id, if the record holds a valid one.
    pub fn id(&self) -> Option<NodeId> {
        self.node_id.parse().ok()
    }
}

/// Seconds since 1970, now.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Keeps the entries seen within [`FORGET_AFTER`] of `now` with a valid id,
/// one per node id (the latest), those that shared first, then most recent,
/// at most [`MAX_REMEMBERED`].
pub fn tidy(mut peers: Vec<RememberedPeer>, now: u64) -> Vec<RememberedPeer> {
    peers.retain(|p| p.id().is_some() && now.saturating_sub(p.last_seen) <= FORGET_AFTER.as_secs());
    peers.sort_by_key(|p| std::cmp::Reverse(p.last_seen));
    let mut seen = std::collections::HashSet::new();
    peers.retain(|p| seen.insert(p.node_id.clone()));
    peers.sort_by_key(|p| std::cmp::Reverse((p.shared, p.last_seen)));
    peers.truncate(MAX_REMEMBERED);
    peers
}

impl DataDir {
    /// The remembered peers, tidied; an unreadable or damaged list counts as empty.
    pub fn remembered(&self) -> Vec<RememberedPeer> {
        let list = std::fs::read(self.path().join("peers.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<RememberedPeer>>(&b).ok())
            .unwrap_or_default();
        tidy(list, now_secs())
    }

    /// Replaces the remembered peers with `peers`, tidied.
    pub fn save_remembered(&self, peers: Vec<RememberedPeer>) -> io::Result<()> {
        let list = tidy(peers, now_secs());
        write_atomic(&self.path().join("peers.json"), &serde_json::to_vec_pretty(&list).map_err(io::Error::other)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u8, seen: u64, shared: bool) -> RememberedPeer {
        RememberedPeer {
            node_id: NodeId([id; 32]).to_hex(),
            addr: SocketAddr::from(([0xfd00, 0, 0, 0, 0, 0, 0, id as u16], 9000)),
            last_seen: seen,
            shared,
        }
    }

    #[test]
    fn stale_duplicate_and_damaged_entries_go_and_sharers_come_first() {
        let now = 100 * 24 * 3600;
        let day = 24 * 3600;
        let mut bad = peer(9, now, true);
        bad.node_id = "not hex".into();
        let list = vec![
            peer(1, now - 31 * day, true),
            peer(2, now - 29 * day, false),
            peer(3, now - day, false),
            peer(3, now - 2 * day, true),
            peer(4, now - 10 * day, true),
            bad,
        ];
        let kept: Vec<(u8, bool)> = tidy(list, now).iter().map(|p| (p.id().unwrap().0[0], p.shared)).collect();
        assert_eq!(kept, vec![(4, true), (3, false), (2, false)]);
        let many: Vec<RememberedPeer> = (0..=255u8).chain(0..10).map(|i| peer(i, now - i as u64, false)).collect();
        assert_eq!(tidy(many, now).len(), MAX_REMEMBERED);
    }

    #[test]
    fn the_list_survives_a_save_and_a_damaged_file_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let dd = DataDir::open(dir.path()).unwrap();
        assert!(dd.remembered().is_empty());
        assert!(now_secs() > 1_700_000_000, "now_secs is not the time of day");
        dd.save_remembered(vec![peer(1, now_secs(), true)]).unwrap();
        // A peer last seen 31 days ago is not kept by a save today.
        dd.save_remembered(vec![peer(1, now_secs(), true), peer(2, now_secs() - 31 * 24 * 3600, true)]).unwrap();
        assert_eq!(dd.remembered(), vec![peer(1, dd.remembered()[0].last_seen, true)]);
        std::fs::write(dir.path().join("peers.json"), b"{ broken").unwrap();
        assert!(dd.remembered().is_empty());
    }
}
