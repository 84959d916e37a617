//! The BitTorrent Mainline DHT (BEP 5), through the `mainline` crate: a full
//! (server-mode) DHT node that announces the 20-byte lookup keys of what this
//! node holds with its TCP port, looks keys up for fetches, and keeps its
//! routing table in the data directory between runs. IPv4 only: the crate
//! has no BEP 32 yet.

use super::{Candidate, LookupKey, Means};
use crate::peers::undialable;
use futures_core::Stream;
use mainline::async_dht::AsyncDht;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

/// How often each held key is announced again: announcements expire on the
/// nodes that store them (BEP 5 leaves the time to them; 30 min is usual).
pub const REANNOUNCE: Duration = Duration::from_secs(15 * 60);
/// Most peers one lookup takes from the DHT (what a hostile DHT node can make us dial).
pub const MAX_RESULTS: usize = 64;

/// How to run the DHT node.
#[derive(Clone, Debug, Default)]
pub struct DhtConfig {
    /// Bootstrap nodes (`HOST:PORT`) in place of the public routers; `None`:
    /// the public routers. An empty list starts a new network (its first node).
    pub bootstrap: Option<Vec<String>>,
    /// UDP port; `None`: 6881 if free, else any.
    pub port: Option<u16>,
    /// Where the routing table is kept between runs (a JSON list of nodes).
    pub state: Option<PathBuf>,
}

/// A running DHT node; stops when dropped (with every clone).
#[derive(Clone)]
pub struct Dht {
    inner: AsyncDht,
    port: u16,
    state: Option<PathBuf>,
}

impl Dht {
    /// Binds the UDP port and starts the node (bootstrapping goes on in the background).
    pub async fn start(config: &DhtConfig) -> io::Result<Dht> {
        let saved: Vec<String> = config
            .state
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut bootstrap: Vec<String> = match &config.bootstrap {
            Some(list) => list.clone(),
            None => mainline::DEFAULT_BOOTSTRAP_NODES.iter().map(|s| s.to_string()).collect(),
        };
        bootstrap.extend(saved.into_iter().take(200));
        let mut builder = mainline::Dht::builder();
        builder.server_mode().bootstrap(&bootstrap);
        if let Some(port) = config.port {
            builder.port(port);
        }
        // Building resolves the bootstrap names and binds: blocking work.
        let dht = tokio::task::spawn_blocking(move || builder.build()).await.map_err(io::Error::other)??;
        let inner = dht.as_async();
        let port = inner.info().await.local_addr().port();
        Ok(Dht { inner, port, state: config.state.clone() })
    }

    /// The UDP port the node is on, for others to bootstrap from.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Announces `key` with TCP port `port` on the nodes closest to it.
    pub async fn announce(&self, key: &LookupKey, port: u16) -> Result<(), String> {
        let id = mainline::Id::from_bytes(key.dht_id()).map_err(|e| e.to_string())?;
        self.inner.announce_peer(id, Some(port)).await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// One get_peers lookup of `key`: calls `found` with each new, dialable
    /// peer (at most [`MAX_RESULTS`]) and returns when the query is done.
    pub async fn lookup(&self, key: &LookupKey, mut found: impl FnMut(Candidate)) -> usize {
        let Ok(id) = mainline::Id::from_bytes(key.dht_id()) else { return 0 };
        let mut stream = self.inner.get_peers(id);
        let mut seen = std::collections::HashSet::new();
        while let Some(batch) = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
            for peer in batch {
                let addr = SocketAddr::V4(peer);
                if undialable(&addr).is_some() || seen.len() >= MAX_RESULTS || !seen.insert(addr) {
                    continue;
                }
                found(Candidate { addr, node_id: None, means: Means::Dht });
            }
        }
        seen.len()
    }

    /// Nodes in the routing table: 0 when no DHT node could be reached.
    pub async fn nodes(&self) -> usize {
        self.inner.to_bootstrap().await.len()
    }

    /// Writes the routing table to the state file, for the next run to start from.
    pub async fn save(&self) {
        let Some(path) = &self.state else { return };
        let nodes = self.inner.to_bootstrap().await;
        if nodes.is_empty() {
            return;
        }
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec(&nodes).unwrap_or_default();
        if std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, path)).is_err() {
            tracing::debug!("cannot save the DHT routing table to {}", path.display());
        }
    }
}

/// Checks a `--dht-bootstrap` value: it must name an IPv4 address and port
/// (the DHT is IPv4 only); names are resolved.
pub fn check_bootstrap(s: &str) -> Result<String, String> {
    let addrs: Vec<SocketAddr> =
        s.to_socket_addrs().map_err(|e| format!("{s}: {}", crate::text::io_message(&e)))?.collect();
    if addrs.iter().any(|a| a.is_ipv4()) {
        Ok(s.to_owned())
    } else {
        Err(format!("{s}: the Mainline DHT is IPv4 only; give an IPv4 address"))
    }
}
