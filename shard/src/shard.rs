//! One shard: its log, its indexes, its cache, opened and closed as one.
//!
//! A write is checked against the shard's *accepted* view (durable state plus writes still in
//! flight), encoded, and queued in the log at once, so every request that arrives while a flush
//! is on the disk joins the next group commit (`write.rs`). Its effect is applied to the
//! durable indexes, and its caller answered, only once the log reports it durable, in log
//! order, by the shard's committer task (`committer.rs`). Reads look at durable state only
//! (`read.rs`): nothing is read before it is durable, and a caller that got an answer to a
//! write reads that write.
//!
//! After the log fails, the shard answers every write with the failure (the log acknowledges
//! nothing more until reopened); reads of durable state go on.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tradeshard_cache::{CacheStats, ReadThrough};
use tradeshard_wal::disk::Disk;
use tradeshard_wal::{RecoveredWal, Wal, WalConfig, WalStats};

use crate::checkpoint::Header;
use crate::checkpointer::Loaded;
use crate::checkpoints::{CheckpointStats, Checkpoints, OpenReport};
use crate::cold::{self, SettledTotals};
use crate::error::{LogError, Refusal, TradeError};
use crate::events::{EventBatch, PollQuery};
use crate::index::{ShardIndex, StagedKeys};
use crate::key_runs::KeyRuns;
use crate::parts::PartsStore;
use crate::replay::{apply_staged, replay_batch, Deferred, REPLAY_BATCH};
use crate::retention::Upkeep;
use crate::runs::KeysAge;
use crate::state::{Accepted, Inner, ShardReply, TurnTimes};
use crate::trade::now_ms;
use crate::trade_cache::TradeCache;
use crate::trade_file::TradeFile;

/// Counters of one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// The shard's id (its partition).
    pub shard: u32,
    /// Trades in the shard, and those of them in memory (the rest are in the table on disk).
    pub trades: u64,
    pub trades_in_memory: u64,
    /// Accounts (user and currency), and account request numbers held in memory: those applied
    /// since the last checkpoint (the older ones are in runs, counted in `checkpoints`).
    pub accounts: u64,
    pub account_requests: u64,
    /// Branches of flexible transactions this shard holds in entries of their own (not a
    /// transfer's payer, which its activity's entry keeps), activities it initiated, and those
    /// of them not completed (in doubt until recovery drives them to their end); those ended and
    /// completed are held until a checkpoint moves them to runs.
    pub branches: u64,
    pub activities: u64,
    pub activities_in_doubt: u64,
    /// Per currency, the shard's balances plus its count of money in transit: moved only by
    /// deposits and withdrawals (a transfer's every step keeps it), so a reader can check
    /// conservation shard by shard at any instant.
    pub money: std::collections::BTreeMap<crate::currency::Currency, i128>,
    /// Half messages not resolved, messages scheduled (delayed or retried), dead letters, and
    /// the bytes of their bodies held in memory (`MessagePolicy::held_bytes_max`).
    pub half_messages: u64,
    pub scheduled_messages: u64,
    pub dead_letters: u64,
    pub message_bytes_held: u64,
    pub writes_in_flight: u64,
    /// The committer's turns since the open: each applies what a group commit made durable,
    /// answers its callers and checks again the transactions that waited for it.
    pub apply_turns: TurnTimes,
    pub wal: WalStats,
    pub cache: CacheStats,
    pub checkpoints: CheckpointStats,
    /// What the open found and cost.
    pub opened: OpenReport,
    /// The first record the log still holds, and the record after its last.
    pub log_first: u64,
    pub log_end: u64,
    /// The offset after the last event, a trade event or a delivered message (a consumer's lag is measured to it).
    pub events_end: u64,
    /// Segments in the log and the bytes they take.
    pub segments: u64,
    pub segment_bytes: u64,
}

/// One shard of the trade store, on the executor that opened it.
pub struct Shard<D: Disk> {
    pub(crate) inner: Rc<Inner<D>>,
    committer: Option<glommio::task::JoinHandle<()>>,
    checkpointer: Option<glommio::task::JoinHandle<()>>,
    scheduler: Option<glommio::task::JoinHandle<()>>,
}

/// A shard whose log was verified and replayed into its indexes, not yet started: nothing on
/// disk has changed, and dropping it leaves the files as they were.
pub struct RecoveredShard<D: Disk> {
    shard_id: u32,
    wal: RecoveredWal<D>,
    disk: D,
    index: ShardIndex,
    key_runs: KeyRuns<D>,
    table: Option<TradeFile<D>>,
    cache_bytes: usize,
    upkeep: Upkeep,
    checkpoint: Option<Header>,
    /// What the index held once the checkpoint was loaded, before the replay: what that
    /// checkpoint left in memory, which the memory trigger takes off (`index/held.rs`).
    held_at_load: u64,
    opened: OpenReport,
    began: Instant,
}

impl<D: Disk> RecoveredShard<D> {
    /// Makes the log's repairs, starts it, the shard's committer and its checkpoints, with a
    /// cache of whole trades of the configured size.
    pub async fn start(self) -> Result<Shard<D>, TradeError> {
        let cache = Arc::new(TradeCache::with_hasher(self.cache_bytes));
        self.start_with_cache(cache).await
    }

    /// [`start`](Self::start) with a cache of whole trades made by the caller (which reads it
    /// on its own threads: see `trade_cache.rs`). The cache must be empty: what it holds is
    /// the shard's durable state.
    pub async fn start_with_cache(self, cache: Arc<TradeCache>) -> Result<Shard<D>, TradeError> {
        assert_eq!(cache.stats().entries, 0, "a shard starts with an empty cache of trades");
        let RecoveredShard {
            shard_id,
            wal,
            disk,
            index,
            key_runs,
            table,
            cache_bytes: _,
            upkeep,
            checkpoint,
            held_at_load,
            mut opened,
            began,
        } = self;
        let wal = wal.start().await?;
        let parts_len = checkpoint.as_ref().map_or(0, |header| header.parts_len);
        let parts = PartsStore::open(&disk, parts_len).await?;
        let table = match table {
            Some(table) => table,
            None => TradeFile::open(&disk, upkeep.frozen_index_cache_bytes).await?,
        };
        let mut accepted = Accepted { next_counter: index.counter_max() + 1, ..Accepted::default() };
        accepted.doubts.checkpoint_max = checkpoint.as_ref().map_or(0, |header| header.scalars.counter_max);
        opened.open_ms = began.elapsed().as_millis() as u64;
        let inner = Rc::new(Inner {
            shard_id,
            routing: std::cell::Cell::new(None),
            wal,
            checkpoints: Checkpoints::new(upkeep, parts, table, checkpoint.as_ref(), held_at_load),
            opened,
            index: RefCell::new(index),
            key_runs: RefCell::new(key_runs),
            accepted: RefCell::new(accepted),
            trade_cache: ReadThrough::over(cache),
            apply_turns: Default::default(),
        });
        let committer = glommio::spawn_local(crate::committer::run(inner.clone())).detach();
        let checkpointer = glommio::spawn_local(crate::checkpointer::run(inner.clone())).detach();
        let scheduler = glommio::spawn_local(crate::scheduler::run(inner.clone())).detach();
        // Ends on its own, and at the close (which waits for every holder of `inner`).
        let warming = inner.clone();
        glommio::spawn_local(async move { crate::warm::newest(&warming, upkeep.resident_chunks()).await }).detach();
        Ok(Shard { inner, committer: Some(committer), checkpointer: Some(checkpointer), scheduler: Some(scheduler) })
    }
}

impl<D: Disk> Shard<D> {
    /// Where users' accounts live, so that a trade paid from a balance credits its merchant in
    /// the right shard when it settles. Until it is set, every user's accounts are taken to be
    /// in this shard (a shard opened on its own); the engine sets its directory's shard counts
    /// before it takes a request.
    ///
    /// With the routing known, the trades the open found with their order number's claim in
    /// doubt are noted (`doubts.rs`), so it must be set before the shard's first yield after
    /// it started; the engine then claims them ([`Shard::take_trades_in_doubt`]).
    pub fn set_routing(&self, routing: crate::routing::UserRouting) {
        self.inner.routing.set(Some(routing));
        crate::doubts::recover(&self.inner, routing);
    }

    /// Refuses every write from now on with [`Refusal::ReadOnly`], as a failed log would
    /// (`committer.rs`): no record is written, no checkpoint taken (at close neither), so no
    /// segment is removed, and no message released. For looking at a directory without
    /// changing it (`tradeshard inspect`); the open's repairs of the log (a torn tail cut) are
    /// made before, as by every open. Reads, listings and polls go on.
    pub fn refuse_writes(&self) {
        let mut accepted = self.inner.accepted.borrow_mut();
        accepted.failed.get_or_insert(TradeError::Refused(Refusal::ReadOnly));
        accepted.wake();
        if let Some(scheduler) = accepted.scheduler.take() {
            scheduler.wake();
        }
    }

    /// Opens the shard's log on `disk`, loading the latest checkpoint and replaying the log
    /// after it, with a read-through cache of `cache_bytes` (0: every read goes to the log)
    /// and the default upkeep.
    pub async fn open(disk: D, wal_config: WalConfig, cache_bytes: usize) -> Result<Shard<D>, TradeError> {
        Self::open_with(disk, wal_config, cache_bytes, Upkeep::default()).await
    }

    /// [`open`](Self::open) with the given checkpoints and retention.
    pub async fn open_with(
        disk: D,
        wal_config: WalConfig,
        cache_bytes: usize,
        upkeep: Upkeep,
    ) -> Result<Shard<D>, TradeError> {
        Self::recover(disk, wal_config, cache_bytes, upkeep).await?.start().await
    }

    /// The first half of [`open`](Self::open): loads the latest checkpoint, verifies the log
    /// after it and replays it into the indexes, changing nothing on disk (see
    /// [`RecoveredShard::start`]).
    pub async fn recover(
        disk: D,
        wal_config: WalConfig,
        cache_bytes: usize,
        upkeep: Upkeep,
    ) -> Result<RecoveredShard<D>, TradeError> {
        let began = Instant::now();
        let shard_id = wal_config.shard_id;
        let found = crate::checkpointer::load_latest(&disk, shard_id).await?;
        let (checkpoint, mut index) = match found.loaded {
            Some(Loaded { header, index }) => (Some(header), index),
            None => (None, ShardIndex::default()),
        };
        let from = index.applied_end();
        // Before memory lays out a chunk for every trade the checkpoint says the table holds.
        let table = TradeFile::open_existing(&disk, upkeep.frozen_index_cache_bytes).await?;
        match &table {
            Some(table) => {
                table.check_holds(index.restored_table_max()).await?;
                table.load_frozen(checkpoint.as_ref().map_or(0, |header| header.frozen_blocks)).await?;
            }
            None if index.restored_table_max() > 0 => return Err(missing_table(&disk)),
            None => {}
        }
        index.lay_out_trades(upkeep.chunk_bits());
        // Runs of a version without their keys' age hold keys below the loaded checkpoint's
        // position and no newer than now.
        let assumed = KeysAge { newest_ms: now_ms(), through: from };
        let key_runs = KeyRuns::open(&disk, &index.take_listed_runs(), assumed, upkeep.run_cache_bytes).await?;
        index.reserve_recent(|store| key_runs.sets.newest_written(store));
        // The newest trades come back into memory after the open, in the background
        // (`warm.rs`); the replay reads what it changes.
        if let Some(header) = &checkpoint {
            crate::parts::check_len(&disk, header.parts_len).await?;
        }
        let loaded_at = Instant::now();
        let held_at_load = index.held_bytes();
        let mut replay_error = None;
        // Changes to trades that are not in memory wait until the replay ends, when their
        // records are read from the table (the replay cannot wait for the device).
        let mut deferred = Deferred::default();
        let from_frame = checkpoint.as_ref().and_then(|header| header.frame);
        let expected = |store| key_runs.sets.newest_written(store);
        let mut staged = StagedKeys::with_expected(expected);
        let mut batch = Vec::with_capacity(REPLAY_BATCH);
        let (wal, report) = Wal::recover_from_frame(disk.clone(), wal_config, (from, from_frame), |at, bytes| {
            if replay_error.is_some() {
                return;
            }
            match crate::replay::decode(bytes) {
                Ok((record, keys)) => batch.push((at, record, keys)),
                Err(reason) => {
                    let replayed = replay_batch(&mut index, &mut deferred, &mut staged, shard_id, &mut batch);
                    replay_error = Some(replayed.err().unwrap_or(TradeError::BadRecord { seq: at.seq, reason }));
                    return;
                }
            }
            if batch.len() == REPLAY_BATCH {
                replay_error = replay_batch(&mut index, &mut deferred, &mut staged, shard_id, &mut batch).err();
            }
        })
        .await?;
        if replay_error.is_none() {
            replay_error = replay_batch(&mut index, &mut deferred, &mut staged, shard_id, &mut batch).err();
        }
        // The changes set aside came before any record that failed: theirs is the first error.
        apply_staged(&mut index, &mut staged)?;
        // Their lists (sized for a whole interval's keys) go before the table's chunks load.
        drop(staged);
        if let Some(error) = replay_error {
            return Err(error);
        }
        if let Some(table) = &table {
            let parts_len = checkpoint.as_ref().map_or(0, |header| header.parts_len);
            deferred.apply(table, &mut index, from, parts_len, upkeep.resident_chunks()).await?;
        } else if !deferred.records.is_empty() {
            return Err(missing_table(&disk));
        }
        index.finish_replay().map_err(|reason| TradeError::BadRecord { seq: from, reason })?;
        let log_path = || disk.path_of(&report.first_segment_name());
        let refuse = |reason| TradeError::Log(LogError::Corruption { path: log_path(), offset: 0, reason });
        if report.segments > 0 && report.first_seq > from {
            // The log no longer reaches back to the checkpoint loaded: the one it was kept for
            // was passed over as damaged (that is the error to report), or is missing.
            return Err(found.passed_over.unwrap_or_else(|| refuse("the log starts after the latest checkpoint")));
        }
        if report.next_seq < from {
            return Err(refuse("the log ends before the latest checkpoint"));
        }
        // The runs past the key window go past it again: their filters are not kept, nor read.
        crate::checkpointer::expire_key_runs(&key_runs.sets, &upkeep, &disk, report.first_seq);
        key_runs.read_filters().await?;
        let opened = OpenReport {
            checkpoint: checkpoint.as_ref().map(|header| header.scalars.applied_end),
            passed_over_damaged_checkpoint: found.passed_over.is_some(),
            replayed_records: report.replayed,
            skipped_segments: report.skipped_segments as u64,
            unread_log_bytes: report.unread_bytes,
            open_ms: 0,
            load_ms: loaded_at.duration_since(began).as_millis() as u64,
            replay_ms: loaded_at.elapsed().as_millis() as u64,
        };
        Ok(RecoveredShard {
            shard_id,
            wal,
            disk,
            index,
            key_runs,
            table,
            cache_bytes,
            upkeep,
            checkpoint,
            held_at_load,
            opened,
            began,
        })
    }

    /// Takes a checkpoint now (after one under way), applies retention, then merges the runs
    /// it made due (after a merge under way); `None` if nothing was applied since the last
    /// one.
    pub fn checkpoint(&self) -> impl std::future::Future<Output = Result<Option<u64>, TradeError>> + 'static {
        let inner = self.inner.clone();
        async move {
            let taken = crate::checkpointer::take(&inner).await?;
            crate::run_merges::merge_due(&inner).await?;
            Ok(taken)
        }
    }

    /// `group`'s durable committed offset in this shard, if it ever committed one.
    pub fn committed_offset(&self, group: &str) -> Option<u64> {
        self.inner.index.borrow().committed_offset(group)
    }

    /// The offsets a consumer can read: the first retained and the durable end.
    pub fn offset_range(&self) -> (u64, u64) {
        (self.inner.wal.first_seq(), self.inner.wal.durable_end())
    }

    /// The offset after the last durable event, a trade event or a delivered message (offset commits after it are no events).
    pub fn events_end(&self) -> u64 {
        self.inner.index.borrow().events_end()
    }

    /// Trade events from `query.from` on, durable only, in log order, as the log holds their
    /// bytes (decoded by the reader, on its own thread); waits up to `query.wait` for one if
    /// there is none yet (a long poll).
    pub fn poll_events(&self, query: PollQuery, reply: ShardReply<EventBatch>) {
        let inner = self.inner.clone();
        glommio::spawn_local(async move { reply.send(crate::events::poll(inner.shard_id, &inner.wal, query).await) })
            .detach();
    }

    /// The amounts of the durable settled trades, summed per (merchant, currency): what a
    /// settlement consumer's totals must equal. Trades not in memory are read from the table.
    pub fn settled_totals(&self) -> impl std::future::Future<Output = Result<SettledTotals, TradeError>> + 'static {
        let inner = self.inner.clone();
        async move { cold::settled_totals(&inner).await }
    }

    /// Counters of the shard.
    pub fn stats(&self) -> ShardStats {
        let segments = self.inner.wal.segments();
        let messages = self.with_messages(|book| {
            let (halves, scheduled, dead, _) = book.counts();
            (halves, scheduled, dead, book.held_bytes())
        });
        let (accounts, account_requests) = self.inner.index.borrow().accounts().len();
        let (branches, activities) = self.inner.index.borrow().tcc().len();
        ShardStats {
            shard: self.inner.shard_id,
            trades: self.inner.index.borrow().len() as u64,
            trades_in_memory: self.inner.index.borrow().resident_len() as u64,
            accounts: accounts as u64,
            account_requests: account_requests as u64,
            branches: branches as u64,
            activities: activities as u64,
            activities_in_doubt: self.inner.index.borrow().tcc().unfinished().count() as u64,
            money: {
                let index = self.inner.index.borrow();
                let mut money: std::collections::BTreeMap<_, i128> =
                    index.accounts().totals().into_iter().map(|(currency, total)| (currency, total as i128)).collect();
                for (currency, amount) in index.tcc().in_transit() {
                    *money.entry(*currency).or_default() += amount;
                }
                money
            },
            half_messages: messages.0 as u64,
            scheduled_messages: messages.1 as u64,
            dead_letters: messages.2 as u64,
            message_bytes_held: messages.3 as u64,
            writes_in_flight: self.inner.accepted.borrow().effects.len() as u64,
            apply_turns: self.inner.apply_turns.get(),
            wal: self.inner.wal.stats(),
            cache: self.inner.trade_cache.cache().stats(),
            checkpoints: {
                let runs = self.inner.key_runs.borrow();
                let sets = runs.sets.stores().map(|(_, set)| set);
                let mut stats = self.inner.checkpoints.stats();
                stats.key_runs = sets.iter().map(|set| set.runs().len() as u64).sum();
                stats.key_run_entries = sets.iter().map(|set| set.entries()).sum();
                stats.key_run_bytes = sets.iter().map(|set| set.file_bytes()).sum();
                stats.key_run_memory_bytes = sets.iter().map(|set| set.memory_bytes() as u64).sum();
                stats.sort_room_bytes = runs.sort_room.bytes() as u64;
                stats.key_run_reads = runs.reads.get();
                let blocks = runs.blocks.stats();
                stats.run_block_hits = blocks.hits;
                stats.run_block_device_reads = blocks.misses;
                stats.run_block_cache_bytes = blocks.bytes;
                stats.key_runs_past_window_now = sets.iter().map(|set| set.past_window() as u64).sum();
                let baseline = self.inner.checkpoints.held_bytes_at_last.get();
                stats.held_bytes = self.inner.index.borrow().held_bytes().saturating_sub(baseline);
                stats
            },
            opened: self.inner.opened,
            log_first: self.inner.wal.first_seq(),
            log_end: self.inner.wal.durable_end(),
            events_end: self.inner.index.borrow().events_end(),
            segments: segments.len() as u64,
            segment_bytes: segments.iter().map(|s| s.bytes).sum(),
        }
    }

    /// Every consumer group's durable committed offset in this shard, and when it was
    /// committed (ms since the Unix epoch).
    pub fn groups(&self) -> Vec<(String, u64, u64)> {
        let index = self.inner.index.borrow();
        let mut groups: Vec<_> = index.groups().map(|(name, g)| (name.to_string(), g.offset, g.at_ms)).collect();
        groups.sort();
        groups
    }

    /// Stops taking writes, waits for those in flight, and closes the log (synced).
    pub async fn close(mut self) -> Result<(), TradeError> {
        {
            let mut accepted = self.inner.accepted.borrow_mut();
            accepted.closing = true;
            accepted.wake();
            if let Some(scheduler) = accepted.scheduler.take() {
                scheduler.wake();
            }
        }
        if let Some(scheduler) = self.scheduler.take() {
            scheduler.await;
        }
        if let Some(committer) = self.committer.take() {
            committer.await;
        }
        if let Some(checkpointer) = self.checkpointer.take() {
            checkpointer.await;
        }
        crate::run_merges::cancel(&self.inner).await;
        if self.inner.checkpoints.upkeep.checkpoint_on_close && self.inner.accepted.borrow().failed.is_none() {
            // A clean close leaves a checkpoint at the log's end, so the next open replays
            // nothing; if it fails, the next open replays more, and nothing is lost.
            let _ = crate::checkpointer::take(&self.inner).await;
        }
        // Reads and polls in flight hold the shard; long polls are cut short, the rest finish.
        self.inner.wal.stop_waits();
        while Rc::strong_count(&self.inner) > 1 {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        let inner = self.inner.clone();
        drop(self);
        let inner = Rc::try_unwrap(inner).ok().expect("no other holder is left");
        Ok(inner.wal.close().await?)
    }
}

impl<D: Disk> Drop for Shard<D> {
    /// Without `close`, writes in flight still complete; the log closes once they have.
    fn drop(&mut self) {
        self.inner.wal.stop_waits();
        let mut accepted = self.inner.accepted.borrow_mut();
        accepted.closing = true;
        accepted.wake();
        if let Some(scheduler) = accepted.scheduler.take() {
            scheduler.wake();
        }
    }
}

fn missing_table<D: Disk>(disk: &D) -> TradeError {
    TradeError::Log(LogError::Corruption {
        path: disk.path_of(crate::trade_file::TABLE_NAME),
        offset: 0,
        reason: "the table of trades a checkpoint points into is missing",
    })
}
