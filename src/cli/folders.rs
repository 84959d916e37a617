//! The command line's folder side: `pex seed DIR` and `pex hash DIR`, and
//! `pex ls`, which fetches a root's manifests alone and lists what it names.

use super::commands::{listening, print_how_to_fetch, serve_until_cancelled, start_node, summary, ticket_for};
use super::{ui, NodeArgs, EXIT_INTERRUPTED};
use anyhow::Result;
use pex::fetch::Content;
use pex::manifest::{EntryKind, FolderInfo, Manifest};
use pex::text::{bytes, clean};
use pex::{Config, FetchError, FetchOptions, Hash, Node, Progress};
use serde_json::json;
use std::path::Path;
use std::time::Instant;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Hashes the tree at `dir` with a bar (bytes of files hashed) and serves it,
/// unless Ctrl-C comes first (then `None`). Prints a warning per thing skipped.
async fn hash_tree(
    node: &Node,
    dir: &Path,
    rehash: bool,
    quiet: bool,
    token: &CancellationToken,
) -> Result<Option<pex::node::SeededFolder>> {
    let pb = ui::hashing_bar(ui::interactive(quiet), 0, &clean(&dir.to_string_lossy(), 40));
    let pb2 = pb.clone();
    let seeded = tokio::select! {
        r = node.seed_folder(dir, rehash, move |n| { pb2.inc(n); }) => Some(r?),
        _ = token.cancelled() => None,
    };
    pb.finish_and_clear();
    if let Some(s) = &seeded {
        for line in &s.skipped {
            eprintln!("warning: skipped {}", clean(line, 300));
        }
    }
    Ok(seeded)
}

/// The summary of a folder: "N files, M empty directories, SIZE", and what was skipped.
fn describe(info: &FolderInfo, skipped: usize) -> String {
    let files = info.files().count();
    let dirs = info.entries.len() - files;
    let mut s = format!("{}, {}", ui::count(files, "file", "files"), bytes(info.manifest.total_size));
    if dirs > 0 {
        s += &format!(", {}", ui::count(dirs, "empty directory", "empty directories"));
    }
    if skipped > 0 {
        s += &format!("; {} skipped", ui::count(skipped, "entry", "entries"));
    }
    s
}

/// `pex hash DIR`: the folder's root.
pub async fn hash_dir(dir: &Path, quiet: bool, token: CancellationToken) -> Result<i32> {
    let config = Config { listen: None, pex: false, ..Config::default() };
    let node = Node::start(config, None, CancellationToken::new()).await?;
    match hash_tree(&node, dir, true, quiet, &token).await? {
        Some(seeded) => {
            println!("{}", seeded.info.root);
            if !quiet {
                eprintln!("{}", describe(&seeded.info, seeded.skipped.len()));
            }
            Ok(0)
        }
        None => Ok(EXIT_INTERRUPTED),
    }
}

/// `pex seed DIR`: hash the tree, print the root and how to fetch it, serve until Ctrl-C.
pub async fn seed_dir(dir: &Path, rehash: bool, args: NodeArgs, quiet: bool, token: CancellationToken) -> Result<i32> {
    let started = Instant::now();
    let node = start_node(&args, "[::]:9000", quiet, token.clone()).await?;
    let Some(seeded) = hash_tree(&node, dir, rehash, quiet, &token).await? else {
        return Ok(EXIT_INTERRUPTED);
    };
    let info = &seeded.info;
    print_how_to_fetch(&node, info.root, args.json);
    let name = clean(&info.manifest.name, 60);
    if !quiet {
        let known =
            if seeded.reused > 0 { format!(" ({} known, not re-hashed)", seeded.reused) } else { String::new() };
        eprintln!(
            "serving folder {name} ({}){known} on {}; Ctrl-C to stop",
            describe(info, seeded.skipped.len()),
            listening(&node)
        );
    }
    serve_until_cancelled(&node, &format!("serving {name}"), quiet, &token).await;
    node.shutdown().await;
    if args.json {
        let mut s = summary(&node, Some(info.root), info.manifest.total_size, started);
        s["files"] = json!(info.files().count());
        s["skipped"] = json!(seeded.skipped.len());
        if let Some(listen) = node.local_addr() {
            s["ticket"] = json!(ticket_for(info.root, node.id(), listen).to_string());
        }
        super::commands::say(false, s);
    }
    Ok(EXIT_INTERRUPTED)
}

/// `pex ls ROOT`: fetches the manifests alone and prints what the root names.
pub async fn ls(root: Hash, opts: FetchOptions, args: NodeArgs, quiet: bool, token: CancellationToken) -> Result<i32> {
    let node = start_node(&args, "[::]:0", quiet, token.clone()).await?;
    let mut opts = FetchOptions { list_only: true, ..opts };
    if args.peers.is_empty() && opts.expect.is_empty() {
        opts.remembered = node.remembered_peers();
    }
    let (tx, rx) = watch::channel(Progress::default());
    let bars = tokio::spawn(ui::fetch_progress(rx, ui::interactive(quiet)));
    let result = node.fetch(root, opts, tx).await;
    let _ = bars.await;
    node.shutdown().await;
    let outcome = match result {
        Ok(o) => o,
        Err(FetchError::Interrupted) => {
            eprintln!("error: interrupted");
            return Ok(EXIT_INTERRUPTED);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    match &outcome.content {
        Content::Listed(m) => print_file(root, m, args.json),
        Content::File(f) => print_file(root, &f.manifest, args.json),
        Content::Folder(f) => print_folder(f, args.json),
    }
    Ok(0)
}

fn print_file(root: Hash, m: &Manifest, json: bool) {
    if json {
        let v =
            json!({ "root": root.to_hex(), "kind": "file", "name": m.name, "size": m.size, "pieces": m.piece_count() });
        println!("{v}");
    } else {
        let pieces = ui::count(m.piece_count() as usize, "piece", "pieces");
        println!("{}  {} ({} bytes, {pieces})", clean(&m.name, 255), bytes(m.size), m.size);
    }
}

fn print_folder(f: &FolderInfo, json: bool) {
    let kind = |k: EntryKind| match k {
        EntryKind::File => "file",
        EntryKind::Executable => "executable",
        EntryKind::Directory => "directory",
    };
    if json {
        let entries: Vec<_> = f
            .entries
            .iter()
            .map(|e| {
                let root = e.is_file().then(|| e.root.to_hex());
                json!({ "path": e.path, "kind": kind(e.kind), "size": e.size, "root": root })
            })
            .collect();
        let v = json!({
            "root": f.root.to_hex(),
            "kind": "folder",
            "name": f.manifest.name,
            "size": f.manifest.total_size,
            "files": f.files().count(),
            "entries": entries,
        });
        println!("{v}");
        return;
    }
    for e in &f.entries {
        let path = clean(&e.path, 4096);
        if e.is_file() {
            let x = if e.kind == EntryKind::Executable { "*" } else { "" };
            println!("{:>12}  {}  {path}{x}", e.size, e.root);
        } else {
            println!("{:>12}  {:64}  {path}/", "-", "-");
        }
    }
    println!("{:>12}  {}  {} in all ({})", f.manifest.total_size, f.root, clean(&f.manifest.name, 255), describe(f, 0));
}
