//! The cache of whole trades that callers read on their own threads (`shard/src/trade_cache.rs`):
//! what another thread reads there is the durable state, never ahead of it (a write the log
//! failed is not in it) and never behind an answered change (every acknowledged change is in
//! it before its answer); a trade loaded on a miss, also one that left memory, takes later
//! changes; a reader racing a writer sees the trade's states in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tradeshard_shard::{Command, Move, Receipt, Shard, TradeCache, TradeError, TradeId, TradeStatus};
use tradeshard_tests::{call, new_trade, rolling_shard_config, run, upkeep_on_request};
use tradeshard_wal::disk::{Fault, SimDisk};

async fn open(disk: &SimDisk) -> Shard<SimDisk> {
    Shard::open_with(disk.clone(), rolling_shard_config(), 1 << 20, upkeep_on_request(false, None)).await.unwrap()
}

async fn submit(shard: &Shard<SimDisk>, command: Command) -> Result<Receipt, TradeError> {
    call(|done| shard.submit(command, done)).await
}

async fn create(shard: &Shard<SimDisk>, order: u64) -> TradeId {
    let trade = new_trade(1, order, 1_000).validate().unwrap();
    submit(shard, Command::Create { trade, logical_shard: 1 }).await.unwrap().id
}

/// What a thread other than the shard's reads of the trade: (status, refunded), or `None`.
fn read_elsewhere(cache: &Arc<TradeCache>, id: TradeId) -> Option<(TradeStatus, u64)> {
    let cache = cache.clone();
    std::thread::spawn(move || cache.get_with(&id, |cached| cached.trade(id)))
        .join()
        .unwrap()
        .map(|trade| (trade.status, trade.refunded_amount))
}

#[test]
fn every_acknowledged_change_is_in_the_cache_before_its_answer() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await;
        let cache = shard.trade_cache();
        let id = create(&shard, 1).await;
        assert_eq!(read_elsewhere(&cache, id), Some((TradeStatus::Created, 0)), "a durable create is cached");
        let paid = submit(&shard, Command::Move { id, to: Move::Pay }).await.unwrap();
        assert_eq!(read_elsewhere(&cache, id), Some((paid.status, paid.refunded_amount)));
        let refunded = submit(&shard, Command::Refund { id, amount: 300, refund_no: "R1".into() }).await.unwrap();
        assert_eq!(read_elsewhere(&cache, id), Some((TradeStatus::Refunded, 300)));
        assert_eq!(refunded.refunded_amount, 300);
        // A repeat changes nothing and the cache says so.
        let again = submit(&shard, Command::Refund { id, amount: 300, refund_no: "R1".into() }).await.unwrap();
        assert!(again.replayed);
        assert_eq!(read_elsewhere(&cache, id), Some((TradeStatus::Refunded, 300)));
        shard.close().await.unwrap();
    });
}

#[test]
fn a_write_the_log_failed_never_reaches_the_cache() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await;
        let cache = shard.trade_cache();
        let id = create(&shard, 1).await;
        // Every operation of the disk fails from now on: the pay is never durable.
        let next = disk.ops() + 1;
        for op in next..next + 64 {
            disk.fail_op(op, Fault::Eio);
        }
        assert!(submit(&shard, Command::Move { id, to: Move::Pay }).await.is_err());
        assert_eq!(read_elsewhere(&cache, id), Some((TradeStatus::Created, 0)), "the failed pay is not visible");
        let read = call(|done| shard.get(id, done)).await.unwrap();
        assert_eq!(read.status, TradeStatus::Created);
        assert_eq!(cache.stats().entries, 1);
    });
}

#[test]
fn a_trade_loaded_after_it_left_memory_takes_later_changes() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await;
        let mut ids = Vec::new();
        for order in 0..2_000 {
            let id = create(&shard, order).await;
            submit(&shard, Command::Move { id, to: Move::Pay }).await.unwrap();
            ids.push(id);
        }
        shard.checkpoint().await.unwrap();
        assert!(shard.stats().trades_in_memory < 2_000, "the oldest trades left memory");
        // A new shard over the same disk starts with an empty cache: the first read loads.
        shard.close().await.unwrap();
        let shard = open(&disk).await;
        let cache = shard.trade_cache();
        let old = ids[0];
        assert_eq!(read_elsewhere(&cache, old), None, "nothing is cached after an open");
        assert_eq!(call(|done| shard.get(old, done)).await.unwrap().status, TradeStatus::Paid);
        assert_eq!(read_elsewhere(&cache, old), Some((TradeStatus::Paid, 0)), "the read cached the trade");
        submit(&shard, Command::Refund { id: old, amount: 1_000, refund_no: "R".into() }).await.unwrap();
        assert_eq!(read_elsewhere(&cache, old), Some((TradeStatus::Refunded, 1_000)));
        // After it leaves memory again, the cached copy is still the durable state.
        shard.checkpoint().await.unwrap();
        assert_eq!(read_elsewhere(&cache, old), Some((TradeStatus::Refunded, 1_000)));
        assert_eq!(call(|done| shard.get(old, done)).await.unwrap().refunded_amount, 1_000);
        shard.close().await.unwrap();
    });
}

/// A reader thread spins on the cache while the shard pays, settles and refunds trades: the
/// states it sees of a trade only move forward (Created, Paid, then Settled or Refunded;
/// refunds only grow), and once a change is answered, the reader never sees what came before it.
#[test]
fn a_reader_racing_the_writer_sees_states_in_order() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await;
        let cache = shard.trade_cache();
        let ids: Vec<TradeId> = {
            let mut ids = Vec::new();
            for order in 0..50 {
                ids.push(create(&shard, order).await);
            }
            ids
        };
        let stop = Arc::new(AtomicBool::new(false));
        // The writer starts once the reader has read every trade once, so that the two race
        // however the threads are scheduled.
        let reading = Arc::new(AtomicBool::new(false));
        let answered: Arc<Vec<std::sync::atomic::AtomicU64>> =
            Arc::new((0..ids.len()).map(|_| std::sync::atomic::AtomicU64::new(0)).collect());
        let reader = {
            let (cache, stop, answered, ids) = (cache.clone(), stop.clone(), answered.clone(), ids.clone());
            let reading = reading.clone();
            std::thread::spawn(move || -> Result<u64, String> {
                let mut last = vec![0u64; ids.len()];
                let mut reads = 0;
                while !stop.load(Ordering::Acquire) {
                    for (n, &id) in ids.iter().enumerate() {
                        let floor = answered[n].load(Ordering::Acquire);
                        let Some(rank) = cache.get_with(&id, |cached| rank(&cached.trade(id))) else {
                            return Err(format!("trade {n} left a cache far larger than the trades"));
                        };
                        if rank < last[n] || rank < floor {
                            return Err(format!("trade {n}: read rank {rank} after {} (answered {floor})", last[n]));
                        }
                        last[n] = rank;
                        reads += 1;
                    }
                    reading.store(true, Ordering::Release);
                }
                Ok(reads)
            })
        };
        while !reading.load(Ordering::Acquire) && !reader.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        for (n, &id) in ids.iter().enumerate() {
            let steps = if n % 2 == 0 {
                vec![Command::Move { id, to: Move::Pay }, Command::Move { id, to: Move::Settle }]
            } else {
                vec![
                    Command::Move { id, to: Move::Pay },
                    Command::Refund { id, amount: 100, refund_no: format!("A{n}") },
                    Command::Refund { id, amount: 200, refund_no: format!("B{n}") },
                ]
            };
            for step in steps {
                let receipt = submit(&shard, step).await.unwrap();
                let rank = status_rank(receipt.status) * 10_000 + receipt.refunded_amount;
                answered[n].store(rank, Ordering::Release);
                futures_lite::future::yield_now().await;
            }
        }
        stop.store(true, Ordering::Release);
        let reads = reader.join().unwrap().unwrap();
        assert!(reads > 0);
        shard.close().await.unwrap();
    });
}

fn status_rank(status: TradeStatus) -> u64 {
    match status {
        TradeStatus::Created => 0,
        TradeStatus::Paid => 1,
        TradeStatus::Settled => 2,
        TradeStatus::Refunded => 3,
        TradeStatus::Closed => 4,
    }
}

/// A trade's place in its history: its status, then what was refunded.
fn rank(trade: &tradeshard_shard::Trade) -> u64 {
    status_rank(trade.status) * 10_000 + trade.refunded_amount
}
