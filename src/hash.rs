//! Content addresses and node identities: 32-byte values with a hex form for humans.

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// A SHA-256 digest: the address of a blob (piece, hash list or manifest).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

/// A node's random 32-byte identity, sent in HELLO to spot duplicates and self-connections.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub [u8; 32]);

/// Why a string is not a valid 64-digit hex hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// Wrong number of characters.
    #[error("expected 64 hex digits, got {0} characters")]
    Length(usize),
    /// A character that is not a hex digit.
    #[error("invalid hex digit {0:?} at position {1}")]
    Digit(char, usize),
}

impl Hash {
    /// Length of a hash on the wire.
    pub const LEN: usize = 32;

    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Hash {
        Hash(Sha256::digest(data).into())
    }

    /// Reads a hash from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Hash> {
        bytes.try_into().ok().map(Hash)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits: the form users see and type.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl NodeId {
    /// A fresh random id for this run of a node.
    pub fn random() -> NodeId {
        let mut id = [0u8; 32];
        id.iter_mut().for_each(|b| *b = fastrand::u8(..));
        NodeId(id)
    }

    /// The first 8 hex digits, enough to tell peers apart in logs.
    pub fn short(&self) -> String {
        hex(&self.0[..4])
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

/// Lowercase hex of any byte string.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn parse_hex32(s: &str) -> Result<[u8; 32], HexError> {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() != 64 {
        return Err(HexError::Length(chars.len()));
    }
    let mut out = [0u8; 32];
    for (i, c) in chars.iter().enumerate() {
        let v = c.to_digit(16).ok_or(HexError::Digit(*c, i))? as u8;
        out[i / 2] |= if i % 2 == 0 { v << 4 } else { v };
    }
    Ok(out)
}

impl FromStr for Hash {
    type Err = HexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s.trim()).map(Hash)
    }
}

impl FromStr for NodeId {
    type Err = HexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s.trim()).map(NodeId)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_known_digest() {
        let h = Hash::of(b"pex");
        assert_eq!(h.to_hex(), "262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a");
        assert_eq!(h.to_hex().parse::<Hash>().unwrap(), h);
        assert_eq!(h.to_hex().to_uppercase().parse::<Hash>().unwrap(), h);
    }

    #[test]
    fn bad_hex_is_refused_with_reason() {
        assert_eq!("abc".parse::<Hash>(), Err(HexError::Length(3)));
        let mut s = "0".repeat(63);
        s.push('g');
        assert_eq!(s.parse::<Hash>(), Err(HexError::Digit('g', 63)));
    }
}
