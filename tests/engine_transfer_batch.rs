//! Transfers in batches (`EngineHandle::transfer_many`): each transfer of a batch answers what
//! it would have answered alone, within a shard or across shards, refusals included; the
//! batch is no transaction (a refused transfer leaves the others done); a batch sent again,
//! before or after a reopen, answers every transfer's original and moves nothing more; a
//! batch over the limit is refused whole and leaves no trace.

use std::collections::BTreeMap;

use tradeshard_engine::{
    Engine, EngineHandle, Error, InputError, Refusal, TransferReceipt, TransferRequest, TRANSFERS_PER_CALL_MAX,
};
use tradeshard_tests::{available, engine_options, money_cny, settled_records, wait_until_no_activity_in_doubt};

const USERS: u64 = 40;
const FUNDING: u64 = 1_000;

/// What each transfer of the batch must answer the first time.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Done,
    /// The same number and body as an earlier transfer of the batch: one of the two is the
    /// original, the other its repeat.
    Twin,
    Insufficient,
    Conflict,
    Invalid,
}

/// Four transfers from each user (at most 50 each, so that no one runs short whatever the
/// order), to users of its shard and of the other, then the odd ones out.
fn batch(request_nos: &[String], same_shard: impl Fn(u64, u64) -> bool) -> Vec<(TransferRequest<'_>, Expect)> {
    let mut batch = Vec::new();
    for (n, request_no) in request_nos.iter().enumerate().take(4 * USERS as usize) {
        let from = 1 + n as u64 % USERS;
        let to = 1 + (from + 1 + n as u64 / USERS * 7) % USERS;
        let t =
            TransferRequest { from_user: from, to_user: to, currency: "CNY", amount: 1 + n as u64 % 50, request_no };
        batch.push((t, Expect::Done));
    }
    let first = batch[0].0;
    let local = batch.iter().map(|(t, _)| *t).find(|t| same_shard(t.from_user, t.to_user)).unwrap();
    let across = batch.iter().map(|(t, _)| *t).find(|t| !same_shard(t.from_user, t.to_user)).unwrap();
    for t in [local, across] {
        batch.push((t, Expect::Twin));
        batch.push((TransferRequest { amount: t.amount + 1, ..t }, Expect::Conflict));
    }
    let odd = &request_nos[4 * USERS as usize..];
    batch.push((TransferRequest { amount: 1_000_000, request_no: &odd[0], ..first }, Expect::Insufficient));
    batch.push((TransferRequest { amount: 0, request_no: &odd[1], ..first }, Expect::Invalid));
    batch.push((TransferRequest { to_user: first.from_user, request_no: &odd[2], ..first }, Expect::Invalid));
    batch.push((TransferRequest { currency: "QQQ", request_no: &odd[3], ..first }, Expect::Invalid));
    batch
}

#[test]
fn each_transfer_of_a_batch_answers_as_alone_and_a_batch_sent_again_answers_the_originals() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    for user in 1..=USERS {
        h.deposit_blocking(user, "CNY", FUNDING, "fund").unwrap();
    }
    let shard_of = |user| h.routing().physical_of_user(user);
    let request_nos: Vec<String> = (0..4 * USERS + 4).map(|n| format!("B-{n}")).collect();
    let batch = batch(&request_nos, |a, b| shard_of(a) == shard_of(b));
    let requests: Vec<TransferRequest> = batch.iter().map(|(t, _)| *t).collect();
    assert!(requests.iter().any(|t| shard_of(t.from_user) == shard_of(t.to_user)), "transfers within a shard");
    assert!(requests.iter().any(|t| shard_of(t.from_user) != shard_of(t.to_user)), "and across shards");

    let answers = h.transfer_many_blocking(&requests).unwrap();
    assert_eq!(answers.len(), requests.len());
    let mut expected_balance: BTreeMap<u64, u64> = (1..=USERS).map(|user| (user, FUNDING)).collect();
    let mut originals: BTreeMap<&str, TransferReceipt> = BTreeMap::new();
    for ((t, expect), answer) in batch.iter().zip(&answers) {
        match (expect, answer) {
            (Expect::Done | Expect::Twin, Ok(receipt)) => {
                let local = shard_of(t.from_user) == shard_of(t.to_user);
                assert_eq!((receipt.from_user, receipt.to_user, receipt.amount), (t.from_user, t.to_user, t.amount));
                assert_eq!(receipt.local, local, "{t:?}");
                if let Some(original) = originals.get(t.request_no) {
                    assert_eq!(receipt.activity, original.activity, "a twin names the original's transfer");
                    assert_ne!(receipt.replayed, original.replayed, "one of two twins is the original: {t:?}");
                    continue;
                }
                originals.insert(t.request_no, *receipt);
                *expected_balance.get_mut(&t.from_user).unwrap() -= t.amount;
                *expected_balance.get_mut(&t.to_user).unwrap() += t.amount;
            }
            (Expect::Insufficient, Err(Error::Refused(Refusal::InsufficientFunds { requested: 1_000_000, .. }))) => {}
            (Expect::Conflict, Err(Error::Refused(Refusal::AccountRequestConflict { op: "transfer", .. }))) => {}
            (Expect::Invalid, Err(Error::Invalid(_))) => {}
            other => panic!("{t:?}: {other:?}"),
        }
    }
    assert_eq!(originals.len(), 4 * USERS as usize);
    wait_until_no_activity_in_doubt(&h);
    for (user, balance) in &expected_balance {
        assert_eq!(available(&h, *user), *balance, "user {user}: each transfer moved its money once");
    }
    assert_eq!(money_cny(&h), (USERS * FUNDING) as i128, "money is conserved");

    // Sent again: every transfer answers its original, and nothing moves or is written.
    let check_resent = |h: &EngineHandle| {
        let written = settled_records(h);
        for ((t, expect), answer) in batch.iter().zip(h.transfer_many_blocking(&requests).unwrap()) {
            match (expect, answer) {
                (Expect::Done | Expect::Twin, Ok(receipt)) => {
                    assert_eq!(receipt, TransferReceipt { replayed: true, ..originals[t.request_no] })
                }
                (Expect::Insufficient, Err(Error::Refused(Refusal::InsufficientFunds { .. }))) => {}
                (Expect::Conflict, Err(Error::Refused(Refusal::AccountRequestConflict { .. }))) => {}
                (Expect::Invalid, Err(Error::Invalid(_))) => {}
                other => panic!("sent again, {t:?}: {other:?}"),
            }
        }
        assert_eq!(settled_records(h), written, "a batch sent again writes nothing");
        for (user, balance) in &expected_balance {
            assert_eq!(available(h, *user), *balance, "user {user}: a batch sent again moves nothing");
        }
    };
    check_resent(&h);

    // Over the limit: refused whole, before anything is sent; an empty batch answers nothing.
    let written = settled_records(&h);
    let fresh: Vec<String> = (0..=TRANSFERS_PER_CALL_MAX).map(|n| format!("L-{n}")).collect();
    let too_many: Vec<TransferRequest> =
        fresh.iter().map(|request_no| TransferRequest { request_no, ..requests[0] }).collect();
    match h.transfer_many_blocking(&too_many) {
        Err(Error::Invalid(InputError::BadBatch { count, max })) => {
            assert_eq!((count, max), (TRANSFERS_PER_CALL_MAX + 1, TRANSFERS_PER_CALL_MAX))
        }
        other => panic!("a batch over the limit must be refused: {:?}", other.map(|answers| answers.len())),
    }
    assert_eq!(settled_records(&h), written, "a refused batch leaves no trace");
    assert!(h.transfer_many_blocking(&[]).unwrap().is_empty());
    engine.close().unwrap();

    // After a reopen, and again once a checkpoint moved the requests and activities into runs.
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    check_resent(&h);
    h.checkpoint_blocking().unwrap();
    check_resent(&h);
    assert_eq!(money_cny(&h), (USERS * FUNDING) as i128);
    engine.close().unwrap();
}
