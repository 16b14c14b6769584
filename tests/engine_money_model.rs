//! A property test of accounts, transfers and trades paid from balances against a plain
//! in-memory model: random deposits, withdrawals and transfers (within a shard and across
//! shards) over a few users, their request numbers drawn from a few so that requests are
//! retried and reused for other amounts; trades bought from a balance, refunded under refund
//! request numbers and settled to merchants among the same users; reopens and checkpoints in
//! between. Every answer is compared with the model's (done, a repeat answering the original,
//! too little money, a conflict, a move the trade's state forbids), and every balance after
//! each step; balances plus what paid trades hold sum to deposits less withdrawals throughout.
//! Each request comes from the test's thread or from a task on one of the engine's executors,
//! where the requests for that executor's own shards run in place (`engine/src/local.rs`).

use std::collections::HashMap;

use proptest::prelude::*;
use tradeshard_engine::{Engine, EngineHandle, Error, NewTrade, Refusal, TradeStatus};
use tradeshard_tests::engine_options;

const USERS: u64 = 6;

#[derive(Debug, Clone)]
enum Op {
    Deposit {
        user: u64,
        amount: u64,
        number: u8,
    },
    Withdraw {
        user: u64,
        amount: u64,
        number: u8,
    },
    Transfer {
        from: u64,
        to: u64,
        amount: u64,
        number: u8,
    },
    /// A trade of `buyer` to `merchant` created and paid from the buyer's balance.
    Buy {
        buyer: u64,
        merchant: u64,
        amount: u64,
        order: u8,
    },
    /// A refund of the `pick`-th trade made so far, under refund request number `number`.
    Refund {
        pick: usize,
        amount: u64,
        number: u8,
    },
    Settle {
        pick: usize,
    },
    /// The `n`-th request sent so far, sent again as a client that lost its answer would.
    Again(usize),
    Reopen,
    Checkpoint,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..=USERS, 1u64..400, 0u8..5).prop_map(|(user, amount, number)| Op::Deposit { user, amount, number }),
        2 => (1..=USERS, 1u64..400, 0u8..5).prop_map(|(user, amount, number)| Op::Withdraw { user, amount, number }),
        4 => (1..=USERS, 1..USERS, 1u64..400, 0u8..5).prop_map(|(from, step, amount, number)| {
            Op::Transfer { from, to: 1 + (from - 1 + step) % USERS, amount, number }
        }),
        3 => (1..=USERS, 1..=USERS, 1u64..300, 0u8..4).prop_map(|(buyer, merchant, amount, order)| {
            Op::Buy { buyer, merchant, amount, order }
        }),
        2 => (any::<usize>(), 1u64..150, 0u8..3).prop_map(|(pick, amount, number)| Op::Refund { pick, amount, number }),
        2 => any::<usize>().prop_map(|pick| Op::Settle { pick }),
        3 => any::<usize>().prop_map(Op::Again),
        1 => Just(Op::Reopen),
        1 => Just(Op::Checkpoint),
    ]
}

/// What one request asked for, as its request number remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Deposit(u64),
    Withdraw(u64),
    Transfer(u64, u64),
}

/// What the engine must answer.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Done,
    Repeat,
    TooLittle,
    Conflict,
    /// A move the trade's state forbids, or a refund beyond what is left.
    Forbidden,
}

/// A trade the model made: (buyer, merchant, amount, status, refunded).
#[derive(Debug, Clone, Copy)]
struct TradeModel {
    buyer: u64,
    merchant: u64,
    amount: u64,
    status: TradeStatus,
    refunded: u64,
}

#[derive(Default)]
struct Model {
    balances: HashMap<u64, u64>,
    /// (user, request number) → what it did.
    requests: HashMap<(u64, u8), Asked>,
    /// Trades by order number, in the order they were made.
    trades: Vec<(String, TradeModel)>,
    /// (merchant, buyer, refund number) → the refunded trade's order number and the amount.
    refunds: HashMap<(u64, u64, u8), (String, u64)>,
}

impl Model {
    fn apply(&mut self, user: u64, number: u8, asked: Asked) -> Expected {
        if let Some(done) = self.requests.get(&(user, number)) {
            return if *done == asked { Expected::Repeat } else { Expected::Conflict };
        }
        let balance = self.balances.get(&user).copied().unwrap_or(0);
        match asked {
            Asked::Deposit(amount) => *self.balances.entry(user).or_default() += amount,
            Asked::Withdraw(amount) | Asked::Transfer(_, amount) if balance < amount => return Expected::TooLittle,
            Asked::Withdraw(amount) => *self.balances.entry(user).or_default() -= amount,
            Asked::Transfer(to, amount) => {
                *self.balances.entry(user).or_default() -= amount;
                *self.balances.entry(to).or_default() += amount;
            }
        }
        self.requests.insert((user, number), asked);
        Expected::Done
    }

    fn trade(&mut self, order_no: &str) -> Option<&mut TradeModel> {
        self.trades.iter_mut().find(|(order, _)| order == order_no).map(|(_, trade)| trade)
    }

    /// A create (new, or repeated) and a payment from the buyer's balance.
    fn buy(&mut self, order_no: &str, buyer: u64, merchant: u64, amount: u64) -> Expected {
        if self.trade(order_no).is_none() {
            let trade = TradeModel { buyer, merchant, amount, status: TradeStatus::Created, refunded: 0 };
            self.trades.push((order_no.to_string(), trade));
        }
        let balance = self.balances.get(&buyer).copied().unwrap_or(0);
        let trade = self.trade(order_no).expect("made above");
        match trade.status {
            TradeStatus::Created if balance < amount => Expected::TooLittle,
            TradeStatus::Created => {
                trade.status = TradeStatus::Paid;
                *self.balances.entry(buyer).or_default() -= amount;
                Expected::Done
            }
            // The trade made this move: a repeat, also once refunded or settled since (only a
            // paid trade gets there). A closed one was never paid: its state forbids it.
            TradeStatus::Paid | TradeStatus::Refunded | TradeStatus::Settled => Expected::Repeat,
            _ => Expected::Forbidden,
        }
    }

    fn refund(&mut self, order_no: &str, amount: u64, number: u8) -> Expected {
        let trade = *self.trade(order_no).expect("a trade made");
        let key = (trade.merchant, trade.buyer, number);
        if let Some((refunded, original)) = self.refunds.get(&key) {
            return if refunded == order_no && *original == amount { Expected::Repeat } else { Expected::Conflict };
        }
        let refundable = matches!(trade.status, TradeStatus::Paid | TradeStatus::Refunded);
        if !refundable || amount > trade.amount - trade.refunded {
            return Expected::Forbidden;
        }
        let trade = self.trade(order_no).expect("a trade made");
        (trade.status, trade.refunded) = (TradeStatus::Refunded, trade.refunded + amount);
        let buyer = trade.buyer;
        *self.balances.entry(buyer).or_default() += amount;
        self.refunds.insert(key, (order_no.to_string(), amount));
        Expected::Done
    }

    fn settle(&mut self, order_no: &str) -> Expected {
        let trade = self.trade(order_no).expect("a trade made");
        match trade.status {
            TradeStatus::Settled => Expected::Repeat,
            TradeStatus::Paid | TradeStatus::Refunded if trade.refunded < trade.amount => {
                trade.status = TradeStatus::Settled;
                let (merchant, credit) = (trade.merchant, trade.amount - trade.refunded);
                *self.balances.entry(merchant).or_default() += credit;
                Expected::Done
            }
            _ => Expected::Forbidden,
        }
    }

    /// What paid trades hold: the money in transit.
    fn held(&self) -> u64 {
        let held = |t: &TradeModel| matches!(t.status, TradeStatus::Paid | TradeStatus::Refunded);
        self.trades.iter().filter(|(_, t)| held(t)).map(|(_, t)| t.amount - t.refunded).sum()
    }
}

/// The engine's answer, in the model's terms.
fn classify<T>(answer: Result<T, Error>, replayed: impl Fn(&T) -> bool) -> Expected {
    match answer {
        Ok(receipt) if replayed(&receipt) => Expected::Repeat,
        Ok(_) => Expected::Done,
        Err(Error::Refused(Refusal::InsufficientFunds { .. })) => Expected::TooLittle,
        Err(Error::Refused(Refusal::AccountRequestConflict { .. } | Refusal::RefundRequestConflict { .. })) => {
            Expected::Conflict
        }
        Err(Error::Refused(Refusal::IllegalTransition { .. } | Refusal::RefundExceedsPaid { .. })) => {
            Expected::Forbidden
        }
        Err(other) => panic!("an answer the model has no place for: {other}"),
    }
}

/// Runs `request` on the test's thread, or (`on`) as a task of that executor, and waits for
/// its answer.
fn ask<T, Fut>(
    handle: &EngineHandle,
    on: Option<usize>,
    request: impl FnOnce(EngineHandle) -> Fut + Send + 'static,
) -> T
where
    T: Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let Some(executor) = on else {
        return futures_lite::future::block_on(request(handle.clone()));
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let task_handle = handle.clone();
    futures_lite::future::block_on(handle.spawn_on(executor, move || async move {
        let _ = tx.send(request(task_handle).await);
    }))
    .unwrap();
    rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the executor's task answers")
}

fn check_balances(handle: &EngineHandle, model: &Model) {
    let mut sum = 0;
    for user in 1..=USERS {
        let balance = handle.balance_blocking(user, "CNY").unwrap();
        assert_eq!(balance.available, model.balances.get(&user).copied().unwrap_or(0), "user {user}");
        assert_eq!((balance.frozen, balance.incoming), (0, 0), "user {user}: nothing left reserved");
        sum += balance.available;
    }
    let totals = handle.account_totals_blocking().unwrap();
    assert_eq!(totals.values().sum::<u128>(), u128::from(sum));
    let in_transit = handle.money_in_transit_blocking().unwrap().values().sum::<i128>();
    assert_eq!(in_transit, i128::from(model.held()), "money in transit is what paid trades hold");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn accounts_and_transfers_agree_with_a_simple_model(
        ops in prop::collection::vec(op(), 1..50),
        callers in prop::collection::vec(0usize..3, 50),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
        let mut model = Model::default();
        let mut sent: Vec<Op> = Vec::new();
        for (step, op) in ops.iter().enumerate() {
            let handle = engine.handle();
            // The test's thread, or a task of executor 0 or 1.
            let on = callers[step % callers.len()].checked_sub(1);
            let op = match *op {
                Op::Again(n) if !sent.is_empty() => sent[n % sent.len()].clone(),
                Op::Again(_) => continue,
                ref other => other.clone(),
            };
            // A refund or settle picks among the trades made so far.
            let picked = |pick: usize| model.trades.get(pick % model.trades.len().max(1)).map(|(order, _)| order.clone());
            let op = match op {
                Op::Refund { pick, .. } | Op::Settle { pick } if picked(pick).is_none() => continue,
                other => other,
            };
            if !matches!(op, Op::Reopen | Op::Checkpoint) {
                sent.push(op.clone());
            }
            let (expected, got) = match op {
                Op::Deposit { user, amount, number } => {
                    let answer = ask(&handle, on, move |h| async move { h.deposit(user, "CNY", amount, &format!("n{number}")).await });
                    (model.apply(user, number, Asked::Deposit(amount)), classify(answer, |r| r.replayed))
                }
                Op::Withdraw { user, amount, number } => {
                    let answer = ask(&handle, on, move |h| async move { h.withdraw(user, "CNY", amount, &format!("n{number}")).await });
                    (model.apply(user, number, Asked::Withdraw(amount)), classify(answer, |r| r.replayed))
                }
                Op::Transfer { from, to, amount, number } => {
                    let answer = ask(&handle, on, move |h| async move { h.transfer(from, to, "CNY", amount, &format!("n{number}")).await });
                    (model.apply(from, number, Asked::Transfer(to, amount)), classify(answer, |r| r.replayed))
                }
                Op::Buy { buyer, merchant, amount, order } => {
                    let order_no = format!("B{buyer}-{merchant}-{order}-{amount}");
                    let trade = NewTrade {
                        buyer_id: buyer,
                        merchant_id: merchant,
                        merchant_order_no: order_no.clone(),
                        amount,
                        currency: "CNY".into(),
                        memo: String::new(),
                    };
                    // An error of the first request is the answer too (and the model has no
                    // place for it): nothing panics inside an executor's task.
                    let answer = ask(&handle, on, move |h| async move {
                        match h.create_trade(trade).await {
                            Ok(created) => h.pay_from_balance(created.id).await,
                            Err(error) => Err(error),
                        }
                    });
                    (model.buy(&order_no, buyer, merchant, amount), classify(answer, |r| r.replayed))
                }
                Op::Refund { pick, amount, number } => {
                    let order_no = picked(pick).expect("checked above");
                    let trade = *model.trade(&order_no).expect("made");
                    let order = order_no.clone();
                    let answer = ask(&handle, on, move |h| async move {
                        match h.get_by_order(trade.merchant, &order).await {
                            Ok(found) => h.refund(found.id, &format!("r{number}"), amount).await,
                            Err(error) => Err(error),
                        }
                    });
                    (model.refund(&order_no, amount, number), classify(answer, |r| r.replayed))
                }
                Op::Settle { pick } => {
                    let order_no = picked(pick).expect("checked above");
                    let trade = *model.trade(&order_no).expect("made");
                    let order = order_no.clone();
                    let answer = ask(&handle, on, move |h| async move {
                        match h.get_by_order(trade.merchant, &order).await {
                            Ok(found) => h.settle(found.id).await,
                            Err(error) => Err(error),
                        }
                    });
                    (model.settle(&order_no), classify(answer, |r| r.replayed))
                }
                Op::Reopen => {
                    engine.close().unwrap();
                    engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
                    (Expected::Done, Expected::Done)
                }
                Op::Checkpoint => {
                    handle.checkpoint_blocking().unwrap();
                    (Expected::Done, Expected::Done)
                }
                Op::Again(_) => unreachable!("replaced by the request it repeats"),
            };
            prop_assert_eq!(expected, got, "{:?}", op);
            check_balances(&engine.handle(), &model);
        }
        engine.close().unwrap();
    }
}
