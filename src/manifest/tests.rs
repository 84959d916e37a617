//! The manifest rules, each pinned by a test.
use super::*;
use sha2::Digest;

#[test]
fn manifest_round_trips_and_root_is_its_hash() {
    let info = FileInfo::new("a.bin", 3 * PIECE_SIZE + 1, vec![Hash::of(b"1"); 4]);
    assert_eq!(info.manifest.lists.len(), 1);
    assert_eq!(Manifest::parse(&info.manifest_blob).unwrap(), info.manifest);
    assert_eq!(info.root, Hash::of(&info.manifest_blob));
    let back = FileInfo::from_parts(info.manifest_blob.clone(), info.lists.clone()).unwrap();
    assert_eq!(back.pieces, info.pieces);
}

#[test]
fn empty_file_has_no_pieces_and_no_lists() {
    let info = FileInfo::new("empty", 0, vec![]);
    assert_eq!(info.manifest.lists, vec![]);
    assert_eq!(Manifest::parse(&info.manifest_blob).unwrap().piece_count(), 0);
}

#[test]
fn a_tebibyte_file_fits_one_manifest() {
    let pieces = Manifest::pieces_for(1 << 40);
    let lists = Manifest::lists_for(pieces);
    assert_eq!(lists, 32);
    assert!(FIXED_HEAD + MAX_NAME_LEN + 4 + lists as usize * 32 <= crate::wire::MAX_BLOB_LEN);
}

#[test]
fn hostile_manifests_are_refused() {
    let good = FileInfo::new("ok", 10, vec![Hash::of(b"x")]).manifest;
    for name in ["", "..", ".", "a/b", "/etc/passwd", "a\\b", "x\ny", "\u{7f}"] {
        let m = Manifest { name: name.into(), ..good.clone() };
        assert!(matches!(Manifest::parse(&m.encode()), Err(ManifestError::BadName(_))), "{name:?}");
    }
    let wrong_size = Manifest { size: 40 * PIECE_SIZE * HASHES_PER_LIST, ..good.clone() };
    assert!(matches!(Manifest::parse(&wrong_size.encode()), Err(ManifestError::Inconsistent { .. })));
    let mut blob = good.encode().to_vec();
    blob[5..9].copy_from_slice(&(1u32 << 19).to_be_bytes());
    assert_eq!(Manifest::parse(&blob), Err(ManifestError::BadPieceSize(1 << 19)));
    let mut trailing = good.encode().to_vec();
    trailing.push(0);
    assert_eq!(Manifest::parse(&trailing), Err(ManifestError::Trailing(1)));
    assert!(good.parse_list(0, &[0; 33]).is_err());
}

#[test]
fn sanitize_makes_names_valid() {
    for name in ["", "..", "a/b", "x\u{0}y", &"é".repeat(200)] {
        assert!(validate_name(&sanitize_name(name)).is_ok(), "{name:?}");
    }
}

// ---------------------------------------------------------------------
// Sizes, pieces and lists, against the rules of docs/PROTOCOL.md
// sections 1 and 5, with the numbers written out.

const MIB: u64 = 1_048_576;
const PER_LIST: u64 = 32_768;

fn sized(size: u64) -> Manifest {
    Manifest { name: "f".into(), size, lists: vec![] }
}

#[test]
fn pieces_for_is_the_size_in_mib_rounded_up() {
    let table = [
        (0, 0),
        (1, 1),
        (MIB - 1, 1),
        (MIB, 1),
        (MIB + 1, 2),
        (2 * MIB - 1, 2),
        (2 * MIB, 2),
        (2 * MIB + 1, 3),
        (PER_LIST * MIB, PER_LIST),
        (PER_LIST * MIB + 1, PER_LIST + 1),
        (u32::MAX as u64 * MIB, u32::MAX as u64),
        (u64::MAX, 1 << 44),
    ];
    for (size, pieces) in table {
        assert_eq!(Manifest::pieces_for(size), pieces, "size {size}");
        assert_eq!(sized(size).piece_count(), pieces, "piece_count of size {size}");
    }
}

#[test]
fn lists_for_is_the_piece_count_in_32768s_rounded_up() {
    let table = [
        (0, 0),
        (1, 1),
        (2, 1),
        (PER_LIST - 1, 1),
        (PER_LIST, 1),
        (PER_LIST + 1, 2),
        (2 * PER_LIST - 1, 2),
        (2 * PER_LIST, 2),
        (2 * PER_LIST + 1, 3),
        (u32::MAX as u64, 131_072),
        (1 << 44, 1 << 29),
    ];
    for (pieces, lists) in table {
        assert_eq!(Manifest::lists_for(pieces), lists, "{pieces} pieces");
    }
}

#[test]
fn every_piece_is_1_mib_but_the_last_and_none_past_the_end() {
    // (size, lengths of pieces 0, 1, 2, …, then 0 for the first index past the end)
    let table: [(u64, &[u64]); 8] = [
        (0, &[]),
        (1, &[1]),
        (13, &[13]),
        (MIB - 1, &[MIB - 1]),
        (MIB, &[MIB]),
        (MIB + 1, &[MIB, 1]),
        (3 * MIB, &[MIB, MIB, MIB]),
        (3 * MIB + 7, &[MIB, MIB, MIB, 7]),
    ];
    for (size, lens) in table {
        let m = sized(size);
        assert_eq!(m.piece_count(), lens.len() as u64, "size {size}");
        for (i, &len) in lens.iter().enumerate() {
            assert_eq!(m.piece_len(i as u64), len as usize, "size {size}, piece {i}");
        }
        for past in [lens.len() as u64, lens.len() as u64 + 1, u64::MAX / MIB + 1, u64::MAX] {
            assert_eq!(m.piece_len(past), 0, "size {size}, piece {past} is past the end");
        }
    }
    // The lengths add up to the size, whatever the size.
    for size in [5 * MIB - 1, 5 * MIB, 5 * MIB + 1, 7_777_777] {
        let m = sized(size);
        let total: u64 = (0..m.piece_count()).map(|i| m.piece_len(i) as u64).sum();
        assert_eq!(total, size);
    }
    // The largest file: the last piece is 1 MiB − 1, and nothing overflows.
    let m = sized(u64::MAX);
    assert_eq!(m.piece_len((1 << 44) - 2), MIB as usize);
    assert_eq!(m.piece_len((1 << 44) - 1), MIB as usize - 1);
    assert_eq!(m.piece_len(1 << 44), 0);
}

#[test]
fn every_list_holds_32768_hashes_but_the_last_and_none_past_it() {
    // (pieces, hashes in lists 0, 1, 2, …)
    let table: [(u64, &[u64]); 9] = [
        (0, &[]),
        (1, &[1]),
        (2, &[2]),
        (PER_LIST - 1, &[PER_LIST - 1]),
        (PER_LIST, &[PER_LIST]),
        (PER_LIST + 1, &[PER_LIST, 1]),
        (2 * PER_LIST, &[PER_LIST, PER_LIST]),
        (2 * PER_LIST + 5, &[PER_LIST, PER_LIST, 5]),
        (u32::MAX as u64, &[]),
    ];
    for (pieces, lens) in table {
        // The last piece short or full makes no difference to the lists.
        for size in [pieces * MIB, (pieces * MIB).saturating_sub(MIB - 1)] {
            let m = sized(size);
            assert_eq!(m.piece_count(), pieces);
            for (k, &len) in lens.iter().enumerate() {
                assert_eq!(m.list_len(k), len as usize, "{pieces} pieces, list {k}");
            }
            if pieces == u32::MAX as u64 {
                assert_eq!(m.list_len(0), PER_LIST as usize);
                assert_eq!(m.list_len(131_070), PER_LIST as usize);
                assert_eq!(m.list_len(131_071), PER_LIST as usize - 1, "2^32 − 1 = 131,072 × 32,768 − 1");
                assert_eq!(m.list_len(131_072), 0);
                continue;
            }
            let lists = Manifest::lists_for(pieces) as usize;
            assert_eq!(lists, lens.len());
            for past in [lists, lists + 1, usize::MAX] {
                assert_eq!(m.list_len(past), 0, "{pieces} pieces, list {past} is past the last");
            }
        }
    }
}

/// Section 5's table, field by field.
fn assert_layout(blob: &[u8], m: &Manifest) {
    let n = m.name.len();
    let c = m.lists.len();
    assert_eq!(blob.len(), 23 + n + 32 * c, "total length 23 + n + 32c");
    assert_eq!(&blob[0..4], b"PEXM");
    assert_eq!(blob[4], 1);
    assert_eq!(&blob[5..9], &[0x00, 0x10, 0x00, 0x00]);
    assert_eq!(&blob[9..17], &m.size.to_be_bytes());
    assert_eq!(&blob[17..19], &(n as u16).to_be_bytes());
    assert_eq!(&blob[19..19 + n], m.name.as_bytes());
    assert_eq!(&blob[19 + n..23 + n], &(c as u32).to_be_bytes());
    for (k, h) in m.lists.iter().enumerate() {
        assert_eq!(&blob[23 + n + 32 * k..23 + n + 32 * (k + 1)], &h.0, "list hash {k}");
    }
}

#[test]
fn encode_writes_the_documented_layout_and_parse_reads_it_back() {
    let per_list = PER_LIST * MIB;
    let sizes = [0, 1, MIB - 1, MIB, MIB + 1, per_list - 1, per_list, per_list + 1, 3 * per_list, 1 << 40];
    let names = ["x".to_owned(), "a".repeat(255), format!("{}a", "é".repeat(127)), "日本語.txt".to_owned()];
    for size in sizes {
        for name in &names {
            let count = Manifest::lists_for(Manifest::pieces_for(size)) as u32;
            let lists = (0..count).map(|k| Hash::of(&k.to_be_bytes())).collect();
            let m = Manifest { name: name.clone(), size, lists };
            let blob = m.encode();
            assert_layout(&blob, &m);
            assert_eq!(Manifest::parse(&blob).as_ref(), Ok(&m), "size {size}, name of {} bytes", name.len());
        }
    }
}

#[test]
fn parse_list_refuses_a_list_past_the_last_even_if_empty() {
    for (size, lists) in [(0, 0), (1, 1), (PER_LIST * MIB, 1), (PER_LIST * MIB + 1, 2)] {
        let m =
            Manifest { name: "f".into(), size, lists: (0..lists).map(|k: u32| Hash::of(&k.to_be_bytes())).collect() };
        for k in [lists as usize, lists as usize + 1, usize::MAX] {
            assert!(m.parse_list(k, &[]).is_err(), "size {size}: list {k} of {lists}");
            assert!(m.parse_list(k, &[0; 32]).is_err(), "size {size}: list {k} of {lists}");
        }
    }
}

// ---------------------------------------------------------------------
// FileInfo

fn piece_hashes(n: usize) -> Vec<Hash> {
    (0..n as u64).map(|i| Hash::of(&i.to_be_bytes())).collect()
}

#[test]
fn file_info_new_cuts_the_piece_hashes_into_lists_and_roots_the_manifest() {
    for pieces in [0, 1, 2, PER_LIST as usize - 1, PER_LIST as usize, PER_LIST as usize + 1, 2 * PER_LIST as usize + 3]
    {
        let size = (pieces as u64 * MIB).saturating_sub(MIB / 2);
        let hashes = piece_hashes(pieces);
        let info = FileInfo::new("file.bin", size, hashes.clone());
        let want_lists: Vec<Vec<u8>> =
            hashes.chunks(PER_LIST as usize).map(|c| c.iter().flat_map(|h| h.0).collect()).collect();
        assert_eq!(info.lists.len(), Manifest::lists_for(pieces as u64) as usize, "{pieces} pieces");
        assert!(info.lists.iter().map(|l| &l[..]).eq(want_lists.iter().map(|l| &l[..])), "{pieces} pieces");
        for (k, list) in info.lists.iter().enumerate() {
            assert_eq!(list.len(), 32 * info.manifest.list_len(k), "{pieces} pieces, list {k}");
            assert_eq!(info.manifest.lists[k].0, <[u8; 32]>::from(sha2::Sha256::digest(list)));
        }
        assert_eq!(info.pieces, hashes);
        assert_eq!(info.manifest.name, "file.bin");
        assert_eq!(info.manifest.size, size);
        assert_eq!(info.manifest_blob, info.manifest.encode());
        assert_eq!(info.root.0, <[u8; 32]>::from(sha2::Sha256::digest(&info.manifest_blob)));
        assert_eq!(Manifest::parse(&info.manifest_blob).as_ref(), Ok(&info.manifest));
    }
}

#[test]
fn file_info_new_sanitizes_the_name() {
    let info = FileInfo::new("../etc/passwd", 1, piece_hashes(1));
    assert_eq!(info.manifest.name, sanitize_name("../etc/passwd"));
    assert!(Manifest::parse(&info.manifest_blob).is_ok());
    assert_eq!(FileInfo::new("", 0, vec![]).manifest.name, "file");
}

#[test]
fn file_info_from_parts_takes_exactly_the_lists_the_manifest_names() {
    let pieces = 2 * PER_LIST as usize + 3;
    let info = FileInfo::new("f", pieces as u64 * MIB, piece_hashes(pieces));
    let back = FileInfo::from_parts(info.manifest_blob.clone(), info.lists.clone()).unwrap();
    assert_eq!(back.manifest, info.manifest);
    assert_eq!(back.manifest_blob, info.manifest_blob);
    assert_eq!(back.lists, info.lists);
    assert_eq!(back.pieces, info.pieces);
    assert_eq!(back.root.0, <[u8; 32]>::from(sha2::Sha256::digest(&info.manifest_blob)));

    // One list fewer or one more.
    let fewer = info.lists[..2].to_vec();
    assert!(FileInfo::from_parts(info.manifest_blob.clone(), fewer).is_err(), "a list missing");
    let more = [info.lists.clone(), vec![info.lists[2].clone()]].concat();
    assert!(FileInfo::from_parts(info.manifest_blob.clone(), more).is_err(), "a list too many");
    assert!(FileInfo::from_parts(info.manifest_blob.clone(), vec![]).is_err(), "no lists");

    // Each list a hash or a byte short or long.
    for k in 0..3 {
        let full = &info.lists[k];
        let longer = Bytes::from([&full[..], &[0u8; 32]].concat());
        let one_more = Bytes::from([&full[..], &[0u8]].concat());
        for bad in [full.slice(..full.len() - 32), full.slice(..full.len() - 1), longer, one_more] {
            let mut lists = info.lists.clone();
            let len = bad.len();
            lists[k] = bad;
            let got = FileInfo::from_parts(info.manifest_blob.clone(), lists);
            assert!(matches!(got, Err(ManifestError::BadList { index, .. }) if index == k), "list {k} of {len} bytes");
        }
    }
    // A blob that is not a manifest.
    assert!(FileInfo::from_parts(info.lists[2].clone(), vec![]).is_err());

    // No lists at all for an empty file.
    let empty = FileInfo::new("e", 0, vec![]);
    let back = FileInfo::from_parts(empty.manifest_blob.clone(), vec![]).unwrap();
    assert_eq!((back.pieces.len(), back.root), (0, empty.root));
    assert!(FileInfo::from_parts(empty.manifest_blob.clone(), vec![Bytes::new()]).is_err());
}

// ---------------------------------------------------------------------
// Names (section 5: UTF-8, 1 to 255 bytes, not "." or "..", no "/",
// "\" or Cc character).

fn cc_chars() -> impl Iterator<Item = char> {
    ('\u{0}'..='\u{1f}').chain('\u{7f}'..='\u{9f}')
}

#[test]
fn validate_name_follows_the_documented_rules() {
    let ok = |n: &str| validate_name(n).is_ok();
    let refused = |n: &str| matches!(validate_name(n), Err(ManifestError::BadName(_)));
    assert!(refused(""));
    assert!(ok("a"));
    assert!(ok(&"a".repeat(255)));
    assert!(refused(&"a".repeat(256)));
    // Multi-byte characters at the boundary: bytes count, not characters.
    assert!(ok(&format!("{}a", "é".repeat(127))));
    assert!(refused(&"é".repeat(128)));
    assert!(refused(&format!("{}é", "a".repeat(254))), "254 + 2 bytes");
    assert!(ok(&format!("{}abc", "😀".repeat(63))));
    assert!(refused(&format!("{}abcd", "😀".repeat(63))));
    assert!(ok(&"😀".repeat(63)));
    assert!(refused(&"😀".repeat(64)));
    assert!(refused("."));
    assert!(refused(".."));
    for name in ["...", ".a", "a.", "..a", "a..", ". .", "a..b"] {
        assert!(ok(name), "{name:?}");
    }
    for name in ["/", "\\", "a/b", "a\\b", "/a", "a/", "\\a", "a\\", "../x", "..\\x"] {
        assert!(refused(name), "{name:?}");
    }
    for c in cc_chars() {
        assert!(refused(&c.to_string()), "{c:?}");
        assert!(refused(&format!("a{c}b")), "{c:?}");
    }
    for c in [' ', '~', '\u{a0}', '\u{ad}', '\u{2028}', '\u{200b}', '\u{202e}', '\u{feff}', '\u{10ffff}'] {
        assert!(ok(&format!("a{c}b")), "{c:?} is not Cc");
    }
}

#[test]
fn a_refused_name_is_shown_escaped_and_cut() {
    let Err(ManifestError::BadName(why)) = validate_name("\x1b[2J/") else { panic!("accepted") };
    assert!(why.contains("\\x1b[2J"), "{why}");
    let Err(ManifestError::BadName(why)) = validate_name(&"x".repeat(1000)) else { panic!("accepted") };
    assert!(why.len() < 200, "{why}");
}

#[test]
fn sanitize_name_replaces_separators_and_controls_and_cuts_at_255_bytes() {
    let table: &[(&str, &str)] = &[
        ("a/b", "a_b"),
        ("a\\b", "a_b"),
        ("/", "_"),
        ("../x", ".._x"),
        ("x\0y", "x_y"),
        ("\n", "_"),
        ("\u{7f}\u{85}\u{9f}", "___"),
        ("", "file"),
        (".", "file"),
        ("..", "file"),
        ("...", "..."),
        ("ok.txt", "ok.txt"),
        ("日本語 \u{a0}", "日本語 \u{a0}"),
    ];
    for (input, want) in table {
        assert_eq!(sanitize_name(input), *want, "{input:?}");
    }
    for c in cc_chars() {
        assert_eq!(sanitize_name(&format!("a{c}")), "a_", "{c:?}");
    }
    let a255 = "a".repeat(255);
    assert_eq!(sanitize_name(&a255), a255, "255 bytes are kept");
    assert_eq!(sanitize_name(&"a".repeat(256)), a255);
    assert_eq!(sanitize_name(&"a".repeat(5000)), a255);
    let e = format!("{}a", "é".repeat(127));
    assert_eq!(sanitize_name(&e), e, "255 bytes of multi-byte text are kept");
    // Cut at a character boundary: the longest prefix of at most 255 bytes.
    assert_eq!(sanitize_name(&"é".repeat(128)), "é".repeat(127));
    assert_eq!(sanitize_name(&format!("a{}", "😀".repeat(64))), format!("a{}", "😀".repeat(63)));
    assert_eq!(sanitize_name(&format!("{}/", "a".repeat(255))), a255);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, ..Default::default() })]

    #[test]
    fn sanitize_name_gives_a_valid_name_and_keeps_valid_ones(name in "(\\PC|[\\x00-\\x1f\\x7f-\\x9f/\\\\.]){0,300}") {
        let clean = sanitize_name(&name);
        proptest::prop_assert!(validate_name(&clean).is_ok(), "{:?} → {:?}", name, clean);
        if validate_name(&name).is_ok() {
            proptest::prop_assert_eq!(&clean, &name);
        }
    }
}

// ---------------------------------------------------------------------
// Hashing a file's pieces.

/// A file of `size` pseudo-random bytes (every piece different).
fn random_file(size: u64, seed: u64) -> (tempfile::NamedTempFile, Vec<u8>) {
    let mut bytes = vec![0u8; size as usize];
    fastrand::Rng::with_seed(seed).fill(&mut bytes);
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, &bytes).unwrap();
    (f, bytes)
}

/// SHA-256 of every 1 MiB slice, computed here.
fn expected(bytes: &[u8]) -> Vec<Hash> {
    bytes.chunks(MIB as usize).map(|p| Hash(sha2::Sha256::digest(p).into())).collect()
}

#[test]
fn hash_pieces_gives_the_sha256_of_every_piece_and_reports_every_byte() {
    let sizes = [0, 1, MIB - 1, MIB, MIB + 1, 3 * MIB + 12_345];
    for (seed, size) in sizes.into_iter().enumerate() {
        let (file, bytes) = random_file(size, seed as u64);
        let want = expected(&bytes);
        assert_eq!(want.len() as u64, Manifest::pieces_for(size));
        for threads in [0, 1, 2, 3, 16] {
            let reports = std::sync::Mutex::new(Vec::new());
            let got = hash_pieces(file.as_file(), size, threads, &|n| reports.lock().unwrap().push(n)).unwrap();
            assert_eq!(got, want, "size {size}, {threads} threads");
            let mut reports = reports.into_inner().unwrap();
            reports.sort_unstable();
            let mut lens: Vec<u64> = bytes.chunks(MIB as usize).map(|p| p.len() as u64).collect();
            lens.sort_unstable();
            assert_eq!(reports, lens, "one report per piece, of its length: size {size}, {threads} threads");
            assert_eq!(reports.iter().sum::<u64>(), size);
        }
    }
}

#[test]
fn hash_pieces_puts_each_hash_at_its_index_whichever_thread_finishes_first() {
    // Each thread stalls after its first piece, so the others overtake it
    // and the workers finish their pieces out of file order.
    std::thread_local!(static STALLED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    let stall = |_| {
        if !STALLED.replace(true) {
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
    };
    let size = 5 * MIB + 1;
    let (file, bytes) = random_file(size, 42);
    for threads in [2, 3] {
        assert_eq!(hash_pieces(file.as_file(), size, threads, &stall).unwrap(), expected(&bytes), "{threads} threads");
    }
}

#[test]
fn hash_pieces_at_hashes_just_the_pieces_asked_for() {
    let size = 4 * MIB + 3;
    let (file, bytes) = random_file(size, 99);
    let want = expected(&bytes);
    for indices in [vec![], vec![0], vec![4], vec![4, 0, 2], vec![1, 3], vec![0, 1, 2, 3, 4]] {
        for threads in [1, 2, 8] {
            let reported = AtomicU64::new(0);
            let progress = |n| {
                reported.fetch_add(n, Ordering::Relaxed);
            };
            let mut got = hash_pieces_at(file.as_file(), size, &indices, threads, &progress).unwrap();
            got.sort_unstable_by_key(|p| p.0);
            let mut sorted = indices.clone();
            sorted.sort_unstable();
            let want: Vec<(u64, Hash)> = sorted.iter().map(|&i| (i, want[i as usize])).collect();
            assert_eq!(got, want, "pieces {indices:?}, {threads} threads");
            let bytes_asked: u64 = sorted.iter().map(|&i| if i == 4 { 3 } else { MIB }).sum();
            assert_eq!(reported.into_inner(), bytes_asked, "pieces {indices:?}, {threads} threads");
        }
    }
}

#[test]
fn hashing_a_file_shorter_than_its_size_is_an_error() {
    let (file, _) = random_file(MIB + 10, 7);
    assert!(hash_pieces(file.as_file(), MIB + 11, 2, &|_| ()).is_err());
    assert!(hash_pieces(file.as_file(), 3 * MIB, 1, &|_| ()).is_err());
    assert!(hash_pieces_at(file.as_file(), 2 * MIB, &[1], 1, &|_| ()).is_err());
    assert!(hash_pieces_at(file.as_file(), 2 * MIB, &[0], 1, &|_| ()).is_ok(), "piece 0 is all there");
}
