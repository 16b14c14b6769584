//! Blocks of the table frozen into compressed copies (`trade_file/frozen.rs`,
//! `trade_file/freeze.rs`), on the simulated disk: old trades read back from their copies once
//! their pages are punched out of the table, change again (the table's page wins) and survive a
//! reopen; power loss at every step of a checkpoint that freezes loses nothing; an open that
//! passes over a damaged checkpoint still finds the copies the newer one made; damage to a copy
//! or to the index is reported with its path and offset.

use tradeshard_shard::{Command, Move, Shard, TradeError, TradeId, TradeStatus, Upkeep};
use tradeshard_tests::{
    call, damage_in, new_trade, newest_checkpoint, paid_from, rolling_shard_config, run, submit, upkeep_on_request,
};
use tradeshard_wal::disk::SimDisk;

async fn open(disk: &SimDisk) -> Result<Shard<SimDisk>, TradeError> {
    Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep_on_request(false, None)).await
}

/// Trades in one block of the table (docs/FORMAT.md); the upkeep here holds 32 in memory, so
/// every block older than those freezes.
const BLOCK_RECORDS: u64 = 128;

/// Every trade of `ids` (orders from 0) reads back whole, in the status `status_of` says.
async fn check_all(shard: &Shard<SimDisk>, ids: &[TradeId], status_of: impl Fn(usize) -> TradeStatus) {
    for (order, id) in ids.iter().enumerate() {
        let trade = call(|done| shard.get(*id, done)).await.unwrap_or_else(|e| panic!("{id} unreadable: {e}"));
        let sent = new_trade(1, order as u64, 1_000);
        assert_eq!((&trade.merchant_order_no, &trade.memo), (&sent.merchant_order_no, &sent.memo), "{id}");
        assert_eq!(trade.status, status_of(order), "{id}");
    }
}

fn table_record_bytes(disk: &SimDisk, counter: u64) -> Vec<u8> {
    let table = disk.read_file("trades.table").unwrap();
    let at = tradeshard_shard::trade_record_offset(counter) as usize;
    table[at..at + 128].to_vec()
}

#[test]
fn old_trades_read_back_from_their_copies_and_change_again() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let ids = paid_from(&shard, 0, 600).await;
        shard.checkpoint().await.unwrap();
        // Counters 1..=600 with 32 held in memory: blocks 0..4 hold trades older than those.
        let frozen = shard.stats().checkpoints.frozen_blocks;
        assert_eq!(frozen, (601 - 32) / BLOCK_RECORDS);
        assert_eq!(table_record_bytes(&disk, ids[10].counter()), vec![0u8; 128], "the page was punched out");
        let copies = disk.file_len("trades.frozen").unwrap();
        assert!(copies < frozen * BLOCK_RECORDS * 128 / 3, "{copies} bytes of copies for {frozen} blocks");
        check_all(&shard, &ids, |_| TradeStatus::Paid).await;
        assert!(shard.stats().checkpoints.frozen_reads > 0, "old trades were read from their copies");
        // Changes to trades of frozen blocks: their pages come back to the table.
        for &order in &[10usize, 11, 300] {
            submit(&shard, Command::Move { id: ids[order], to: Move::Settle }).await;
        }
        shard.checkpoint().await.unwrap();
        assert_ne!(table_record_bytes(&disk, ids[10].counter()), vec![0u8; 128], "the changed trade's page is back");
        let settled = |order: usize| match order {
            10 | 11 | 300 => TradeStatus::Settled,
            _ => TradeStatus::Paid,
        };
        check_all(&shard, &ids, settled).await;
        drop(shard);
        let shard = open(&disk).await.unwrap();
        assert_eq!(shard.stats().checkpoints.frozen_blocks, frozen);
        check_all(&shard, &ids, settled).await;
        // A repeated create finds the old trade by its order number.
        let again = new_trade(1, 20, 1_000).validate().unwrap();
        let repeat = submit(&shard, Command::Create { trade: again, logical_shard: 1 }).await;
        assert!(repeat.replayed && repeat.id == ids[20]);
    });
}

/// Power loss at each step of a checkpoint that freezes blocks, and of the one after its
/// reopen: every acknowledged trade reads back as it was, and the blocks freeze in the end.
#[test]
fn power_loss_at_every_step_of_a_freezing_checkpoint_loses_nothing() {
    run(async {
        let mut completed = false;
        let mut step = 0;
        while !completed {
            step += 1;
            assert!(step < 500, "the checkpoint never completed");
            let disk = SimDisk::new();
            let shard = open(&disk).await.unwrap();
            let ids = paid_from(&shard, 0, 300).await;
            disk.crash_at_op(disk.ops() + step);
            completed = shard.checkpoint().await.is_ok();
            drop(shard);
            disk.crash(step);
            let shard = open(&disk).await.unwrap();
            check_all(&shard, &ids, |_| TradeStatus::Paid).await;
            shard.checkpoint().await.unwrap();
            assert_eq!(shard.stats().checkpoints.frozen_blocks, (301 - 32) / BLOCK_RECORDS, "step {step}");
            check_all(&shard, &ids, |_| TradeStatus::Paid).await;
            drop(shard);
            let shard = open(&disk).await.unwrap();
            check_all(&shard, &ids, |_| TradeStatus::Paid).await;
        }
    });
}

/// A stop between a freeze's index and its punch leaves the frozen blocks' pages in the
/// table; the first checkpoint after the open gives back those holding only what the copies
/// hold (here: trades created before the checkpoint the open loads, so not replayed and not
/// written again).
#[test]
fn a_stop_between_a_freezes_index_and_its_punch_leaves_no_pages_behind() {
    run(async {
        let mut completed = false;
        let mut step = 0;
        let mut leftovers = 0;
        while !completed {
            step += 1;
            assert!(step < 500, "the checkpoint never completed");
            let disk = SimDisk::new();
            let shard = open(&disk).await.unwrap();
            let mut ids = paid_from(&shard, 0, 300).await;
            shard.checkpoint().await.unwrap();
            assert_eq!(shard.stats().checkpoints.frozen_blocks, 2);
            ids.extend(paid_from(&shard, 300, 300).await);
            disk.crash_at_op(disk.ops() + step);
            completed = shard.checkpoint().await.is_ok();
            drop(shard);
            disk.crash(step);
            let shard = open(&disk).await.unwrap();
            shard.checkpoint().await.unwrap();
            assert_eq!(shard.stats().checkpoints.frozen_blocks, (601 - 32) / BLOCK_RECORDS, "step {step}");
            leftovers += shard.stats().checkpoints.frozen_leftover_pages_punched;
            // Counters 1..=287 fill pages of trades from before the first checkpoint.
            for counter in 1..288 {
                assert_eq!(table_record_bytes(&disk, counter), vec![0u8; 128], "step {step}: counter {counter} left");
            }
            check_all(&shard, &ids, |_| TradeStatus::Paid).await;
        }
        assert!(leftovers > 0, "a stop came between a freeze's index and its punch");
    });
}

/// The newest checkpoint froze a block and punched it out; damaged, it is passed over for the
/// one before, which counts fewer blocks: the open takes every index entry that checks, so
/// the punched trades still read back.
#[test]
fn an_open_passing_over_a_damaged_checkpoint_still_finds_the_newer_copies() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let mut ids = paid_from(&shard, 0, 300).await;
        shard.checkpoint().await.unwrap();
        assert_eq!(shard.stats().checkpoints.frozen_blocks, 2);
        ids.extend(paid_from(&shard, 300, 200).await);
        shard.checkpoint().await.unwrap();
        assert_eq!(shard.stats().checkpoints.frozen_blocks, 3);
        drop(shard);
        assert_eq!(table_record_bytes(&disk, 2 * BLOCK_RECORDS + 5), vec![0u8; 128]);
        disk.flip_bit(&newest_checkpoint(&disk), 100, 3);
        let shard = open(&disk).await.unwrap();
        assert!(shard.stats().opened.passed_over_damaged_checkpoint);
        assert_eq!(shard.stats().checkpoints.frozen_blocks, 3);
        check_all(&shard, &ids, |_| TradeStatus::Paid).await;
    });
}

#[test]
fn a_flipped_bit_in_a_copy_is_reported_by_the_read_of_its_trade() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let ids = paid_from(&shard, 0, 300).await;
        shard.checkpoint().await.unwrap();
        drop(shard);
        // Index entry 1 (32 bytes each): the copy of block 1 starts at its first 8 bytes.
        let index = disk.read_file("trades.frozen.idx").unwrap();
        let copy_at = u64::from_le_bytes(index[32..40].try_into().unwrap());
        disk.flip_bit("trades.frozen", copy_at + 3, 5);
        let shard = open(&disk).await.unwrap();
        let in_block_1 = ids[(BLOCK_RECORDS + 7 - 1) as usize];
        assert_eq!(damage_in(call(|done| shard.get(in_block_1, done)).await, "trades.frozen"), copy_at);
        // The other block reads on.
        assert_eq!(call(|done| shard.get(ids[7], done)).await.unwrap().status, TradeStatus::Paid);
    });
}

#[test]
fn a_damaged_index_entry_a_checkpoint_counts_fails_the_open_with_its_offset() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        paid_from(&shard, 0, 300).await;
        shard.checkpoint().await.unwrap();
        drop(shard);
        disk.flip_bit("trades.frozen.idx", 32 + 9, 0);
        assert_eq!(damage_in(open(&disk).await, "trades.frozen.idx"), 32);
    });
}

/// An open reads the index from the page of the first block its checkpoint does not count: an
/// entry damaged in an earlier page does not fail the open, only the reads of its own block's
/// trades, with its offset; every other trade reads back, from cached pages or one read of its
/// page. The pages read lately are kept within `Upkeep::frozen_index_cache_bytes`: with the
/// default, a cold trade of an early page costs its index page's read once (after the table's
/// punched page, before its copy), and not again; with no memory for them, every time.
#[test]
fn an_open_reads_the_index_from_its_checkpoints_last_page_and_the_rest_when_asked_within_a_budget() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        // 132 blocks: a whole page of 128 index entries (4 KiB) and four on the next.
        let ids = paid_from(&shard, 0, 16_928).await;
        shard.checkpoint().await.unwrap();
        assert_eq!(shard.stats().checkpoints.frozen_blocks, 132);
        drop(shard);
        disk.flip_bit("trades.frozen.idx", 5 * 32 + 9, 0);
        let shard = open(&disk).await.unwrap();
        assert_eq!(shard.stats().checkpoints.frozen_blocks, 132);
        let in_block = |block: u64| ids[(block * BLOCK_RECORDS + 7 - 1) as usize];
        for _ in 0..2 {
            assert_eq!(damage_in(call(|done| shard.get(in_block(5), done)).await, "trades.frozen.idx"), 5 * 32);
        }
        for block in [0, 4, 6, 100, 127, 128, 131] {
            let trade = call(|done| shard.get(in_block(block), done)).await;
            assert_eq!(trade.unwrap_or_else(|e| panic!("block {block}: {e}")).status, TradeStatus::Paid);
        }
        let other: Vec<TradeId> = ids.iter().enumerate().filter(|(n, _)| n / 128 != 5).map(|(_, id)| *id).collect();
        for id in other.iter().step_by(97) {
            assert_eq!(call(|done| shard.get(*id, done)).await.unwrap().status, TradeStatus::Paid);
        }
        // The entry mended: a page holding a damaged entry is not kept.
        drop(shard);
        disk.flip_bit("trades.frozen.idx", 5 * 32 + 9, 0);
        for (cache_bytes, reads) in [(4 << 20, [3, 2, 2]), (0, [3, 3, 3])] {
            let upkeep = Upkeep { frozen_index_cache_bytes: cache_bytes, ..upkeep_on_request(false, None) };
            let shard = Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep).await.unwrap();
            for (block, want) in [3, 50, 3].into_iter().zip(reads) {
                let ops = disk.ops();
                assert_eq!(call(|done| shard.get(in_block(block), done)).await.unwrap().status, TradeStatus::Paid);
                assert_eq!(disk.ops() - ops, want, "block {block} with {cache_bytes} bytes of pages");
            }
        }
    });
}
