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
        assert!(is_complete(9, &[0xff, 0x80]));
        assert!(!is_complete(9, &[0xff, 0x00]));
        let mut b = bitvec![u8, Msb0; 0; 9];
        b.set(8, true);
        assert_eq!(&to_bytes(b)[..], &[0x00, 0x80]);
    }
}
