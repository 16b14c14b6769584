//! A property test of the engine against a plain in-memory model: random sequences of
//! creates (including retries and conflicting retries), pays, settles, closes and refunds
//! (their request numbers drawn from a few, so that refunds are retried, and reused with
//! another amount or on another trade) over a few users, with every answer and then every
//! read compared, before and after a reopen. A repeated move or refund must answer the
//! original receipt, marked `replayed`, and change nothing.

use std::collections::HashMap;

use proptest::prelude::*;
use tradeshard_engine::{Engine, EngineHandle, Error, NewTrade, Refusal, TradeId, TradeStatus};
use tradeshard_tests::{engine_options, new_trade};

#[derive(Debug, Clone)]
enum Op {
    /// Order `order` of `buyer`'s merchant and numbering, created for `as_buyer` when given
    /// (the same order number sent with another buyer, whose shard is mostly another).
    Create {
        buyer: u64,
        order: u64,
        amount: u64,
        as_buyer: Option<u64>,
    },
    Pay(usize),
    Settle(usize),
    Close(usize),
    /// A refund of an amount under refund request number `R-{n}`.
    Refund(usize, u64, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..5, 0u64..6, 1u64..1000, prop::option::weighted(0.25, 1u64..5))
            .prop_map(|(buyer, order, amount, as_buyer)| Op::Create { buyer, order, amount, as_buyer }),
        2 => any::<usize>().prop_map(Op::Pay),
        1 => any::<usize>().prop_map(Op::Settle),
        1 => any::<usize>().prop_map(Op::Close),
        2 => (any::<usize>(), 1u64..700, 0u8..4).prop_map(|(i, a, n)| Op::Refund(i, a, n)),
    ]
}

/// The model: what each trade should be.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ModelTrade {
    buyer: u64,
    merchant: u64,
    amount: u64,
    refunded: u64,
    status: TradeStatus,
}

/// What the engine must answer to a change.
#[derive(Debug, PartialEq)]
enum Expected {
    /// Done now: the trade's new status and refunded total.
    Done(TradeStatus, u64),
    /// A repeat: the original's status and refunded total, nothing changed.
    Repeat(TradeStatus, u64),
    Refused,
    RefundConflict,
}

/// A refund done under a request number, by (merchant, buyer, number): its trade, amount and
/// the refunded total after it.
type Refunds = HashMap<(u64, u64, u8), (TradeId, u64, u64)>;

fn apply_model(id: TradeId, trade: &mut ModelTrade, refunds: &mut Refunds, op: &Op) -> Expected {
    use TradeStatus::*;
    let next = match (trade.status, op) {
        (Paid, Op::Pay(_)) | (Settled, Op::Settle(_)) | (Closed, Op::Close(_)) => {
            return Expected::Repeat(trade.status, trade.refunded)
        }
        (_, Op::Refund(_, amount, n)) if refunds.contains_key(&(trade.merchant, trade.buyer, *n)) => {
            let (original, original_amount, refunded_after) = refunds[&(trade.merchant, trade.buyer, *n)];
            return match original == id && original_amount == *amount {
                true => Expected::Repeat(Refunded, refunded_after),
                false => Expected::RefundConflict,
            };
        }
        (Created, Op::Pay(_)) => Paid,
        (Created, Op::Close(_)) => Closed,
        (Paid, Op::Settle(_)) => Settled,
        (Paid | Refunded, Op::Refund(_, amount, n)) if trade.refunded + amount <= trade.amount => {
            trade.refunded += amount;
            refunds.insert((trade.merchant, trade.buyer, *n), (id, *amount, trade.refunded));
            Refunded
        }
        _ => return Expected::Refused,
    };
    trade.status = next;
    Expected::Done(next, trade.refunded)
}

fn check_reads(handle: &EngineHandle, model: &HashMap<TradeId, ModelTrade>) {
    for (id, expected) in model {
        let trade = handle.get_blocking(*id).unwrap();
        assert_eq!(
            (trade.buyer_id, trade.amount, trade.refunded_amount, trade.status),
            (expected.buyer, expected.amount, expected.refunded, expected.status),
            "trade {id}"
        );
    }
    for buyer in 1..5 {
        let listed: Vec<TradeId> =
            handle.list_user_trades_blocking(buyer, 100, None).unwrap().iter().map(|t| t.id).collect();
        let mut expected: Vec<TradeId> = model.iter().filter(|(_, t)| t.buyer == buyer).map(|(id, _)| *id).collect();
        expected.sort_by_key(|id| std::cmp::Reverse(id.counter()));
        assert_eq!(listed, expected, "buyer {buyer}'s trades, newest first");
    }
}

/// Every order number names its one trade when looked up by merchant and order number.
fn check_orders(handle: &EngineHandle, orders: &HashMap<(u64, u64), (TradeId, u64, u64)>) {
    for ((buyer, order), (id, _, _)) in orders {
        let numbering = new_trade(*buyer, *order, 1);
        let found = handle.get_by_order_blocking(numbering.merchant_id, &numbering.merchant_order_no).unwrap();
        assert_eq!(found.id, *id, "order {}", numbering.merchant_order_no);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_agrees_with_a_simple_model(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
        let handle = engine.handle();
        let mut model: HashMap<TradeId, ModelTrade> = HashMap::new();
        let mut ids: Vec<TradeId> = Vec::new();
        // (numbering buyer, order) -> (trade, amount, the buyer it was created for).
        let mut orders: HashMap<(u64, u64), (TradeId, u64, u64)> = HashMap::new();
        let mut refunds = Refunds::new();
        for op in &ops {
            match op {
                Op::Create { buyer, order, amount, as_buyer } => {
                    let actual_buyer = as_buyer.unwrap_or(*buyer);
                    let trade = NewTrade { buyer_id: actual_buyer, ..new_trade(*buyer, *order, *amount) };
                    let outcome = handle.create_trade_blocking(trade);
                    match orders.get(&(*buyer, *order)) {
                        Some(&(id, original, original_buyer)) if original == *amount && original_buyer == actual_buyer => {
                            let receipt = outcome.unwrap();
                            prop_assert_eq!((receipt.id, receipt.replayed), (id, true));
                        }
                        Some(_) => {
                            let holder = orders[&(*buyer, *order)].0;
                            let conflict = matches!(outcome, Err(Error::Refused(Refusal::IdempotencyConflict { existing, .. })) if existing == Some(holder));
                            prop_assert!(conflict, "a different body under a used order number must conflict: {:?}", outcome);
                        }
                        None => {
                            let receipt = outcome.unwrap();
                            orders.insert((*buyer, *order), (receipt.id, *amount, actual_buyer));
                            model.insert(receipt.id, ModelTrade { buyer: actual_buyer, merchant: new_trade(*buyer, 0, 1).merchant_id, amount: *amount, refunded: 0, status: TradeStatus::Created });
                            ids.push(receipt.id);
                        }
                    }
                }
                Op::Pay(i) | Op::Settle(i) | Op::Close(i) | Op::Refund(i, _, _) => {
                    if ids.is_empty() {
                        continue;
                    }
                    let id = ids[i % ids.len()];
                    let outcome = match op {
                        Op::Pay(_) => handle.pay_blocking(id),
                        Op::Settle(_) => handle.settle_blocking(id),
                        Op::Close(_) => handle.close_trade_blocking(id),
                        Op::Refund(_, amount, n) => handle.refund_blocking(id, &format!("R-{n}"), *amount),
                        Op::Create { .. } => unreachable!(),
                    };
                    let trade = model.get_mut(&id).unwrap();
                    match apply_model(id, trade, &mut refunds, op) {
                        Expected::Done(status, refunded) => {
                            let receipt = outcome.unwrap();
                            prop_assert_eq!((receipt.status, receipt.refunded_amount, receipt.replayed), (status, refunded, false));
                        }
                        Expected::Repeat(status, refunded) => {
                            let receipt = outcome.unwrap();
                            prop_assert_eq!((receipt.status, receipt.refunded_amount, receipt.replayed), (status, refunded, true));
                        }
                        Expected::RefundConflict => {
                            let conflict = matches!(outcome, Err(Error::Refused(Refusal::RefundRequestConflict { .. })));
                            prop_assert!(conflict, "{:?} on {:?} reused a refund number: {:?}", op, trade, outcome);
                        }
                        Expected::Refused => prop_assert!(outcome.is_err(), "{:?} on {:?} was accepted", op, trade),
                    }
                }
            }
        }
        check_reads(&handle, &model);
        check_orders(&handle, &orders);
        engine.close().unwrap();
        let engine = Engine::open(engine_options(dir.path(), 2, 1)).unwrap();
        check_reads(&engine.handle(), &model);
        check_orders(&engine.handle(), &orders);
        engine.close().unwrap();
    }
}
