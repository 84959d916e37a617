//! Discovery in the node: the LAN responder and the DHT node it runs for what
//! it holds (announcing every root's lookup key, never the root), and the
//! [`Finder`] a fetch runs to look for holders (LAN, DHT, remembered peers),
//! which feeds what it finds to the dialler and says what each means found.

use super::{NodeError, Shared};
use crate::discovery::dht::{Dht, DhtConfig, REANNOUNCE};
use crate::discovery::{lan, Candidate, LookupKey, Means};
use crate::fetch::{Progress, Stage};
use crate::hash::{Hash, NodeId};
use crate::lock;
use crate::store::Store;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How long a fetch given no address waits for LAN answers before it counts
/// the local network as tried.
pub const LAN_WAIT: Duration = Duration::from_secs(3);
/// How often the DHT routing table is saved while the node runs.
const SAVE_EVERY: Duration = Duration::from_secs(5 * 60);
/// Waits between DHT lookups of a fetch while no holder is connected.
const DHT_RETRY: [u64; 5] = [5, 10, 20, 40, 60];

/// The node's discovery services.
#[derive(Default)]
pub(crate) struct Services {
    /// LAN counters, when the responder runs.
    pub lan: Option<Arc<lan::LanStats>>,
    /// Whether fetches query the LAN.
    pub lan_lookups: bool,
    /// The DHT node, with `--dht`.
    pub dht: Option<Dht>,
    /// Roots announced on the DHT at least once.
    pub announced: AtomicUsize,
}

/// The lookup keys of what the store holds, recomputed when its roots change.
#[derive(Default)]
struct KeyIndex {
    roots: Vec<Hash>,
    keys: HashSet<LookupKey>,
}

fn holds(store: &Store, index: &Mutex<KeyIndex>, key: &LookupKey) -> bool {
    let mut roots = store.roots();
    roots.sort_unstable_by_key(|h| h.0);
    let mut index = lock(index);
    if index.roots != roots {
        index.keys = roots.iter().map(LookupKey::of).collect();
        index.roots = roots;
    }
    index.keys.contains(key)
}

/// Starts the LAN responder (when `lan` and listening on `port`) and the DHT node.
pub(super) async fn start(
    lan_on: bool,
    dht: Option<&DhtConfig>,
    id: NodeId,
    port: Option<u16>,
    store: Arc<Store>,
    shutdown: &CancellationToken,
) -> Result<Services, NodeError> {
    let mut services = Services { lan_lookups: lan_on, ..Services::default() };
    if let (true, Some(port)) = (lan_on, port) {
        let stats = Arc::new(lan::LanStats::default());
        let index = Arc::new(Mutex::new(KeyIndex::default()));
        let holds = Arc::new(move |k: &LookupKey| holds(&store, &index, k));
        let r = lan::Responder { node_id: id, port, holds, stats: stats.clone() };
        match lan::respond(r, lan::PORT, shutdown.clone()) {
            Ok(_) => services.lan = Some(stats),
            Err(e) => tracing::warn!("LAN discovery cannot answer (UDP port {}): {e}", lan::PORT),
        }
    }
    if let Some(config) = dht {
        let node = Dht::start(config).await.map_err(|e| NodeError::Dht(crate::text::io_message(&e)))?;
        services.dht = Some(node);
    }
    Ok(services)
}

/// Announces the lookup key of every root the node holds on the DHT (new
/// ones within seconds, each again every [`REANNOUNCE`]) and saves the
/// routing table now and then and at shutdown.
pub(super) async fn announce_loop(shared: Arc<Shared>) {
    let Some(dht) = shared.discovery.dht.clone() else { return };
    let mut next: HashMap<Hash, Instant> = HashMap::new();
    let mut announced: HashSet<Hash> = HashSet::new();
    let mut saved = Instant::now();
    let work = async {
        loop {
            // Not listening: nothing to announce, but the routing table is still kept.
            if let Some(port) = shared.local_addr.map(|a| a.port()) {
                for root in shared.store.roots() {
                    if next.get(&root).is_some_and(|t| *t > Instant::now()) {
                        continue;
                    }
                    let wait = match dht.announce(&LookupKey::of(&root), port).await {
                        Ok(()) => {
                            if announced.insert(root) {
                                shared.discovery.announced.store(announced.len(), Ordering::Relaxed);
                            }
                            REANNOUNCE
                        }
                        Err(e) => {
                            tracing::debug!("DHT announce failed, retrying in 5 s: {e}");
                            Duration::from_secs(5)
                        }
                    };
                    next.insert(root, Instant::now() + wait);
                }
            }
            if saved.elapsed() >= SAVE_EVERY {
                dht.save().await;
                saved = Instant::now();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    tokio::select! {
        _ = shared.shutdown.cancelled() => {}
        _ = work => {}
    }
    dht.save().await;
}

/// What one fetch's discovery found, by means.
#[derive(Default)]
struct Found {
    lan: Vec<SocketAddr>,
    /// Node ids that answered: a node answers from each of its addresses (IPv6 and IPv4).
    lan_ids: HashSet<NodeId>,
    dht: Vec<SocketAddr>,
}

/// The lookups one fetch runs; they stop when it is dropped.
pub(super) struct Finder {
    shared: Arc<Shared>,
    started: Instant,
    remembered: Vec<SocketAddr>,
    lan: Option<Arc<lan::LookupStatus>>,
    dht_done: Option<Arc<AtomicBool>>,
    /// Nodes in the DHT routing table after the last lookup.
    dht_nodes: Arc<AtomicUsize>,
    found: Arc<Mutex<Found>>,
    stop: CancellationToken,
}

impl Drop for Finder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// While the download has no holder connected (no manifest yet, or every peer gone).
fn wanted(progress: &watch::Receiver<Progress>) -> bool {
    matches!(progress.borrow().stage, Stage::Connecting | Stage::Manifest | Stage::NoPeers { .. })
}

impl Finder {
    /// Starts the LAN and DHT lookups of `root` that the node runs.
    pub fn start(
        shared: &Arc<Shared>,
        root: Hash,
        remembered: Vec<SocketAddr>,
        progress: &watch::Sender<Progress>,
    ) -> Finder {
        let stop = shared.shutdown.child_token();
        let key = LookupKey::of(&root);
        let found = Arc::new(Mutex::new(Found::default()));
        let (tx, mut rx) = mpsc::unbounded_channel::<Candidate>();
        progress.send_modify(|p| p.discovered.remembered = remembered.len());
        let mut finder = Finder {
            shared: shared.clone(),
            started: Instant::now(),
            remembered,
            lan: None,
            dht_done: None,
            dht_nodes: Arc::new(AtomicUsize::new(0)),
            found: found.clone(),
            stop: stop.clone(),
        };
        if shared.discovery.lan_lookups {
            let status = Arc::new(lan::LookupStatus::default());
            finder.lan = Some(status.clone());
            let rx = progress.subscribe();
            let (own, tx, stop) = (shared.id, tx.clone(), stop.clone());
            shared.tasks.spawn(lan::lookup(key, own, tx, move || wanted(&rx), status, stop));
        }
        if let Some(dht) = shared.discovery.dht.clone() {
            let done = Arc::new(AtomicBool::new(false));
            finder.dht_done = Some(done.clone());
            let (rx, tx, stop, nodes) = (progress.subscribe(), tx.clone(), stop.clone(), finder.dht_nodes.clone());
            shared.tasks.spawn(async move {
                let rounds = async {
                    for wait in DHT_RETRY.iter().chain(std::iter::repeat(&60)) {
                        if wanted(&rx) {
                            dht.lookup(&key, |c| {
                                let _ = tx.send(c);
                            })
                            .await;
                            nodes.store(dht.nodes().await, Ordering::Relaxed);
                            done.store(true, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_secs(*wait)).await;
                    }
                };
                tokio::select! { _ = stop.cancelled() => {} _ = rounds => {} }
            });
        }
        let (shared2, progress) = (shared.clone(), progress.clone());
        shared.tasks.spawn(async move {
            loop {
                let c = tokio::select! {
                    _ = stop.cancelled() => return,
                    c = rx.recv() => match c { Some(c) => c, None => return },
                };
                let counts = {
                    let mut f = lock(&found);
                    let list = if c.means == Means::Lan { &mut f.lan } else { &mut f.dht };
                    if list.contains(&c.addr) {
                        continue;
                    }
                    list.push(c.addr);
                    f.lan_ids.extend(c.node_id.filter(|_| c.means == Means::Lan));
                    (f.lan_ids.len(), f.dht.len())
                };
                tracing::debug!(peer = %c.addr, "found by {:?}", c.means);
                match c.node_id {
                    // Another address of a node already connected: nothing to dial.
                    Some(node_id) if shared2.registry.has_node(&node_id) => {}
                    Some(node_id) => shared2.learn(crate::wire::PeerEntry { node_id, addr: c.addr }),
                    None => shared2.exchange.add(c.addr, false),
                }
                progress.send_modify(|p| (p.discovered.lan, p.discovered.dht) = counts);
            }
        });
        finder
    }

    /// Whether every address in `addrs` has been dialled and failed.
    fn all_failed(&self, addrs: &[SocketAddr]) -> bool {
        let ex = &self.shared.exchange;
        addrs.iter().all(|a| !ex.is_dialing(a) && ex.table().get(a).is_none_or(|e| e.failures > 0))
    }

    /// The report of every means once all have been tried and everything
    /// they found failed to connect; `None` while one may still find a holder.
    pub fn exhausted(&self) -> Option<String> {
        if self.shared.registry.len() > 0 {
            return None;
        }
        let lan_tried = self.lan.is_none() || self.started.elapsed() >= LAN_WAIT;
        let dht_tried = self.dht_done.as_ref().is_none_or(|d| d.load(Ordering::Relaxed));
        let f = lock(&self.found);
        let everything: Vec<SocketAddr> = self.remembered.iter().chain(&f.lan).chain(&f.dht).copied().collect();
        drop(f);
        (lan_tried && dht_tried && self.all_failed(&everything)).then(|| self.summary())
    }

    /// What each means found, in one line: "LAN: no answer in 3 s; DHT: off (use --dht); remembered peers: none".
    pub fn summary(&self) -> String {
        let f = lock(&self.found);
        let reached = |n: usize, what: &str| format!("{n} {what}, none reachable");
        let lan = match &self.lan {
            None => "LAN: off".to_owned(),
            Some(s) if lock(&s.error).is_some() => {
                format!("LAN: unavailable ({})", lock(&s.error).clone().unwrap_or_default())
            }
            Some(s) if s.interfaces.load(Ordering::Relaxed) == 0 => "LAN: no multicast interface".to_owned(),
            Some(_) if f.lan.is_empty() => format!("LAN: no answer in {} s", LAN_WAIT.as_secs()),
            Some(_) => format!("LAN: {}", reached(f.lan_ids.len(), "answered")),
        };
        let dht = match &self.dht_done {
            None => "DHT: off (use --dht)".to_owned(),
            Some(_) if f.dht.is_empty() && self.dht_nodes.load(Ordering::Relaxed) == 0 => {
                "DHT: no DHT node answered (check --dht-bootstrap)".to_owned()
            }
            Some(_) if f.dht.is_empty() => "DHT: no peer announced it".to_owned(),
            Some(_) => format!("DHT: {}", reached(f.dht.len(), "found")),
        };
        let remembered = match (self.shared.memory.is_some(), self.remembered.len()) {
            (false, _) => "remembered peers: off".to_owned(),
            (true, 0) => "remembered peers: none".to_owned(),
            (true, n) => format!("remembered peers: {}", reached(n, "tried")),
        };
        format!("{lan}; {dht}; {remembered}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{hash_pieces, FileInfo};

    #[test]
    fn a_node_holds_exactly_the_keys_of_the_roots_it_serves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 3000]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let info = Arc::new(FileInfo::new("f", 3000, hash_pieces(&file, 3000, 1, &|_| {}).unwrap()));
        let (store, index) = (Store::new(), Mutex::new(KeyIndex::default()));
        let key = LookupKey::of(&info.root);
        assert!(!holds(&store, &index, &key), "nothing served yet");
        store.add_source(info.clone(), &path, None).unwrap();
        assert!(holds(&store, &index, &key), "the root's key, once served");
        assert!(!holds(&store, &index, &LookupKey(info.root.0)), "never the root itself");
        assert!(!holds(&store, &index, &LookupKey::of(&Hash([0; 32]))));
        store.remove_file(&info.root);
        assert!(!holds(&store, &index, &key), "the index follows the store");
    }
}
