//! A run's fence keys (the first key of each data block): held in memory while the run is
//! within its store's key window, and left on disk once it is past it, where memory keeps only
//! the first key and a checksum of each page of 256 of them.
//!
//! Runs past the window hold the store's history, and their fences, 16 bytes a data block, were
//! the one part of a shard's memory that grew with it (about 0.1-0.3 bytes a key, 72 MB a shard
//! at 10^8 trades). Paged, they take 24 bytes a page of 256 blocks: a run of 10^8 keys keeps a
//! few kilobytes. A lookup in such a run reads the page it needs (one more read, kept in the
//! shard's block cache like a data block, so the pages of runs asked often stay in memory);
//! the run is read only by finds of old keys, never by a check of a new key (`set.rs`).
//!
//! A page is the run file's bytes, as the index section holds them (`mod.rs`, "File
//! format"). The checksum kept for each page (xxh3-64 of its bytes) comes from the page
//! directory an open read (version 5, `index.rs`) or from the fence keys an open checked (an
//! older run), and checks the page at every use, so damage is refused with its offset, never
//! read as a wrong block boundary that would answer "absent" for a key the run holds.
//!
//! A page is also checked against the directory: its first key must be the directory's, its
//! keys ascending and below the next page's first key. A directory whose own checksums pass
//! but which is not its run's (only a writer's bug could make one) is refused by the read of
//! a page it disagrees with and by the filter's read, which compares them whole; a next page's
//! first key set too high is the one disagreement the page before it cannot show.
//!
//! An open of a version 5 run reads its directory alone, so every such run starts paged; one
//! that stays within the window holds its fences again once its filter is read, and one left
//! on disk on purpose (past the window, or old in a store only listed) stays paged.

use tradeshard_wal::disk::{Disk, DiskFile};

use super::blocks::BlockCache;
use super::format::FENCE_BYTES;
use super::index::{check_page, page_sum, PAGE_FENCES};
use super::{io, Run};
use crate::error::TradeError;

/// A data block's place in its run: its number, its fence key and the next block's (none
/// after the last block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bounds {
    pub number: u64,
    pub fence: u128,
    pub next: Option<u128>,
}

/// Block `number`'s bounds among fence keys held whole.
pub(super) fn bounds_in(fences: &[u128], number: u64) -> Result<Bounds, &'static str> {
    let fence = *fences.get(number as usize).ok_or("a run block without a fence key")?;
    Ok(Bounds { number, fence, next: fences.get(number as usize + 1).copied() })
}

/// A run's fence keys, in memory or paged out.
pub(super) enum Fences {
    Held(Vec<u128>),
    Paged(Paged),
}

/// What memory keeps of fence keys left on disk.
pub(super) struct Paged {
    /// The first key of each page, and xxh3-64 of each page's bytes.
    firsts: Vec<u128>,
    sums: Vec<u64>,
    /// Fence keys in all (the run's data blocks).
    count: u64,
    /// Left on disk on purpose (past the key window, or old in a store only listed), not only
    /// because an open read the page directory alone.
    kept_on_disk: bool,
}

/// A page of fence keys, read and checked: its number and keys. A walk over blocks in order
/// (a merge, a listing) keeps the page it read last.
pub(super) struct Page {
    number: u64,
    keys: Vec<u128>,
}

impl Fences {
    /// Bytes held in memory.
    pub(super) fn memory_bytes(&self) -> usize {
        match self {
            Fences::Held(fences) => fences.capacity() * FENCE_BYTES as usize,
            Fences::Paged(paged) => paged.firsts.capacity() * 16 + paged.sums.capacity() * 8,
        }
    }

    /// The fence keys of `count` blocks as a page directory gives them (`index.rs`): the
    /// pages' first keys and checksums.
    pub(super) fn from_directory(firsts: Vec<u128>, sums: Vec<u64>, count: u64) -> Fences {
        Fences::Paged(Paged { firsts, sums, count, kept_on_disk: false })
    }

    /// Leaves the fence keys on disk for good, keeping only the pages' first keys and
    /// checksums; false if they were already.
    pub(super) fn page_out(&mut self) -> bool {
        let fences = match self {
            Fences::Paged(paged) => return !std::mem::replace(&mut paged.kept_on_disk, true),
            Fences::Held(fences) => fences,
        };
        let pages = fences.len().div_ceil(PAGE_FENCES);
        let (firsts, sums) = (Vec::with_capacity(pages), Vec::with_capacity(pages));
        let mut paged = Paged { firsts, sums, count: fences.len() as u64, kept_on_disk: true };
        for page in fences.chunks(PAGE_FENCES) {
            paged.firsts.push(page[0]);
            paged.sums.push(page_sum(page));
        }
        *self = Fences::Paged(paged);
        true
    }

    /// Whether they are left on disk on purpose ([`page_out`](Self::page_out)).
    pub(super) fn kept_on_disk(&self) -> bool {
        matches!(self, Fences::Paged(Paged { kept_on_disk: true, .. }))
    }

    /// Holds `fences`, the run's fence keys read whole, unless they are left on disk on purpose.
    pub(super) fn hold(&mut self, fences: Vec<u128>) {
        if !self.kept_on_disk() {
            *self = Fences::Held(fences);
        }
    }

    #[cfg(test)]
    pub(super) fn held(&self) -> &[u128] {
        match self {
            Fences::Held(fences) => fences,
            Fences::Paged(_) => panic!("fence keys paged out"),
        }
    }
}

/// Where the pages' keys are cached: above every data block number (`blocks.rs`).
const PAGE_IN_CACHE: u64 = 1 << 63;

impl<D: Disk> Run<D> {
    /// Whether the run's fence keys are left on disk.
    #[cfg(test)]
    pub(super) fn fences_paged(&self) -> bool {
        matches!(*self.fences.borrow(), Fences::Paged(_))
    }

    /// The block that can hold `key` (the greatest fence key at or below it), or `None` below
    /// the first.
    pub(super) async fn block_for(&self, key: u128, blocks: &BlockCache) -> Result<Option<Bounds>, TradeError> {
        let page = match &*self.fences.borrow() {
            Fences::Held(fences) => {
                let Some(number) = fences.partition_point(|fence| *fence <= key).checked_sub(1) else {
                    return Ok(None);
                };
                return Ok(Some(bounds_in(fences, number as u64).expect("a fence key of a block below the count")));
            }
            Fences::Paged(paged) => match paged.firsts.partition_point(|first| *first <= key).checked_sub(1) {
                Some(page) => page as u64,
                None => return Ok(None),
            },
        };
        let mut read = None;
        let keys = self.page(page, &mut read, Some(blocks)).await?;
        // The page's first key is the one memory holds for it (`check_page`), at or below the
        // key: the index is at least 0.
        let index = keys.partition_point(|fence| *fence <= key) - 1;
        self.bounds_in_page(page, keys, index).map(Some)
    }

    /// Block `number`'s bounds; `page` keeps the page of paged fence keys read last, for a walk
    /// over blocks in order.
    pub(super) async fn bounds(
        &self,
        number: u64,
        page: &mut Option<Page>,
        blocks: Option<&BlockCache>,
    ) -> Result<Bounds, TradeError> {
        if let Fences::Held(fences) = &*self.fences.borrow() {
            let offset = self.footer.index_offset();
            return bounds_in(fences, number).map_err(|reason| self.corrupt(offset, reason));
        }
        let at = number / PAGE_FENCES as u64;
        let keys = self.page(at, page, blocks).await?;
        self.bounds_in_page(at, keys, (number % PAGE_FENCES as u64) as usize)
    }

    /// Bounds of the block at `index` of page `at`, whose keys are `keys`.
    fn bounds_in_page(&self, at: u64, keys: &[u128], index: usize) -> Result<Bounds, TradeError> {
        let number = at * PAGE_FENCES as u64 + index as u64;
        let next_first = match &*self.fences.borrow() {
            Fences::Paged(paged) => paged.firsts.get(at as usize + 1).copied(),
            // Held again while the page was read (the open read the run's filter meanwhile).
            Fences::Held(fences) => fences.get((at as usize + 1) * PAGE_FENCES).copied(),
        };
        let fence =
            *keys.get(index).ok_or_else(|| self.corrupt(self.page_offset(at), "a run block without a fence key"))?;
        Ok(Bounds { number, fence, next: keys.get(index + 1).copied().or(next_first) })
    }

    /// Page `at`'s keys: those of `kept` if it is that page, else from `blocks` or one read,
    /// checked against the page's checksum, and left in `kept`.
    async fn page<'a>(
        &self,
        at: u64,
        kept: &'a mut Option<Page>,
        blocks: Option<&BlockCache>,
    ) -> Result<&'a [u128], TradeError> {
        if kept.as_ref().is_none_or(|page| page.number != at) {
            // What memory keeps of the page, taken before any wait: the fence keys may be held
            // again meanwhile (the open reading the run's filter), and the page is still good.
            let (sum, first, next_first, keys) = match &*self.fences.borrow() {
                Fences::Paged(paged) => {
                    let keys = (paged.count - at * PAGE_FENCES as u64).min(PAGE_FENCES as u64) as usize;
                    let next_first = paged.firsts.get(at as usize + 1).copied();
                    (paged.sums[at as usize], paged.firsts[at as usize], next_first, keys)
                }
                Fences::Held(_) => unreachable!("a page of fence keys held in memory"),
            };
            let offset = self.page_offset(at);
            let cached = blocks.and_then(|blocks| blocks.get(self.footer.id, PAGE_IN_CACHE | at));
            let bytes: Vec<u8> = match &cached {
                Some(bytes) => bytes.to_vec(),
                None => {
                    let len = keys * FENCE_BYTES as usize;
                    let read =
                        self.file.read_at(offset, len).await.map_err(|e| io(&self.disk, &self.name, "read", e))?;
                    if read.len() != len {
                        return Err(self.corrupt(offset + read.len() as u64, "a run file cut short"));
                    }
                    read.to_vec()
                }
            };
            let keys = check_page(&bytes, sum, first, next_first).map_err(|reason| self.corrupt(offset, reason))?;
            if cached.is_none() {
                if let Some(blocks) = blocks {
                    blocks.insert(self.footer.id, PAGE_IN_CACHE | at, &bytes);
                }
            }
            *kept = Some(Page { number: at, keys });
        }
        Ok(&kept.as_ref().expect("kept above").keys)
    }

    /// Offset in the file of page `at` of fence keys.
    fn page_offset(&self, at: u64) -> u64 {
        self.footer.fences_offset() + at * (PAGE_FENCES as u64 * FENCE_BYTES)
    }
}
