//! Retries through the public handle: a client that lost an answer sends the request again and
//! gets the original's answer, with no second effect (creates by merchant order number, unique
//! across shards; moves by the trade's state; refunds by the caller's refund request number),
//! also after a reopen; and lookups by merchant and order number.

use tradeshard_engine::{Engine, EngineHandle, Error, InputError, NewTrade, Receipt, Refusal, TradeId};
use tradeshard_shard::order_key;
use tradeshard_tests::{engine_options, new_trade, settled_records};

/// A client that lost an answer sends the request again: a move the trade made already and a
/// refund under a request number already refunded answer the original receipt, marked
/// `replayed`, and write nothing, also after a reopen; a request number reused with another
/// amount or for another trade is a typed conflict; refunds under different numbers add up.
#[test]
fn retried_moves_and_refunds_answer_the_original_receipt_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let trade = h.create_trade_blocking(new_trade(5, 1, 1000)).unwrap();
    let paid = h.pay_blocking(trade.id).unwrap();
    let written = settled_records(&h);
    assert_eq!(h.pay_blocking(trade.id).unwrap(), Receipt { replayed: true, ..paid });
    let first = h.refund_blocking(trade.id, "R-A", 100).unwrap();
    assert_eq!((first.refunded_amount, first.replayed), (100, false));
    assert_eq!(h.refund_blocking(trade.id, "R-A", 100).unwrap(), Receipt { replayed: true, ..first });
    assert_eq!(settled_records(&h), written + 1, "a repeat writes nothing");
    assert_eq!(h.refund_blocking(trade.id, "R-B", 50).unwrap().refunded_amount, 150, "refunds add up");
    match h.refund_blocking(trade.id, "R-A", 60) {
        Err(Error::Refused(Refusal::RefundRequestConflict { existing, amount: 100, .. })) => {
            assert_eq!(existing, trade.id)
        }
        other => panic!("the same number with another amount must conflict: {other:?}"),
    }
    let other = h.create_trade_blocking(new_trade(5, 2, 1000)).unwrap();
    h.pay_blocking(other.id).unwrap();
    assert!(
        matches!(h.refund_blocking(other.id, "R-A", 100), Err(Error::Refused(Refusal::RefundRequestConflict { .. }))),
        "the same number for another trade of the merchant and buyer must conflict"
    );
    assert!(matches!(h.refund_blocking(trade.id, "R-C", 851), Err(Error::Refused(Refusal::RefundExceedsPaid { .. }))));

    let settling = h.create_trade_blocking(new_trade(6, 1, 300)).unwrap();
    h.pay_blocking(settling.id).unwrap();
    let settled = h.settle_blocking(settling.id).unwrap();
    assert_eq!(h.settle_blocking(settling.id).unwrap(), Receipt { replayed: true, ..settled });
    assert!(
        matches!(h.pay_blocking(settling.id), Err(Error::Refused(Refusal::IllegalTransition { .. }))),
        "a settled trade is not paid again, not even as a repeat"
    );
    let closing = h.create_trade_blocking(new_trade(6, 2, 300)).unwrap();
    let closed = h.close_trade_blocking(closing.id).unwrap();
    assert_eq!(h.close_trade_blocking(closing.id).unwrap(), Receipt { replayed: true, ..closed });
    engine.close().unwrap();

    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let written = settled_records(&h);
    assert_eq!(h.refund_blocking(trade.id, "R-A", 100).unwrap(), Receipt { replayed: true, ..first });
    assert_eq!(h.settle_blocking(settling.id).unwrap(), Receipt { replayed: true, ..settled });
    assert_eq!(settled_records(&h), written, "repeats after a reopen write nothing");
    assert_eq!(h.get_blocking(trade.id).unwrap().refunded_amount, 150);
    engine.close().unwrap();
}

/// A create of merchant `merchant`'s order `order_no` for `buyer`.
fn order(merchant: u64, order_no: &str, buyer: u64, amount: u64) -> NewTrade {
    NewTrade {
        buyer_id: buyer,
        merchant_id: merchant,
        merchant_order_no: order_no.into(),
        amount,
        currency: "CNY".into(),
        memo: String::new(),
    }
}

/// An order number is unique per merchant across all shards: the same number sent with
/// another buyer (almost always another shard) is a conflict naming the first trade, a retry
/// answers the first trade, and a lookup by merchant and order number finds it, also after a
/// reopen, whether the number's home shard is the buyer's or another.
#[test]
fn merchant_order_numbers_are_unique_across_shards_and_found_by_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 4, 2)).unwrap();
    let h = engine.handle();
    let routing = h.routing();
    let shard_of = |buyer: u64| routing.physical_of_user(buyer);
    let first = h.create_trade_blocking(order(77, "O-1", 1, 500)).unwrap();
    let mut other_shards = 0;
    for buyer in 2..=40 {
        match h.create_trade_blocking(order(77, "O-1", buyer, 500)) {
            Err(Error::Refused(Refusal::IdempotencyConflict { existing, .. })) => assert_eq!(existing, Some(first.id)),
            other => panic!("buyer {buyer} took merchant 77's order O-1 again: {other:?}"),
        }
        other_shards += u32::from(shard_of(buyer) != shard_of(1));
    }
    assert!(other_shards > 10, "buyers of other shards tried the number: {other_shards}");
    let retry = h.create_trade_blocking(order(77, "O-1", 1, 500)).unwrap();
    assert_eq!((retry.id, retry.replayed), (first.id, true));
    assert!(!h.create_trade_blocking(order(78, "O-1", 2, 500)).unwrap().replayed, "another merchant's number");

    let created: Vec<(String, TradeId)> = (0..64u64)
        .map(|n| {
            let order_no = format!("O-{}", n + 100);
            (order_no.clone(), h.create_trade_blocking(order(77, &order_no, n + 1, 10 + n)).unwrap().id)
        })
        .collect();
    let check = |h: &EngineHandle| {
        assert_eq!(h.get_by_order_blocking(77, "O-1").unwrap().id, first.id);
        for (order_no, id) in &created {
            let trade = h.get_by_order_blocking(77, order_no).unwrap();
            assert_eq!((trade.id, trade.merchant_order_no.as_str()), (*id, order_no.as_str()));
        }
        assert!(matches!(h.get_by_order_blocking(77, "never-used"), Err(Error::OrderNotFound { merchant_id: 77, .. })));
        assert!(matches!(h.get_by_order_blocking(0, "O-1"), Err(Error::Invalid(InputError::ZeroMerchantId))));
        assert!(matches!(h.get_by_order_blocking(77, ""), Err(Error::Invalid(InputError::BadOrderNo { len: 0, .. }))));
        assert!(matches!(
            h.create_trade_blocking(order(77, "O-100", 99, 10)),
            Err(Error::Refused(Refusal::IdempotencyConflict { .. }))
        ));
    };
    check(&h);
    engine.close().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 4, 2)).unwrap();
    check(&engine.handle());
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
    let records_before = settled_records(&h);
    let different = h.create_trade_blocking(new_trade(4, 1, 251)).unwrap_err();
    assert!(
        matches!(different, Error::Refused(Refusal::IdempotencyConflict { existing, .. }) if existing == Some(first.id))
    );
    assert_eq!(settled_records(&h), records_before);

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

/// Once checkpoints moved an order number's key into runs (its trade's entry in the buyer's
/// shard, and its confirmed claim, kept by the trade alone, in its home shard), it is still
/// unique and still answers retries: buyers of other logical shards are refused by the home
/// shard, buyers of the first buyer's own logical shard by the buyer's shard from the trade's
/// fields, as is the first buyer with another memo; the first buyer's retry answers its
/// trade. Also after a reopen.
#[test]
fn order_numbers_whose_keys_are_in_runs_stay_unique_and_answer_retries() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 4, 2)).unwrap();
    let h = engine.handle();
    let routing = h.routing();
    let buyer = 1;
    // Order numbers whose home shard is not the buyer's: each claimed in another shard.
    let firsts: Vec<(String, TradeId)> = (0..400)
        .map(|n| format!("R-{n}"))
        .filter(|no| routing.physical_of_order_key(order_key(77, no)) != routing.physical_of_user(buyer))
        .take(24)
        .map(|no| {
            let id = h.create_trade_blocking(order(77, &no, buyer, 500)).unwrap().id;
            (no, id)
        })
        .collect();
    // Confirmations reach the home shards after the creates are answered: the second
    // checkpoint keeps every confirmed claim in a run.
    h.checkpoint_blocking().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    h.checkpoint_blocking().unwrap();
    let same_logical: Vec<u64> =
        (2..100_000).filter(|&b| routing.logical_of_user(b) == routing.logical_of_user(buyer)).take(3).collect();
    let other_logical: Vec<u64> =
        (2..100).filter(|&b| routing.logical_of_user(b) != routing.logical_of_user(buyer)).take(12).collect();
    assert_eq!(same_logical.len(), 3, "buyers of the first buyer's logical shard exist");
    let check = |h: &EngineHandle| {
        for (no, id) in &firsts {
            for &other in same_logical.iter().chain(&other_logical) {
                match h.create_trade_blocking(order(77, no, other, 500)) {
                    Err(Error::Refused(Refusal::IdempotencyConflict { existing, .. })) => {
                        assert_eq!(existing, Some(*id), "the conflict over {no} names its trade")
                    }
                    other_answer => panic!("buyer {other} took order {no} again: {other_answer:?}"),
                }
            }
            let mut changed = order(77, no, buyer, 500);
            changed.memo = "another memo".into();
            assert!(
                matches!(h.create_trade_blocking(changed), Err(Error::Refused(Refusal::IdempotencyConflict { .. }))),
                "another memo under {no}"
            );
            let retry = h.create_trade_blocking(order(77, no, buyer, 500)).unwrap();
            assert_eq!((retry.id, retry.replayed), (*id, true), "the retry of {no}");
        }
    };
    check(&h);
    engine.close().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 4, 2)).unwrap();
    check(&engine.handle());
    assert_eq!(engine.handle().stats_blocking().unwrap().trades, firsts.len() as u64, "no second trade");
    engine.close().unwrap();
}
