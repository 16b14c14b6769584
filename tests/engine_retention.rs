//! Checkpoints and retention through the engine's API: an open after a clean close replays
//! nothing; segments go once every live group consumed them (and only then), idle groups
//! expire and stop holding the log (also in a shard that takes no more writes), a consumer asking
//! for a removed offset, or resuming from a committed one, gets the typed refusal naming the
//! first offset kept, every trade stays readable and changeable after
//! the log that held it is gone, and a shard checkpoints once the memory it holds for the work
//! since its last checkpoint passes its budget.

use std::time::Duration;

use tradeshard_engine::{
    ConsumerConfig, Engine, EngineHandle, Error, Options, Refusal, StartPosition, TradeId, TradeStatus, Upkeep,
};
use tradeshard_tests::{engine_options, new_trade, upkeep_on_request};

/// One shard, 1 MiB segments, checkpoints only when asked (and on close).
fn options(dir: &std::path::Path, group_idle_expiry: Option<Duration>) -> Options {
    let upkeep = Upkeep { group_idle_expiry, ..upkeep_on_request(true, None) };
    Options { segment_bytes: 1 << 20, upkeep, ..engine_options(dir, 1, 1) }
}

/// Creates `n` trades one at a time: each its own flush, so several segments fill.
fn create(handle: &EngineHandle, first: u64, n: u64) -> Vec<TradeId> {
    (first..first + n)
        .map(|order| handle.create_trade_blocking(new_trade(1 + order % 13, order, 100)).unwrap().id)
        .collect()
}

/// Consumes everything there is as `group` and commits it.
fn consume_all(handle: &EngineHandle, group: &str) {
    let mut consumer = handle.consumer(ConsumerConfig::new(group)).unwrap();
    while !consumer.poll_blocking(10_000, Duration::from_millis(20)).unwrap().is_empty() {}
    consumer.commit_blocking().unwrap();
}

#[test]
fn an_open_after_a_clean_close_replays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let ids = create(&engine.handle(), 0, 300);
    engine.close().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let stats = engine.handle().stats_blocking().unwrap();
    for shard in &stats.shards {
        assert!(shard.opened.checkpoint.is_some(), "shard {} opened from its checkpoint", shard.shard);
        assert_eq!(shard.opened.replayed_records, 0, "shard {} replayed nothing", shard.shard);
    }
    for id in ids {
        assert_eq!(engine.handle().get_blocking(id).unwrap().status, TradeStatus::Created);
    }
    engine.close().unwrap();
}

/// Retention by bytes takes segments whatever the groups' offsets: a member resuming a group
/// whose committed offset went with them is told, by the refusal naming the first offset kept,
/// rather than moved past the events it never read; it goes on from where it seeks.
#[test]
fn a_group_whose_committed_offset_retention_removed_is_told_not_moved_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let upkeep = upkeep_on_request(true, Some(0));
    let engine = Engine::open(Options { segment_bytes: 1 << 20, upkeep, ..engine_options(dir.path(), 1, 1) }).unwrap();
    let handle = engine.handle();
    create(&handle, 0, 10);
    let mut behind = handle.consumer(ConsumerConfig::new("behind")).unwrap();
    behind.commit_offsets_blocking(&[(0, 5)]).unwrap();
    drop(behind);
    create(&handle, 10, 800);
    // The second checkpoint becomes the one an open falls back to: the log below it may go.
    handle.checkpoint_blocking().unwrap();
    create(&handle, 810, 1);
    handle.checkpoint_blocking().unwrap();
    let first = handle.stats_blocking().unwrap().shards[0].log_first;
    assert!(first > 5, "retention removed the group's offset: the log starts at {first}");

    let mut behind = handle.consumer(ConsumerConfig::new("behind")).unwrap();
    match behind.poll_blocking(10, Duration::from_millis(10)) {
        Err(Error::Refused(Refusal::OffsetOutOfRange { offset: 5, first: named, .. })) => assert_eq!(named, first),
        other => panic!("expected the refusal naming the first offset, got {other:?}"),
    }
    behind.seek_blocking(0, first).unwrap();
    let events = behind.poll_blocking(10, Duration::from_millis(10)).unwrap();
    assert_eq!(events.first().map(|event| event.offset), Some(first));
    engine.close().unwrap();
}

#[test]
fn segments_go_once_every_live_group_consumed_them_and_trades_live_on() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(options(dir.path(), Some(Duration::from_millis(300)))).unwrap();
    let handle = engine.handle();
    let ids = create(&handle, 0, 200);
    // A group that commits the start and then stays away.
    let mut stale = handle.consumer(ConsumerConfig::new("stale")).unwrap();
    stale.commit_offsets_blocking(&[(0, 0)]).unwrap();
    drop(stale);
    let ids = [ids, create(&handle, 200, 800)].concat();
    consume_all(&handle, "settlement");
    handle.checkpoint_blocking().unwrap();
    handle.checkpoint_blocking().unwrap();
    let shard = handle.stats_blocking().unwrap().shards[0].clone();
    assert!(shard.segments >= 4, "the log filled several segments: {shard:?}");
    assert_eq!(shard.wal.segments_removed, 0, "the stale group still holds the log");

    // Past its idle time the stale group expires; the live one commits again.
    std::thread::sleep(Duration::from_millis(400));
    consume_all(&handle, "settlement");
    handle.checkpoint_blocking().unwrap();
    handle.checkpoint_blocking().unwrap();
    let shard = handle.stats_blocking().unwrap().shards[0].clone();
    assert!(shard.wal.segments_removed > 0 && shard.log_first > 0, "retention removed segments: {shard:?}");
    assert!(shard.checkpoints.groups_expired >= 1, "the stale group expired: {shard:?}");
    let groups = handle.groups_blocking().unwrap();
    assert!(groups[0].iter().all(|(group, _, _)| group != "stale"), "expired groups are forgotten: {groups:?}");

    // A consumer asking for a removed offset is told where the log now starts.
    let mut late =
        handle.consumer(ConsumerConfig { start: StartPosition::Earliest, ..ConsumerConfig::new("late") }).unwrap();
    late.seek_blocking(0, 0).unwrap();
    match late.poll_blocking(10, Duration::from_millis(10)) {
        Err(Error::Refused(Refusal::OffsetOutOfRange { offset: 0, first, .. })) => assert_eq!(first, shard.log_first),
        other => panic!("expected the refusal naming the first offset, got {other:?}"),
    }

    // Every trade is readable, and a change to one whose creation left the log works.
    for id in &ids {
        handle.get_blocking(*id).unwrap();
    }
    assert_eq!(handle.pay_blocking(ids[0]).unwrap().status, TradeStatus::Paid);
    engine.close().unwrap();

    // And after reopening, from the checkpoint, with the log cut.
    let engine = Engine::open(options(dir.path(), None)).unwrap();
    let handle = engine.handle();
    assert_eq!(handle.get_blocking(ids[0]).unwrap().status, TradeStatus::Paid);
    let first = new_trade(1, 0, 100);
    let by_order = handle.get_by_order_blocking(first.merchant_id, &first.merchant_order_no).unwrap();
    assert_eq!(by_order.id, ids[0]);
    let listed = handle.list_user_trades_blocking(1, 1000, None).unwrap();
    assert_eq!(listed.len(), ids.len() / 13 + 1, "user 1's trades, all of them");
    engine.close().unwrap();
}

/// A shard that takes no more writes still lets an idle group expire and old segments go: its
/// background upkeep looks once a checkpoint interval, with no write and no call to wake it.
#[test]
fn an_idle_shard_still_expires_groups_and_removes_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let upkeep = Upkeep {
        checkpoint_interval: Duration::from_millis(100),
        group_idle_expiry: Some(Duration::from_millis(300)),
        // Long against the writes after the log's last new segment (under a segment's worth of
        // flushes): the segment before the tail is still kept when the writes end.
        retention_time: Some(Duration::from_millis(3_000)),
        ..upkeep_on_request(true, None)
    };
    let engine = Engine::open(Options { segment_bytes: 1 << 20, upkeep, ..engine_options(dir.path(), 1, 1) }).unwrap();
    let handle = engine.handle();
    create(&handle, 0, 600);
    let mut stale = handle.consumer(ConsumerConfig::new("stale")).unwrap();
    stale.commit_offsets_blocking(&[(0, 0)]).unwrap();
    drop(stale);
    create(&handle, 600, 600);
    // Two checkpoints while writing: retention may go down to the older one.
    handle.checkpoint_blocking().unwrap();
    create(&handle, 1200, 10);
    handle.checkpoint_blocking().unwrap();
    let before = handle.stats_blocking().unwrap().shards[0].clone();
    // The writes may take longer than the retention, on a loaded machine, and the oldest
    // segments go meanwhile; the one before the tail is still there.
    assert!(before.segments >= 2, "the log holds a segment besides its tail: {before:?}");

    // Then nothing: no write, no call, only time.
    let mut after = before.clone();
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(50));
        after = handle.stats_blocking().unwrap().shards[0].clone();
        if after.checkpoints.groups_expired > 0 && after.wal.segments_removed > before.wal.segments_removed {
            break;
        }
    }
    assert!(after.checkpoints.groups_expired >= 1, "the idle group expired: {after:?}");
    assert!(after.wal.segments_removed > before.wal.segments_removed, "old segments went: {after:?}");
    assert_eq!(after.log_end, before.log_end, "nothing was written meanwhile");
    engine.close().unwrap();
}

/// Creates 600 trades and makes 300 deposits in one shard whose checkpoints come only from
/// `checkpoint_memory_bytes`; returns the shard's stats once its background upkeep had time
/// to act, and the memory it held before the deposits.
fn work_under_memory_budget(checkpoint_memory_bytes: u64) -> (tradeshard_engine::ShardStats, u64) {
    let dir = tempfile::tempdir().unwrap();
    let upkeep = Upkeep { checkpoint_memory_bytes, ..upkeep_on_request(false, None) };
    let engine = Engine::open(Options { upkeep, ..engine_options(dir.path(), 1, 1) }).unwrap();
    let handle = engine.handle();
    create(&handle, 0, 600);
    let before_deposits = handle.stats_blocking().unwrap().shards[0].checkpoints.held_bytes;
    for n in 0..300u64 {
        handle.deposit_blocking(1 + n % 13, "USD", 100, &format!("D-{n}")).unwrap();
    }
    // The upkeep looks every 50 ms; wait until it has nothing more to do.
    let mut stats = handle.stats_blocking().unwrap().shards[0].clone();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        stats = handle.stats_blocking().unwrap().shards[0].clone();
        if stats.checkpoints.held_bytes < checkpoint_memory_bytes {
            break;
        }
    }
    engine.close().unwrap();
    (stats, before_deposits)
}

/// With checkpoints by log bytes and by time out of reach, the memory the shard holds for its
/// recent work (order keys, users' lists, new trades, account requests) still triggers them,
/// and what is held for the work since the last checkpoint stays near the budget (under twice
/// it: the work of one checkpoint's duration comes on top); without that budget the same work
/// takes none and the memory grows with every create and every deposit.
#[test]
fn a_shard_checkpoints_once_the_memory_held_for_recent_work_passes_its_budget() {
    let budget = 32 << 10;
    let (bounded, _) = work_under_memory_budget(budget);
    assert!(bounded.checkpoints.written >= 2, "checkpoints came from the memory held: {bounded:?}");
    assert!(bounded.checkpoints.held_bytes < 2 * budget, "the memory held is under its bound: {bounded:?}");

    let (unbounded, before_deposits) = work_under_memory_budget(u64::MAX);
    assert_eq!(unbounded.checkpoints.written, 0, "nothing else triggers a checkpoint: {unbounded:?}");
    assert!(before_deposits >= 600 * 96, "each new trade holds its entry and keys: {before_deposits}");
    assert!(unbounded.checkpoints.held_bytes > before_deposits, "deposits hold their request numbers: {unbounded:?}");
    assert!(unbounded.checkpoints.held_bytes > 2 * budget, "past the bound the budget keeps: {unbounded:?}");
}
