//! The manifest format of docs/PROTOCOL.md section 6 (unchanged by v2): its
//! limits with manifests built here field by field, the fixture of the
//! worked example, and property tests against a parser written from the
//! section.

use crate::common;
use crate::props::arb_text;
use crate::*;
use pex::manifest::{FileInfo, Manifest, ManifestError};
use pex::Hash;
use proptest::collection::vec;
use proptest::sample::Index;

/// A manifest laid out field by field as the table of section 6 gives it.
fn raw_manifest(size: u64, name: &[u8], count: u32, hashes: &[[u8; 32]]) -> Vec<u8> {
    let mut v = b"PEXM".to_vec();
    v.push(1);
    v.extend_from_slice(&1_048_576u32.to_be_bytes());
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&(name.len() as u16).to_be_bytes());
    v.extend_from_slice(name);
    v.extend_from_slice(&count.to_be_bytes());
    for h in hashes {
        v.extend_from_slice(h);
    }
    v
}

/// `c = ⌈⌈size / 2^20⌉ / 32768⌉` (section 6), with the piece count.
fn spec_pieces_and_lists(size: u64) -> (u64, u64) {
    let pieces = size / SPEC_PIECE + u64::from(size % SPEC_PIECE != 0);
    (pieces, pieces / SPEC_PER_LIST + u64::from(pieces % SPEC_PER_LIST != 0))
}

/// Distinct made-up list hashes.
fn fake_hashes(n: usize) -> Vec<[u8; 32]> {
    (0..n as u32).map(|i| Hash::of(&i.to_be_bytes()).0).collect()
}

#[test]
fn manifest_fixture_decodes_and_re_encodes() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/");
    let blob = std::fs::read(format!("{dir}hello.manifest")).unwrap();
    let list = std::fs::read(format!("{dir}hello.list")).unwrap();
    let manifest = Manifest::parse(&blob).unwrap();
    assert_eq!(manifest.name, "hello.txt");
    assert_eq!(manifest.size, 13);
    assert_eq!(manifest.encode()[..], blob[..]);
    assert_eq!(manifest.lists, vec![Hash::of(&list)]);
    let info = FileInfo::new("hello.txt", 13, vec![Hash::of(b"hello, swarm\n")]);
    assert_eq!(info.manifest_blob[..], blob[..], "building the manifest from the file gives the fixture");
    assert!(protocol_doc().contains(&info.root.to_hex()), "docs/PROTOCOL.md shows the example's root hash");
    assert!(protocol_doc().contains(&pex::hash::hex(&blob)[40..]), "and its manifest");
}

#[test]
fn manifest_name_of_255_bytes_is_accepted_and_256_refused() {
    let hashes = fake_hashes(1);
    let names_255 = ["a".repeat(255), format!("{}a", "é".repeat(127)), format!("{}abc", "😀".repeat(63))];
    for name in names_255 {
        assert_eq!(name.len(), SPEC_MAX_NAME);
        let blob = raw_manifest(13, name.as_bytes(), 1, &hashes);
        let m = Manifest::parse(&blob).unwrap_or_else(|e| panic!("255-byte name refused: {e}"));
        assert_eq!(m.name, name);
        assert_eq!(m.encode()[..], blob[..]);
    }
    for name in ["a".repeat(256), "é".repeat(128), "😀".repeat(64), "a".repeat(1000)] {
        let blob = raw_manifest(13, name.as_bytes(), 1, &hashes);
        assert!(
            matches!(Manifest::parse(&blob), Err(ManifestError::BadName(_))),
            "{}-byte name: {:?}",
            name.len(),
            Manifest::parse(&blob)
        );
    }
    // A 1-byte name is the lower limit; an empty one is refused.
    assert!(Manifest::parse(&raw_manifest(13, b"x", 1, &hashes)).is_ok());
    assert!(matches!(Manifest::parse(&raw_manifest(13, b"", 1, &hashes)), Err(ManifestError::BadName(_))));
}

#[test]
fn manifest_names_follow_the_documented_rules() {
    let hashes = fake_hashes(1);
    let refused: &[&[u8]] = &[
        b".",
        b"..",
        b"a/b",
        b"/",
        b"../x",
        b"a\\b",
        b"\\",
        b"\0",
        b"a\nb",
        b"\x1f",
        b"\x7f",
        "\u{80}".as_bytes(),
        "x\u{9f}".as_bytes(),
        &[0xff],
        &[b'a', 0xc3],
        &[0xc0, 0xae],
        &[0xed, 0xa0, 0x80],
    ];
    for name in refused {
        assert!(Manifest::parse(&raw_manifest(1, name, 1, &hashes)).is_err(), "{name:?} accepted");
    }
    let accepted: &[&str] =
        &["...", "a..b", "..a", ".hidden", "a.", " ", "\u{a0}", "\u{2028}", "\u{200b}", "日本語.txt", "😀"];
    for name in accepted {
        let blob = raw_manifest(1, name.as_bytes(), 1, &hashes);
        assert_eq!(Manifest::parse(&blob).map(|m| m.name), Ok(name.to_string()), "{name:?}");
    }
}

#[test]
fn manifest_list_count_follows_the_file_size_at_every_boundary() {
    let per_list_bytes = SPEC_PIECE * SPEC_PER_LIST;
    // (size, lists the spec requires)
    let table = [
        (0, 0),
        (1, 1),
        (SPEC_PIECE, 1),
        (SPEC_PIECE + 1, 1),
        (per_list_bytes - 1, 1),
        (per_list_bytes, 1),
        (per_list_bytes + 1, 2),
        (2 * per_list_bytes, 2),
        (2 * per_list_bytes + 1, 3),
        (1 << 40, 32),
    ];
    for (size, lists) in table {
        assert_eq!(spec_pieces_and_lists(size).1, lists);
        let hashes = fake_hashes(lists as usize + 1);
        let ok = raw_manifest(size, b"f", lists as u32, &hashes[..lists as usize]);
        let m = Manifest::parse(&ok).unwrap_or_else(|e| panic!("size {size} with {lists} lists: {e}"));
        assert_eq!((m.size, m.lists.len()), (size, lists as usize));
        assert_eq!(m.encode()[..], ok[..]);
        // One list more, or one fewer, with the hashes to match: inconsistent.
        let more = raw_manifest(size, b"f", lists as u32 + 1, &hashes);
        assert!(matches!(Manifest::parse(&more), Err(ManifestError::Inconsistent { .. })), "size {size}, +1 list");
        if lists > 0 {
            let fewer = raw_manifest(size, b"f", lists as u32 - 1, &hashes[..lists as usize - 1]);
            assert!(matches!(Manifest::parse(&fewer), Err(ManifestError::Inconsistent { .. })), "size {size}, -1 list");
        }
        // The right count with one hash more or one fewer present.
        assert!(Manifest::parse(&raw_manifest(size, b"f", lists as u32, &hashes)).is_err(), "size {size}, +1 hash");
        if lists > 0 {
            assert!(Manifest::parse(&ok[..ok.len() - 32]).is_err(), "size {size}, -1 hash");
            assert!(Manifest::parse(&ok[..ok.len() - 1]).is_err(), "size {size}, -1 byte");
        }
        assert!(Manifest::parse(&[&ok[..], &[0]].concat()).is_err(), "size {size}, trailing byte");
    }
}

#[test]
fn manifest_of_2_pow_32_minus_1_pieces_is_accepted_and_one_piece_more_refused() {
    // Both need 131,072 lists: only the piece limit tells them apart.
    let most = (u32::MAX as u64) * SPEC_PIECE;
    let (pieces, lists) = spec_pieces_and_lists(most);
    assert_eq!((pieces, lists), (u32::MAX as u64, 131_072));
    let hashes = vec![[7u8; 32]; lists as usize];
    let blob = raw_manifest(most, b"huge", lists as u32, &hashes);
    let m = Manifest::parse(&blob).unwrap_or_else(|e| panic!("2^32-1 pieces refused: {e}"));
    assert_eq!(m.piece_count(), u32::MAX as u64);
    assert_eq!(spec_pieces_and_lists(most + 1), (1 << 32, 131_072));
    let over = raw_manifest(most + 1, b"huge", lists as u32, &hashes);
    assert!(matches!(Manifest::parse(&over), Err(ManifestError::Inconsistent { .. })), "{:?}", Manifest::parse(&over));
    assert!(Manifest::parse(&raw_manifest(u64::MAX, b"huge", lists as u32, &hashes)).is_err());
}

#[test]
fn hash_list_of_exactly_its_length_is_accepted_and_one_hash_more_or_less_refused() {
    let per_list_bytes = SPEC_PIECE * SPEC_PER_LIST;
    // (file size, hashes each list must hold per section 6)
    let table: [(u64, &[u64]); 6] = [
        (1, &[1]),
        (13, &[1]),
        (3 * SPEC_PIECE + 1, &[4]),
        (per_list_bytes, &[32_768]),
        (per_list_bytes + 1, &[32_768, 1]),
        (2 * per_list_bytes + 5 * SPEC_PIECE, &[32_768, 32_768, 5]),
    ];
    for (size, lens) in table {
        let blob = raw_manifest(size, b"f", lens.len() as u32, &fake_hashes(lens.len()));
        let m = Manifest::parse(&blob).unwrap();
        for (k, &n) in lens.iter().enumerate() {
            let n = n as usize;
            let list: Vec<u8> = (0..n + 1).flat_map(|i| Hash::of(&(i as u64).to_be_bytes()).0).collect();
            let parsed = m.parse_list(k, &list[..32 * n]).unwrap_or_else(|e| panic!("size {size} list {k}: {e}"));
            assert_eq!(parsed.len(), n);
            assert_eq!(parsed[n - 1].0[..], list[32 * (n - 1)..32 * n]);
            assert!(m.parse_list(k, &list).is_err(), "size {size} list {k}: one hash more");
            assert!(m.parse_list(k, &list[..32 * (n - 1)]).is_err(), "size {size} list {k}: one hash fewer");
            assert!(m.parse_list(k, &list[..32 * n - 1]).is_err(), "size {size} list {k}: one byte fewer");
            assert!(m.parse_list(k, &list[..32 * n + 1]).is_err(), "size {size} list {k}: one byte more");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn manifests_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Manifest::parse(&bytes);
    }
}

/// Why section 6 refuses a manifest, in the order it lists the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpecRefusal {
    /// Fewer than 19 bytes.
    Short,
    Magic,
    Version,
    PieceSize,
    /// Fewer than n + 4 bytes after the header.
    NameCut,
    Name,
    /// `c` is not the count the size needs, or more than 2^32 − 1 pieces.
    ListCount,
    FewerListBytes,
    MoreListBytes,
}

/// A manifest: name, size and list hashes.
type SpecManifest = (String, u64, Vec<[u8; 32]>);

/// Section 6's rules on names: UTF-8, 1 to 255 bytes, not `.` or `..`, no `/`,
/// `\` or Cc character (U+0000–U+001F, U+007F–U+009F).
fn spec_name(bytes: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(bytes).ok()?;
    let cc = |c: char| c <= '\u{1f}' || ('\u{7f}'..='\u{9f}').contains(&c);
    let ok = !name.is_empty()
        && name.len() <= SPEC_MAX_NAME
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == '\\' || cc(c));
    ok.then(|| name.to_owned())
}

fn spec_parse_manifest(b: &[u8]) -> Result<SpecManifest, SpecRefusal> {
    use SpecRefusal::*;
    if b.len() < 19 {
        return Err(Short);
    }
    if &b[..4] != b"PEXM" {
        return Err(Magic);
    }
    if b[4] != 1 {
        return Err(Version);
    }
    if u32::from_be_bytes(b[5..9].try_into().unwrap()) != 1_048_576 {
        return Err(PieceSize);
    }
    let size = u64::from_be_bytes(b[9..17].try_into().unwrap());
    let n = u16::from_be_bytes([b[17], b[18]]) as usize;
    let after = &b[19..];
    if after.len() < n + 4 {
        return Err(NameCut);
    }
    let name = spec_name(&after[..n]).ok_or(Name)?;
    let c = u32::from_be_bytes(after[n..n + 4].try_into().unwrap()) as u64;
    let (pieces, lists) = spec_pieces_and_lists(size);
    if c != lists || pieces > u32::MAX as u64 {
        return Err(ListCount);
    }
    let hashes = &after[n + 4..];
    match hashes.len().cmp(&(32 * c as usize)) {
        std::cmp::Ordering::Less => Err(FewerListBytes),
        std::cmp::Ordering::Greater => Err(MoreListBytes),
        std::cmp::Ordering::Equal => Ok((name, size, hashes.chunks(32).map(|h| h.try_into().unwrap()).collect())),
    }
}

/// Whether the parser's error is the refusal the spec gives first.
fn same_refusal(e: &ManifestError, r: SpecRefusal) -> bool {
    use SpecRefusal::*;
    match e {
        ManifestError::Truncated => matches!(r, Short | NameCut | FewerListBytes),
        ManifestError::BadMagic => r == Magic,
        ManifestError::BadVersion(_) => r == Version,
        ManifestError::BadPieceSize(_) => r == PieceSize,
        ManifestError::BadName(_) => r == Name,
        ManifestError::Inconsistent { .. } => r == ListCount,
        ManifestError::Trailing(_) => r == MoreListBytes,
        ManifestError::BadList { .. } | ManifestError::BadFolder(_) => false,
    }
}

/// A valid manifest's fields.
#[derive(Debug, Clone)]
struct ManifestFields {
    size: u64,
    name: String,
    lists: Vec<[u8; 32]>,
}

impl ManifestFields {
    fn blob(&self) -> Vec<u8> {
        raw_manifest(self.size, self.name.as_bytes(), self.lists.len() as u32, &self.lists)
    }
}

/// Names section 6 accepts, 1 to 255 bytes, often exactly 255.
fn arb_valid_name() -> impl Strategy<Value = String> {
    let c = prop_oneof![
        6 => proptest::char::range('a', 'z'),
        2 => prop::sample::select(vec!['.', '-', '_', ' ', 'é', '中', '😀', '\u{a0}', '\u{2028}', '\u{10FFFF}']),
        1 => any::<char>().prop_filter("a legal name character", |&c| spec_name(c.to_string().as_bytes()).is_some()),
    ];
    let target = prop_oneof![3 => 1..=SPEC_MAX_NAME, 1 => Just(SPEC_MAX_NAME), 1 => Just(1)];
    (target, vec(c, 0..=SPEC_MAX_NAME)).prop_map(|(target, chars)| {
        let mut s = String::new();
        for c in chars.into_iter().chain(std::iter::repeat('n')) {
            if s.len() == target {
                break;
            }
            if s.len() + c.len_utf8() <= target {
                s.push(c);
            }
        }
        match s.as_str() {
            "." => "n".to_owned(),
            ".." => "n.".to_owned(),
            _ => s,
        }
    })
}

/// Sizes that need at most 64 lists, often right at a piece or list boundary.
fn arb_size() -> impl Strategy<Value = u64> {
    let per_list = SPEC_PIECE * SPEC_PER_LIST;
    prop_oneof![
        Just(0),
        0..=4 * SPEC_PIECE,
        (0u64..=70_000, -1i64..=1).prop_map(|(k, d)| (k * SPEC_PIECE).saturating_add_signed(d)),
        (1u64..=64, -1i64..=1).prop_map(move |(k, d)| (k * per_list).saturating_add_signed(d).min(64 * per_list)),
        0..=64 * per_list,
    ]
}

fn arb_manifest() -> impl Strategy<Value = ManifestFields> {
    (arb_size(), arb_valid_name(), any::<u64>()).prop_map(|(size, name, seed)| {
        let lists = spec_pieces_and_lists(size).1 as usize;
        let bytes = common::data(32 * lists, seed);
        ManifestFields { size, name, lists: bytes.chunks(32).map(|h| h.try_into().unwrap()).collect() }
    })
}

/// One change to a valid manifest blob.
#[derive(Debug, Clone)]
enum ManifestMutation {
    Keep,
    /// One magic byte XORed with a non-zero mask.
    Magic(usize, u8),
    Version(u8),
    PieceSize(u32),
    /// The size field set, list count and hashes unchanged.
    Size(u64),
    /// The size field moved by this much (wrapping).
    SizeBy(i64),
    /// The list count field moved by this much (wrapping), hashes unchanged.
    CountBy(i64),
    /// The list count moved by this much with as many hashes added or removed.
    ListsBy(i64),
    /// The name length field set, the bytes unchanged.
    NameLen(u16),
    /// Other name bytes, the length field following.
    Name(Vec<u8>),
    Trailing(Vec<u8>),
    /// Cut to this many bytes.
    Truncate(Index),
    Flip(Index, u8),
}

fn arb_bad_name() -> impl Strategy<Value = Vec<u8>> {
    let listed: Vec<Vec<u8>> = [
        &b""[..],
        b".",
        b"..",
        b"...",
        b"a..b",
        b"../etc",
        b"a/b",
        b"/",
        b"/etc/passwd",
        b"a\\b",
        b"\\",
        b"\0",
        b"a\0",
        b"\t",
        b"a\nb",
        b"\x1b[31m",
        b"\x1f",
        b"\x7f",
        b" ",
        "\u{80}".as_bytes(),
        "\u{85}".as_bytes(),
        "\u{9f}".as_bytes(),
        "\u{a0}".as_bytes(),
        "\u{2028}".as_bytes(),
        "\u{202e}txt.exe".as_bytes(),
        &[0xff],
        &[b'a', 0xc3],
        &[0xc0, 0xae, 0xc0, 0xae],
        &[0xed, 0xa0, 0x80],
        &[0xf4, 0x90, 0x80, 0x80],
    ]
    .iter()
    .map(|n| n.to_vec())
    .collect();
    let long = |n: usize, s: &str| s.repeat(n / s.len()).into_bytes();
    prop_oneof![
        3 => prop::sample::select(listed),
        1 => prop::sample::select(vec![
            long(254, "a"),
            long(255, "a"),
            long(256, "a"),
            long(257, "a"),
            long(254, "é"),
            long(256, "é"),
            [long(252, "😀"), b"abc".to_vec()].concat(),
            long(256, "😀"),
            [long(254, "a"), b"/".to_vec()].concat(),
            [long(254, "a"), vec![0xc3]].concat(),
            long(65_535, "a"),
        ]),
        2 => arb_text(300).prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..300),
    ]
}

fn arb_manifest_mutation() -> impl Strategy<Value = ManifestMutation> {
    use ManifestMutation::*;
    let per_list = (SPEC_PIECE * SPEC_PER_LIST) as i64;
    let piece = SPEC_PIECE as i64;
    prop_oneof![
        2 => Just(Keep),
        1 => (0usize..4, 1u8..=255).prop_map(|(at, mask)| Magic(at, mask)),
        1 => prop_oneof![Just(0u8), Just(2), Just(255), any::<u8>()].prop_map(Version),
        1 => prop_oneof![
            prop::sample::select(vec![0, 1 << 19, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 1 << 21, u32::MAX]),
            any::<u32>(),
        ]
        .prop_map(PieceSize),
        1 => prop_oneof![any::<u64>(), Just(u64::MAX), Just(u32::MAX as u64 * SPEC_PIECE + 1)].prop_map(Size),
        2 => prop_oneof![
            prop::sample::select(vec![-1, 1, -piece, piece, -per_list, per_list, per_list + 1, -per_list - 1]),
            any::<i64>(),
        ]
        .prop_map(SizeBy),
        1 => prop_oneof![-3i64..=3, any::<u32>().prop_map(i64::from)].prop_map(CountBy),
        2 => prop_oneof![-3i64..=3].prop_map(ListsBy),
        1 => prop_oneof![0u16..=300, any::<u16>()].prop_map(NameLen),
        4 => arb_bad_name().prop_map(Name),
        1 => vec(any::<u8>(), 1..64).prop_map(Trailing),
        1 => any::<Index>().prop_map(Truncate),
        2 => (any::<Index>(), 1u8..=255).prop_map(|(at, mask)| Flip(at, mask)),
    ]
}

fn mutate_manifest(m: &ManifestFields, mutation: &ManifestMutation) -> Vec<u8> {
    use ManifestMutation::*;
    let mut b = m.blob();
    let n = m.name.len();
    let count_at = 19 + n;
    let count = u32::from_be_bytes(b[count_at..count_at + 4].try_into().unwrap());
    match mutation {
        Keep => {}
        Magic(at, mask) => b[*at] ^= mask,
        Version(v) => b[4] = *v,
        PieceSize(p) => b[5..9].copy_from_slice(&p.to_be_bytes()),
        Size(s) => b[9..17].copy_from_slice(&s.to_be_bytes()),
        SizeBy(d) => b[9..17].copy_from_slice(&m.size.wrapping_add_signed(*d).to_be_bytes()),
        CountBy(d) => {
            b[count_at..count_at + 4].copy_from_slice(&((count as i64).wrapping_add(*d) as u32).to_be_bytes())
        }
        ListsBy(d) => {
            let lists = (m.lists.len() as i64 + d).max(0) as usize;
            let hashes: Vec<[u8; 32]> = m.lists.iter().copied().chain(fake_hashes(3)).take(lists).collect();
            b = raw_manifest(m.size, m.name.as_bytes(), lists as u32, &hashes);
        }
        NameLen(len) => b[17..19].copy_from_slice(&len.to_be_bytes()),
        Name(name) => b = raw_manifest(m.size, name, count, &m.lists),
        Trailing(extra) => b.extend_from_slice(extra),
        Truncate(at) => b.truncate(at.index(b.len())),
        Flip(at, mask) => {
            let i = at.index(b.len());
            b[i] ^= mask;
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// `Manifest::parse` never panics, accepts exactly what section 6 accepts,
    /// refuses for the first reason section 6 lists, and an accepted manifest
    /// re-encodes to its input.
    #[test]
    fn mutated_manifests_are_accepted_exactly_when_the_spec_allows(
        fields in arb_manifest(),
        mutation in arb_manifest_mutation(),
    ) {
        let blob = mutate_manifest(&fields, &mutation);
        let spec = spec_parse_manifest(&blob);
        if matches!(mutation, ManifestMutation::Keep) {
            prop_assert!(spec.is_ok(), "the strategy built an invalid manifest: {:?}", spec);
        }
        match (spec, Manifest::parse(&blob)) {
            (Ok((name, size, lists)), Ok(m)) => {
                prop_assert_eq!(&m.name, &name);
                prop_assert_eq!(m.size, size);
                prop_assert!(m.lists.iter().map(|h| h.0).eq(lists), "list hashes differ");
                prop_assert!(m.encode()[..] == blob[..], "an accepted manifest re-encodes differently");
            }
            (Err(why), Err(e)) => prop_assert!(same_refusal(&e, why), "spec refuses for {:?}, parse for {:?}", why, e),
            (spec, got) => prop_assert!(false, "spec: {:?}, parse: {:?}", spec.map(|m| m.0), got.map(|m| m.name)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_after_a_valid_manifest_header_parse_as_the_spec_says(
        fields in arb_manifest(),
        keep in any::<Index>(),
        junk in vec(any::<u8>(), 0..200),
    ) {
        let mut blob = fields.blob();
        blob.truncate(keep.index(blob.len() + 1));
        blob.extend_from_slice(&junk);
        let spec = spec_parse_manifest(&blob);
        match (spec, Manifest::parse(&blob)) {
            (Ok(_), Ok(m)) => prop_assert!(m.encode()[..] == blob[..]),
            (Err(why), Err(e)) => prop_assert!(same_refusal(&e, why), "spec refuses for {:?}, parse for {:?}", why, e),
            (spec, got) => prop_assert!(false, "spec: {:?}, parse: {:?}", spec.map(|m| m.0), got.map(|m| m.name)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// List `k` holds `min(32768, P − 32768·k)` hashes: exactly that many are
    /// accepted, one more or one fewer (or a byte off) refused.
    #[test]
    fn hash_lists_are_accepted_at_exactly_their_documented_length(fields in arb_manifest(), which in any::<Index>()) {
        let m = Manifest::parse(&fields.blob()).unwrap();
        let (pieces, lists) = spec_pieces_and_lists(fields.size);
        prop_assume!(lists > 0);
        let k = which.index(lists as usize);
        let want = (pieces - SPEC_PER_LIST * k as u64).min(SPEC_PER_LIST) as usize * 32;
        let list = common::data(want + 32, k as u64);
        let parsed = m.parse_list(k, &list[..want]);
        prop_assert!(parsed.is_ok(), "list {} of {} bytes refused: {:?}", k, want, parsed.err());
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.len(), want / 32);
        prop_assert!(parsed.iter().zip(list[..want].chunks(32)).all(|(h, c)| h.0[..] == c[..]));
        for len in [want - 32, want - 1, want + 1, want + 32] {
            prop_assert!(m.parse_list(k, &list[..len]).is_err(), "list {} of {} bytes (want {}) accepted", k, len, want);
        }
    }
}
