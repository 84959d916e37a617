//! Local-network discovery over UDP multicast: the datagram format, the
//! responder every node runs (it answers queries for the lookup keys of what
//! it holds), and the lookup a fetch runs (it multicasts a query with
//! back-off and turns answers into [`Candidate`]s). Specified in
//! docs/PROTOCOL.md, "Local network discovery".
//!
//! Nothing received is trusted: datagrams of the wrong size, magic, version
//! or type are dropped and counted; answers must echo a nonce of ours and
//! the key asked for; answers and candidates are bounded per source; the
//! address dialled is the answer's own source address, never one it names.

use super::{ifaces, Candidate, LookupKey, Means};
use crate::hash::NodeId;
use crate::peers::undialable;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The UDP port queries are multicast to.
pub const PORT: u16 = 9417;
/// The IPv6 link-local group queries go to (`ff02::7065:786c`, "pexl").
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0x7065, 0x786c);
/// The IPv4 group, for links without IPv6 (administratively scoped, 239.255.0.0/16).
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(239, 255, 112, 101);
/// First bytes of every datagram.
pub const MAGIC: [u8; 4] = *b"pexl";
/// The version byte this node speaks.
pub const VERSION: u8 = 1;
/// Type byte of a query.
pub const TYPE_QUERY: u8 = 1;
/// Type byte of an answer.
pub const TYPE_ANSWER: u8 = 2;
/// A query is exactly this long.
pub const QUERY_LEN: usize = 46;
/// An answer is exactly this long.
pub const ANSWER_LEN: usize = 80;
/// Answers a responder sends one source per second; more are dropped.
pub const ANSWERS_PER_SOURCE: u32 = 8;
/// Answers a responder sends per second in all.
pub const ANSWERS_PER_SECOND: u32 = 256;
/// Candidates a lookup takes from one source address.
pub const CANDIDATES_PER_SOURCE: usize = 4;
/// Candidates one lookup takes in all.
pub const MAX_CANDIDATES: usize = 64;
/// Longest wait between two queries of a lookup.
pub const QUERY_BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Wait before the second query of a lookup; it doubles up to [`QUERY_BACKOFF_MAX`].
pub const QUERY_BACKOFF_START: Duration = Duration::from_millis(250);

/// One datagram of the LAN protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datagram {
    /// "Who holds this key?", multicast to the group.
    Query {
        /// Random; the answer echoes it.
        nonce: [u8; 8],
        /// The lookup key wanted.
        key: LookupKey,
    },
    /// "I do, dial me", unicast to the query's source.
    Answer {
        /// The query's nonce.
        nonce: [u8; 8],
        /// The lookup key asked for.
        key: LookupKey,
        /// The answering node's id, which the dial then pins.
        node_id: NodeId,
        /// Its TCP port, on the answer's source address.
        port: u16,
    },
}

impl Datagram {
    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ANSWER_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        match self {
            Datagram::Query { nonce, key } => {
                out.push(TYPE_QUERY);
                out.extend_from_slice(nonce);
                out.extend_from_slice(&key.0);
            }
            Datagram::Answer { nonce, key, node_id, port } => {
                out.push(TYPE_ANSWER);
                out.extend_from_slice(nonce);
                out.extend_from_slice(&key.0);
                out.extend_from_slice(&node_id.0);
                out.extend_from_slice(&port.to_be_bytes());
            }
        }
        out
    }

    /// Parses one datagram; anything but an exact query or answer is an error.
    pub fn decode(b: &[u8]) -> Result<Datagram, &'static str> {
        if b.len() < 6 || b[..4] != MAGIC {
            return Err("not a pex discovery datagram");
        }
        if b[4] != VERSION {
            return Err("unknown version");
        }
        let nonce: [u8; 8] = b.get(6..14).and_then(|n| n.try_into().ok()).ok_or("too short")?;
        let key = |r: std::ops::Range<usize>| b.get(r).and_then(|k| k.try_into().ok()).map(LookupKey);
        match (b[5], b.len()) {
            (TYPE_QUERY, QUERY_LEN) => Ok(Datagram::Query { nonce, key: key(14..46).ok_or("too short")? }),
            (TYPE_ANSWER, ANSWER_LEN) => {
                let node_id = NodeId(b[46..78].try_into().map_err(|_| "too short")?);
                let port = u16::from_be_bytes([b[78], b[79]]);
                if port == 0 {
                    return Err("port 0");
                }
                Ok(Datagram::Answer { nonce, key: key(14..46).ok_or("too short")?, node_id, port })
            }
            (TYPE_QUERY | TYPE_ANSWER, _) => Err("wrong length"),
            _ => Err("unknown type"),
        }
    }
}

/// Counters of a node's LAN discovery, for `--json` and tests.
#[derive(Debug, Default)]
pub struct LanStats {
    /// Queries received (well-formed).
    pub queries: AtomicU64,
    /// Answers sent.
    pub answered: AtomicU64,
    /// Datagrams dropped: malformed, oversized, foreign, unexpected or unasked-for.
    pub dropped: AtomicU64,
    /// Queries or answers over a rate or count limit.
    pub limited: AtomicU64,
}

/// What a node's responder answers with.
#[derive(Clone)]
pub struct Responder {
    /// This node's id.
    pub node_id: NodeId,
    /// Its TCP listen port.
    pub port: u16,
    /// Whether this node holds what a key names.
    pub holds: Arc<dyn Fn(&LookupKey) -> bool + Send + Sync>,
    /// Counters.
    pub stats: Arc<LanStats>,
}

/// Binds `[::]:port` and `0.0.0.0:port` ([`PORT`] but in tests; shared with
/// other nodes on this machine), joins the groups on every multicast
/// interface, and answers queries until `shutdown`. Fails only when neither
/// family can be bound.
pub fn respond(r: Responder, port: u16, shutdown: CancellationToken) -> io::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    let mut errors = Vec::new();
    for v6 in [true, false] {
        match bind(v6, port) {
            Ok(sock) => tasks.push(tokio::spawn(serve(sock, v6, r.clone(), shutdown.clone()))),
            Err(e) => errors.push(e),
        }
    }
    match (tasks.is_empty(), errors.pop()) {
        (true, Some(e)) => Err(e),
        _ => Ok(tasks),
    }
}

/// A non-blocking UDP socket of one family on `port` (0: any), address reuse
/// on so every node on the machine can listen on the group port.
fn bind(v6: bool, port: u16) -> io::Result<UdpSocket> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if v6 {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    // Queries stay on the link (the kernel's default, said explicitly).
    if v6 {
        sock.set_multicast_hops_v6(1)?;
    } else {
        sock.set_multicast_ttl_v4(1)?;
    }
    let ip: IpAddr = if v6 { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
    sock.bind(&SocketAddr::new(ip, port).into())?;
    UdpSocket::from_std(sock.into())
}

/// Joins the group on interfaces not joined yet (new ones appear: re-run).
fn join(sock: &UdpSocket, v6: bool, joined: &mut HashSet<String>) {
    if v6 {
        for index in ifaces::multicast_v6() {
            if joined.insert(index.to_string()) {
                if let Err(e) = sock.join_multicast_v6(&GROUP_V6, index) {
                    tracing::debug!("LAN discovery: joining {GROUP_V6} on interface {index}: {e}");
                }
            }
        }
    } else {
        for ip in ifaces::multicast_v4() {
            if joined.insert(ip.to_string()) {
                if let Err(e) = sock.join_multicast_v4(GROUP_V4, ip) {
                    tracing::debug!("LAN discovery: joining {GROUP_V4} on {ip}: {e}");
                }
            }
        }
    }
}

/// Whether a query from `ip` may be answered: it must come from the local
/// network (link-local, unique-local, private IPv4, loopback), as a query
/// multicast on the link does; anything else is someone probing from afar.
fn local_source(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unicast_link_local() || v6.is_unique_local(),
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local() || v4.is_loopback(),
    }
}

/// Per-source and overall answer budgets, per one-second window.
#[derive(Default)]
struct Budget {
    window: Option<Instant>,
    total: u32,
    per_source: HashMap<IpAddr, u32>,
}

impl Budget {
    fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        if self.window.is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1)) {
            self.window = Some(now);
            self.total = 0;
            self.per_source.clear();
        }
        if self.total >= ANSWERS_PER_SECOND || self.per_source.len() >= 1024 {
            return false;
        }
        let n = self.per_source.entry(src).or_default();
        if *n >= ANSWERS_PER_SOURCE {
            return false;
        }
        *n += 1;
        self.total += 1;
        true
    }
}

async fn serve(sock: UdpSocket, v6: bool, r: Responder, shutdown: CancellationToken) {
    let mut joined = HashSet::new();
    join(&sock, v6, &mut joined);
    let mut rescan = tokio::time::interval(Duration::from_secs(30));
    let mut budget = Budget::default();
    let mut buf = [0u8; 2048];
    let count = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
    loop {
        let (n, src) = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = rescan.tick() => { join(&sock, v6, &mut joined); continue }
            got = sock.recv_from(&mut buf) => match got {
                Ok(got) => got,
                Err(_) => continue,
            },
        };
        let key = match Datagram::decode(&buf[..n]) {
            Ok(Datagram::Query { nonce, key }) => (nonce, key),
            _ => {
                count(&r.stats.dropped);
                continue;
            }
        };
        count(&r.stats.queries);
        if !local_source(&src.ip()) {
            count(&r.stats.dropped);
            continue;
        }
        if r.port == 0 || !(r.holds)(&key.1) {
            continue;
        }
        if !budget.allow(src.ip(), Instant::now()) {
            count(&r.stats.limited);
            continue;
        }
        let answer = Datagram::Answer { nonce: key.0, key: key.1, node_id: r.node_id, port: r.port };
        if sock.send_to(&answer.encode(), src).await.is_ok() {
            count(&r.stats.answered);
        }
    }
}

/// What one lookup did, for the "which means were tried" report.
#[derive(Debug, Default)]
pub struct LookupStatus {
    /// Queries sent (one per interface per round).
    pub queries_sent: AtomicU64,
    /// Answers taken as candidates.
    pub answers: AtomicU64,
    /// Answers dropped (malformed, not ours, over a limit, undialable).
    pub dropped: AtomicU64,
    /// Multicast interfaces the last round went out on.
    pub interfaces: AtomicUsize,
    /// Why the lookup could not run at all.
    pub error: Mutex<Option<String>>,
}

/// A running lookup's view of the answers.
struct Answers {
    key: LookupKey,
    own: NodeId,
    nonces: VecDeque<[u8; 8]>,
    seen: HashSet<(NodeId, SocketAddr)>,
    per_source: HashMap<IpAddr, usize>,
}

impl Answers {
    /// The candidate an answer from `src` gives, or why it gives none.
    fn take(&mut self, bytes: &[u8], src: SocketAddr) -> Result<Option<Candidate>, &'static str> {
        let Datagram::Answer { nonce, key, node_id, port } = Datagram::decode(bytes)? else {
            return Err("not an answer");
        };
        if key != self.key || !self.nonces.contains(&nonce) {
            return Err("not an answer to our query");
        }
        if node_id == self.own {
            return Ok(None); // our own responder, on this machine
        }
        let mut addr = src; // a link-local source keeps its scope
        addr.set_port(port);
        if let Some(why) = undialable(&addr) {
            return Err(why);
        }
        if self.seen.contains(&(node_id, addr)) {
            return Ok(None);
        }
        let from = self.per_source.entry(src.ip()).or_default();
        if *from >= CANDIDATES_PER_SOURCE || self.seen.len() >= MAX_CANDIDATES {
            return Err("over the candidate limit");
        }
        *from += 1;
        self.seen.insert((node_id, addr));
        Ok(Some(Candidate { addr, node_id: Some(node_id), means: Means::Lan }))
    }
}

/// Multicasts queries for `key` (at once, then with back-off up to
/// [`QUERY_BACKOFF_MAX`]) while `wanted()` says no holder is connected, and
/// sends each new holder found to `found`, until `stop`.
pub async fn lookup(
    key: LookupKey,
    own: NodeId,
    found: mpsc::UnboundedSender<Candidate>,
    wanted: impl Fn() -> bool,
    status: Arc<LookupStatus>,
    stop: CancellationToken,
) {
    let v6 = bind(true, 0).ok();
    let v4 = match bind(false, 0) {
        Ok(s) => Some(s),
        Err(e) if v6.is_none() => {
            *crate::lock(&status.error) = Some(crate::text::io_message(&e));
            return;
        }
        Err(_) => None,
    };
    let mut answers = Answers { key, own, nonces: VecDeque::new(), seen: HashSet::new(), per_source: HashMap::new() };
    let mut delay = QUERY_BACKOFF_START;
    let next = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(next);
    let (mut b6, mut b4) = ([0u8; 2048], [0u8; 2048]);
    loop {
        let got = tokio::select! {
            _ = stop.cancelled() => return,
            _ = &mut next => {
                if wanted() {
                    send_query(&mut answers, v6.as_ref(), v4.as_ref(), &status).await;
                    next.as_mut().reset(tokio::time::Instant::now() + delay);
                    delay = (delay * 2).min(QUERY_BACKOFF_MAX);
                } else {
                    next.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
                    delay = QUERY_BACKOFF_START;
                }
                continue;
            }
            got = recv(v6.as_ref(), &mut b6) => got.map(|(n, a)| (b6[..n].to_vec(), a)),
            got = recv(v4.as_ref(), &mut b4) => got.map(|(n, a)| (b4[..n].to_vec(), a)),
        };
        let Ok((bytes, src)) = got else { continue };
        match answers.take(&bytes, src) {
            Ok(Some(c)) => {
                status.answers.fetch_add(1, Ordering::Relaxed);
                let _ = found.send(c);
            }
            Ok(None) => {}
            Err(why) => {
                tracing::debug!(from = %src, "LAN answer dropped: {why}");
                status.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Receives on `sock`, or waits forever when there is none.
async fn recv(sock: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// One round: a fresh nonce, the query out on every multicast interface.
async fn send_query(answers: &mut Answers, v6: Option<&UdpSocket>, v4: Option<&UdpSocket>, status: &LookupStatus) {
    let mut nonce = [0u8; 8];
    nonce.copy_from_slice(&crate::identity::random_secret()[..8]);
    if answers.nonces.len() >= 8 {
        answers.nonces.pop_front();
    }
    answers.nonces.push_back(nonce);
    let query = Datagram::Query { nonce, key: answers.key }.encode();
    let mut interfaces = 0;
    if let Some(s) = v6 {
        for index in ifaces::multicast_v6() {
            interfaces += 1;
            let to = SocketAddrV6::new(GROUP_V6, PORT, 0, index);
            if s.send_to(&query, to).await.is_ok() {
                status.queries_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if let Some(s) = v4 {
        for ip in ifaces::multicast_v4() {
            interfaces += 1;
            if SockRef::from(s).set_multicast_if_v4(&ip).is_ok() && s.send_to(&query, (GROUP_V4, PORT)).await.is_ok() {
                status.queries_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    status.interfaces.store(interfaces, Ordering::Relaxed);
}

#[cfg(test)]
mod tests;
