//! `tradeshard compare`: the same trade workload on tradeshard and on RocksDB in one
//! invocation, and a table of each figure with the ratio and the goal it is held to.
//!
//! Each engine runs the whole suite ([`suite::run_suite`]) in a child process of its own
//! (`tradeshard compare-side`), so that the resident memory it reports is that engine's
//! alone; bytes written are counted at the device, so the machine should be otherwise quiet. With `--rounds 2` the engines alternate which goes first,
//! and each figure is the median of the rounds. RocksDB is built only with the `rocksdb`
//! feature; without it the table holds tradeshard's column alone.

pub mod suite;
mod tradeshard_side;

#[cfg(feature = "rocksdb")]
mod rocksdb_side;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use self::suite::{Plan, SideReport};
use crate::data_dir::DataDir;
use crate::latency;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Trades in flight at each ingest level, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64,1024,8192")]
    inflight: Vec<usize>,
    /// Length of each ingest level.
    #[arg(long, default_value = "5s", value_parser = latency::parse_duration)]
    ingest_time: Duration,
    /// Length of each read, list phase.
    #[arg(long, default_value = "5s", value_parser = latency::parse_duration)]
    read_time: Duration,
    /// Distinct buyers.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Bytes of cache of each engine (tradeshard's read-through cache, RocksDB's block cache).
    #[arg(long, default_value_t = 256 << 20)]
    cache_bytes: usize,
    /// RocksDB reads with O_DIRECT (its block cache is then its only cache, like tradeshard's);
    /// by default it also has the operating system's page cache.
    #[arg(long)]
    rocksdb_direct_reads: bool,
    /// Rounds; the engines alternate which goes first, figures are medians over rounds.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Where the engines keep their data (new or empty); a temporary directory under the
    /// current one when not given.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// The child's arguments (built by `compare`).
#[derive(clap::Args, Debug, Clone)]
pub struct SideArgs {
    #[arg(long)]
    engine: String,
    #[arg(long)]
    dir: PathBuf,
    /// The plan, as JSON.
    #[arg(long)]
    plan: String,
}

fn engines() -> Vec<&'static str> {
    if cfg!(feature = "rocksdb") {
        vec!["tradeshard", "rocksdb"]
    } else {
        vec!["tradeshard"]
    }
}

/// Runs one engine's suite and prints its report as JSON (the child process).
pub fn run_side(args: SideArgs) -> anyhow::Result<()> {
    let plan: Plan = serde_json::from_str(&args.plan).context("the plan")?;
    let report = match args.engine.as_str() {
        "tradeshard" => {
            let mut store = tradeshard_side::TradeshardStore::open(args.dir.clone(), plan.cache_bytes)?;
            suite::run_suite("tradeshard", &mut store, &plan, &args.dir)?
        }
        #[cfg(feature = "rocksdb")]
        "rocksdb" => {
            let mut store =
                rocksdb_side::RocksStore::open(args.dir.clone(), plan.cache_bytes, plan.rocksdb_direct_reads)?;
            suite::run_suite("rocksdb", &mut store, &plan, &args.dir)?
        }
        other => bail!("unknown engine {other}: this build has {:?}", engines()),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// One line of the table: a figure of each engine, their ratio (how many times better
/// tradeshard is: higher is better for rates, lower for latencies and bytes), and the goal.
#[derive(Debug, Serialize)]
struct Row {
    figure: String,
    tradeshard: f64,
    rocksdb: Option<f64>,
    ratio: Option<f64>,
    goal: Option<String>,
    met: Option<bool>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.inflight.is_empty() || args.inflight.iter().any(|n| *n == 0 || *n > 1 << 16) {
        bail!("--inflight needs levels between 1 and 65536");
    }
    if args.rounds == 0 || args.rounds > 16 || args.users == 0 {
        bail!("--rounds must be 1..=16 and --users above zero");
    }
    let plan = Plan {
        inflight_levels: args.inflight.clone(),
        ingest_seconds: args.ingest_time.as_secs_f64(),
        read_seconds: args.read_time.as_secs_f64(),
        users: args.users,
        cache_bytes: args.cache_bytes,
        rocksdb_direct_reads: args.rocksdb_direct_reads,
    };
    let plan_json = serde_json::to_string(&plan)?;
    let root = DataDir::new(args.dir.as_deref(), "tradeshard-compare")?;
    let mut reports: Vec<SideReport> = Vec::new();
    for round in 0..args.rounds {
        let mut order = engines();
        if round % 2 == 1 {
            order.reverse();
        }
        for engine in order {
            let dir = root.path().join(format!("{engine}-{round}"));
            eprintln!("compare: round {round}, {engine} in {}", dir.display());
            let output = Command::new(std::env::current_exe()?)
                .args(["compare-side", "--engine", engine, "--plan", &plan_json, "--dir"])
                .arg(&dir)
                .stderr(Stdio::inherit())
                .output()
                .context("starting an engine's run")?;
            if !output.status.success() {
                bail!("the {engine} run failed ({})", output.status);
            }
            reports.push(serde_json::from_slice(&output.stdout).context("the engine's report")?);
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    let rows = table(&reports, &args.inflight);
    if args.json {
        #[derive(Serialize)]
        struct Output<'a> {
            plan: &'a Plan,
            rows: &'a [Row],
            runs: &'a [SideReport],
        }
        println!("{}", serde_json::to_string(&Output { plan: &plan, rows: &rows, runs: &reports })?);
    } else {
        print_table(&rows);
    }
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

fn table(reports: &[SideReport], levels: &[usize]) -> Vec<Row> {
    let of = |engine: &str, figure: &dyn Fn(&SideReport) -> f64| -> Option<f64> {
        let values: Vec<f64> = reports.iter().filter(|r| r.engine == engine).map(figure).collect();
        (!values.is_empty()).then(|| median(values))
    };
    let mut rows = Vec::new();
    let mut row = |name: String, figure: &dyn Fn(&SideReport) -> f64, higher_is_better: bool, goal: Option<f64>| {
        let ours = of("tradeshard", figure).unwrap_or(0.0);
        let theirs = of("rocksdb", figure);
        let ratio = theirs.map(|t| if higher_is_better { ours / t.max(1e-9) } else { t / ours.max(1e-9) });
        rows.push(Row {
            figure: name,
            tradeshard: ours,
            rocksdb: theirs,
            ratio,
            goal: goal.map(|g| format!("{g}x or better")),
            met: goal.zip(ratio).map(|(g, r)| r >= g),
        });
    };
    for (i, level) in levels.iter().enumerate() {
        let goal = match level {
            1 => Some(1.0),
            1024 => Some(5.0),
            _ => None,
        };
        row(format!("ingest trades/s, {level} in flight"), &|r| r.ingest[i].1.ops_per_sec, true, goal);
        row(format!("ingest p50 us, {level} in flight"), &|r| r.ingest[i].1.latency_us.p50 as f64, false, None);
        row(format!("ingest p99 us, {level} in flight"), &|r| r.ingest[i].1.latency_us.p99 as f64, false, None);
    }
    row("point reads/s, uniform, warm".into(), &|r| r.get_uniform.ops_per_sec, true, Some(2.0));
    row("point read p99 us, uniform".into(), &|r| r.get_uniform.latency_us.p99 as f64, false, None);
    row("point reads/s, Zipf 0.99, warm".into(), &|r| r.get_zipf.ops_per_sec, true, Some(2.0));
    row("point read p99 us, Zipf 0.99".into(), &|r| r.get_zipf.latency_us.p99 as f64, false, None);
    row("latest 20 of a user/s".into(), &|r| r.list_latest_20.ops_per_sec, true, None);
    row("consumption events/s, hot".into(), &|r| r.consume_hot_events_per_sec, true, Some(3.0));
    row("consumption events/s, after reopen".into(), &|r| r.consume_reopened_events_per_sec, true, Some(3.0));
    // Only where every run could read its device's counters.
    if reports.iter().all(|r| r.written_bytes_per_trade.is_some()) {
        row("bytes written per trade".into(), &|r| r.written_bytes_per_trade.unwrap_or(0.0), false, Some(1.0));
    }
    row("bytes on disk per trade, log consumed".into(), &|r| r.disk_bytes_per_trade, false, Some(1.0));
    row("resident bytes at the end".into(), &|r| r.resident_bytes as f64, false, None);
    row("trades ingested".into(), &|r| r.trades as f64, true, None);
    rows
}

fn print_table(rows: &[Row]) {
    println!("{:<42} {:>14} {:>14} {:>8}  goal", "figure", "tradeshard", "RocksDB", "ratio");
    for row in rows {
        let theirs = row.rocksdb.map_or("not built".to_string(), |v| format!("{v:.0}"));
        let ratio = row.ratio.map_or("-".to_string(), |r| format!("{r:.2}x"));
        let goal = match (&row.goal, row.met) {
            (Some(goal), Some(true)) => format!("{goal}: met"),
            (Some(goal), Some(false)) => format!("{goal}: MISSED"),
            (Some(goal), None) => goal.clone(),
            _ => String::new(),
        };
        println!("{:<42} {:>14.0} {:>14} {:>8}  {goal}", row.figure, row.tradeshard, theirs, ratio);
    }
    if rows.iter().all(|r| r.rocksdb.is_none()) {
        println!("RocksDB is not in this build: cargo run --release -p tradeshard-tools --features rocksdb -- compare");
    }
}
