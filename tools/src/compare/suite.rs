//! The workload both engines run, phase by phase, and what is measured of each: the same
//! trades (buyers, merchants, order numbers, amounts, memos) in the same order, the same read
//! distributions, the same number of trades in flight while ingesting. Reads and lists run at
//! the concurrency that saturates each engine's API: 256 (gets) and 64 (lists) outstanding
//! requests for tradeshard's asynchronous handle, two threads per core for RocksDB's blocking
//! calls. An engine is a [`Store`]; [`run_suite`] drives
//! one through every phase in one process, so that its resident memory is its own.

use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tradeshard_engine::NewTrade;

use crate::latency::{self, LatencySummary};
use crate::workload::UserChooser;

/// One engine under test.
pub trait Store {
    /// Creates trades from `trades` with `inflight` outstanding, for `duration`: how many
    /// were acknowledged (durably), each one's latency, and their ids.
    fn ingest(&mut self, inflight: usize, duration: Duration, trades: &Arc<TradeSource>) -> anyhow::Result<Timed>;
    /// Point reads of `ids` picked by `chooser` (ranks spread over the ids), for `duration`.
    fn get(&mut self, ids: &[u64], chooser: &UserChooser, duration: Duration) -> anyhow::Result<Timed>;
    /// A user's latest 20 trades, users uniform in 1..=`users`, for `duration`.
    fn list_latest(&mut self, users: u64, duration: Duration) -> anyhow::Result<Timed>;
    /// Every settlement event in order, from the first: how many.
    fn consume_all(&mut self) -> anyhow::Result<u64>;
    /// Closes and reopens (caches cold).
    fn reopen(&mut self) -> anyhow::Result<()>;
    /// Bytes the engine itself says it wrote since it opened, where it counts them.
    fn engine_written_bytes(&mut self) -> anyhow::Result<Option<u64>>;
    /// Lets the engine settle what it keeps on disk once every event was consumed (a store
    /// of record retains its log away); nothing by default.
    fn settle_disk(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Operations done in a timed phase, their latencies, and (for ingest) the ids made.
pub struct Timed {
    pub ops: u64,
    pub seconds: f64,
    pub latency: Histogram<u64>,
    pub ids: Vec<u64>,
}

/// The trades of the run: trade `n` is the same on both engines.
pub struct TradeSource {
    pub users: u64,
    pub next: std::sync::atomic::AtomicU64,
}

impl TradeSource {
    pub fn new(users: u64) -> TradeSource {
        TradeSource { users, next: std::sync::atomic::AtomicU64::new(0) }
    }

    /// The next trade of the run.
    pub fn take(&self) -> NewTrade {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::workload::numbered_trade("C", n, 1 + n.wrapping_mul(0x9E37_79B9) % self.users)
    }
}

/// What the suite sets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub inflight_levels: Vec<usize>,
    pub ingest_seconds: f64,
    pub read_seconds: f64,
    pub users: u64,
    pub cache_bytes: usize,
    /// RocksDB reads with O_DIRECT, so that its block cache is its only cache, as
    /// tradeshard's cache is (its log is read with direct I/O).
    pub rocksdb_direct_reads: bool,
}

/// A timed phase's rate and latency.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rate {
    pub ops: u64,
    pub ops_per_sec: f64,
    pub latency_us: LatencySummary,
}

impl Rate {
    fn of(timed: &Timed) -> Rate {
        Rate {
            ops: timed.ops,
            ops_per_sec: timed.ops as f64 / timed.seconds.max(1e-9),
            latency_us: latency::summarize(&timed.latency),
        }
    }
}

/// Everything measured of one engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SideReport {
    pub engine: String,
    /// Per in-flight level: trades per second and per-trade latency.
    pub ingest: Vec<(usize, Rate)>,
    pub get_uniform: Rate,
    pub get_zipf: Rate,
    pub list_latest_20: Rate,
    pub consume_hot_events_per_sec: f64,
    pub consume_reopened_events_per_sec: f64,
    pub events: u64,
    pub trades: u64,
    /// Bytes written to the data directory's device over the whole suite (`None` where the
    /// device counters are not readable).
    pub written_bytes: Option<u64>,
    pub written_bytes_per_trade: Option<f64>,
    pub engine_written_bytes: Option<u64>,
    /// Bytes the data directory takes on disk at the end (allocated blocks, after
    /// `settle_disk`), and per trade.
    pub disk_bytes: u64,
    pub disk_bytes_per_trade: f64,
    pub resident_bytes: u64,
}

/// Bytes written to the block device holding `dir` so far (sectors written, from sysfs), or
/// `None` where that is not readable. Counted at the device, not per process: it sees what
/// reaches the disk, page-cache writeback and compactions included, and it sees other
/// processes' writes too, so the comparison runs on an otherwise quiet machine.
pub fn device_written_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff), (dev & 0xff) | ((dev >> 12) & !0xff));
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    let sectors: u64 = stat.split_whitespace().nth(6)?.parse().ok()?;
    Some(sectors * 512)
}

/// Resident set size of this process.
pub fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

/// Asks the kernel to drop clean page-cache pages, so that "after reopen" reads the disk for
/// engines that read through the page cache (needs root; skipped quietly otherwise).
pub fn drop_page_cache() {
    let _ = std::process::Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Runs every phase on `store`, in order: ingest at each in-flight level, uniform and Zipf
/// point reads (each after an untimed warm-up of the same reads), listing, consumption hot,
/// then after a reopen.
pub fn run_suite(
    engine: &str,
    store: &mut dyn Store,
    plan: &Plan,
    dir: &std::path::Path,
) -> anyhow::Result<SideReport> {
    let written_before = device_written_bytes(dir);
    let trades = Arc::new(TradeSource::new(plan.users));
    let ingest_time = Duration::from_secs_f64(plan.ingest_seconds);
    let read_time = Duration::from_secs_f64(plan.read_seconds);
    let mut ids = Vec::new();
    let mut ingest = Vec::new();
    for &inflight in &plan.inflight_levels {
        let timed = store.ingest(inflight, ingest_time, &trades)?;
        eprintln!("compare: {engine} ingest at {inflight} in flight: {:.0} trades/s", timed.ops as f64 / timed.seconds);
        ingest.push((inflight, Rate::of(&timed)));
        ids.extend_from_slice(&timed.ids);
    }
    anyhow::ensure!(!ids.is_empty(), "no trade was ingested");
    let mut reads = Vec::new();
    for skew in [0.0, 0.99] {
        let chooser = UserChooser::new(ids.len() as u64, skew).map_err(anyhow::Error::msg)?;
        store.get(&ids, &chooser, read_time.min(Duration::from_secs(1)))?;
        let timed = store.get(&ids, &chooser, read_time)?;
        eprintln!("compare: {engine} gets, zipf {skew}: {:.0}/s", timed.ops as f64 / timed.seconds);
        reads.push(Rate::of(&timed));
    }
    let list = Rate::of(&store.list_latest(plan.users, read_time)?);
    let started = std::time::Instant::now();
    let events = store.consume_all()?;
    let hot = events as f64 / started.elapsed().as_secs_f64();
    // Engines may count their writes since they opened: ask before reopening.
    let engine_written_bytes = store.engine_written_bytes()?;
    store.reopen()?;
    let started = std::time::Instant::now();
    let events_reopened = store.consume_all()?;
    let reopened = events_reopened as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(events_reopened == events, "{events} events hot, {events_reopened} after reopening");
    eprintln!("compare: {engine} consumption: {hot:.0} events/s hot, {reopened:.0} after reopening");
    let written = written_before.zip(device_written_bytes(dir)).map(|(before, after)| after - before);
    store.settle_disk()?;
    let disk_bytes = crate::data_dir::disk_bytes(dir);
    let get_zipf = reads.pop().expect("two read phases");
    let get_uniform = reads.pop().expect("two read phases");
    Ok(SideReport {
        engine: engine.to_string(),
        ingest,
        get_uniform,
        get_zipf,
        list_latest_20: list,
        consume_hot_events_per_sec: hot,
        consume_reopened_events_per_sec: reopened,
        events,
        trades: ids.len() as u64,
        written_bytes: written,
        written_bytes_per_trade: written.map(|w| w as f64 / ids.len() as f64),
        engine_written_bytes,
        disk_bytes,
        disk_bytes_per_trade: disk_bytes as f64 / ids.len() as f64,
        resident_bytes: resident_bytes(),
    })
}
