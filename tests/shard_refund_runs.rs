//! Refund request numbers that checkpoints moved out of memory into sorted runs on disk, on
//! the simulated disk: a retried refund answers the original refund's receipt, another amount
//! or another trade under an old number is a conflict naming the original's trade, the
//! checkpoint no longer grows with the refunds, all of it again after reopens and with the
//! trades gone cold; a failed read of a run refuses the refund and refunds nothing.

use tradeshard_shard::{Command, Move, Receipt, Refusal, Shard, TradeError, TradeId, TradeStatus};
use tradeshard_tests::{call, new_trade, rolling_shard_config, run, upkeep_on_request};
use tradeshard_wal::disk::{Fault, SimDisk};

async fn open(disk: &SimDisk) -> Result<Shard<SimDisk>, TradeError> {
    Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep_on_request(false, None)).await
}

fn refund(id: TradeId, amount: u64, refund_no: &str) -> Command {
    Command::Refund { id, amount, refund_no: refund_no.to_string() }
}

/// The refund request number of refund `n` of trade `t` of the test.
fn refund_no(t: usize, n: usize) -> String {
    format!("R-{t}-{n}")
}

/// `trades` paid trades of buyer 1 (amount 1,000 each), each refunded twice (100, then 200),
/// a checkpoint after every `per_checkpoint` trades; their ids and each refund's receipt.
async fn refund_in_checkpoints(
    shard: &Shard<SimDisk>,
    trades: usize,
    per_checkpoint: usize,
) -> (Vec<TradeId>, Vec<[Receipt; 2]>) {
    let (mut ids, mut receipts) = (Vec::new(), Vec::new());
    for t in 0..trades {
        let trade = new_trade(1, t as u64, 1_000).validate().unwrap();
        let id = call(|done| shard.submit(Command::Create { trade, logical_shard: 1 }, done)).await.unwrap().id;
        call(|done| shard.submit(Command::Move { id, to: Move::Pay }, done)).await.unwrap();
        let first = call(|done| shard.submit(refund(id, 100, &refund_no(t, 0)), done)).await.unwrap();
        let second = call(|done| shard.submit(refund(id, 200, &refund_no(t, 1)), done)).await.unwrap();
        assert_eq!((first.refunded_amount, second.refunded_amount), (100, 300));
        ids.push(id);
        receipts.push([first, second]);
        if (t + 1) % per_checkpoint == 0 {
            shard.checkpoint().await.unwrap();
        }
    }
    (ids, receipts)
}

/// Every refund sent again answers its original receipt, marked a repeat, and refunds nothing
/// more; another amount, or another trade of the same merchant and buyer, under its number is
/// a conflict naming the original's trade.
async fn retries_answer_the_originals(shard: &Shard<SimDisk>, ids: &[TradeId], receipts: &[[Receipt; 2]]) {
    for (t, (id, originals)) in ids.iter().zip(receipts).enumerate() {
        let before = call(|done| shard.get(*id, done)).await.unwrap().refunded_amount;
        for (n, (amount, original)) in [100, 200].into_iter().zip(originals).enumerate() {
            let again = call(|done| shard.submit(refund(*id, amount, &refund_no(t, n)), done)).await.unwrap();
            assert!(again.replayed, "refund {n} of trade {t} answered as a repeat");
            assert_eq!(
                (again.id, again.status, again.refunded_amount, again.updated_ms),
                (original.id, TradeStatus::Refunded, original.refunded_amount, original.updated_ms),
                "refund {n} of trade {t} answers its original receipt"
            );
            let other_trade = ids[(t + 1) % ids.len()];
            for (trade, other_amount) in [(*id, amount + 1), (other_trade, amount)] {
                match call(|done| shard.submit(refund(trade, other_amount, &refund_no(t, n)), done)).await {
                    Err(TradeError::Refused(Refusal::RefundRequestConflict { existing, amount: was, .. })) => {
                        assert_eq!((existing, was), (*id, amount), "the conflict names refund {n} of trade {t}")
                    }
                    other => panic!("refund {n} of trade {t} reused for {trade:?}, {other_amount}: {other:?}"),
                }
            }
        }
        let after = call(|done| shard.get(*id, done)).await.unwrap().refunded_amount;
        assert_eq!(after, before, "trade {t}: the retries refunded nothing more");
    }
}

#[test]
fn refund_numbers_in_runs_answer_retries_and_conflicts_before_and_after_reopens() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let (ids, receipts) = refund_in_checkpoints(&shard, 120, 30).await;
        let stats = shard.stats().checkpoints;
        // Each trade: its order key, its place in its user's list and its two refunds.
        assert_eq!(stats.key_run_entries, 4 * 120, "every refund is in a run");
        let refund_runs = || disk.list_names().into_iter().filter(|name| name.starts_with("refunds-")).count();
        assert!(refund_runs() >= 1);
        retries_answer_the_originals(&shard, &ids, &receipts).await;
        let trade = call(|done| shard.get(ids[0], done)).await.unwrap();
        assert_eq!(trade.refunded_amount, 300);
        assert!(shard.stats().checkpoints.key_run_reads >= 2 * 120, "the retries read the runs");

        // The checkpoint holds no refund: one taken now is as large as one of a shard that
        // never refunded anything (groups, pending claims and the like only).
        shard.checkpoint().await.unwrap();
        let with_refunds = shard.stats().checkpoints.bytes;
        let plain = SimDisk::new();
        let other = open(&plain).await.unwrap();
        let trade = new_trade(1, 0, 1_000).validate().unwrap();
        call(|done| other.submit(Command::Create { trade, logical_shard: 1 }, done)).await.unwrap();
        other.checkpoint().await.unwrap();
        assert_eq!(with_refunds, other.stats().checkpoints.bytes, "refunds are not in the checkpoint");
        other.close().await.unwrap();

        // A new refund number is free and refunds; the total stays below the amount.
        let third = call(|done| shard.submit(refund(ids[0], 700, "R-new"), done)).await.unwrap();
        assert_eq!((third.refunded_amount, third.replayed), (1_000, false));
        let over = call(|done| shard.submit(refund(ids[1], 701, "R-over"), done)).await;
        assert!(matches!(over, Err(TradeError::Refused(_))), "beyond the amount: {over:?}");
        shard.close().await.unwrap();

        // After a reopen (the trades in the table on disk, most of them cold), the same.
        let shard = open(&disk).await.unwrap();
        retries_answer_the_originals(&shard, &ids, &receipts).await;
        let again = call(|done| shard.submit(refund(ids[0], 700, "R-new"), done)).await.unwrap();
        assert_eq!((again.refunded_amount, again.replayed), (1_000, true));
        shard.close().await.unwrap();
    });
}

#[test]
fn a_failed_read_of_a_run_refuses_the_refund_and_refunds_nothing() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        // One trade, hot in memory after the checkpoint: the retry's first read is the run's.
        let (ids, receipts) = refund_in_checkpoints(&shard, 1, 1).await;
        let id = ids[0];
        let before = call(|done| shard.get(id, done)).await.unwrap();
        disk.fail_op(disk.ops() + 1, Fault::Eio);
        let failed = call(|done| shard.submit(refund(id, 100, &refund_no(0, 0)), done)).await;
        assert!(matches!(failed, Err(TradeError::Log(_))), "the read's failure is the answer: {failed:?}");
        let again = call(|done| shard.submit(refund(id, 100, &refund_no(0, 0)), done)).await.unwrap();
        assert_eq!((again.replayed, again.refunded_amount), (true, receipts[0][0].refunded_amount));
        assert_eq!(
            call(|done| shard.get(id, done)).await.unwrap().refunded_amount,
            before.refunded_amount,
            "nothing refunded"
        );
        shard.close().await.unwrap();
    });
}
