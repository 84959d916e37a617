//! pex: a content-addressed, BitTorrent-style piece-exchange node.
//!
//! A file is cut into 1 MiB pieces addressed by SHA-256; a manifest lists them
//! and its own SHA-256, the root hash, names the file. Nodes exchange blobs over
//! TCP with the v1 wire protocol (see docs/PROTOCOL.md).
//!
//! Layers, bottom up (each imports only those before it):
//! - formats, pure: [`hash`], [`wire`] (frame codec), [`manifest`],
//!   [`bitfield`], [`picker`] (piece choice), [`text`] (showing untrusted text),
//!   [`timeouts`], [`ratelimit`], [`peers`] (the known-address table);
//! - storage: [`mapping`] (the only code that touches mapped memory),
//!   [`store`] (served files and `.part` files), [`datadir`] (records);
//! - [`connection`]: framed I/O over a socket;
//! - [`peer`]: one connection, talking to its owner through a trait;
//! - [`fetch`]: the download engine, talking to the swarm through a trait;
//! - [`node`]: listener, registry, peer exchange, bans, shutdown;
//! - the `pex` binary (CLI) on top.

#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod bitfield;
pub mod connection;
pub mod datadir;
pub mod fetch;
pub mod hash;
pub mod manifest;
pub mod mapping;
pub mod node;
pub mod peer;
pub mod peers;
pub mod picker;
pub mod ratelimit;
pub mod store;
pub mod text;
pub mod timeouts;
pub mod wire;

/// Locks a mutex, taking the data even if another thread panicked while holding
/// it: every structure guarded here is consistent between statements, and a
/// node must keep serving rather than propagate a poisoned lock.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub use fetch::{FetchError, FetchOptions, FetchOutcome, Progress};
pub use hash::{Hash, NodeId};
pub use node::{Config, Node, NodeStats};
pub use timeouts::Timeouts;
