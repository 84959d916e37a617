//! The distinct piece hashes (blobs) of a file and where each lands: identical
//! pieces are one blob, asked for once and written to every slot that has it.

use crate::manifest::FileInfo;
use bitvec::prelude::*;
use std::collections::HashMap;

/// Blobs of one file, indexed `0..len`.
pub(super) struct Blobs {
    /// Hash of each blob.
    pub hashes: Vec<crate::hash::Hash>,
    /// Blob index by hash.
    pub by_hash: HashMap<crate::hash::Hash, u32>,
    /// Blob of each piece.
    pub blob_of: Vec<u32>,
    /// Pieces of each blob: almost always one.
    pub pieces_of: Vec<Vec<u32>>,
    /// The exact length every copy of each blob must have (its slots' length).
    pub len_of: Vec<usize>,
}

impl Blobs {
    /// Groups a file's pieces by hash. Fails, naming the piece, when one hash
    /// is listed for slots of different lengths: no blob can fill both.
    pub fn new(info: &FileInfo) -> Result<Blobs, (u64, String)> {
        let n = info.pieces.len();
        let mut b = Blobs {
            hashes: Vec::new(),
            by_hash: HashMap::new(),
            blob_of: Vec::with_capacity(n),
            pieces_of: Vec::new(),
            len_of: Vec::new(),
        };
        for (i, h) in info.pieces.iter().enumerate() {
            let len = info.manifest.piece_len(i as u64);
            let id = *b.by_hash.entry(*h).or_insert_with(|| {
                b.hashes.push(*h);
                b.pieces_of.push(Vec::new());
                b.len_of.push(len);
                (b.hashes.len() - 1) as u32
            });
            if b.len_of[id as usize] != len {
                let first = b.pieces_of[id as usize][0];
                let why = format!(
                    "it has the hash of piece {first}, but their slots are {len} and {} bytes long",
                    b.len_of[id as usize]
                );
                return Err((i as u64, why));
            }
            b.blob_of.push(id);
            b.pieces_of[id as usize].push(i as u32);
        }
        Ok(b)
    }

    /// Number of distinct blobs.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Piece-level bits (BITFIELD order) to blob-level bits.
    pub fn blob_bits(&self, bits: &BitSlice<u8, Msb0>) -> BitVec {
        let mut out = bitvec![0; self.hashes.len()];
        for i in bits.iter_ones() {
            if let Some(b) = self.blob_of.get(i) {
                out.set(*b as usize, true);
            }
        }
        out
    }

    /// Blobs all of whose pieces are set in `held` (piece-level bits).
    pub fn held_blobs(&self, held: &BitSlice<u8, Msb0>) -> BitVec {
        let mut out = bitvec![0; self.hashes.len()];
        for (b, pieces) in self.pieces_of.iter().enumerate() {
            if pieces.iter().all(|p| held[*p as usize]) {
                out.set(b, true);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;
    use crate::manifest::PIECE_SIZE;

    #[test]
    fn identical_pieces_are_one_blob_and_lengths_must_agree() {
        let (a, b) = (Hash([1; 32]), Hash([2; 32]));
        let info = FileInfo::new("f", 3 * PIECE_SIZE, vec![a, b, a]);
        let blobs = Blobs::new(&info).unwrap();
        assert_eq!(blobs.len(), 2);
        assert_eq!(blobs.pieces_of[0], vec![0, 2]);
        assert_eq!(blobs.len_of, vec![PIECE_SIZE as usize; 2]);
        // The same hash for a full slot and a short last slot cannot be satisfied.
        let info = FileInfo::new("f", 2 * PIECE_SIZE + 5, vec![a, b, a]);
        assert_eq!(Blobs::new(&info).err().map(|e| e.0), Some(2));
    }
}
