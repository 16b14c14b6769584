//! What a shard keeps of its checkpoints between them: the policy, the store of created parts,
//! the positions of the two checkpoints kept, the one-at-a-time permit, the counters; and what
//! its open found. The work itself is `checkpointer.rs`.

use std::cell::Cell;
use std::time::Instant;

use tradeshard_wal::disk::Disk;

use crate::checkpoint::Header;
use crate::parts::PartsStore;
use crate::retention::Upkeep;
use crate::trade_file::TradeFile;

/// Counters of a shard's checkpoints and retention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// The position of the latest checkpoint (0: none yet).
    pub position: u64,
    /// When it was taken (ms since the Unix epoch; 0: none yet).
    pub taken_ms: u64,
    /// Bytes of its file.
    pub bytes: u64,
    /// Checkpoints written since open.
    pub written: u64,
    /// Checkpoints, the retention after one, or merges of runs after one, that failed since
    /// open (the log and the runs merged still hold everything).
    pub failed: u64,
    /// Removals of runs no kept checkpoint lists that failed since open: the checkpoint
    /// stands, and the next one removes them.
    pub run_removals_failed: u64,
    /// Bytes of the store of created parts.
    pub parts_bytes: u64,
    /// Consumer groups expired since open.
    pub groups_expired: u64,
    /// Bytes written to the table of trades since open.
    pub table_bytes_written: u64,
    /// Trades that left memory since open.
    pub trades_evicted: u64,
    /// Runs of order keys and confirmed claims in force (`key_runs.rs`), the keys they
    /// hold, their files' bytes and the bytes their Bloom filters and fences take in memory.
    pub key_runs: u64,
    pub key_run_entries: u64,
    pub key_run_bytes: u64,
    pub key_run_memory_bytes: u64,
    /// Bytes kept to sort the next checkpoint's entries in (`sort_room.rs`).
    pub sort_room_bytes: u64,
    /// Bytes written to runs since open (merges included).
    pub key_run_bytes_written: u64,
    /// Entries the checkpoints wrote to new runs since open (merges not included).
    pub key_run_entries_written: u64,
    /// Microseconds of the shard's executor that the checkpoints' own turns took since open
    /// (collecting, sorting, encoding and writing runs and the table, settling the maps,
    /// retention), and those of merges of runs: the time taken from the requests beside them,
    /// their waits for the device not counted.
    pub busy_us: u64,
    pub merge_busy_us: u64,
    /// Requests that read the runs since open: retries of old keys, and the Bloom filters'
    /// false positives.
    pub key_run_reads: u64,
    /// Blocks of the runs that lookups and listings found in memory (`runs/blocks.rs`) and
    /// that they read from the device, since open; the bytes of blocks kept now.
    pub run_block_hits: u64,
    pub run_block_device_reads: u64,
    pub run_block_cache_bytes: u64,
    /// Runs that went past the key window since open (`Upkeep::key_window`), and those past it
    /// now: their Bloom filters left memory.
    pub key_runs_past_window: u64,
    pub key_runs_past_window_now: u64,
    /// Device reads of one trade's record in the table since open (a trade that left
    /// memory, or the created part its record holds inline), and of one created part in the
    /// store of created parts.
    pub table_reads: u64,
    pub parts_reads: u64,
    /// Estimated bytes the index holds in memory for the work since the last checkpoint
    /// (`Upkeep::checkpoint_memory_bytes`).
    pub held_bytes: u64,
    /// Pages of the table read whole since open: a checkpoint rewriting a page first reads it
    /// to keep the inline parts it holds, an open loads the chunks its replay changed in
    /// numbers, and the newest trades come back into memory after it.
    pub table_page_reads: u64,
    /// The newest trades are still coming back into memory after the open (`warm.rs`), the
    /// chunks of trades brought back so far, and those whose read failed (left in the table,
    /// where a read of one of their trades reports the error).
    pub warming: bool,
    pub chunks_warmed: u64,
    pub warm_failures: u64,
    /// Blocks of the table frozen (`trade_file/frozen.rs`): held as compressed copies, their
    /// pages punched out of the table; the copies' bytes written since open; copies read since
    /// open.
    pub frozen_blocks: u64,
    pub frozen_bytes_written: u64,
    pub frozen_reads: u64,
    /// Pages of frozen blocks that a stop or a failed punch had left in the table, punched
    /// out by a later freeze since open.
    pub frozen_leftover_pages_punched: u64,
}

/// What a shard keeps of its checkpoints.
pub(crate) struct Checkpoints<D: Disk> {
    pub upkeep: Upkeep,
    pub parts: PartsStore<D>,
    /// The table of trades on disk, where trades that leave memory are.
    pub table: TradeFile<D>,
    /// The latest checkpoint's position and the one before it (kept as a fallback).
    pub latest: Cell<Option<u64>>,
    pub previous: Cell<Option<u64>>,
    /// One checkpoint at a time.
    pub busy: glommio::sync::Semaphore,
    /// One merge of runs at a time (`run_merges.rs`), the task merging in the background, and
    /// whether it is under way.
    pub merge_lock: glommio::sync::Semaphore,
    pub merge_task: std::cell::RefCell<Option<glommio::task::JoinHandle<()>>>,
    pub merge_running: Cell<bool>,
    stats: Cell<CheckpointStats>,
    pub log_bytes_at_last: Cell<u64>,
    /// What the index held (`index/held.rs`) at the last checkpoint's snapshot, less what
    /// that checkpoint moved out of memory: what a checkpoint does not move out, which the
    /// memory trigger and [`CheckpointStats::held_bytes`] take off.
    pub held_bytes_at_last: Cell<u64>,
    pub last_at: Cell<Instant>,
}

impl<D: Disk> Checkpoints<D> {
    pub(crate) fn new(
        upkeep: Upkeep,
        parts: PartsStore<D>,
        table: TradeFile<D>,
        loaded: Option<&Header>,
        held_at_load: u64,
    ) -> Checkpoints<D> {
        let stats = CheckpointStats {
            position: loaded.map_or(0, |h| h.scalars.applied_end),
            taken_ms: loaded.map_or(0, |h| h.created_ms),
            parts_bytes: parts.len(),
            warming: true,
            ..CheckpointStats::default()
        };
        Checkpoints {
            upkeep,
            parts,
            table,
            latest: Cell::new(loaded.map(|h| h.scalars.applied_end)),
            previous: Cell::new(None),
            busy: glommio::sync::Semaphore::new(1),
            merge_lock: glommio::sync::Semaphore::new(1),
            merge_task: std::cell::RefCell::new(None),
            merge_running: Cell::new(false),
            stats: Cell::new(stats),
            log_bytes_at_last: Cell::new(0),
            held_bytes_at_last: Cell::new(held_at_load),
            last_at: Cell::new(Instant::now()),
        }
    }

    pub(crate) fn stats(&self) -> CheckpointStats {
        let (table_reads, parts_reads, table_page_reads) =
            (self.table.reads(), self.parts.reads(), self.table.page_reads());
        let (frozen_blocks, frozen_reads) = (self.table.frozen_len(), self.table.frozen_reads());
        let frozen_leftover_pages_punched = self.table.leftover_pages_punched();
        CheckpointStats {
            table_reads,
            parts_reads,
            table_page_reads,
            frozen_blocks,
            frozen_reads,
            frozen_leftover_pages_punched,
            ..self.stats.get()
        }
    }

    pub(crate) fn count(&self, update: impl FnOnce(&mut CheckpointStats)) {
        let mut stats = self.stats.get();
        update(&mut stats);
        self.stats.set(stats);
    }
}

/// What opening a shard found and cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The checkpoint the open started from (its position), if any.
    pub checkpoint: Option<u64>,
    /// A newer checkpoint was damaged and passed over for an older one.
    pub passed_over_damaged_checkpoint: bool,
    /// Log records replayed after the checkpoint.
    pub replayed_records: u64,
    /// Segments not read at all (wholly below the checkpoint).
    pub skipped_segments: u64,
    /// Bytes of the segment holding the checkpoint's position not read either: they lie before
    /// the log frame the checkpoint names.
    pub unread_log_bytes: u64,
    /// Time from the start of the recovery to the shard's start.
    pub open_ms: u64,
    /// Of that, the time spent loading the checkpoint and the runs' summaries (the newest
    /// trades of the table come back after the open, `CheckpointStats::warming`).
    pub load_ms: u64,
    /// Of that, the time spent replaying the log after the checkpoint (with the changes to
    /// trades read back from the table).
    pub replay_ms: u64,
}
