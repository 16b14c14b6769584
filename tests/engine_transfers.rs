//! Transfers through the public handle: within one shard (one journal record) and across
//! shards (a TCC activity), idempotent on the payer's request number, refused with no trace
//! when the payer has too little, money conserved at every instant a reader can observe
//! (balances plus money in transit equal deposits less withdrawals), and recovery finishing
//! activities that their initiator left (here: past their deadline) when the engine opens.

use std::collections::BTreeMap;

use tradeshard_engine::{Currency, Engine, EngineHandle, Error, InputError, Refusal, TransferReceipt};
use tradeshard_tests::{available, engine_options, money, settled_records, wait_until_no_activity_in_doubt};

fn shard_of(h: &EngineHandle, user: u64) -> u32 {
    let routing = h.routing();
    routing.physical_of_user(user)
}

/// Two users in one shard and two in different shards, all funded with 1,000 CNY.
fn funded_users(h: &EngineHandle) -> ((u64, u64), (u64, u64)) {
    let mut same = None;
    let mut across = None;
    for a in 1..100u64 {
        for b in a + 1..100 {
            match shard_of(h, a) == shard_of(h, b) {
                true => same = same.or(Some((a, b))),
                false if same.is_some_and(|(x, y)| ![x, y].contains(&a) && ![x, y].contains(&b)) => {
                    across = across.or(Some((a, b)))
                }
                false => {}
            }
        }
    }
    let (same, across) = (same.unwrap(), across.unwrap());
    for user in [same.0, same.1, across.0, across.1] {
        h.deposit_blocking(user, "CNY", 1_000, "fund").unwrap();
    }
    (same, across)
}

#[test]
fn transfers_move_money_once_within_a_shard_and_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let ((a, b), (c, d)) = funded_users(&h);
    let cny = Currency::parse("CNY").unwrap();
    for (from, to, local) in [(a, b, true), (c, d, false)] {
        let receipt = h.transfer_blocking(from, to, "CNY", 300, "T-1").unwrap();
        let expected = TransferReceipt {
            activity: receipt.activity,
            from_user: from,
            to_user: to,
            currency: cny,
            amount: 300,
            local,
            replayed: false,
        };
        assert_eq!(receipt, expected);
        assert_eq!((available(&h, from), available(&h, to)), (700, 1_300));
        // Across shards the activity's Complete is queued behind the answer; it leaves the
        // activities in doubt once durable and counted, so the count below includes it.
        wait_until_no_activity_in_doubt(&h);
        let written = settled_records(&h);
        assert_eq!(
            h.transfer_blocking(from, to, "CNY", 300, "T-1").unwrap(),
            TransferReceipt { replayed: true, ..receipt }
        );
        assert_eq!(settled_records(&h), written, "a repeat writes nothing");
        assert_eq!((available(&h, from), available(&h, to)), (700, 1_300), "a repeat moves nothing");
        // The same number for something else names what it did, within a shard or across.
        match h.transfer_blocking(from, to, "CNY", 301, "T-1") {
            Err(Error::Refused(Refusal::AccountRequestConflict { op: "transfer", amount: 300, .. })) => {}
            other => panic!("the same number for another amount must conflict: {other:?}"),
        }
        match h.deposit_blocking(from, "CNY", 5, "T-1") {
            Err(Error::Refused(Refusal::AccountRequestConflict { op: "transfer", amount: 300, .. })) => {}
            other => panic!("a transfer's number is not free for a deposit: {other:?}"),
        }
        match h.transfer_blocking(from, to, "CNY", 5, "fund") {
            Err(Error::Refused(Refusal::AccountRequestConflict { op: "deposit", amount: 1_000, .. })) => {}
            other => panic!("a deposit's number is not free for a transfer: {other:?}"),
        }
        // Too little available: refused, nothing recorded, the number still free.
        let written = settled_records(&h);
        match h.transfer_blocking(from, to, "CNY", 701, "T-2") {
            Err(Error::Refused(Refusal::InsufficientFunds { available: 700, requested: 701, .. })) => {}
            other => panic!("an overdraft must be refused: {other:?}"),
        }
        assert_eq!(settled_records(&h), written, "a refused transfer writes nothing");
        assert!(!h.transfer_blocking(from, to, "CNY", 700, "T-2").unwrap().replayed);
        assert_eq!((available(&h, from), available(&h, to)), (0, 2_000));
    }
    assert_eq!(money(&h)[&cny], 4_000, "money is conserved");
    assert!(matches!(h.transfer_blocking(a, a, "CNY", 1, "x"), Err(Error::Invalid(InputError::SameAccount))));
    assert!(matches!(h.transfer_blocking(a, 0, "CNY", 1, "x"), Err(Error::Invalid(InputError::ZeroUserId))));
    let stats = h.stats_blocking().unwrap();
    assert_eq!(stats.shards.iter().map(|s| s.activities).sum::<u64>(), 2, "two transfers across shards");
    wait_until_no_activity_in_doubt(&h);
    engine.close().unwrap();

    // After a reopen: the same answers, from the log; and again once a checkpoint moved the
    // completed activities and their branches out of memory into runs.
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    assert!(h.transfer_blocking(c, d, "CNY", 300, "T-1").unwrap().replayed);
    h.checkpoint_blocking().unwrap();
    let stats = h.stats_blocking().unwrap();
    let held: u64 = stats.shards.iter().map(|s| s.activities + s.branches).sum();
    assert_eq!(held, 0, "ended activities and branches left memory");
    for (request_no, original) in [("T-1", 300), ("T-2", 700)] {
        assert!(h.transfer_blocking(c, d, "CNY", original, request_no).unwrap().replayed);
        match h.transfer_blocking(c, d, "CNY", 1, request_no) {
            Err(Error::Refused(Refusal::AccountRequestConflict { op: "transfer", amount, .. })) => {
                assert_eq!(amount, original)
            }
            other => panic!("a transfer's number in a run, for another amount: {other:?}"),
        }
        match h.deposit_blocking(c, "CNY", 5, request_no) {
            Err(Error::Refused(Refusal::AccountRequestConflict { op: "transfer", .. })) => {}
            other => panic!("a transfer's number in a run, for a deposit: {other:?}"),
        }
    }
    assert_eq!((available(&h, c), available(&h, d)), (0, 2_000));
    assert_eq!(money(&h)[&cny], 4_000);
    engine.close().unwrap();
}

/// Many clients moving money around in both directions at once, each request sent twice:
/// at every observation and at the end, balances plus money in transit equal the deposits.
#[test]
fn concurrent_transfers_conserve_money_at_every_observation() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 4, 2)).unwrap();
    let h = engine.handle();
    let users: Vec<u64> = (1..=12).collect();
    for user in &users {
        h.deposit_blocking(*user, "USD", 10_000, "fund").unwrap();
    }
    let usd = Currency::parse("USD").unwrap();
    let deposited: BTreeMap<u32, i128> = users.iter().fold(BTreeMap::new(), |mut by_shard, user| {
        *by_shard.entry(shard_of(&h, *user)).or_default() += 10_000;
        by_shard
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let observer = {
        let (h, stop) = (h.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut observations = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Every step of a transfer keeps its shard's balances plus its count of money
                // in transit, so each shard's is its deposits at any instant.
                for shard in h.stats_blocking().unwrap().shards {
                    let money = shard.money.get(&usd).copied().unwrap_or(0);
                    assert_eq!(money, deposited.get(&shard.shard).copied().unwrap_or(0), "shard {}", shard.shard);
                }
                observations += 1;
            }
            observations
        })
    };
    let clients: Vec<_> = (0..4u64)
        .map(|client| {
            let h = h.clone();
            std::thread::spawn(move || {
                for n in 0..100u64 {
                    let from = 1 + (n * 5 + client) % 12;
                    let to = 1 + (from + 1 + n % 10) % 12;
                    let request_no = format!("c{client}-{n}");
                    let first = h.transfer_blocking(from, to, "USD", 1 + n % 300, &request_no);
                    let again = h.transfer_blocking(from, to, "USD", 1 + n % 300, &request_no);
                    match (first, again) {
                        (Ok(first), Ok(again)) => assert_eq!(again, TransferReceipt { replayed: true, ..first }),
                        (Err(Error::Refused(Refusal::InsufficientFunds { .. })), _) => {}
                        (
                            Err(Error::Refused(Refusal::TransferCancelled { .. })),
                            Err(Error::Refused(Refusal::TransferCancelled { .. })),
                        ) => {}
                        other => panic!("{other:?}"),
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(observer.join().unwrap() > 0);
    assert_eq!(money(&h)[&usd], 120_000, "balances plus money in transit equal the deposits");
    wait_until_no_activity_in_doubt(&h);
    assert_eq!(h.money_in_transit_blocking().unwrap().values().sum::<i128>(), 0);
    let sum: u64 = users.iter().map(|user| h.balance_blocking(*user, "USD").unwrap().available).sum();
    assert_eq!(sum, 120_000);
    engine.close().unwrap();
}
