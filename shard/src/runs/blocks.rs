//! A shard's run blocks read lately, kept in memory up to a byte budget
//! (`Upkeep::run_cache_bytes`), so that what is asked again (a user's list, whose newest
//! entries are spread over every run; a retried create's order key) costs no device read.
//!
//! A block is kept as the run file holds it, 4 KiB, and checked again at every use as a read
//! from the device is (`format::check_block`): a few microseconds against a device read's
//! hundred, and a quarter of the memory its decoded entries take. Runs are never changed and
//! their ids never reused in a shard, so an entry is never stale: one of a run removed ages
//! out. Eviction is the engine's S3-FIFO (`tradeshard_cache`), which a merge's or a scan's
//! one-time reads pass through without flushing the blocks read often.

use std::cell::RefCell;
use std::rc::Rc;

use tradeshard_cache::{Cache, CacheStats};

use super::format::BLOCK;

/// A block's place: its run's id and its number in the run (or, for a page of fence keys
/// left on disk, the page's number with the top bit set: `fences.rs`).
type BlockAt = (u64, u64);

/// The blocks of one shard's runs, by run id and block number.
pub(crate) struct BlockCache {
    blocks: RefCell<Cache<BlockAt, Rc<[u8]>>>,
}

impl BlockCache {
    pub(crate) fn new(budget_bytes: u64) -> BlockCache {
        let budget = usize::try_from(budget_bytes).unwrap_or(usize::MAX);
        BlockCache { blocks: RefCell::new(Cache::new(budget)) }
    }

    /// Block `number` of run `run`, if kept.
    pub(crate) fn get(&self, run: u64, number: u64) -> Option<Rc<[u8]>> {
        self.blocks.borrow_mut().get(&(run, number))
    }

    /// Keeps block `number` of run `run`, as read and checked (a page of fence keys may be
    /// shorter than a block).
    pub(crate) fn insert(&self, run: u64, number: u64, block: &[u8]) {
        debug_assert!(block.len() <= BLOCK);
        self.blocks.borrow_mut().insert((run, number), Rc::from(block), block.len());
    }

    pub(crate) fn stats(&self) -> CacheStats {
        self.blocks.borrow().stats()
    }
}

#[cfg(test)]
mod tests {
    use tradeshard_wal::disk::Fault;

    use super::BlockCache;
    use crate::runs::tests::{five_blocks, no_cache, run, PREFIX, VALUE_BYTES};
    use crate::runs::Run;

    #[test]
    fn a_block_read_once_is_read_again_from_memory_and_a_failed_read_keeps_nothing() {
        run(async {
            let (disk, entries, _) = five_blocks().await;
            let run = Run::open(&disk, PREFIX, 3, VALUE_BYTES).await.unwrap();
            run.read_filter().await.unwrap();
            let in_block = |n: usize| *entries.iter().find(|entry| entry.0 == run.fences.borrow().held()[n]).unwrap();
            let blocks = BlockCache::new(1 << 20);
            // The read of block 2 fails: nothing is kept, and the next get reads the device.
            disk.fail_op(disk.ops() + 1, Fault::Eio);
            assert!(run.get(in_block(2).0, &blocks).await.is_err());
            assert_eq!(blocks.stats().entries, 0);
            let ops = disk.ops();
            assert_eq!(run.get(in_block(2).0, &blocks).await.unwrap(), Some(in_block(2).1));
            assert_eq!(disk.ops(), ops + 1, "one read");
            for _ in 0..3 {
                assert_eq!(run.get(in_block(2).0, &blocks).await.unwrap(), Some(in_block(2).1));
            }
            let keys: Vec<u128> = run.keys_down(0, u128::MAX, 5, &blocks).await.unwrap();
            assert_eq!(disk.ops(), ops + 2, "the gets again from memory, the listing's last block one read");
            assert_eq!(keys, entries.iter().rev().take(5).map(|entry| entry.0).collect::<Vec<_>>());
            // No budget, no blocks kept.
            let none = no_cache();
            run.get(in_block(2).0, &none).await.unwrap();
            run.get(in_block(2).0, &none).await.unwrap();
            assert_eq!(disk.ops(), ops + 4);
        });
    }
}
