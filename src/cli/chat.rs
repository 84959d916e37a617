//! `pex chat ROOM`: a room on the terminal or in a pipe. Lines from stdin are
//! broadcast, `/msg NODEID text` goes to one member, messages print on stdout
//! (`<short id> text`, or one JSON object a line with `--json`), joins and
//! leaves on stderr. Ctrl-C or SIGTERM leaves the room cleanly (exit 130).

use super::commands::{say, start_node_with};
use super::{NodeArgs, EXIT_INTERRUPTED};
use anyhow::Result;
use pex::text::clean;
use pex::wire::MAX_PAYLOAD;
use pex::{NodeId, Room, RoomEvent};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Shortest node id prefix `/msg` takes.
const MIN_PREFIX: usize = 4;

/// Runs `pex chat`.
pub async fn chat(name: String, args: NodeArgs, quiet: bool, token: CancellationToken) -> Result<i32> {
    // The node gets a token of its own: Ctrl-C first leaves the room (the
    // members hear it at once), then shuts the node down.
    let node = start_node_with(&args, "[::]:0", quiet, CancellationToken::new(), |c| {
        // A room node dials the members its mesh picks, not every address
        // peer exchange teaches, and has no content to find on the LAN or DHT.
        c.dial_learned = false;
        c.lan = false;
        c.dht = None;
    })
    .await?;
    let mut room = node.join_room(&name)?;
    let id = node.id();
    if !quiet {
        let listen = node.local_addr();
        let at = listen.map_or("?".into(), |a| a.to_string());
        say(true, format!("joined room {} as {} on {at}; Ctrl-C to leave", clean(&name, 60), id.short()));
        if let Some(addr) = listen.and_then(|l| super::addrs::reachable(l).into_iter().next()) {
            say(true, format!("others join with: pex chat {} --peer {id}@{addr}", clean(&name, 60)));
        }
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut reading = true;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut told: Vec<Option<String>> = vec![None; args.peers.len()];
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tick.tick() => {
                // Alone in the room: say why the members given cannot be reached, once per reason.
                if !quiet && room.neighbours().is_empty() {
                    for (p, last) in args.peers.iter().zip(told.iter_mut()) {
                        let error = node.dial_error(&p.addr);
                        if error.is_some() && error != *last {
                            say(true, format!("cannot reach {}: {} (retrying)", p.addr, error.as_deref().unwrap_or("")));
                        }
                        *last = error;
                    }
                }
            }
            line = lines.next_line(), if reading => match line {
                Ok(Some(line)) => typed(&room, &line).await,
                // End of input: keep listening until Ctrl-C, as a logger in a pipe would.
                Ok(None) | Err(_) => reading = false,
            },
            event = room.recv() => match event {
                Some(e) => show(e, args.json),
                None => break,
            },
        }
    }
    let stats = room.stats();
    room.leave();
    node.shutdown().await;
    if !quiet {
        say(
            true,
            format!("left room {} ({} messages received, {} sent)", clean(&name, 60), stats.delivered, stats.sent),
        );
    }
    Ok(EXIT_INTERRUPTED)
}

/// Acts on one line the user typed.
async fn typed(room: &Room, line: &str) {
    let line = line.trim_end_matches('\r');
    if line.len() > MAX_PAYLOAD {
        return say(true, format!("error: a message of {} bytes is over the limit of 65,536", line.len()));
    }
    if let Some(rest) = line.strip_prefix("/msg ") {
        let (to, text) = rest.trim_start().split_once(' ').unwrap_or((rest.trim(), ""));
        match member(room, to) {
            Ok(id) => {
                if let Err(e) = room.send_to(id, text.as_bytes().to_vec()).await {
                    say(true, format!("error: {e}"));
                }
            }
            Err(e) => say(true, format!("error: {e}")),
        }
        return;
    }
    match line {
        "/members" => {
            let members = room.members();
            say(true, format!("{} in the room besides you:", members.len()));
            for m in members {
                say(true, format!("  {m}"));
            }
            return;
        }
        "" => return,
        _ if line.starts_with('/') && !line.starts_with("//") => {
            return say(true, "error: unknown command (/msg NODEID text, /members; start a line with // to send a /)");
        }
        _ => {}
    }
    let text = line.strip_prefix('/').filter(|_| line.starts_with("//")).unwrap_or(line);
    match room.broadcast(text.as_bytes().to_vec()) {
        Ok(0) => say(true, "warning: nobody in the room is connected yet; not sent"),
        Ok(_) => {}
        Err(e) => say(true, format!("error: {e}")),
    }
}

/// The member a `/msg` names: a whole node id, or a prefix of one member's.
fn member(room: &Room, prefix: &str) -> Result<NodeId, String> {
    let prefix = prefix.to_ascii_lowercase();
    if prefix.len() < MIN_PREFIX || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("/msg takes a node id (at least {MIN_PREFIX} hex digits) and the text"));
    }
    if let Ok(id) = prefix.parse::<NodeId>() {
        return Ok(id);
    }
    let matching: Vec<NodeId> = room.members().into_iter().filter(|m| m.to_hex().starts_with(&prefix)).collect();
    match matching[..] {
        [id] => Ok(id),
        [] => Err(format!("no member of the room has an id starting {prefix}")),
        _ => Err(format!("{} members have an id starting {prefix}: give more digits", matching.len())),
    }
}

/// Prints an event: messages on stdout, the rest on stderr.
fn show(event: RoomEvent, json: bool) {
    match event {
        RoomEvent::Message { from, direct, bytes } => {
            let text = String::from_utf8_lossy(&bytes);
            if json {
                say(false, json!({ "from": from.to_hex(), "direct": direct, "text": text }));
            } else {
                let direct = if direct { "(direct) " } else { "" };
                say(false, format!("<{}> {direct}{}", from.short(), clean(&text, MAX_PAYLOAD)));
            }
        }
        RoomEvent::Joined(id) => say(true, format!("{} joined", id.short())),
        RoomEvent::Left(id) => say(true, format!("{} left", id.short())),
        RoomEvent::Full(addr) => say(true, format!("{addr} is full (it refused: peer limit reached)")),
    }
}
