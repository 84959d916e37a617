//! Finding holders of a root by its hash alone, without ever publishing the
//! root: the lookup key that discovery uses in its place, the local-network
//! multicast protocol ([`lan`]) and the BitTorrent Mainline DHT ([`dht`]).
//! What each finds is a [`Candidate`]: an address to dial, with the node id
//! the dial must prove when the means carries one.

pub mod dht;
pub mod ifaces;
pub mod lan;

use crate::hash::{Hash, NodeId};
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::SocketAddr;

/// What discovery publishes in place of a root: `SHA-256("pex-lookup" ‖ root)`.
/// Whoever knows the root can compute it; whoever sees it cannot fetch the file.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LookupKey(pub [u8; 32]);

impl LookupKey {
    /// The lookup key of `root`.
    pub fn of(root: &Hash) -> LookupKey {
        let mut h = Sha256::new();
        h.update(b"pex-lookup");
        h.update(root.as_bytes());
        LookupKey(h.finalize().into())
    }

    /// The first 20 bytes: the info-hash announced on the Mainline DHT.
    pub fn dht_id(&self) -> [u8; 20] {
        let mut id = [0u8; 20];
        id.copy_from_slice(&self.0[..20]);
        id
    }
}

impl fmt::Display for LookupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hash::hex(&self.0))
    }
}

impl fmt::Debug for LookupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LookupKey({self})")
    }
}

/// How a candidate was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Means {
    /// A multicast answer on the local network.
    Lan,
    /// A Mainline DHT get_peers result.
    Dht,
}

/// A holder found by discovery: where to dial, and the node id it must prove
/// there (LAN answers carry one; DHT results do not, and are verified by the
/// handshake and the manifest alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The TCP address to dial.
    pub addr: SocketAddr,
    /// The node id claimed for it, if the means carries one.
    pub node_id: Option<NodeId>,
    /// Which means found it.
    pub means: Means,
}

/// How many peers each means found for one fetch (`--json` `discovered`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Discovered {
    /// Remembered peers started from.
    pub remembered: usize,
    /// Holders that answered on the local network.
    pub lan: usize,
    /// Peers the DHT returned.
    pub dht: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lookup_key_is_sha256_of_the_label_and_the_root_and_never_the_root() {
        let root = Hash([0x11; 32]);
        let key = LookupKey::of(&root);
        let mut joined = b"pex-lookup".to_vec();
        joined.extend_from_slice(&[0x11; 32]);
        assert_eq!(key.0, Hash::of(&joined).0);
        assert_ne!(key.0, root.0);
        assert_eq!(key.dht_id(), key.0[..20]);
        assert_eq!(format!("{key:?}"), format!("LookupKey({LOOKUP_KEY_OF_11})"));
        // The value PROTOCOL.md quotes for this root.
        assert_eq!(key.to_string(), LOOKUP_KEY_OF_11);
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap();
        assert!(doc.contains(LOOKUP_KEY_OF_11) && doc.contains(&LOOKUP_KEY_OF_11[..40]), "PROTOCOL.md 10.1");
    }

    /// `SHA-256("pex-lookup" ‖ 0x11 × 32)`, as docs/PROTOCOL.md gives it.
    const LOOKUP_KEY_OF_11: &str = "313f8a6d2e20bb4b9689fa21d09d330b7a8f4f8181f531dd69efebafa0d92460";
}
