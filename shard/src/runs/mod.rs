//! Immutable sorted runs of entries of one size on disk, and the set of runs of one store with
//! its merge policy: a key's value is found with its Bloom filter and fence keys in memory and
//! at most one 4 KiB read per run that may hold it (two for a run past the key window, whose
//! fence keys are on disk: `fences.rs`), so a store can keep far more keys than memory could
//! hold as a map.
//!
//! A run is written once, whole, and never changed ([`Run::write`], [`merge`]); the newest run
//! holding a key has its value ([`RunSet`]). Runs are merged when the newest [`MERGE_FANOUT`]
//! share a level, so every entry is rewritten once per level and a store of `n` entries keeps
//! at most `(MERGE_FANOUT - 1)` runs per level, about `log4(n)` levels.
//!
//! # File format
//!
//! A run is the file `{prefix}-{id:016x}.run` (16 lowercase hex digits); every integer is
//! little-endian, every section starts on a 4096-byte block.
//!
//! - Data blocks of 4096 bytes from offset 0, numbered from 0: entries of `E` bytes (the key
//!   as a u128, then the value: `E` is the footer's entry bytes, 16 for a store of keys alone,
//!   40 for 24-byte values, up to 72), keys strictly ascending within and across blocks, stored
//!   as columns (`columns.rs`: most of an entry's bytes vary little within a block) from byte
//!   0, zeros up to byte 4080, then a 16-byte trailer: the entry count (u32, 1 to
//!   [`format::BLOCK_ENTRIES_MAX`]), 4 zero bytes, and at 4088..4096 the checksum
//!   `xxh3_64_with_seed(block[0..4088], id.rotate_left(32) ^ block_number)` (u64), so a block
//!   read from another place or another run does not pass. A block takes entries while their
//!   columns fit. Versions 1 and 2 held the entries back to back instead, `4080 / E` to every
//!   block but the last; they are still read.
//! - The index section from offset `data_blocks × 4096`: the Bloom filter's words (u64 each),
//!   then the fence keys (the first key of each data block, u128 each, strictly ascending),
//!   then the page directory (`index.rs`): for each page of 256 fence keys, its first key
//!   (u128), the xxh3-64 of its bytes (u64) and 8 zero bytes; zero-padded to a multiple of
//!   4096 bytes.
//! - The footer, the file's last 4096 bytes: at 0 the magic `TSRN`, 4 the format version (u16,
//!   5), 6 the entry bytes (u16: 16 plus a value of 0 to 56 bytes, a multiple of 8), 8 the run id (u64), 16 the level (u32), 20 the entry
//!   count (u64, at least 1), 28 the data blocks (u64, at least 1, at most `entries`, and
//!   `entries ≤ 1024 × data_blocks`; versions 1 and 2: `ceil(entries / (4080 / E))`), 36 the Bloom
//!   filter's words (u64, a multiple of 8, at least 8), 44 the Bloom probe count (u32, 1..=7),
//!   48 `xxh3_64` of the index section without its padding (u64), 56 the newest time a key was
//!   added (u64, ms since the Unix epoch), 64 the log position every key was applied below
//!   (u64), 72 `xxh3_64` of the page directory (u64), 80 `xxh3_64` of footer bytes 0..80
//!   (u64); bytes 88..4096 are reserved and zero. Version 4 has no page directory and at 72
//!   the `xxh3_64` of the fence keys alone. Versions 2 and 3 have neither: their checksum is at
//!   72, over bytes 0..72, and bytes 80..4096 are zero. All are still read. Version 1 has no age: its checksum is at 56, over bytes 0..56, and bytes 64..4096 are zero;
//!   it is still read, its keys of unknown age (never past a key window).
//!
//! The file is exactly `(data_blocks + ceil(index_bytes / 4096) + 1) × 4096` bytes long, where
//! `index_bytes = 8 × bloom_words + 16 × data_blocks + 32 × ceil(data_blocks / 256)` (no
//! directory before version 5). An open reads and checks the footer (checksum, magic, version,
//! entry size, the id against the file's name, the sizes against the file's length) and a
//! version 5 run's page directory (its checksum, first keys ascending): the fence keys stay on
//! disk, and so what an open reads of a store's runs is 32 bytes a page of 256 blocks, not a
//! part of its history. The Bloom filter and the fence keys wait until the open knows the run
//! stays within its store's key window ([`Run::read_filter`], which checks the whole index
//! section: checksum, padding, the directory against the fence keys). A version 4 run's fence
//! keys, and a version 3 run's whole index section, are read and checked at the open. A read checks
//! the one block it reads (checksum, count, padding, keys ascending, first key equal to its
//! fence key, last key below the next fence key). The Bloom filter is in `bloom.rs`: a blocked
//! filter of 64-byte lines, 16 bits and 7 probes per entry.

mod blocks;
mod bloom;
mod fences;
mod format;
#[cfg(any(test, feature = "testing"))]
mod fuzzing;
mod index;
mod set;
#[cfg(test)]
mod tests;
mod write;

use std::cell::RefCell;

use tradeshard_wal::disk::{Disk, DiskFile};

use crate::error::{LogError, TradeError};
pub(crate) use bloom::key_hash;
use bloom::Bloom;
use fences::{Bounds, Fences};
use format::{check_block, find_in_block, key_at, Entries, FenceCheck, Footer, BLOCK};
use index::{decode_directory, decode_fences, IndexDecoder};

pub(crate) use blocks::BlockCache;
pub(crate) use format::KeysAge;

#[cfg(any(test, feature = "testing"))]
pub use fuzzing::{decode_for_fuzzing, sample_for_fuzzing};
pub(crate) use set::RunSet;
pub(crate) use write::merge;

/// Bytes of a key, and the most of a value: each store's runs have values of one size (a
/// multiple of 8 up to this), and an entry is the key and the value.
pub(crate) const KEY_BYTES: usize = 16;
pub(crate) const VALUE_BYTES_MAX: usize = 56;
/// A value as the runs hand it over: a run's value bytes, then zeros.
pub(crate) type Value = [u8; VALUE_BYTES_MAX];
/// Runs merged at once: when the newest `MERGE_FANOUT` runs share a level, they become one run
/// of the next level.
pub(crate) const MERGE_FANOUT: usize = 4;
/// What a run's Bloom filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filter {
    /// Sized to answer for each key (16 bits a key): the store is asked for keys.
    PerKey,
    /// The format's least, one 64-byte line that holds every key: the store is asked only for
    /// ranges, which a Bloom filter cannot answer, so a filter per key would be memory for
    /// nothing.
    RangesOnly,
}

impl Filter {
    /// The entries to size the filter of a run of `entries` for.
    fn capacity(self, entries: u64) -> u64 {
        match self {
            Filter::PerKey => entries,
            Filter::RangesOnly => 0,
        }
    }
}

/// What the runs of one store are like: their filter and the size of their values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub filter: Filter,
    /// Bytes of each value: a multiple of 8, up to [`VALUE_BYTES_MAX`]; none for a store of keys.
    pub value_bytes: usize,
}

/// Bytes of the index section read at once by an open.
const READ_BYTES: usize = 1 << 20;

/// One run file, open: its Bloom filter and fence keys in memory once the open knows it stays
/// within its store's key window, its entries on disk. A run past the window (`set.rs`) lets
/// its filter go and leaves its fence keys on disk (`fences.rs`): it is read only by lookups
/// that must find old keys, never by a check of a new key.
pub(crate) struct Run<D: Disk> {
    disk: D,
    name: String,
    file: D::File,
    footer: Footer,
    bloom: RefCell<FilterState>,
    fences: RefCell<Fences>,
}

/// A run's Bloom filter: not read yet (an open reads a version 5 run's page directory alone, or
/// a version 4 run's fence keys, and its filter only once the run is known to stay within the
/// key window), held, or let go past the window.
enum FilterState {
    Unread,
    Held(Bloom),
    Gone,
}

impl FilterState {
    fn held(&self) -> Option<&Bloom> {
        match self {
            FilterState::Held(bloom) => Some(bloom),
            FilterState::Unread | FilterState::Gone => None,
        }
    }
}

impl<D: Disk> Run<D> {
    /// The file name of run `id` of the store `prefix`: `{prefix}-{id:016x}.run`.
    pub(crate) fn file_name(prefix: &str, id: u64) -> String {
        format!("{prefix}-{id:016x}.run")
    }

    /// The id of a run file name of this prefix, or `None`: only the name
    /// [`file_name`](Self::file_name) makes for some id, so a name and an id are one to one.
    pub(crate) fn parse_file_name(prefix: &str, name: &str) -> Option<u64> {
        let hex = name.strip_prefix(prefix)?.strip_prefix('-')?.strip_suffix(".run")?;
        if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    }

    /// Opens run `id` of the store `prefix`, whose values are `value_bytes` long, reading and
    /// checking its footer and what of its index section its version lets an open leave for
    /// later ([`read_filter`](Self::read_filter)): the page directory (version 5), the fence
    /// keys (version 4) or the whole section. A missing file is damage: only runs a checkpoint
    /// lists are opened.
    pub(crate) async fn open(disk: &D, prefix: &str, id: u64, value_bytes: usize) -> Result<Run<D>, TradeError> {
        let name = Self::file_name(prefix, id);
        let file = match disk.open(&name).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt(disk, &name, 0, "a run a checkpoint lists is missing"))
            }
            Err(e) => return Err(io(disk, &name, "open", e)),
        };
        let size = file.size().await.map_err(|e| io(disk, &name, "stat", e))?;
        if size < BLOCK as u64 || !size.is_multiple_of(BLOCK as u64) {
            return Err(corrupt(disk, &name, size, "a run file cut short or not of whole blocks"));
        }
        let footer_at = size - BLOCK as u64;
        let bytes = file.read_at(footer_at, BLOCK).await.map_err(|e| io(disk, &name, "read", e))?;
        let footer = Footer::decode(&bytes, id, size).map_err(|reason| corrupt(disk, &name, footer_at, reason))?;
        if footer.value_bytes() != value_bytes {
            return Err(corrupt(disk, &name, footer_at, "a run file of entries of another size than its store's"));
        }
        // The filter, and with a page directory the fence keys too, wait until the run is known
        // to need them.
        let read = |at: u64, len: u64| {
            let (file, name) = (&file, &name);
            async move {
                let bytes = file.read_at(at, len as usize).await.map_err(|e| io(disk, name, "read", e))?;
                match bytes.len() as u64 == len {
                    true => Ok(bytes),
                    false => Err(corrupt(disk, name, at + bytes.len() as u64, "a run file cut short")),
                }
            }
        };
        let (bloom, fences) = match footer.fence_check {
            FenceCheck::Directory(_) => {
                let at = footer.directory_offset();
                let bytes = read(at, footer.directory_bytes()).await?;
                let (firsts, sums) =
                    decode_directory(&footer, &bytes).map_err(|reason| corrupt(disk, &name, at, reason))?;
                (FilterState::Unread, Fences::from_directory(firsts, sums, footer.data_blocks))
            }
            FenceCheck::Fences(_) => {
                let at = footer.fences_offset();
                let bytes = read(at, footer.data_blocks * format::FENCE_BYTES).await?;
                let fences = decode_fences(&footer, &bytes).map_err(|reason| corrupt(disk, &name, at, reason))?;
                (FilterState::Unread, Fences::Held(fences))
            }
            FenceCheck::Whole => {
                let (bloom, fences) = read_index(disk, &name, &file, &footer).await?;
                (FilterState::Held(bloom), Fences::Held(fences))
            }
        };
        let (bloom, fences) = (RefCell::new(bloom), RefCell::new(fences));
        Ok(Run { disk: disk.clone(), name, file, footer, bloom, fences })
    }

    /// Reads the Bloom filter an open left unread (`FilterState::Unread`), and the fence keys
    /// if the open read only their page directory, checking the whole index section. Nothing to
    /// do for a run whose filter is held or gone, nor for one whose fences are left on disk on
    /// purpose (an old run of a store only listed, whose filter answers for no key).
    pub(crate) async fn read_filter(&self) -> Result<(), TradeError> {
        if !matches!(*self.bloom.borrow(), FilterState::Unread) || self.fences.borrow().kept_on_disk() {
            return Ok(());
        }
        let (bloom, fences) = read_index(&self.disk, &self.name, &self.file, &self.footer).await?;
        let mut state = self.bloom.borrow_mut();
        // A run let go past the window meanwhile stays so.
        if matches!(*state, FilterState::Unread) {
            *state = FilterState::Held(bloom);
            self.fences.borrow_mut().hold(fences);
        }
        Ok(())
    }

    pub(crate) fn id(&self) -> u64 {
        self.footer.id
    }

    pub(crate) fn level(&self) -> u32 {
        self.footer.level
    }

    pub(crate) fn entries(&self) -> u64 {
        self.footer.entries
    }

    /// Bytes of each value of the run.
    pub(crate) fn value_bytes(&self) -> usize {
        self.footer.value_bytes()
    }

    /// How old its keys are.
    pub(crate) fn age(&self) -> KeysAge {
        self.footer.age
    }

    /// Takes its keys to be `age` if its footer does not tell (a version 1 file): a merge
    /// then passes a known age on, and the run can go past a key window.
    pub(crate) fn assume_age(&mut self, age: KeysAge) {
        if self.footer.age == KeysAge::UNKNOWN {
            self.footer.age = age;
        }
    }

    /// Bytes the run holds in memory (Bloom filter and fence keys).
    pub(crate) fn memory_bytes(&self) -> usize {
        let bloom = self.bloom.borrow().held().map_or(0, Bloom::memory_bytes);
        bloom + self.fences.borrow().memory_bytes()
    }

    /// Lets the Bloom filter go and leaves the fence keys on disk: the run is past its store's
    /// key window (`set.rs`). From now on it may hold any key, and a lookup that asks it reads
    /// it.
    pub(crate) fn forget_filter(&self) {
        *self.bloom.borrow_mut() = FilterState::Gone;
        self.fences.borrow_mut().page_out();
    }

    /// Leaves the fence keys on disk, keeping the filter; false if they were already.
    pub(crate) fn page_fences(&self) -> bool {
        self.fences.borrow_mut().page_out()
    }

    /// Whether the run is past its store's key window (it let its filter go).
    pub(crate) fn past_window(&self) -> bool {
        matches!(*self.bloom.borrow(), FilterState::Gone)
    }

    /// False if the run is past its key window or its filter says the key is surely not in it:
    /// what a check of a new key asks.
    pub(crate) fn may_hold_within_window(&self, key: u128) -> bool {
        self.may_hold_hashed_within_window(bloom::key_hash(key))
    }

    /// [`may_hold_within_window`](Self::may_hold_within_window) of the key whose hash is `h`
    /// (`bloom::key_hash`).
    pub(crate) fn may_hold_hashed_within_window(&self, h: u64) -> bool {
        match &*self.bloom.borrow() {
            FilterState::Held(bloom) => bloom.may_hold_hashed(h),
            // Not read yet: the run may hold any key, and a check reads it.
            FilterState::Unread => true,
            FilterState::Gone => false,
        }
    }

    /// Asks for the filter's line of the key whose hash is `h`, without waiting (`set.rs`).
    pub(crate) fn prefetch_filter_line(&self, h: u64) {
        if let Some(bloom) = self.bloom.borrow().held() {
            bloom.prefetch_hashed(h);
        }
    }

    /// Bytes of the file.
    pub(crate) fn file_bytes(&self) -> u64 {
        self.footer.file_bytes()
    }

    /// False only if the key is surely not in the run (the Bloom filter has no false
    /// negatives; a run without its filter may hold any key).
    pub(crate) fn may_hold(&self, key: u128) -> bool {
        self.bloom.borrow().held().is_none_or(|bloom| bloom.may_hold(key))
    }

    /// The key's value in this run: the Bloom filter, then the fence keys, then the one block
    /// that can hold it (from `blocks`, or one read), checked.
    pub(crate) async fn get(&self, key: u128, blocks: &BlockCache) -> Result<Option<Value>, TradeError> {
        if !self.may_hold(key) {
            return Ok(None);
        }
        self.read(key, blocks).await
    }

    /// The key's value, read without asking the Bloom filter first.
    async fn read(&self, key: u128, blocks: &BlockCache) -> Result<Option<Value>, TradeError> {
        // The block whose fence key is the greatest at or below the key; none below the first.
        let Some(bounds) = self.block_for(key, blocks).await? else {
            return Ok(None);
        };
        let entries = self.read_block(bounds, blocks).await?;
        Ok(find_in_block(&entries.bytes, entries.count, key, self.footer.entry_bytes))
    }

    /// The entries of the data block at `bounds`, checked: kept in `blocks` after a read from
    /// the device.
    async fn read_block(&self, bounds: Bounds, blocks: &BlockCache) -> Result<Entries, TradeError> {
        let offset = bounds.number * BLOCK as u64;
        let check =
            |block: &[u8]| check_block(block, &self.footer, bounds).map_err(|reason| self.corrupt(offset, reason));
        if let Some(block) = blocks.get(self.footer.id, bounds.number) {
            return check(&block);
        }
        let block = self.file.read_at(offset, BLOCK).await.map_err(|e| io(&self.disk, &self.name, "read", e))?;
        let entries = check(&block)?;
        blocks.insert(self.footer.id, bounds.number, &block);
        Ok(entries)
    }

    /// The run's keys in `low..=high`, greatest first, at most `limit`: the blocks that can
    /// hold them are read from the last back (the Bloom filter cannot tell of a range).
    pub(crate) async fn keys_down(
        &self,
        low: u128,
        high: u128,
        limit: usize,
        blocks: &BlockCache,
    ) -> Result<Vec<u128>, TradeError> {
        let mut keys = Vec::new();
        let Some(mut bounds) = self.block_for(high, blocks).await? else {
            return Ok(keys);
        };
        let mut page = None;
        while keys.len() < limit {
            let entries = self.read_block(bounds, blocks).await?;
            let key_at = |i| key_at(&entries.bytes, i, self.footer.entry_bytes);
            for key in (0..entries.count).rev().map(key_at).filter(|key| *key <= high) {
                if key < low || keys.len() == limit {
                    return Ok(keys);
                }
                keys.push(key);
            }
            // The blocks before hold keys below this one's first.
            if bounds.number == 0 || bounds.fence <= low {
                break;
            }
            bounds = self.bounds(bounds.number - 1, &mut page, Some(blocks)).await?;
        }
        Ok(keys)
    }

    /// The error for a defect found at `offset` of this run's file.
    fn corrupt(&self, offset: u64, reason: &'static str) -> TradeError {
        corrupt(&self.disk, &self.name, offset, reason)
    }
}

impl<D: Disk> std::fmt::Debug for Run<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Footer { id, level, entries, .. } = self.footer;
        f.debug_struct("Run")
            .field("name", &self.name)
            .field("id", &id)
            .field("level", &level)
            .field("entries", &entries)
            .finish()
    }
}

/// The Bloom filter and fence keys of the index section of `name`, read whole and checked.
async fn read_index<D: Disk>(
    disk: &D,
    name: &str,
    file: &D::File,
    footer: &Footer,
) -> Result<(Bloom, Vec<u128>), TradeError> {
    let footer_at = footer.footer_offset();
    let mut index = IndexDecoder::new(*footer);
    let mut at = footer.index_offset();
    while at < footer_at {
        let want = (footer_at - at).min(READ_BYTES as u64) as usize;
        let bytes = file.read_at(at, want).await.map_err(|e| io(disk, name, "read", e))?;
        if bytes.len() != want {
            return Err(corrupt(disk, name, at + bytes.len() as u64, "a run file cut short"));
        }
        index.feed(&bytes).map_err(|reason| corrupt(disk, name, at, reason))?;
        at += want as u64;
        crate::turns::take_turn().await;
    }
    index.finish().map_err(|reason| corrupt(disk, name, footer.index_offset(), reason))
}

fn io(disk: &impl Disk, name: &str, op: &'static str, source: std::io::Error) -> TradeError {
    TradeError::Log(LogError::io(op, disk.path_of(name), source))
}

fn corrupt(disk: &impl Disk, name: &str, offset: u64, reason: &'static str) -> TradeError {
    TradeError::Log(LogError::Corruption { path: disk.path_of(name), offset, reason })
}
