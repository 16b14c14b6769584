//! The table of trades on disk against the checkpoints that vouch for it, on the simulated
//! disk: a table written by a checkpoint whose file never became durable holds records newer
//! than the checkpoint an open starts from, and the open must apply each change of the log
//! exactly once (no refund counted twice, every refund's receipt as it was); writes sent
//! together to a trade on disk are checked in the order they came; a table missing under a
//! checkpoint that needs it, a missing record, a bit flipped in a record: each refused with the
//! table's path and the record's offset, by the open when its replay needs the record and by
//! the read of the trade otherwise. Blocks of old trades frozen into compressed copies are in
//! `shard_frozen_blocks.rs`.

use tradeshard_shard::{Command, Move, Shard, TradeError, TradeId, TradeStatus, Upkeep};
use tradeshard_tests::{
    call, damage_in, new_trade, newest_checkpoint, paid_from, rolling_shard_config, run, submit, upkeep_on_request,
};
use tradeshard_wal::disk::{Disk, SimDisk};

fn upkeep() -> Upkeep {
    upkeep_on_request(false, None)
}

async fn open(disk: &SimDisk) -> Result<Shard<SimDisk>, TradeError> {
    Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep()).await
}

/// `n` paid trades of buyer 1, then a checkpoint; returns their ids.
async fn paid_trades(shard: &Shard<SimDisk>, n: u64) -> Vec<TradeId> {
    let ids = paid_from(shard, 0, n).await;
    shard.checkpoint().await.unwrap();
    ids
}

/// A disk with `n` paid trades and a checkpoint, and its shard reopened on it with a cache of
/// `cache_bytes` (0: none).
async fn reopened_with_paid_trades(n: u64, cache_bytes: usize) -> (SimDisk, Shard<SimDisk>, Vec<TradeId>) {
    let disk = SimDisk::new();
    let shard = open(&disk).await.unwrap();
    let ids = paid_trades(&shard, n).await;
    drop(shard);
    let shard = Shard::open_with(disk.clone(), rolling_shard_config(), cache_bytes, upkeep()).await.unwrap();
    (disk, shard, ids)
}

/// Where the table of trades keeps the record of `counter` (`docs/FORMAT.md`).
fn record_offset(counter: u64) -> u64 {
    // Four 128-byte records a 512-byte sector, as docs/FORMAT.md lays them out.
    let offset = counter / 4 * 512 + counter % 4 * 128;
    assert_eq!(offset, tradeshard_shard::trade_record_offset(counter));
    offset
}

/// Waits until the newest trades came back into memory after an open (in the background,
/// between requests), a bounded number of turns.
async fn warmed(shard: &Shard<SimDisk>) {
    let mut turns = 0;
    while shard.stats().checkpoints.warming {
        turns += 1;
        assert!(turns < 10_000, "the newest trades never came back: {}", shard.stats().trades_in_memory);
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
}

#[test]
fn a_table_newer_than_the_checkpoint_applies_each_change_once() {
    // Trades a chunk apart are read one at a time by the open; trades of one chunk (of 8) make
    // it load the chunk whole.
    for (old, other) in [(3, 20), (8, 9)] {
        run(table_newer(old, other));
    }
}

/// One case of the test above: refunds of trades `old` and `other` (of 100) after the first
/// checkpoint, written to the table by a second one whose file is then lost.
async fn table_newer(old: usize, other: usize) {
    let disk = SimDisk::new();
    let shard = open(&disk).await.unwrap();
    let ids = paid_trades(&shard, 100).await;
    let (old, other, new) = (ids[old], ids[other], ids[97]);
    // Two refunds on a trade that left memory, one on another and one on a trade still in
    // memory; the checkpoint writes them to the table, then its file is lost.
    for (id, number, amount) in [(old, "A", 100), (old, "B", 250), (other, "O", 40), (new, "C", 70)] {
        submit(&shard, Command::Refund { id, amount, refund_no: number.into() }).await;
    }
    shard.checkpoint().await.unwrap();
    // A chunk of its own: the chunks of `old` and `other` keep the count of trades above.
    submit(&shard, Command::Move { id: ids[60], to: Move::Settle }).await;
    drop(shard);
    disk.remove(&newest_checkpoint(&disk)).await.unwrap();
    disk.sync_dir().await.unwrap();

    let shard = open(&disk).await.unwrap();
    assert!(shard.stats().opened.replayed_records >= 5, "the open replayed the refunds");
    for (id, status, refunded) in [
        (old, TradeStatus::Refunded, 350),
        (other, TradeStatus::Refunded, 40),
        (new, TradeStatus::Refunded, 70),
        (ids[60], TradeStatus::Settled, 0),
    ] {
        let trade = call(|done| shard.get(id, done)).await.unwrap();
        assert_eq!((trade.status, trade.refunded_amount), (status, refunded), "{id}");
    }
    // Each repeated refund answers its own receipt: the refunded total it left.
    for (id, number, amount, after) in
        [(old, "A", 100, 100), (old, "B", 250, 350), (other, "O", 40, 40), (new, "C", 70, 70)]
    {
        let again = submit(&shard, Command::Refund { id, amount, refund_no: number.into() }).await;
        assert_eq!((again.replayed, again.refunded_amount), (true, after), "refund {number}");
    }
    // And the trade still takes new changes, counted from the right total.
    let more = submit(&shard, Command::Refund { id: old, amount: 650, refund_no: "D".into() }).await;
    assert_eq!(more.refunded_amount, 1_000);
    let over = call(|done| shard.submit(Command::Refund { id: old, amount: 1, refund_no: "E".into() }, done)).await;
    assert!(over.is_err(), "nothing is left to refund");
}

#[test]
fn the_newest_trades_come_back_into_memory_after_the_open() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let ids = paid_trades(&shard, 100).await;
        let held = shard.stats().trades_in_memory;
        assert!((8..100).contains(&held), "the oldest trades left memory: {held}");
        drop(shard);
        let shard = open(&disk).await.unwrap();
        warmed(&shard).await;
        assert_eq!(shard.stats().trades_in_memory, held, "the budget's worth, no more");
        assert!(shard.stats().checkpoints.chunks_warmed > 0);
        // A change to a trade in memory reads nothing; one to a trade that left it reads its record.
        let reads = shard.stats().checkpoints.table_reads;
        let newest = submit(&shard, Command::Move { id: ids[99], to: Move::Settle }).await;
        assert_eq!(newest.status, TradeStatus::Settled);
        assert_eq!(shard.stats().checkpoints.table_reads, reads, "the newest trade is in memory");
        let oldest = submit(&shard, Command::Move { id: ids[0], to: Move::Settle }).await;
        assert_eq!(oldest.status, TradeStatus::Settled);
        assert_eq!(shard.stats().checkpoints.table_reads, reads + 1, "the oldest is read from the table");
    });
}

/// Changes, creates and checkpoints (which evict) while the newest trades come back into
/// memory, with reads completing after a seeded number of yields: every trade ends as it was
/// last acknowledged, in memory and after a reopen.
#[test]
fn work_during_the_warm_after_an_open_is_kept() {
    for seed in 0..20 {
        run(work_during_the_warm(seed));
    }
}

async fn work_during_the_warm(seed: u64) {
    let disk = SimDisk::new();
    let shard = open(&disk).await.unwrap();
    let mut ids = paid_trades(&shard, 100).await;
    drop(shard);
    disk.slow_reads(seed);
    let shard = open(&disk).await.unwrap();
    let mut expected: Vec<TradeStatus> = vec![TradeStatus::Paid; ids.len()];
    let mut step = 0;
    while shard.stats().checkpoints.warming || step < 12 {
        // The newest trades (those coming back), an old one, and a new one each step.
        for at in [99 - step % 30, (step * 7) % 40] {
            if expected[at] == TradeStatus::Paid {
                let receipt = submit(&shard, Command::Move { id: ids[at], to: Move::Settle }).await;
                assert_eq!(receipt.status, TradeStatus::Settled);
                expected[at] = TradeStatus::Settled;
            }
        }
        let trade = new_trade(1, 1_000 + step as u64, 1_000).validate().unwrap();
        ids.push(submit(&shard, Command::Create { trade, logical_shard: 1 }).await.id);
        expected.push(TradeStatus::Created);
        if step % 3 == 0 {
            shard.checkpoint().await.unwrap();
        }
        step += 1;
        assert!(step < 10_000, "the warm never ended");
    }
    assert!(shard.stats().checkpoints.warm_failures == 0);
    let check = |shard: Shard<SimDisk>| {
        let (ids, expected) = (ids.clone(), expected.clone());
        async move {
            for (id, status) in ids.iter().zip(&expected) {
                let trade = call(|done| shard.get(*id, done)).await.unwrap();
                assert_eq!(trade.status, *status, "{id} (seed {seed})");
            }
            shard
        }
    };
    let shard = check(shard).await;
    shard.checkpoint().await.unwrap();
    drop(shard);
    check(open(&disk).await.unwrap()).await;
}

/// Waits, a bounded number of turns, until the read `SimDisk::hold_next_read` armed is held.
async fn read_under_way(disk: &SimDisk) {
    let mut turns = 0;
    while !disk.read_held() {
        turns += 1;
        assert!(turns < 10_000, "the held read never started");
        futures_lite::future::yield_now().await;
    }
}

/// 40 new trades, then a checkpoint that writes the table and lets trades go; their ids.
async fn made_and_let_go(shard: &Shard<SimDisk>) -> Vec<TradeId> {
    let mut made = Vec::new();
    for order in 0..40 {
        let trade = new_trade(1, 1_000 + order, 1_000).validate().unwrap();
        made.push(submit(shard, Command::Create { trade, logical_shard: 1 }).await.id);
    }
    let evicted = shard.stats().checkpoints.trades_evicted;
    shard.checkpoint().await.unwrap();
    assert!(shard.stats().checkpoints.trades_evicted > evicted, "the checkpoint let trades go");
    made
}

/// A chunk coming back into memory whose read is overtaken by a checkpoint that writes the
/// table and lets trades of that chunk go again: what the read found is older than the table
/// (a trade changed, trades made), so the chunk is read again, and no trade goes back to what
/// it was. The read is held in flight while the work happens (`SimDisk::hold_next_read`).
#[test]
fn a_chunk_read_overtaken_by_an_eviction_is_read_again() {
    const SETTLED_FROM: usize = 72;
    run(async {
        let (disk, shard, ids) = reopened_with_paid_trades(100, 0).await;
        // The warm's next read of a chunk waits.
        disk.hold_next_read("trades.table");
        read_under_way(&disk).await;
        // The trades of the chunk being read are among these (the open may have warmed the
        // newest chunk before the hold).
        for id in &ids[SETTLED_FROM..] {
            let settled = submit(&shard, Command::Move { id: *id, to: Move::Settle }).await;
            assert_eq!(settled.status, TradeStatus::Settled);
        }
        let made = made_and_let_go(&shard).await;
        disk.release_reads();
        warmed(&shard).await;
        assert_eq!(shard.stats().checkpoints.warm_failures, 0);
        let check = |shard: Shard<SimDisk>| {
            let (ids, made) = (ids.clone(), made.clone());
            async move {
                let expected = ids.iter().enumerate().map(|(at, id)| match at >= SETTLED_FROM {
                    true => (*id, TradeStatus::Settled),
                    false => (*id, TradeStatus::Paid),
                });
                for (id, status) in expected.chain(made.iter().map(|id| (*id, TradeStatus::Created))) {
                    assert_eq!(call(|done| shard.get(id, done)).await.unwrap().status, status, "{id}");
                }
                shard
            }
        };
        drop(check(shard).await);
        check(open(&disk).await.unwrap()).await;
    });
}

/// A read of a cold trade (a cache miss) overtaken by a change to that trade and a checkpoint
/// that writes it to the table and lets it go: what the read found is older than the table, and
/// caching it would serve the old state from then on; the trade is read again. The read is
/// held in flight while the work happens.
#[test]
fn a_cold_read_overtaken_by_an_eviction_is_read_again() {
    run(async {
        let (disk, shard, ids) = reopened_with_paid_trades(100, 1 << 20).await;
        warmed(&shard).await;
        let id = ids[0];
        disk.hold_next_read("trades.table");
        let (reply, answer) = tradeshard_shard::reply::channel();
        shard.get(id, reply);
        read_under_way(&disk).await;
        assert_eq!(submit(&shard, Command::Move { id, to: Move::Settle }).await.status, TradeStatus::Settled);
        made_and_let_go(&shard).await;
        disk.release_reads();
        answer.await.expect("answered").unwrap();
        // Whatever the first read answered (it began before the change), what it cached is now.
        assert_eq!(call(|done| shard.get(id, done)).await.unwrap().status, TradeStatus::Settled);
    });
}

#[test]
fn a_missing_table_under_a_checkpoint_is_refused() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        paid_trades(&shard, 40).await;
        drop(shard);
        disk.remove("trades.table").await.unwrap();
        disk.sync_dir().await.unwrap();
        damage_in(open(&disk).await, "trades.table");
    });
}

/// A table cut shorter than the last trade its checkpoint says it holds is refused at the
/// open, naming the table and its length, before memory lays out chunks up to that trade.
#[test]
fn a_table_shorter_than_its_checkpoint_says_is_refused() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        paid_trades(&shard, 40).await;
        drop(shard);
        let table = disk.read_file("trades.table").unwrap();
        assert!(table.len() >= 4096, "the table holds a page");
        disk.put_file("trades.table", &table[..table.len() - 4096]);
        disk.sync_dir().await.unwrap();
        assert_eq!(damage_in(open(&disk).await, "trades.table"), table.len() as u64 - 4096);
    });
}

#[test]
fn a_flipped_bit_in_a_record_the_replay_reads_fails_the_open_with_its_offset() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let ids = paid_trades(&shard, 40).await;
        // A change after the checkpoint: the replay reads the trade's record to apply it.
        let id = *ids.last().unwrap();
        submit(&shard, Command::Move { id, to: Move::Settle }).await;
        drop(shard);
        let offset = record_offset(id.counter());
        disk.flip_bit("trades.table", offset + 20, 2);
        assert_eq!(damage_in(open(&disk).await, "trades.table"), offset);
    });
}

#[test]
fn a_flipped_bit_in_a_record_no_replay_needs_is_reported_by_the_read_of_its_trade() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let ids = paid_trades(&shard, 40).await;
        drop(shard);
        // The open reads no record of the table; the newest trades come back after it.
        let (damaged, sound) = (*ids.last().unwrap(), ids[0]);
        let offset = record_offset(damaged.counter());
        disk.flip_bit("trades.table", offset + 20, 2);
        let shard = open(&disk).await.unwrap();
        assert_eq!(damage_in(call(|done| shard.get(damaged, done)).await, "trades.table"), offset);
        let trade = call(|done| shard.get(sound, done)).await.unwrap();
        assert_eq!(trade.status, TradeStatus::Paid);
    });
}

#[test]
fn writes_sent_together_to_a_trade_on_disk_are_checked_in_order() {
    for seed in 0..20 {
        run(writes_in_order(seed));
    }
}

/// One case of the test above: reads complete after a seeded number of yields, so the reads
/// of a trade's record for several writes would complete in any order.
async fn writes_in_order(seed: u64) {
    {
        let disk = SimDisk::new();
        disk.slow_reads(seed);
        let shard = open(&disk).await.unwrap();
        let mut ids = Vec::new();
        for order in 0..100 {
            let trade = new_trade(1, order, 1_000).validate().unwrap();
            ids.push(submit(&shard, Command::Create { trade, logical_shard: 1 }).await.id);
        }
        shard.checkpoint().await.unwrap();
        let id = ids[3];
        assert!(shard.stats().trades_in_memory < 100, "the oldest trades left memory");
        // Pay, refund, refund again under another number, settle: each valid only after the one
        // before it, all sent before any is answered.
        let commands = [
            Command::Move { id, to: Move::Pay },
            Command::Refund { id, amount: 100, refund_no: "A".into() },
            Command::Refund { id, amount: 200, refund_no: "B".into() },
            Command::Move { id, to: Move::Close },
        ];
        let answers: Vec<_> = commands
            .into_iter()
            .map(|command| {
                let (reply, answer) = tradeshard_shard::reply::channel();
                shard.submit(command, reply);
                answer
            })
            .collect();
        let mut results = Vec::new();
        for answer in answers {
            results.push(answer.await.unwrap());
        }
        let states: Vec<_> =
            results[..3].iter().map(|r| r.as_ref().map(|r| (r.status, r.refunded_amount)).unwrap()).collect();
        assert_eq!(states, [(TradeStatus::Paid, 0), (TradeStatus::Refunded, 100), (TradeStatus::Refunded, 300)]);
        assert!(results[3].is_err(), "a close after the refunds is refused: {:?}", results[3]);
    }
}

#[test]
fn a_missing_record_of_a_trade_on_disk_is_damage_not_a_missing_trade() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let ids = paid_trades(&shard, 100).await;
        drop(shard);
        let counter = ids[3].counter();
        let offset = record_offset(counter);
        disk.overwrite("trades.table", offset, &[0u8; tradeshard_shard::TRADE_RECORD_BYTES]);
        let shard = open(&disk).await.unwrap();
        // Reported, not read as no trade.
        assert_eq!(damage_in(call(|done| shard.get(ids[3], done)).await, "trades.table"), offset);
    });
}

/// A trade that left memory is read whole with one device read when its order number and memo
/// fit in its record of the table, and with two (the record, then the store of created parts)
/// when they do not; the shard's stats count each where it went.
#[test]
fn a_cold_trade_is_one_device_read_when_its_created_part_is_inline() {
    run(async {
        let (disk, shard, ids) = reopened_with_paid_trades(100, 0).await;
        warmed(&shard).await;
        assert!(shard.stats().checkpoints.table_page_reads > 0, "the newest trades' pages came back after the open");
        // `new_trade` gives every third order (order % 3 == 2) a memo too long to be inline.
        for (order, reads) in [(3, 1), (4, 1), (5, 2), (8, 2)] {
            let (before, counted) = (disk.ops(), shard.stats().checkpoints);
            let trade = call(|done| shard.get(ids[order], done)).await.unwrap();
            assert_eq!(disk.ops() - before, reads, "device reads for order {order}");
            let now = shard.stats().checkpoints;
            assert_eq!(now.table_reads - counted.table_reads, 1, "one read of the table for order {order}");
            assert_eq!(now.parts_reads - counted.parts_reads, reads - 1, "reads of created parts for order {order}");
            assert_eq!(shard.stats().wal.point_device_reads, 0, "no point read of the log");
            let sent = new_trade(1, order as u64, 1_000);
            assert_eq!((trade.merchant_order_no, trade.memo), (sent.merchant_order_no, sent.memo));
            assert_eq!(trade.status, TradeStatus::Paid);
        }
    });
}

/// Cold trades brought back to be changed stay in memory until a checkpoint writes them: they
/// count toward the memory held for recent work (what `Upkeep::checkpoint_memory_bytes` bounds),
/// and a checkpoint gives it back.
#[test]
fn cold_trades_changed_count_toward_the_memory_held_for_recent_work() {
    run(async {
        let (_disk, shard, ids) = reopened_with_paid_trades(2_000, 0).await;
        warmed(&shard).await;
        let held = || shard.stats().checkpoints.held_bytes;
        let (held_before, in_memory_before) = (held(), shard.stats().trades_in_memory);
        // The oldest trades are cold: settling them brings them back.
        for &id in &ids[..1_000] {
            assert_eq!(submit(&shard, Command::Move { id, to: Move::Settle }).await.status, TradeStatus::Settled);
        }
        let thawed = shard.stats().trades_in_memory - in_memory_before;
        assert!(thawed >= 900, "the settled trades came back into memory: {thawed}");
        // A trade entry's size at least (`retention.rs`), each.
        assert!(held() - held_before >= thawed * 88, "{} held for {thawed} thawed", held() - held_before);
        shard.checkpoint().await.unwrap();
        assert!(held() <= held_before, "the checkpoint wrote them and let them go: {} > {held_before}", held());
        assert_eq!(call(|done| shard.get(ids[0], done)).await.unwrap().status, TradeStatus::Settled);
    });
}

/// A record whose checksum holds but whose created part lies at an offset no store reaches
/// (near 2^64, where adding its length wraps): its read is refused as damage at its offset.
#[test]
fn a_record_pointing_past_any_store_is_damage_not_an_overflow() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let ids = paid_trades(&shard, 100).await;
        drop(shard);
        // Order 5 has a memo too long to be inline: its record points into the store.
        let counter = ids[5].counter();
        let offset = record_offset(counter);
        let table = disk.read_file("trades.table").unwrap();
        let mut record = table[offset as usize..offset as usize + 128].to_vec();
        record[48..56].copy_from_slice(&(u64::MAX - 4).to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64_with_seed(&record[..124], counter) as u32;
        record[124..128].copy_from_slice(&sum.to_le_bytes());
        disk.overwrite("trades.table", offset, &record);
        let shard = open(&disk).await.unwrap();
        assert_eq!(damage_in(call(|done| shard.get(ids[5], done)).await, "trades.table"), offset);
        assert_eq!(call(|done| shard.get(ids[0], done)).await.unwrap().status, TradeStatus::Paid);
    });
}
