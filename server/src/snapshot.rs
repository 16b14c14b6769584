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
}

/// Whose number it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    Total,
    Shard(u32),
    /// A consumer group in a partition.
    Group(String, u32),
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
pub(crate) async fn take(shared: &Shared) -> Result<Vec<Sample>, tradeshard_engine::Error> {
    let stats = shared.handle.stats().await?;
    let groups = shared.handle.groups().await?;
    let mut samples = Vec::new();
    let mut push = |name, help, kind, scope, value: f64| samples.push(Sample { name, help, kind, scope, value });
    let uptime = shared.started.elapsed().as_secs_f64();
    push("uptime_seconds", "Seconds since the server started.", Kind::Gauge, Scope::Total, uptime);
    let open = shared.open_connections.load(Ordering::Relaxed) as f64;
    push("connections", "Connections open now.", Kind::Gauge, Scope::Total, open);
    let mut totals: BTreeMap<&'static str, (Kind, &'static str, f64)> = BTreeMap::new();
    for shard in &stats.shards {
        let wal = &shard.wal;
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
        ];
        for (name, help, kind, value) in per_shard {
            push(name, help, kind, Scope::Shard(shard.shard), value);
            if name != "cache_hit_ratio" && name != "log_end_offset" {
                totals.entry(name).or_insert((kind, help, 0.0)).2 += value;
            }
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
    Ok(samples)
}
