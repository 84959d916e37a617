//! The codec against golden frames from an independent implementation
//! (fixtures/protocol-vectors.json), the manifest fixture, and arbitrary bytes.

mod common;

use bytes::BytesMut;
use common::hex;
use pex::manifest::{FileInfo, Manifest};
use pex::wire::{decode, Frame};
use pex::Hash;
use proptest::prelude::*;

fn vectors() -> Vec<(String, bool, Vec<u8>)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/protocol-vectors.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (v["name"].as_str().unwrap().to_owned(), v["valid"].as_bool().unwrap(), hex(v["hex"].as_str().unwrap()))
        })
        .collect()
}

#[test]
fn valid_vectors_decode_and_re_encode_byte_for_byte() {
    let valid: Vec<_> = vectors().into_iter().filter(|v| v.1).collect();
    assert!(valid.len() >= 14);
    for (name, _, bytes) in valid {
        let mut buf = BytesMut::from(&bytes[..]);
        let frame =
            decode(&mut buf).unwrap_or_else(|e| panic!("{name}: {e}")).unwrap_or_else(|| panic!("{name}: incomplete"));
        assert!(buf.is_empty(), "{name}: bytes left over");
        assert_eq!(frame.to_bytes()[..], bytes[..], "{name}: re-encoding differs");
    }
}

#[test]
fn invalid_vectors_are_refused() {
    let invalid: Vec<_> = vectors().into_iter().filter(|v| !v.1).collect();
    assert!(invalid.len() >= 7);
    for (name, _, bytes) in invalid {
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(decode(&mut buf).is_err(), "{name} was accepted");
    }
}

#[test]
fn vectors_mean_what_their_notes_say() {
    let v = vectors();
    let get = |n: &str| {
        let bytes = &v.iter().find(|x| x.0 == n).unwrap().2;
        decode(&mut BytesMut::from(&bytes[..])).unwrap().unwrap()
    };
    assert_eq!(get("ask"), Frame::Ask(Hash::of(b"pex")));
    let Frame::Give { hash, data } = get("give") else { panic!() };
    assert_eq!(&data[..], b"hello, swarm\n");
    assert_eq!(hash, Hash::of(&data));
    assert_eq!(get("peers_two"), Frame::Peers(vec!["[::1]:9000".parse().unwrap(), "127.0.0.1:6881".parse().unwrap()]));
    assert_eq!(get("have"), Frame::Have { root: Hash::of(b"pex"), index: 70000 });
    let Frame::Bitfield { bits, .. } = get("bitfield") else { panic!() };
    let held: Vec<usize> = (0..10).filter(|i| bits[i / 8] & (0x80 >> (i % 8)) != 0).collect();
    assert_eq!(held, vec![0, 2, 9]);
    assert!(pex::node::check_bitfield(10, &bits).is_ok());
    assert!(pex::node::check_bitfield(9, &bits).is_err());
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
    let documented = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap();
    assert!(documented.contains(&info.root.to_hex()), "docs/PROTOCOL.md shows the example's root hash");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode(&mut buf) {}
    }

    #[test]
    fn typed_frames_with_random_bodies_never_panic(kind in 0u8..12, body in proptest::collection::vec(any::<u8>(), 0..120)) {
        let mut bytes = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        bytes.push(kind);
        bytes.extend_from_slice(&body);
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(frame)) = decode(&mut buf) {
            prop_assert_eq!(&frame.to_bytes()[..], &bytes[..]);
        }
    }

    #[test]
    fn manifests_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Manifest::parse(&bytes);
    }
}
