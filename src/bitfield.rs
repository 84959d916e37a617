//! Piece bitfields as BITFIELD carries them: one bit per piece, most
//! significant bit first, spare bits of the last byte zero.

use bitvec::prelude::*;
use bytes::Bytes;

/// One bit per piece, most significant bit first: the wire order of BITFIELD.
pub type Bits = BitVec<u8, Msb0>;

/// Checks a BITFIELD body against a file of `pieces` pieces.
pub fn check(pieces: usize, bits: &[u8]) -> Result<(), String> {
    if bits.len() != pieces.div_ceil(8) {
        return Err(format!("BITFIELD of {} bytes for a {pieces}-piece file", bits.len()));
    }
    let spare = bits.len() * 8 - pieces;
    if spare > 0 && bits[bits.len() - 1] & ((1u8 << spare) - 1) != 0 {
        return Err("BITFIELD has spare bits set".into());
    }
    Ok(())
}

/// Checks a BITFIELD range (bits for pieces `first..`) against a file of
/// `pieces` pieces: it starts inside the file, has no whole byte past its
/// last piece, and its bits past the last piece are zero.
pub fn check_range(pieces: usize, first: u32, bits: &[u8]) -> Result<(), String> {
    let first = first as usize;
    if bits.is_empty() {
        return Ok(());
    }
    if first >= pieces {
        return Err(format!("BITFIELD from piece {first} of a {pieces}-piece file"));
    }
    let span = pieces - first;
    if bits.len() > span.div_ceil(8) {
        return Err(format!("BITFIELD of {} bytes from piece {first} of a {pieces}-piece file", bits.len()));
    }
    let covered = bits.len() * 8;
    if covered > span {
        let spare = covered - span;
        if bits[bits.len() - 1] & ((1u8 << spare) - 1) != 0 {
            return Err("BITFIELD has spare bits set".into());
        }
    }
    Ok(())
}

/// The piece indices a BITFIELD range marks as held.
pub fn set_indices(first: u32, bits: &[u8]) -> impl Iterator<Item = u32> + '_ {
    BitSlice::<u8, Msb0>::from_slice(bits).iter_ones().filter_map(move |i| first.checked_add(i as u32))
}

/// Whether a checked BITFIELD body claims every one of `pieces` pieces.
pub fn is_complete(pieces: usize, bits: &[u8]) -> bool {
    let bits = BitSlice::<u8, Msb0>::from_slice(bits);
    bits.len() >= pieces && bits[..pieces].all()
}

/// A bitfield as BITFIELD bytes, spare bits zero.
pub fn to_bytes(mut bits: Bits) -> Bytes {
    bits.set_uninitialized(false);
    Bytes::from(bits.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_spare_bits_are_checked() {
        assert!(check(9, &[0xff, 0x80]).is_ok());
        assert!(check(9, &[0xff]).is_err());
        assert!(check(9, &[0xff, 0x80, 0]).is_err());
        assert!(check(9, &[0xff, 0x40]).is_err(), "a spare bit is set");
        assert!(check(0, &[]).is_ok());
        assert!(check_range(20, 8, &[0xff, 0xf0]).is_ok());
        assert!(check_range(20, 8, &[0xff, 0xf8]).is_err(), "bit for piece 20 set");
        assert!(check_range(20, 8, &[0xff, 0xf0, 0]).is_err(), "a whole byte past the end");
        assert!(check_range(20, 20, &[0x80]).is_err(), "starts past the end");
        assert!(check_range(20, 20, &[]).is_ok(), "an empty range says nothing");
        assert_eq!(set_indices(8, &[0x81, 0x40]).collect::<Vec<_>>(), vec![8, 15, 17]);
        assert!(is_complete(9, &[0xff, 0x80]));
        assert!(!is_complete(9, &[0xff, 0x00]));
        let mut b = bitvec![u8, Msb0; 0; 9];
        b.set(8, true);
        assert_eq!(&to_bytes(b)[..], &[0x00, 0x80]);
    }

    /// A body for `pieces` pieces with exactly the pieces in `held` set.
    fn body(pieces: usize, held: impl IntoIterator<Item = usize>) -> Vec<u8> {
        let mut b = vec![0u8; pieces.div_ceil(8)];
        for i in held {
            b[i / 8] |= 0x80 >> (i % 8);
        }
        b
    }

    const COUNTS: [usize; 10] = [0, 1, 2, 7, 8, 9, 15, 16, 17, 100];

    #[test]
    fn check_wants_exactly_ceil_pieces_over_8_bytes() {
        // (pieces, bytes)
        for (pieces, len) in [(0, 0), (1, 1), (7, 1), (8, 1), (9, 2), (15, 2), (16, 2), (17, 3), (100, 13)] {
            assert!(check(pieces, &vec![0; len]).is_ok(), "{pieces} pieces, {len} bytes");
            assert!(check(pieces, &body(pieces, 0..pieces)).is_ok(), "{pieces} pieces, all held");
            assert!(check(pieces, &vec![0; len + 1]).is_err(), "{pieces} pieces, {} bytes", len + 1);
            if len > 0 {
                assert!(check(pieces, &vec![0; len - 1]).is_err(), "{pieces} pieces, {} bytes", len - 1);
            }
        }
    }

    #[test]
    fn check_refuses_each_spare_bit_and_accepts_each_piece_bit() {
        for pieces in COUNTS {
            let len = pieces.div_ceil(8);
            for i in 0..len * 8 {
                let one = body(len * 8, [i]);
                assert_eq!(check(pieces, &one).is_ok(), i < pieces, "{pieces} pieces, bit {i} alone");
                let mut all = body(pieces, 0..pieces);
                all[i / 8] |= 0x80 >> (i % 8);
                assert_eq!(check(pieces, &all).is_ok(), i < pieces, "{pieces} pieces, all and bit {i}");
            }
        }
    }

    #[test]
    fn is_complete_wants_every_piece_bit() {
        for pieces in COUNTS {
            assert!(is_complete(pieces, &body(pieces, 0..pieces)), "{pieces} pieces, all held");
            for missing in 0..pieces {
                let bits = body(pieces, (0..pieces).filter(|&i| i != missing));
                assert!(!is_complete(pieces, &bits), "{pieces} pieces, {missing} missing");
            }
            if pieces > 0 {
                assert!(!is_complete(pieces, &body(pieces, [])), "{pieces} pieces, none held");
            }
        }
        // A body too short for the file claims less than every piece.
        assert!(!is_complete(9, &[0xff]));
        assert!(!is_complete(1, &[]));
    }

    #[test]
    fn to_bytes_writes_msb_first_with_spare_bits_clear() {
        for pieces in COUNTS {
            for held in (0..pieces).map(|i| vec![i]).chain([(0..pieces).collect(), vec![]]) {
                let mut bits = bitvec![u8, Msb0; 0; pieces];
                held.iter().for_each(|&i| bits.set(i, true));
                let bytes = to_bytes(bits);
                assert_eq!(&bytes[..], &body(pieces, held.iter().copied())[..], "{pieces} pieces, {held:?}");
                assert!(check(pieces, &bytes).is_ok());
            }
        }
        // Bits cut from a longer vector keep their old spare bits in memory: cleared on the way out.
        for pieces in [1, 7, 9, 15, 17] {
            let mut bits = Bits::from_vec(vec![0xff; 3]);
            bits.truncate(pieces);
            let bytes = to_bytes(bits);
            assert_eq!(&bytes[..], &body(pieces, 0..pieces)[..], "{pieces} pieces cut from 24 set bits");
            assert!(check(pieces, &bytes).is_ok());
        }
    }
}
