//! Account request numbers that checkpoints moved out of memory into sorted runs on disk, on the
//! simulated disk: a retried deposit, withdrawal or transfer answers the original receipt (the
//! balance it left), another operation or amount under an old number is a conflict naming what
//! the original did, an activity cannot take an old number, the checkpoint no longer grows with
//! the requests, all of it again after a reopen; a failed read of a run refuses the request and
//! moves no money.

use tradeshard_shard::{
    account_request_key, AccountCommand, AccountOp, AccountReceipt, BranchAction, BranchPlan, Currency, Refusal, Shard,
    Step, TradeError,
};
use tradeshard_tests::{call, rolling_shard_config, run, upkeep_on_request};
use tradeshard_wal::disk::{Fault, SimDisk};

type SimShard = Shard<SimDisk>;

async fn open(disk: &SimDisk) -> Result<SimShard, TradeError> {
    Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep_on_request(false, None)).await
}

fn cny() -> Currency {
    Currency::parse("CNY").unwrap()
}

/// Request `n` of the test: a deposit of `100 + n` to user 1, every third a withdrawal of 1, or
/// a transfer of 2 to user 2.
fn command(n: u64) -> AccountCommand {
    let (op, amount) = match n % 3 {
        0 => (AccountOp::Deposit, 100 + n),
        1 => (AccountOp::Withdraw, 1),
        _ => (AccountOp::Transfer { to_user: 2 }, 2),
    };
    AccountCommand::new(op, 1, "CNY", amount, &format!("Q-{n}")).unwrap()
}

async fn post(shard: &SimShard, command: AccountCommand) -> Result<AccountReceipt, TradeError> {
    call(|reply| shard.post(command, reply)).await
}

/// Requests `0..count`, a checkpoint after every `per_checkpoint`; their receipts.
async fn post_in_checkpoints(shard: &SimShard, count: u64, per_checkpoint: u64) -> Vec<AccountReceipt> {
    let mut receipts = Vec::new();
    for n in 0..count {
        receipts.push(post(shard, command(n)).await.unwrap());
        if (n + 1) % per_checkpoint == 0 {
            shard.checkpoint().await.unwrap();
        }
    }
    receipts
}

/// Every request sent again answers its original receipt, marked a repeat, and moves nothing;
/// another amount under its number is a conflict naming the original's operation and amount;
/// the lookup by key finds what it did.
async fn retries_answer_the_originals(shard: &SimShard, receipts: &[AccountReceipt]) {
    let balances = (shard.balance(1, cny()), shard.balance(2, cny()));
    for (n, original) in receipts.iter().enumerate() {
        let sent = command(n as u64);
        let again = post(shard, sent.clone()).await.unwrap();
        assert_eq!(again, AccountReceipt { replayed: true, ..*original }, "request {n} answers its original");
        let other = AccountCommand { amount: sent.amount + 1, ..sent.clone() };
        match post(shard, other).await {
            Err(TradeError::Refused(Refusal::AccountRequestConflict { amount, op, .. })) => {
                assert_eq!((amount, op), (sent.amount, sent.op.name()), "request {n}'s conflict names the original")
            }
            other => panic!("request {n} reused for another amount: {other:?}"),
        }
        let key = account_request_key(1, &sent.request_no);
        let found = call(|reply| shard.find_account_request(key, reply)).await.unwrap();
        assert_eq!(found, Some((sent.op, sent.amount)), "request {n} found by its key");
    }
    assert_eq!((shard.balance(1, cny()), shard.balance(2, cny())), balances, "the retries moved nothing");
}

#[test]
fn request_numbers_in_runs_answer_retries_and_conflicts_before_and_after_a_reopen() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let receipts = post_in_checkpoints(&shard, 240, 40).await;
        assert_eq!(shard.stats().checkpoints.key_run_entries, 240, "every request is in a run");
        assert!(disk.list_names().iter().any(|name| name.starts_with("requests-")));
        retries_answer_the_originals(&shard, &receipts).await;
        assert!(shard.stats().checkpoints.key_run_reads >= 2 * 240, "the retries read the runs");

        // An activity cannot take an old request's number, read from the runs.
        let plan =
            BranchPlan { shard: 0, branch: 0, action: BranchAction::Freeze { user_id: 1, currency: cny(), amount: 1 } };
        let taken = Step::Begin { activity: account_request_key(1, "Q-7"), deadline_ms: 5, branches: vec![plan] };
        match call(|reply| shard.transact(vec![taken], reply)).await {
            Err(TradeError::Refused(Refusal::StepConflict { .. })) => {}
            other => panic!("an activity under an old request's number: {other:?}"),
        }
        let unknown = call(|reply| shard.find_account_request(account_request_key(1, "never"), reply)).await;
        assert_eq!(unknown.unwrap(), None);

        // The checkpoint holds the balances, not the requests: as large as one of a shard with
        // the same two accounts and a single request each.
        shard.checkpoint().await.unwrap();
        let with_requests = shard.stats().checkpoints.bytes;
        let plain = SimDisk::new();
        let other = open(&plain).await.unwrap();
        post(&other, AccountCommand::new(AccountOp::Deposit, 1, "CNY", 5, "a").unwrap()).await.unwrap();
        post(&other, AccountCommand::new(AccountOp::Transfer { to_user: 2 }, 1, "CNY", 1, "b").unwrap()).await.unwrap();
        other.checkpoint().await.unwrap();
        assert_eq!(with_requests, other.stats().checkpoints.bytes, "requests are not in the checkpoint");
        other.close().await.unwrap();
        shard.close().await.unwrap();

        let shard = open(&disk).await.unwrap();
        retries_answer_the_originals(&shard, &receipts).await;
        let fresh = post(&shard, command(240)).await.unwrap();
        assert!(!fresh.replayed, "a new number is free");
        shard.close().await.unwrap();
    });
}

#[test]
fn a_failed_read_of_a_run_refuses_the_request_and_moves_nothing() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let receipts = post_in_checkpoints(&shard, 3, 3).await;
        let before = shard.balance(1, cny());
        // The retry's next operation is its read of the run.
        disk.fail_op(disk.ops() + 1, Fault::Eio);
        let failed = post(&shard, command(0)).await;
        assert!(matches!(failed, Err(TradeError::Log(_))), "the read's failure is the answer: {failed:?}");
        assert_eq!(shard.balance(1, cny()), before, "nothing moved");
        let again = post(&shard, command(0)).await.unwrap();
        assert_eq!(again, AccountReceipt { replayed: true, ..receipts[0] }, "the next retry reads the run");
        assert_eq!(shard.balance(1, cny()), before);
        shard.close().await.unwrap();
    });
}
