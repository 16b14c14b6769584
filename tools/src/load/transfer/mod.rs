//! The transfer workload of the load tool: users funded before the timed phase, then tasks
//! that move money between them, within a shard or across shards (`--cross-shard-ratio`), each
//! with one request outstanding: a transfer, a batch of `--batch` transfers (`transfer_many`),
//! or (`--purchase-ratio`) a purchase, a trade created, paid from the buyer's balance and
//! settled to its merchant; with `--rate`, sent at that rate (open loop: latency counts from
//! the intended send time). At the end, once no
//! activity is in doubt, the money is counted: balances plus money in transit must equal what
//! was deposited (`conservation_ok`). With `--report-every`, each interval's rate, p99,
//! resident memory, disk and the money's state held in memory are reported as it ends.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use serde::Serialize;
use tradeshard_engine::EngineHandle;

use super::report::{growth_after_warmup, interval_report, IntervalReport};
mod tasks;

use crate::latency::{self, LatencySummary};
use tasks::{fund, worker};

/// What each user is given before the timed phase, in minor units.
const FUNDING: u64 = 1_000_000;
/// Deposits in flight while users are funded, at the least: a run of a few batches in flight
/// (`--inflight 4 --batch 1024`) would otherwise fund its users four at a time, for longer
/// than it measures.
const FUNDING_INFLIGHT_MIN: usize = 1024;
const CURRENCY: &str = "CNY";

/// The transfer workload's report.
#[derive(Serialize)]
pub(super) struct TransferReport {
    pub(super) workload: &'static str,
    pub(super) elapsed_sec: f64,
    /// Transfers answered (committed) per second.
    pub(super) transfers_per_sec: f64,
    pub(super) transfers: u64,
    /// Of them, between users of two shards (a TCC activity each).
    pub(super) cross_shard: u64,
    pub(super) cross_shard_ratio: f64,
    /// Transfers cancelled (a branch refused, a timeout) and refused for too little money.
    pub(super) cancelled: u64,
    pub(super) refused: u64,
    pub(super) errors: u64,
    /// Transfers that moved money; the cancelled and refused ones (purchases too) apart: their
    /// answers count as much for a caller, and a cancel after a timeout is the slowest of all.
    pub(super) latency_us: LatencySummary,
    pub(super) cross_shard_latency_us: LatencySummary,
    pub(super) unmoved_latency_us: LatencySummary,
    /// Purchases answered (created, paid from the balance, settled) per second; three writes
    /// each, the settlement crediting a merchant of another shard by --cross-shard-ratio.
    pub(super) purchases_per_sec: f64,
    pub(super) purchases: u64,
    pub(super) purchase_ratio: f64,
    pub(super) purchase_latency_us: LatencySummary,
    /// Requests outstanding; each of `batch` transfers.
    pub(super) inflight: usize,
    pub(super) batch: usize,
    /// The tasks ran on the engine's executors, each sending its own shards' payers'
    /// transfers (`--on-executors`): their CPU counts as the engine's.
    pub(super) on_executors: bool,
    /// Requests the engine ran on the executor that made them, with no hand-off, during the
    /// timed phase (`EngineStats::requests_in_place`).
    pub(super) requests_in_place: u64,
    pub(super) users: u64,
    #[serde(flatten)]
    pub(super) log: super::report::LogFigures,
    /// Deposited before the timed phase (by this run, and by earlier runs in the directory),
    /// and balances plus money in transit at the end.
    pub(super) money_deposited: u128,
    pub(super) money_counted: i128,
    pub(super) in_transit_at_end: i128,
    pub(super) activities_in_doubt_at_end: u64,
    pub(super) conservation_ok: bool,
    pub(super) executors: usize,
    pub(super) shards: u32,
    /// With `--report-every`: one entry per interval, and (max - min) / min of resident
    /// memory over the intervals after the first fifth.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) intervals: Vec<IntervalReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) resident_growth_after_warmup: Option<f64>,
    #[serde(flatten)]
    pub(super) checkpoint_work: super::report::CheckpointWork,
    /// Per request answered (transfers, purchases, and those that moved no money).
    #[serde(flatten)]
    pub(super) cpu: super::cpu::CpuPerOp,
}

/// What every part of the timed phase shares: the users, the shape of the load, its clock.
#[derive(Clone)]
struct Phase {
    handle: EngineHandle,
    /// Users of each physical shard.
    by_shard: Arc<Vec<Vec<u64>>>,
    users: u64,
    cross_ratio: f64,
    purchase_ratio: f64,
    deadline: Option<Instant>,
    rate: Option<f64>,
    /// Requests outstanding in the whole run: the open loop's slots count them all.
    inflight: usize,
    batch: usize,
    /// The start of the timed phase: the open loop's slots count from it.
    start: Instant,
    seed: u64,
    /// This run's tag, in its request numbers.
    run: String,
    /// Set by the first error of any part: every part stops.
    halted: Arc<AtomicBool>,
}

/// One part of the timed phase, on one thread: the whole of it on the load tool's thread, or
/// one executor's share with `--on-executors`.
struct Transfers {
    phase: Phase,
    /// With `--on-executors`: the executor whose shards' users pay in this part.
    payers_on: Option<usize>,
    stop: Cell<bool>,
    /// Requests this part may send (`--ops`, shared among the parts).
    ops_max: Option<u64>,
    issued: Cell<u64>,
    local: RefCell<Histogram<u64>>,
    across: RefCell<Histogram<u64>>,
    purchases: RefCell<Histogram<u64>>,
    /// Transfers and purchases answered cancelled or refused.
    unmoved: RefCell<Histogram<u64>>,
    /// Every answered request's latency since the last `--report-every` line.
    interval: RefCell<Histogram<u64>>,
    cancelled: Cell<u64>,
    refused: Cell<u64>,
    errors: Cell<u64>,
    first_error: RefCell<Option<String>>,
}

/// What the parts of the timed phase counted, added together.
struct Tally {
    local: Histogram<u64>,
    across: Histogram<u64>,
    purchases: Histogram<u64>,
    unmoved: Histogram<u64>,
    cancelled: u64,
    refused: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Phase {
    fn part(&self, payers_on: Option<usize>, ops_max: Option<u64>) -> Transfers {
        Transfers {
            phase: self.clone(),
            payers_on,
            stop: Cell::new(false),
            ops_max,
            issued: Cell::new(0),
            local: RefCell::new(latency::new_histogram()),
            across: RefCell::new(latency::new_histogram()),
            purchases: RefCell::new(latency::new_histogram()),
            unmoved: RefCell::new(latency::new_histogram()),
            interval: RefCell::new(latency::new_histogram()),
            cancelled: Cell::new(0),
            refused: Cell::new(0),
            errors: Cell::new(0),
            first_error: RefCell::new(None),
        }
    }
}

impl Transfers {
    /// Spawns the part's tasks, numbered `tasks` among the run's.
    fn spawn_tasks(self: &Rc<Self>, tasks: std::ops::Range<usize>) -> Vec<glommio::Task<()>> {
        let seed = self.phase.seed;
        tasks
            .map(|task| glommio::spawn_local(worker(self.clone(), task, seed.wrapping_mul(1_000_003) ^ task as u64)))
            .collect()
    }

    fn tally(&self) -> Tally {
        Tally {
            local: self.local.replace(latency::new_histogram()),
            across: self.across.replace(latency::new_histogram()),
            purchases: self.purchases.replace(latency::new_histogram()),
            unmoved: self.unmoved.replace(latency::new_histogram()),
            cancelled: self.cancelled.get(),
            refused: self.refused.get(),
            errors: self.errors.get(),
            first_error: self.first_error.take(),
        }
    }
}

impl Tally {
    fn add(&mut self, other: Tally) -> anyhow::Result<()> {
        self.local.add(&other.local)?;
        self.across.add(&other.across)?;
        self.purchases.add(&other.purchases)?;
        self.unmoved.add(&other.unmoved)?;
        self.cancelled += other.cancelled;
        self.refused += other.refused;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

/// What the transfer workload runs.
pub(super) struct TransferPlan {
    pub(super) users: u64,
    pub(super) cross_ratio: f64,
    pub(super) purchase_ratio: f64,
    pub(super) inflight: usize,
    /// Transfers per request (`transfer_many` when above 1).
    pub(super) batch: usize,
    pub(super) duration: Option<Duration>,
    pub(super) ops_max: Option<u64>,
    /// Transfers a second to send (open loop), or as fast as `inflight` tasks go.
    pub(super) rate: Option<f64>,
    pub(super) seed: u64,
    /// This run's tag, in its request numbers.
    pub(super) run: String,
    pub(super) report_every: Option<Duration>,
    /// The data directory, whose bytes each interval reports.
    pub(super) dir: PathBuf,
    /// The tasks run on the engine's executors (`--on-executors`).
    pub(super) on_executors: bool,
}

/// Funds the users, runs the timed phase, and counts the money.
pub(super) async fn run(handle: EngineHandle, plan: TransferPlan) -> anyhow::Result<TransferReport> {
    let TransferPlan {
        users,
        cross_ratio,
        purchase_ratio,
        inflight,
        batch,
        duration,
        ops_max,
        rate,
        seed,
        run,
        report_every,
        dir,
        on_executors,
    } = plan;
    let routing = handle.routing();
    let mut by_shard = vec![Vec::new(); routing.physical_shards as usize];
    for user in 1..=users {
        by_shard[routing.physical_of_user(user) as usize].push(user);
    }
    if by_shard.iter().filter(|users| !users.is_empty()).count() < 2 && cross_ratio > 0.0 {
        anyhow::bail!("transfers across shards need users in two shards: more --users or --shards");
    }
    // A directory of an earlier run (`--dir`) holds its money too.
    let currency = tradeshard_engine::Currency::parse(CURRENCY).expect("a known currency");
    let earlier = handle.account_totals().await?.get(&currency).copied().unwrap_or(0);
    fund(&handle, users, (inflight * batch).max(FUNDING_INFLIGHT_MIN), &run).await?;
    let before = handle.stats().await?;
    let cpu_before = super::cpu::ThreadTimes::now();
    let start = Instant::now();
    let phase = Phase {
        handle: handle.clone(),
        by_shard: Arc::new(by_shard),
        users,
        cross_ratio,
        purchase_ratio,
        deadline: duration.map(|d| start + d),
        rate,
        inflight,
        batch,
        start,
        seed,
        run,
        halted: Arc::new(AtomicBool::new(false)),
    };
    let mut intervals = Vec::new();
    let tally = match on_executors {
        true => on_the_executors(&phase, ops_max).await?,
        false => {
            let state = Rc::new(phase.part(None, ops_max));
            let tasks = state.spawn_tasks(0..inflight);
            // Without intervals to report, nothing waits beside the tasks, so the timed phase
            // ends with the last of them rather than at the next tick of a reporting loop.
            if let Some(every) = report_every {
                let mut interval_start = Instant::now();
                while !state.stop.get() {
                    glommio::timer::sleep(Duration::from_millis(200)).await;
                    if interval_start.elapsed() >= every {
                        let line =
                            interval_report(start, &state.interval, interval_start.elapsed(), &handle, &dir).await?;
                        eprintln!("interval: {}", serde_json::to_string(&line)?);
                        intervals.push(line);
                        interval_start = Instant::now();
                    }
                }
            }
            for task in tasks {
                task.await;
            }
            state.tally()
        }
    };
    let elapsed = start.elapsed().as_secs_f64();
    let after = handle.stats().await?;
    let cpu_after = super::cpu::ThreadTimes::now();
    if let Some(error) = tally.first_error.as_ref() {
        eprintln!("load: first error: {error}");
    }
    // Activities a task left (none, unless a step failed) are finished by recovery.
    let waiting = Instant::now();
    let mut in_doubt = u64::MAX;
    while in_doubt > 0 && waiting.elapsed() < Duration::from_secs(30) {
        in_doubt = handle.stats().await?.shards.iter().map(|shard| shard.activities_in_doubt).sum();
        if in_doubt > 0 {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    }
    let deposited = earlier + u128::from(users) * u128::from(FUNDING);
    let balances = handle.account_totals().await?.get(&currency).copied().unwrap_or(0) as i128;
    let in_transit: i128 = handle.money_in_transit().await?.values().sum();
    let unmoved = tally.unmoved.len();
    let (local, across, purchases) = (&tally.local, &tally.across, &tally.purchases);
    let mut all = local.clone();
    all.add(across)?;
    Ok(TransferReport {
        workload: "transfer",
        elapsed_sec: elapsed,
        transfers_per_sec: all.len() as f64 / elapsed,
        transfers: all.len(),
        cross_shard: across.len(),
        cross_shard_ratio: cross_ratio,
        cancelled: tally.cancelled,
        refused: tally.refused,
        errors: tally.errors,
        latency_us: latency::summarize(&all),
        cross_shard_latency_us: latency::summarize(across),
        unmoved_latency_us: latency::summarize(&tally.unmoved),
        purchases_per_sec: purchases.len() as f64 / elapsed,
        purchases: purchases.len(),
        purchase_ratio,
        purchase_latency_us: latency::summarize(purchases),
        inflight,
        batch,
        on_executors,
        requests_in_place: after.requests_in_place - before.requests_in_place,
        users,
        log: super::report::LogFigures::between(&before, &after, elapsed),
        money_deposited: deposited,
        money_counted: balances + in_transit,
        in_transit_at_end: in_transit,
        activities_in_doubt_at_end: in_doubt,
        conservation_ok: balances + in_transit == deposited as i128 && in_transit == 0 && in_doubt == 0,
        executors: routing.executors,
        shards: routing.physical_shards,
        resident_growth_after_warmup: growth_after_warmup(&intervals).0,
        intervals,
        checkpoint_work: super::report::CheckpointWork::between(&after, &before),
        cpu: cpu_after.per_op_since(&cpu_before, all.len() + purchases.len() + unmoved),
    })
}

/// The timed phase as tasks on the engine's executors (`--on-executors`): each executor runs
/// its share of the tasks, whose payers live in its shards, and answers what they counted.
async fn on_the_executors(phase: &Phase, ops_max: Option<u64>) -> anyhow::Result<Tally> {
    let handle = &phase.handle;
    let executors = handle.executors();
    let routing = handle.routing();
    // The executors whose shards hold users to pay share the tasks, the first ones taking one
    // more of a remainder, and `--ops` likewise.
    let paying: Vec<usize> = (0..executors)
        .filter(|executor| {
            routing
                .shards_of_executor(*executor)
                .any(|shard| phase.by_shard.get(shard as usize).is_some_and(|users| !users.is_empty()))
        })
        .collect();
    if paying.is_empty() {
        anyhow::bail!("no executor holds users to pay: more --users");
    }
    let share =
        |total: u64, part: usize| total / paying.len() as u64 + u64::from((part as u64) < total % paying.len() as u64);
    let mut answers = Vec::with_capacity(paying.len());
    let mut first_task = 0;
    for (part, &executor) in paying.iter().enumerate() {
        let tasks = first_task..first_task + share(phase.inflight as u64, part) as usize;
        first_task = tasks.end;
        if tasks.is_empty() {
            continue;
        }
        let ops = ops_max.map(|max| share(max, part));
        let (reply, answer) = tradeshard_engine::reply::channel();
        let phase = phase.clone();
        handle
            .spawn_on(executor, move || async move {
                let state = Rc::new(phase.part(Some(executor), ops));
                for task in state.spawn_tasks(tasks) {
                    task.await;
                }
                reply.send(state.tally());
            })
            .await?;
        answers.push(answer);
    }
    let mut tally = None::<Tally>;
    for answer in answers {
        let part =
            answer.await.ok_or_else(|| anyhow::anyhow!("an executor stopped before its part of the load ended"))?;
        match tally.as_mut() {
            Some(tally) => tally.add(part)?,
            None => tally = Some(part),
        }
    }
    tally.ok_or_else(|| anyhow::anyhow!("no part of the load ran: more --inflight"))
}

/// The transfer workload on a client thread of its own, then its report.
pub(super) fn run_on_thread(
    args: &super::Args,
    engine: tradeshard_engine::Engine,
    data_dir: crate::data_dir::DataDir,
    open_ms: u64,
    duration: Option<Duration>,
    run_tag: String,
) -> anyhow::Result<()> {
    let handle = engine.handle();
    let plan = TransferPlan {
        users: args.users,
        cross_ratio: args.cross_shard_ratio,
        purchase_ratio: args.purchase_ratio,
        inflight: args.inflight,
        batch: args.batch,
        duration,
        ops_max: args.ops,
        rate: args.rate,
        seed: args.seed,
        run: run_tag,
        report_every: args.report_every,
        dir: data_dir.path().to_path_buf(),
        on_executors: args.on_executors,
    };
    let report = super::on_client_executor(move || run(handle, plan))?;
    engine.close().map_err(|e| anyhow::anyhow!("closing the engine: {e}"))?;
    eprintln!("load: opened in {open_ms} ms; data directory {} bytes", data_dir.disk_bytes());
    drop(data_dir);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if !report.conservation_ok || report.errors > 0 {
        bail!(
            "money counted {} against {} deposited ({} in transit, {} activities in doubt); {} transfers failed",
            report.money_counted,
            report.money_deposited,
            report.in_transit_at_end,
            report.activities_in_doubt_at_end,
            report.errors
        );
    }
    Ok(())
}
