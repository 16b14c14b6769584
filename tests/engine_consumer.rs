//! Settlement consumers through the public API: order per partition, at-least-once with
//! committed offsets that survive reopening, clustered reassignment, broadcast, seek, lag and
//! the long poll.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tradeshard_engine::{
    ConsumerConfig, ConsumerMode, Engine, EngineHandle, Error, Event, RecordKind, Refusal, StartPosition, TradeId,
};
use tradeshard_tests::{engine_options, new_trade};

/// Creates and pays `count` trades per buyer for buyers 1..=buyers; returns the trade ids.
fn write(handle: &EngineHandle, buyers: u64, count: u64, first_order: u64) -> Vec<TradeId> {
    let mut ids = Vec::new();
    for order in first_order..first_order + count {
        for buyer in 1..=buyers {
            let id = handle.create_trade_blocking(new_trade(buyer, order, 10 + order)).unwrap().id;
            handle.pay_blocking(id).unwrap();
            ids.push(id);
        }
    }
    ids
}

/// How long a test's long poll may wait: far above any wake-up, so that a poll that reaches it
/// was not woken, and the assertion after it fails with a message instead of hanging.
const LONG_POLL_BOUND: Duration = Duration::from_secs(30);

fn drain(consumer: &mut tradeshard_engine::Consumer) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        let batch = consumer.poll_blocking(100, Duration::ZERO).unwrap();
        if batch.is_empty() {
            return events;
        }
        events.extend(batch);
    }
}

#[test]
fn every_event_arrives_once_in_order_per_partition_and_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 4, 2)).unwrap();
    let handle = engine.handle();
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let handle = handle.clone();
            std::thread::spawn(move || write(&handle, 5, 10, w * 100))
        })
        .collect();
    let ids: Vec<TradeId> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let mut consumer = handle.consumer(ConsumerConfig::new("settlement")).unwrap();
    let events = drain(&mut consumer);
    assert_eq!(events.len(), ids.len() * 2, "a created and a paid event per trade");
    let mut last_offset: BTreeMap<u32, u64> = BTreeMap::new();
    let mut seen_created = HashSet::new();
    for event in &events {
        if let Some(previous) = last_offset.insert(event.partition, event.offset) {
            assert!(event.offset > previous, "partition {} out of order", event.partition);
        }
        match event.record.kind {
            RecordKind::Created => assert!(seen_created.insert(event.record.trade_id), "delivered twice"),
            RecordKind::Paid => assert!(seen_created.contains(&event.record.trade_id), "paid before created"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(last_offset.len(), 4, "every partition delivered");
    engine.close().unwrap();
}

#[test]
fn after_reopen_delivery_resumes_at_the_committed_offset() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let handle = engine.handle();
    write(&handle, 4, 10, 0);
    let mut consumer = handle.consumer(ConsumerConfig::new("ledger")).unwrap();
    let first = consumer.poll_blocking(30, Duration::ZERO).unwrap();
    assert_eq!(first.len(), 30);
    consumer.commit_blocking().unwrap();
    let committed = consumer.assignment();
    let uncommitted = drain(&mut consumer);
    assert!(!uncommitted.is_empty());
    drop(consumer);
    drop(handle);
    drop(engine); // no close: a returned commit must not depend on it

    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let mut consumer = engine.handle().consumer(ConsumerConfig::new("ledger")).unwrap();
    let by_partition = |mut events: Vec<Event>| {
        events.sort_by_key(|e| (e.partition, e.offset));
        events
    };
    let again = by_partition(drain(&mut consumer));
    assert_eq!(again, by_partition(uncommitted), "exactly the uncommitted suffix is delivered again");
    for (partition, offset) in committed {
        let first_again = again.iter().find(|e| e.partition == partition).map(|e| e.offset);
        assert!(first_again.is_none_or(|o| o >= offset));
    }
    engine.close().unwrap();
}

#[test]
fn a_leaving_member_hands_its_partitions_over_at_their_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 4, 2)).unwrap();
    let handle = engine.handle();
    write(&handle, 8, 5, 0);
    let mut a = handle.consumer(ConsumerConfig::new("clearing")).unwrap();
    let mut b = handle.consumer(ConsumerConfig::new("clearing")).unwrap();
    let from_a = drain(&mut a);
    let from_b = drain(&mut b);
    let parts = |events: &[Event]| events.iter().map(|e| e.partition).collect::<HashSet<u32>>();
    assert_eq!(parts(&from_a).len(), 2);
    assert_eq!(parts(&from_b).len(), 2);
    assert!(parts(&from_a).is_disjoint(&parts(&from_b)), "members split the partitions");
    a.commit_blocking().unwrap();
    // b delivered everything of its share but commits nothing, then leaves.
    drop(b);
    let after = drain(&mut a);
    assert_eq!(parts(&after), parts(&from_b), "a takes b's partitions");
    assert_eq!(after.len(), from_b.len(), "from their committed offset: all of b's uncommitted events again");
    engine.close().unwrap();
}

/// A member that made no call while another held one of its partitions for a generation (and
/// read further and committed there) takes that partition back at the committed offset: its
/// own older position would commit the group's offset backwards and deliver again what the
/// other committed.
#[test]
fn a_member_idle_across_rebalances_never_commits_an_offset_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 1)).unwrap();
    let handle = engine.handle();
    write(&handle, 4, 5, 0);
    let mut a = handle.consumer(ConsumerConfig::new("g")).unwrap();
    assert_eq!(drain(&mut a).iter().map(|e| e.partition).collect::<HashSet<u32>>().len(), 2, "a reads both");
    write(&handle, 4, 5, 100);
    let mut b = handle.consumer(ConsumerConfig::new("g")).unwrap();
    let from_b = drain(&mut b);
    let taken = from_b.first().expect("b reads its share").partition;
    b.commit_blocking().unwrap();
    let committed = |consumer: &tradeshard_engine::Consumer| {
        consumer.committed_blocking().unwrap().into_iter().find(|(p, _)| *p == taken).and_then(|(_, o)| o)
    };
    let by_b = committed(&b).expect("b committed");
    drop(b);
    a.commit_blocking().unwrap();
    assert!(committed(&a).unwrap() >= by_b, "the group's offset went back: {:?} < {by_b}", committed(&a));
    assert!(drain(&mut a).iter().all(|e| e.partition != taken), "nothing b committed is delivered again");
    engine.close().unwrap();
}

/// A commit of explicit offsets names partitions the member owns now: once another member
/// joined and took one, a commit of it is refused with nothing committed, and one of a
/// partition it kept goes through; once that member left, what the first read before is of
/// a past generation, refused too, and what it reads anew commits.
#[test]
fn a_member_cannot_commit_a_partition_the_group_gave_another() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 1)).unwrap();
    let handle = engine.handle();
    write(&handle, 4, 5, 0);
    let mut a = handle.consumer(ConsumerConfig::new("g")).unwrap();
    let read_by_a = drain(&mut a);
    let ends: Vec<(u32, u64)> = [0u32, 1]
        .iter()
        .map(|p| (*p, read_by_a.iter().filter(|e| e.partition == *p).map(|e| e.offset + 1).max().unwrap()))
        .collect();
    let mut b = handle.consumer(ConsumerConfig::new("g")).unwrap();
    let taken = drain(&mut b).first().expect("b reads its share").partition;
    let kept = 1 - taken;
    let given_away = ends.iter().copied().find(|(p, _)| *p == taken).unwrap();
    // a follows the group (its next poll), and then names the partition b took.
    drain(&mut a);
    match a.commit_offsets_blocking(&[given_away]) {
        Err(Error::Refused(Refusal::NotAssigned { partition })) => assert_eq!(partition, taken),
        other => panic!("a commit of a partition b owns now: {other:?}"),
    }
    let committed = |consumer: &tradeshard_engine::Consumer, partition: u32| {
        consumer.committed_blocking().unwrap().into_iter().find(|(p, _)| *p == partition).and_then(|(_, o)| o)
    };
    assert_eq!(committed(&a, taken), None, "nothing was committed");
    let own = ends.iter().copied().find(|(p, _)| *p == kept).unwrap();
    a.commit_offsets_blocking(&[own]).unwrap();
    assert_eq!(committed(&a, kept), Some(own.1));
    // b commits further and leaves: the partition is a's again, but what a read of it before
    // is of a past generation.
    b.commit_blocking().unwrap();
    let by_b = committed(&b, taken).expect("b committed");
    drop(b);
    match a.commit_offsets_blocking(&[given_away]) {
        Err(Error::Refused(Refusal::StaleGeneration { .. })) => {}
        other => panic!("a commit of offsets read before the group changed: {other:?}"),
    }
    assert_eq!(committed(&a, taken), Some(by_b), "b's commit stands");
    drain(&mut a);
    a.commit_blocking().unwrap();
    assert!(committed(&a, taken).unwrap() >= by_b);
    engine.close().unwrap();
}

#[test]
fn broadcast_consumers_each_see_everything_with_their_own_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let handle = engine.handle();
    let ids = write(&handle, 3, 4, 0);
    let broadcast = |instance: &str| ConsumerConfig {
        mode: ConsumerMode::Broadcast { instance: instance.into() },
        ..ConsumerConfig::new("audit")
    };
    let mut one = handle.consumer(broadcast("one")).unwrap();
    let mut two = handle.consumer(broadcast("two")).unwrap();
    assert_eq!(drain(&mut one).len(), ids.len() * 2);
    one.commit_blocking().unwrap();
    assert_eq!(drain(&mut two).len(), ids.len() * 2, "the other instance still sees everything");
    assert!(one.lag_blocking().unwrap().iter().all(|(_, lag)| *lag == 0));
    assert!(two.lag_blocking().unwrap().iter().any(|(_, lag)| *lag > 0), "two committed nothing");
    engine.close().unwrap();
}

#[test]
fn seek_lag_and_start_positions() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 1, 1)).unwrap();
    let handle = engine.handle();
    write(&handle, 2, 5, 0); // 20 events in the one partition
    let mut consumer = handle.consumer(ConsumerConfig::new("risk")).unwrap();
    assert_eq!(consumer.lag_blocking().unwrap(), vec![(0, 20)]);
    consumer.seek_blocking(0, 15).unwrap();
    let tail = drain(&mut consumer);
    assert_eq!(tail.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![15, 16, 17, 18, 19]);
    consumer.commit_blocking().unwrap();
    assert_eq!(consumer.lag_blocking().unwrap(), vec![(0, 0)]);
    assert!(consumer.seek_blocking(3, 0).is_err(), "partition 3 does not exist here");
    let mut latest =
        handle.consumer(ConsumerConfig { start: StartPosition::Latest, ..ConsumerConfig::new("fresh") }).unwrap();
    assert!(latest.poll_blocking(10, Duration::ZERO).unwrap().is_empty(), "latest starts at the end");
    write(&handle, 1, 1, 100);
    assert_eq!(latest.poll_blocking(10, Duration::ZERO).unwrap().len(), 2);
    engine.close().unwrap();
}

#[test]
fn a_long_poll_wakes_on_new_data() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let handle = engine.handle();
    let mut consumer = handle.consumer(ConsumerConfig::new("waiter")).unwrap();
    assert!(consumer.poll_blocking(10, Duration::ZERO).unwrap().is_empty());
    let writer = {
        let handle = handle.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            write(&handle, 1, 1, 0)
        })
    };
    let events = consumer.poll_blocking(10, LONG_POLL_BOUND).unwrap();
    assert!(!events.is_empty(), "the long poll ran to its bound: new data did not wake it");
    assert_eq!(events[0].record.kind, RecordKind::Created);
    writer.join().unwrap();
    // The other partition's poll still waits: closing cuts it short instead of waiting it out.
    engine.close().unwrap();
}

/// A consumer that has read everything and committed (so each log ends with its own offset
/// commit, a record but no event) still waits in a long poll, owned or raw, and is woken by the
/// next event.
#[test]
fn a_long_poll_waits_past_the_commits_at_the_end_of_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 1, 1)).unwrap();
    let handle = engine.handle();
    write(&handle, 2, 3, 0);
    for raw in [false, true] {
        let mut consumer = handle.consumer(ConsumerConfig::new(format!("tail-{raw}"))).unwrap();
        assert_eq!(drain(&mut consumer).len(), if raw { 14 } else { 12 }, "every event so far");
        consumer.commit_blocking().unwrap();
        let first_order = if raw { 200 } else { 100 };
        let writer = {
            let handle = handle.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                write(&handle, 1, 1, first_order)
            })
        };
        // Without the wait, the poll would answer at once, empty, before the writer wrote.
        let delivered = if raw {
            consumer.poll_raw_blocking(10, LONG_POLL_BOUND).unwrap().iter().map(|batch| batch.len()).sum()
        } else {
            consumer.poll_blocking(10, LONG_POLL_BOUND).unwrap().len()
        };
        assert!(delivered > 0, "raw {raw}: the long poll returned before the next event");
        writer.join().unwrap();
    }
    engine.close().unwrap();
}

/// `poll_raw` delivers the same events as `poll`, read in place, and moves the positions the
/// same way: a raw consumer and an owned one of two groups see identical streams per
/// partition, in pages that end mid-partition, with offset commits (system records)
/// interleaved in the logs.
#[test]
fn raw_polls_deliver_what_owned_polls_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 3, 2)).unwrap();
    let handle = engine.handle();
    write(&handle, 7, 6, 0);
    // An offset commit in every partition, between events.
    let mut committer = handle.consumer(ConsumerConfig::new("early")).unwrap();
    committer.poll_blocking(5, Duration::ZERO).unwrap();
    committer.commit_blocking().unwrap();
    write(&handle, 7, 6, 50);
    let mut owned = handle.consumer(ConsumerConfig::new("owned")).unwrap();
    let mut raw = handle.consumer(ConsumerConfig::new("raw")).unwrap();
    let (mut owned_events, mut raw_events) = (Vec::new(), Vec::new());
    loop {
        // 13 per page: pages end inside partitions.
        let owned_page = owned.poll_blocking(13, Duration::ZERO).unwrap();
        let raw_page = raw.poll_raw_blocking(13, Duration::ZERO).unwrap();
        let raw_count: usize = raw_page.iter().map(|batch| batch.len()).sum();
        assert_eq!(owned_page.len(), raw_count, "pages of the same size");
        if raw_count == 0 {
            break;
        }
        owned_events.extend(owned_page);
        for page in &raw_page {
            for view in page.views() {
                let (offset, view) = view.unwrap();
                raw_events.push(Event { partition: page.partition, offset, record: view.to_record() });
            }
        }
    }
    // Positions moved alike: committed, both are at the end of every partition.
    owned.commit_blocking().unwrap();
    raw.commit_blocking().unwrap();
    assert_eq!(owned.committed_blocking().unwrap(), raw.committed_blocking().unwrap());
    assert!(raw.lag_blocking().unwrap().iter().all(|(_, lag)| *lag == 0));
    assert_eq!(owned_events.len(), 7 * 12 * 2);
    // Partitions answer in whatever order their executors do; within one, order is total.
    let by_partition = |events: &[Event]| {
        let mut split: BTreeMap<u32, Vec<Event>> = BTreeMap::new();
        for event in events {
            split.entry(event.partition).or_default().push(event.clone());
        }
        split
    };
    assert_eq!(by_partition(&owned_events), by_partition(&raw_events));
    engine.close().unwrap();
}

/// A clustered member with no partition (three members, two partitions) waits out its
/// timeout instead of returning at once, and a member leaving ends the wait early: the idle
/// member takes the partition and the events come at its next poll.
#[test]
fn a_member_without_partitions_waits_for_its_timeout_or_a_change_of_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let handle = engine.handle();
    write(&handle, 4, 3, 0);
    let a = handle.consumer(ConsumerConfig::new("clearing")).unwrap();
    let mut b = handle.consumer(ConsumerConfig::new("clearing")).unwrap();
    let mut idle = handle.consumer(ConsumerConfig::new("clearing")).unwrap();
    assert!(!b.poll_blocking(100, Duration::ZERO).unwrap().is_empty());
    let started = std::time::Instant::now();
    assert!(idle.poll_blocking(100, Duration::from_millis(300)).unwrap().is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300), "returned after {:?}", started.elapsed());
    assert!(idle.assignment().is_empty(), "three members, two partitions");

    let leaver = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        drop(a);
    });
    let events = idle.poll_blocking(100, LONG_POLL_BOUND).unwrap();
    leaver.join().unwrap();
    assert_eq!(
        idle.assignment().len(),
        1,
        "the idle member took the leaver's partition (or its poll ran to its bound)"
    );
    let events = if events.is_empty() { drain(&mut idle) } else { events };
    assert!(!events.is_empty(), "and reads it from its start");
    engine.close().unwrap();
}
