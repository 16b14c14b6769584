//! Power loss under a shard that checkpoints and retains: trades created, paid, settled and
//! refunded, a consumer committing offsets, and checkpoints taken all the while, each followed
//! by retention (segments removed past a byte budget); the simulated machine loses power at a
//! random operation, during a checkpoint's write, its switch, the copy of created parts or a
//! segment's removal (a rename to a free file) and a free file's reuse as a new segment as
//! often as anywhere else; the shard reopens from whatever checkpoint
//! survived, over and over. In half the runs between two power losses, one to three operations
//! before it fail with EIO or ENOSPC: a checkpoint they fail leaves its frozen layers, and the
//! shard goes on writing and checkpointing over them.
//!
//! After every reopen: every acknowledged trade is there in its acknowledged state or a later
//! one sent to it (read through the store of created parts once the log that held it is gone);
//! a repeated create answers the same trade, a repeated refund the original refund; no
//! acknowledged offset commit went back; trade ids are never issued twice. A consumer whose
//! offset retention removed gets the typed error naming the first offset kept.
//!
//! Trades beyond a small memory budget leave memory at every checkpoint, so reads, retries and
//! changes find them in the table on disk, and power is lost during the table's writes too.
//! Order keys and refunds leave memory for runs on disk at every checkpoint, so repeated creates
//! and refunds read the runs, and power is lost during the runs' writes, merges and removals.
//!
//! The checkpoints' cases made by hand (damage, failures at each step) are in
//! `shard_checkpoint_cases.rs`.
//! A failure names its seed (`TRADESHARD_SIM_SEED=<seed>`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use tradeshard_shard::{
    Command, Move, PollQuery, Refusal, Shard, Subscription, TradeError, TradeId, TradeStatus, Upkeep,
};
use tradeshard_tests::{
    call, check_read_back, new_trade, rolling_shard_config, run_campaign_part, sim_disk_for_seed,
    upkeep_retaining_three_segments,
};
use tradeshard_wal::disk::{Fault, SimDisk, SplitMix64};
use tradeshard_wal::WalConfig;

const GROUP: &str = "settlement";

fn config() -> WalConfig {
    rolling_shard_config()
}

fn upkeep() -> Upkeep {
    upkeep_retaining_three_segments()
}

#[derive(Default)]
struct Model {
    /// Acknowledged (status, refunded) of each trade, and every state it was sent to.
    acked: HashMap<TradeId, (TradeStatus, u64)>,
    sent: HashMap<TradeId, Vec<(TradeStatus, u64)>>,
    /// The create of each acknowledged trade: (buyer, order).
    creates: HashMap<TradeId, (u64, u64)>,
    /// Acknowledged refunds: (trade, refund number, amount).
    refunds: Vec<(TradeId, String, u64)>,
    committed: u64,
}

#[derive(Default)]
struct Seen {
    checkpoints: u64,
    opened_from_checkpoint: u64,
    /// Of those, opens that read the log from the frame the checkpoint names.
    opened_at_frame: u64,
    segments_removed: u64,
    /// Segments made from files retention removed (the crashes land in their reuse too).
    segments_recycled: u64,
    offsets_retained_away: u64,
    trades_evicted: u64,
    /// Checkpoints failed by an injected EIO or ENOSPC or by the power loss.
    checkpoints_failed: u64,
    /// Checkpoints written on a running shard after one had failed on it.
    written_after_failure: u64,
    /// Opens that found order keys in runs on disk (the repeated creates read them).
    opened_with_key_runs: u64,
    /// Opens that found blocks of the table frozen (compressed copies, pages punched out).
    opened_with_frozen_blocks: u64,
}

type SharedShard = Rc<Shard<SimDisk>>;

async fn trade_task(
    shard: SharedShard,
    model: Rc<RefCell<Model>>,
    buyer: u64,
    first_order: u64,
    steps: u64,
    refund: bool,
) {
    for step in 0..steps {
        let order = first_order + step;
        let trade = new_trade(buyer, order, 1000).validate().unwrap();
        let command = Command::Create { trade, logical_shard: (buyer % 16) as u32 };
        let Ok(receipt) = call(|done| shard.submit(command, done)).await else { return };
        let id = receipt.id;
        {
            let mut model = model.borrow_mut();
            assert!(model.acked.insert(id, (TradeStatus::Created, 0)).is_none(), "trade id {id} issued twice");
            model.sent.insert(id, vec![(TradeStatus::Created, 0)]);
            model.creates.insert(id, (buyer, order));
        }
        let mut plan = vec![(Command::Move { id, to: Move::Pay }, TradeStatus::Paid, 0, None)];
        if refund {
            let number = format!("R-{id}-1");
            let command = Command::Refund { id, amount: 400, refund_no: number.clone() };
            plan.push((command, TradeStatus::Refunded, 400, Some(number)));
        } else {
            plan.push((Command::Move { id, to: Move::Settle }, TradeStatus::Settled, 0, None));
        }
        for (command, status, refunded, refund_no) in plan {
            model.borrow_mut().sent.get_mut(&id).unwrap().push((status, refunded));
            let Ok(changed) = call(|done| shard.submit(command, done)).await else { return };
            let mut model = model.borrow_mut();
            model.acked.insert(id, (changed.status, changed.refunded_amount));
            if let Some(number) = refund_no {
                model.refunds.push((id, number, refunded));
            }
        }
    }
}

/// Refunds 100 more of up to `count` trades of earlier incarnations that can take it: most
/// have left memory, so the change reads the trade back from the table on disk.
async fn late_refund_task(shard: SharedShard, model: Rc<RefCell<Model>>, count: usize, round: u64) {
    let mut candidates: Vec<(TradeId, u64)> = model
        .borrow()
        .acked
        .iter()
        .filter(|(_, (status, refunded))| {
            matches!(status, TradeStatus::Paid | TradeStatus::Refunded) && *refunded <= 900
        })
        .map(|(id, (_, refunded))| (*id, *refunded))
        .collect();
    candidates.sort();
    for (id, refunded) in candidates.into_iter().take(count) {
        let number = format!("R-{id}-late-{round}");
        let command = Command::Refund { id, amount: 100, refund_no: number.clone() };
        model.borrow_mut().sent.get_mut(&id).unwrap().push((TradeStatus::Refunded, refunded + 100));
        let Ok(changed) = call(|done| shard.submit(command, done)).await else { return };
        let mut model = model.borrow_mut();
        model.acked.insert(id, (changed.status, changed.refunded_amount));
        model.refunds.push((id, number, 100));
    }
}

/// Polls and commits as a settlement consumer; an offset retention removed moves it to the
/// first offset kept. Returns how many times that happened.
async fn consumer_task(shard: SharedShard, model: Rc<RefCell<Model>>, rounds: u64) -> Result<u64, String> {
    let mut from = model.borrow().committed;
    let mut retained_away = 0;
    for _ in 0..rounds {
        let query = PollQuery {
            from,
            max_events: 16,
            max_bytes: 1 << 20,
            wait: Duration::from_millis(1),
            subscription: Subscription::trades(),
        };
        match call(|done| shard.poll_events(query, done)).await {
            Ok(batch) => from = batch.next_offset,
            Err(TradeError::Refused(Refusal::OffsetOutOfRange { offset, first, .. })) if offset < first => {
                retained_away += 1;
                from = first;
                continue;
            }
            Err(TradeError::Refused(refusal)) => return Err(format!("poll refused: {refusal:?}")),
            Err(_) => return Ok(retained_away),
        }
        match call(|done| shard.commit_offset(GROUP, from, done)).await {
            Ok(_) => model.borrow_mut().committed = from,
            Err(_) => return Ok(retained_away),
        }
    }
    Ok(retained_away)
}

/// Takes `rounds` checkpoints, going on after failed ones: an injected EIO or ENOSPC fails a
/// checkpoint and leaves its frozen layers, which the next one on the same shard must take up.
/// Returns how many checkpoints were written after one had failed.
async fn checkpoint_task(shard: SharedShard, rounds: u64) -> u64 {
    let (mut failed, mut written_after_failure) = (false, 0);
    for _ in 0..rounds {
        for _ in 0..20 {
            futures_lite::future::yield_now().await;
        }
        match shard.checkpoint().await {
            Ok(Some(_)) if failed => written_after_failure += 1,
            Ok(_) => {}
            Err(_) => failed = true,
        }
    }
    written_after_failure
}

/// The rules after a reopen (see the module's text).
async fn check(shard: &SharedShard, model: &RefCell<Model>) -> Result<usize, String> {
    let mut checked = 0;
    let acked: Vec<_> = model.borrow().acked.iter().map(|(id, s)| (*id, *s)).collect();
    for (id, state) in acked {
        let trade = call(|done| shard.get(id, done)).await.map_err(|e| format!("acknowledged {id} unreadable: {e}"))?;
        let actual = (trade.status, trade.refunded_amount);
        check_read_back(id, &model.borrow().sent[&id], &state, &actual)?;
        let (buyer, order) = model.borrow().creates[&id];
        if trade.merchant_order_no != new_trade(buyer, order, 1000).merchant_order_no {
            return Err(format!("{id} reads another trade's order number: {}", trade.merchant_order_no));
        }
        let again = new_trade(buyer, order, 1000).validate().unwrap();
        let command = Command::Create { trade: again, logical_shard: (buyer % 16) as u32 };
        let repeat = call(|done| shard.submit(command, done)).await.map_err(|e| format!("repeated create: {e}"))?;
        if repeat.id != id || !repeat.replayed {
            return Err(format!("a repeated create of {id} answered {repeat:?}"));
        }
        model.borrow_mut().acked.insert(id, actual);
        checked += 1;
    }
    let refunds = model.borrow().refunds.clone();
    for (id, refund_no, amount) in refunds {
        let command = Command::Refund { id, amount, refund_no: refund_no.clone() };
        match call(|done| shard.submit(command, done)).await {
            Ok(receipt) if receipt.replayed && receipt.id == id => checked += 1,
            other => return Err(format!("a repeated refund {refund_no} of {id} answered {other:?}")),
        }
    }
    let committed = shard.committed_offset(GROUP).unwrap_or(0);
    if committed < model.borrow().committed {
        return Err(format!("committed offset {committed} is behind the acknowledged {}", model.borrow().committed));
    }
    Ok(checked)
}

async fn run_seed(seed: u64, seen: Rc<RefCell<Seen>>) -> Result<usize, String> {
    let mut rng = SplitMix64::new(seed);
    let disk = sim_disk_for_seed(seed);
    // Reads in flight together complete in a seeded order: writes and reads of trades on disk
    // race with checkpoints and with each other.
    disk.slow_reads(seed);
    let model = Rc::new(RefCell::new(Model::default()));
    let mut order = 0u64;
    let mut checked = 0;
    for incarnation in 0..4 {
        let shard = Shard::open_with(disk.clone(), config(), 0, upkeep()).await.map_err(|e| format!("open: {e}"))?;
        let shard = Rc::new(shard);
        if shard.stats().opened.checkpoint.is_some() {
            seen.borrow_mut().opened_from_checkpoint += 1;
        }
        if shard.stats().opened.unread_log_bytes > 0 {
            seen.borrow_mut().opened_at_frame += 1;
        }
        if shard.stats().checkpoints.key_runs > 0 {
            seen.borrow_mut().opened_with_key_runs += 1;
        }
        if shard.stats().checkpoints.frozen_blocks > 0 {
            seen.borrow_mut().opened_with_frozen_blocks += 1;
        }
        checked += check(&shard, &model).await?;
        if incarnation == 0 {
            // Trades enough for blocks of the table to be frozen from the start.
            trade_task(shard.clone(), model.clone(), 52, order, 170, false).await;
            shard.checkpoint().await.map_err(|e| format!("checkpoint: {e}"))?;
            order += 1_000;
        }
        let crash_at = disk.ops() + 1 + rng.below(600);
        disk.crash_at_op(crash_at);
        // In half the incarnations, one to three operations before the power loss fail: in a
        // log's write or sync the shard acknowledges nothing more, anywhere in a checkpoint it
        // fails that checkpoint only, and the shard goes on writing and checkpointing.
        if rng.one_in(2) {
            for _ in 0..1 + rng.below(3) {
                let fault = if rng.one_in(2) { Fault::Eio } else { Fault::Enospc };
                disk.fail_op(disk.ops() + 1 + rng.below(crash_at - disk.ops()), fault);
            }
        }
        let mut tasks = Vec::new();
        for _ in 0..1 + rng.below(5) {
            let (shard, model) = (shard.clone(), model.clone());
            let (buyer, steps, refund) = (1 + rng.below(50), 1 + rng.below(10), rng.one_in(2));
            tasks.push(glommio::spawn_local(trade_task(shard, model, buyer, order, steps, refund)));
            order += 100;
        }
        // A run of trades past the ones memory holds, so that checkpoints freeze blocks of the
        // table (128 trades each) and the crashes land in that too.
        let (bulk_shard, bulk_model, bulk_steps) = (shard.clone(), model.clone(), 40 + rng.below(120));
        tasks.push(glommio::spawn_local(trade_task(bulk_shard, bulk_model, 51, order, bulk_steps, false)));
        order += 1_000;
        let late = (shard.clone(), model.clone(), rng.below(8) as usize);
        tasks.push(glommio::spawn_local(late_refund_task(late.0, late.1, late.2, incarnation)));
        let consumer = glommio::spawn_local(consumer_task(shard.clone(), model.clone(), 2 + rng.below(6)));
        let checkpoints = glommio::spawn_local(checkpoint_task(shard.clone(), 1 + rng.below(6)));
        for task in tasks {
            task.await;
        }
        let retained_away = consumer.await?;
        let written_after_failure = checkpoints.await;
        let stats = shard.stats();
        {
            let mut seen = seen.borrow_mut();
            seen.checkpoints += stats.checkpoints.written;
            seen.segments_removed += stats.wal.segments_removed;
            seen.segments_recycled += stats.wal.segments_recycled;
            seen.trades_evicted += stats.checkpoints.trades_evicted;
            seen.checkpoints_failed += stats.checkpoints.failed;
            seen.written_after_failure += written_after_failure;
            seen.offsets_retained_away += retained_away;
        }
        drop(shard);
        disk.crash(rng.next_u64());
    }
    Ok(checked)
}

tradeshard_tests::campaign_halves!(power_loss_during_checkpoints_and_retention_loses_nothing_acknowledged);

/// Half `part` of the campaign's seeds.
fn campaign(part: usize) {
    let seen = Rc::new(RefCell::new(Seen::default()));
    let totals = seen.clone();
    let (count, checked) = run_campaign_part(200, part, 2, move |seed| run_seed(seed, totals.clone()));
    let seen = seen.borrow();
    println!(
        "checkpoint campaign: {count} seeds, {checked} checks, {} checkpoints, {} opens from a checkpoint ({} from its log frame), {} segments removed, {} recycled, {} offsets retained away, {} trades left memory, {} opens with order keys in runs, {} with frozen blocks, {} checkpoints failed, {} written after a failure on the same shard",
        seen.checkpoints,
        seen.opened_from_checkpoint,
        seen.opened_at_frame,
        seen.segments_removed,
        seen.segments_recycled,
        seen.offsets_retained_away,
        seen.trades_evicted,
        seen.opened_with_key_runs,
        seen.opened_with_frozen_blocks,
        seen.checkpoints_failed,
        seen.written_after_failure
    );
    if count >= 100 {
        assert!(checked > 1000, "the campaign must check trades: {checked}");
        assert!(seen.opened_from_checkpoint > count as u64, "opens must start from checkpoints");
        assert!(seen.opened_at_frame > count as u64 / 2, "opens must start reading at checkpoints' frames");
        assert!(seen.segments_removed > count as u64, "retention must remove segments");
        assert!(seen.segments_recycled > count as u64, "removed segments must be made segments again");
        assert!(seen.trades_evicted > count as u64, "trades must leave memory for the table");
        assert!(seen.opened_with_key_runs > count as u64, "repeated creates must find their keys in runs");
        assert!(seen.opened_with_frozen_blocks > count as u64, "opens must find frozen blocks of the table");
        assert!(
            seen.written_after_failure > count as u64 / 20,
            "checkpoints must be written after failed ones on the same shard: {}",
            seen.written_after_failure
        );
    }
}
