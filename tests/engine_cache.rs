//! The read-through cache seen through the engine: reads after an acknowledged write show
//! that write (cache on or off), hot reads hit the cache, and with the cache off every read
//! goes to the log and is still right.

use tradeshard_engine::{Engine, Options, TradeStatus};
use tradeshard_tests::{engine_options, new_trade};

fn options(dir: &std::path::Path, cache_bytes: usize) -> Options {
    Options { cache_bytes, ..engine_options(dir, 2, 2) }
}

#[test]
fn reads_after_each_acknowledged_write_show_it_with_the_cache_on_and_off() {
    for cache_bytes in [1 << 20, 0] {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(options(dir.path(), cache_bytes)).unwrap();
        let handle = engine.handle();
        // Four threads, each driving its own trades through their lifecycle and reading each
        // one back after every acknowledgement, while the others do the same.
        let workers: Vec<_> = (0..4u64)
            .map(|worker| {
                let handle = handle.clone();
                std::thread::spawn(move || {
                    for n in 0..25u64 {
                        let buyer = worker * 1000 + n % 5 + 1;
                        let created = handle.create_trade_blocking(new_trade(buyer, n, 1000)).unwrap();
                        assert_eq!(handle.get_blocking(created.id).unwrap().status, TradeStatus::Created);
                        handle.pay_blocking(created.id).unwrap();
                        assert_eq!(handle.get_blocking(created.id).unwrap().status, TradeStatus::Paid);
                        for refunded in [100, 250] {
                            let receipt = handle
                                .refund_blocking(
                                    created.id,
                                    &format!("R-{n}-{refunded}"),
                                    refunded - (refunded / 250) * 100,
                                )
                                .unwrap();
                            let trade = handle.get_blocking(created.id).unwrap();
                            assert_eq!(
                                (trade.status, trade.refunded_amount),
                                (receipt.status, receipt.refunded_amount)
                            );
                        }
                        let trade = handle.get_blocking(created.id).unwrap();
                        let sent = new_trade(buyer, n, 1000);
                        assert_eq!((trade.merchant_order_no, trade.memo), (sent.merchant_order_no, sent.memo));
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        let cache = handle.stats_blocking().unwrap().cache;
        if cache_bytes == 0 {
            assert_eq!((cache.hits, cache.entries), (0, 0), "a zero budget caches nothing");
            assert!(cache.loads >= 400, "every read went to the log: {cache:?}");
        } else {
            assert!(cache.hits >= 400, "reads of just-created trades hit the cache: {cache:?}");
        }
        engine.close().unwrap();
    }
}

#[test]
fn after_reopen_the_first_read_loads_and_the_next_hits() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(options(dir.path(), 1 << 20)).unwrap();
    let id = engine.handle().create_trade_blocking(new_trade(1, 1, 10)).unwrap().id;
    engine.close().unwrap();
    let engine = Engine::open(options(dir.path(), 1 << 20)).unwrap();
    let handle = engine.handle();
    assert_eq!(handle.get_blocking(id).unwrap().amount, 10);
    assert_eq!(handle.get_blocking(id).unwrap().amount, 10);
    let cache = handle.stats_blocking().unwrap().cache;
    assert_eq!((cache.loads, cache.hits, cache.misses), (1, 1, 1));
    engine.close().unwrap();
}

/// `get` and `get_many` of trades created (and so cached) count as hits, with no miss and no
/// load (that they are read on the caller's thread is `handle.rs`'s test with the executor
/// held), and after the engine is closed a handle's read of a trade it had cached answers
/// `Closed`, as every other request does.
#[test]
fn created_trades_read_as_hits_and_a_closed_engine_answers_closed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(options(dir.path(), 1 << 20)).unwrap();
    let handle = engine.handle();
    let ids: Vec<_> = (1..=20u64).map(|n| handle.create_trade_blocking(new_trade(n, n, 10)).unwrap().id).collect();
    let before = handle.stats_blocking().unwrap().cache;
    for &id in &ids {
        assert_eq!(handle.get_blocking(id).unwrap().amount, 10);
    }
    for read in handle.get_many_blocking(&ids).unwrap() {
        assert_eq!(read.unwrap().amount, 10);
    }
    let after = handle.stats_blocking().unwrap().cache;
    assert_eq!((after.hits - before.hits, after.misses - before.misses, after.loads - before.loads), (40, 0, 0));
    engine.close().unwrap();
    assert!(matches!(handle.get_blocking(ids[0]), Err(tradeshard_engine::Error::Closed)));
    assert!(matches!(handle.get_many_blocking(&ids), Err(tradeshard_engine::Error::Closed)));
}

/// `get_by_order` keeps the trade an order number names: the second lookup of a number is
/// answered without asking its home shard, also for a number whose home is not the buyer's
/// shard, and after the engine closes the lookup answers `Closed`.
#[test]
fn a_found_order_number_is_kept_and_the_next_lookup_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(options(dir.path(), 1 << 20)).unwrap();
    let handle = engine.handle();
    let trades: Vec<_> = (1..=8u64).map(|n| handle.create_trade_blocking(new_trade(n, n, 10 + n)).unwrap()).collect();
    for (n, receipt) in (1..=8u64).zip(&trades) {
        let (merchant, order_no) = (1000 + n % 7, format!("ORD-{n}-{n}"));
        for _ in 0..2 {
            assert_eq!(handle.get_by_order_blocking(merchant, &order_no).unwrap().id, receipt.id);
        }
    }
    let kept = handle.stats_blocking().unwrap().order_ids;
    assert_eq!((kept.misses, kept.hits, kept.entries), (8, 8, 8));
    assert!(handle.get_by_order_blocking(1001, "ORD-none").is_err());
    assert_eq!(handle.stats_blocking().unwrap().order_ids.entries, 8, "a number not found is not kept");
    engine.close().unwrap();
    assert!(matches!(handle.get_by_order_blocking(1001, "ORD-1-1"), Err(tradeshard_engine::Error::Closed)));
}
