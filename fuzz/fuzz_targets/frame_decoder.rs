//! Feeds arbitrary bytes to the wire codec as if they arrived on a socket.
//!
//! Decodes frames off one buffer until the codec wants more bytes (`Ok(None)`)
//! or refuses them (`Err`). Every decoded frame must re-encode to exactly the
//! bytes it was decoded from, and decoding that encoding must give the same frame.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pex::wire::{decode, frame_size, Frame};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        // Where this frame starts in `data`; `buf` holds exactly `data[start..]`.
        let start = data.len() - buf.len();
        match decode(&mut buf) {
            Ok(None) => {
                // Waiting for more bytes consumes nothing.
                assert_eq!(&buf[..], &data[start..], "Ok(None) consumed bytes");
                break;
            }
            Err(_) => break,
            Ok(Some(frame)) => {
                let end = data.len() - buf.len();
                assert_eq!(frame_size(&data[start..]), Ok(Some(end - start)), "frame_size disagrees with decode");
                check_round_trip(&frame, &data[start..end]);
            }
        }
    }
});

fn check_round_trip(frame: &Frame, original: &[u8]) {
    let encoded = frame.to_bytes();
    assert_eq!(&encoded[..], original, "{} re-encodes to different bytes", frame.name());
    let mut again = BytesMut::from(&encoded[..]);
    let decoded = decode(&mut again);
    assert_eq!(decoded.as_ref(), Ok(&Some(frame.clone())), "{} does not round-trip", frame.name());
    assert!(again.is_empty(), "re-decoding left {} bytes", again.len());
}
