//! Seed→fetch between nodes: boundary sizes, shared pieces, swarms that trade, slow and vanishing seeders.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_then_fetch_is_byte_exact_at_boundary_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let seeder = node_in(&dir.path().join("s"), test_config()).await;
    let fetcher = node_in(&dir.path().join("f"), test_config()).await;
    let addr = seeder.local_addr().unwrap();
    for (i, size) in [0, 1, MIB - 1, MIB, MIB + 1, 5 * MIB + 7].into_iter().enumerate() {
        let bytes = data(size, i as u64);
        let src = dir.path().join(format!("src-{size}"));
        std::fs::write(&src, &bytes).unwrap();
        let info = seeder.seed(&src, |_| {}).await.unwrap();
        let out = dir.path().join(format!("out-{size}"));
        let outcome = fetch(&fetcher, info.root, vec![addr], out.clone()).await.unwrap();
        assert_eq!(outcome.file_bytes, size as u64);
        assert_eq!(std::fs::read(&out).unwrap(), bytes, "size {size}");
        assert!(!pex::fetch::part_path(&out).exists(), "no .part left behind");
    }
    let stats = fetcher.stats();
    assert_eq!(stats.pieces_rejected, 0);
    assert!(stats.downloaded_bytes >= (7 * MIB) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_pieces_are_one_blob() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = vec![0u8; 3 * MIB + 5];
    let (_seeder, info, addr) = seeder(dir.path(), "zeros", &bytes, test_config()).await;
    assert_eq!(info.pieces[0], info.pieces[2]);
    let fetcher = node_in(&dir.path().join("f"), test_config()).await;
    let out = dir.path().join("zeros.out");
    fetch(&fetcher, info.root, vec![addr], out.clone()).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    // Three identical full pieces travel once, plus the short last piece.
    assert_eq!(fetcher.stats().downloaded_bytes, (MIB + 5) as u64 + info.manifest_blob.len() as u64 + 32 * 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_output_is_never_overwritten_and_unknown_roots_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (_seeder, info, addr) = seeder(dir.path(), "f", &data(1000, 1), test_config()).await;
    let fetcher = node_in(&dir.path().join("f-data"), test_config()).await;
    let out = dir.path().join("taken");
    std::fs::write(&out, b"precious").unwrap();
    let err = fetch(&fetcher, info.root, vec![addr], out.clone()).await.unwrap_err();
    assert!(matches!(err, FetchError::OutputExists(_)), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let err = fetch(&fetcher, Hash::of(b"nobody has this"), vec![addr], dir.path().join("x")).await.unwrap_err();
    assert!(matches!(err, FetchError::NotFound(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_fetchers_finds_the_seeder_by_peer_exchange_and_trades_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(24 * MIB, 11);
    // A slow seeder: the fetchers can only finish in reasonable time by trading.
    let (seeder, info, addr) =
        seeder(dir.path(), "f", &bytes, Config { max_upload_rate: Some(16 << 20), ..test_config() }).await;
    let mut fetchers = Vec::new();
    for i in 0..4 {
        fetchers.push(node_in(&dir.path().join(format!("n{i}")), test_config()).await);
    }
    // Fetcher k knows only fetcher k-1; the first knows the seeder.
    let mut peers = vec![vec![addr]];
    for f in &fetchers[..3] {
        peers.push(vec![f.local_addr().unwrap()]);
    }
    for out in fetch_all(&fetchers, info.root, peers, dir.path()).await {
        assert!(std::fs::read(&out).unwrap() == bytes, "{} differs", out.display());
    }
    let uploaded = seeder.stats().uploaded_bytes;
    // Four separate copies would be 96 MiB from the seeder.
    assert!(uploaded < 3 * bytes.len() as u64, "seeder uploaded {uploaded} bytes: fetchers did not trade");
    let traded: u64 = fetchers.iter().map(|f| f.stats().uploaded_bytes).sum();
    assert!(traded > 0, "fetchers served each other nothing");
    // The last fetcher met the seeder through peer exchange.
    assert!(fetchers[3].stats().peers.iter().any(|p| p.node_id == seeder.id().to_hex()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeder_that_disappears_mid_transfer_costs_only_its_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(8 * MIB, 12);
    let slow = || Config { max_upload_rate: Some(4 << 20), ..test_config() };
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let (first, info, a) = seeder(&dir.path().join("a"), "f", &bytes, slow()).await;
    let (_second, info2, b) = seeder(&dir.path().join("b"), "f", &bytes, slow()).await;
    assert_eq!(info.root, info2.root);
    let fetcher = node_in(&dir.path().join("f"), test_config()).await;
    let (task, mut rx) = spawn_fetch(&fetcher, info.root, vec![a, b], dir.path().join("out"));
    // Once some data has arrived, the first seeder goes away.
    tokio::time::timeout(PATIENCE, rx.wait_for(|p| p.have_bytes >= 2 * MIB as u64)).await.unwrap().unwrap();
    first.shutdown().await;
    let outcome = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap().unwrap();
    assert!(std::fs::read(&outcome.path).unwrap() == bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_limit_below_one_piece_per_second_still_moves_data() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(MIB + 1, 14);
    let (_seeder, info, addr) =
        seeder(dir.path(), "f", &bytes, Config { max_upload_rate: Some(256 << 10), ..test_config() }).await;
    // One piece takes 4 s at 256 KiB/s; an ASK time-out of 2 s must not fire while bytes flow.
    let impatient =
        Config { timeouts: pex::Timeouts { ask: Duration::from_secs(2), ..test_config().timeouts }, ..test_config() };
    let fetcher = node_in(&dir.path().join("fetcher"), impatient).await;
    let out = dir.path().join("out");
    fetch(&fetcher, info.root, vec![addr], out.clone()).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes);
    // Nothing was asked twice: the slow peer was never given up on.
    assert_eq!(fetcher.stats().downloaded_bytes, (MIB + 1 + info.manifest_blob.len() + 64) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endgame_does_not_wait_on_a_very_slow_peer() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(4 * MIB, 21);
    // The slow seeder alone would need 64 s for this file; the fast one a blink.
    let crawl = Config { max_upload_rate: Some(64 << 10), ..test_config() };
    let (slow, info, s) = seeder(&dir.path().join("slow").tap_mkdir(), "f", &bytes, crawl).await;
    let (_fast, _, f) = seeder(&dir.path().join("fast").tap_mkdir(), "f", &bytes, test_config()).await;
    let fetcher = node_in(&dir.path().join("fetcher"), test_config()).await;
    let out = dir.path().join("out");
    // Only the slow peer at first, so it certainly holds ASKs; then the fast one.
    let (task, mut rx) = spawn_fetch(&fetcher, info.root, vec![s], out.clone());
    tokio::time::timeout(PATIENCE, rx.wait_for(|p| p.total_bytes > 0)).await.unwrap().unwrap();
    fetcher.add_peer(f);
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap().unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes);
    // Whatever the slow peer was asked for was fetched again from the fast one.
    assert!(slow.stats().uploaded_bytes < MIB as u64, "the slow peer delivered {} bytes", slow.stats().uploaded_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_name_of_255_bytes_seeds_and_fetches_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    // The spec's longest name, in bytes (127 two-byte characters and one more).
    let name = "é".repeat(127) + "x";
    assert_eq!(name.len(), pex::manifest::MAX_NAME_LEN);
    let bytes = data(2 * MIB + 3, 54);
    let (_seeder, info, addr) = seeder(&dir.path().join("s").tap_mkdir(), &name, &bytes, test_config()).await;
    assert_eq!(info.manifest.name, name);
    let fetcher = node_in(&dir.path().join("fetcher"), test_config()).await;
    let out_dir = dir.path().join("out").tap_mkdir();
    let outcome = fetch(&fetcher, info.root, vec![addr], out_dir.join(&name)).await.unwrap();
    assert!(std::fs::read(&outcome.path).unwrap() == bytes);
    let names: Vec<_> = std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [std::ffi::OsString::from(&name)], "only the file itself is left");
}
