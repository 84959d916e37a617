//! Three pex nodes on [::1] in one room: `cargo run --example room`.
//!
//! B and C know only A (the bootstrap). Every node joins the room "lobby",
//! waits until it knows the other two, then B broadcasts, C sends A a direct
//! message, and B leaves; the events each node hears are printed.

use pex::{Config, Node, Room, RoomEvent};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A node listening on a free port of [::1], with no data directory: a fresh
/// identity for this run, and no peer exchange dials (rooms pick whom to dial).
async fn node() -> anyhow::Result<Node> {
    let config = Config { listen: Some("[::1]:0".parse()?), dial_learned: false, remember: false, ..Config::default() };
    Ok(Node::start(config, None, CancellationToken::new()).await?)
}

/// Prints the events `room` hears until it has been quiet for `quiet`.
async fn show(name: &str, room: &mut Room, quiet: Duration) {
    while let Ok(Some(event)) = tokio::time::timeout(quiet, room.recv()).await {
        match event {
            RoomEvent::Joined(id) => println!("{name}: {} joined", id.short()),
            RoomEvent::Left(id) => println!("{name}: {} left", id.short()),
            RoomEvent::Message { from, direct, bytes } => {
                let text = pex::text::clean(&String::from_utf8_lossy(&bytes), 200);
                println!("{name}: <{}>{} {text}", from.short(), if direct { " (direct)" } else { "" });
            }
            RoomEvent::Full(addr) => println!("{name}: {addr} is full"),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (a, b, c) = (node().await?, node().await?, node().await?);
    let bootstrap = a.local_addr().expect("listening");
    b.add_peer(bootstrap);
    c.add_peer(bootstrap);
    let mut rooms = [a.join_room("lobby")?, b.join_room("lobby")?, c.join_room("lobby")?];
    for (name, id) in [("A", a.id()), ("B", b.id()), ("C", c.id())] {
        println!("{name} is {}", id.short());
    }
    while rooms.iter().any(|r| r.members().len() < 2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent_to = rooms[1].broadcast(&b"hello from B"[..])?;
    println!("B broadcast to {sent_to} neighbours");
    rooms[2].send_to(a.id(), &b"just for A"[..]).await?;
    for (name, room) in ["A", "B", "C"].into_iter().zip(rooms.iter_mut()) {
        show(name, room, Duration::from_millis(500)).await;
    }
    let [mut room_a, room_b, mut room_c] = rooms;
    room_b.leave();
    show("A", &mut room_a, Duration::from_secs(2)).await;
    show("C", &mut room_c, Duration::from_secs(2)).await;
    for n in [a, b, c] {
        n.shutdown().await;
    }
    Ok(())
}
