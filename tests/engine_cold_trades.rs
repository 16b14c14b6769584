//! Trades that leave memory, through the engine's API: under a small memory budget, after a
//! checkpoint most trades are only in the table on disk, and every read, listing, lookup by
//! order, retry and change finds them there with the state it would find in memory; an open
//! replaying changes to such trades reads them back; the settled totals scan the table; a
//! damaged record is reported with the table's path and the record's offset.

use std::collections::BTreeMap;

use tradeshard_engine::{Engine, EngineHandle, Error, Options, TradeId, TradeStatus, Upkeep};
use tradeshard_tests::{engine_options, new_trade, upkeep_on_request, SMALL_TRADE_MEMORY};

const TRADES: u64 = 1_000;

/// One shard, checkpoints only when asked; `on_close`: a checkpoint at close.
fn options(dir: &std::path::Path, on_close: bool) -> Options {
    Options { upkeep: upkeep_on_request(on_close, None), ..engine_options(dir, 1, 1) }
}

/// What the test expects of each trade: status and refunded amount.
type Expected = BTreeMap<TradeId, (TradeStatus, u64)>;

/// Creates `TRADES` trades of ten buyers; pays every second, settles every fourth.
fn populate(handle: &EngineHandle) -> (Vec<TradeId>, Expected) {
    let mut ids = Vec::new();
    let mut expected = Expected::new();
    for n in 0..TRADES {
        let id = handle.create_trade_blocking(new_trade(1 + n % 10, n, 1_000)).unwrap().id;
        let mut status = TradeStatus::Created;
        if n % 2 == 0 {
            status = handle.pay_blocking(id).unwrap().status;
        }
        if n % 4 == 0 {
            status = handle.settle_blocking(id).unwrap().status;
        }
        ids.push(id);
        expected.insert(id, (status, 0));
    }
    (ids, expected)
}

fn check_all(handle: &EngineHandle, expected: &Expected) {
    for (id, (status, refunded)) in expected {
        let trade = handle.get_blocking(*id).unwrap();
        assert_eq!((trade.status, trade.refunded_amount), (*status, *refunded), "trade {id}");
    }
    let settled = expected.values().filter(|(s, _)| *s == TradeStatus::Settled).count() as u128 * 1_000;
    let totals = handle.settled_totals_blocking().unwrap();
    assert_eq!(totals.values().sum::<u128>(), settled, "the settled totals count the trades on disk");
}

fn memory(handle: &EngineHandle) -> (u64, u64) {
    let shard = handle.stats_blocking().unwrap().shards[0].clone();
    (shard.trades, shard.trades_in_memory)
}

#[test]
fn trades_on_disk_read_list_retry_and_change_as_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(options(dir.path(), true)).unwrap();
    let handle = engine.handle();
    let (ids, mut expected) = populate(&handle);
    assert_eq!(memory(&handle), (TRADES, TRADES), "every trade in memory before a checkpoint");
    handle.checkpoint_blocking().unwrap();
    let (trades, in_memory) = memory(&handle);
    assert_eq!(trades, TRADES);
    assert!(in_memory <= SMALL_TRADE_MEMORY / 88 + 8, "the budget holds: {in_memory} in memory");
    check_all(&handle, &expected);

    // The oldest trades are on disk: retries answer their originals, changes work.
    let first = ids[0];
    let original = new_trade(1, 0, 1_000);
    let again = handle.create_trade_blocking(original.clone()).unwrap();
    assert_eq!((again.id, again.replayed, again.status), (first, true, TradeStatus::Settled));
    assert!(handle.settle_blocking(first).unwrap().replayed, "a settle repeated on a trade on disk");
    let paid = ids[2];
    let refund = handle.refund_blocking(paid, "R-1", 300).unwrap();
    assert_eq!((refund.status, refund.refunded_amount, refund.replayed), (TradeStatus::Refunded, 300, false));
    assert!(handle.refund_blocking(paid, "R-1", 300).unwrap().replayed);
    expected.insert(paid, (TradeStatus::Refunded, 300));
    let created = ids[1];
    assert_eq!(handle.close_trade_blocking(created).unwrap().status, TradeStatus::Closed);
    expected.insert(created, (TradeStatus::Closed, 0));
    let by_order = handle.get_by_order_blocking(original.merchant_id, &original.merchant_order_no).unwrap();
    assert_eq!(by_order.id, first);
    let listed = handle.list_user_trades_blocking(1, 1_000, None).unwrap();
    assert_eq!(listed.len() as u64, TRADES / 10, "a user's trades, on disk or not");
    assert!(listed.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let missing = TradeId::new(first.logical_shard(), first.counter() + TRADES + 50);
    assert!(matches!(handle.get_blocking(missing), Err(Error::NotFound(_))));
    check_all(&handle, &expected);

    // The changes go to the table with the next checkpoint, and leave memory again.
    handle.checkpoint_blocking().unwrap();
    assert!(memory(&handle).1 <= SMALL_TRADE_MEMORY / 88 + 8);
    check_all(&handle, &expected);
    engine.close().unwrap();

    let engine = Engine::open(options(dir.path(), true)).unwrap();
    let handle = engine.handle();
    assert_eq!(memory(&handle).0, TRADES, "all trades counted after an open");
    // The newest come back into memory after the open, in the background: no more than the
    // budget (and the chunk new trades go to).
    let mut waits = 0;
    while handle.stats_blocking().unwrap().shards[0].checkpoints.warming {
        waits += 1;
        assert!(waits < 10_000, "the newest trades never came back");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(memory(&handle).1 <= SMALL_TRADE_MEMORY / 88 + 8, "an open brings back only the newest");
    check_all(&handle, &expected);
    engine.close().unwrap();
}

#[test]
fn an_open_replays_changes_to_trades_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(options(dir.path(), false)).unwrap();
    let handle = engine.handle();
    let (ids, mut expected) = populate(&handle);
    handle.checkpoint_blocking().unwrap();
    // After the checkpoint, changes to trades on disk, then a close without a checkpoint:
    // the next open replays them onto records it reads from the table.
    for (n, id) in ids.iter().enumerate().take(200).filter(|(n, _)| n % 4 == 2) {
        let refund = handle.refund_blocking(*id, &format!("R-{n}"), 100 + n as u64).unwrap();
        expected.insert(*id, (TradeStatus::Refunded, refund.refunded_amount));
    }
    engine.close().unwrap();
    let engine = Engine::open(options(dir.path(), false)).unwrap();
    let handle = engine.handle();
    let shard = handle.stats_blocking().unwrap().shards[0].clone();
    assert!(shard.opened.replayed_records >= 50, "the refunds were replayed: {:?}", shard.opened);
    check_all(&handle, &expected);
    // A retried refund answers the original, from the refunds replayed.
    let again = handle.refund_blocking(ids[2], "R-2", 102).unwrap();
    assert_eq!((again.replayed, again.refunded_amount), (true, 102));
    engine.close().unwrap();
}

#[test]
fn a_damaged_record_in_the_table_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(options(dir.path(), true)).unwrap();
    let handle = engine.handle();
    let (ids, _) = populate(&handle);
    engine.close().unwrap();
    let table = dir.path().join("shards").join("0000").join("trades.table");
    // Trade counter 1 is the second record of the first sector: flip a bit of its amount.
    let record = tradeshard_shard::trade_record_offset(1) as usize;
    assert_eq!(record, tradeshard_shard::TRADE_RECORD_BYTES);
    let mut bytes = std::fs::read(&table).unwrap();
    bytes[record + 24] ^= 0x10;
    std::fs::write(&table, &bytes).unwrap();

    let engine = Engine::open(options(dir.path(), true)).unwrap();
    match engine.handle().get_blocking(ids[0]) {
        Err(Error::Corrupt { path, offset, .. }) => {
            assert_eq!(path, table);
            assert_eq!(offset, record as u64);
        }
        other => panic!("a damaged record must be reported, not read: {other:?}"),
    }
    assert_eq!(engine.handle().get_blocking(ids[1]).unwrap().id, ids[1], "the records beside it read");
    engine.close().unwrap();
}

/// The memory budget's default holds millions of trades: nothing leaves memory in a small run.
#[test]
fn the_default_budget_keeps_small_shards_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { upkeep: Upkeep::default(), ..engine_options(dir.path(), 1, 1) };
    let engine = Engine::open(options).unwrap();
    let handle = engine.handle();
    populate(&handle);
    handle.checkpoint_blocking().unwrap();
    assert_eq!(memory(&handle), (TRADES, TRADES));
    engine.close().unwrap();
}

#[test]
fn order_numbers_and_claims_in_runs_hold_across_shards_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let options =
        |dir: &std::path::Path| Options { upkeep: upkeep_on_request(true, None), ..engine_options(dir, 4, 1) };
    let engine = Engine::open(options(dir.path())).unwrap();
    let handle = engine.handle();
    // Most order numbers' home is another shard than the buyer's: a claim there, confirmed.
    let mut ids = Vec::new();
    for n in 0..400 {
        ids.push(handle.create_trade_blocking(new_trade(1 + n % 23, n, 1_000)).unwrap().id);
        if n % 100 == 99 {
            handle.checkpoint_blocking().unwrap();
        }
    }
    let runs = |handle: &EngineHandle| -> u64 {
        handle.stats_blocking().unwrap().shards.iter().map(|shard| shard.checkpoints.key_run_entries).sum()
    };
    // Every trade's key in its shard's runs, and most also a confirmed claim in a home's.
    assert!(runs(&handle) > 400 + 200, "order keys and claims in runs: {}", runs(&handle));
    engine.close().unwrap();

    for _ in 0..2 {
        let engine = Engine::open(options(dir.path())).unwrap();
        let handle = engine.handle();
        for (n, id) in ids.iter().enumerate() {
            let trade = new_trade(1 + n as u64 % 23, n as u64, 1_000);
            let again = handle.create_trade_blocking(trade.clone()).unwrap();
            assert_eq!((again.id, again.replayed), (*id, true), "order {n} answered by its trade");
            let found = handle.get_by_order_blocking(trade.merchant_id, &trade.merchant_order_no).unwrap();
            assert_eq!(found.id, *id);
            let other = handle.create_trade_blocking(tradeshard_engine::NewTrade { amount: 999, ..trade });
            assert!(matches!(other, Err(Error::Refused(_))), "another body under order {n}: {other:?}");
        }
        let trades: u64 = handle.stats_blocking().unwrap().shards.iter().map(|shard| shard.trades).sum();
        assert_eq!(trades, 400, "no retry created a trade");
        engine.close().unwrap();
    }
}
