//! Peers that lie: corrupt pieces, hostile manifests and hash lists, and what a failed fetch leaves behind.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupting_peer_is_banned_and_the_fetch_completes_from_an_honest_one() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(4 * MIB, 9);
    // The honest seeder is slow, so the liar is certainly asked for pieces.
    let slow = Config { max_upload_rate: Some(2 << 20), ..test_config() };
    let (_seeder, info, honest) = seeder(dir.path(), "f", &bytes, slow).await;
    let liar = corrupting_peer(&info).await;
    let fetcher = node_in(&dir.path().join("f-data"), test_config()).await;
    let out = dir.path().join("out");
    fetch(&fetcher, info.root, vec![liar.addr, honest], out.clone()).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert!(fetcher.stats().pieces_rejected >= 1);
    assert_eq!(liar.next_reject().await, RejectCode::Misbehaving as u8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liar_in_the_swarm_is_banned_by_every_fetcher_that_meets_it() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(6 * MIB, 13);
    let (_seeder, info, honest) =
        seeder(dir.path(), "f", &bytes, Config { max_upload_rate: Some(4 << 20), ..test_config() }).await;
    let liar = corrupting_peer(&info).await;
    let fetchers =
        [node_in(&dir.path().join("x"), test_config()).await, node_in(&dir.path().join("y"), test_config()).await];
    let peers = vec![vec![liar.addr, honest], vec![liar.addr, honest]];
    let outs = fetch_all(&fetchers, info.root, peers, dir.path()).await;
    for (f, out) in fetchers.iter().zip(outs) {
        assert!(std::fs::read(&out).unwrap() == bytes);
        assert!(f.stats().pieces_rejected >= 1);
    }
    for _ in 0..2 {
        assert_eq!(liar.next_reject().await, RejectCode::Misbehaving as u8);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_manifests_are_refused_with_a_clear_error_before_anything_is_written() {
    use pex::manifest::{Manifest, MANIFEST_MAGIC};
    let dir = tempfile::tempdir().unwrap();
    let fetcher = node_in(&dir.path().join("f"), test_config()).await;
    let list = Bytes::from(Hash::of(b"piece").0.to_vec());
    let good = Manifest { name: "ok".into(), size: 10, lists: vec![Hash::of(&list)] };
    let mut cases: Vec<(&str, Bytes)> = Vec::new();
    for name in ["", "..", "a/b", "/etc/passwd", "x\u{1}y", "..\\..\\win"] {
        cases.push(("unsafe file name", Manifest { name: name.into(), ..good.clone() }.encode()));
    }
    cases.push(("needs", Manifest { size: 40 << 40, ..good.clone() }.encode()));
    let mut half_pieces = good.encode().to_vec();
    half_pieces[5..9].copy_from_slice(&(1u32 << 19).to_be_bytes());
    cases.push(("piece size", half_pieces.into()));
    cases.push(("bad magic", Bytes::from_static(b"this is not a manifest at all")));
    let mut truncated = MANIFEST_MAGIC.to_vec();
    truncated.push(1);
    cases.push(("truncated", truncated.into()));
    for (i, (expect, blob)) in cases.into_iter().enumerate() {
        let root = Hash::of(&blob);
        let peer = FakePeer::new().serving([blob, list.clone()]).start().await;
        let out = dir.path().join(format!("out{i}"));
        let err = fetch(&fetcher, root, vec![peer.addr], out.clone()).await.unwrap_err();
        assert!(matches!(err, FetchError::BadManifest { .. }), "case {i}: {err}");
        assert!(err.to_string().contains(expect), "case {i}: {err}");
        assert!(!out.exists() && !pex::fetch::part_path(&out).exists(), "case {i} wrote something");
    }
    // A consistent manifest for 100 TiB: refused before downloading, with the numbers.
    let size: u64 = 100 << 40;
    let lists = Manifest::lists_for(Manifest::pieces_for(size)) as usize;
    let huge = Manifest { name: "huge".into(), size, lists: vec![Hash::of(b"l"); lists] }.encode();
    let root = Hash::of(&huge);
    let peer = FakePeer::new().serving([huge]).start().await;
    let err = fetch(&fetcher, root, vec![peer.addr], dir.path().join("huge")).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("not enough disk space") && text.contains("need 100 TiB"), "{text}");
    assert!(!pex::fetch::part_path(&dir.path().join("huge")).exists());
}

/// A file described by hand: its manifest, one hash list naming `pieces`, and the blobs.
fn file_of(name: &str, size: u64, pieces: &[Bytes]) -> (Hash, Vec<Bytes>) {
    use pex::manifest::Manifest;
    let list: Vec<u8> = pieces.iter().flat_map(|p| Hash::of(p).0).collect();
    let list = Bytes::from(list);
    let manifest = Manifest { name: name.into(), size, lists: vec![Hash::of(&list)] }.encode();
    let root = Hash::of(&manifest);
    let mut blobs = vec![manifest, list];
    blobs.extend(pieces.iter().cloned());
    (root, blobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_of_the_wrong_length_is_rejected_even_though_its_hash_matches() {
    let dir = tempfile::tempdir().unwrap();
    let fetcher = node_in(&dir.path().join("f"), test_config()).await;
    let piece = |len: usize, seed: u64| Bytes::from(data(len, seed));
    let cases = [
        // The hash list names, for the middle piece, a blob 1,000 bytes short of 1 MiB.
        ("short middle piece", 3 * MIB as u64, vec![piece(MIB, 1), piece(MIB - 1000, 2), piece(MIB, 3)]),
        // The last piece should be 5,000 bytes; the blob the list names has 4,000.
        ("short last piece", 2 * MIB as u64 + 5000, vec![piece(MIB, 4), piece(MIB, 5), piece(4000, 6)]),
        // And 6,000: longer than the file has room for.
        ("long last piece", 2 * MIB as u64 + 5000, vec![piece(MIB, 7), piece(MIB, 8), piece(6000, 9)]),
    ];
    for (i, (case, size, pieces)) in cases.into_iter().enumerate() {
        let (root, blobs) = file_of(&format!("f{i}"), size, &pieces);
        let seeder = FakePeer::new().serving(blobs).start().await;
        let out = dir.path().join(format!("out{i}"));
        let rejected = fetcher.stats().pieces_rejected;
        let result = fetch_with(&fetcher, root, failing_fetch(out.clone(), vec![seeder.addr])).await;
        if let Ok(done) = &result {
            let file = std::fs::read(&done.path).unwrap();
            let hole = if i == 0 { &file[2 * MIB - 1000..2 * MIB] } else { &file[2 * MIB + 4000..] };
            let zeros = hole.iter().all(|b| *b == 0);
            panic!(
                "{case}: the fetch succeeded: {} bytes at the output path, the bytes no piece gave all zero: {zeros}",
                file.len()
            );
        }
        assert!(!out.exists(), "{case}: something appeared at the output path");
        assert!(fetcher.stats().pieces_rejected > rejected, "{case}: no piece was rejected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_list_of_the_wrong_length_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fetcher = node_in(&dir.path().join("f"), test_config()).await;
    let pieces: Vec<Bytes> = (0..3).map(|i| Bytes::from(data(MIB, 30 + i))).collect();
    // A 3-piece file whose list names 2 pieces, and one whose list names 4.
    for (i, (size, named)) in
        [(3 * MIB as u64, &pieces[..2]), (3 * MIB as u64 - 1, &[&pieces[..], &pieces[..1]].concat()[..])]
            .into_iter()
            .enumerate()
    {
        let (root, blobs) = file_of(&format!("f{i}"), size, named);
        let seeder = FakePeer::new().serving(blobs).start().await;
        let out = dir.path().join(format!("out{i}"));
        let err = fetch_with(&fetcher, root, failing_fetch(out.clone(), vec![seeder.addr])).await.unwrap_err();
        assert!(matches!(err, FetchError::BadManifest { .. }), "case {i}: {err}");
        assert!(!out.exists(), "case {i}: something appeared at the output path");
    }
}

/// Files under `dir`, at any depth, whose contents mention `needle`.
fn files_mentioning(dir: &std::path::Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_mentioning(&path, needle));
        } else if std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes())) {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_fails_before_any_piece_is_verified_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let fetcher = node_in(&dir.path().join("f"), test_config()).await;
    let data_dir = fetcher.data_dir().unwrap().path().to_owned();
    let pieces: Vec<Bytes> = (0..3).map(|i| Bytes::from(data(MIB, 50 + i))).collect();
    let (short_root, short_list) = file_of("short", 3 * MIB as u64, &pieces[..2]);
    let (corrupt_root, corrupt) = file_of("corrupt", 3 * MIB as u64, &pieces);
    let (missing_root, missing) = file_of("missing", 3 * MIB as u64, &pieces);
    let cases = [
        ("a hash list one hash short", short_root, FakePeer::new().serving(short_list)),
        // Manifest and list only: every piece is answered with garbage, or with DONT_HAVE.
        ("pieces that never verify", corrupt_root, FakePeer::new().serving(corrupt[..2].to_vec()).corrupting()),
        ("pieces nobody has", missing_root, FakePeer::new().serving(missing[..2].to_vec())),
    ];
    for (i, (case, root, peer)) in cases.into_iter().enumerate() {
        let peer = peer.start().await;
        let out = dir.path().join(format!("out{i}"));
        let part = pex::fetch::part_path(&out);
        let err = fetch_with(&fetcher, root, failing_fetch(out.clone(), vec![peer.addr])).await.unwrap_err();
        let part_name = part.file_name().unwrap().to_str().unwrap();
        let records = files_mentioning(&data_dir, part_name);
        assert!(!out.exists(), "{case} ({err}): something appeared at the output path");
        assert!(!part.exists(), "{case} ({err}): {} was left behind", part.display());
        assert!(
            fetcher.data_dir().unwrap().load_partial(&root).unwrap().is_none(),
            "{case}: a partial record was left"
        );
        assert!(records.is_empty(), "{case}: left behind, naming the .part: {records:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_fails_after_verifying_a_piece_keeps_the_part_and_its_record_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(3 * MIB, 53);
    let (_seeder, info, honest) = seeder(dir.path(), "f", &bytes, test_config()).await;
    // A peer with only the first piece (it says so when asked for its BITFIELD).
    let partial = FakePeer::new()
        .serving_meta(&info)
        .serving([Bytes::copy_from_slice(&bytes[..MIB])])
        .bitfield(info.root, Bytes::from_static(&[0x80]))
        .start()
        .await;
    let fetcher = node_in(&dir.path().join("fetcher"), test_config()).await;
    let data_dir = fetcher.data_dir().unwrap().path().to_owned();
    let out = dir.path().join("out");
    let part = pex::fetch::part_path(&out);
    let err = fetch_with(&fetcher, info.root, failing_fetch(out.clone(), vec![partial.addr])).await.unwrap_err();
    assert!(!out.exists(), "{err}");
    assert!(part.exists(), "{err}: the .part holding a verified piece is gone");
    assert!(fetcher.data_dir().unwrap().load_partial(&info.root).unwrap().is_some(), "{err}: no partial record");
    let part_name = part.file_name().unwrap().to_str().unwrap();
    assert!(!files_mentioning(&data_dir, part_name).is_empty(), "no record in the data directory names the .part");
    // The same command again, now with a peer that has it all, resumes.
    let outcome = fetch(&fetcher, info.root, vec![honest], out.clone()).await.unwrap();
    assert_eq!(outcome.resumed_bytes, MIB as u64);
    assert!(std::fs::read(&out).unwrap() == bytes);
    assert!(!part.exists());
    assert!(fetcher.data_dir().unwrap().load_partial(&info.root).unwrap().is_none());
}
