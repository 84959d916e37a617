//! Feeds arbitrary bytes to the manifest parser, as a fetched root blob would.
//!
//! A manifest that parses must re-encode to exactly the input (the root hash
//! is the hash of those bytes) and parse back to itself; its hash-list parser
//! must not panic on any blob.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pex::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::parse(data) else {
        return;
    };
    let encoded = m.encode();
    assert_eq!(Manifest::parse(&encoded), Ok(m.clone()), "manifest does not round-trip");
    assert_eq!(&encoded[..], data, "manifest re-encodes to different bytes");
    assert_eq!(m.lists.len() as u64, Manifest::lists_for(m.piece_count()));
    if m.lists.is_empty() {
        return;
    }
    // Some splits of the input as list blobs: one chosen by the last byte, and
    // the last 32 bytes (a whole list for a file of one piece).
    let split = data[data.len() - 1] as usize % (data.len() + 1);
    let tails = [&data[split..], &data[data.len() - 32..], &data[..]];
    for index in 0..m.lists.len().min(4) {
        let expected = m.list_len(index);
        assert!(expected >= 1 && expected as u64 <= pex::manifest::HASHES_PER_LIST);
        for rest in tails {
            if let Ok(hashes) = m.parse_list(index, rest) {
                assert_eq!(hashes.len(), expected, "list {index} parsed to the wrong count");
            }
        }
    }
    let last = m.piece_count() - 1;
    assert!(m.piece_len(last) >= 1);
});
