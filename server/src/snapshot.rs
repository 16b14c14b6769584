//! One reading of the engine and the server, taken at a scrape or a `stats` command: the
//! numbers both monitoring faces show, named once here so that the two never disagree.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use crate::Shared;

/// Whether a number only grows (a counter) or goes up and down (a gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    /// A quantile's bucket bound, shown by `stats` only (metrics carry the histogram).
    Quantile,
}

/// Whose number it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    Total,
    Shard(u32),
    /// A consumer group in a partition.
    Group(String, u32),
}

/// A histogram of the engine's, over every shard: per bucket its upper bound and count (not
/// cumulative), the sum and the count.
#[derive(Debug, Clone)]
pub(crate) struct HistogramSample {
    pub name: &'static str,
    pub help: &'static str,
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
    /// The names `stats` shows its p50 and p99 under.
    pub quantile_names: [&'static str; 2],
}

impl HistogramSample {
    /// The upper bound of the bucket holding quantile `q` (0 for no values).
    pub(crate) fn quantile(&self, q: f64) -> f64 {
        let counts: Vec<u64> = self.buckets.iter().map(|(_, count)| *count).collect();
        tradeshard_engine::quantile_bucket(&counts, q).map_or(0.0, |bucket| self.buckets[bucket].0)
    }
}

/// One reading: numbers and histograms.
pub(crate) struct Snapshot {
    pub samples: Vec<Sample>,
    pub histograms: Vec<HistogramSample>,
}

#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// Snake case, without a unit suffix or `_total` (each face adds its own conventions).
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub scope: Scope,
    pub value: f64,
}

/// Reads the engine's counters and the consumer groups' positions.
pub(crate) async fn take(shared: &Shared) -> Result<Snapshot, tradeshard_engine::Error> {
    let stats = shared.handle.stats().await?;
    let groups = shared.handle.groups().await?;
    let mut samples = Vec::new();
    let mut push = |name, help, kind, scope, value: f64| samples.push(Sample { name, help, kind, scope, value });
    let uptime = shared.started.elapsed().as_secs_f64();
    push("uptime_seconds", "Seconds since the server started.", Kind::Gauge, Scope::Total, uptime);
    let open = shared.open_connections.load(Ordering::Relaxed) as f64;
    push("connections", "Connections open now.", Kind::Gauge, Scope::Total, open);
    let kicks = stats.executor_kicks as f64;
    push(
        "executor_kicks",
        "Kicks (a wake from outside and a signal) sent to executors whose beat stood still.",
        Kind::Counter,
        Scope::Total,
        kicks,
    );
    push(
        "requests_in_place",
        "Requests made on the executor that owns them and run there, with no hand-off between threads.",
        Kind::Counter,
        Scope::Total,
        stats.requests_in_place as f64,
    );
    let mut totals: BTreeMap<&'static str, (Kind, &'static str, f64)> = BTreeMap::new();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    for shard in &stats.shards {
        let wal = &shard.wal;
        let checkpoints = &shard.checkpoints;
        let fsyncs = (wal.fsyncs + wal.durable_writes) as f64;
        let hit_ratio = match shard.cache.hits + shard.cache.misses {
            0 => 0.0,
            asked => shard.cache.hits as f64 / asked as f64,
        };
        let per_shard = [
            ("trades", "Trades in the shard.", Kind::Gauge, shard.trades as f64),
            ("trades_in_memory", "Trades held in memory.", Kind::Gauge, shard.trades_in_memory as f64),
            ("records", "Log records acknowledged.", Kind::Counter, wal.records as f64),
            ("fsyncs", "Points where the log made writes durable.", Kind::Counter, fsyncs),
            ("group_commits", "Batches the log flushed (group commits).", Kind::Counter, wal.flushes as f64),
            (
                "log_payload_raw_bytes",
                "Record bytes the log wrote, length prefixes included, before compression.",
                Kind::Counter,
                wal.payload_raw_bytes as f64,
            ),
            (
                "log_payload_stored_bytes",
                "The same payloads as stored: pieces compressed where LZ4 paid, their headers included.",
                Kind::Counter,
                wal.payload_stored_bytes as f64,
            ),
            ("log_pieces", "Pieces the log wrote.", Kind::Counter, wal.pieces as f64),
            ("log_pieces_compressed", "Pieces the log stored compressed.", Kind::Counter, wal.pieces_compressed as f64),
            ("cache_hits", "Reads of trades answered by the cache.", Kind::Counter, shard.cache.hits as f64),
            ("cache_misses", "Reads of trades the cache did not hold.", Kind::Counter, shard.cache.misses as f64),
            ("cache_hit_ratio", "Cache hits over cache reads since the open.", Kind::Gauge, hit_ratio),
            ("disk_bytes", "Bytes of the log's segments on disk.", Kind::Gauge, shard.segment_bytes as f64),
            ("log_end_offset", "The offset the next record of the log will get.", Kind::Gauge, shard.log_end as f64),
            (
                "half_messages",
                "Half messages neither committed nor rolled back.",
                Kind::Gauge,
                shard.half_messages as f64,
            ),
            (
                "scheduled_messages",
                "Messages waiting for a delay or a retry.",
                Kind::Gauge,
                shard.scheduled_messages as f64,
            ),
            ("dead_letters", "Messages set aside after their last attempt.", Kind::Gauge, shard.dead_letters as f64),
            ("activities_open", "Activities not completed.", Kind::Gauge, shard.activities_in_doubt as f64),
            ("writes_in_flight", "Writes waiting for their group commit.", Kind::Gauge, shard.writes_in_flight as f64),
            ("checkpoints", "Checkpoints written since the open.", Kind::Counter, checkpoints.written as f64),
            (
                "checkpoints_failed",
                "Checkpoints, retention or merges of runs that failed since the open (the log still holds their work).",
                Kind::Counter,
                checkpoints.failed as f64,
            ),
            (
                "checkpoint_busy_seconds",
                "Executor time the checkpoints' own turns took since the open (their waits for the device not counted).",
                Kind::Counter,
                checkpoints.busy_us as f64 / 1e6,
            ),
            (
                "run_merge_busy_seconds",
                "Executor time the merges of runs took since the open.",
                Kind::Counter,
                checkpoints.merge_busy_us as f64 / 1e6,
            ),
        ];
        for (name, help, kind, value) in per_shard {
            push(name, help, kind, Scope::Shard(shard.shard), value);
            if name != "cache_hit_ratio" && name != "log_end_offset" {
                totals.entry(name).or_insert((kind, help, 0.0)).2 += value;
            }
        }
        if checkpoints.taken_ms > 0 {
            // Per shard only: a sum of ages means nothing. A shard with no checkpoint yet has none.
            let age = now_ms.saturating_sub(checkpoints.taken_ms) as f64 / 1e3;
            let help = "Seconds since the shard's latest checkpoint was taken.";
            push("checkpoint_age_seconds", help, Kind::Gauge, Scope::Shard(shard.shard), age);
        }
        let per_fsync = if fsyncs > 0.0 { wal.records as f64 / fsyncs } else { 0.0 };
        push("records_per_fsync", "Records made durable per fsync.", Kind::Gauge, Scope::Shard(shard.shard), per_fsync);
    }
    for (name, (kind, help, value)) in totals {
        push(name, help, kind, Scope::Total, value);
    }
    let all_fsyncs = stats.fsyncs.max(1) as f64;
    push(
        "records_per_fsync",
        "Records made durable per fsync.",
        Kind::Gauge,
        Scope::Total,
        stats.records as f64 / all_fsyncs,
    );
    let asked = (stats.cache.hits + stats.cache.misses).max(1) as f64;
    push(
        "cache_hit_ratio",
        "Cache hits over cache reads since the open.",
        Kind::Gauge,
        Scope::Total,
        stats.cache.hits as f64 / asked,
    );
    for (partition, shard_groups) in groups.iter().enumerate() {
        let end = stats.shards.get(partition).map_or(0, |s| s.events_end);
        for (group, offset, _) in shard_groups {
            let lag = end.saturating_sub(*offset) as f64;
            let scope = Scope::Group(group.clone(), partition as u32);
            push(
                "consumer_lag",
                "Offsets between a group's committed offset and the last event.",
                Kind::Gauge,
                scope,
                lag,
            );
        }
    }
    let requests = shared.metrics.requests_served();
    push("requests", "Requests answered over the Kafka protocol.", Kind::Counter, Scope::Total, requests as f64);
    let histograms = histograms(&stats.shards);
    for histogram in &histograms {
        for (q, name) in [(0.5, histogram.quantile_names[0]), (0.99, histogram.quantile_names[1])] {
            // The stats face shows the quantiles' bucket bounds; metrics carry the histograms.
            samples.push(Sample {
                name,
                help: "",
                kind: Kind::Quantile,
                scope: Scope::Total,
                value: histogram.quantile(q),
            });
        }
    }
    Ok(Snapshot { samples, histograms })
}

/// The log's histograms summed over the shards: the time to make a flush durable, the records
/// per flush (the group commit's size), and the committers' turns.
fn histograms(shards: &[tradeshard_engine::ShardStats]) -> Vec<HistogramSample> {
    let buckets = tradeshard_engine::HISTOGRAM_BUCKETS;
    let (mut micros, mut records, mut turns) = (vec![0u64; buckets], vec![0u64; buckets], vec![0u64; buckets]);
    let (mut micros_sum, mut records_sum, mut turns_sum) = (0u64, 0u64, 0u64);
    for shard in shards {
        for i in 0..buckets {
            micros[i] += shard.wal.durable_flush_micros[i];
            records[i] += shard.wal.flush_records[i];
            turns[i] += shard.apply_turns.micros[i];
        }
        micros_sum += shard.wal.durable_flush_micros_sum;
        records_sum += shard.wal.records;
        turns_sum += shard.apply_turns.micros_sum;
    }
    // Bucket i holds values under 2^i; the last is open-ended.
    let bound = |i: usize| if i + 1 == buckets { f64::INFINITY } else { (1u64 << i) as f64 };
    vec![
        HistogramSample {
            name: "durable_flush_seconds",
            help: "Time from a flush's first write to durable (writes and fdatasync, or O_DSYNC writes).",
            buckets: micros.iter().enumerate().map(|(i, c)| (bound(i) / 1e6, *c)).collect(),
            sum: micros_sum as f64 / 1e6,
            count: micros.iter().sum(),
            quantile_names: ["durable_flush_p50_seconds", "durable_flush_p99_seconds"],
        },
        HistogramSample {
            name: "group_commit_records",
            help: "Records per flush of the log (one group commit).",
            buckets: records.iter().enumerate().map(|(i, c)| (bound(i), *c)).collect(),
            sum: records_sum as f64,
            count: records.iter().sum(),
            quantile_names: ["group_commit_records_p50", "group_commit_records_p99"],
        },
        HistogramSample {
            name: "committer_turn_seconds",
            help: "Turns of the shards' committers, each applying what a group commit made durable, by how long each held its executor.",
            buckets: turns.iter().enumerate().map(|(i, c)| (bound(i) / 1e6, *c)).collect(),
            sum: turns_sum as f64 / 1e6,
            count: turns.iter().sum(),
            quantile_names: ["committer_turn_p50_seconds", "committer_turn_p99_seconds"],
        },
    ]
}
