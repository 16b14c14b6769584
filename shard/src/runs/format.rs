//! The bytes of a run file (the layout is in `mod.rs`): sealing and checking data blocks,
//! encoding and decoding the footer and the index section, and the encoder that turns sorted
//! entries into a file's bytes.
//!
//! A data block holds its entries as columns (`columns.rs`): sorted keys share their high
//! bytes, and values hold shard bits, small ids and zeros, so a block holds about half again
//! as many entries as it would back to back, and a point read still reads one block. Blocks
//! of files written before (version 1 and 2) hold their entries back to back, a fixed number
//! to a block, and are still read.
//!
//! Everything here is a pure function over byte slices, so that the disk path (`mod.rs`,
//! `write.rs`) and the fuzzer (`fuzzing.rs`) run the same checks: a file the fuzzer cannot
//! make an open or a read accept is a file the store does not accept either.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed, Xxh3};

use super::bloom::{Bloom, Filling, HASHES_MAX, LINE_WORDS};
use super::fences::Bounds;
use super::index::{self, DIRECTORY_ENTRY_BYTES};
use super::{Value, KEY_BYTES, VALUE_BYTES_MAX};
use crate::columns::{self, Columns, Spans};

/// Bytes of a block: the unit of the data section, of the index section's padding and of the
/// footer, and of every write.
pub(super) const BLOCK: usize = tradeshard_wal::BLOCK_BYTES as usize;
const BLOCK_U64: u64 = BLOCK as u64;
/// Where a block's trailer starts: the entry count (u32), 4 reserved zero bytes, the checksum.
const TRAILER_AT: usize = BLOCK - 16;
const RESERVED_AT: usize = TRAILER_AT + 4;
const CHECKSUM_AT: usize = TRAILER_AT + 8;
const MAGIC: [u8; 4] = *b"TSRN";
/// The version written: blocks of columns, and a page directory of the fence keys in the index
/// section with its checksum in the footer (`index.rs`). Version 4 (a checksum of the fence
/// keys alone, no directory) and version 3 (neither) are still read, and so are version 2
/// (entries back to back) and version 1 (that, and no age of its keys: it never passes a key
/// window).
const VERSION: u16 = 5;
/// Blocks of columns and a checksum of the fence keys alone.
const VERSION_FENCES: u16 = 4;
/// Blocks of columns without a checksum of the fence keys alone.
const VERSION_COLUMNS: u16 = 3;
/// The version of entries back to back with the age of their keys.
const VERSION_FIXED: u16 = 2;
/// Entries a block of columns holds at most (whatever its entries' bits), so that a block's
/// entries decoded stay small.
pub(super) const BLOCK_ENTRIES_MAX: usize = 1024;
/// Bytes of the footer's fields, by version; the rest of its block is reserved (zero). The
/// checksum is the fields' last 8 bytes.
const FOOTER_FIELDS_V1: usize = 64;
const FOOTER_FIELDS_V3: usize = 80;
const FOOTER_FIELDS: usize = 88;
/// Where version 4's checksum of the fence keys, and version 5's of the page directory, is.
const FENCE_CHECK_AT: usize = 72;
/// Where version 2's age fields start (the newest time, then the position).
const AGE_AT: usize = 56;
pub(super) const FENCE_BYTES: u64 = KEY_BYTES as u64;

const _: () = assert!(CHECKSUM_AT + 8 == BLOCK);

/// Bytes of an entry whose value is `value_bytes` long, if a run may hold such entries: values
/// are whole 8-byte words, none (a store of keys) up to `VALUE_BYTES_MAX`.
pub(super) fn entry_bytes(value_bytes: usize) -> Option<usize> {
    (value_bytes <= VALUE_BYTES_MAX && value_bytes.is_multiple_of(8)).then_some(KEY_BYTES + value_bytes)
}

/// Entries of a full block of entries of `entry_bytes` (255 of 16 bytes, 102 of 40, 85 of 48,
/// 56 of 72).
pub(super) fn block_capacity(entry_bytes: usize) -> usize {
    TRAILER_AT / entry_bytes
}

/// The seed of block `number`'s checksum in run `id`: a block copied into another place or
/// another run does not pass. Injective while ids and block numbers stay below 2^32.
pub(super) fn block_seed(id: u64, number: u64) -> u64 {
    id.rotate_left(32) ^ number
}

/// What a run's footer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Footer {
    pub id: u64,
    /// Whether its blocks hold columns (version 3), not entries back to back.
    pub columns: bool,
    /// Bytes of an entry: the key's 16 and the value's.
    pub entry_bytes: usize,
    pub level: u32,
    pub entries: u64,
    pub data_blocks: u64,
    pub bloom_words: u64,
    pub hashes: u32,
    /// xxh3_64 of the index section without its padding.
    pub index_checksum: u64,
    /// What checks the fence keys apart from the Bloom filter.
    pub fence_check: FenceCheck,
    /// How old the run's keys are.
    pub age: KeysAge,
}

/// What a footer holds to check the fence keys without reading the Bloom filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FenceCheck {
    /// Nothing (versions 1 to 3): the index section is read and checked whole.
    Whole,
    /// xxh3_64 of the fence keys alone (version 4).
    Fences(u64),
    /// xxh3_64 of the page directory that follows the fence keys (version 5).
    Directory(u64),
}

/// How old the keys of a run are: none was added after `newest_ms` (ms since the Unix epoch),
/// and every one was applied below log position `through`. A merge's is the greatest of its
/// inputs'. Unknown (a version 1 file): both at their greatest, never past any window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeysAge {
    pub newest_ms: u64,
    pub through: u64,
}

impl KeysAge {
    pub(crate) const UNKNOWN: KeysAge = KeysAge { newest_ms: u64::MAX, through: u64::MAX };

    /// The age of the keys of two runs together.
    pub(crate) fn max(self, other: KeysAge) -> KeysAge {
        KeysAge { newest_ms: self.newest_ms.max(other.newest_ms), through: self.through.max(other.through) }
    }
}

impl Footer {
    /// Bytes of the index section without its padding.
    pub(super) fn index_bytes(&self) -> u64 {
        self.bloom_words * 8 + self.data_blocks * FENCE_BYTES + self.directory_bytes()
    }

    /// Bytes of the page directory (none before version 5).
    pub(super) fn directory_bytes(&self) -> u64 {
        match self.fence_check {
            FenceCheck::Directory(_) => index::pages(self.data_blocks) * DIRECTORY_ENTRY_BYTES,
            FenceCheck::Whole | FenceCheck::Fences(_) => 0,
        }
    }

    /// Where the fence keys start.
    pub(super) fn fences_offset(&self) -> u64 {
        self.index_offset() + self.bloom_words * 8
    }

    /// Where the page directory starts.
    pub(super) fn directory_offset(&self) -> u64 {
        self.fences_offset() + self.data_blocks * FENCE_BYTES
    }

    pub(super) fn index_offset(&self) -> u64 {
        self.data_blocks * BLOCK_U64
    }

    /// Where the footer starts.
    pub(super) fn footer_offset(&self) -> u64 {
        self.index_offset() + self.index_bytes().div_ceil(BLOCK_U64) * BLOCK_U64
    }

    pub(super) fn file_bytes(&self) -> u64 {
        self.footer_offset() + BLOCK_U64
    }

    /// Entries of a full block of a run of entries back to back.
    fn block_capacity(&self) -> usize {
        block_capacity(self.entry_bytes)
    }

    /// Bytes of a value of this run.
    pub(super) fn value_bytes(&self) -> usize {
        self.entry_bytes - KEY_BYTES
    }

    /// Entries block `number` of a run of entries back to back holds: every block but the
    /// last is full.
    fn block_entries(&self, number: u64) -> usize {
        let full = self.block_capacity();
        if number + 1 < self.data_blocks {
            full
        } else {
            (self.entries - (self.data_blocks - 1) * full as u64) as usize
        }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        assert!(self.columns, "files are written with blocks of columns");
        let mut out = Vec::with_capacity(BLOCK);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.entry_bytes as u16).to_le_bytes());
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.level.to_le_bytes());
        out.extend_from_slice(&self.entries.to_le_bytes());
        out.extend_from_slice(&self.data_blocks.to_le_bytes());
        out.extend_from_slice(&self.bloom_words.to_le_bytes());
        out.extend_from_slice(&self.hashes.to_le_bytes());
        out.extend_from_slice(&self.index_checksum.to_le_bytes());
        out.extend_from_slice(&self.age.newest_ms.to_le_bytes());
        out.extend_from_slice(&self.age.through.to_le_bytes());
        let FenceCheck::Directory(directory_sum) = self.fence_check else { panic!("written with a page directory") };
        out.extend_from_slice(&directory_sum.to_le_bytes());
        debug_assert_eq!(out.len(), FOOTER_FIELDS - 8);
        let sum = xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out.resize(BLOCK, 0);
        out
    }

    /// The footer of run `id` in `bytes` (the file's last block), checked against the file's
    /// length: every size it states must add up to exactly `file_len`, so nothing read after it
    /// can lie past the end of the file or be sized from a damaged number.
    pub(super) fn decode(bytes: &[u8], id: u64, file_len: u64) -> Result<Footer, &'static str> {
        let bytes = bytes.get(..BLOCK).ok_or("a run footer cut short")?;
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if bytes[..4] != MAGIC {
            return Err("not a run file (no run footer)");
        }
        let (fields, columns) = match u16_at(4) {
            1 => (FOOTER_FIELDS_V1, false),
            VERSION_FIXED => (FOOTER_FIELDS_V3, false),
            VERSION_COLUMNS => (FOOTER_FIELDS_V3, true),
            VERSION_FENCES | VERSION => (FOOTER_FIELDS, true),
            _ => return Err("a run file of an unknown format version"),
        };
        if u64_at(fields - 8) != xxh3_64(&bytes[..fields - 8]) {
            return Err("run footer checksum mismatch");
        }
        if bytes[fields..].iter().any(|&b| b != 0) {
            return Err("a run footer with bytes where zeros belong");
        }
        let age = match fields {
            FOOTER_FIELDS_V1 => KeysAge::UNKNOWN,
            _ => KeysAge { newest_ms: u64_at(AGE_AT), through: u64_at(AGE_AT + 8) },
        };
        let fence_check = match u16_at(4) {
            VERSION_FENCES => FenceCheck::Fences(u64_at(FENCE_CHECK_AT)),
            VERSION => FenceCheck::Directory(u64_at(FENCE_CHECK_AT)),
            _ => FenceCheck::Whole,
        };
        let entry_bytes = usize::from(u16_at(6));
        if entry_bytes < KEY_BYTES || self::entry_bytes(entry_bytes - KEY_BYTES) != Some(entry_bytes) {
            return Err("a run file of entries of a size no run has");
        }
        let footer = Footer {
            id: u64_at(8),
            columns,
            entry_bytes,
            level: u32_at(16),
            entries: u64_at(20),
            data_blocks: u64_at(28),
            bloom_words: u64_at(36),
            hashes: u32_at(44),
            index_checksum: u64_at(48),
            fence_check,
            age,
        };
        if footer.id != id {
            return Err("a run file whose footer names another run");
        }
        let blocks_agree = match footer.columns {
            true => {
                (1..=footer.entries).contains(&footer.data_blocks)
                    && footer
                        .data_blocks
                        .checked_mul(BLOCK_ENTRIES_MAX as u64)
                        .is_some_and(|most| footer.entries <= most)
            }
            false => footer.data_blocks == footer.entries.div_ceil(footer.block_capacity() as u64),
        };
        if footer.entries == 0 || !blocks_agree {
            return Err("a run footer whose entry and block counts disagree");
        }
        if footer.bloom_words == 0 || !footer.bloom_words.is_multiple_of(LINE_WORDS as u64) {
            return Err("a run footer with a Bloom filter of no whole lines");
        }
        if !(1..=HASHES_MAX).contains(&footer.hashes) {
            return Err("a run footer with an impossible Bloom probe count");
        }
        // The same sums as the methods above, checked: a footer whose sizes overflow cannot
        // add up to a real file's length.
        let directory = match footer.fence_check {
            FenceCheck::Directory(_) => index::pages(footer.data_blocks).checked_mul(DIRECTORY_ENTRY_BYTES),
            FenceCheck::Whole | FenceCheck::Fences(_) => Some(0),
        };
        let blocks = footer
            .bloom_words
            .checked_mul(8)
            .and_then(|bloom| bloom.checked_add(footer.data_blocks.checked_mul(FENCE_BYTES)?))
            .and_then(|index| index.checked_add(directory?))
            .map(|index| index.div_ceil(BLOCK_U64))
            .and_then(|index_blocks| index_blocks.checked_add(footer.data_blocks)?.checked_add(1));
        if blocks.and_then(|blocks| blocks.checked_mul(BLOCK_U64)) != Some(file_len) {
            return Err("a run file whose length is not what its footer says");
        }
        Ok(footer)
    }
}

/// Writes block `number` of run `id`'s trailer into `block` (which holds `count` entries, and
/// zeros after them).
fn seal_block(block: &mut [u8], id: u64, number: u64, count: usize) {
    block[TRAILER_AT..RESERVED_AT].copy_from_slice(&(count as u32).to_le_bytes());
    block[RESERVED_AT..CHECKSUM_AT].fill(0);
    let sum = xxh3_64_with_seed(&block[..CHECKSUM_AT], block_seed(id, number));
    block[CHECKSUM_AT..].copy_from_slice(&sum.to_le_bytes());
}

/// A checked block's entries, back to back.
pub(super) struct Entries {
    pub bytes: Vec<u8>,
    pub count: usize,
}

/// Checks the block at `bounds` (`bytes`, the block as read) of the run `footer` describes;
/// returns its entries. A block that passes holds the entries the run was written with, in
/// strictly ascending order, all at or above its fence key and below the next block's.
pub(super) fn check_block(bytes: &[u8], footer: &Footer, bounds: Bounds) -> Result<Entries, &'static str> {
    let number = bounds.number;
    let block = bytes.get(..BLOCK).ok_or("a run file cut short inside a block")?;
    let stored = u64::from_le_bytes(block[CHECKSUM_AT..].try_into().expect("8 bytes"));
    if stored != xxh3_64_with_seed(&block[..CHECKSUM_AT], block_seed(footer.id, number)) {
        return Err("run block checksum mismatch");
    }
    let count = u32::from_le_bytes(block[TRAILER_AT..RESERVED_AT].try_into().expect("4 bytes")) as usize;
    let counted = match footer.columns {
        true => (1..=BLOCK_ENTRIES_MAX).contains(&count),
        false => count == footer.block_entries(number),
    };
    if number >= footer.data_blocks || !counted {
        return Err("a run block holding another number of entries than its footer says");
    }
    let (entries, end) = match footer.columns {
        true => {
            let columns = Columns::parse(&block[..TRAILER_AT], footer.entry_bytes, count)?;
            let mut entries = vec![0u8; count * footer.entry_bytes];
            columns.decode_all(block, &mut entries);
            (entries, columns.end())
        }
        false => (block[..count * footer.entry_bytes].to_vec(), count * footer.entry_bytes),
    };
    if block[end..TRAILER_AT].iter().chain(&block[RESERVED_AT..CHECKSUM_AT]).any(|&b| b != 0) {
        return Err("a run block with bytes where zeros belong");
    }
    let key_at = |i| key_at(&entries, i, footer.entry_bytes);
    if key_at(0) != bounds.fence {
        return Err("a run block whose first key is not its fence key");
    }
    if (1..count).any(|i| key_at(i - 1) >= key_at(i)) {
        return Err("run block keys not strictly ascending");
    }
    if bounds.next.is_some_and(|next| key_at(count - 1) >= next) {
        return Err("a run block reaching past the next block's fence key");
    }
    Ok(Entries { bytes: entries, count })
}

/// The key of entry `i` of entries of `entry_bytes` back to back.
pub(super) fn key_at(block: &[u8], i: usize, entry_bytes: usize) -> u128 {
    let at = i * entry_bytes;
    u128::from_le_bytes(block[at..at + KEY_BYTES].try_into().expect("16 bytes"))
}

/// The value of entry `i` of entries of `entry_bytes` back to back, zero past the run's
/// value bytes.
pub(super) fn value_at(block: &[u8], i: usize, entry_bytes: usize) -> Value {
    let at = i * entry_bytes + KEY_BYTES;
    let mut value = [0u8; VALUE_BYTES_MAX];
    value[..entry_bytes - KEY_BYTES].copy_from_slice(&block[at..at + entry_bytes - KEY_BYTES]);
    value
}

/// The value of `key` among the `count` entries of a checked block (ascending keys).
pub(super) fn find_in_block(block: &[u8], count: usize, key: u128, entry_bytes: usize) -> Option<Value> {
    let (mut low, mut high) = (0, count);
    while low < high {
        let mid = low + (high - low) / 2;
        match key_at(block, mid, entry_bytes).cmp(&key) {
            std::cmp::Ordering::Less => low = mid + 1,
            std::cmp::Ordering::Greater => high = mid,
            std::cmp::Ordering::Equal => return Some(value_at(block, mid, entry_bytes)),
        }
    }
    None
}

/// Turns entries in strictly ascending key order into a run file's bytes: data blocks as they
/// fill, then (once finished) the index section and the footer.
pub(super) struct Encoder {
    id: u64,
    level: u32,
    age: KeysAge,
    entry_bytes: usize,
    /// The entries of the block being filled, back to back, and what their columns take.
    pending: Vec<u8>,
    spans: Spans,
    entries: u64,
    bloom: Filling,
    fences: Vec<u128>,
    last: Option<u128>,
}

impl Encoder {
    /// An encoder of run `id` at `level` whose values are `value_bytes` long (as
    /// [`entry_bytes`] allows), its Bloom filter sized for `capacity` entries.
    pub(super) fn new(id: u64, level: u32, capacity: u64, value_bytes: usize) -> Result<Encoder, &'static str> {
        let entry_bytes = entry_bytes(value_bytes).ok_or("a run of values of a size no run has")?;
        Ok(Encoder {
            id,
            level,
            age: KeysAge::UNKNOWN,
            entry_bytes,
            pending: Vec::with_capacity(BLOCK_ENTRIES_MAX * entry_bytes),
            spans: Spans::new(entry_bytes),
            entries: 0,
            bloom: Filling::new(Bloom::with_capacity(capacity)),
            fences: Vec::new(),
            last: None,
        })
    }

    /// The age of the run's keys, written in its footer (unknown unless set).
    pub(super) fn set_age(&mut self, age: KeysAge) {
        self.age = age;
    }

    /// Entries pushed so far.
    pub(super) fn entries(&self) -> u64 {
        self.entries
    }

    /// Adds an entry (its key above every key pushed before, its value zero past the run's
    /// value bytes); appends the block it closes, if it finds the block full, to `out`.
    pub(super) fn push(&mut self, key: u128, value: &Value, out: &mut Vec<u8>) -> Result<(), &'static str> {
        if self.last.is_some_and(|last| last >= key) {
            return Err("keys of a run not strictly ascending");
        }
        let value_bytes = self.entry_bytes - KEY_BYTES;
        if value[value_bytes..].iter().any(|&b| b != 0) {
            return Err("a value longer than its run's values");
        }
        self.last = Some(key);
        let mut entry = [0u8; KEY_BYTES + VALUE_BYTES_MAX];
        entry[..KEY_BYTES].copy_from_slice(&key.to_le_bytes());
        entry[KEY_BYTES..self.entry_bytes].copy_from_slice(&value[..value_bytes]);
        let entry = &entry[..self.entry_bytes];
        let rows = self.spans.rows();
        let joined = rows > 0 && rows < BLOCK_ENTRIES_MAX && self.spans.take_if_fits(entry, TRAILER_AT);
        if !joined {
            if rows > 0 {
                self.seal(out);
            }
            self.fences.push(key);
            self.spans.take(entry);
        }
        self.pending.extend_from_slice(entry);
        self.bloom.insert(key);
        self.entries += 1;
        Ok(())
    }

    fn seal(&mut self, out: &mut Vec<u8>) {
        let number = self.fences.len() as u64 - 1;
        let start = out.len();
        columns::encode_spanned(&self.pending, &self.spans, out);
        debug_assert!(out.len() - start <= TRAILER_AT, "a block's columns fit before its trailer");
        out.resize(start + BLOCK, 0);
        seal_block(&mut out[start..], self.id, number, self.spans.rows());
        self.pending.clear();
        self.spans.clear();
    }

    /// Seals the last block (appended to `out`); the index section and the footer are left to
    /// [`Tail::write_to`]. An empty run is refused: it would have no block to read.
    pub(super) fn finish(mut self, out: &mut Vec<u8>) -> Result<Tail, &'static str> {
        if self.entries == 0 {
            return Err("an empty run");
        }
        if self.spans.rows() > 0 {
            self.seal(out);
        }
        self.fences.shrink_to_fit();
        let bloom = self.bloom.finish();
        let footer = Footer {
            id: self.id,
            columns: true,
            entry_bytes: self.entry_bytes,
            level: self.level,
            entries: self.entries,
            data_blocks: self.fences.len() as u64,
            bloom_words: bloom.words().len() as u64,
            hashes: bloom.hashes(),
            index_checksum: 0,
            fence_check: FenceCheck::Directory(0),
            age: self.age,
        };
        let directory = index::directory_bytes(&self.fences);
        let footer = Footer { fence_check: FenceCheck::Directory(xxh3_64(&directory)), ..footer };
        Ok(Tail { footer, bloom, fences: self.fences, directory, next: 0, hasher: Box::new(Xxh3::new()), done: false })
    }
}

/// The end of a run file being encoded: its index section and footer, appended in pieces so
/// that a large filter is never copied whole.
pub(super) struct Tail {
    footer: Footer,
    bloom: Bloom,
    fences: Vec<u128>,
    /// The page directory's bytes.
    directory: Vec<u8>,
    /// The next item of the index to append: Bloom words first, then fence keys, then the
    /// directory's entries.
    next: usize,
    hasher: Box<Xxh3>,
    done: bool,
}

impl Tail {
    /// Appends the rest of the index section and then the footer to `out`, stopping once `out`
    /// holds `limit` bytes or more; true once the footer is appended.
    pub(super) fn write_to(&mut self, out: &mut Vec<u8>, limit: usize) -> bool {
        let words = self.bloom.words();
        let entry = DIRECTORY_ENTRY_BYTES as usize;
        let (fences_at, directory_at) = (words.len(), words.len() + self.fences.len());
        let items = directory_at + self.directory.len() / entry;
        let start = out.len();
        while self.next < items && out.len() < limit {
            match self.next {
                n if n < fences_at => out.extend_from_slice(&words[n].to_le_bytes()),
                n if n < directory_at => out.extend_from_slice(&self.fences[n - fences_at].to_le_bytes()),
                n => out.extend_from_slice(&self.directory[(n - directory_at) * entry..][..entry]),
            }
            self.next += 1;
        }
        self.hasher.update(&out[start..]);
        if self.next < items || out.len() >= limit || self.done {
            return self.done;
        }
        let padding = (BLOCK_U64 - self.footer.index_bytes() % BLOCK_U64) % BLOCK_U64;
        out.resize(out.len() + padding as usize, 0);
        self.footer.index_checksum = self.hasher.digest();
        out.extend_from_slice(&self.footer.encode());
        self.done = true;
        true
    }

    /// The footer (complete once [`write_to`](Self::write_to) answered true), the Bloom
    /// filter and the fence keys.
    pub(super) fn into_parts(self) -> (Footer, Bloom, Vec<u128>) {
        (self.footer, self.bloom, self.fences)
    }
}
