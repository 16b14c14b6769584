//! Settlement reconciliation: random trades settle while a consumer polls and commits, with
//! the engine dropped (no close) or closed between polls and commits; the consumer, counting
//! each (partition, offset) once, ends with exactly the store's settled totals.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tradeshard_engine::{ConsumerConfig, Currency, Engine, EngineHandle, RecordKind};
use tradeshard_tests::{engine_options, new_trade};

#[derive(Default)]
struct Totals {
    settled: BTreeMap<(u64, Currency), u128>,
    applied_up_to: HashMap<u32, u64>,
    redelivered: u64,
}

impl Totals {
    fn apply(&mut self, events: &[tradeshard_engine::Event]) {
        for event in events {
            if self.applied_up_to.get(&event.partition).is_some_and(|last| event.offset <= *last) {
                self.redelivered += 1;
                continue;
            }
            self.applied_up_to.insert(event.partition, event.offset);
            if event.record.kind == RecordKind::Settled {
                *self.settled.entry((event.record.merchant_id, event.record.currency)).or_insert(0) +=
                    u128::from(event.record.settled_amount());
            }
        }
    }
}

fn random_trades(handle: &EngineHandle, rng: &mut fastrand::Rng, round: u64) {
    for n in 0..40 {
        let buyer = 1 + rng.u64(..20);
        let receipt = handle.create_trade_blocking(new_trade(buyer, round * 1000 + n, 1 + rng.u64(..500))).unwrap();
        if rng.u64(..4) > 0 {
            handle.pay_blocking(receipt.id).unwrap();
            if rng.u64(..3) > 0 {
                handle.settle_blocking(receipt.id).unwrap();
            }
        }
    }
}

#[test]
fn settlement_totals_reconcile_with_the_store_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(42);
    let mut totals = Totals::default();
    for round in 0..6 {
        let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
        let handle = engine.handle();
        let mut consumer = handle.consumer(ConsumerConfig::new("settlement")).unwrap();
        random_trades(&handle, &mut rng, round);
        for _ in 0..rng.u64(..4) {
            let events = consumer.poll_blocking(1 + rng.u64(..60) as usize, Duration::ZERO).unwrap();
            totals.apply(&events);
            if rng.bool() {
                consumer.commit_blocking().unwrap();
            }
        }
        drop(consumer);
        if rng.bool() {
            engine.close().unwrap();
        } else {
            drop(engine);
        }
    }
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let handle = engine.handle();
    let mut consumer = handle.consumer(ConsumerConfig::new("settlement")).unwrap();
    loop {
        let events = consumer.poll_blocking(100, Duration::ZERO).unwrap();
        if events.is_empty() {
            break;
        }
        totals.apply(&events);
    }
    let store = handle.settled_totals_blocking().unwrap();
    assert!(!store.is_empty(), "some trades settled");
    assert_eq!(totals.settled, store, "the consumer's totals equal the store's");
    assert!(totals.redelivered > 0, "uncommitted events were delivered again after restarts");
    engine.close().unwrap();
}
