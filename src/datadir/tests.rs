//! The datadir rules, each pinned by a test.
use super::*;

#[test]
fn a_seed_record_matches_only_the_same_size_mtime_and_inode() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::write(&a, b"12345").unwrap();
    fs::write(&b, b"12345").unwrap();
    let meta = fs::metadata(&a).unwrap();
    let rec = SeedRecord::of(a.clone(), &meta);
    assert!(rec.matches(&meta));
    let other_size = SeedRecord { size: 6, ..rec.clone() };
    let other_mtime = SeedRecord { mtime: Some(SystemTime::UNIX_EPOCH), ..rec.clone() };
    let other_inode = SeedRecord { inode: rec.inode.map(|i| i + 1), ..rec.clone() };
    let no_inode = SeedRecord { inode: None, ..rec.clone() };
    for (what, r) in [("size", other_size), ("mtime", other_mtime), ("inode", other_inode), ("no inode", no_inode)] {
        assert!(!r.matches(&meta), "a record with another {what} matched");
    }
    // Same size and contents, another file (inode): not the same file.
    assert!(!rec.matches(&fs::metadata(&b).unwrap()));
}

#[test]
fn info_and_seed_records_round_trip_and_damage_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let dd = DataDir::open(dir.path()).unwrap();
    let info = FileInfo::new("x", 5, vec![Hash::of(b"hello")]);
    dd.save_info(&info).unwrap();
    let back = dd.load_info(&info.root).unwrap().unwrap();
    assert_eq!(back.pieces, info.pieces);
    let rec = SeedRecord { path: "/tmp/x".into(), size: 5, mtime: Some(SystemTime::UNIX_EPOCH), inode: Some(1) };
    dd.save_seed(&info.root, &rec).unwrap();
    let seeds = dd.seeds();
    assert_eq!(seeds.len(), 1);
    assert_eq!(seeds[0].as_ref().unwrap().0, rec);
    fs::write(dd.seed_path(&info.root), b"{not json").unwrap();
    let err = dd.seeds().pop().unwrap().unwrap_err();
    assert!(err.to_string().contains(&format!("{}.json", info.root)), "{err}");
    fs::write(dd.hashes_path(&info.root), b"short").unwrap();
    assert!(dd.load_info(&info.root).is_err());
}

fn dd() -> (tempfile::TempDir, DataDir) {
    let dir = tempfile::tempdir().unwrap();
    let dd = DataDir::open(dir.path().join("data")).unwrap();
    (dir, dd)
}

fn info(pieces: usize) -> FileInfo {
    let hashes = (0..pieces as u64).map(|i| Hash::of(&i.to_be_bytes())).collect();
    FileInfo::new("f.bin", (pieces as u64 * (1 << 20)).saturating_sub(100), hashes)
}

/// Names of the entries of `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn open_creates_the_layout_and_says_which_directory_it_could_not_create() {
    let (dir, dd) = dd();
    assert_eq!(dd.path(), dir.path().join("data"));
    assert_eq!(listing(dd.path()), ["files", "partial", "seeds"]);
    DataDir::open(dd.path()).unwrap();
    let file = dir.path().join("a-file");
    fs::write(&file, b"").unwrap();
    let err = DataDir::open(&file).unwrap_err();
    assert!(err.to_string().contains(&file.display().to_string()), "{err}");
}

#[test]
fn info_records_round_trip_in_the_documented_files() {
    let (_dir, dd) = dd();
    for pieces in [0, 1, 32_768, 32_769] {
        let info = info(pieces);
        assert!(dd.load_info(&info.root).unwrap().is_none(), "{pieces} pieces: not saved yet");
        dd.save_info(&info).unwrap();
        let files = dd.path().join("files");
        assert_eq!(fs::read(files.join(format!("{}.manifest", info.root))).unwrap(), info.manifest_blob);
        let lists: Vec<u8> = info.lists.concat();
        assert_eq!(fs::read(files.join(format!("{}.hashes", info.root))).unwrap(), lists);
        let back = dd.load_info(&info.root).unwrap().unwrap();
        assert_eq!(back.root, info.root);
        assert_eq!(back.manifest, info.manifest);
        assert_eq!(back.manifest_blob, info.manifest_blob);
        assert_eq!(back.lists, info.lists, "{pieces} pieces");
        assert_eq!(back.pieces, info.pieces, "{pieces} pieces");
    }
}

#[test]
fn a_damaged_info_record_is_refused_naming_its_file() {
    let (_dir, dd) = dd();
    let info = info(32_769);
    let (mpath, hpath) = (dd.manifest_path(&info.root), dd.hashes_path(&info.root));
    let hashes = fs::read({
        dd.save_info(&info).unwrap();
        &hpath
    })
    .unwrap();
    let damage = |path: &Path, bytes: &[u8], want: &Path, what: &str| {
        dd.save_info(&info).unwrap();
        fs::write(path, bytes).unwrap();
        let err = dd.load_info(&info.root).expect_err(what);
        assert_eq!(err.path, want, "{what}: {err}");
        assert!(err.to_string().starts_with(&want.display().to_string()), "{what}: {err}");
    };
    let other = self::info(1);
    damage(&mpath, &other.manifest_blob, &mpath, "another file's manifest");
    let mut flipped = info.manifest_blob.to_vec();
    flipped[30] ^= 1;
    damage(&mpath, &flipped, &mpath, "a manifest with a byte changed");
    damage(&hpath, &hashes[..hashes.len() - 32], &hpath, "a piece hash missing");
    damage(&hpath, &hashes[..hashes.len() - 1], &hpath, "a byte missing");
    damage(&hpath, &[&hashes[..], &[0; 32]].concat(), &hpath, "a piece hash too many");
    damage(&hpath, &hashes[..32 * 32_768], &hpath, "a whole list missing");
    damage(&hpath, &[&hashes[..], &hashes[..32 * 32_768]].concat(), &hpath, "a whole list too many");
    damage(&hpath, &[], &hpath, "no hashes");
    let mut changed = hashes.clone();
    changed[5] ^= 0x80;
    damage(&hpath, &changed, &hpath, "a piece hash changed in the first list");
    let mut changed = hashes.clone();
    *changed.last_mut().unwrap() ^= 1;
    damage(&hpath, &changed, &hpath, "a piece hash changed in the last list");

    dd.save_info(&info).unwrap();
    fs::remove_file(&hpath).unwrap();
    assert_eq!(dd.load_info(&info.root).unwrap_err().path, hpath, "hashes missing");
    fs::remove_file(&mpath).unwrap();
    fs::create_dir(&mpath).unwrap();
    assert_eq!(dd.load_info(&info.root).unwrap_err().path, mpath, "manifest unreadable");
}

#[test]
fn seed_records_round_trip_and_are_replaced_and_removed() {
    let (_dir, dd) = dd();
    let info = info(3);
    dd.save_info(&info).unwrap();
    let when = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789);
    for rec in [
        SeedRecord { path: "/srv/f.bin".into(), size: 3 << 20, mtime: Some(when), inode: Some(7) },
        SeedRecord { path: "/srv/é \"q\".bin".into(), size: 0, mtime: None, inode: None },
    ] {
        dd.save_seed(&info.root, &rec).unwrap();
        assert!(dd.path().join("seeds").join(format!("{}.json", info.root)).is_file());
        let seeds = dd.seeds();
        assert_eq!(seeds.len(), 1);
        let (back, back_info) = seeds[0].as_ref().unwrap();
        assert_eq!(*back, rec);
        assert_eq!(back_info.root, info.root);
        assert_eq!(back_info.pieces, info.pieces);
    }
    dd.remove_seed(&info.root).unwrap();
    assert!(dd.seeds().is_empty());
    assert_eq!(listing(&dd.path().join("seeds")), Vec::<String>::new());
    dd.remove_seed(&info.root).unwrap();
    dd.remove_seed(&Hash::of(b"never seeded")).unwrap();
    // A removal that fails for another reason than absence is an error.
    fs::create_dir_all(dd.seed_path(&info.root).join("x")).unwrap();
    assert!(dd.remove_seed(&info.root).is_err());
}

#[test]
fn seeds_lists_every_record_and_names_each_damaged_one_without_hiding_the_others() {
    let (_dir, dd) = dd();
    let good: Vec<FileInfo> = (1..=3).map(info).collect();
    for (i, info) in good.iter().enumerate() {
        dd.save_info(info).unwrap();
        let rec = SeedRecord { path: format!("/srv/{i}").into(), size: i as u64, mtime: None, inode: None };
        dd.save_seed(&info.root, &rec).unwrap();
    }
    let seeds_dir = dd.path().join("seeds");
    // Not JSON.
    let broken = info(4);
    dd.save_info(&broken).unwrap();
    let broken_json = dd.seed_path(&broken.root);
    fs::write(&broken_json, b"{not json").unwrap();
    // A name that is not a root hash.
    let not_root = seeds_dir.join("not-a-root.json");
    fs::write(&not_root, br#"{"path":"/srv/x","size":1,"mtime":null}"#).unwrap();
    // A good record whose manifest is missing.
    let orphan = seeds_dir.join(format!("{}.json", Hash::of(b"orphan")));
    fs::write(&orphan, br#"{"path":"/srv/x","size":1,"mtime":null}"#).unwrap();
    // A good record whose piece hashes are damaged: the hashes file is named.
    let damaged = info(5);
    dd.save_info(&damaged).unwrap();
    dd.save_seed(&damaged.root, &SeedRecord { path: "/srv/d".into(), size: 5, mtime: None, inode: None }).unwrap();
    fs::write(dd.hashes_path(&damaged.root), b"short").unwrap();
    // Neither records nor damage: other files, and a temporary file left by a crash.
    fs::write(seeds_dir.join("notes.txt"), b"hello").unwrap();
    fs::write(seeds_dir.join(format!(".{}.json.1.2.tmp", good[0].root)), b"{").unwrap();

    let all = dd.seeds();
    let mut roots: Vec<Hash> = all.iter().filter_map(|r| r.as_ref().ok()).map(|(_, i)| i.root).collect();
    roots.sort();
    let mut want: Vec<Hash> = good.iter().map(|i| i.root).collect();
    want.sort();
    assert_eq!(roots, want, "every good record is listed");
    let mut errors: Vec<PathBuf> = all.iter().filter_map(|r| r.as_ref().err()).map(|e| e.path.clone()).collect();
    errors.sort();
    let mut want_errors = vec![broken_json, not_root, orphan, dd.hashes_path(&damaged.root)];
    want_errors.sort();
    assert_eq!(errors, want_errors, "each damaged record is reported by its file");
    for e in all.iter().filter_map(|r| r.as_ref().err()) {
        assert!(e.to_string().starts_with(&e.path.display().to_string()), "{e}");
    }
    assert_eq!(all.len(), 7);

    // No seeds directory at all: nothing to serve.
    fs::remove_dir_all(&seeds_dir).unwrap();
    assert!(dd.seeds().is_empty());
}

#[test]
fn partial_records_round_trip_and_are_removed() {
    let (_dir, dd) = dd();
    let root = Hash::of(b"partial");
    assert!(dd.load_partial(&root).unwrap().is_none());
    let part = Path::new("/home/u/f.bin.part");
    dd.save_partial(&root, part, None).unwrap();
    let path = dd.path().join("partial").join(format!("{root}.json"));
    assert!(path.is_file());
    let rec = dd.load_partial(&root).unwrap().unwrap();
    assert_eq!(rec, PartialRecord { part: part.to_owned(), held: String::new() });
    assert_eq!(rec.claimed(10), None, "nothing flushed yet");
    dd.save_partial(&root, part, Some(&[0xa0, 0x40])).unwrap();
    let rec = dd.load_partial(&root).unwrap().unwrap();
    assert_eq!(rec, PartialRecord { part: part.to_owned(), held: "a040".into() });
    assert_eq!(rec.claimed(10), Some(vec![0xa0, 0x40]));
    for bits in [vec![0x00], vec![0xff; 3], (0..=255).collect::<Vec<u8>>()] {
        dd.save_partial(&root, part, Some(&bits)).unwrap();
        let rec = dd.load_partial(&root).unwrap().unwrap();
        assert_eq!(rec.claimed(bits.len() * 8), Some(bits));
    }
    // Another root's record is another file.
    assert!(dd.load_partial(&Hash::of(b"other")).unwrap().is_none());
    // A record written without `held` (before the first flush) reads as empty.
    fs::write(&path, br#"{"part":"/x.part"}"#).unwrap();
    assert_eq!(dd.load_partial(&root).unwrap().unwrap().held, "");
    // Damage is named with the file.
    fs::write(&path, b"{\"part\":").unwrap();
    let err = dd.load_partial(&root).unwrap_err();
    assert_eq!(err.path, path);
    assert!(err.to_string().starts_with(&path.display().to_string()), "{err}");
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    assert_eq!(dd.load_partial(&root).unwrap_err().path, path, "unreadable");
    fs::remove_dir(&path).unwrap();

    dd.save_partial(&root, part, None).unwrap();
    dd.remove_partial(&root).unwrap();
    assert!(dd.load_partial(&root).unwrap().is_none());
    assert!(!path.exists());
    dd.remove_partial(&root).unwrap();
    fs::create_dir_all(path.join("x")).unwrap();
    assert!(dd.remove_partial(&root).is_err(), "a failure other than absence");
}

#[test]
fn claimed_is_the_held_hex_only_if_it_fits_the_piece_count() {
    let rec = |held: &str| PartialRecord { part: "/x.part".into(), held: held.into() };
    // Empty: nothing flushed, whatever the piece count.
    for pieces in [0, 1, 8, 9] {
        assert_eq!(rec("").claimed(pieces), None, "empty for {pieces} pieces");
    }
    // ⌈pieces / 8⌉ bytes.
    for pieces in 9..=16 {
        assert_eq!(rec("a040").claimed(pieces), Some(vec![0xa0, 0x40]), "{pieces} pieces");
    }
    for pieces in [0, 1, 8, 17, 24, 1000] {
        assert_eq!(rec("a040").claimed(pieces), None, "2 bytes for {pieces} pieces");
    }
    assert_eq!(rec("ff").claimed(1), Some(vec![0xff]));
    assert_eq!(rec("00ff7f80").claimed(32), Some(vec![0x00, 0xff, 0x7f, 0x80]));
    assert_eq!(rec("A0").claimed(3), Some(vec![0xa0]), "hex in upper case");
    // Odd length, and anything that is not hex digits.
    for held in ["a", "a04", "a0400", "zz", "a0g0", "0x", " a", "a ", "-1", "+f", "+f00", "é", "aé0", "a\u{0}"] {
        for pieces in [1, 8, 9, 16, 17, 24] {
            assert_eq!(rec(held).claimed(pieces), None, "{held:?} for {pieces} pieces");
        }
    }
}

#[test]
fn write_atomic_writes_and_replaces_leaving_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record.json");
    write_atomic(&path, b"first").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"first");
    write_atomic(&path, b"second, longer").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"second, longer");
    write_atomic(&path, b"").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"");
    assert_eq!(listing(dir.path()), ["record.json"]);

    // A write that fails leaves nothing behind: no directory …
    let missing = dir.path().join("missing").join("record.json");
    assert!(write_atomic(&missing, b"x").is_err());
    assert!(!missing.exists());
    // … or a directory in the way, found only at the rename.
    let blocked = dir.path().join("blocked");
    fs::create_dir_all(blocked.join("inside")).unwrap();
    assert!(write_atomic(&blocked, b"x").is_err());
    assert!(blocked.join("inside").is_dir());
    assert_eq!(listing(dir.path()), ["blocked", "record.json"]);
}

#[test]
fn a_reader_sees_the_old_contents_or_the_new_never_a_mix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record");
    let len = 256 << 10;
    write_atomic(&path, &vec![b'a'; len]).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let reads = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let got = fs::read(&path).unwrap();
                assert_eq!(got.len(), len, "read {} bytes", got.len());
                assert!(got.iter().all(|&b| b == got[0]), "a mix of two writes");
                reads += 1;
            }
            reads
        });
        for i in 0..40 {
            write_atomic(&path, &vec![b'a' + (i % 2) as u8; len]).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap()
    });
    assert!(reads > 0);
    assert_eq!(listing(dir.path()), ["record"]);
}

#[test]
fn default_path_honours_xdg_data_home_then_home() {
    // The environment is process-wide: this is the only test that touches
    // these variables, and it puts them back however it ends.
    struct Restore(Vec<(&'static str, Option<std::ffi::OsString>)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            for (key, value) in &self.0 {
                match value {
                    Some(v) => std::env::set_var(key, v),
                    None => std::env::remove_var(key),
                }
            }
        }
    }
    let _restore = Restore(["XDG_DATA_HOME", "HOME"].map(|k| (k, std::env::var_os(k))).to_vec());
    let set = |xdg: Option<&str>, home: Option<&str>| {
        for (key, value) in [("XDG_DATA_HOME", xdg), ("HOME", home)] {
            match value {
                Some(v) => std::env::set_var(key, v),
                None => std::env::remove_var(key),
            }
        }
        DataDir::default_path()
    };
    assert_eq!(set(Some("/x/data"), Some("/home/u")), Path::new("/x/data/pex"));
    assert_eq!(set(Some("/x/data"), None), Path::new("/x/data/pex"));
    assert_eq!(set(None, Some("/home/u")), Path::new("/home/u/.local/share/pex"));
    // XDG: "If $XDG_DATA_HOME is either not set or empty", the default applies.
    assert_eq!(set(Some(""), Some("/home/u")), Path::new("/home/u/.local/share/pex"));
    // Neither: a directory relative to the current one (not documented).
    assert_eq!(set(None, None), Path::new(".pex"));
}
