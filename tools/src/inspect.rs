//! `tradeshard inspect`: what a data directory holds, shard by shard: its log's segments and
//! bytes, its checkpoint's position and age, the trades it holds, the store of created parts,
//! each consumer group's offset and lag, and what the open cost (`open_ms`,
//! `replayed_records`). It opens the engine read-only (`Options::read_only`; no other may
//! have the directory open): nothing is written but what every open repairs in the log, no
//! checkpoint is taken and no segment removed, and the work a stop interrupted (activities in
//! doubt, creates whose claim is in doubt) is shown as found, not carried on. So the same
//! directory inspected twice reports the same open.

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::Serialize;
use tradeshard_engine::{ActivityState, Engine, Options};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The data directory (an engine must not have it open).
    #[arg(long)]
    dir: PathBuf,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Memory for each shard's trades, as the engine that uses the directory sets it (e.g.
    /// 64MiB; default 512MiB): that many of the newest trades come back into memory after the
    /// open.
    #[arg(long, value_parser = crate::units::parse_bytes)]
    trade_memory: Option<u64>,
}

#[derive(Serialize)]
struct GroupReport {
    group: String,
    offset: u64,
    /// Trade events after the offset.
    lag: u64,
    committed_ms_ago: u64,
}

/// An activity not completed, as recovery will drive it.
#[derive(Serialize)]
struct ActivityReport {
    id: String,
    /// `open` (undecided), or the decision being carried out.
    state: String,
    age_ms: u64,
    /// Until recovery cancels it (negative: past); only for an undecided one, since a decided
    /// one is carried out whatever its deadline (a settlement's credit has none).
    deadline_in_ms: Option<i64>,
    /// Each branch: its shard and what it does.
    branches: Vec<String>,
}

#[derive(Serialize)]
struct ShardReport {
    shard: u32,
    segments: u64,
    segment_bytes: u64,
    /// Segments retention removed, kept as files for the next segments, and their bytes.
    free_segments: u64,
    free_segment_bytes: u64,
    /// The first offset the log still holds, and the offset after its last record.
    log_first: u64,
    log_end: u64,
    /// The checkpoint the open started from, and how old it was.
    checkpoint_position: Option<u64>,
    checkpoint_age_ms: Option<u64>,
    trades: u64,
    /// Of them, in memory now (the rest are in the table on disk; the newest come back into
    /// memory in the background after the open).
    trades_in_memory: u64,
    /// Bytes of the store of created parts (every checkpointed trade's order number and memo).
    parts_bytes: u64,
    /// Blocks of 128 trades of the table kept as compressed copies, their pages punched out.
    frozen_blocks: u64,
    /// Runs of order keys on disk, the keys they hold, their bytes on disk and in memory
    /// (Bloom filters and fences).
    key_runs: u64,
    key_run_entries: u64,
    key_run_bytes: u64,
    key_run_memory_bytes: u64,
    /// Estimated bytes in memory for the work since the checkpoint (the log the open
    /// replayed): what the next checkpoint gives back (`Upkeep::checkpoint_memory_bytes`).
    held_bytes: u64,
    groups: Vec<GroupReport>,
    /// Accounts (user and currency), account request numbers in memory (since the last
    /// checkpoint), branches of flexible transactions held on their own (a transfer's payer is
    /// kept in its activity's entry), activities initiated here, and those not completed.
    accounts: u64,
    account_requests: u64,
    branches: u64,
    activities: u64,
    activities_in_doubt: Vec<ActivityReport>,
    /// Half messages not resolved, messages scheduled (delayed, retries), dead letters, and
    /// the bytes of their bodies held in memory.
    half_messages: u64,
    scheduled_messages: u64,
    dead_letters: u64,
    message_bytes_held: u64,
    open_ms: u64,
    load_ms: u64,
    replay_ms: u64,
    replayed_records: u64,
    skipped_segments: u64,
    unread_log_bytes: u64,
    passed_over_damaged_checkpoint: bool,
}

#[derive(Serialize)]
struct Report {
    dir: PathBuf,
    open_ms: u64,
    replayed_records: u64,
    trades: u64,
    disk_bytes: u64,
    shards: Vec<ShardReport>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.dir.join("MANIFEST").is_file() {
        bail!("{} is not a tradeshard data directory (no MANIFEST)", args.dir.display());
    }
    let opening = Instant::now();
    // A read-only open writes nothing: its executors need little registered io memory, which
    // each pins and zeroes as it starts (64 MiB by default, a writer's).
    let mut options = Options { read_only: true, io_memory_bytes: 4 << 20, ..Options::new(&args.dir) };
    // Opened at its own segment size, the directory keeps its free segments.
    if let Some(bytes) = crate::data_dir::segment_bytes_of(&args.dir) {
        options.segment_bytes = bytes;
    }
    if let Some(bytes) = args.trade_memory {
        options.upkeep.trade_memory_bytes = bytes;
    }
    let options_segment_bytes = options.segment_bytes;
    let engine = Engine::open(options).with_context(|| format!("opening {}", args.dir.display()))?;
    let open_ms = opening.elapsed().as_millis() as u64;
    let handle = engine.handle();
    let stats = handle.stats_blocking()?;
    let groups = handle.groups_blocking()?;
    let in_doubt = handle.activities_in_doubt_blocking()?;
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut shards = Vec::new();
    for (shard, groups) in stats.shards.iter().zip(groups) {
        let events_end = shard.events_end;
        let checkpoint = shard.opened.checkpoint;
        shards.push(ShardReport {
            shard: shard.shard,
            segments: shard.segments,
            segment_bytes: shard.segment_bytes,
            free_segments: shard.wal.free_segments,
            // A free file is kept at open only at the segment size it was opened with.
            free_segment_bytes: shard.wal.free_segments * options_segment_bytes,
            log_first: shard.log_first,
            log_end: shard.log_end,
            checkpoint_position: checkpoint,
            checkpoint_age_ms: checkpoint.map(|_| now_ms.saturating_sub(shard.checkpoints.taken_ms)),
            trades: shard.trades,
            trades_in_memory: shard.trades_in_memory,
            parts_bytes: shard.checkpoints.parts_bytes,
            frozen_blocks: shard.checkpoints.frozen_blocks,
            key_runs: shard.checkpoints.key_runs,
            key_run_entries: shard.checkpoints.key_run_entries,
            key_run_bytes: shard.checkpoints.key_run_bytes,
            key_run_memory_bytes: shard.checkpoints.key_run_memory_bytes,
            held_bytes: shard.checkpoints.held_bytes,
            groups: groups
                .into_iter()
                .map(|(group, offset, at_ms)| GroupReport {
                    group,
                    offset,
                    lag: events_end.saturating_sub(offset),
                    committed_ms_ago: now_ms.saturating_sub(at_ms),
                })
                .collect(),
            accounts: shard.accounts,
            account_requests: shard.account_requests,
            branches: shard.branches,
            activities: shard.activities,
            half_messages: shard.half_messages,
            scheduled_messages: shard.scheduled_messages,
            dead_letters: shard.dead_letters,
            message_bytes_held: shard.message_bytes_held,
            activities_in_doubt: in_doubt
                .iter()
                .filter(|(home, _, _)| *home == shard.shard)
                .map(|(_, id, entry)| ActivityReport {
                    id: format!("{id:032x}"),
                    state: match entry.state {
                        ActivityState::Open => "open".into(),
                        ActivityState::Decided(decision) | ActivityState::Completed(decision) => {
                            format!("{decision:?}")
                        }
                    },
                    age_ms: now_ms.saturating_sub(entry.begun_ms),
                    deadline_in_ms: (entry.state == ActivityState::Open)
                        .then(|| entry.deadline_ms as i64 - now_ms as i64),
                    branches: entry
                        .branches
                        .iter()
                        .map(|plan| format!("shard {} branch {}: {:?}", plan.shard, plan.branch, plan.action))
                        .collect(),
                })
                .collect(),
            open_ms: shard.opened.open_ms,
            load_ms: shard.opened.load_ms,
            replay_ms: shard.opened.replay_ms,
            replayed_records: shard.opened.replayed_records,
            skipped_segments: shard.opened.skipped_segments,
            unread_log_bytes: shard.opened.unread_log_bytes,
            passed_over_damaged_checkpoint: shard.opened.passed_over_damaged_checkpoint,
        });
    }
    engine.close().context("closing the engine")?;
    let report = Report {
        open_ms,
        replayed_records: shards.iter().map(|s| s.replayed_records).sum(),
        trades: stats.trades,
        disk_bytes: crate::data_dir::disk_bytes(&args.dir),
        dir: args.dir,
        shards,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{}: {} trades, {:.1} MiB on disk, opened in {} ms replaying {} records",
        report.dir.display(),
        report.trades,
        report.disk_bytes as f64 / (1 << 20) as f64,
        report.open_ms,
        report.replayed_records
    );
    for s in &report.shards {
        let checkpoint = match (s.checkpoint_position, s.checkpoint_age_ms) {
            (Some(position), Some(age)) => format!("checkpoint at {position} ({:.1} s old)", age as f64 / 1000.0),
            _ => "no checkpoint".into(),
        };
        println!(
            "shard {}: {} trades ({} in memory); log {}..{} in {} segments ({:.1} MiB, {} free files of {:.1} MiB); {checkpoint}; created parts {:.1} MiB; {} blocks of trades frozen; \
             {} keys in {} runs ({:.1} MiB, {:.1} MiB in memory); open {} ms (load {} ms, replay {} ms), {} records replayed, {} segments and {:.1} MiB of log unread{}",
            s.shard,
            s.trades,
            s.trades_in_memory,
            s.log_first,
            s.log_end,
            s.segments,
            s.segment_bytes as f64 / (1 << 20) as f64,
            s.free_segments,
            s.free_segment_bytes as f64 / (1 << 20) as f64,
            s.parts_bytes as f64 / (1 << 20) as f64,
            s.frozen_blocks,
            s.key_run_entries,
            s.key_runs,
            s.key_run_bytes as f64 / (1 << 20) as f64,
            s.key_run_memory_bytes as f64 / (1 << 20) as f64,
            s.open_ms,
            s.load_ms,
            s.replay_ms,
            s.replayed_records,
            s.skipped_segments,
            s.unread_log_bytes as f64 / (1 << 20) as f64,
            if s.passed_over_damaged_checkpoint { ", a damaged checkpoint passed over" } else { "" }
        );
        println!(
            "  {:.1} MiB held for the work since the checkpoint; {} accounts, {} account requests in memory, {} branches, {} activities, {} in doubt",
            s.held_bytes as f64 / (1 << 20) as f64,
            s.accounts,
            s.account_requests,
            s.branches,
            s.activities,
            s.activities_in_doubt.len()
        );
        println!(
            "  {} half messages, {} scheduled messages, {} dead letters ({:.1} MiB held)",
            s.half_messages,
            s.scheduled_messages,
            s.dead_letters,
            s.message_bytes_held as f64 / (1 << 20) as f64
        );
        for a in &s.activities_in_doubt {
            let deadline = match a.deadline_in_ms {
                Some(ms) => format!(", deadline in {:.1} s", ms as f64 / 1000.0),
                None => String::new(),
            };
            println!(
                "  activity {}: {}, {:.1} s old{deadline}; {}",
                a.id,
                a.state,
                a.age_ms as f64 / 1000.0,
                a.branches.join("; ")
            );
        }
        for g in &s.groups {
            println!(
                "  group {}: offset {}, lag {}, committed {:.1} s ago",
                g.group,
                g.offset,
                g.lag,
                g.committed_ms_ago as f64 / 1000.0
            );
        }
    }
    Ok(())
}
