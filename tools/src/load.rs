//! `tradeshard load`: the main job. Opens an engine (in a fresh temporary directory unless
//! `--dir` is given), drives a workload through the public handle from a client thread with
//! `--inflight` requests outstanding, reports throughput and latency per operation, and at the
//! end reads back every acknowledged trade and fails if any is not in its acknowledged state.
//!
//! Workloads: `ingest` creates trades only (the durable-ingest headline); `mixed` creates, pays
//! and settles trades, and reads (`get`, `list`) in `--read-ratio` of its operations; `read`
//! first creates `--read-trades` trades (untimed), then reads them by id, uniformly or with
//! `--zipf` skew over the trades, reporting the cache's hit ratio.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tradeshard_engine::{Engine, EngineHandle, NewTrade, Options, SyncMethod, TradeId, TradeStatus};

use crate::data_dir::DataDir;
use crate::latency::{self, LatencySummary};
use crate::workload::UserChooser;
use tradeshard_wal::disk::SplitMix64 as Rng;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Data directory to keep (must be new); a temporary one under the current directory when
    /// omitted, removed at the end.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// ingest: creates only; mixed: create, pay, settle, get and list; read: gets by trade id
    /// after an untimed ingest of --read-trades trades.
    #[arg(long, default_value = "mixed", value_parser = ["mixed", "ingest", "read"])]
    workload: String,
    /// Trades created before the timed phase of the read workload.
    #[arg(long, default_value_t = 200_000)]
    read_trades: u64,
    /// Gets per request in the read workload (`get_many` when above 1).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Bytes of read-through cache in all (0 turns it off).
    #[arg(long, default_value_t = 256 << 20)]
    cache_bytes: usize,
    /// Distinct buyers.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Zipf exponent of the choice of buyer, or of trade in the read workload (0: uniform).
    #[arg(long, default_value_t = 0.0)]
    zipf: f64,
    /// How long to run (e.g. 10s); the default when --ops is not given.
    #[arg(long, value_parser = latency::parse_duration)]
    duration: Option<Duration>,
    /// Operations to run instead of a duration.
    #[arg(long)]
    ops: Option<u64>,
    /// Requests outstanding at once.
    #[arg(long, default_value_t = 256)]
    inflight: usize,
    /// Share of reads in the mixed workload.
    #[arg(long, default_value_t = 0.2)]
    read_ratio: f64,
    /// sync: acknowledged after fdatasync; buffered: after the write, fdatasync every 10 ms.
    #[arg(long, default_value = "sync", value_parser = ["sync", "buffered"])]
    durability: String,
    /// dsync: the logs' files are opened O_DSYNC and a group commit is one durable write (the
    /// engine's default); fdatasync: a write and then an fdatasync.
    #[arg(long, default_value = "dsync", value_parser = ["dsync", "fdatasync"])]
    sync_method: String,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Operations per second to send (open loop; latency counts from the intended send time).
    #[arg(long)]
    rate: Option<f64>,
    /// Executors (default: one per core).
    #[arg(long)]
    executors: Option<usize>,
    /// Leave the executors unpinned (the operating system places them, and this tool's client
    /// thread, as it likes).
    #[arg(long)]
    unpinned: bool,
    /// Physical shards of a new directory (default: one per core).
    #[arg(long)]
    shards: Option<u32>,
    /// Run a settlement consumer alongside the load and reconcile its totals at the end.
    #[arg(long)]
    settle: bool,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Report throughput, p99 latency and resident memory every interval (e.g. 60s) on stderr
    /// and in the report's `intervals`: the soak test's view of a long run.
    #[arg(long, value_parser = latency::parse_duration)]
    report_every: Option<Duration>,
}

/// Trades whose acknowledgements are kept for the final read-back; later ones are not checked
/// (the report says how many), so that a long run's bookkeeping stays bounded.
const TRACKED_TRADES_MAX: u64 = 4 << 20;
/// Created trade ids kept for the mixed workload's gets (a uniform sample once full).
const READABLE_TRADES_MAX: usize = 4 << 20;

/// One `--report-every` interval.
#[derive(Serialize, Clone, Debug)]
struct IntervalReport {
    /// Seconds since the timed phase started, at the interval's end.
    at_sec: f64,
    ops_per_sec: f64,
    p99_us: u64,
    resident_bytes: u64,
    engine_trades: u64,
    /// Resident bytes over trades held: flat when memory grows only with the data.
    resident_bytes_per_trade: f64,
}

const OPS: [&str; 5] = ["create", "pay", "settle", "get", "list"];
const CREATE: usize = 0;
const PAY: usize = 1;
const SETTLE: usize = 2;
const GET: usize = 3;
const LIST: usize = 4;

#[derive(Serialize)]
struct OpReport {
    count: u64,
    ops_per_sec: f64,
    latency_us: LatencySummary,
}

#[derive(Serialize)]
struct Report {
    workload: String,
    elapsed_sec: f64,
    trades_per_sec: f64,
    ops_per_sec: f64,
    /// `get`s per second in the timed phase.
    reads_per_sec: f64,
    /// Cache hits over cache lookups in the timed phase.
    hit_ratio: f64,
    cache_bytes: usize,
    fsyncs_per_sec: f64,
    records_per_fsync: f64,
    ops: HashMap<&'static str, OpReport>,
    verified: u64,
    mismatches: u64,
    errors: u64,
    /// Trades in the engine at the end of the timed phase.
    engine_trades: u64,
    /// Resident memory of the process (engine and client) at the end of the timed phase.
    resident_bytes: u64,
    /// With `--settle`: events the settlement consumer consumed per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    events_per_sec: Option<f64>,
    /// With `--settle`: p99 from an event's write to its delivery, microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    end_to_end_p99_us: Option<u64>,
    /// With `--settle`: the settlement consumer's whole report.
    #[serde(skip_serializing_if = "Option::is_none")]
    settlement: Option<crate::settle::SettleReport>,
    inflight: usize,
    users: u64,
    zipf: f64,
    durability: String,
    sync_method: String,
    executors: usize,
    shards: u32,
    /// Trades created beyond `TRACKED_TRADES_MAX`, not read back at the end.
    untracked_trades: u64,
    /// With `--report-every`: one entry per interval.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    intervals: Vec<IntervalReport>,
    /// With `--report-every`: (max - min) / min of resident memory over the intervals after
    /// the first fifth (the warm-up).
    #[serde(skip_serializing_if = "Option::is_none")]
    resident_growth_after_warmup: Option<f64>,
    /// With `--report-every`, when trades were added after the warm-up: resident memory fitted
    /// as a + b * trades held (least squares over the intervals after the warm-up); `b` is
    /// the resident bytes each added trade costs, and the fit's largest miss, as a share of
    /// resident memory, says whether anything but the data grew.
    #[serde(skip_serializing_if = "Option::is_none")]
    resident_fit: Option<ResidentFit>,
}

/// What the client tasks share (one client thread, so `RefCell`).
struct Client {
    handle: EngineHandle,
    users: UserChooser,
    read_ratio: f64,
    ingest: bool,
    /// The read workload's trades, and how to pick among them.
    read_only: Option<(Vec<TradeId>, UserChooser)>,
    /// Gets per request of the read workload.
    batch: usize,
    /// Trades read (a batch counts each of its gets).
    reads: Cell<u64>,
    stop: Cell<bool>,
    issued: Cell<u64>,
    ops_max: Option<u64>,
    histograms: RefCell<Vec<Histogram<u64>>>,
    /// Every operation's latency since the last `--report-every` line.
    interval: RefCell<Histogram<u64>>,
    /// Trades whose acknowledgements are kept (at most `TRACKED_TRADES_MAX`), and the rest.
    tracked: Cell<u64>,
    untracked: Cell<u64>,
    /// Every acknowledgement in order (the last one of a trade is its acknowledged state);
    /// appended, not looked up, so that bookkeeping costs the client little.
    acked: RefCell<Vec<(TradeId, TradeStatus)>>,
    created: RefCell<Vec<TradeId>>,
    errors: Cell<u64>,
    first_error: RefCell<Option<String>>,
    rate: Option<f64>,
    inflight: usize,
    start: Instant,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.inflight == 0 || args.inflight > 1 << 20 {
        bail!("--inflight must be between 1 and 1048576");
    }
    if args.batch == 0 || args.batch > 1 << 16 {
        bail!("--batch must be between 1 and 65536");
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        bail!("--read-ratio must be between 0 and 1");
    }
    let users = UserChooser::new(args.users, args.zipf).map_err(anyhow::Error::msg)?;
    let data_dir = DataDir::new(args.dir.as_deref(), "tradeshard-load")?;
    let dir = data_dir.path().to_path_buf();
    let mut options = Options {
        executors: args.executors,
        physical_shards: args.shards,
        cache_bytes: args.cache_bytes,
        pin: !args.unpinned,
        sync_method: if args.sync_method == "dsync" { SyncMethod::DsyncWrites } else { SyncMethod::Fdatasync },
        ..Options::new(&dir)
    };
    if args.durability == "buffered" {
        options = options.buffered(Duration::from_millis(10));
    }
    let engine = Engine::open(options).with_context(|| format!("opening the engine in {}", dir.display()))?;
    let handle = engine.handle();
    let routing = handle.routing();
    let duration = match (args.duration, args.ops) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    eprintln!(
        "load: workload={} dir={} users={} zipf={} inflight={} read_ratio={} durability={} sync_method={} seed={} rate={:?} \
         duration={:?} ops={:?} executors={} shards={}",
        args.workload,
        dir.display(),
        args.users,
        args.zipf,
        args.inflight,
        args.read_ratio,
        args.durability,
        args.sync_method,
        args.seed,
        args.rate,
        duration,
        args.ops,
        routing.executors,
        routing.physical_shards
    );
    let settle_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let settler =
        args.settle.then(|| crate::settle::spawn(handle.clone(), "load-settlement".into(), settle_stop.clone()));
    let client_args = args.clone();
    let client = std::thread::spawn(move || -> anyhow::Result<Report> {
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .name("load-client")
            .make()
            .map_err(|e| anyhow::anyhow!("starting the client executor: {e}"))?;
        executor.run(drive(client_args, handle, users, duration))
    });
    let mut report = client.join().map_err(|_| anyhow::anyhow!("the client thread panicked"))??;
    settle_stop.store(true, std::sync::atomic::Ordering::Release);
    if let Some(settler) = settler {
        let settlement = settler.join().map_err(|_| anyhow::anyhow!("the settlement thread panicked"))??;
        report.events_per_sec = Some(settlement.events_per_sec);
        report.end_to_end_p99_us = Some(settlement.end_to_end_us.p99);
        report.settlement = Some(settlement);
    }
    engine.close().context("closing the engine")?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    if let Some(settlement) = &report.settlement {
        if !settlement.differences.is_empty() {
            bail!("settlement totals differ from the store: {:?}", settlement.differences);
        }
    }
    if report.mismatches > 0 || report.errors > 0 {
        bail!(
            "{} acknowledged trades did not read back as acknowledged, {} operations failed",
            report.mismatches,
            report.errors
        );
    }
    Ok(())
}

async fn drive(
    args: Args,
    handle: EngineHandle,
    users: UserChooser,
    duration: Option<Duration>,
) -> anyhow::Result<Report> {
    let read_only = if args.workload == "read" {
        let ids = crate::readback::ingest_untimed(&handle, args.read_trades, args.inflight, args.users).await?;
        let chooser = UserChooser::new(ids.len() as u64, args.zipf).map_err(anyhow::Error::msg)?;
        Some((ids, chooser))
    } else {
        None
    };
    let before = handle.stats().await?;
    let client = Rc::new(Client {
        handle: handle.clone(),
        users,
        read_ratio: args.read_ratio,
        ingest: args.workload == "ingest",
        read_only,
        batch: args.batch.max(1),
        reads: Cell::new(0),
        stop: Cell::new(false),
        issued: Cell::new(0),
        ops_max: args.ops,
        histograms: RefCell::new((0..OPS.len()).map(|_| latency::new_histogram()).collect()),
        interval: RefCell::new(latency::new_histogram()),
        tracked: Cell::new(0),
        untracked: Cell::new(0),
        acked: RefCell::new(Vec::new()),
        created: RefCell::new(Vec::new()),
        errors: Cell::new(0),
        first_error: RefCell::new(None),
        rate: args.rate,
        inflight: args.inflight,
        start: Instant::now(),
    });
    if let Some((ids, _)) = &client.read_only {
        client.acked.borrow_mut().extend(ids.iter().map(|id| (*id, TradeStatus::Created)));
    }
    let tasks: Vec<_> = (0..args.inflight)
        .map(|task| glommio::spawn_local(worker(client.clone(), task, args.seed.wrapping_mul(1_000_003) ^ task as u64)))
        .collect();
    let progress = progress_bar(duration);
    let mut intervals = Vec::new();
    let mut interval_start = Instant::now();
    while !client.stop.get() {
        glommio::timer::sleep(Duration::from_millis(200)).await;
        let elapsed = client.start.elapsed();
        if args.report_every.is_some_and(|every| interval_start.elapsed() >= every) {
            let line = interval_report(&client, interval_start.elapsed(), &handle).await?;
            let text = serde_json::to_string(&line)?;
            progress.suspend(|| eprintln!("interval: {text}"));
            intervals.push(line);
            interval_start = Instant::now();
        }
        let done = client.histograms.borrow().iter().map(|h| h.len()).sum::<u64>();
        progress.set_message(format!("{done} ops, {:.0} ops/s", done as f64 / elapsed.as_secs_f64()));
        match duration {
            Some(d) => {
                progress.set_position(elapsed.as_millis().min(d.as_millis()) as u64);
                if elapsed >= d {
                    client.stop.set(true);
                }
            }
            None => progress.set_position(done),
        }
        if client.ops_max.is_some_and(|max| client.issued.get() >= max) || client.first_error.borrow().is_some() {
            client.stop.set(true);
        }
    }
    for task in tasks {
        task.await;
    }
    let elapsed = client.start.elapsed().as_secs_f64();
    let after = handle.stats().await?;
    let resident = resident_bytes();
    progress.finish_and_clear();
    if let Some(error) = client.first_error.borrow().as_ref() {
        eprintln!("load: first error: {error}");
    }
    let acked = std::mem::take(&mut *client.acked.borrow_mut());
    let (verified, mismatches) = crate::readback::verify(&handle, &acked, args.inflight).await;
    let (resident_growth_after_warmup, resident_fit) = growth_after_warmup(&intervals);
    let histograms = client.histograms.borrow();
    let ops = OPS
        .iter()
        .enumerate()
        .filter(|(i, _)| !histograms[*i].is_empty())
        .map(|(i, name)| {
            let count = histograms[i].len();
            (
                *name,
                OpReport { count, ops_per_sec: count as f64 / elapsed, latency_us: latency::summarize(&histograms[i]) },
            )
        })
        .collect::<HashMap<_, _>>();
    let fsyncs = after.fsyncs - before.fsyncs;
    let records = after.records - before.records;
    let (hits, misses) = (after.cache.hits - before.cache.hits, after.cache.misses - before.cache.misses);
    Ok(Report {
        workload: args.workload.clone(),
        elapsed_sec: elapsed,
        trades_per_sec: histograms[CREATE].len() as f64 / elapsed,
        ops_per_sec: histograms.iter().map(|h| h.len()).sum::<u64>() as f64 / elapsed,
        reads_per_sec: client.reads.get() as f64 / elapsed,
        hit_ratio: if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 },
        cache_bytes: args.cache_bytes,
        fsyncs_per_sec: fsyncs as f64 / elapsed,
        records_per_fsync: if fsyncs == 0 { 0.0 } else { records as f64 / fsyncs as f64 },
        ops,
        verified,
        mismatches,
        errors: client.errors.get(),
        engine_trades: after.trades,
        resident_bytes: resident,
        events_per_sec: None,
        end_to_end_p99_us: None,
        settlement: None,
        inflight: args.inflight,
        users: args.users,
        zipf: args.zipf,
        durability: args.durability.clone(),
        sync_method: args.sync_method.clone(),
        executors: handle.routing().executors,
        shards: handle.routing().physical_shards,
        untracked_trades: client.untracked.get(),
        intervals,
        resident_growth_after_warmup,
        resident_fit,
    })
}

/// The interval since the last report: throughput, p99, memory (and resets the histogram).
async fn interval_report(client: &Client, length: Duration, handle: &EngineHandle) -> anyhow::Result<IntervalReport> {
    let (ops, p99_us) = {
        let mut interval = client.interval.borrow_mut();
        let measured = (interval.len(), interval.value_at_quantile(0.99));
        interval.reset();
        measured
    };
    let engine_trades = handle.stats().await?.trades;
    let resident_bytes = resident_bytes();
    Ok(IntervalReport {
        at_sec: client.start.elapsed().as_secs_f64(),
        ops_per_sec: ops as f64 / length.as_secs_f64(),
        p99_us,
        resident_bytes,
        engine_trades,
        resident_bytes_per_trade: resident_bytes as f64 / engine_trades.max(1) as f64,
    })
}

/// Resident memory against trades held, after the warm-up.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
struct ResidentFit {
    bytes_per_added_trade: f64,
    largest_miss: f64,
}

/// (max - min) / min of resident bytes over the intervals after the first fifth, and the fit
/// of resident bytes to trades held over them; `None` with fewer than five intervals (and no
/// fit when the trades held did not change).
fn growth_after_warmup(intervals: &[IntervalReport]) -> (Option<f64>, Option<ResidentFit>) {
    if intervals.len() < 5 {
        return (None, None);
    }
    let steady = &intervals[intervals.len() / 5..];
    let resident: Vec<f64> = steady.iter().map(|i| i.resident_bytes as f64).collect();
    let min = resident.iter().copied().fold(f64::INFINITY, f64::min);
    let max = resident.iter().copied().fold(0.0, f64::max);
    let growth = (max - min) / min.max(1.0);
    let trades: Vec<f64> = steady.iter().map(|i| i.engine_trades as f64).collect();
    let n = trades.len() as f64;
    let (mean_t, mean_r) = (trades.iter().sum::<f64>() / n, resident.iter().sum::<f64>() / n);
    let spread: f64 = trades.iter().map(|t| (t - mean_t).powi(2)).sum();
    if spread == 0.0 {
        return (Some(growth), None);
    }
    let slope = trades.iter().zip(&resident).map(|(t, r)| (t - mean_t) * (r - mean_r)).sum::<f64>() / spread;
    let largest_miss = trades
        .iter()
        .zip(&resident)
        .map(|(t, r)| (r - (mean_r + slope * (t - mean_t))).abs() / r.max(1.0))
        .fold(0.0, f64::max);
    (Some(growth), Some(ResidentFit { bytes_per_added_trade: slope, largest_miss }))
}

/// One outstanding request at a time, until told to stop.
async fn worker(client: Rc<Client>, task: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    // This task's trades that can still move forward: (id, status).
    let mut open: Vec<(TradeId, TradeStatus, bool)> = Vec::new();
    let mut sent: u64 = 0;
    while !client.stop.get() {
        if let Some(max) = client.ops_max {
            if client.issued.get() >= max {
                break;
            }
        }
        client.issued.set(client.issued.get() + 1);
        let intended = match client.rate {
            Some(rate) => {
                // Tasks interleave their send slots: task i sends at slots i, i + inflight, ...
                let slot = (sent as f64 * client.inflight as f64 + task as f64) / rate;
                let at = client.start + Duration::from_secs_f64(slot);
                let now = Instant::now();
                if at > now {
                    glommio::timer::sleep(at - now).await;
                }
                at
            }
            None => Instant::now(),
        };
        sent += 1;
        let op = choose(&client, &mut rng, &open);
        let outcome = run_op(&client, &mut rng, &mut open, op, task, sent).await;
        let micros = intended.elapsed().as_micros() as u64;
        match outcome {
            Ok(()) => {
                latency::record(&mut client.histograms.borrow_mut()[op], micros);
                latency::record(&mut client.interval.borrow_mut(), micros);
            }
            Err(error) => {
                client.errors.set(client.errors.get() + 1);
                client.first_error.borrow_mut().get_or_insert(format!("{}: {error}", OPS[op]));
            }
        }
    }
}

fn choose(client: &Client, rng: &mut Rng, open: &[(TradeId, TradeStatus, bool)]) -> usize {
    if client.ingest {
        return CREATE;
    }
    if client.read_only.is_some() {
        return GET;
    }
    if rng.unit() < client.read_ratio {
        return if rng.below(4) == 0 { LIST } else { GET };
    }
    let has = |status| open.iter().any(|(_, s, _)| *s == status);
    match rng.below(10) {
        0..=4 => CREATE,
        5..=7 if has(TradeStatus::Created) => PAY,
        8..=9 if has(TradeStatus::Paid) => SETTLE,
        _ => CREATE,
    }
}

async fn run_op(
    client: &Client,
    rng: &mut Rng,
    open: &mut Vec<(TradeId, TradeStatus, bool)>,
    op: usize,
    task: usize,
    sent: u64,
) -> Result<(), tradeshard_engine::Error> {
    let handle = &client.handle;
    match op {
        CREATE => {
            let buyer = client.users.pick(rng);
            let amount = 1 + rng.below(100_000);
            let mut order_no = String::with_capacity(24);
            {
                use std::fmt::Write;
                let _ = write!(order_no, "L{task}-{sent}");
            }
            let trade = NewTrade {
                buyer_id: buyer,
                merchant_id: 1 + buyer % 997,
                merchant_order_no: order_no,
                amount,
                currency: "CNY".into(),
                memo: String::new(),
            };
            let receipt = handle.create_trade(trade).await?;
            let tracked = client.tracked.get() < TRACKED_TRADES_MAX;
            if tracked {
                client.tracked.set(client.tracked.get() + 1);
                client.acked.borrow_mut().push((receipt.id, receipt.status));
            } else {
                client.untracked.set(client.untracked.get() + 1);
            }
            if !client.ingest {
                let mut created = client.created.borrow_mut();
                if created.len() < READABLE_TRADES_MAX {
                    created.push(receipt.id);
                } else {
                    let at = rng.below(created.len() as u64) as usize;
                    created[at] = receipt.id;
                }
                drop(created);
                open.push((receipt.id, receipt.status, tracked));
                if open.len() > 64 {
                    open.remove(0);
                }
            }
        }
        PAY | SETTLE => {
            let want = if op == PAY { TradeStatus::Created } else { TradeStatus::Paid };
            let at = open.iter().position(|(_, s, _)| *s == want).expect("chosen only when present");
            let (id, _, tracked) = open[at];
            let receipt = if op == PAY { handle.pay(id).await? } else { handle.settle(id).await? };
            if tracked {
                client.acked.borrow_mut().push((id, receipt.status));
            }
            if receipt.status == TradeStatus::Settled {
                open.remove(at);
            } else {
                open[at].1 = receipt.status;
            }
        }
        GET if client.read_only.is_some() => {
            let (ids, chooser) = client.read_only.as_ref().expect("checked");
            // Rank r of the skew is trade (r * 7919) mod n, so hot trades spread over shards.
            let mut pick = || ids[(((chooser.pick(rng) - 1) * 7919) % ids.len() as u64) as usize];
            if client.batch == 1 {
                handle.get(pick()).await?;
            } else {
                let batch: Vec<TradeId> = (0..client.batch).map(|_| pick()).collect();
                for answer in handle.get_many(&batch).await? {
                    answer?;
                }
            }
            client.reads.set(client.reads.get() + client.batch as u64);
        }
        GET => {
            let id = {
                let created = client.created.borrow();
                if created.is_empty() {
                    None
                } else {
                    Some(created[rng.below(created.len() as u64) as usize])
                }
            };
            if let Some(id) = id {
                handle.get(id).await?;
                client.reads.set(client.reads.get() + 1);
            }
        }
        _ => {
            handle.list_user_trades(client.users.pick(rng), 20, None).await?;
        }
    }
    Ok(())
}

/// Resident set size of this process, from `/proc/self/statm` (0 where unavailable).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn progress_bar(duration: Option<Duration>) -> ProgressBar {
    let bar = ProgressBar::new(duration.map_or(0, |d| d.as_millis() as u64));
    bar.set_style(ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}").expect("valid template"));
    bar
}

fn print_table(report: &Report) {
    println!(
        "workload {} for {:.2} s: {:.0} trades/s, {:.0} ops/s, {:.0} fsyncs/s, {:.1} records per fsync, \
         cache hit ratio {:.3}",
        report.workload,
        report.elapsed_sec,
        report.trades_per_sec,
        report.ops_per_sec,
        report.fsyncs_per_sec,
        report.records_per_fsync,
        report.hit_ratio
    );
    println!(
        "{:<8} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9}",
        "op", "count", "ops/s", "p50 µs", "p99 µs", "p99.9 µs", "max µs"
    );
    for name in OPS {
        if let Some(op) = report.ops.get(name) {
            let l = op.latency_us;
            println!(
                "{name:<8} {:>10} {:>12.0} {:>9} {:>9} {:>9} {:>9}",
                op.count, op.ops_per_sec, l.p50, l.p99, l.p999, l.max
            );
        }
    }
    println!(
        "{} trades in the engine, {:.1} MiB resident; verified {} acknowledged trades: {} mismatches",
        report.engine_trades,
        report.resident_bytes as f64 / (1 << 20) as f64,
        report.verified,
        report.mismatches
    );
    if let Some(s) = &report.settlement {
        let l = s.end_to_end_us;
        println!(
            "settlement: {} events at {:.0}/s, end to end p50 {} / p99 {} / max {} µs, {} redelivered, {} differences",
            s.events,
            s.events_per_sec,
            l.p50,
            l.p99,
            l.max,
            s.redelivered,
            s.differences.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(trades: u64, resident: u64) -> IntervalReport {
        IntervalReport {
            at_sec: 0.0,
            ops_per_sec: 0.0,
            p99_us: 0,
            resident_bytes: resident,
            engine_trades: trades,
            resident_bytes_per_trade: 0.0,
        }
    }

    #[test]
    fn memory_that_grows_with_the_data_fits_a_line_and_flat_memory_has_no_fit() {
        // A warm-up interval that does not count, then 150 bytes per trade over a 100 MB base.
        let mut growing = vec![interval(0, 10)];
        growing.extend((1..10).map(|k| interval(k * 1_000_000, 100_000_000 + k * 150_000_000)));
        let (growth, fit) = growth_after_warmup(&growing);
        let fit = fit.expect("trades were added");
        assert!((fit.bytes_per_added_trade - 150.0).abs() < 1e-6, "{fit:?}");
        assert!(fit.largest_miss < 1e-9 && growth.unwrap() > 1.0, "{fit:?} {growth:?}");

        let flat: Vec<_> = (0..10).map(|k| interval(5, 1_000_000 + (k % 2) * 50_000)).collect();
        let (growth, fit) = growth_after_warmup(&flat);
        assert!(fit.is_none());
        assert!((growth.unwrap() - 0.05).abs() < 1e-9);
        assert_eq!(growth_after_warmup(&flat[..4]), (None, None));
    }
}
