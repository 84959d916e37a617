//! The table of known peer addresses behind peer exchange: candidates learned
//! from PEERS, addresses verified by a completed HELLO, failures and backoff.
//!
//! Only verified addresses (this node completed a HELLO there itself) are ever
//! shared, so nobody can use pex to make a swarm dial a third party. The table
//! is bounded; unverified, failing and stale entries are evicted first.
//!
//! Every failed dial and every connection that ends badly (a protocol
//! violation, a REJECT, a close soon after the handshake) pushes the next dial
//! of that address back exponentially, so a peer that misbehaves right after
//! the handshake is not redialled in a tight loop. Addresses that can never be
//! a peer (unspecified, multicast, broadcast, port 0, and their IPv4-mapped
//! forms) never enter the table.

use crate::hash::NodeId;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Most addresses kept.
pub const MAX_KNOWN_PEERS: usize = 2000;
/// Retry delay after the first failure; doubles per failure since the last good connection.
pub const BACKOFF_START: Duration = Duration::from_millis(500);
/// Failed dials after which a learned, never-verified address is forgotten.
const MAX_FAILURES: u32 = 4;
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// Why `addr` can never be a peer, or `None` if it may be dialled:
/// unspecified, multicast and broadcast addresses, port 0, and the
/// IPv4-mapped IPv6 forms of these.
pub fn undialable(addr: &SocketAddr) -> Option<&'static str> {
    if addr.port() == 0 {
        return Some("port 0");
    }
    let ip = match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_multicast() {
        return Some("a multicast address");
    }
    if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Some("the broadcast address");
    }
    None
}

/// What the node knows of one address.
#[derive(Clone, Debug)]
pub struct KnownPeer {
    /// The node id last seen at this address.
    pub node_id: Option<NodeId>,
    /// The node id a dial of this address must meet (`--peer NODEID@…`, or
    /// the id PEERS gave with it); another id there ends the connection.
    pub expected: Option<NodeId>,
    /// Its HELLO allowed sharing its address in PEERS.
    pub shareable: bool,
    /// This node completed a HELLO at this address.
    pub verified: bool,
    /// Given on the command line: never evicted, always retried.
    pub pinned: bool,
    /// This address turned out to be ourselves.
    pub is_self: bool,
    /// Last successful contact.
    pub last_seen: Option<Instant>,
    /// Dial failures since the last success.
    pub failures: u32,
    /// Not to be dialled before this.
    pub next_try: Instant,
    /// The last dial error, for messages.
    pub last_error: Option<String>,
    /// When it entered the table (for PEERS re-sends of "what is new").
    pub added: Instant,
}

/// The bounded table of known addresses.
#[derive(Debug, Default)]
pub struct PeerTable {
    entries: HashMap<SocketAddr, KnownPeer>,
}

impl PeerTable {
    /// Number of known addresses.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no address is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// One entry.
    pub fn get(&self, addr: &SocketAddr) -> Option<&KnownPeer> {
        self.entries.get(addr)
    }

    /// Adds an address to dial; `pinned` ones come from the user. When the table
    /// is full, a learned address is dropped (cheaply: floods cost O(1) each)
    /// while a pinned one evicts the least useful entry.
    pub fn add(&mut self, addr: SocketAddr, pinned: bool) {
        self.insert(addr, pinned, pinned);
    }

    fn insert(&mut self, addr: SocketAddr, pinned: bool, may_evict: bool) {
        if undialable(&addr).is_some() {
            return;
        }
        let now = Instant::now();
        if let Some(e) = self.entries.get_mut(&addr) {
            if pinned && !e.pinned {
                // The user gives an address learned before: a learned pin no longer applies.
                e.expected = None;
            }
            e.pinned |= pinned;
            return;
        }
        if self.entries.len() >= MAX_KNOWN_PEERS && !(may_evict && self.evict_one()) {
            return;
        }
        self.entries.insert(
            addr,
            KnownPeer {
                node_id: None,
                expected: None,
                shareable: false,
                verified: false,
                pinned,
                is_self: false,
                last_seen: None,
                failures: 0,
                next_try: now,
                last_error: None,
                added: now,
            },
        );
    }

    /// Pins the node id a dial of `addr` must meet. The user's pin (`user`)
    /// replaces any other; one learned (from PEERS, or an inbound HELLO) only
    /// fills an empty pin of a learned address: an address the user gave
    /// without an id accepts whichever node proves itself there.
    pub fn expect(&mut self, addr: SocketAddr, id: NodeId, user: bool) {
        if let Some(e) = self.entries.get_mut(&addr) {
            if user || (e.expected.is_none() && !e.pinned) {
                e.expected = Some(id);
            }
        }
    }

    /// A HELLO completed with `id` at `addr`, which this node dialled;
    /// `shareable` is its HELLO's permission to share the address.
    /// Returns true the first time the address is verified (worth telling peers at once).
    /// The back-off is not reset here: only a connection that ends well does that.
    pub fn verified(&mut self, addr: SocketAddr, id: NodeId, shareable: bool) -> bool {
        self.insert(addr, false, true);
        let Some(e) = self.entries.get_mut(&addr) else { return false };
        let new = !e.verified;
        e.verified = true;
        e.node_id = Some(id);
        e.shareable = shareable;
        e.last_error = None;
        e.last_seen = Some(Instant::now());
        new
    }

    /// A connection with the node at `addr` ended: well (it may be dialled
    /// again at once and its back-off is forgotten) or badly (`why`: the next
    /// dial waits as after a failed one).
    pub fn ended(&mut self, addr: SocketAddr, why: Option<String>) {
        match why {
            Some(why) => self.failed(addr, why),
            None => {
                if let Some(e) = self.entries.get_mut(&addr) {
                    e.failures = 0;
                    e.next_try = Instant::now();
                }
            }
        }
    }

    /// The peer at `addr` asked, in its REJECT, to wait `secs` seconds before
    /// the next dial; 0 asks not to be dialled again, so a learned address is
    /// forgotten (one the user gave keeps its back-off).
    pub fn retry_after(&mut self, addr: SocketAddr, secs: u16) {
        let Some(e) = self.entries.get_mut(&addr) else { return };
        if secs == 0 {
            if !e.pinned {
                self.entries.remove(&addr);
            }
            return;
        }
        e.next_try = e.next_try.max(Instant::now() + Duration::from_secs(secs.into()));
    }

    /// `addr` answered with our own node id.
    pub fn mark_self(&mut self, addr: SocketAddr) {
        self.insert(addr, false, true);
        if let Some(e) = self.entries.get_mut(&addr) {
            e.is_self = true;
            e.verified = false;
        }
    }

    /// A dial of `addr` failed; it is retried after a growing delay.
    pub fn failed(&mut self, addr: SocketAddr, error: String) {
        if let Some(e) = self.entries.get_mut(&addr) {
            e.failures = e.failures.saturating_add(1);
            let backoff = BACKOFF_START.saturating_mul(1 << (e.failures - 1).min(16)).min(BACKOFF_MAX);
            let jitter = backoff.mul_f64(fastrand::f64() * 0.25);
            e.next_try = Instant::now() + backoff + jitter;
            e.last_error = Some(error);
        }
    }

    /// Forgets learned addresses that keep failing, making room for new ones.
    pub fn prune(&mut self) {
        self.entries.retain(|_, e| e.pinned || e.verified || e.is_self || e.failures < MAX_FAILURES);
    }

    /// Removes an address (banned, or the user said so).
    pub fn remove(&mut self, addr: &SocketAddr) {
        self.entries.remove(addr);
    }

    /// Addresses due for a dial now, pinned first.
    pub fn due(&self, now: Instant, pex: bool) -> Vec<SocketAddr> {
        let mut due: Vec<(bool, SocketAddr)> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.is_self && e.next_try <= now && (pex || e.pinned))
            .map(|(a, e)| (!e.pinned, *a))
            .collect();
        due.sort();
        due.into_iter().map(|(_, a)| a).collect()
    }

    /// Verified addresses whose nodes allow sharing them, with their node
    /// ids, to share in PEERS, newest contact first, at most `max`;
    /// `since` keeps only those added after it.
    pub fn shareable(&self, max: usize, since: Option<Instant>) -> Vec<(SocketAddr, NodeId)> {
        let mut v: Vec<(&SocketAddr, &KnownPeer)> = self
            .entries
            .iter()
            .filter(|(a, e)| {
                // A link-local address means nothing off its link (PEERS carries no scope).
                !matches!(a, SocketAddr::V6(v6) if v6.ip().is_unicast_link_local())
                    && e.verified
                    && e.shareable
                    && e.node_id.is_some()
                    && !e.is_self
                    && e.failures < 3
                    // Verified entries were seen no earlier than they were added, so
                    // "added or re-verified since" is "seen since".
                    && since.is_none_or(|s| e.last_seen.is_some_and(|l| l > s))
            })
            .collect();
        v.sort_by_key(|(_, e)| std::cmp::Reverse(e.last_seen));
        v.into_iter().take(max).filter_map(|(a, e)| Some((*a, e.node_id?))).collect()
    }

    /// Evicts the least useful unpinned entry; false if all are pinned.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| !e.pinned)
            .min_by_key(|(_, e)| (e.verified, std::cmp::Reverse(e.failures), e.last_seen, e.added))
            .map(|(a, _)| *a);
        match victim {
            Some(a) => {
                self.entries.remove(&a);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests;
