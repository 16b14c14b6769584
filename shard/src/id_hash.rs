//! The hasher of the shard's maps: their keys are trade ids, user ids and xxh3 hashes, already
//! well spread or dense, so one multiply does what SipHash would, at a tenth of the write
//! path's CPU less.

use std::collections::HashMap;

/// A hasher for keys that are already well spread or dense integers (trade ids, user ids,
/// 128-bit order hashes): one multiply instead of SipHash, which the maps of millions of
/// entries on the write path cannot afford. Keys come from the engine, not from an attacker
/// choosing collisions (order keys are xxh3 hashes of the caller's text).
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Short keys (a currency's three letters) are one word, without the loop.
        if bytes.len() <= 8 {
            let mut word = [0u8; 8];
            word[..bytes.len()].copy_from_slice(bytes);
            return self.write_u64(u64::from_le_bytes(word));
        }
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    // The narrower integers (branch numbers, executor ids, lengths) are one word each rather
    // than `write`'s bytes.
    fn write_u8(&mut self, word: u8) {
        self.write_u64(u64::from(word));
    }

    fn write_u16(&mut self, word: u16) {
        self.write_u64(u64::from(word));
    }

    fn write_u32(&mut self, word: u32) {
        self.write_u64(u64::from(word));
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }

    fn write_u128(&mut self, word: u128) {
        self.write_u64(word as u64);
        self.write_u64((word >> 64) as u64);
    }
}

/// `HashMap` with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;
