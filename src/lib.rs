//! pex: a content-addressed, BitTorrent-style piece-exchange node.
//!
//! A file is cut into 1 MiB pieces addressed by SHA-256; a manifest lists them
//! and its own SHA-256, the root hash, names the file. Nodes exchange blobs over
//! TCP with wire protocol v2: every connection authenticated and encrypted
//! with Noise, node ids Ed25519 keys (see docs/PROTOCOL.md).
//!
//! Layers, bottom up (each imports only those before it):
//! - formats, pure: [`hash`], [`identity`] (Ed25519 node ids, the HELLO
//!   signature), [`wire`] (frame codec), [`noise`] (the Noise handshake and
//!   transport cipher), [`manifest`],
//!   [`bitfield`], [`picker`] (piece choice), [`text`] (showing untrusted text),
//!   [`timeouts`], [`ratelimit`], [`peers`] (the known-address table),
//!   [`ticket`] (a root and where to fetch it, as one string);
//! - [`tree`]: reading a directory tree to share as a folder;
//! - [`discovery`]: finding holders by the lookup key, on the local network
//!   (multicast) and the Mainline DHT;
//! - storage: [`mapping`] (the only code that touches mapped memory),
//!   [`direct`] (whole pieces written past the page cache), [`store`] (served files and `.part` files), [`datadir`] (records);
//! - [`connection`]: framed I/O over a socket;
//! - [`peer`]: one connection, talking to its owner through a trait;
//! - [`fetch`]: the download engine, talking to the swarm through a trait;
//! - [`node`]: listener, registry, peer exchange, bans, shutdown, and
//!   rooms ([`Room`]: a partial mesh per topic, signed broadcasts, direct messages);
//! - the `pex` binary (CLI) on top.

#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod bitfield;
pub mod connection;
pub mod datadir;
pub mod direct;
pub mod discovery;
pub mod fetch;
pub mod hash;
pub mod identity;
pub mod manifest;
pub mod mapping;
pub mod node;
pub mod noise;
pub mod peer;
pub mod peers;
pub mod picker;
pub mod ratelimit;
pub mod store;
pub mod text;
pub mod ticket;
pub mod timeouts;
pub mod tree;
pub mod wire;

/// Locks a mutex, taking the data even if another thread panicked while holding
/// it: every structure guarded here is consistent between statements, and a
/// node must keep serving rather than propagate a poisoned lock.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub use fetch::{FetchError, FetchOptions, FetchOutcome, Progress};
pub use hash::{Hash, NodeId};
pub use node::rooms::{Room, RoomError, RoomEvent, RoomOptions, RoomStats};
pub use node::{Config, Node, NodeStats};
pub use timeouts::Timeouts;

#[cfg(test)]
mod layering {
    /// The layers, bottom up. A module may import only modules listed before it,
    /// so the import graph is a DAG that reads bottom-up (docs/DESIGN.md).
    const LAYERS: &[&str] = &[
        "hash",
        "identity",
        "bitfield",
        "text",
        "timeouts",
        "ratelimit",
        "picker",
        "wire",
        "noise",
        "manifest",
        "tree",
        "peers",
        "ticket",
        "discovery",
        "mapping",
        "direct",
        "datadir",
        "store",
        "connection",
        "peer",
        "fetch",
        "node",
    ];

    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_module_imports_only_layers_below_it() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut checked = 0;
        for file in files {
            let rel = file.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let module = rel.split('/').next().unwrap().trim_end_matches(".rs").to_owned();
            if module == "lib" || module == "main" || module == "cli" {
                continue; // the binary: it sits on top of everything
            }
            let rank = LAYERS.iter().position(|m| *m == module).unwrap_or_else(|| panic!("{rel}: not in LAYERS"));
            let text = std::fs::read_to_string(&file).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if name == "lock" || name == module {
                    continue;
                }
                let dep = LAYERS.iter().position(|m| *m == name).unwrap_or_else(|| panic!("{rel}: crate::{name}?"));
                assert!(dep < rank, "{rel} imports crate::{name}, which is not below {module}");
                checked += 1;
            }
        }
        assert!(checked > 50, "only {checked} imports seen: is the scan broken?");
    }
}
