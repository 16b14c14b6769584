//! What the load tool reports: per operation, per interval, and the fit of resident memory
//! to the trades held, as a table or as JSON.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tradeshard_engine::{EngineHandle, EngineStats, ShardStats};

use super::client::OPS;
use crate::latency::LatencySummary;

/// One `--report-every` interval.
#[derive(Serialize, Clone, Debug)]
pub(super) struct IntervalReport {
    /// Seconds since the timed phase started, at the interval's end.
    pub(super) at_sec: f64,
    pub(super) ops_per_sec: f64,
    pub(super) p99_us: u64,
    pub(super) resident_bytes: u64,
    pub(super) engine_trades: u64,
    /// Of them, in memory (the rest are in the shards' tables on disk).
    pub(super) trades_in_memory: u64,
    /// Resident bytes over trades held: flat when memory grows only with the data.
    pub(super) resident_bytes_per_trade: f64,
    /// Bytes the data directory takes on disk.
    pub(super) disk_bytes: u64,
    /// Money's state held in memory: account request numbers applied since the last
    /// checkpoint, branches of flexible transactions, and activities initiated (flat under
    /// transfers when only the checkpoint interval sets them).
    pub(super) account_requests: u64,
    pub(super) branches: u64,
    pub(super) activities: u64,
    /// Bytes the runs of keys hold in memory (Bloom filters and fences: flat in the keys held
    /// once runs go past a key window, `--key-window`), and the runs past it.
    pub(super) key_run_memory_bytes: u64,
    pub(super) key_runs_past_window: u64,
    /// Bytes the shards keep to sort their next checkpoints' entries in: part of resident
    /// memory once a checkpoint ran, sized by the last one's entries.
    pub(super) sort_room_bytes: u64,
}

#[derive(Serialize)]
pub(super) struct OpReport {
    pub(super) count: u64,
    pub(super) ops_per_sec: f64,
    pub(super) latency_us: LatencySummary,
}

/// What the logs and their committers did over a timed phase, in every workload's report.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct LogFigures {
    pub(super) fsyncs_per_sec: f64,
    pub(super) records_per_fsync: f64,
    /// Bytes the logs stored per byte of records they wrote: pieces compressed where LZ4 paid,
    /// their headers included (0 when nothing was written).
    pub(super) log_stored_per_raw_byte: f64,
    /// The committers' turns (`ShardStats::apply_turns`), each applying what one group commit
    /// made durable: the power of two of microseconds that half, 99% and all of them stayed
    /// under (0 when there was none).
    pub(super) committer_turn_p50_under_us: u64,
    pub(super) committer_turn_p99_under_us: u64,
    pub(super) committer_turn_max_under_us: u64,
}

impl LogFigures {
    /// The figures between two snapshots of the engine's counters, `elapsed` seconds apart.
    pub(super) fn between(before: &EngineStats, after: &EngineStats, elapsed: f64) -> LogFigures {
        let fsyncs = after.fsyncs - before.fsyncs;
        let records = after.records - before.records;
        let raw = after.payload_raw_bytes - before.payload_raw_bytes;
        let stored = after.payload_stored_bytes - before.payload_stored_bytes;
        let turns = |stats: &EngineStats| {
            let mut summed = [0u64; tradeshard_engine::HISTOGRAM_BUCKETS];
            for shard in &stats.shards {
                summed.iter_mut().zip(shard.apply_turns.micros).for_each(|(sum, count)| *sum += count);
            }
            summed
        };
        let (turns_before, mut turns) = (turns(before), turns(after));
        turns.iter_mut().zip(turns_before).for_each(|(count, earlier)| *count -= earlier);
        LogFigures {
            fsyncs_per_sec: fsyncs as f64 / elapsed,
            records_per_fsync: if fsyncs == 0 { 0.0 } else { records as f64 / fsyncs as f64 },
            log_stored_per_raw_byte: if raw == 0 { 0.0 } else { stored as f64 / raw as f64 },
            committer_turn_p50_under_us: under(&turns, 0.5),
            committer_turn_p99_under_us: under(&turns, 0.99),
            committer_turn_max_under_us: under(&turns, 1.0),
        }
    }
}

/// The bound, in microseconds, of the bucket of `turns` (bucket `i`: under 2^i) by which a
/// fraction `q` of them is counted; 0 for no turns.
fn under(turns: &[u64], q: f64) -> u64 {
    tradeshard_engine::quantile_bucket(turns, q).map_or(0, |bucket| 1 << bucket)
}

#[derive(Serialize)]
pub(super) struct Report {
    pub(super) workload: String,
    pub(super) elapsed_sec: f64,
    pub(super) trades_per_sec: f64,
    pub(super) ops_per_sec: f64,
    /// `get`s per second in the timed phase.
    pub(super) reads_per_sec: f64,
    /// Cache hits over cache lookups in the timed phase.
    pub(super) hit_ratio: f64,
    pub(super) cache_bytes: usize,
    #[serde(flatten)]
    pub(super) log: LogFigures,
    pub(super) ops: HashMap<&'static str, OpReport>,
    pub(super) verified: u64,
    pub(super) mismatches: u64,
    pub(super) errors: u64,
    /// Trades in the engine at the end of the timed phase, and of them those in memory.
    pub(super) engine_trades: u64,
    pub(super) trades_in_memory: u64,
    /// Order keys the shards hold in runs on disk, the bytes those runs' Bloom filters and
    /// fences take in memory, and the requests that read the runs (retries of old order
    /// numbers, and the filters' false positives).
    pub(super) key_run_entries: u64,
    pub(super) key_run_memory_bytes: u64,
    pub(super) key_run_reads: u64,
    /// Blocks of the runs found in memory and read from the device during the run.
    pub(super) run_block_hits: u64,
    pub(super) run_block_device_reads: u64,
    /// Frames the logs' readers took from their recent frames in memory, not the device.
    pub(super) log_memory_reads: u64,
    /// Device reads of one trade or part during the timed phase, by where they went.
    pub(super) point_device_reads: PointReads,
    /// Resident memory of the process (engine and client) at the end of the timed phase.
    pub(super) resident_bytes: u64,
    /// With `--settle`: events the settlement consumer consumed per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) events_per_sec: Option<f64>,
    /// With `--settle`: p99 from an event's write to its delivery, microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) end_to_end_p99_us: Option<u64>,
    /// With `--settle`: the settlement consumer's whole report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) settlement: Option<crate::settle::SettleReport>,
    pub(super) inflight: usize,
    /// The client tasks ran on the engine's executors (`--on-executors`): their CPU counts as
    /// the engine's.
    pub(super) on_executors: bool,
    /// Requests the engine ran on the executor that made them, with no hand-off, during the
    /// timed phase (`EngineStats::requests_in_place`).
    pub(super) requests_in_place: u64,
    pub(super) users: u64,
    pub(super) zipf: f64,
    pub(super) durability: String,
    pub(super) sync_method: String,
    pub(super) executors: usize,
    pub(super) shards: u32,
    /// Trades created beyond `TRACKED_TRADES_MAX`, not read back at the end.
    pub(super) untracked_trades: u64,
    /// With `--report-every`: one entry per interval.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) intervals: Vec<IntervalReport>,
    /// With `--report-every`: (max - min) / min of resident memory over the intervals after
    /// the first fifth (the warm-up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) resident_growth_after_warmup: Option<f64>,
    /// With `--report-every`, when trades were added after the warm-up: resident memory fitted
    /// as a + b * trades held (least squares over the intervals after the warm-up); `b` is
    /// the resident bytes each added trade costs, and the fit's largest miss, as a share of
    /// resident memory, says whether anything but the data grew.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) resident_fit: Option<ResidentFit>,
    /// With `--retry-ratio`: the retries and what they answered; always: the order numbers
    /// looked up in the read-back.
    #[serde(flatten)]
    pub(super) retries: super::retry::RetryReport,
    /// How long `Engine::open` took, and the log records it replayed after the checkpoints.
    pub(super) open_ms: u64,
    pub(super) replayed_records: u64,
    /// Bytes the data directory takes on disk after the engine closed.
    pub(super) disk_bytes: u64,
    #[serde(flatten)]
    pub(super) checkpoint_work: CheckpointWork,
    #[serde(flatten)]
    pub(super) cpu: super::cpu::CpuPerOp,
}

/// Resident memory against trades held, after the warm-up.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub(super) struct ResidentFit {
    pub(super) bytes_per_added_trade: f64,
    pub(super) largest_miss: f64,
}

/// The interval of `length` that ends now: the operations `interval` recorded in it (then
/// reset), and the engine's and the process's state at its end; `start` is the timed phase's.
pub(super) async fn interval_report(
    start: Instant,
    interval: &RefCell<Histogram<u64>>,
    length: Duration,
    handle: &EngineHandle,
    dir: &Path,
) -> anyhow::Result<IntervalReport> {
    let (ops, p99_us) = {
        let mut interval = interval.borrow_mut();
        let measured = (interval.len(), interval.value_at_quantile(0.99));
        interval.reset();
        measured
    };
    let stats = handle.stats().await?;
    let sum = |count: fn(&ShardStats) -> u64| stats.shards.iter().map(count).sum::<u64>();
    let resident_bytes = resident_bytes();
    Ok(IntervalReport {
        at_sec: start.elapsed().as_secs_f64(),
        ops_per_sec: ops as f64 / length.as_secs_f64(),
        p99_us,
        resident_bytes,
        engine_trades: stats.trades,
        trades_in_memory: sum(|shard| shard.trades_in_memory),
        resident_bytes_per_trade: resident_bytes as f64 / stats.trades.max(1) as f64,
        disk_bytes: crate::data_dir::disk_bytes(dir),
        account_requests: sum(|shard| shard.account_requests),
        branches: sum(|shard| shard.branches),
        activities: sum(|shard| shard.activities),
        key_run_memory_bytes: sum(|shard| shard.checkpoints.key_run_memory_bytes),
        key_runs_past_window: sum(|shard| shard.checkpoints.key_runs_past_window_now),
        sort_room_bytes: sum(|shard| shard.checkpoints.sort_room_bytes),
    })
}

/// (max - min) / min of resident bytes over the intervals after the first fifth, and the fit
/// of resident bytes to trades held over them; `None` with fewer than five intervals (and no
/// fit when the trades held did not change).
pub(super) fn growth_after_warmup(intervals: &[IntervalReport]) -> (Option<f64>, Option<ResidentFit>) {
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

/// Resident set size of this process, from `/proc/self/statm` (0 where unavailable).
pub(super) fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

pub(super) fn print_table(report: &Report) {
    println!(
        "workload {} for {:.2} s: {:.0} trades/s, {:.0} ops/s, {:.0} fsyncs/s, {:.1} records per fsync, \
         cache hit ratio {:.3}",
        report.workload,
        report.elapsed_sec,
        report.trades_per_sec,
        report.ops_per_sec,
        report.log.fsyncs_per_sec,
        report.log.records_per_fsync,
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
        "{} trades in the engine ({} in memory), {:.1} MiB resident, {:.1} MiB on disk; verified {} acknowledged trades: {} mismatches",
        report.engine_trades,
        report.trades_in_memory,
        report.resident_bytes as f64 / (1 << 20) as f64,
        report.disk_bytes as f64 / (1 << 20) as f64,
        report.verified,
        report.mismatches
    );
    println!("opened in {} ms, replaying {} log records", report.open_ms, report.replayed_records);
    let w = &report.checkpoint_work;
    println!(
        "checkpoints: {} written, their turns {:.0} ms ({:.0} ns per run entry, {} entries), merges' {:.0} ms",
        w.checkpoints_written,
        w.checkpoint_busy_ms,
        w.checkpoint_busy_ns_per_run_entry,
        w.run_entries_written,
        w.merge_busy_ms
    );
    let cpu = &report.cpu;
    println!(
        "CPU per operation: engine {:.2} µs, load tool {:.2} µs, other threads {:.2} µs",
        cpu.engine_cpu_us_per_op, cpu.client_cpu_us_per_op, cpu.other_cpu_us_per_op
    );
    let r = &report.retries;
    println!(
        "retries: {} sent, {} answered as repeats, {} conflicts, {} mismatches; {} order numbers looked up, {} wrong",
        r.retries_sent,
        r.retries_answered_as_repeat,
        r.retry_conflicts,
        r.retry_mismatches,
        r.orders_checked,
        r.order_mismatches
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

/// The device reads of single trades during the timed phase, by where each went: a created
/// record in the log (a trade not in a checkpoint yet, missing the cache), a record of the
/// table (a trade that left memory, or a created part held inline), a part in the store of
/// created parts, and reads of the runs of keys.
#[derive(Debug, Default, Serialize)]
pub(super) struct PointReads {
    pub(super) log: u64,
    pub(super) table: u64,
    pub(super) parts: u64,
    pub(super) key_runs: u64,
    /// Not single trades, for comparison: pages of the table read whole (checkpoints keeping
    /// inline parts), and frames the logs' readers (consumers) decoded from the device.
    pub(super) table_pages: u64,
    pub(super) log_frames: u64,
}

/// What the shards' checkpoints and merges of runs took of their executors during the timed
/// phase (their turns alone, not their waits for the device).
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct CheckpointWork {
    pub(super) checkpoints_written: u64,
    pub(super) checkpoint_busy_ms: f64,
    pub(super) merge_busy_ms: f64,
    /// Entries the checkpoints wrote to new runs, and the checkpoints' time per entry (0 with
    /// none written).
    pub(super) run_entries_written: u64,
    pub(super) checkpoint_busy_ns_per_run_entry: f64,
}

impl CheckpointWork {
    pub(super) fn between(after: &tradeshard_engine::EngineStats, before: &tradeshard_engine::EngineStats) -> Self {
        let busy_us = shard_sum(after, before, |s| s.checkpoints.busy_us);
        let entries = shard_sum(after, before, |s| s.checkpoints.key_run_entries_written);
        CheckpointWork {
            checkpoints_written: shard_sum(after, before, |s| s.checkpoints.written),
            checkpoint_busy_ms: busy_us as f64 / 1e3,
            merge_busy_ms: shard_sum(after, before, |s| s.checkpoints.merge_busy_us) as f64 / 1e3,
            run_entries_written: entries,
            checkpoint_busy_ns_per_run_entry: if entries == 0 { 0.0 } else { busy_us as f64 * 1e3 / entries as f64 },
        }
    }
}

/// The growth of one counter of every shard between two snapshots of the engine's stats.
pub(super) fn shard_sum(
    after: &tradeshard_engine::EngineStats,
    before: &tradeshard_engine::EngineStats,
    counter: impl Fn(&ShardStats) -> u64,
) -> u64 {
    let total = |stats: &tradeshard_engine::EngineStats| stats.shards.iter().map(&counter).sum::<u64>();
    total(after).saturating_sub(total(before))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_figures_are_the_differences_over_the_phase() {
        let before = EngineStats {
            fsyncs: 10,
            records: 100,
            payload_raw_bytes: 1_000,
            payload_stored_bytes: 900,
            ..Default::default()
        };
        let after = EngineStats {
            fsyncs: 30,
            records: 500,
            payload_raw_bytes: 5_000,
            payload_stored_bytes: 2_900,
            ..Default::default()
        };
        let figures = LogFigures::between(&before, &after, 2.0);
        assert_eq!(
            figures,
            LogFigures {
                fsyncs_per_sec: 10.0,
                records_per_fsync: 20.0,
                log_stored_per_raw_byte: 0.5,
                ..Default::default()
            }
        );
        assert_eq!(LogFigures::between(&after, &after, 1.0), LogFigures::default(), "nothing written: zeros, not NaN");
    }

    #[test]
    fn committer_turns_are_counted_over_the_phase_only() {
        let shard = |counts: &[(usize, u64)]| {
            let mut stats = tradeshard_engine::ShardStats::default();
            counts.iter().for_each(|&(bucket, count)| stats.apply_turns.micros[bucket] = count);
            stats
        };
        // Before the phase: 1,000 turns over 2^20 µs, which the phase's figures must not see.
        let before = EngineStats { shards: vec![shard(&[(20, 1_000)]), shard(&[])], ..Default::default() };
        let after = EngineStats {
            shards: vec![shard(&[(20, 1_000), (3, 60), (10, 1)]), shard(&[(5, 39)])],
            ..Default::default()
        };
        let figures = LogFigures::between(&before, &after, 1.0);
        assert_eq!(figures.committer_turn_p50_under_us, 8, "60 of 100 under 2^3");
        assert_eq!(figures.committer_turn_p99_under_us, 32, "99 of 100 under 2^5");
        assert_eq!(figures.committer_turn_max_under_us, 1024);
    }

    fn interval(trades: u64, resident: u64) -> IntervalReport {
        IntervalReport {
            at_sec: 0.0,
            ops_per_sec: 0.0,
            p99_us: 0,
            resident_bytes: resident,
            engine_trades: trades,
            trades_in_memory: trades,
            resident_bytes_per_trade: 0.0,
            disk_bytes: 0,
            account_requests: 0,
            branches: 0,
            activities: 0,
            key_run_memory_bytes: 0,
            key_runs_past_window: 0,
            sort_room_bytes: 0,
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
