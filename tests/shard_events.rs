//! A shard's log read as settlement events: durable events in log order with their offsets,
//! limits per poll, a long poll woken by new data, and consumer offsets committed durably in
//! the same log (not delivered as events) and recovered after a crash.

use std::rc::Rc;
use std::time::Duration;

use tradeshard_shard::{Command, InputError, Move, PollQuery, RecordKind, Refusal, Shard, Subscription, TradeError};
use tradeshard_tests::{call, new_trade, run};
use tradeshard_wal::disk::SimDisk;
use tradeshard_wal::{Preallocation, WalConfig};

fn config() -> WalConfig {
    WalConfig {
        segment_bytes: 256 << 10,
        frame_payload_bytes_max: 16 << 10,
        record_bytes_max: 4 << 10,
        preallocation: Preallocation::Reserved,
        ..WalConfig::default()
    }
}

fn query(from: u64, max_events: usize) -> PollQuery {
    PollQuery { from, max_events, max_bytes: 1 << 20, wait: Duration::ZERO, subscription: Subscription::trades() }
}

async fn create_and_pay(shard: &Shard<SimDisk>, buyer: u64, order: u64) {
    let trade = new_trade(buyer, order, 100 + order).validate().unwrap();
    let receipt = call(|done| shard.submit(Command::Create { trade, logical_shard: 0 }, done)).await.unwrap();
    call(|done| shard.submit(Command::Move { id: receipt.id, to: Move::Pay }, done)).await.unwrap();
}

#[test]
fn events_come_in_log_order_with_their_offsets_and_within_limits() {
    run(async {
        let shard = Shard::open(SimDisk::new(), config(), 1 << 16).await.unwrap();
        for order in 0..10 {
            create_and_pay(&shard, 1 + order % 3, order).await;
        }
        let all = call(|done| shard.poll_events(query(0, 1000), done)).await.unwrap();
        assert_eq!((all.next_offset, all.end_offset), (20, 20));
        let all = all.decode().unwrap();
        assert_eq!(all.len(), 20);
        assert!(all.windows(2).all(|w| w[0].offset < w[1].offset), "log order");
        for pair in all.chunks(2) {
            assert_eq!((pair[0].record.kind, pair[1].record.kind), (RecordKind::Created, RecordKind::Paid));
            assert_eq!(pair[0].record.trade_id, pair[1].record.trade_id);
        }
        let page = call(|done| shard.poll_events(query(5, 4), done)).await.unwrap();
        assert_eq!(page.records().map(|(offset, _)| offset).collect::<Vec<_>>(), vec![5, 6, 7, 8]);
        assert_eq!(page.next_offset, 9);
        let tiny = PollQuery { max_bytes: 1, ..query(0, 1000) };
        assert_eq!(call(|done| shard.poll_events(tiny, done)).await.unwrap().len(), 1, "at least one event");
        let beyond = call(|done| shard.poll_events(query(21, 10), done)).await;
        assert!(matches!(beyond, Err(TradeError::Refused(Refusal::OffsetOutOfRange { offset: 21, end: 20, .. }))));
        shard.close().await.unwrap();
    });
}

#[test]
fn a_long_poll_is_woken_by_new_data() {
    run(async {
        let shard = Rc::new(Shard::open(SimDisk::new(), config(), 1 << 16).await.unwrap());
        create_and_pay(&shard, 1, 0).await;
        // A bound far above any wake-up: a poll that reaches it was not woken, and comes back
        // empty, failing the assertions below.
        let waiting = PollQuery { wait: Duration::from_secs(30), ..query(2, 100) };
        let poller = {
            let shard = shard.clone();
            glommio::spawn_local(async move { call(|done| shard.poll_events(waiting, done)).await })
        };
        glommio::timer::sleep(Duration::from_millis(20)).await;
        create_and_pay(&shard, 2, 1).await;
        let batch = poller.await.unwrap().decode().unwrap();
        assert!(!batch.is_empty(), "the long poll ran to its bound: new data did not wake it");
        assert_eq!(batch[0].offset, 2);
        assert_eq!(batch[0].record.kind, RecordKind::Created);
    });
}

#[test]
fn committed_offsets_are_durable_and_are_not_events() {
    run(async {
        let disk = SimDisk::new();
        let shard = Shard::open(disk.clone(), config(), 1 << 16).await.unwrap();
        for order in 0..3 {
            create_and_pay(&shard, 1, order).await;
        }
        assert_eq!(shard.committed_offset("settlement"), None);
        assert_eq!(call(|done| shard.commit_offset("settlement", 4, done)).await.unwrap(), 4);
        assert_eq!(shard.committed_offset("settlement"), Some(4));
        assert!(matches!(
            call(|done| shard.commit_offset("bad group", 1, done)).await,
            Err(TradeError::Invalid(InputError::BadGroup { .. }))
        ));
        assert!(matches!(
            call(|done| shard.commit_offset("settlement", 1000, done)).await,
            Err(TradeError::Refused(Refusal::OffsetOutOfRange { .. }))
        ));
        create_and_pay(&shard, 1, 9).await;
        let after = call(|done| shard.poll_events(query(4, 100), done)).await.unwrap();
        // Offsets 4 and 5 are events, 6 is the commit, 7 and 8 are events.
        assert_eq!(after.records().map(|(offset, _)| offset).collect::<Vec<_>>(), vec![4, 5, 7, 8]);
        assert_eq!(after.next_offset, 9);
        drop(shard);
        disk.crash(7);
        let shard = Shard::open(disk, config(), 1 << 16).await.unwrap();
        assert_eq!(shard.committed_offset("settlement"), Some(4), "a returned commit survives a crash");
        assert_eq!(shard.offset_range(), (0, 9));
    });
}
