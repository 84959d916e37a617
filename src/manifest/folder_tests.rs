use super::*;
use crate::manifest::FileInfo;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)).unwrap()
}

fn file(path: &str, size: u64, root: Hash) -> Entry {
    Entry { kind: EntryKind::File, size, root, path: path.into() }
}

fn dir(path: &str) -> Entry {
    Entry { kind: EntryKind::Directory, size: 0, root: Hash::default(), path: path.into() }
}

/// A raw entry stream, in the given order, so hostile manifests can be built.
fn raw(entries: &[Entry]) -> Bytes {
    let mut b = BytesMut::new();
    entries.iter().for_each(|e| e.encode_into(&mut b));
    b.freeze()
}

/// A folder manifest with counts that agree with `stream`, whatever it holds.
fn hostile(entries: &[Entry]) -> Result<FolderInfo, ManifestError> {
    let stream = raw(entries);
    let m = FolderManifest {
        name: "evil".into(),
        entries: entries.len() as u64,
        total_size: entries.iter().map(|e| e.size).sum(),
        entry_bytes: stream.len() as u64,
        blobs: vec![Hash::of(&stream)],
    };
    FolderInfo::from_parts(m.encode(), vec![stream])
}

#[test]
fn the_documented_example_is_what_pex_builds() {
    // docs/PROTOCOL.md 6.2: hello.txt of 6.1 twice (once executable) and an empty directory.
    let hello: Hash = "d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de4".parse().unwrap();
    let mut exec = file("sub/hello.txt", 13, hello);
    exec.kind = EntryKind::Executable;
    let info = FolderInfo::new("demo", vec![exec, file("hello.txt", 13, hello), dir("empty")]).unwrap();
    assert_eq!(info.blobs, vec![Bytes::from(fixture("demo.entries"))]);
    assert_eq!(info.manifest_blob, fixture("demo.folder"));
    assert_eq!(info.root.to_hex(), "a394d1d5a5776dfb2817266f8df50367427d98f0a933f7f17bb118f50e06af48");
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap();
    assert!(doc.contains(&info.root.to_hex()) && doc.contains(&info.manifest.blobs[0].to_hex()));
    let parsed = FolderInfo::from_parts(info.manifest_blob.clone(), info.blobs.clone()).unwrap();
    assert_eq!(
        parsed.entries.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        ["empty", "hello.txt", "sub/hello.txt"]
    );
    assert_eq!(parsed.manifest.total_size, 26);
    // The file inside has the root it has alone.
    assert_eq!(FileInfo::new("hello.txt", 13, vec![Hash::of(b"hello, swarm\n")]).root, hello);
}

#[test]
fn canonical_order_is_by_component() {
    let mut v = vec!["a-b", "a/b", "a", "a/b/c", "B", "é"];
    v.sort_by(|a, b| path_order(a, b));
    assert_eq!(v, ["B", "a", "a/b", "a/b/c", "a-b", "é"]);
}

#[test]
fn large_folders_split_into_whole_mebibyte_blobs() {
    let entries: Vec<Entry> =
        (0..30_000).map(|i| file(&format!("dir{}/file-{i:06}.bin", i % 7), i, Hash::of(&i.to_be_bytes()))).collect();
    let info = FolderInfo::new("big", entries).unwrap();
    assert!(info.blobs.len() >= 2);
    assert!(info.blobs[..info.blobs.len() - 1].iter().all(|b| b.len() == PIECE_SIZE as usize));
    let again = FolderInfo::from_parts(info.manifest_blob.clone(), info.blobs.clone()).unwrap();
    assert_eq!(again.entries, info.entries);
    assert_eq!(again.manifest.entries, 30_000);
    // A blob cut short or padded is refused.
    let mut short = info.blobs.clone();
    short[0] = short[0].slice(..1000);
    assert!(matches!(FolderInfo::from_parts(info.manifest_blob.clone(), short), Err(ManifestError::BadList { .. })));
}

#[test]
fn hostile_entries_are_refused() {
    let h = Hash::of(b"x");
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        ("dot-dot", vec![file("../escape", 1, h)]),
        ("inner dot-dot", vec![file("a/../../escape", 1, h)]),
        ("absolute", vec![file("/etc/passwd", 1, h)]),
        ("empty component", vec![file("a//b", 1, h)]),
        ("dot", vec![file("./a", 1, h)]),
        ("backslash", vec![file("a\\b", 1, h)]),
        ("control", vec![file("a\nb", 1, h)]),
        ("duplicate", vec![file("a", 1, h), file("a", 1, h)]),
        ("file and directory of one name", vec![dir("a"), file("a", 1, h)]),
        ("below a file", vec![file("a", 1, h), file("a/b", 1, h)]),
        ("below an empty directory", vec![dir("a"), file("a/b", 1, h)]),
        ("out of order", vec![file("b", 1, h), file("a", 1, h)]),
        (
            "directory with a size",
            vec![Entry { kind: EntryKind::Directory, size: 5, root: Hash::default(), path: "d".into() }],
        ),
        ("long path", vec![file("a/".repeat(2049).trim_end_matches('/'), 1, h)]),
    ];
    for (why, entries) in cases {
        assert!(hostile(&entries).is_err(), "{why}: accepted");
    }
    assert!(hostile(&[file("a", 1, h), file("a b", 1, h), file("a/../b", 1, h)]).is_err());
    assert!(hostile(&[dir("a"), file("a b", 1, h), file("b/c", 2, h)]).is_ok());
    // Unknown kind, and counts that disagree.
    let mut stream = raw(&[file("a", 1, h)]).to_vec();
    stream[0] = 3;
    let m = FolderManifest {
        name: "x".into(),
        entries: 1,
        total_size: 1,
        entry_bytes: stream.len() as u64,
        blobs: vec![Hash::of(&stream)],
    };
    assert!(FolderInfo::from_parts(m.encode(), vec![stream.into()]).is_err());
    let stream = raw(&[file("a", 1, h)]);
    for (entries, total) in [(2, 1), (1, 2)] {
        let m = FolderManifest {
            name: "x".into(),
            entries,
            total_size: total,
            entry_bytes: stream.len() as u64,
            blobs: vec![Hash::of(&stream)],
        };
        assert!(FolderInfo::from_parts(m.encode(), vec![stream.clone()]).is_err(), "{entries} {total}");
    }
}

#[test]
fn hostile_manifests_are_refused_before_any_entry_is_fetched() {
    let good = FolderManifest::parse(&fixture("demo.folder")).unwrap();
    let m = |f: &dyn Fn(&mut FolderManifest)| {
        let mut m = good.clone();
        f(&mut m);
        FolderManifest::parse(&m.encode())
    };
    assert!(m(&|m| m.name = "..".into()).is_err());
    assert!(m(&|m| m.name = "a/b".into()).is_err());
    assert!(m(&|m| m.entries = MAX_ENTRIES + 1).is_err());
    assert!(m(&|m| m.entry_bytes = 1).is_err(), "too few bytes for 3 entries");
    assert!(m(&|m| m.entry_bytes = PIECE_SIZE + 1).is_err(), "two blobs needed, one listed");
    assert!(
        m(&|m| {
            m.entries = 1;
            m.entry_bytes = 10_000;
        })
        .is_err(),
        "more bytes than one entry can take"
    );
    let blob = fixture("demo.folder");
    for cut in 0..blob.len() {
        assert!(FolderManifest::parse(&blob[..cut]).is_err(), "cut at {cut}");
    }
    let mut long = blob.clone();
    long.push(0);
    assert_eq!(FolderManifest::parse(&long), Err(ManifestError::Trailing(1)));
    assert!(FolderManifest::is_folder(&blob) && !FolderManifest::is_folder(&fixture("hello.manifest")));
}

proptest::proptest! {
    #[test]
    fn any_bytes_parse_without_panicking(blob in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
        let _ = FolderManifest::parse(&blob);
        let mut m = b"PEXD\x01\x00\x01a".to_vec();
        m.extend_from_slice(&blob);
        let _ = FolderManifest::parse(&m);
        let stream = Bytes::from(blob);
        let fm = FolderManifest { name: "f".into(), entries: 1, total_size: 0, entry_bytes: stream.len() as u64, blobs: vec![Hash::of(&stream)] };
        let _ = FolderInfo::from_parts(fm.encode(), vec![stream]);
    }
}
