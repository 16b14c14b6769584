//! EIO and ENOSPC at every I/O operation of a shard's write and recovery paths, under the
//! engine's workload (creates, pays, settles, refunds, event polls, offset commits, and
//! checkpoints with their copy of created parts, their switch and the removal of segments).
//!
//! For each case the simulated disk fails one chosen operation (the Nth after the workload
//! starts, swept over every operation a clean run makes), then the machine loses power and the
//! shard reopens, itself with an injected failure now and then. The rules checked:
//! - every failure reaches its caller as a typed log error (`Io`, `DiskFull`, `Poisoned`);
//! - a failed checkpoint fails only itself: the log holds everything, writes go on;
//! - once a write has failed, no write sent afterwards is acknowledged, even though the disk
//!   works again, until the shard is reopened;
//! - acknowledged trades stay readable, and after the crash they are all there, each in its
//!   acknowledged state or one it was sent to, and no acknowledged offset commit goes back;
//! - a failed open is a typed error, and the next open succeeds and takes writes.
//!
//! A failure names its seed (`TRADESHARD_SIM_SEED=<seed>`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use tradeshard_shard::{
    Command, Move, PollQuery, Refusal, Shard, Subscription, TradeError, TradeId, TradeStatus, Upkeep,
};
use tradeshard_tests::{
    call, check_read_back, new_trade, rolling_shard_config, run, seeds, sim_disk_for_seed, upkeep_on_request,
};
use tradeshard_wal::disk::{Fault, SimDisk, SplitMix64};
use tradeshard_wal::WalConfig;

const GROUP: &str = "settlement";

/// Small enough that the workload rolls segments.
fn config() -> WalConfig {
    rolling_shard_config()
}

/// Checkpoints only when the workload asks; retention keeps about two segments, so that
/// checkpoints remove segments.
fn upkeep() -> Upkeep {
    upkeep_on_request(false, Some(64 << 10))
}

/// Takes `rounds` checkpoints between the other tasks' requests; a failure must be typed.
/// Returns how many failed.
async fn checkpoint_task(shard: SharedShard, rounds: u64) -> Result<u64, String> {
    let mut failed = 0;
    for _ in 0..rounds {
        for _ in 0..10 {
            futures_lite::future::yield_now().await;
        }
        match shard.checkpoint().await {
            Ok(_) => {}
            Err(e) if is_log_failure(&e) => failed += 1,
            Err(e) => return Err(format!("a checkpoint failed with a wrong error: {e:?}")),
        }
    }
    Ok(failed)
}

/// One case: the workload's seed, the failure of the write path, the failure during reopen.
#[derive(Debug, Clone, Copy)]
struct Case {
    seed: u64,
    write_fault: Option<(u64, Fault)>,
    recovery_fault: Option<(u64, Fault)>,
}

#[derive(Default)]
struct Model {
    acked: HashMap<TradeId, (TradeStatus, u64)>,
    sent: HashMap<TradeId, Vec<(TradeStatus, u64)>>,
    committed: u64,
    /// A write failed: nothing sent from now on may be acknowledged.
    write_failed: Cell<bool>,
}

/// What a case saw, for the campaign's own check that faults were really hit.
#[derive(Default, Debug)]
struct Seen {
    write_failures: u64,
    failed_checkpoints: u64,
    failed_opens: u64,
    ops: u64,
}

fn is_log_failure(error: &TradeError) -> bool {
    use tradeshard_wal::Error;
    matches!(error, TradeError::Log(Error::Io { .. } | Error::DiskFull { .. } | Error::Poisoned { .. }))
}

type SharedShard = Rc<Shard<SimDisk>>;

/// Sends one write; checks the rules on its outcome.
async fn write(
    shard: &SharedShard,
    model: &RefCell<Model>,
    command: Command,
) -> Result<Option<(TradeId, TradeStatus, u64)>, String> {
    let failed_before = model.borrow().write_failed.get();
    match call(|done| shard.submit(command, done)).await {
        Ok(receipt) if failed_before => Err(format!("{} acknowledged after a write had failed", receipt.id)),
        Ok(receipt) => Ok(Some((receipt.id, receipt.status, receipt.refunded_amount))),
        Err(e) if is_log_failure(&e) => {
            model.borrow().write_failed.set(true);
            Ok(None)
        }
        Err(e) => Err(format!("a write failed with an untyped or wrong error: {e:?}")),
    }
}

async fn trade_task(
    shard: SharedShard,
    model: Rc<RefCell<Model>>,
    buyer: u64,
    first_order: u64,
    steps: u64,
    refund: bool,
) -> Result<(), String> {
    for step in 0..steps {
        let trade = new_trade(buyer, first_order + step, 1000).validate().unwrap();
        let command = Command::Create { trade, logical_shard: (buyer % 16) as u32 };
        let Some((id, status, _)) = write(&shard, &model, command).await? else { return Ok(()) };
        {
            let mut model = model.borrow_mut();
            model.sent.insert(id, vec![(status, 0)]);
            if model.acked.insert(id, (status, 0)).is_some() {
                return Err(format!("trade id {id} issued twice"));
            }
        }
        let plan: Vec<(Command, TradeStatus, u64)> = if refund {
            vec![
                (Command::Move { id, to: Move::Pay }, TradeStatus::Paid, 0),
                (Command::Refund { id, amount: 300, refund_no: format!("R-{id}-1") }, TradeStatus::Refunded, 300),
                (Command::Refund { id, amount: 700, refund_no: format!("R-{id}-2") }, TradeStatus::Refunded, 1000),
            ]
        } else {
            vec![
                (Command::Move { id, to: Move::Pay }, TradeStatus::Paid, 0),
                (Command::Move { id, to: Move::Settle }, TradeStatus::Settled, 0),
            ]
        };
        for (command, status, refunded) in plan {
            model.borrow_mut().sent.get_mut(&id).unwrap().push((status, refunded));
            let Some((_, status, refunded)) = write(&shard, &model, command).await? else {
                return Ok(());
            };
            model.borrow_mut().acked.insert(id, (status, refunded));
        }
    }
    Ok(())
}

/// Polls the events and commits offsets, as a settlement consumer does.
async fn consumer_task(shard: SharedShard, model: Rc<RefCell<Model>>, rounds: u64) -> Result<(), String> {
    let mut from = model.borrow().committed;
    for _ in 0..rounds {
        let query = PollQuery {
            from,
            max_events: 64,
            max_bytes: 1 << 20,
            wait: Duration::from_millis(1),
            subscription: Subscription::trades(),
        };
        match call(|done| shard.poll_events(query, done)).await {
            Ok(batch) => from = batch.next_offset,
            // Retention removed the offset: the refusal names the first one kept.
            Err(TradeError::Refused(Refusal::OffsetOutOfRange { offset, first, .. })) if offset < first => {
                from = first;
                continue;
            }
            Err(e) if is_log_failure(&e) => return Ok(()),
            Err(e) => return Err(format!("a poll failed with a wrong error: {e:?}")),
        }
        let failed_before = model.borrow().write_failed.get();
        match call(|done| shard.commit_offset(GROUP, from, done)).await {
            Ok(_) if failed_before => return Err("an offset commit acknowledged after a write had failed".into()),
            Ok(_) => model.borrow_mut().committed = from,
            Err(e) if is_log_failure(&e) => {
                model.borrow().write_failed.set(true);
                return Ok(());
            }
            Err(e) => return Err(format!("an offset commit failed with a wrong error: {e:?}")),
        }
    }
    Ok(())
}

/// Every acknowledged trade is there, in its acknowledged state or one it was sent to.
async fn check(shard: &SharedShard, model: &RefCell<Model>) -> Result<(), String> {
    let acked: Vec<_> = model.borrow().acked.iter().map(|(id, s)| (*id, *s)).collect();
    for (id, state) in acked {
        let trade = call(|done| shard.get(id, done)).await.map_err(|e| format!("acknowledged {id} unreadable: {e}"))?;
        let actual = (trade.status, trade.refunded_amount);
        check_read_back(id, &model.borrow().sent[&id], &state, &actual)?;
        model.borrow_mut().acked.insert(id, actual);
    }
    Ok(())
}

/// The shard on `disk`, with no cache, so that every read goes to the log or the store of
/// created parts.
async fn open(disk: &SimDisk) -> Result<Shard<SimDisk>, TradeError> {
    Shard::open_with(disk.clone(), config(), 0, upkeep()).await
}

async fn run_case(case: Case) -> Result<Seen, String> {
    let mut rng = SplitMix64::new(case.seed);
    let disk = sim_disk_for_seed(case.seed);
    let model = Rc::new(RefCell::new(Model::default()));
    let mut seen = Seen::default();
    let shard = Rc::new(open(&disk).await.map_err(|e| format!("open: {e}"))?);
    // Acknowledged before any failure, and a checkpoint of them.
    trade_task(shard.clone(), model.clone(), 1, 0, 2, false).await?;
    shard.checkpoint().await.map_err(|e| format!("the first checkpoint: {e}"))?;
    let start = disk.ops();
    if let Some((nth, fault)) = case.write_fault {
        disk.fail_op(start + nth, fault);
    }
    let mut tasks = Vec::new();
    for task in 0..1 + rng.below(4) {
        let (shard, model) = (shard.clone(), model.clone());
        let (buyer, steps, refund) = (2 + rng.below(40), 1 + rng.below(4), rng.one_in(2));
        tasks.push(glommio::spawn_local(trade_task(shard, model, buyer, 100 * (task + 1), steps, refund)));
    }
    tasks.push(glommio::spawn_local(consumer_task(shard.clone(), model.clone(), 1 + rng.below(4))));
    let checkpoints = glommio::spawn_local(checkpoint_task(shard.clone(), 1 + rng.below(3)));
    for task in tasks {
        task.await?;
    }
    seen.failed_checkpoints += checkpoints.await?;
    seen.ops = disk.ops() - start;
    // A failure chosen past the workload's last operation never happens.
    disk.clear_faults();
    if model.borrow().write_failed.get() {
        seen.write_failures += 1;
        // The disk works again; the shard must still refuse.
        let trade = new_trade(99, 1, 5).validate().unwrap();
        if call(|done| shard.submit(Command::Create { trade, logical_shard: 3 }, done)).await.is_ok() {
            return Err("a create was acknowledged after a write had failed".into());
        }
    }
    check(&shard, &model).await?;
    drop(shard);
    disk.crash(rng.next_u64());
    if let Some((nth, fault)) = case.recovery_fault {
        disk.fail_op(disk.ops() + nth, fault);
        match open(&disk).await {
            Err(e) if is_log_failure(&e) => {
                seen.failed_opens += 1;
                // Power is lost again right after the failed recovery.
                disk.crash(rng.next_u64());
            }
            Err(e) => return Err(format!("a failed open gave a wrong error: {e:?}")),
            Ok(shard) => {
                disk.clear_faults();
                let shard = Rc::new(shard);
                check(&shard, &model).await?;
                drop(shard);
                disk.crash(rng.next_u64());
            }
        }
    }
    let shard = Rc::new(open(&disk).await.map_err(|e| format!("reopen: {e}"))?);
    check(&shard, &model).await?;
    let committed = shard.committed_offset(GROUP).unwrap_or(0);
    if committed < model.borrow().committed {
        return Err(format!("committed offset {committed} is behind the acknowledged {}", model.borrow().committed));
    }
    let trade = new_trade(98, 1, 5).validate().unwrap();
    call(|done| shard.submit(Command::Create { trade, logical_shard: 2 }, done))
        .await
        .map_err(|e| format!("a write after reopening failed: {e}"))?;
    Ok(seen)
}

fn run_cases(cases: Vec<Case>) -> Seen {
    run(async move {
        let mut total = Seen::default();
        for case in cases {
            match run_case(case).await {
                Ok(seen) => {
                    total.write_failures += seen.write_failures;
                    total.failed_checkpoints += seen.failed_checkpoints;
                    total.failed_opens += seen.failed_opens;
                    total.ops = total.ops.max(seen.ops);
                }
                Err(failure) => panic!("{case:?}: {failure}\nreplay with TRADESHARD_SIM_SEED={}", case.seed),
            }
        }
        total
    })
}

/// On a disk of O_DSYNC writes (seed 3 is odd).
#[test]
fn every_operation_of_the_write_path_fails_in_turn_on_dsync_writes() {
    write_path_sweep(3);
}

/// On a disk of writes and fdatasyncs (seed 2 is even); a test of its own, so that the test
/// threads run the two sweeps side by side.
#[test]
fn every_operation_of_the_write_path_fails_in_turn_on_writes_and_syncs() {
    write_path_sweep(2);
}

/// Fails each I/O operation of seed `seed`'s clean run in turn, with EIO and with ENOSPC.
fn write_path_sweep(seed: u64) {
    {
        let clean = run_cases(vec![Case { seed, write_fault: None, recovery_fault: None }]);
        let mut cases = Vec::new();
        for nth in 1..=clean.ops {
            for fault in [Fault::Eio, Fault::Enospc] {
                cases.push(Case { seed, write_fault: Some((nth, fault)), recovery_fault: None });
            }
        }
        let count = cases.len() as u64;
        let seen = run_cases(cases);
        println!(
            "write-path sweep (seed {seed}): {count} cases over {} operations, {} saw a failed write, {} a failed checkpoint",
            clean.ops, seen.write_failures, seen.failed_checkpoints
        );
        assert!(clean.ops > 20, "the workload must do I/O: {} operations", clean.ops);
        assert!(seen.failed_checkpoints > 0, "failures must hit checkpoints: {seen:?}");
        assert!(
            (seen.write_failures + seen.failed_checkpoints) * 2 > count,
            "most injected failures must fail a write or a checkpoint: {seen:?} of {count}"
        );
    }
}

#[test]
fn every_operation_of_recovery_fails_in_turn() {
    let mut cases = Vec::new();
    for seed in [4, 5] {
        for nth in 1..=40 {
            for fault in [Fault::Eio, Fault::Enospc] {
                cases.push(Case { seed, write_fault: None, recovery_fault: Some((nth, fault)) });
            }
        }
    }
    let seen = run_cases(cases);
    println!("recovery sweep: 160 cases, {} opens failed", seen.failed_opens);
    assert!(seen.failed_opens > 20, "injected failures must fail opens: {seen:?}");
}

tradeshard_tests::campaign_halves!(random_write_and_recovery_failures_then_power_loss_lose_nothing_acknowledged);

/// Half `part` of the random campaign's seeds.
fn campaign(part: usize) {
    let all = seeds(1000);
    let half = all.len().div_ceil(2);
    let seeds: Vec<u64> = all.into_iter().skip(part * half).take(half).collect();
    let count = seeds.len();
    let cases = seeds
        .into_iter()
        .map(|seed| {
            let mut rng = SplitMix64::new(seed ^ 0x5EED);
            let fault = |rng: &mut SplitMix64| if rng.one_in(2) { Fault::Eio } else { Fault::Enospc };
            let write_fault = (!rng.one_in(5)).then(|| (1 + rng.below(80), fault(&mut rng)));
            let recovery_fault = rng.one_in(3).then(|| (1 + rng.below(30), fault(&mut rng)));
            Case { seed, write_fault, recovery_fault }
        })
        .collect();
    let seen = run_cases(cases);
    println!(
        "fault campaign: {count} seeds, {} failed writes, {} failed opens",
        seen.write_failures, seen.failed_opens
    );
    assert!(count < 50 || seen.write_failures > count as u64 / 4, "{seen:?}");
}
