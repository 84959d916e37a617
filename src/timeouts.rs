//! Every interval and time-out of the protocol, in one place, so the layers
//! that use them (connections, downloads, the node) read the same numbers and
//! tests can shorten them all at once.

use std::time::Duration;

/// Protocol intervals and time-outs. The defaults are the values docs/PROTOCOL.md names.
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// Each side must send HELLO within this after connecting (protocol: 10 s).
    pub hello: Duration,
    /// A keep-alive goes out after this much silence (30 s).
    pub keepalive: Duration,
    /// A peer silent for this long is dropped; also how long a write may make no progress (120 s).
    pub idle: Duration,
    /// An ASK unanswered this long counts against the peer and moves elsewhere (30 s).
    pub ask: Duration,
    /// PEERS with what is new is re-sent this often (60 s).
    pub peers_interval: Duration,
    /// A TCP connect that takes longer than this fails (10 s).
    pub dial: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            hello: Duration::from_secs(10),
            keepalive: Duration::from_secs(30),
            idle: Duration::from_secs(120),
            ask: Duration::from_secs(30),
            peers_interval: Duration::from_secs(60),
            dial: Duration::from_secs(10),
        }
    }
}
