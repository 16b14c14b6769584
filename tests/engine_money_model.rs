//! A property test of accounts and transfers against a plain in-memory model: random
//! deposits, withdrawals and transfers (within a shard and across shards) over a few users,
//! their request numbers drawn from a few so that requests are retried and reused for other
//! amounts, with reopens and checkpoints in between. Every answer is compared with the
//! model's (done, a repeat answering the original, too little money, a conflict), and every
//! balance after each step; the balances sum to deposits less withdrawals throughout.

use std::collections::HashMap;

use proptest::prelude::*;
use tradeshard_engine::{Engine, EngineHandle, Error, Refusal};
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
}

#[derive(Default)]
struct Model {
    balances: HashMap<u64, u64>,
    /// (user, request number) → what it did.
    requests: HashMap<(u64, u8), Asked>,
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
}

/// The engine's answer, in the model's terms.
fn classify<T>(answer: Result<T, Error>, replayed: impl Fn(&T) -> bool) -> Expected {
    match answer {
        Ok(receipt) if replayed(&receipt) => Expected::Repeat,
        Ok(_) => Expected::Done,
        Err(Error::Refused(Refusal::InsufficientFunds { .. })) => Expected::TooLittle,
        Err(Error::Refused(Refusal::AccountRequestConflict { .. })) => Expected::Conflict,
        Err(other) => panic!("an answer the model has no place for: {other}"),
    }
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
    assert_eq!(handle.money_in_transit_blocking().unwrap().values().sum::<i128>(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn accounts_and_transfers_agree_with_a_simple_model(ops in prop::collection::vec(op(), 1..50)) {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
        let mut model = Model::default();
        let mut sent: Vec<Op> = Vec::new();
        for op in &ops {
            let handle = engine.handle();
            let op = match *op {
                Op::Again(n) if !sent.is_empty() => sent[n % sent.len()].clone(),
                Op::Again(_) => continue,
                ref other => other.clone(),
            };
            if matches!(op, Op::Deposit { .. } | Op::Withdraw { .. } | Op::Transfer { .. }) {
                sent.push(op.clone());
            }
            let (expected, got) = match op {
                Op::Deposit { user, amount, number } => {
                    let answer = handle.deposit_blocking(user, "CNY", amount, &format!("n{number}"));
                    (model.apply(user, number, Asked::Deposit(amount)), classify(answer, |r| r.replayed))
                }
                Op::Withdraw { user, amount, number } => {
                    let answer = handle.withdraw_blocking(user, "CNY", amount, &format!("n{number}"));
                    (model.apply(user, number, Asked::Withdraw(amount)), classify(answer, |r| r.replayed))
                }
                Op::Transfer { from, to, amount, number } => {
                    let answer = handle.transfer_blocking(from, to, "CNY", amount, &format!("n{number}"));
                    (model.apply(from, number, Asked::Transfer(to, amount)), classify(answer, |r| r.replayed))
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
