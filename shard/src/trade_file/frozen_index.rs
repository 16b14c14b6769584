//! The index of the frozen blocks' copies as memory holds it: how many blocks are frozen, the
//! entries of the index file's last page (the page the next freeze writes again), and the
//! whole pages read lately, up to a budget (`Upkeep::frozen_index_cache_bytes`). Every other entry stays in
//! `trades.frozen.idx` and is read a page at a time when a read needs a copy.
//!
//! The index grows by an entry of 16 bytes for every 128 trades that stopped changing; held
//! whole it was memory, and reading it all at an open was open time, that grew with the
//! shard's history (25 MB a shard at 10^8 trades). An open now reads the index from the page
//! of the first block its checkpoint does not count: the entries below are durable and were
//! checked when written, each holds its own checksum seeded with its block's number, and a
//! read that finds one damaged is refused with its offset, as a damaged data block of a run
//! is. A cold trade whose block's page is cached costs one read (its copy); otherwise two.

use std::rc::Rc;

use tradeshard_cache::Cache;
use tradeshard_wal::disk::{Disk, DiskFile};

use super::frozen::{self, FrozenBlock, ENTRY_BYTES, FROZEN_INDEX_NAME};
use super::{corrupt_at, frozen_io, TradeFile, PAGE_BYTES};
use crate::error::TradeError;

/// Entries in a page of the index file.
pub(super) const ENTRIES_PER_PAGE: u64 = (PAGE_BYTES / ENTRY_BYTES) as u64;
/// The frozen blocks' index in memory.
pub(super) struct FrozenIndex {
    /// Blocks frozen: entry `b` is durable and checks for every `b` below.
    len: u64,
    /// The entries from the first of the page `len` falls in up to `len`.
    tail: Vec<FrozenBlock>,
    /// Whole pages below the tail's, by page number, each entry checked.
    pages: Cache<u64, Rc<[FrozenBlock]>>,
}

impl FrozenIndex {
    /// An empty index keeping at most `cache_bytes` of the pages read lately.
    pub(super) fn new(cache_bytes: u64) -> FrozenIndex {
        let cache_bytes = usize::try_from(cache_bytes).unwrap_or(usize::MAX);
        FrozenIndex { len: 0, tail: Vec::new(), pages: Cache::new(cache_bytes) }
    }

    /// The first block of the page block `len` falls in.
    fn tail_start(&self) -> u64 {
        self.len / ENTRIES_PER_PAGE * ENTRIES_PER_PAGE
    }

    /// Takes the entries of the blocks from `len` on, frozen and durable.
    pub(super) fn extend(&mut self, entries: &[FrozenBlock]) {
        for &entry in entries {
            self.tail.push(entry);
            self.len += 1;
            if self.len.is_multiple_of(ENTRIES_PER_PAGE) {
                let page: Rc<[FrozenBlock]> = std::mem::take(&mut self.tail).into();
                let bytes = page.len() * std::mem::size_of::<FrozenBlock>();
                self.pages.insert(self.len / ENTRIES_PER_PAGE - 1, page, bytes);
            }
        }
    }

    /// The entries from the first block of `block`'s page up to `block` (excluded), which
    /// the index file's write of that page must hold again: `block` is `len`.
    pub(super) fn tail_before(&self, block: u64) -> &[FrozenBlock] {
        debug_assert_eq!(block, self.len);
        &self.tail
    }
}

impl<D: Disk> TradeFile<D> {
    /// Blocks frozen: counters below `frozen_len() * BLOCK_RECORDS` may be read from their
    /// copies.
    pub(crate) fn frozen_len(&self) -> u64 {
        self.frozen.borrow().len
    }

    /// Block `block`'s index entry, `None` when it is not frozen: from memory, or from its page
    /// of the index file, read whole, checked entry by entry and kept.
    pub(super) async fn frozen_entry(&self, block: u64) -> Result<Option<FrozenBlock>, TradeError> {
        let page = block / ENTRIES_PER_PAGE;
        {
            let mut index = self.frozen.borrow_mut();
            if block >= index.len {
                return Ok(None);
            }
            let tail_start = index.tail_start();
            if block >= tail_start {
                return Ok(Some(index.tail[(block - tail_start) as usize]));
            }
            if let Some(entry) = index.pages.get_with(&page, |entries| entries[(block % ENTRIES_PER_PAGE) as usize]) {
                return Ok(Some(entry));
            }
        }
        let files = self.frozen_files.borrow().clone().expect("a frozen block has its files");
        let at = page * PAGE_BYTES as u64;
        let read = files
            .index
            .read_at(at, PAGE_BYTES)
            .await
            .map_err(|e| frozen_io(&self.disk, FROZEN_INDEX_NAME, "read", e))?;
        let entry_of = |number: u64| {
            let n = (number % ENTRIES_PER_PAGE) as usize;
            frozen::decode_entry(number, read.get(n * ENTRY_BYTES..(n + 1) * ENTRY_BYTES).unwrap_or(&[]))
        };
        let entry = entry_of(block).ok_or_else(|| {
            let offset = block * ENTRY_BYTES as u64;
            corrupt_at(
                &self.disk,
                FROZEN_INDEX_NAME,
                offset,
                "a frozen block's index entry changed since it was written",
            )
        })?;
        // A page is kept only whole: a damaged entry fails the reads of its own block alone.
        let first = page * ENTRIES_PER_PAGE;
        let entries: Option<Rc<[FrozenBlock]>> = (first..first + ENTRIES_PER_PAGE).map(entry_of).collect();
        if let Some(entries) = entries {
            let bytes = entries.len() * std::mem::size_of::<FrozenBlock>();
            self.frozen.borrow_mut().pages.insert(page, entries, bytes);
        }
        Ok(Some(entry))
    }

    /// Takes the index as an open finds it: the blocks from the first of the page block
    /// `at_least` falls in are read, every leading entry that checks taken (`load_frozen`); the
    /// entries below, which the checkpoint counts, are read when asked for.
    pub(super) fn set_frozen(&self, start: u64, found: Vec<FrozenBlock>) {
        debug_assert!(start.is_multiple_of(ENTRIES_PER_PAGE));
        let cache_bytes = self.frozen.borrow().pages.budget();
        let mut index = FrozenIndex { len: start, ..FrozenIndex::new(cache_bytes as u64) };
        index.extend(&found);
        *self.frozen.borrow_mut() = index;
    }
}
