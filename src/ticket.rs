//! Tickets: a root and where to fetch it, in one string a user can paste
//! (docs/PROTOCOL.md, "Tickets"): `pex:ROOT?peer=NODEID@[ADDR]:PORT&peer=…`.
//! Each peer carries its node id, so a dial pins the key it expects. Pure:
//! parsing and formatting only.

use crate::hash::{Hash, NodeId};
use crate::peers::undialable;
use std::fmt;
use std::net::SocketAddr;

/// The URI scheme, with its colon.
pub const SCHEME: &str = "pex:";
/// Most peers one ticket lists.
pub const MAX_PEERS: usize = 8;
/// Longest ticket accepted, in bytes: 8 peers of the longest form fit well within it.
pub const MAX_LEN: usize = 2048;

/// A root and the nodes that serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The file's root hash.
    pub root: Hash,
    /// Nodes to fetch it from, each with the node id it must prove.
    pub peers: Vec<(NodeId, SocketAddr)>,
}

/// Why a string is not a ticket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// It does not start with `pex:`.
    #[error("a ticket starts with \"pex:\"")]
    Scheme,
    /// Longer than [`MAX_LEN`].
    #[error("a ticket is at most {MAX_LEN} bytes")]
    TooLong,
    /// The root is not 64 hex digits.
    #[error("the root is not 64 hex digits")]
    Root,
    /// A parameter is not `key=value`.
    #[error("parameter {0} is not key=value")]
    Parameter(usize),
    /// A peer is not `NODEID@[ADDR]:PORT`.
    #[error("peer {0} is not NODEID@[ADDR]:PORT with a 64-hex-digit node id")]
    Peer(usize),
    /// A peer's address can never be a peer (port 0, unspecified, multicast, broadcast).
    #[error("peer {0}: {1} can never be a peer")]
    Undialable(usize, &'static str),
    /// More than [`MAX_PEERS`] peers.
    #[error("more than {MAX_PEERS} peers")]
    TooManyPeers,
}

impl Ticket {
    /// Parses a ticket. Parameters other than `peer` are ignored (room for
    /// later means of discovery); `%5B`/`%5D` stand for `[`/`]`.
    pub fn parse(s: &str) -> Result<Ticket, TicketError> {
        if s.len() > MAX_LEN {
            return Err(TicketError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(TicketError::Scheme)?;
        let (root, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        if root.len() != 64 {
            return Err(TicketError::Root);
        }
        let root: Hash = root.parse().map_err(|_| TicketError::Root)?;
        let mut peers = Vec::new();
        for (i, param) in query.into_iter().flat_map(|q| q.split('&')).enumerate() {
            let (key, value) = param.split_once('=').ok_or(TicketError::Parameter(i + 1))?;
            if key != "peer" {
                continue;
            }
            let n = peers.len() + 1;
            if n > MAX_PEERS {
                return Err(TicketError::TooManyPeers);
            }
            let value = value.replace("%5B", "[").replace("%5b", "[").replace("%5D", "]").replace("%5d", "]");
            let (id, addr) = value.split_once('@').ok_or(TicketError::Peer(n))?;
            if id.len() != 64 {
                return Err(TicketError::Peer(n));
            }
            let id: NodeId = id.parse().map_err(|_| TicketError::Peer(n))?;
            let addr: SocketAddr = addr.parse().map_err(|_| TicketError::Peer(n))?;
            if let Some(why) = undialable(&addr) {
                return Err(TicketError::Undialable(n, why));
            }
            peers.push((id, addr));
        }
        Ok(Ticket { root, peers })
    }

    /// Whether `s` is meant as a ticket (rather than a bare root).
    pub fn looks_like(s: &str) -> bool {
        s.starts_with(SCHEME)
    }
}

impl fmt::Display for Ticket {
    /// `pex:ROOT?peer=…&peer=…`; at most [`MAX_PEERS`] peers are written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.root)?;
        for (i, (id, addr)) in self.peers.iter().take(MAX_PEERS).enumerate() {
            let sep = if i == 0 { '?' } else { '&' };
            // SocketAddr shows IPv6 in brackets, IPv4 without.
            write!(f, "{sep}peer={id}@{addr}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Hash {
        Hash::of(b"pex")
    }

    #[test]
    fn a_ticket_round_trips_and_keeps_its_ids() {
        let t = Ticket {
            root: root(),
            peers: vec![
                (NodeId([1; 32]), "[2001:db8::1]:9000".parse().unwrap()),
                (NodeId([2; 32]), "192.0.2.7:9001".parse().unwrap()),
            ],
        };
        let s = t.to_string();
        assert_eq!(
            s,
            format!(
                "pex:{}?peer={}@[2001:db8::1]:9000&peer={}@192.0.2.7:9001",
                root(),
                NodeId([1; 32]),
                NodeId([2; 32])
            )
        );
        assert_eq!(Ticket::parse(&s).unwrap(), t);
        let bare = Ticket { root: root(), peers: vec![] };
        assert_eq!(Ticket::parse(&bare.to_string()).unwrap(), bare);
    }

    #[test]
    fn brackets_may_come_percent_encoded_and_unknown_parameters_are_ignored() {
        let id = NodeId([3; 32]);
        let s = format!("pex:{}?dht=1&peer={id}@%5B::1%5D:9000&x=", root());
        let t = Ticket::parse(&s).unwrap();
        assert_eq!(t.peers, vec![(id, "[::1]:9000".parse().unwrap())]);
    }

    #[test]
    fn eight_peers_and_2048_bytes_are_the_limits() {
        let id = NodeId([6; 32]);
        let eight: String = (0..8).map(|i| format!("&peer={id}@[::1]:{}", 9000 + i)).collect();
        let s = format!("pex:{}?x=1{eight}", root());
        assert_eq!(Ticket::parse(&s).unwrap().peers.len(), 8);
        let at_limit = format!("{s}&pad={}", "p".repeat(MAX_LEN - s.len() - 5));
        assert_eq!(at_limit.len(), MAX_LEN);
        assert!(Ticket::parse(&at_limit).is_ok());
        assert_eq!(Ticket::parse(&format!("{at_limit}p")), Err(TicketError::TooLong));
        assert!(Ticket::looks_like(&s) && !Ticket::looks_like(&root().to_string()));
    }

    #[test]
    fn malformed_tickets_are_refused_with_the_reason() {
        let id = NodeId([4; 32]);
        let r = root();
        let cases = [
            (format!("pax:{r}"), TicketError::Scheme),
            (r.to_string(), TicketError::Scheme),
            (format!("pex:{}", &r.to_string()[..63]), TicketError::Root),
            (format!("pex:{}zz", &r.to_string()[..62]), TicketError::Root),
            (format!("pex:{r}?peer"), TicketError::Parameter(1)),
            (format!("pex:{r}?peer={id}"), TicketError::Peer(1)),
            (format!("pex:{r}?peer={}@[::1]:9000", &id.to_string()[..63]), TicketError::Peer(1)),
            (format!("pex:{r}?peer={id}@::1:9000"), TicketError::Peer(1)),
            (format!("pex:{r}?peer={id}@[::1]:0"), TicketError::Undialable(1, "port 0")),
            (format!("pex:{r}?peer={id}@[ff02::1]:9000"), TicketError::Undialable(1, "a multicast address")),
            (format!("pex:{r}{}", "&x=1".repeat(600)), TicketError::TooLong),
        ];
        for (s, want) in cases {
            assert_eq!(Ticket::parse(&s), Err(want), "{s}");
        }
        let nine: String = (0..9).map(|i| format!("&peer={id}@[::1]:{}", 9000 + i)).collect();
        assert_eq!(Ticket::parse(&format!("pex:{r}?x=1{nine}")), Err(TicketError::TooManyPeers));
    }
}
