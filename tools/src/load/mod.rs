//! `tradeshard load`: the main job. Opens an engine (in a fresh temporary directory unless
//! `--dir` is given), drives a workload through the public handle from a client thread with
//! `--inflight` requests outstanding, reports throughput and latency per operation, and at the
//! end reads back every acknowledged trade and fails if any is not in its acknowledged state.
//!
//! Workloads: `ingest` creates trades only (the durable-ingest headline); `mixed` creates, pays
//! and settles trades, and reads (`get`, `list`) in `--read-ratio` of its operations; `read`
//! first creates `--read-trades` trades (untimed), then reads them by id, uniformly or with
//! `--zipf` skew over the trades, reporting the cache's hit ratio.

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use glommio::{LocalExecutorBuilder, Placement};
use indicatif::{ProgressBar, ProgressStyle};
use tradeshard_engine::{Engine, EngineHandle, Options, SyncMethod, TradeStatus, Upkeep};

mod client;
mod cpu;
mod messages;
mod report;
mod request_numbers;
mod retry;
mod transfer;

use crate::data_dir::DataDir;
use crate::latency;
use crate::units::parse_bytes;
use crate::workload::UserChooser;
use client::{new_client, on_the_executors, run_tag, run_workers, ClientTotals, CREATE, OPS};
use report::{growth_after_warmup, interval_report, print_table, resident_bytes, shard_sum, OpReport, Report};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Data directory to keep: new, or the directory of an earlier run (opened as it is, and
    /// its open timed); a temporary one under the current directory when omitted, removed at
    /// the end unless --keep.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the temporary directory at the end (its path is printed).
    #[arg(long)]
    keep: bool,
    /// Each shard checkpoints once its log grew by this many bytes (e.g. 256MiB)...
    #[arg(long, value_parser = parse_bytes)]
    checkpoint_bytes: Option<u64>,
    /// ... or this long after its last checkpoint (e.g. 60s) ...
    #[arg(long, value_parser = latency::parse_duration)]
    checkpoint_every: Option<Duration>,
    /// ... or once what it holds in memory for the work since then grew by this many bytes
    /// (e.g. 64MiB; default 128MiB)
    #[arg(long, value_parser = parse_bytes)]
    checkpoint_memory: Option<u64>,
    /// Log segments whose last record is older than this go (e.g. 2m; default 7 days).
    #[arg(long, value_parser = latency::parse_duration)]
    retention: Option<Duration>,
    /// The oldest segments go while a shard's log without them holds this many bytes.
    #[arg(long, value_parser = parse_bytes)]
    retention_bytes: Option<u64>,
    /// Segments retention took that each shard keeps as files for its next segments (default
    /// 4; 0 removes them, and every new segment is a new file).
    #[arg(long)]
    recycled_segments: Option<usize>,
    /// Memory for each shard's trades (e.g. 64MiB; default 512MiB): past it, the oldest trades
    /// leave memory for the shard's table on disk at each checkpoint.
    #[arg(long, value_parser = parse_bytes)]
    trade_memory: Option<u64>,
    /// Memory for each shard's blocks of its runs of keys read lately (e.g. 64MiB; default
    /// 16MiB; 0 keeps none): listings and retried creates read them again without the device.
    #[arg(long, value_parser = crate::units::parse_budget)]
    run_cache: Option<u64>,
    /// Memory for each shard's pages of its frozen blocks' index read lately (e.g. 16MiB;
    /// default 4MiB, the pages of about 31 M trades; 0 keeps none): a cold trade whose page is kept
    /// costs one read, otherwise two.
    #[arg(long, value_parser = crate::units::parse_budget)]
    frozen_index_cache: Option<u64>,
    /// Remember order, refund and request numbers for uniqueness and idempotency this long at
    /// least (e.g. 60s or 24h; default: forever): the Bloom filters of older keys leave memory.
    #[arg(long, value_parser = latency::parse_duration)]
    key_window: Option<Duration>,
    /// ingest: creates only; mixed: create, pay, settle, get and list; read: gets by trade id
    /// after an untimed ingest of --read-trades trades; transfer: money moved between --users
    /// users funded before the timed phase, then counted (`conservation_ok`); publish and
    /// half-messages: application messages (`load/messages.rs`).
    #[arg(long, default_value = "mixed", value_parser = ["mixed", "ingest", "read", "transfer", "publish", "half-messages"])]
    workload: String,
    /// Bytes of each message's payload (publish, half-messages).
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Share of the transfer workload's transfers between users of two shards (each a TCC
    /// activity); the rest stay within one shard (one journal record each).
    #[arg(long, default_value_t = 0.5)]
    cross_shard_ratio: f64,
    /// Share of the transfer workload's requests that are purchases instead: a trade from one
    /// user to another (the merchant, of the same or another shard by --cross-shard-ratio)
    /// created, paid from the buyer's balance and settled to the merchant.
    #[arg(long, default_value_t = 0.0)]
    purchase_ratio: f64,
    /// Trades created before the timed phase of the read workload.
    #[arg(long, default_value_t = 200_000)]
    read_trades: u64,
    /// Gets per request in the read workload (`get_many` when above 1); transfers per request
    /// in the transfer workload (`transfer_many` when above 1; --inflight counts requests).
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
    /// Operations to run instead of a duration (in all, shared among `--clients`).
    #[arg(long)]
    ops: Option<u64>,
    /// Requests outstanding at once, per client thread.
    #[arg(long, default_value_t = 256)]
    inflight: usize,
    /// Client threads (read workload only), each with --inflight requests outstanding: a read
    /// of a cached trade is answered on its caller's thread, so more callers read more.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Run the client tasks on the engine's own executors instead of a thread of their own
    /// (transfer, ingest and mixed workloads): each executor's tasks send the transfers whose
    /// payers, or create the trades whose buyers, live in its shards (a shard-aware caller, as
    /// a thread-per-core service's connections are), which the engine runs on the spot with no
    /// hand-off between threads.
    #[arg(long)]
    on_executors: bool,
    /// Share of reads in the mixed workload.
    #[arg(long, default_value_t = 0.2)]
    read_ratio: f64,
    /// Share of acknowledged writes sent again, as a client that lost the answer would: creates
    /// (also with the same order number for another buyer), moves and refunds. Each must
    /// answer the original (a conflict for the other buyer); the report counts them.
    #[arg(long, default_value_t = 0.0)]
    retry_ratio: f64,
    /// any: order numbers as they come, so with N shards most have their home in another
    /// shard than the buyer's and are claimed there first; buyer: each order number chosen
    /// with its home in the buyer's shard, so no create claims (the cost of the claims, on
    /// the same build).
    #[arg(long, default_value = "any", value_parser = ["any", "buyer"])]
    order_home: String,
    /// sync: acknowledged after fdatasync; buffered: after the write, fdatasync every 10 ms.
    #[arg(long, default_value = "sync", value_parser = ["sync", "buffered"])]
    durability: String,
    /// dsync: the logs' files are opened O_DSYNC and a group commit is one durable write (the
    /// engine's default); fdatasync: a write and then an fdatasync.
    #[arg(long, default_value = "dsync", value_parser = ["dsync", "fdatasync"])]
    sync_method: String,
    /// How long an executor runs ready tasks before it reaps completed I/O (e.g. 1ms; default:
    /// the engine's, `Options::preempt_interval`).
    #[arg(long, value_parser = latency::parse_duration)]
    preempt_interval: Option<Duration>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Operations per second to send (open loop; latency counts from the intended send time):
    /// mixed, ingest, read and transfer workloads, in all (shared among `--clients`).
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

/// Runs `work` on a client executor of its own thread (unpinned: the executors own the cores)
/// and returns its result.
fn on_client_executor<T, Fut>(work: impl FnOnce() -> Fut + Send + 'static) -> anyhow::Result<T>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let client = std::thread::Builder::new().name("load-client".into()).spawn(move || -> anyhow::Result<T> {
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .name("load-client")
            .make()
            .map_err(|e| anyhow::anyhow!("starting the client executor: {e}"))?;
        executor.run(work())
    });
    let client = client.map_err(|e| anyhow::anyhow!("starting the client thread: {e}"))?;
    client.join().map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

/// Trades the read workload creates before its timed phase at most (their ids are held).
const READ_TRADES_MAX: u64 = 100_000_000;
/// Users of the transfer workload at most: each is held, and funded before the timed phase.
const TRANSFER_USERS_MAX: u64 = 100_000_000;

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.inflight == 0 || args.inflight > 1 << 20 {
        bail!("--inflight must be between 1 and 1048576");
    }
    if args.clients == 0 || args.clients > 256 {
        bail!("--clients must be between 1 and 256");
    }
    if args.clients > 1 && args.workload != "read" {
        bail!("--clients above 1 is for the read workload");
    }
    if args.batch == 0 || args.batch > 1 << 16 {
        bail!("--batch must be between 1 and 65536");
    }
    if args.batch > 1 && args.workload != "read" && args.workload != "transfer" {
        bail!("--batch above 1 is for the read and transfer workloads");
    }
    if args.workload == "transfer" && args.batch > 1 {
        if args.batch > tradeshard_engine::TRANSFERS_PER_CALL_MAX {
            bail!("--batch of transfers must be at most {}", tradeshard_engine::TRANSFERS_PER_CALL_MAX);
        }
        if args.purchase_ratio > 0.0 {
            bail!("--batch above 1 sends transfers only: purchases (--purchase-ratio) go one at a time");
        }
    }
    if args.on_executors && !["transfer", "ingest", "mixed"].contains(&args.workload.as_str()) {
        bail!("--on-executors is for the transfer, ingest and mixed workloads");
    }
    if args.on_executors && args.rate.is_some() && args.workload != "transfer" {
        bail!("--on-executors sends as fast as --inflight allows in the {} workload: without --rate", args.workload);
    }
    if args.on_executors && args.report_every.is_some() {
        bail!("--on-executors reports at the end only: without --report-every");
    }
    if !(0.0..=1.0).contains(&args.retry_ratio) {
        bail!("--retry-ratio must be between 0 and 1");
    }
    if !(0.0..=1.0).contains(&args.cross_shard_ratio) {
        bail!("--cross-shard-ratio must be between 0 and 1");
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        bail!("--read-ratio must be between 0 and 1");
    }
    if args.rate.is_some_and(|rate| !(rate.is_finite() && rate > 0.0)) {
        bail!("--rate must be a positive number of operations per second");
    }
    if args.rate.is_some() && (args.workload == "publish" || args.workload == "half-messages") {
        bail!("--rate is not supported by the {} workload: it sends as fast as --inflight allows", args.workload);
    }
    if args.payload_bytes > tradeshard_engine::PAYLOAD_BYTES_MAX {
        bail!("--payload-bytes must be at most {}", tradeshard_engine::PAYLOAD_BYTES_MAX);
    }
    if args.read_trades > READ_TRADES_MAX {
        bail!("--read-trades must be at most {READ_TRADES_MAX}");
    }
    if args.workload == "transfer" && args.users > TRANSFER_USERS_MAX {
        bail!("--users of the transfer workload must be at most {TRANSFER_USERS_MAX} (each is funded first)");
    }
    let users = UserChooser::new(args.users, args.zipf).map_err(anyhow::Error::msg)?;
    let mut data_dir = DataDir::new_or_engine(args.dir.as_deref(), "tradeshard-load")?;
    data_dir.keep_at_end(args.keep);
    let dir = data_dir.path().to_path_buf();
    let defaults = Upkeep::default();
    let upkeep = Upkeep {
        checkpoint_log_bytes: args.checkpoint_bytes.unwrap_or(defaults.checkpoint_log_bytes),
        checkpoint_interval: args.checkpoint_every.unwrap_or(defaults.checkpoint_interval),
        checkpoint_memory_bytes: args.checkpoint_memory.unwrap_or(defaults.checkpoint_memory_bytes),
        retention_time: args.retention.or(defaults.retention_time),
        retention_bytes: args.retention_bytes.or(defaults.retention_bytes),
        recycled_segments_max: args.recycled_segments.unwrap_or(defaults.recycled_segments_max),
        trade_memory_bytes: args.trade_memory.unwrap_or(defaults.trade_memory_bytes),
        run_cache_bytes: args.run_cache.unwrap_or(defaults.run_cache_bytes),
        frozen_index_cache_bytes: args.frozen_index_cache.unwrap_or(defaults.frozen_index_cache_bytes),
        key_window: args.key_window.or(defaults.key_window),
        ..defaults
    };
    let mut options = Options {
        upkeep,
        executors: args.executors,
        physical_shards: args.shards,
        cache_bytes: args.cache_bytes,
        pin: !args.unpinned,
        sync_method: if args.sync_method == "dsync" { SyncMethod::DsyncWrites } else { SyncMethod::Fdatasync },
        ..Options::new(&dir)
    };
    if let Some(interval) = args.preempt_interval {
        options.preempt_interval = interval;
    }
    if args.durability == "buffered" {
        options = options.buffered(Duration::from_millis(10));
    }
    if args.workload == "half-messages" {
        options = messages::with_checker(options);
    }
    let opening = Instant::now();
    let engine = Engine::open(options).with_context(|| format!("opening the engine in {}", dir.display()))?;
    let open_ms = opening.elapsed().as_millis() as u64;
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
    if args.workload == "transfer" {
        return transfer::run_on_thread(&args, engine, data_dir, open_ms, duration, run_tag());
    }
    if args.workload == "publish" || args.workload == "half-messages" {
        return messages::run_on_thread(&args, engine, data_dir, duration);
    }
    let settle_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let settler = match args.settle {
        true => Some(crate::settle::spawn(handle.clone(), "load-settlement".into(), settle_stop.clone())?),
        false => None,
    };
    let client_args = args.clone();
    let dir_for_client = dir.clone();
    let opened: Vec<_> = engine.handle().stats_blocking()?.shards.iter().map(|shard| shard.opened).collect();
    let mut report = on_client_executor(move || drive(client_args, handle, users, duration, dir_for_client))?;
    report.open_ms = open_ms;
    report.replayed_records = opened.iter().map(|shard| shard.replayed_records).sum();
    settle_stop.store(true, std::sync::atomic::Ordering::Release);
    if let Some(settler) = settler {
        let settlement = settler.join().map_err(|_| anyhow::anyhow!("the settlement thread panicked"))??;
        report.events_per_sec = Some(settlement.events_per_sec);
        report.end_to_end_p99_us = Some(settlement.end_to_end_us.p99);
        report.settlement = Some(settlement);
    }
    engine.close().context("closing the engine")?;
    report.disk_bytes = data_dir.disk_bytes();
    drop(data_dir);
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
    if report.retries.retry_mismatches > 0 || report.retries.order_mismatches > 0 {
        bail!(
            "{} retries answered otherwise than the original, {} order numbers did not name their trade",
            report.retries.retry_mismatches,
            report.retries.order_mismatches
        );
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
    dir: PathBuf,
) -> anyhow::Result<Report> {
    let read_only = if args.workload == "read" {
        let ids = crate::readback::ingest_untimed(&handle, args.read_trades, args.inflight, args.users).await?;
        let chooser = UserChooser::new(ids.len() as u64, args.zipf).map_err(anyhow::Error::msg)?;
        Some((ids, chooser))
    } else {
        None
    };
    let before = handle.stats().await?;
    let cpu_before = cpu::ThreadTimes::now();
    let deadline = duration.map(|d| Instant::now() + d);
    let more_clients: Vec<_> = (1..args.clients)
        .map(|index| {
            let (args, handle, users, read_only) = (args.clone(), handle.clone(), users.clone(), read_only.clone());
            std::thread::Builder::new().name(format!("load-client-{index}")).spawn(
                move || -> anyhow::Result<ClientTotals> {
                    let executor = LocalExecutorBuilder::new(Placement::Unbound)
                        .name(&format!("load-client-{index}"))
                        .make()
                        .map_err(|e| anyhow::anyhow!("starting a client executor: {e}"))?;
                    Ok(executor.run(async move {
                        let client = Rc::new(new_client(index, &args, handle, users, read_only, deadline));
                        run_workers(client.clone(), args.inflight, args.seed, index).await;
                        ClientTotals::of(&client)
                    }))
                },
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("starting a client thread: {e}"))?;
    let client = Rc::new(new_client(0, &args, handle.clone(), users, read_only, deadline));
    if let Some((ids, _)) = &client.read_only {
        client.acked.borrow_mut().extend(ids.iter().map(|id| (*id, TradeStatus::Created)));
    }
    let mut tasks = match args.on_executors {
        false => glommio::spawn_local(run_workers(client.clone(), args.inflight, args.seed, 0)),
        true => glommio::spawn_local(on_the_executors(client.clone(), args.clone(), handle.clone(), deadline)),
    };
    let progress = progress_bar(duration);
    let mut intervals = Vec::new();
    let mut interval_start = Instant::now();
    // Set once this thread's workers ended by themselves (`--ops` done), so that the run's
    // time ends with them, not at the next look.
    let mut finished = false;
    while !client.stop.get() && !finished {
        let ended = async {
            (&mut tasks).await;
            true
        };
        let look = async {
            glommio::timer::sleep(Duration::from_millis(200)).await;
            false
        };
        finished = futures_lite::future::or(ended, look).await;
        let elapsed = client.start.elapsed();
        if args.report_every.is_some_and(|every| interval_start.elapsed() >= every) {
            let line = interval_report(client.start, &client.interval, interval_start.elapsed(), &handle, &dir).await?;
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
    if !finished {
        tasks.await;
    }
    for more in more_clients {
        more.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??.add_to(&client)?;
    }
    let elapsed = client.start.elapsed().as_secs_f64();
    let after = handle.stats().await?;
    let cpu_after = cpu::ThreadTimes::now();
    let resident = resident_bytes();
    progress.finish_and_clear();
    if let Some(error) = client.first_error.borrow().as_ref() {
        eprintln!("load: first error: {error}");
    }
    let acked = std::mem::take(&mut *client.acked.borrow_mut());
    let (verified, mismatches) = crate::readback::verify(&handle, &acked, args.inflight).await;
    let retries = client.retries.check_orders(&handle).await;
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
    let (hits, misses) = (after.cache.hits - before.cache.hits, after.cache.misses - before.cache.misses);
    Ok(Report {
        workload: args.workload.clone(),
        elapsed_sec: elapsed,
        trades_per_sec: histograms[CREATE].len() as f64 / elapsed,
        ops_per_sec: histograms.iter().map(|h| h.len()).sum::<u64>() as f64 / elapsed,
        reads_per_sec: client.reads.get() as f64 / elapsed,
        hit_ratio: if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 },
        cache_bytes: args.cache_bytes,
        log: report::LogFigures::between(&before, &after, elapsed),
        ops,
        verified,
        mismatches,
        errors: client.errors.get(),
        engine_trades: after.trades,
        trades_in_memory: after.shards.iter().map(|shard| shard.trades_in_memory).sum(),
        key_run_entries: after.shards.iter().map(|shard| shard.checkpoints.key_run_entries).sum(),
        key_run_memory_bytes: after.shards.iter().map(|shard| shard.checkpoints.key_run_memory_bytes).sum(),
        key_run_reads: after.shards.iter().map(|shard| shard.checkpoints.key_run_reads).sum(),
        run_block_hits: shard_sum(&after, &before, |s| s.checkpoints.run_block_hits),
        run_block_device_reads: shard_sum(&after, &before, |s| s.checkpoints.run_block_device_reads),
        log_memory_reads: after.shards.iter().map(|shard| shard.wal.memory_reads).sum(),
        point_device_reads: report::PointReads {
            log: shard_sum(&after, &before, |s| s.wal.point_device_reads),
            table: shard_sum(&after, &before, |s| s.checkpoints.table_reads),
            parts: shard_sum(&after, &before, |s| s.checkpoints.parts_reads),
            key_runs: shard_sum(&after, &before, |s| s.checkpoints.key_run_reads),
            table_pages: shard_sum(&after, &before, |s| s.checkpoints.table_page_reads),
            log_frames: shard_sum(&after, &before, |s| s.wal.device_frames_read),
        },
        resident_bytes: resident,
        events_per_sec: None,
        end_to_end_p99_us: None,
        settlement: None,
        inflight: args.inflight,
        on_executors: args.on_executors,
        requests_in_place: after.requests_in_place - before.requests_in_place,
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
        retries,
        open_ms: 0,
        replayed_records: 0,
        disk_bytes: 0,
        checkpoint_work: report::CheckpointWork::between(&after, &before),
        cpu: cpu_after.per_op_since(&cpu_before, histograms.iter().map(|h| h.len()).sum()),
    })
}

/// The state of client thread `index`, before its tasks start.
fn progress_bar(duration: Option<Duration>) -> ProgressBar {
    let bar = ProgressBar::new(duration.map_or(0, |d| d.as_millis() as u64));
    bar.set_style(ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}").expect("valid template"));
    bar
}
