//! `tradeshard settle` and `load --settle`: a settlement consumer that sums settled amounts per
//! merchant and currency, commits its offsets as it goes, and reconciles its totals with a
//! scan of the trade store.
//!
//! `load --settle` may run on the directory of an earlier run: its consumer starts at the log's
//! end before the load begins, and what it reconciles is the store's totals less those it had
//! then, so trades settled by earlier runs count on neither side.
//!
//! Delivery is at least once, so the consumer is idempotent on (partition, offset): events of
//! a partition come in offset order, and one at or below the highest offset already applied
//! in that partition is a redelivery and is not counted again.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::Serialize;
use tradeshard_engine::{
    Consumer, ConsumerConfig, Currency, Engine, EngineHandle, Event, Options, RecordKind, StartPosition,
};

use crate::latency::{self, LatencySummary};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The data directory to settle (an engine must not have it open).
    #[arg(long)]
    dir: PathBuf,
    /// Consumer group; a new group reads from the earliest event.
    #[arg(long, default_value = "settlement")]
    group: String,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Settled amounts per (merchant, currency).
pub type Totals = BTreeMap<(u64, Currency), u128>;

/// Totals of settled amounts, idempotent on (partition, offset).
#[derive(Default)]
pub struct Settlement {
    pub totals: Totals,
    applied_up_to: HashMap<u32, u64>,
    pub events: u64,
    pub redelivered: u64,
}

impl Settlement {
    /// Counts an event once, however often it is delivered.
    pub fn apply(&mut self, event: &Event) {
        if self.applied_up_to.get(&event.partition).is_some_and(|last| event.offset <= *last) {
            self.redelivered += 1;
            return;
        }
        self.applied_up_to.insert(event.partition, event.offset);
        self.events += 1;
        if event.record.kind == RecordKind::Settled {
            let settled = event.record.settled_amount();
            *self.totals.entry((event.record.merchant_id, event.record.currency)).or_insert(0) += u128::from(settled);
        }
    }

    /// The (merchant, currency) keys where the totals differ from the store's gain since
    /// `base` (its totals when this consumer started).
    pub fn differences(&self, store: &Totals, base: &Totals) -> Vec<String> {
        let mut keys: Vec<_> = self.totals.keys().chain(store.keys()).collect();
        keys.sort();
        keys.dedup();
        let of = |totals: &Totals, key| totals.get(key).copied().unwrap_or(0);
        keys.into_iter()
            .filter_map(|key| {
                let (ours, theirs) = (of(&self.totals, key), of(store, key).wrapping_sub(of(base, key)));
                (ours != theirs).then(|| format!("merchant {} {}: consumer {ours}, store {theirs}", key.0, key.1))
            })
            .collect()
    }
}

/// What a settlement run reports.
#[derive(Serialize)]
pub struct SettleReport {
    pub events: u64,
    pub redelivered: u64,
    pub events_per_sec: f64,
    pub merchants_settled: usize,
    /// From the event's write to its delivery (millisecond clock), microseconds.
    pub end_to_end_us: LatencySummary,
    pub differences: Vec<String>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Where a settlement consumer starts, and the store's totals its own are checked against.
pub enum Start {
    /// The group's committed offsets, reconciled with the store's whole totals: the group has
    /// read every settlement (`tradeshard settle`).
    Committed,
    /// The log's end, reconciled with what the store settled since (`load --settle`).
    Latest,
}

/// Consumes until `stop` is set and the group has caught up, committing after every poll,
/// then reconciles with the store.
pub fn consume(handle: &EngineHandle, group: &str, start: Start, stop: &AtomicBool) -> anyhow::Result<SettleReport> {
    let (consumer, base) = start_consumer(handle, group, start)?;
    settle(handle, consumer, base, stop)
}

/// The consumer and the store's totals it starts from.
fn start_consumer(handle: &EngineHandle, group: &str, start: Start) -> anyhow::Result<(Consumer, Totals)> {
    let (start, base) = match start {
        Start::Committed => (StartPosition::Committed, Totals::new()),
        Start::Latest => (StartPosition::Latest, handle.settled_totals_blocking()?),
    };
    let mut consumer = handle.consumer(ConsumerConfig { start, ..ConsumerConfig::new(group) })?;
    // A consumer takes its partitions, and so the log's end, at its first call: take them now,
    // before the load starts, or its first settlements could fall before that end and be
    // missed by the consumer while the store counts them.
    consumer.lag_blocking()?;
    Ok((consumer, base))
}

fn settle(
    handle: &EngineHandle,
    mut consumer: Consumer,
    base: Totals,
    stop: &AtomicBool,
) -> anyhow::Result<SettleReport> {
    let mut settlement = Settlement::default();
    let mut end_to_end = latency::new_histogram();
    // The rate is over the span the consumer had events to read (from the start of the first
    // poll that returned any to the end of the last), not over the time the run spent before
    // or after its load.
    let mut first_events: Option<Instant> = None;
    let mut last_events = Instant::now();
    loop {
        let polled_at = Instant::now();
        let events = consumer.poll_blocking(4096, Duration::from_millis(50))?;
        if !events.is_empty() {
            first_events.get_or_insert(polled_at);
            last_events = Instant::now();
        }
        let now = now_ms();
        for event in &events {
            settlement.apply(event);
            latency::record(&mut end_to_end, now.saturating_sub(event.record.at_ms) * 1000);
        }
        if !events.is_empty() {
            consumer.commit_blocking()?;
        } else if stop.load(Ordering::Acquire) && consumer.lag_blocking()?.iter().all(|(_, lag)| *lag == 0) {
            break;
        }
    }
    let elapsed = first_events.map_or(0.0, |first| last_events.duration_since(first).as_secs_f64());
    let store = handle.settled_totals_blocking()?;
    Ok(SettleReport {
        events: settlement.events,
        redelivered: settlement.redelivered,
        events_per_sec: if elapsed > 0.0 { settlement.events as f64 / elapsed } else { 0.0 },
        merchants_settled: settlement.totals.len(),
        end_to_end_us: latency::summarize(&end_to_end),
        differences: settlement.differences(&store, &base),
    })
}

/// Runs a consumer starting at the log's end on its own thread until `stop` is set. Returns
/// once that consumer exists and the store's totals are taken, so that every settlement made
/// after this returns is the consumer's to see.
pub fn spawn(
    handle: EngineHandle,
    group: String,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<SettleReport>>> {
    let (started, ready) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let (consumer, base) = match start_consumer(&handle, &group, Start::Latest) {
            Ok(begun) => begun,
            Err(error) => {
                let message = format!("{error:#}");
                let _ = started.send(Err(error));
                bail!("the settlement consumer did not start: {message}");
            }
        };
        let _ = started.send(Ok(()));
        settle(&handle, consumer, base, &stop)
    });
    ready.recv().context("the settlement thread ended before it started")??;
    Ok(thread)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.dir.join("MANIFEST").exists() {
        bail!("{} is not a tradeshard data directory", args.dir.display());
    }
    let engine = Engine::open(Options::new(&args.dir)).with_context(|| format!("opening {}", args.dir.display()))?;
    let report = consume(&engine.handle(), &args.group, Start::Committed, &AtomicBool::new(true))?;
    engine.close()?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "settled {} events ({} redelivered) at {:.0} events/s over {} merchant/currency pairs; {} differences",
            report.events,
            report.redelivered,
            report.events_per_sec,
            report.merchants_settled,
            report.differences.len()
        );
        for difference in &report.differences {
            println!("  {difference}");
        }
    }
    if !report.differences.is_empty() {
        bail!("the settlement totals differ from the store");
    }
    Ok(())
}
