//! The Bloom filter of a run: a blocked Bloom filter, so that asking about a key touches one
//! 64-byte line (one cache miss) however large the filter is.
//!
//! A key is hashed once, `h = xxh3_64(key as 16 bytes LE)` (keys may already be hashes, but
//! nothing here relies on it). The line is `(h × lines) >> 64` (the high half of the 128-bit
//! product, so every line is equally likely without a division). The bit positions come from
//! `g = mix(h)`, the SplitMix64 finalizer, so that they do not depend on the bits that chose the
//! line: probe `i` (from 0) sets bit `(g >> 9i) & 511` of the line, bit `b` being bit `b % 64`
//! of the line's word `b / 64`, words as u64 LE. Sixteen bits per entry and seven probes give about
//! 0.1% false positives for a filter this shape (ten bits and six probes gave 0.96%, and a
//! request whose key a filter wrongly may hold waits for a device read); a
//! probe can hit a bit another probe of the same key set, which only costs a little of that.
//! A filter never answers "absent" for a key inserted into it.

use crate::prefetch::prefetch;

/// Bits of filter per entry the filter is sized for.
pub(super) const BITS_PER_ENTRY: u64 = 16;
/// Probes per key in the filters this build writes.
pub(super) const HASHES: u32 = 7;
/// The most probes a filter can have: each takes 9 bits of a 64-bit hash.
pub(super) const HASHES_MAX: u32 = 7;
/// Words of one line (64 bytes, a cache line).
pub(super) const LINE_WORDS: usize = 8;
const LINE_BITS: u64 = (LINE_WORDS * 64) as u64;

/// A blocked Bloom filter (see the module's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Bloom {
    words: Vec<u64>,
    hashes: u32,
}

/// Words of a filter sized for `capacity` entries: a whole number of lines, at least one.
pub(super) fn words_for(capacity: u64) -> usize {
    let lines = capacity.saturating_mul(BITS_PER_ENTRY).div_ceil(LINE_BITS).max(1);
    usize::try_from(lines).unwrap_or(usize::MAX / LINE_WORDS).saturating_mul(LINE_WORDS)
}

/// The key's hash, `h` of the module's text: the same in every filter, so a key asked of
/// several is hashed once.
pub(crate) fn key_hash(key: u128) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&key.to_le_bytes())
}

/// The first word of the key's line and the bits that choose its positions.
fn probe(key: u128, lines: usize) -> (usize, u64) {
    probe_hashed(key_hash(key), lines)
}

/// [`probe`] of a key whose hash is `h`.
fn probe_hashed(h: u64, lines: usize) -> (usize, u64) {
    let line = ((u128::from(h) * lines as u128) >> 64) as usize;
    let mut g = h;
    g = (g ^ (g >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    g = (g ^ (g >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (line * LINE_WORDS, g ^ (g >> 31))
}

impl Bloom {
    /// An empty filter sized for `capacity` entries.
    pub(super) fn with_capacity(capacity: u64) -> Bloom {
        Bloom { words: vec![0; words_for(capacity)], hashes: HASHES }
    }

    /// A filter read back: `words` a whole number of lines, at least one, and `hashes` in
    /// `1..=HASHES_MAX` (the reader checks both before).
    pub(super) fn from_words(words: Vec<u64>, hashes: u32) -> Bloom {
        debug_assert!(!words.is_empty() && words.len().is_multiple_of(LINE_WORDS));
        debug_assert!((1..=HASHES_MAX).contains(&hashes));
        Bloom { words, hashes }
    }

    /// Inserts at once (a run's writer queues its inserts instead, [`Filling`]).
    #[cfg(test)]
    pub(super) fn insert(&mut self, key: u128) {
        let (line, g) = probe(key, self.words.len() / LINE_WORDS);
        self.set(line, g);
    }

    fn set(&mut self, line: usize, mut g: u64) {
        for _ in 0..self.hashes {
            let bit = (g & (LINE_BITS - 1)) as usize;
            self.words[line + bit / 64] |= 1 << (bit % 64);
            g >>= 9;
        }
    }

    /// False only if `key` was surely never inserted.
    pub(super) fn may_hold(&self, key: u128) -> bool {
        self.may_hold_hashed(key_hash(key))
    }

    /// Asks for the line of the key whose hash is `h` ([`key_hash`]), without waiting for it:
    /// before asking several filters about one key, so that their misses overlap.
    pub(super) fn prefetch_hashed(&self, h: u64) {
        let (line, _) = probe_hashed(h, self.words.len() / LINE_WORDS);
        // Both ends of the line: a filter's words need not start on a cache line's boundary.
        prefetch(&self.words[line]);
        prefetch(&self.words[line + LINE_WORDS - 1]);
    }

    /// [`may_hold`](Self::may_hold) of the key whose hash is `h` ([`key_hash`]).
    pub(super) fn may_hold_hashed(&self, h: u64) -> bool {
        let (line, mut g) = probe_hashed(h, self.words.len() / LINE_WORDS);
        for _ in 0..self.hashes {
            let bit = (g & (LINE_BITS - 1)) as usize;
            if self.words[line + bit / 64] & (1 << (bit % 64)) == 0 {
                return false;
            }
            g >>= 9;
        }
        true
    }

    pub(super) fn words(&self) -> &[u64] {
        &self.words
    }

    pub(super) fn hashes(&self) -> u32 {
        self.hashes
    }

    /// Bytes the filter holds.
    pub(super) fn memory_bytes(&self) -> usize {
        self.words.capacity() * 8
    }
}

/// Inserts queued before their bits are set: a run's writer inserts its keys one after another,
/// each into a random line of a filter of megabytes, and each insert made at once waits for
/// its own cache miss. Queued, a key's line is fetched when it comes and its bits are set
/// [`AHEAD`] keys later, so that the misses overlap. The filter is whole once
/// [`finish`](Self::finish) has set the keys still queued.
pub(super) struct Filling {
    bloom: Bloom,
    queued: [(usize, u64); AHEAD],
    /// Keys queued, and the slot of the oldest once the queue is full.
    len: usize,
    oldest: usize,
}

/// Keys whose bits wait in a [`Filling`]: enough lines in flight to cover a miss.
pub(super) const AHEAD: usize = 16;

impl Filling {
    pub(super) fn new(bloom: Bloom) -> Filling {
        Filling { bloom, queued: [(0, 0); AHEAD], len: 0, oldest: 0 }
    }

    pub(super) fn insert(&mut self, key: u128) {
        let (line, g) = probe(key, self.bloom.words.len() / LINE_WORDS);
        // Both ends of the line: a filter's words need not start on a cache line's boundary.
        prefetch(&self.bloom.words[line]);
        prefetch(&self.bloom.words[line + LINE_WORDS - 1]);
        if self.len < AHEAD {
            self.queued[self.len] = (line, g);
            self.len += 1;
            return;
        }
        let (due_line, due_g) = std::mem::replace(&mut self.queued[self.oldest], (line, g));
        self.bloom.set(due_line, due_g);
        self.oldest = (self.oldest + 1) % AHEAD;
    }

    /// The filter, every key inserted set in it.
    pub(super) fn finish(mut self) -> Bloom {
        for (line, g) in self.queued.into_iter().take(self.len) {
            self.bloom.set(line, g);
        }
        self.bloom
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filling_sets_the_same_bits_as_inserts_made_at_once() {
        // Fewer keys than the queue holds, as many, one more, and many.
        for count in [0u128, 1, AHEAD as u128 - 1, AHEAD as u128, AHEAD as u128 + 1, 5_000] {
            let mut direct = Bloom::with_capacity(1_000);
            let mut filling = Filling::new(Bloom::with_capacity(1_000));
            for n in 0..count {
                let key = n.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
                direct.insert(key);
                filling.insert(key);
            }
            assert_eq!(filling.finish(), direct, "{count} keys");
        }
    }

    #[test]
    fn a_key_hashed_once_gets_the_answers_of_the_key() {
        // Filters of one line and of many, the key hashed once for all of them.
        let mut filters = [Bloom::with_capacity(1), Bloom::with_capacity(10_000)];
        let key = |n: u128| n.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        for filter in &mut filters {
            (0..2_000).for_each(|n| filter.insert(key(n)));
        }
        for n in 0..20_000 {
            let h = key_hash(key(n));
            for filter in &filters {
                filter.prefetch_hashed(h);
                assert_eq!(filter.may_hold_hashed(h), filter.may_hold(key(n)), "key {n}");
            }
        }
        assert!((0..2_000).all(|n| filters[1].may_hold_hashed(key_hash(key(n)))), "no false negative");
        assert!(
            (2_000..20_000).any(|n| !filters[1].may_hold_hashed(key_hash(key(n)))),
            "a key not inserted is told apart"
        );
    }
}
