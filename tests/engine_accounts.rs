//! Accounts through the public handle: deposits and withdrawals durable and idempotent on the
//! caller's request number, balances never below zero nor above the limit, bad input refused
//! with no trace, and every balance and request number found again after a reopen that
//! replays the log and after one that loads a checkpoint.

use std::collections::BTreeMap;

use tradeshard_engine::{
    AccountOp, AccountReceipt, Balance, Currency, Engine, EngineHandle, Error, InputError, Refusal, BALANCE_MAX,
};
use tradeshard_tests::{engine_options, settled_records};

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

fn available(h: &EngineHandle, user: u64) -> u64 {
    h.balance_blocking(user, "USD").unwrap().available
}

/// A retried deposit or withdrawal answers the original receipt and moves nothing; the same
/// request number for another operation or amount is a conflict; numbers are per user.
#[test]
fn retried_account_requests_answer_the_original_and_move_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let deposit = h.deposit_blocking(7, "USD", 1_000, "D-1").unwrap();
    let expected = AccountReceipt {
        op: AccountOp::Deposit,
        user_id: 7,
        currency: usd(),
        amount: 1_000,
        balance: Balance { available: 1_000, ..Balance::default() },
        at_ms: deposit.at_ms,
        replayed: false,
    };
    assert_eq!(deposit, expected);
    let written = settled_records(&h);
    assert_eq!(h.deposit_blocking(7, "USD", 1_000, "D-1").unwrap(), AccountReceipt { replayed: true, ..deposit });
    assert_eq!(settled_records(&h), written, "a repeat writes nothing");
    assert_eq!(available(&h, 7), 1_000, "a repeat moves nothing");
    for (op, amount) in [("deposit", 999), ("withdraw", 1_000)] {
        let answer = match op {
            "deposit" => h.deposit_blocking(7, "USD", amount, "D-1"),
            _ => h.withdraw_blocking(7, "USD", amount, "D-1"),
        };
        match answer {
            Err(Error::Refused(Refusal::AccountRequestConflict { op: "deposit", amount: 1_000, .. })) => {}
            other => panic!("{op} of {amount} under a used number must conflict: {other:?}"),
        }
    }
    assert_eq!(h.deposit_blocking(8, "USD", 5, "D-1").unwrap().balance.available, 5, "numbers are per user");
    let withdrawal = h.withdraw_blocking(7, "USD", 400, "W-1").unwrap();
    assert_eq!((withdrawal.balance.available, withdrawal.replayed), (600, false));
    assert_eq!(h.withdraw_blocking(7, "USD", 400, "W-1").unwrap(), AccountReceipt { replayed: true, ..withdrawal });
    assert_eq!(available(&h, 7), 600);
    engine.close().unwrap();
}

/// A withdrawal of more than is available, and a deposit past the most a balance may hold,
/// are refused and change nothing; their request numbers stay free.
#[test]
fn balances_never_go_below_zero_or_past_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    h.deposit_blocking(3, "EUR", 100, "a").unwrap();
    match h.withdraw_blocking(3, "EUR", 101, "b") {
        Err(Error::Refused(Refusal::InsufficientFunds { user_id: 3, available: 100, requested: 101, .. })) => {}
        other => panic!("an overdraft must be refused: {other:?}"),
    }
    assert!(matches!(h.withdraw_blocking(3, "USD", 1, "b"), Err(Error::Refused(Refusal::InsufficientFunds { .. }))));
    assert_eq!(h.withdraw_blocking(3, "EUR", 100, "b").unwrap().balance, Balance::default(), "the number was free");
    let largest = tradeshard_engine::AMOUNT_MAX;
    let fills = BALANCE_MAX / largest;
    for n in 0..fills {
        h.deposit_blocking(4, "JPY", largest, &format!("fill-{n}")).unwrap();
    }
    match h.deposit_blocking(4, "JPY", 1, "over") {
        Err(Error::Refused(Refusal::BalanceLimit { user_id: 4, max: BALANCE_MAX, .. })) => {}
        other => panic!("a deposit past the limit must be refused: {other:?}"),
    }
    assert_eq!(h.balance_blocking(4, "JPY").unwrap().available, fills * largest);
    engine.close().unwrap();
}

type ErrorCheck = fn(&Error) -> bool;

/// Bad input is a typed error and leaves no trace: no record is written.
#[test]
fn bad_account_input_is_refused_with_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let written = settled_records(&h);
    let long = "x".repeat(65);
    let cases: Vec<(Result<AccountReceipt, Error>, ErrorCheck)> = vec![
        (h.deposit_blocking(0, "USD", 1, "a"), |e| matches!(e, Error::Invalid(InputError::ZeroUserId))),
        (h.deposit_blocking(1, "usd", 1, "a"), |e| matches!(e, Error::Invalid(InputError::UnknownCurrency(_)))),
        (h.deposit_blocking(1, "USD", 0, "a"), |e| matches!(e, Error::Invalid(InputError::ZeroAmount))),
        (h.withdraw_blocking(1, "USD", u64::MAX, "a"), |e| {
            matches!(e, Error::Invalid(InputError::AmountTooLarge { .. }))
        }),
        (h.deposit_blocking(1, "USD", 1, ""), |e| matches!(e, Error::Invalid(InputError::BadRequestNo { len: 0, .. }))),
        (h.deposit_blocking(1, "USD", 1, &long), |e| {
            matches!(e, Error::Invalid(InputError::BadRequestNo { len: 65, max: 64 }))
        }),
        (h.deposit_blocking(1, "USD", 1, "a b"), |e| matches!(e, Error::Invalid(InputError::BadRequestNo { .. }))),
        (h.deposit_blocking(1, "USD", 1, "caf\u{e9}"), |e| {
            matches!(e, Error::Invalid(InputError::BadRequestNo { .. }))
        }),
    ];
    for (n, (answer, expected)) in cases.into_iter().enumerate() {
        match answer {
            Err(error) if expected(&error) => {}
            other => panic!("case {n}: {other:?}"),
        }
    }
    assert!(matches!(h.balance_blocking(0, "USD"), Err(Error::Invalid(InputError::ZeroUserId))));
    assert!(matches!(h.balance_blocking(1, "XXX1"), Err(Error::Invalid(InputError::UnknownCurrency(_)))));
    assert_eq!(settled_records(&h), written, "refused input writes nothing");
    assert_eq!(h.account_totals_blocking().unwrap(), BTreeMap::new());
    engine.close().unwrap();
}

/// Balances, request numbers and totals come back after a reopen that replays the log, and
/// after one that loads a checkpoint (then nothing of them is replayed).
#[test]
fn balances_and_request_numbers_survive_reopens_from_the_log_and_from_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut receipts = Vec::new();
    let mut expected = BTreeMap::new();
    {
        let engine = Engine::open(engine_options(dir.path(), 4, 2)).unwrap();
        let h = engine.handle();
        for user in 1..=40u64 {
            receipts.push((user, "in", h.deposit_blocking(user, "CNY", 1_000 + user, "in").unwrap()));
            receipts.push((user, "out", h.withdraw_blocking(user, "CNY", user, "out").unwrap()));
            expected.insert(user, 1_000);
        }
        engine.close().unwrap();
    }
    let check = |h: &EngineHandle| {
        for (user, available) in &expected {
            assert_eq!(
                h.balance_blocking(*user, "CNY").unwrap(),
                Balance { available: *available, ..Balance::default() }
            );
        }
        for (user, request_no, receipt) in &receipts {
            let again = match *request_no {
                "in" => h.deposit_blocking(*user, "CNY", receipt.amount, request_no),
                _ => h.withdraw_blocking(*user, "CNY", receipt.amount, request_no),
            };
            assert_eq!(again.unwrap(), AccountReceipt { replayed: true, ..*receipt });
        }
        let cny = Currency::parse("CNY").unwrap();
        assert_eq!(h.account_totals_blocking().unwrap()[&cny], 40 * 1_000);
    };
    {
        let engine = Engine::open(engine_options(dir.path(), 4, 2)).unwrap();
        check(&engine.handle());
        engine.handle().checkpoint_blocking().unwrap();
        engine.close().unwrap();
    }
    let engine = Engine::open(engine_options(dir.path(), 4, 2)).unwrap();
    let stats = engine.handle().stats_blocking().unwrap();
    assert!(stats.shards.iter().all(|shard| shard.opened.checkpoint.is_some()), "every shard loads a checkpoint");
    assert_eq!(stats.shards.iter().map(|shard| shard.accounts).sum::<u64>(), 40);
    // The request numbers are in the checkpoint's runs, none in memory.
    assert_eq!(stats.shards.iter().map(|shard| shard.account_requests).sum::<u64>(), 0);
    assert_eq!(stats.shards.iter().map(|shard| shard.checkpoints.key_run_entries).sum::<u64>(), 80);
    check(&engine.handle());
    engine.close().unwrap();
}

/// Many clients depositing and withdrawing at once, with retries: every acknowledged request
/// counted once, the total equal to acknowledged deposits less withdrawals.
#[test]
fn concurrent_requests_conserve_money() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let threads: Vec<_> = (0..4u64)
        .map(|client| {
            let h = h.clone();
            std::thread::spawn(move || {
                let mut net = 0i128;
                for n in 0..200u64 {
                    let user = 1 + (n * 7 + client) % 10;
                    let request_no = format!("c{client}-{n}");
                    let answer = match n % 3 {
                        2 => h.withdraw_blocking(user, "USD", 30, &request_no).map(|r| -(r.amount as i128)),
                        _ => h.deposit_blocking(user, "USD", 20, &request_no).map(|r| r.amount as i128),
                    };
                    match answer {
                        Ok(moved) => net += moved,
                        Err(Error::Refused(Refusal::InsufficientFunds { .. })) => continue,
                        Err(other) => panic!("{other}"),
                    }
                    // Sent again, as a client that lost the answer: no second effect.
                    let again = match n % 3 {
                        2 => h.withdraw_blocking(user, "USD", 30, &request_no),
                        _ => h.deposit_blocking(user, "USD", 20, &request_no),
                    };
                    assert!(again.unwrap().replayed);
                }
                net
            })
        })
        .collect();
    let net: i128 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(h.account_totals_blocking().unwrap()[&usd()] as i128, net);
    let sum: u64 = (1..=10).map(|user| available(&h, user)).sum();
    assert_eq!(sum as i128, net);
    engine.close().unwrap();
}
