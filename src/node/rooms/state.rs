//! One room as a member sees it: its neighbours (the partial mesh), the
//! members it knows of and when it last heard from them, the messages already
//! seen, the per-neighbour rate limits, and the events for the application.
//! No sockets and no signatures here: `net.rs` checks those and drives this.

use super::{RoomEvent, RoomOptions, RoomStats};
use crate::hash::{Hash, NodeId};
use crate::peer::PeerConn;
use crate::wire::{Frame, PeerEntry, Presence, MAX_PEERS_PER_FRAME};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Message ids remembered per room, to drop duplicates and replays.
pub const SEEN_CAPACITY: usize = 65_536;
/// How long a message id is remembered.
pub const SEEN_FOR: Duration = Duration::from_secs(600);
/// Most members a node keeps track of in one room.
pub const MAX_MEMBERS: usize = 4096;
/// Room frames (MESSAGE, DIRECT, PRESENCE) a neighbour may send per second;
/// more are dropped and counted.
pub const RATE_PER_SEC: f64 = 200.0;
/// How many of them may come at once before the rate applies.
pub const RATE_BURST: f64 = 400.0;
/// Most members' PRESENCE frames a new neighbour is sent at once (well within its rate).
pub const CATCH_UP: usize = 200;
/// A JOIN unanswered for this long is given up.
pub const JOIN_PATIENCE: Duration = Duration::from_secs(10);
/// A member that declined to be our neighbour is not asked again for this long.
pub const DECLINED_FOR: Duration = Duration::from_secs(30);

/// Where a connection stands in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// We sent JOIN, no answer yet.
    Asked(Instant),
    /// Both sides sent JOIN: messages flow both ways.
    Neighbour,
}

/// A token bucket counting room frames from one neighbour.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket { tokens: RATE_BURST, at: Instant::now() }
    }

    /// Takes one token; false when the neighbour is over its rate.
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * RATE_PER_SEC;
        self.tokens = (self.tokens + refill).min(RATE_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One connection's place in the room.
pub struct Neighbour {
    /// The connection.
    pub conn: Arc<PeerConn>,
    /// Asked or neighbour.
    pub link: Link,
}

/// A member this node knows of.
#[derive(Debug)]
pub struct Member {
    /// Where it accepts connections, if known (first hand or from MEMBERS).
    pub addr: Option<SocketAddr>,
    /// When it last proved it is in the room (a PRESENCE or MESSAGE it signed, a
    /// live neighbour link); `None` while it is only hearsay from MEMBERS.
    pub heard: Option<Instant>,
    /// When this entry was made or last refreshed by MEMBERS.
    learned: Instant,
    /// Highest PRESENCE sequence seen from it.
    pub seq: u64,
    /// Whether a [`RoomEvent::Joined`] was reported and no `Left` since.
    pub present: bool,
    /// Its latest PRESENCE, as forwarded: the proof a new neighbour is sent.
    last: Option<Presence>,
}

/// The state of one joined room.
pub struct RoomState {
    /// The room's id.
    pub id: Hash,
    /// Mesh size and hop limit.
    pub opts: RoomOptions,
    /// Connections that are neighbours or asked to be, by connection id.
    pub links: HashMap<u64, Neighbour>,
    /// Everyone else known in the room.
    pub members: HashMap<NodeId, Member>,
    /// Members that declined our JOIN, and when.
    declined: HashMap<NodeId, Instant>,
    /// Members being dialled to become neighbours, and since when.
    pub dialling: HashMap<NodeId, Instant>,
    /// Rate limits of the connections room frames came on, by connection id.
    buckets: HashMap<u64, Bucket>,
    /// (origin, id) of messages seen, oldest first, and the same as a set.
    seen_order: VecDeque<(Instant, NodeId, [u8; 16])>,
    seen: std::collections::HashSet<(NodeId, [u8; 16])>,
    /// Our own PRESENCE sequence: the last one sent.
    pub seq: u64,
    /// Our latest PRESENCE, for new neighbours.
    pub own: Option<Presence>,
    /// When our last PRESENCE went out.
    pub presence_sent: Option<Instant>,
    /// When MEMBERS last went to every neighbour.
    pub members_sent: Option<Instant>,
    /// Counters for [`super::Room::stats`].
    pub stats: RoomStats,
    events: mpsc::Sender<RoomEvent>,
}

impl RoomState {
    /// A room just joined; events go to `events`.
    pub fn new(name: &str, opts: RoomOptions, events: mpsc::Sender<RoomEvent>) -> RoomState {
        RoomState {
            id: crate::wire::room_id(name),
            opts,
            links: HashMap::new(),
            members: HashMap::new(),
            declined: HashMap::new(),
            dialling: HashMap::new(),
            buckets: HashMap::new(),
            seen_order: VecDeque::new(),
            seen: Default::default(),
            seq: 0,
            own: None,
            presence_sent: None,
            members_sent: None,
            stats: RoomStats::default(),
            events,
        }
    }

    /// Hands an event to the application; dropped (and counted) when it reads too slowly.
    pub fn emit(&mut self, event: RoomEvent) {
        if self.events.try_send(event).is_err() {
            self.stats.events_dropped += 1;
        }
    }

    /// Neighbours and connections asked to be one.
    pub fn linked(&self) -> usize {
        self.links.len()
    }

    /// Connections that are neighbours.
    pub fn neighbours(&self) -> impl Iterator<Item = &Arc<PeerConn>> {
        self.links.values().filter(|n| n.link == Link::Neighbour).map(|n| &n.conn)
    }

    /// Whether a JOIN should go to `conn` now: a member wanting neighbours,
    /// not linked to it yet, and not declined by it lately.
    pub fn wants(&self, conn: &PeerConn, now: Instant) -> bool {
        self.linked() + self.dialling.len()
            < self.opts.min_neighbours + usize::from(self.dialling.contains_key(&conn.node_id))
            && !self.links.contains_key(&conn.conn_id)
            && !self.declined_lately(&conn.node_id, now)
    }

    /// Whether `id` declined our JOIN less than [`DECLINED_FOR`] ago.
    fn declined_lately(&self, id: &NodeId, now: Instant) -> bool {
        self.declined.get(id).is_some_and(|t| now.saturating_duration_since(*t) < DECLINED_FOR)
    }

    /// Sends JOIN on `conn` (and records it) if [`RoomState::wants`] it.
    pub fn join_if_wanted(&mut self, conn: &Arc<PeerConn>, now: Instant) {
        if self.wants(conn, now) {
            self.asked(conn, now);
            conn.send(Frame::Join(self.id));
        }
    }

    /// Records the JOIN we send on `conn`.
    pub fn asked(&mut self, conn: &Arc<PeerConn>, now: Instant) {
        self.dialling.remove(&conn.node_id);
        self.links.insert(conn.conn_id, Neighbour { conn: conn.clone(), link: Link::Asked(now) });
    }

    /// A JOIN came on `conn`. Returns the frames to answer with.
    pub fn on_join(&mut self, conn: &Arc<PeerConn>, now: Instant) -> Vec<Frame> {
        let mut answer = Vec::new();
        match self.links.get(&conn.conn_id).map(|n| n.link) {
            Some(Link::Neighbour) => return answer,
            Some(Link::Asked(_)) => {}
            None if self.linked() < self.opts.max_neighbours => answer.push(Frame::Join(self.id)),
            None => {
                // No room for another neighbour: tell it whom else to try, then decline.
                answer.push(self.members_frame(conn));
                answer.push(Frame::Leave(self.id));
                return answer;
            }
        }
        self.dialling.remove(&conn.node_id);
        self.links.insert(conn.conn_id, Neighbour { conn: conn.clone(), link: Link::Neighbour });
        self.declined.remove(&conn.node_id);
        self.heard(conn.node_id, conn.listen_addr, now);
        answer.push(self.members_frame(conn));
        answer.extend(self.catch_up(conn.node_id));
        answer
    }

    /// What a new neighbour is sent so it learns at once who is here: our own
    /// PRESENCE and the latest of the members present (theirs are signed,
    /// so it checks them as if they came by the mesh).
    fn catch_up(&self, to: NodeId) -> Vec<Frame> {
        let mut latest: Vec<&Presence> = self
            .members
            .iter()
            .filter(|(id, m)| m.present && **id != to)
            .filter_map(|(_, m)| m.last.as_ref())
            .collect();
        latest.sort_by_key(|p| std::cmp::Reverse(p.seq));
        self.own.iter().chain(latest.into_iter().take(CATCH_UP)).map(|p| Frame::Presence(p.clone())).collect()
    }

    /// A LEAVE came on `conn`: no longer a neighbour (or it declined ours).
    pub fn on_leave(&mut self, conn: &PeerConn, now: Instant) {
        if let Some(n) = self.links.remove(&conn.conn_id) {
            if matches!(n.link, Link::Asked(_)) {
                self.declined.insert(conn.node_id, now);
            }
        }
    }

    /// The connection closed.
    pub fn on_closed(&mut self, conn_id: u64) {
        self.links.remove(&conn_id);
        self.buckets.remove(&conn_id);
    }

    /// Whether `conn` is linked (neighbour or asked), so its room frames count.
    pub fn is_linked(&self, conn_id: u64) -> bool {
        self.links.contains_key(&conn_id)
    }

    /// Takes one of `conn`'s rate tokens; false (and counted) when over the limit.
    pub fn admit(&mut self, conn_id: u64, now: Instant) -> bool {
        let ok = self.buckets.entry(conn_id).or_insert_with(Bucket::new).take(now);
        if !ok {
            self.stats.limited += 1;
        }
        ok
    }

    /// Members learned from a MEMBERS frame (hearsay until they prove themselves).
    pub fn learn(&mut self, me: NodeId, entries: Vec<PeerEntry>, now: Instant) {
        for e in entries {
            if e.node_id == me {
                continue;
            }
            if let Some(m) = self.members.get_mut(&e.node_id) {
                if m.addr.is_none() || m.heard.is_none() {
                    m.addr = Some(e.addr);
                    m.learned = now;
                }
            } else if self.members.len() < MAX_MEMBERS {
                let m = Member { addr: Some(e.addr), heard: None, learned: now, seq: 0, present: false, last: None };
                self.members.insert(e.node_id, m);
            }
        }
    }

    /// `id` proved it is in the room now; reports it as joined if it was not.
    pub fn heard(&mut self, id: NodeId, addr: Option<SocketAddr>, now: Instant) {
        if !self.members.contains_key(&id) && self.members.len() >= MAX_MEMBERS {
            // Proof beats hearsay: a full table makes room by forgetting an
            // unproven MEMBERS entry, so made-up entries cannot crowd out members.
            let Some(hearsay) = self.members.iter().find(|(_, m)| m.heard.is_none() && !m.present).map(|(k, _)| *k)
            else {
                return;
            };
            self.members.remove(&hearsay);
        }
        let m = self.members.entry(id).or_insert(Member {
            addr,
            heard: None,
            learned: now,
            seq: 0,
            present: false,
            last: None,
        });
        if addr.is_some() {
            m.addr = addr;
        }
        m.heard = Some(now);
        if !m.present {
            m.present = true;
            self.emit(RoomEvent::Joined(id));
        }
    }

    /// Whether a PRESENCE of `origin` with `seq` would be new.
    pub fn presence_is_new(&self, origin: &NodeId, seq: u64) -> bool {
        self.members.get(origin).is_none_or(|m| seq > m.seq)
    }

    /// A verified PRESENCE (as it is forwarded on): a leaving one ends the
    /// member's presence at once.
    pub fn on_presence(&mut self, p: &Presence, now: Instant) {
        let (origin, seq) = (p.origin, p.seq);
        if p.state == crate::wire::PRESENCE_LEAVING {
            if let Some(m) = self.members.get_mut(&origin) {
                m.seq = m.seq.max(seq);
                m.heard = None;
                m.addr = None;
                m.last = None;
                if std::mem::take(&mut m.present) {
                    self.emit(RoomEvent::Left(origin));
                }
            }
            return;
        }
        self.heard(origin, None, now);
        if let Some(m) = self.members.get_mut(&origin) {
            m.seq = m.seq.max(seq);
            m.last = Some(p.clone());
        }
    }

    /// Whether a message (origin, id) was seen already.
    pub fn seen(&self, origin: &NodeId, id: &[u8; 16]) -> bool {
        self.seen.contains(&(*origin, *id))
    }

    /// Remembers a message (origin, id); false if it was already seen.
    pub fn remember(&mut self, origin: NodeId, id: [u8; 16], now: Instant) -> bool {
        if !self.seen.insert((origin, id)) {
            return false;
        }
        self.seen_order.push_back((now, origin, id));
        while self.seen_order.len() > SEEN_CAPACITY {
            if let Some((_, o, i)) = self.seen_order.pop_front() {
                self.seen.remove(&(o, i));
            }
        }
        true
    }

    /// Time passed: forgets old message ids, gives up unanswered JOINs, and
    /// reports as left the members that have signed nothing (PRESENCE, MESSAGE)
    /// and sent no JOIN for longer than `idle`.
    pub fn expire(&mut self, idle: Duration, now: Instant) {
        while let Some((at, o, i)) = self.seen_order.front().copied() {
            if now.saturating_duration_since(at) < SEEN_FOR {
                break;
            }
            self.seen_order.pop_front();
            self.seen.remove(&(o, i));
        }
        let stale: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, n)| matches!(n.link, Link::Asked(t) if now.saturating_duration_since(t) > JOIN_PATIENCE))
            .map(|(c, _)| *c)
            .collect();
        for c in stale {
            if let Some(n) = self.links.remove(&c) {
                self.declined.insert(n.conn.node_id, now);
            }
        }
        self.declined.retain(|_, t| now.saturating_duration_since(*t) < DECLINED_FOR);
        self.dialling.retain(|_, t| now.saturating_duration_since(*t) < JOIN_PATIENCE);
        let mut left = Vec::new();
        for (id, m) in self.members.iter_mut() {
            if m.present && m.heard.is_some_and(|h| now.saturating_duration_since(h) > idle) {
                m.present = false;
                m.heard = None;
                m.last = None;
                left.push(*id);
            }
        }
        for id in left {
            self.emit(RoomEvent::Left(id));
        }
        // Hearsay never confirmed, and members gone long ago, are forgotten.
        self.members.retain(|_, m| m.present || now.saturating_duration_since(m.learned) < SEEN_FOR.min(idle * 4));
    }

    /// Members to dial or JOIN to reach `min_neighbours`: those with an
    /// address that are not linked and did not decline lately, present ones first.
    pub fn candidates(&self, me: NodeId, now: Instant) -> Vec<(NodeId, Option<SocketAddr>)> {
        let linked: std::collections::HashSet<NodeId> = self.links.values().map(|n| n.conn.node_id).collect();
        let mut c: Vec<(bool, NodeId, Option<SocketAddr>)> = self
            .members
            .iter()
            .filter(|(id, m)| {
                **id != me
                    && !linked.contains(id)
                    && !self.dialling.contains_key(id)
                    && m.addr.is_some()
                    && !self.declined_lately(id, now)
            })
            .map(|(id, m)| (m.present, *id, m.addr))
            .collect();
        fastrand::shuffle(&mut c);
        c.sort_by_key(|(present, _, _)| !present);
        c.into_iter().map(|(_, id, a)| (id, a)).collect()
    }

    /// A MEMBERS frame for `to`: neighbours first, then other present members
    /// with an address (never hearsay, so the dead are not gossiped on); never `to` itself.
    pub fn members_frame(&self, to: &PeerConn) -> Frame {
        let mut list: Vec<PeerEntry> = self
            .neighbours()
            .filter(|c| c.node_id != to.node_id)
            .filter_map(|c| Some(PeerEntry { node_id: c.node_id, addr: c.listen_addr? }))
            .collect();
        let mut others: Vec<PeerEntry> = self
            .members
            .iter()
            .filter(|(id, m)| m.present && **id != to.node_id && !list.iter().any(|e| e.node_id == **id))
            .filter_map(|(id, m)| Some(PeerEntry { node_id: *id, addr: m.addr? }))
            .collect();
        fastrand::shuffle(&mut others);
        list.extend(others);
        list.truncate(MAX_PEERS_PER_FRAME);
        Frame::Members { room: self.id, members: list }
    }

    /// Sends `frame` to every neighbour but connection `except` and node
    /// `origin`; returns how many it went to (counted as sent when a MESSAGE).
    pub fn flood(&mut self, frame: &Frame, except: u64, origin: NodeId) -> usize {
        let mut n = 0;
        for c in self.neighbours() {
            if c.conn_id != except && c.node_id != origin && c.send(frame.clone()) {
                n += 1;
            }
        }
        if matches!(frame, Frame::Message(_)) {
            self.stats.sent += n as u64;
        }
        n
    }

    /// Members currently present.
    pub fn present(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.members.iter().filter(|(_, m)| m.present).map(|(id, _)| *id).collect();
        v.sort_by_key(|id| id.0);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(min: usize, max: usize) -> (RoomState, mpsc::Receiver<RoomEvent>) {
        let (tx, rx) = mpsc::channel(64);
        (RoomState::new("lobby", RoomOptions { min_neighbours: min, max_neighbours: max, hops: 8 }, tx), rx)
    }

    #[test]
    fn a_join_is_accepted_until_the_room_has_max_neighbours_then_declined_with_members() {
        let (mut r, mut events) = room(1, 2);
        let now = Instant::now();
        let conns: Vec<_> = (1..=3).map(|i| PeerConn::detached(i).0).collect();
        assert_eq!(r.on_join(&conns[0], now).len(), 2, "JOIN back and MEMBERS");
        assert_eq!(r.on_join(&conns[0], now).len(), 0, "a repeated JOIN changes nothing");
        r.on_join(&conns[1], now);
        let third = r.on_join(&conns[2], now);
        assert!(matches!(&third[..], [Frame::Members { members, .. }, Frame::Leave(_)] if members.len() == 2));
        assert_eq!(r.neighbours().count(), 2);
        assert!(matches!(events.try_recv(), Ok(RoomEvent::Joined(id)) if id == conns[0].node_id));
    }

    #[test]
    fn our_join_answered_by_join_makes_a_neighbour_and_by_leave_a_declined_member() {
        let (mut r, _events) = room(2, 4);
        let now = Instant::now();
        let (a, b) = (PeerConn::detached(1).0, PeerConn::detached(2).0);
        assert!(r.wants(&a, now));
        r.asked(&a, now);
        r.asked(&b, now);
        assert!(!r.wants(&a, now), "asked already");
        let answer = r.on_join(&a, now);
        assert!(matches!(&answer[..], [Frame::Members { .. }]), "no second JOIN: {answer:?}");
        r.on_leave(&b, now);
        assert_eq!(r.linked(), 1);
        assert!(!r.wants(&b, now), "declined lately");
        assert!(r.wants(&b, now + DECLINED_FOR + Duration::from_secs(1)));
    }

    #[test]
    fn members_silent_past_the_idle_time_are_left_and_a_leaving_presence_is_at_once() {
        let (mut r, mut events) = room(1, 2);
        let now = Instant::now();
        let (x, y) = (NodeId([7; 32]), NodeId([8; 32]));
        let room_id = r.id;
        let p = |origin, seq, state| Presence { room: room_id, origin, seq, state, hops: 3, signature: [0; 64] };
        let (px, py) = (p(x, 10, 0), p(y, 10, 0));
        r.on_presence(&px, now);
        r.on_presence(&py, now);
        let a = PeerConn::detached(1).0;
        let caught: Vec<Frame> = r.on_join(&a, now).into_iter().filter(|f| matches!(f, Frame::Presence(_))).collect();
        assert_eq!(caught.len(), 2, "a new neighbour hears of both members");
        r.on_closed(a.conn_id);
        assert!(!r.presence_is_new(&x, 10) && r.presence_is_new(&x, 11));
        r.expire(Duration::from_secs(5), now + Duration::from_secs(4));
        assert_eq!(r.present(), vec![a.node_id, x, y], "the neighbour, whose link proved it, and both");
        r.on_presence(&p(y, 11, 1), now + Duration::from_secs(4));
        assert_eq!(r.present(), vec![a.node_id, x]);
        r.expire(Duration::from_secs(5), now + Duration::from_secs(6));
        assert!(r.present().is_empty());
        let got: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
        let want = [RoomEvent::Joined(x), RoomEvent::Joined(y), RoomEvent::Joined(a.node_id), RoomEvent::Left(y)];
        assert_eq!(got[..4], want, "{got:?}");
        assert!(got[4..].contains(&RoomEvent::Left(x)) && got.len() == 6, "{got:?}");
        assert!(!r.presence_is_new(&y, 11), "a replayed presence stays old");
    }

    #[test]
    fn made_up_members_cannot_crowd_out_a_member_that_proves_itself() {
        let (mut r, mut events) = room(1, 2);
        let now = Instant::now();
        let fake = |i: usize| {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            PeerEntry { node_id: NodeId(id), addr: "[::1]:9".parse().unwrap() }
        };
        r.learn(NodeId([9; 32]), (0..MAX_MEMBERS + 10).map(fake).collect(), now);
        assert_eq!(r.members.len(), MAX_MEMBERS);
        let real = NodeId([0xee; 32]);
        r.heard(real, None, now);
        assert_eq!(r.present(), vec![real]);
        assert_eq!(r.members.len(), MAX_MEMBERS);
        assert_eq!(events.try_recv().ok(), Some(RoomEvent::Joined(real)));
    }

    #[test]
    fn message_ids_are_remembered_per_origin_and_forgotten_in_time() {
        let (mut r, _events) = room(1, 2);
        let now = Instant::now();
        let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
        assert!(r.remember(a, [5; 16], now));
        assert!(!r.remember(a, [5; 16], now));
        assert!(r.remember(b, [5; 16], now), "another origin's id is another message");
        r.expire(Duration::from_secs(120), now + SEEN_FOR + Duration::from_secs(1));
        assert!(!r.seen(&a, &[5; 16]));
    }

    #[test]
    fn a_neighbour_over_its_rate_is_limited() {
        let (mut r, _events) = room(1, 2);
        let now = Instant::now();
        let a = PeerConn::detached(1).0;
        r.on_join(&a, now);
        let admitted = (0..1000).filter(|_| r.admit(a.conn_id, now)).count();
        assert_eq!(admitted, RATE_BURST as usize);
        assert_eq!(r.stats.limited, 1000 - RATE_BURST as u64);
        assert!(r.admit(a.conn_id, now + Duration::from_secs(1)));
    }
}
