//! Trades paid from the buyer's balance, through the public handle: the trade is paid and the
//! buyer debited together or not at all; retries move nothing more; refunds go back to the
//! buyer; settling credits the merchant with what was not refunded, in the trade's shard or
//! in another through an activity; money is conserved at every step (balances plus money in
//! transit equal deposits); all of it survives reopening, with and without a checkpoint, and
//! with the trades in the table on disk.

use tradeshard_engine::{Engine, EngineHandle, Error, NewTrade, Options, Refusal, TradeId, TradeStatus};
use tradeshard_shard::join_all;
use tradeshard_tests::{
    available, engine_options, money_cny, upkeep_on_request, wait_until_no_activity_in_doubt, SMALL_TRADE_MEMORY,
};

const DEPOSITED: u64 = 10_000;

fn in_transit(h: &EngineHandle) -> i128 {
    h.money_in_transit_blocking().unwrap().values().sum()
}

/// A buyer, a merchant whose accounts share the buyer's shard, and one whose do not.
fn users(h: &EngineHandle) -> (u64, u64, u64) {
    let shard = |user| h.routing().physical_of_user(user);
    let buyer = 7;
    let same = (100..).find(|m| shard(*m) == shard(buyer)).unwrap();
    let other = (100..).find(|m| shard(*m) != shard(buyer)).unwrap();
    (buyer, same, other)
}

fn trade(buyer: u64, merchant: u64, order: &str, amount: u64) -> NewTrade {
    NewTrade {
        buyer_id: buyer,
        merchant_id: merchant,
        merchant_order_no: order.into(),
        amount,
        currency: "CNY".into(),
        memo: String::new(),
    }
}

#[test]
fn a_trade_paid_from_a_balance_moves_the_money_once_and_settles_to_its_merchant() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let (buyer, same, other) = users(&h);
    h.deposit_blocking(buyer, "CNY", DEPOSITED, "fund").unwrap();
    let near = h.create_trade_blocking(trade(buyer, same, "near", 3_000)).unwrap().id;
    let far = h.create_trade_blocking(trade(buyer, other, "far", 2_000)).unwrap().id;

    let paid = h.pay_from_balance_blocking(near).unwrap();
    assert_eq!((paid.status, paid.from_balance, paid.replayed), (TradeStatus::Paid, true, false));
    assert!(h.get_blocking(near).unwrap().from_balance, "a reader sees how the trade was paid");
    assert_eq!((available(&h, buyer), in_transit(&h), money_cny(&h)), (7_000, 3_000, DEPOSITED as i128));
    // A retry of the payment answers it and takes nothing more; a payment of the other kind
    // (by card) is refused: it would be a second payment.
    let again = h.pay_from_balance_blocking(near).unwrap();
    assert_eq!(again, tradeshard_engine::Receipt { replayed: true, ..paid });
    match h.pay_blocking(near) {
        Err(Error::Refused(Refusal::IllegalTransition { from: TradeStatus::Paid, action: "pay", .. })) => {}
        other => panic!("a card payment of a trade paid from the balance: {other:?}"),
    }
    assert_eq!(available(&h, buyer), 7_000);

    h.pay_from_balance_blocking(far).unwrap();
    let refund = h.refund_blocking(far, "R-1", 500).unwrap();
    assert_eq!((refund.refunded_amount, refund.from_balance), (500, true));
    assert!(h.refund_blocking(far, "R-1", 500).unwrap().replayed);
    assert_eq!((available(&h, buyer), in_transit(&h), money_cny(&h)), (5_500, 4_500, DEPOSITED as i128));

    // Settling credits the merchant with what was not refunded: in the trade's shard at once,
    // in another through an activity made before the settle answers.
    let settled = h.settle_blocking(near).unwrap();
    assert_eq!((settled.status, settled.from_balance), (TradeStatus::Settled, true));
    assert_eq!(available(&h, same), 3_000);
    let settled = h.settle_blocking(far).unwrap();
    assert_eq!((settled.status, settled.refunded_amount), (TradeStatus::Settled, 500));
    assert_eq!(available(&h, other), 1_500);
    wait_until_no_activity_in_doubt(&h);
    assert_eq!((in_transit(&h), money_cny(&h)), (0, DEPOSITED as i128));
    // The credit's activity is forgotten once completed; its branch stays in the merchant's
    // shard, which answers any late step.
    let stats = h.stats_blocking().unwrap();
    let (activities, branches): (u64, u64) =
        stats.shards.iter().fold((0, 0), |(a, b), s| (a + s.activities, b + s.branches));
    assert_eq!((activities, branches), (0, 1));
    assert!(h.settle_blocking(far).unwrap().replayed);
    assert!(matches!(h.refund_blocking(far, "R-2", 1), Err(Error::Refused(Refusal::IllegalTransition { .. }))));
    assert_eq!((available(&h, buyer), available(&h, same), available(&h, other)), (5_500, 3_000, 1_500));
    engine.close().unwrap();

    // Everything is in the logs: an open replays it.
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    assert_eq!((available(&h, buyer), available(&h, same), available(&h, other)), (5_500, 3_000, 1_500));
    assert_eq!((in_transit(&h), money_cny(&h)), (0, DEPOSITED as i128));
    assert_eq!(h.get_blocking(far).unwrap().status, TradeStatus::Settled);
    engine.close().unwrap();
}

#[test]
fn a_payment_the_balance_cannot_cover_is_refused_and_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let (buyer, same, _) = users(&h);
    h.deposit_blocking(buyer, "CNY", 1_000, "fund").unwrap();
    let id = h.create_trade_blocking(trade(buyer, same, "big", 1_001)).unwrap().id;
    match h.pay_from_balance_blocking(id) {
        Err(Error::Refused(Refusal::InsufficientFunds { available: 1_000, requested: 1_001, .. })) => {}
        other => panic!("expected InsufficientFunds, got {other:?}"),
    }
    assert_eq!(h.get_blocking(id).unwrap().status, TradeStatus::Created);
    assert_eq!((available(&h, buyer), in_transit(&h)), (1_000, 0));

    // Twenty payments of 100 sent together from 1,000: exactly ten are made. Those the
    // executor takes in one batch are checked against each other's debits while in flight.
    let ids: Vec<TradeId> =
        (0..20).map(|n| h.create_trade_blocking(trade(buyer, same, &format!("small-{n}"), 100)).unwrap().id).collect();
    let answers =
        futures_lite::future::block_on(join_all(ids.iter().map(|id| h.pay_from_balance(*id)).collect::<Vec<_>>()));
    let refused = |a: &&Result<_, Error>| matches!(a, Err(Error::Refused(Refusal::InsufficientFunds { .. })));
    assert_eq!(answers.iter().filter(|a| a.is_ok()).count(), 10, "ten payments of 100 from 1,000");
    assert_eq!(answers.iter().filter(refused).count(), 10, "the others refused for too little");
    assert_eq!((available(&h, buyer), money_cny(&h)), (0, 1_000));

    // A trade paid outside the engine stays so: a payment from the balance is refused.
    h.deposit_blocking(buyer, "CNY", 400, "more").unwrap();
    let outside = h.create_trade_blocking(trade(buyer, same, "card", 300)).unwrap().id;
    h.pay_blocking(outside).unwrap();
    assert!(!h.get_blocking(outside).unwrap().from_balance);
    assert!(matches!(h.pay_from_balance_blocking(outside), Err(Error::Refused(Refusal::IllegalTransition { .. }))));
    assert!(h.pay_blocking(outside).unwrap().replayed);
    h.refund_blocking(outside, "R-card", 300).unwrap();
    assert_eq!((available(&h, buyer), money_cny(&h)), (400, 1_400), "a card's refund is not the balance's");
    assert!(matches!(h.pay_from_balance_blocking(TradeId::new(0, 999_999)), Err(Error::NotFound(_))));
    engine.close().unwrap();
}

#[test]
fn payments_from_balances_survive_checkpoints_and_trades_that_left_memory() {
    let dir = tempfile::tempdir().unwrap();
    let options =
        |dir: &std::path::Path| Options { upkeep: upkeep_on_request(false, None), ..engine_options(dir, 2, 2) };
    let engine = Engine::open(options(dir.path())).unwrap();
    let h = engine.handle();
    let (buyer, same, other) = users(&h);
    h.deposit_blocking(buyer, "CNY", DEPOSITED, "fund").unwrap();
    let count = 2 * SMALL_TRADE_MEMORY / 88;
    let mut ids = Vec::new();
    for n in 0..count {
        let merchant = if n % 2 == 0 { same } else { other };
        let id = h.create_trade_blocking(trade(buyer, merchant, &format!("O-{n}"), 100)).unwrap().id;
        h.pay_from_balance_blocking(id).unwrap();
        ids.push(id);
    }
    // The oldest trades leave memory with the checkpoint; their changes bring them back.
    h.checkpoint_blocking().unwrap();
    assert!(h.stats_blocking().unwrap().shards.iter().map(|s| s.trades_in_memory).sum::<u64>() < count);
    h.refund_blocking(ids[0], "R-0", 40).unwrap();
    h.refund_blocking(ids[1], "R-1", 40).unwrap();
    h.settle_blocking(ids[0]).unwrap();
    h.settle_blocking(ids[1]).unwrap();
    wait_until_no_activity_in_doubt(&h);
    let spent = 100 * count;
    assert_eq!(available(&h, buyer), DEPOSITED - spent + 80);
    assert_eq!((available(&h, same), available(&h, other)), (60, 60));
    assert_eq!(in_transit(&h), i128::from(spent - 200));
    engine.close().unwrap();

    // Reopened without a checkpoint since: the payments after it are replayed onto the
    // checkpoint's balances, the changes to trades on disk onto the table's records.
    let engine = Engine::open(options(dir.path())).unwrap();
    let h = engine.handle();
    assert_eq!(available(&h, buyer), DEPOSITED - spent + 80);
    assert_eq!((available(&h, same), available(&h, other)), (60, 60));
    assert_eq!((in_transit(&h), money_cny(&h)), (i128::from(spent - 200), DEPOSITED as i128));
    let trade = h.get_blocking(ids[1]).unwrap();
    assert_eq!((trade.status, trade.refunded_amount), (TradeStatus::Settled, 40));
    // A refund of a trade that left memory still goes back to the buyer.
    h.checkpoint_blocking().unwrap();
    h.refund_blocking(ids[2], "R-2", 100).unwrap();
    assert_eq!(available(&h, buyer), DEPOSITED - spent + 180);
    assert_eq!(money_cny(&h), DEPOSITED as i128);
    engine.close().unwrap();
}

/// A pay from the balance retried after the trade was refunded or settled since (its first
/// answer lost) is a repeat: answered with the trade as it stands, nothing taken again. A pay
/// by card there, or of the other kind, is still refused.
#[test]
fn a_pay_from_the_balance_retried_after_a_refund_or_a_settle_is_a_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let (buyer, same, _) = users(&h);
    h.deposit_blocking(buyer, "CNY", DEPOSITED, "fund").unwrap();
    let refunded = h.create_trade_blocking(trade(buyer, same, "refunded", 3_000)).unwrap().id;
    h.pay_from_balance_blocking(refunded).unwrap();
    h.refund_blocking(refunded, "r-1", 1_000).unwrap();
    let settled = h.create_trade_blocking(trade(buyer, same, "settled", 2_000)).unwrap().id;
    h.pay_from_balance_blocking(settled).unwrap();
    h.settle_blocking(settled).unwrap();
    let by_card = h.create_trade_blocking(trade(buyer, same, "by-card", 500)).unwrap().id;
    h.pay_blocking(by_card).unwrap();
    h.settle_blocking(by_card).unwrap();
    let (before, money) = (available(&h, buyer), money_cny(&h));

    let again = h.pay_from_balance_blocking(refunded).unwrap();
    assert_eq!((again.status, again.refunded_amount, again.replayed), (TradeStatus::Refunded, 1_000, true));
    let again = h.pay_from_balance_blocking(settled).unwrap();
    assert_eq!((again.status, again.replayed), (TradeStatus::Settled, true));
    assert_eq!((available(&h, buyer), money_cny(&h)), (before, money), "nothing taken again");
    for refused in [h.pay_blocking(refunded), h.pay_blocking(by_card), h.pay_from_balance_blocking(by_card)] {
        assert!(matches!(refused, Err(Error::Refused(Refusal::IllegalTransition { .. }))), "{refused:?}");
    }
    engine.close().unwrap();
}
