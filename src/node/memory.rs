//! The node's memory of peers (`--no-remember` turns it off): every node it
//! completed a handshake with, where it listens and whether it sent us file
//! data, loaded from the data directory at start and written back every
//! minute and at shutdown, so a later fetch needs no address.

use crate::datadir::{DataDir, RememberedPeer};
use crate::hash::NodeId;
use crate::lock;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

/// Remembered peers by node id, and whether they changed since the last save.
#[derive(Default)]
pub(crate) struct Memory(Mutex<(HashMap<NodeId, RememberedPeer>, bool)>);

impl Memory {
    /// Starts from what `dd` remembers.
    pub fn load(dd: &DataDir) -> Memory {
        let map = dd.remembered().into_iter().filter_map(|p| Some((p.id()?, p))).collect();
        Memory(Mutex::new((map, false)))
    }

    /// A handshake completed with `id`, which listens at `addr`.
    pub fn seen(&self, id: NodeId, addr: SocketAddr) {
        let mut m = lock(&self.0);
        let now = crate::datadir::remembered_now();
        let e = m.0.entry(id).or_insert_with(|| RememberedPeer {
            node_id: id.to_hex(),
            addr,
            last_seen: now,
            shared: false,
        });
        e.addr = addr;
        e.last_seen = now;
        m.1 = true;
    }

    /// `id` sent us file data.
    pub fn shared(&self, id: &NodeId) {
        let mut m = lock(&self.0);
        if let Some(e) = m.0.get_mut(id) {
            if !e.shared {
                e.shared = true;
                m.1 = true;
            }
        }
    }

    /// Peers to start a fetch from: those that shared first, most recent first.
    pub fn peers(&self) -> Vec<(SocketAddr, NodeId)> {
        let all = lock(&self.0).0.values().cloned().collect();
        let list = crate::datadir::tidy_remembered(all, crate::datadir::remembered_now());
        list.into_iter().filter_map(|p| Some((p.addr, p.id()?))).collect()
    }

    /// Writes the list to `dd` if it changed.
    pub fn save(&self, dd: &DataDir) {
        let list = {
            let mut m = lock(&self.0);
            if !m.1 {
                return;
            }
            m.1 = false;
            m.0.values().cloned().collect()
        };
        if let Err(e) = dd.save_remembered(list) {
            tracing::warn!("cannot save remembered peers: {}", crate::text::io_message(&e));
        }
    }
}
