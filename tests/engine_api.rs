//! The embedded API end to end, through the public handle only: every operation and
//! transition, every class of bad input (a typed error and nothing in the log), idempotent
//! creates, listing, reopening, the directory lock and reopening on fewer executors.

use tradeshard_engine::{Engine, Error, NewTrade, TradeError, TradeId, TradeStatus};
use tradeshard_tests::{engine_options, new_trade};

/// An input and the error it must produce.
type Case = (NewTrade, fn(&TradeError) -> bool);

fn records(handle: &tradeshard_engine::EngineHandle) -> u64 {
    handle.stats_blocking().unwrap().records
}

#[test]
fn every_operation_and_transition_through_the_handle() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();

    let created = h.create_trade_blocking(new_trade(1, 1, 500)).unwrap();
    assert_eq!((created.status, created.amount, created.replayed), (TradeStatus::Created, 500, false));
    let trade = h.get_blocking(created.id).unwrap();
    assert_eq!((trade.buyer_id, trade.amount, trade.status), (1, 500, TradeStatus::Created));
    assert_eq!((trade.merchant_order_no.as_str(), trade.memo.as_str()), ("ORD-1-1", "order 1 of buyer 1"));
    assert_eq!(trade.currency.as_str(), "CNY");

    assert_eq!(h.pay_blocking(created.id).unwrap().status, TradeStatus::Paid);
    assert_eq!(h.settle_blocking(created.id).unwrap().status, TradeStatus::Settled);
    assert_eq!(h.get_blocking(created.id).unwrap().status, TradeStatus::Settled);
    let again = h.pay_blocking(created.id).unwrap_err();
    assert!(
        matches!(again, Error::Trade(TradeError::IllegalTransition { from: TradeStatus::Settled, .. })),
        "a settled trade cannot be paid again: {again:?}"
    );

    let closing = h.create_trade_blocking(new_trade(1, 2, 300)).unwrap();
    assert_eq!(h.close_trade_blocking(closing.id).unwrap().status, TradeStatus::Closed);
    assert!(h.pay_blocking(closing.id).is_err(), "a closed trade cannot be paid");

    let refunding = h.create_trade_blocking(new_trade(2, 1, 1000)).unwrap();
    assert!(matches!(h.refund_blocking(refunding.id, 10), Err(Error::Trade(TradeError::IllegalTransition { .. }))));
    h.pay_blocking(refunding.id).unwrap();
    let partial = h.refund_blocking(refunding.id, 400).unwrap();
    assert_eq!((partial.status, partial.refunded_amount), (TradeStatus::Refunded, 400));
    assert!(matches!(
        h.refund_blocking(refunding.id, 601),
        Err(Error::Trade(TradeError::RefundExceedsPaid { requested: 601, refundable: 600, .. }))
    ));
    assert_eq!(h.refund_blocking(refunding.id, 600).unwrap().refunded_amount, 1000);
    assert!(h.settle_blocking(refunding.id).is_err(), "a refunded trade is not settled");
    engine.close().unwrap();
}

#[test]
fn bad_input_is_a_typed_error_and_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let good = h.create_trade_blocking(new_trade(3, 1, 100)).unwrap();
    let before = records(&h);

    let base = new_trade(3, 99, 100);
    let cases: Vec<Case> = vec![
        (NewTrade { buyer_id: 0, ..base.clone() }, |e| matches!(e, TradeError::ZeroUserId)),
        (NewTrade { merchant_id: 0, ..base.clone() }, |e| matches!(e, TradeError::ZeroMerchantId)),
        (NewTrade { amount: 0, ..base.clone() }, |e| matches!(e, TradeError::ZeroAmount)),
        (NewTrade { amount: u64::MAX, ..base.clone() }, |e| matches!(e, TradeError::AmountTooLarge { .. })),
        (NewTrade { currency: "ABC".into(), ..base.clone() }, |e| matches!(e, TradeError::UnknownCurrency(_))),
        (NewTrade { currency: "cny".into(), ..base.clone() }, |e| matches!(e, TradeError::UnknownCurrency(_))),
        (NewTrade { memo: "x".repeat(257), ..base.clone() }, |e| matches!(e, TradeError::MemoTooLong { len: 257, .. })),
        (NewTrade { merchant_order_no: String::new(), ..base.clone() }, |e| matches!(e, TradeError::BadOrderNo { .. })),
    ];
    for (input, expected) in cases {
        match h.create_trade_blocking(input.clone()) {
            Err(Error::Trade(error)) => assert!(expected(&error), "{input:?} gave {error:?}"),
            other => panic!("{input:?} gave {other:?}"),
        }
    }
    let foreign = TradeId((5000u64 << 48) | 1);
    assert!(matches!(h.get_blocking(foreign), Err(Error::Trade(TradeError::BadTradeId { .. }))));
    assert!(matches!(h.pay_blocking(TradeId(0)), Err(Error::Trade(TradeError::BadTradeId { .. }))));
    let unknown = TradeId::new(good.id.logical_shard(), good.id.counter() + 1000);
    assert!(matches!(h.pay_blocking(unknown), Err(Error::Trade(TradeError::NotFound(_)))));
    assert!(matches!(h.get_blocking(unknown), Err(Error::Trade(TradeError::NotFound(_)))));
    assert!(matches!(h.refund_blocking(good.id, 0), Err(Error::Trade(TradeError::ZeroAmount))));
    assert!(matches!(h.list_user_trades_blocking(0, 10, None), Err(Error::Trade(TradeError::ZeroUserId))));
    assert!(matches!(h.settle_blocking(good.id), Err(Error::Trade(TradeError::IllegalTransition { .. }))));
    assert_eq!(records(&h), before, "refused requests wrote nothing");
    // Boundary values that are valid.
    let max = NewTrade { amount: 1_000_000_000_000_000, memo: "m".repeat(256), ..new_trade(3, 2, 1) };
    assert_eq!(h.create_trade_blocking(max).unwrap().amount, 1_000_000_000_000_000);
    engine.close().unwrap();
}

#[test]
fn creates_are_idempotent_on_merchant_and_order_number() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let first = h.create_trade_blocking(new_trade(4, 1, 250)).unwrap();
    let retry = h.create_trade_blocking(new_trade(4, 1, 250)).unwrap();
    assert_eq!((retry.id, retry.replayed), (first.id, true));
    let records_before = records(&h);
    let different = h.create_trade_blocking(new_trade(4, 1, 251)).unwrap_err();
    assert!(
        matches!(different, Error::Trade(TradeError::IdempotencyConflict { existing, .. }) if existing == first.id)
    );
    assert_eq!(records(&h), records_before);

    // Retries racing the original in flight get the original too.
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || h.create_trade_blocking(new_trade(5, 1, 77)).unwrap())
        })
        .collect();
    let receipts: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(receipts.iter().all(|r| r.id == receipts[0].id));
    assert_eq!(receipts.iter().filter(|r| !r.replayed).count(), 1, "exactly one create wrote");
    engine.close().unwrap();
}

#[test]
fn a_users_trades_list_newest_first_with_limit_and_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let ids: Vec<TradeId> =
        (1..=25).map(|order| h.create_trade_blocking(new_trade(9, order, order)).unwrap().id).collect();
    h.create_trade_blocking(new_trade(10, 1, 5)).unwrap();
    let page = h.list_user_trades_blocking(9, 10, None).unwrap();
    assert_eq!(page.iter().map(|t| t.id).collect::<Vec<_>>(), ids.iter().rev().take(10).copied().collect::<Vec<_>>());
    assert!(page.iter().all(|t| t.buyer_id == 9));
    let next = h.list_user_trades_blocking(9, 10, Some(page[9].id)).unwrap();
    assert_eq!(next[0].id, ids[14]);
    assert_eq!(h.list_user_trades_blocking(9, 100, None).unwrap().len(), 25);
    assert!(h.list_user_trades_blocking(11, 10, None).unwrap().is_empty());
    engine.close().unwrap();
}

#[test]
fn reopen_after_close_and_after_drop_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let mut expected = Vec::new();
    for order in 1..=40 {
        let receipt = h.create_trade_blocking(new_trade(order % 6 + 1, order, 100 + order)).unwrap();
        if order % 3 == 0 {
            h.pay_blocking(receipt.id).unwrap();
        }
        expected.push((receipt.id, if order % 3 == 0 { TradeStatus::Paid } else { TradeStatus::Created }));
    }
    engine.close().unwrap();

    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    for (id, status) in &expected {
        assert_eq!(h.get_blocking(*id).unwrap().status, *status);
    }
    let newer = h.create_trade_blocking(new_trade(1, 1000, 5)).unwrap();
    assert!(expected.iter().all(|(id, _)| *id != newer.id), "ids are never reissued");
    drop(engine);

    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    assert_eq!(engine.handle().get_blocking(newer.id).unwrap().amount, 5);
    assert_eq!(engine.handle().stats_blocking().unwrap().trades, 41);
    engine.close().unwrap();
}

#[test]
fn an_open_directory_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    match Engine::open(engine_options(dir.path(), 2, 2)) {
        Err(Error::Locked { path }) => assert_eq!(path, dir.path()),
        Err(other) => panic!("expected Locked, got {other:?}"),
        Ok(_) => panic!("a second open of a locked directory succeeded"),
    }
    engine.close().unwrap();
    Engine::open(engine_options(dir.path(), 2, 2)).unwrap().close().unwrap();
}

#[test]
fn four_shards_open_on_two_executors_and_on_one() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 4, 4)).unwrap();
    let h = engine.handle();
    let ids: Vec<TradeId> =
        (1..=64).map(|user| h.create_trade_blocking(new_trade(user, 1, user)).unwrap().id).collect();
    let per_shard = h.stats_blocking().unwrap().shards;
    assert_eq!(per_shard.len(), 4);
    assert!(per_shard.iter().all(|(_, s)| s.trades > 0), "users spread over all four shards");
    engine.close().unwrap();
    for executors in [2, 1] {
        // The layout is the directory's: the shard count in the options is ignored on reopen.
        let engine = Engine::open(engine_options(dir.path(), 1, executors)).unwrap();
        assert_eq!(engine.manifest().physical_shards, 4);
        assert_eq!(engine.handle().routing().executors, executors);
        for (user, id) in (1..=64u64).zip(&ids) {
            assert_eq!(engine.handle().get_blocking(*id).unwrap().amount, user);
        }
        engine.close().unwrap();
    }
}

#[test]
fn get_many_answers_each_id_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 4, 2)).unwrap();
    let h = engine.handle();
    let ids: Vec<TradeId> =
        (1..=40).map(|user| h.create_trade_blocking(new_trade(user, 1, user)).unwrap().id).collect();
    let unknown = TradeId::new(ids[0].logical_shard(), ids[0].counter() + 10_000);
    let mut asked = ids.clone();
    asked.insert(3, unknown);
    asked.insert(7, TradeId(0));
    let answers = h.get_many_blocking(&asked).unwrap();
    assert_eq!(answers.len(), asked.len());
    for (id, answer) in asked.iter().zip(&answers) {
        match answer {
            Ok(trade) => assert_eq!(trade.id, *id),
            Err(Error::Trade(TradeError::NotFound(missing))) => assert_eq!(*missing, unknown),
            Err(Error::Trade(TradeError::BadTradeId { id: 0, .. })) => assert_eq!(id.0, 0),
            Err(other) => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!(answers.iter().filter(|a| a.is_ok()).count(), 40);
    assert!(h.get_many_blocking(&[]).unwrap().is_empty());
    engine.close().unwrap();
}

#[test]
fn a_full_queue_is_backpressure_by_the_callers_choice() {
    use tradeshard_engine::{Backpressure, Options};
    for backpressure in [Backpressure::Fail, Backpressure::Wait] {
        let dir = tempfile::tempdir().unwrap();
        let options = Options { queue_depth_max: 1, backpressure, ..engine_options(dir.path(), 2, 2) };
        let engine = Engine::open(options).unwrap();
        let handle = engine.handle();
        let threads: Vec<_> = (0..16u64)
            .map(|t| {
                let handle = handle.clone();
                std::thread::spawn(move || {
                    let (mut created, mut refused) = (0u64, 0u64);
                    for order in 0..200 {
                        match handle.create_trade_blocking(new_trade(t + 1, order, 5)) {
                            Ok(_) => created += 1,
                            Err(Error::Backpressure { .. }) => refused += 1,
                            Err(other) => panic!("{other:?}"),
                        }
                    }
                    (created, refused)
                })
            })
            .collect();
        let (created, refused) =
            threads.into_iter().map(|t| t.join().unwrap()).fold((0, 0), |(c, r), (c2, r2)| (c + c2, r + r2));
        assert_eq!(created + refused, 3200);
        eprintln!("{backpressure:?}: {created} created, {refused} refused");
        assert_eq!(handle.stats_blocking().unwrap().trades, created, "a refused request left no trace");
        match backpressure {
            Backpressure::Fail => assert!(refused > 0, "16 threads on a queue of one must collide"),
            Backpressure::Wait => assert_eq!(refused, 0, "waiting callers are never refused"),
        }
        engine.close().unwrap();
    }
}
