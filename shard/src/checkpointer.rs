//! Taking checkpoints and applying retention, in the background of a shard's executor, and
//! loading the latest checkpoint when the shard opens.
//!
//! A checkpoint at position `P` (the index's applied end) is taken without stopping the
//! shard's requests:
//!
//! 1. the indexes are cloned; the clone shares their chunks and parts, and a write during the
//!    checkpoint copies the one chunk or part it touches (`trade_table/`, `partitioned.rs`),
//!    but for the maps of recent work (order keys, users' lists, claims, refunds, account
//!    requests, the books of transactions), frozen first and shared whole while writes go to a
//!    live layer over them (`layered.rs`);
//! 2. once the log is synced up to `P` (at once under `Durability::Sync`), the `Created`
//!    records written since the last checkpoint are read back from the log and appended to
//!    the store of created parts (`parts.rs`), which is synced;
//! 3. the trades changed since the last checkpoint are written to the table on disk
//!    (`cold.rs`, `trade_file.rs`), which is synced;
//! 4. the order keys, confirmed claims, refunds, users' lists, account requests, ended branches
//!    and completed activities applied since the last checkpoint are written as new runs
//!    (`key_runs.rs`), synced;
//! 5. the clone (without the trades of the table and the keys of the runs, with the list of
//!    runs) is written as `checkpoint.tmp` in pages, yielding between them, synced, renamed to
//!    its name, and the directory synced: from here on an open starts from it;
//! 6. the live indexes point the copied trades at the store and take the new runs in place of
//!    the keys they hold (the frozen layers go, with the pending claims they held carried
//!    up);
//!    trades past the memory budget leave memory (`trade_table/`); checkpoints older than the one before, and runs neither lists, are removed; retention
//!    removes the segments it allows (`retention.rs`).
//!
//! A crash anywhere leaves the previous checkpoint in force and the log it needs; a failed
//! step fails this checkpoint only (counted in the stats), since the log still holds
//! everything: the next one starts again from the last that completed.

use std::rc::Rc;
use std::time::{Duration, Instant};

use tradeshard_wal::disk::{Disk, DiskFile, WriteBuf};

use crate::checkpoint::{self, Encoder, Header, Restored, Restorer};
use crate::checkpoint_runs::WrittenRuns;
use crate::error::{LogError, TradeError};
use crate::index::{CreatedAt, Item, RunStore, ShardIndex};
use crate::key_runs::RunSets;
use crate::layered::SETTLE_PARTS;
use crate::parts::{PartsMark, PlacedParts};
use crate::retention::{keep_from, Upkeep};
use crate::runs::{Filter, KeysAge};
use crate::state::Inner;
use crate::trade::now_ms;
use crate::trade::TradeId;
use crate::trade_table::Dirty;
use crate::turns::{take_turn, timed, ITEMS_PER_TURN};

/// How often the background task looks whether a checkpoint is due.
const DUE_CHECK_EVERY: Duration = Duration::from_millis(50);

/// The background task: takes a checkpoint when one is due, until the shard closes.
pub(crate) async fn run<D: Disk>(inner: Rc<Inner<D>>) {
    loop {
        glommio::timer::sleep(DUE_CHECK_EVERY).await;
        if inner.accepted.borrow().closing || inner.accepted.borrow().failed.is_some() {
            return;
        }
        if due(&inner) {
            // A failure is counted; the next attempt starts again from the last checkpoint.
            let _ = take(&inner).await;
            crate::run_merges::spawn_if_due(&inner);
        }
    }
}

fn due<D: Disk>(inner: &Inner<D>) -> bool {
    let checkpoints = &inner.checkpoints;
    let upkeep = &checkpoints.upkeep;
    let grown = inner.wal.stats().disk_bytes - checkpoints.log_bytes_at_last.get();
    let behind = inner.index.borrow().applied_end() > checkpoints.latest.get().unwrap_or(0);
    let interval_passed = checkpoints.last_at.get().elapsed() >= upkeep.checkpoint_interval;
    if behind {
        let held = inner.index.borrow().held_bytes().saturating_sub(checkpoints.held_bytes_at_last.get());
        return grown >= upkeep.checkpoint_log_bytes || interval_passed || held >= upkeep.checkpoint_memory_bytes;
    }
    // A shard that takes no writes still lets idle groups expire and old segments go, once
    // an interval.
    interval_passed && (groups_to_expire(inner, now_ms()) || retention_would_remove(inner))
}

/// Groups that committed nothing since this time expire (`None`: groups never expire).
fn idle_before<D: Disk>(inner: &Inner<D>, now: u64) -> Option<u64> {
    Some(now.saturating_sub(inner.checkpoints.upkeep.group_idle_expiry?.as_millis() as u64))
}

/// Whether a group committed nothing for the idle expiry.
fn groups_to_expire<D: Disk>(inner: &Inner<D>, now: u64) -> bool {
    let Some(idle_before) = idle_before(inner, now) else { return false };
    inner.index.borrow().groups().any(|(_, group)| group.at_ms < idle_before)
}

/// Whether retention would remove a segment now.
fn retention_would_remove<D: Disk>(inner: &Inner<D>) -> bool {
    let Some(previous) = inner.checkpoints.previous.get() else { return false };
    let groups_floor = inner.index.borrow().groups().map(|(_, group)| group.offset).min();
    let keep = keep_from(&inner.wal.segments(), previous, groups_floor, &inner.checkpoints.upkeep, now_ms());
    keep > inner.wal.first_seq()
}

/// Takes a checkpoint now (waiting for one under way), then applies retention. Returns the
/// checkpoint's position, or `None` if nothing was applied since the last one.
pub(crate) async fn take<D: Disk>(inner: &Inner<D>) -> Result<Option<u64>, TradeError> {
    // A shard that writes nothing more (its log failed, or it is open read-only) takes no
    // checkpoint either, asked or due: nor does it apply retention.
    if let Some(failure) = inner.accepted.borrow().failed.clone() {
        return Err(failure);
    }
    let checkpoints = &inner.checkpoints;
    let _one_at_a_time = checkpoints.busy.acquire_permit(1).await.map_err(|_| TradeError::Log(LogError::Closed))?;
    let work = async {
        match write_checkpoint(inner).await {
            Ok(Some(position)) => {
                checkpoints.log_bytes_at_last.set(inner.wal.stats().disk_bytes);
                checkpoints.last_at.set(Instant::now());
                apply_retention(inner).await.map(|()| Some(position))
            }
            Ok(None) => {
                checkpoints.last_at.set(Instant::now());
                // Nothing new to hold, but time passes: segments may have aged out.
                apply_retention(inner).await.map(|()| None)
            }
            Err(error) => Err(error),
        }
    };
    let (result, spent) = timed(work).await;
    checkpoints.count(|s| s.busy_us += spent.as_micros() as u64);
    match result {
        // After retention: what it removed (old checkpoints, the log's oldest segments) may
        // let runs go past the key window.
        Ok(_) => expire_runs(inner),
        Err(_) => checkpoints.count(|s| s.failed += 1),
    }
    result
}

async fn write_checkpoint<D: Disk>(inner: &Inner<D>) -> Result<Option<u64>, TradeError> {
    let checkpoints = &inner.checkpoints;
    let now = now_ms();
    let since = checkpoints.latest.get().unwrap_or(0);
    let nothing_applied = checkpoints.latest.get().is_some() && inner.index.borrow().applied_end() == since;
    // With nothing applied, a checkpoint is still written when groups expire (at the same
    // position: it replaces the latest, and the one before stays the fallback).
    if nothing_applied && !groups_to_expire(inner, now) {
        // An idle shard keeps no room for an interval that may not come.
        inner.index.borrow_mut().release_room();
        inner.key_runs.borrow().sort_room.release();
        return Ok(None);
    }
    // Groups expire in the snapshot, and in memory only once the checkpoint recording it is
    // durable: an expiry in memory alone would let retention remove what the group still holds
    // after the next open.
    let idle_before = idle_before(inner, now);
    // A checkpoint that failed left its frozen layers: what came since moves down into them
    // part by part, a turn each, so that the freeze below merges a turn's writes, not an
    // interval's in one turn.
    if inner.index.borrow().has_frozen() {
        for part in 0..SETTLE_PARTS {
            inner.index.borrow_mut().fold_live_part(part);
            take_turn().await;
        }
    }
    let (mut snapshot, dirty, held_at_snapshot) = {
        let mut index = inner.index.borrow_mut();
        let dirty = index.take_dirty();
        let held_at_snapshot = index.held_bytes();
        // The maps of recent work are shared whole, not part by part (`layered.rs`).
        index.freeze_for_snapshot();
        let mut snapshot = index.clone();
        // Trades created with their claim in doubt stay in doubt for the next open. Counters
        // of creates still in flight are not the snapshot's to vouch for: a stop may lose
        // those creates, and the next open gives their counters to new trades.
        let accepted = inner.accepted.borrow();
        let known_below = accepted.doubts.known_below(accepted.next_counter).min(snapshot.counter_max() + 1);
        snapshot.set_claims_known_below(known_below);
        (snapshot, dirty, held_at_snapshot)
    };
    if let Some(idle_before) = idle_before {
        snapshot.expire_groups(idle_before);
    }
    let position = snapshot.applied_end();
    let mut taken = Undo { inner, dirty: Some(dirty), parts: Some(inner.checkpoints.parts.mark()) };
    let (bytes, placed, table_bytes, runs) =
        write_durable(inner, &snapshot, taken.dirty.as_ref().expect("taken"), since, now).await?;
    (taken.dirty, taken.parts) = (None, None);
    drop(snapshot);
    let new_position = checkpoints.latest.get() != Some(position);
    let (kept_runs, mut moved_out) = take_runs(inner, runs, new_position).await;
    // In batches, so that a checkpoint of many new trades does not hold up requests.
    let placed: Vec<(TradeId, CreatedAt)> = placed.into_places().collect();
    for batch in placed.chunks(ITEMS_PER_TURN) {
        moved_out += lowering(inner, |index| {
            for (id, at) in batch {
                index.note_stored(*id, *at);
            }
        });
        take_turn().await;
    }
    if let Some(idle_before) = idle_before {
        // A group that committed since the snapshot is not idle any more, and stays.
        let expired = inner.index.borrow_mut().expire_groups(idle_before);
        checkpoints.count(|s| s.groups_expired += expired as u64);
    }
    // Only now may trades leave memory: the table holds them as of this checkpoint.
    let mut evicted = 0;
    moved_out += lowering(inner, |index| {
        let pinned: Vec<TradeId> = inner.accepted.borrow().trades.keys().copied().collect();
        evicted = index.trade_table_mut().evict(checkpoints.upkeep.resident_chunks(), &pinned);
    });
    // What the memory trigger (`due`) takes off from now on: what the snapshot held less what
    // this checkpoint moved out. The work that came since the snapshot, whenever it came, is
    // not covered by this checkpoint and counts towards the next one. (Other changes that
    // lower what the index holds while a batch is forgotten count as moved out too; the
    // baseline is an estimate, as the measure is.)
    checkpoints.held_bytes_at_last.set(held_at_snapshot.saturating_sub(moved_out));
    if checkpoints.latest.get() != Some(position) {
        checkpoints.previous.set(checkpoints.latest.get());
    }
    checkpoints.latest.set(Some(position));
    checkpoints.count(|s| {
        s.position = position;
        s.taken_ms = now;
        s.bytes = bytes;
        s.written += 1;
        s.parts_bytes = checkpoints.parts.len();
        s.table_bytes_written += table_bytes;
        s.trades_evicted += evicted as u64;
    });
    // Last: the checkpoint is complete and in force whatever becomes of the removal. A run
    // left behind is removed by the next checkpoint, so a failure here is counted apart and
    // fails nothing: retention after this checkpoint still runs.
    let (kept, below) = kept_runs;
    if crate::key_runs::remove_unlisted(inner.wal.disk(), &kept, below).await.is_err() {
        checkpoints.count(|s| s.run_removals_failed += 1);
    }
    Ok(Some(position))
}

/// Lets the runs now past the key window go past it (`runs/set.rs`) after a checkpoint and its
/// retention.
fn expire_runs<D: Disk>(inner: &Inner<D>) {
    let went = expire_key_runs(
        &inner.key_runs.borrow().sets,
        &inner.checkpoints.upkeep,
        inner.wal.disk(),
        inner.wal.first_seq(),
    );
    if went > 0 {
        inner.checkpoints.count(|s| s.key_runs_past_window += went as u64);
    }
}

/// Lets the runs of `sets` now past `upkeep`'s key window go past it: a run's records must lie
/// below every position a replay may start from ([`replay_floor`]). Returns how many went.
pub(crate) fn expire_key_runs<D: Disk>(sets: &RunSets<D>, upkeep: &Upkeep, disk: &D, log_first: u64) -> usize {
    let (Some(window), Some(floor)) = (upkeep.key_window, replay_floor(disk, log_first)) else { return 0 };
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    let now = now_ms();
    // A user's trades are listed, never checked: their runs have no filter per key to let go,
    // only fence keys to leave on disk.
    let mut went = 0;
    for (store, set) in sets.stores() {
        match store.shape().filter {
            Filter::PerKey => went += set.expire(now, window_ms, floor),
            Filter::RangesOnly => _ = set.page_old_fences(now, window_ms, floor),
        }
    }
    went
}

/// The lowest log position a replay may start from, as the files on disk tell: the oldest
/// checkpoint file there (an open tries each, newest first, and older ones linger until a
/// checkpoint's retention removes them); none while the log still holds its first record,
/// since an open that loads no checkpoint replays the whole log.
fn replay_floor<D: Disk>(disk: &D, log_first: u64) -> Option<u64> {
    if log_first == 0 {
        return None;
    }
    let names = disk.list().ok()?;
    names.iter().filter_map(|name| checkpoint::parse_file_name(name)).min()
}

/// What a checkpoint undoes unless it completes (whether it failed or was dropped half way):
/// the trades it took to write to the table are put back for the next checkpoint, and the
/// store of created parts is rewound to where it ended, so that the next checkpoint's copy of
/// the same records writes over this one's instead of after it. (Runs it wrote are not in
/// force, and go with the next checkpoint's removal of unlisted runs.)
struct Undo<'a, D: Disk> {
    inner: &'a Inner<D>,
    dirty: Option<Dirty>,
    /// Where the store of created parts ended.
    parts: Option<PartsMark>,
}

impl<D: Disk> Drop for Undo<'_, D> {
    fn drop(&mut self) {
        if let Some(dirty) = self.dirty.take() {
            self.inner.index.borrow_mut().trade_table_mut().restore_dirty(dirty);
        }
        if let Some(parts) = self.parts.take() {
            self.inner.checkpoints.parts.rewind(parts);
        }
    }
}

/// Runs `change` on the index; returns by how much it lowered what the index holds
/// (`index/held.rs`). Nothing else runs in between, so the difference is the change's alone.
fn lowering<D: Disk>(inner: &Inner<D>, change: impl FnOnce(&mut ShardIndex)) -> u64 {
    let mut index = inner.index.borrow_mut();
    let before = index.held_bytes();
    change(&mut index);
    before.saturating_sub(index.held_bytes())
}

/// Puts a durable checkpoint's new runs in force, after the runs in force now (merges may
/// have replaced some of those it listed): lookups read them from now on (a read made against
/// the runs before is made again), and the keys they hold leave memory with the frozen layers,
/// part by part. Returns
/// the runs no removal may take (`KeyRuns::kept`), and by how much forgetting lowered what the
/// index holds.
async fn take_runs<D: Disk>(inner: &Inner<D>, written: WrittenRuns<D>, new_position: bool) -> ((Vec<u64>, u64), u64) {
    let kept = {
        let mut runs = inner.key_runs.borrow_mut();
        if new_position {
            runs.previous_ids = std::mem::take(&mut runs.latest_ids);
        }
        runs.latest_ids = written.sets.listed().into_iter().map(|(_, id)| id).collect();
        if !written.new_runs.is_empty() {
            for (store, run) in written.new_runs {
                runs.sets.store_mut(store).push(run);
            }
            runs.generation += 1;
        }
        inner.checkpoints.count(|s| {
            s.key_run_bytes_written += written.bytes;
            s.key_run_entries_written += written.entries;
        });
        runs.kept()
    };
    // The snapshot froze the maps of recent work: what they held, but for what is under way,
    // is in the runs now, and until it goes memory and the runs both hold it, alike. Parts
    // until a turn's worth of entries, so a layer of a few entries goes in one turn; a turn
    // settles at least one part of every map (a 256th of each, tens of thousands of entries
    // after an interval of millions).
    let mut forgotten = 0;
    let mut part = 0;
    while part < SETTLE_PARTS && inner.index.borrow().has_frozen() {
        forgotten += lowering(inner, |index| {
            let mut entries = 0;
            while part < SETTLE_PARTS && entries < ITEMS_PER_TURN {
                entries += index.settle_frozen_part(part);
                part += 1;
            }
        });
        take_turn().await;
    }
    (kept, forgotten)
}

/// Blocks of the table frozen by one checkpoint at most (a million trades, 128 MiB of the
/// table read), so that one checkpoint's work stays bounded after a long time without.
const FREEZE_BLOCKS_MAX: u64 = 8192;

/// Freezes the blocks of the table whose trades are all older than the newest ones the memory
/// budget holds (`Upkeep::trade_memory_bytes`) and within what `snapshot` has the table hold:
/// their compressed copies replace their pages (`trade_file/frozen.rs`). The table was just
/// synced, and nothing else writes it meanwhile.
async fn freeze_old_blocks<D: Disk>(inner: &Inner<D>, snapshot: &ShardIndex) -> Result<(), TradeError> {
    use crate::trade_file::frozen::BLOCK_RECORDS;
    let plain = inner.checkpoints.upkeep.trades_in_budget();
    let held = snapshot.trade_table().dense_max() + 1;
    let upto = held.saturating_sub(plain) / BLOCK_RECORDS;
    let frozen = inner.checkpoints.table.freeze(upto, FREEZE_BLOCKS_MAX).await?;
    inner.checkpoints.count(|s| s.frozen_bytes_written += frozen.copy_bytes);
    Ok(())
}

/// The durable steps of a checkpoint of `snapshot`: the created parts placed, the changed
/// trades written to the table, the file written and switched to. Returns the file's bytes,
/// where the parts went, and the bytes written to the table.
async fn write_durable<D: Disk>(
    inner: &Inner<D>,
    snapshot: &ShardIndex,
    dirty: &Dirty,
    since: u64,
    now: u64,
) -> Result<(u64, PlacedParts, u64, WrittenRuns<D>), TradeError> {
    let position = snapshot.applied_end();
    wait_synced(inner, position).await?;
    let placed = crate::parts::place_created_parts(inner, snapshot, since, position).await?;
    let table_bytes = crate::cold::write_dirty(&inner.checkpoints.table, snapshot, dirty, &placed, position).await?;
    freeze_old_blocks(inner, snapshot).await?;
    let (sets, next_id, room) = {
        let runs = inner.key_runs.borrow();
        (runs.sets.clone(), runs.next_id.clone(), runs.sort_room.clone())
    };
    let age = KeysAge { newest_ms: now, through: position };
    let runs = crate::checkpoint_runs::write_runs(inner.wal.disk(), sets, &next_id, snapshot, age, &room).await?;
    let header = Header {
        shard_id: inner.shard_id,
        scalars: snapshot.scalars(),
        parts_len: inner.checkpoints.parts.len(),
        created_ms: now,
        frame: position.checked_sub(1).and_then(|last| inner.wal.frame_pos(last)),
        frozen_blocks: inner.checkpoints.table.frozen_len(),
    };
    let bytes = write_file(inner, snapshot, &header, &placed, &runs.sets.listed()).await?;
    Ok((bytes, placed, table_bytes, runs))
}

/// Waits until every record below `position` is durable on the device (under `Buffered`, the
/// index may hold records written but not yet synced).
async fn wait_synced<D: Disk>(inner: &Inner<D>, position: u64) -> Result<(), TradeError> {
    while inner.wal.synced_end() < position {
        if let Some(failure) = inner.accepted.borrow().failed.clone() {
            return Err(failure);
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Writes the checkpoint file and makes it the one an open starts from. Returns its bytes.
async fn write_file<D: Disk>(
    inner: &Inner<D>,
    snapshot: &ShardIndex,
    header: &Header,
    placed: &PlacedParts,
    runs: &[(RunStore, u64)],
) -> Result<u64, TradeError> {
    let disk = inner.wal.disk();
    let io = |op, name: &str, e| TradeError::Log(LogError::io(op, disk.path_of(name), e));
    let name = checkpoint::file_name(header.scalars.applied_end);
    match disk.remove(checkpoint::TEMP_NAME).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", checkpoint::TEMP_NAME, e)),
        _ => {}
    }
    let file = disk.create_for_fill(checkpoint::TEMP_NAME).await.map_err(|e| io("create", checkpoint::TEMP_NAME, e))?;
    let mut out = Vec::new();
    let mut written = 0u64;
    let mut encoder = Encoder::new(header, &mut out);
    let listed = runs.iter().map(|(store, id)| Item::Run(*store, *id));
    for (n, item) in listed.chain(snapshot.items()).enumerate() {
        let item = match item {
            Item::Trade(id, mut entry) if matches!(entry.created_at, CreatedAt::Log(_)) => {
                let (at, _) = placed.get(id).filter(|(at, _)| matches!(at, CreatedAt::Stored(_))).ok_or(
                    TradeError::BadRecord {
                        seq: entry.created_at.seq(),
                        reason: "a trade's created part is neither stored nor among those to store",
                    },
                )?;
                entry.created_at = at;
                Item::Trade(id, entry)
            }
            item => item,
        };
        if encoder.push(&item, &mut out) {
            written +=
                write_pages(&file, &mut out, written).await.map_err(|e| io("write", checkpoint::TEMP_NAME, e))?;
        }
        if n % ITEMS_PER_TURN == 0 {
            take_turn().await;
        }
    }
    encoder.finish(&mut out);
    written += write_pages(&file, &mut out, written).await.map_err(|e| io("write", checkpoint::TEMP_NAME, e))?;
    file.fdatasync().await.map_err(|e| io("fdatasync", checkpoint::TEMP_NAME, e))?;
    drop(file);
    disk.rename(checkpoint::TEMP_NAME, &name).await.map_err(|e| io("rename", &name, e))?;
    if let Err(e) = disk.sync_dir().await {
        // The file may stand under its name all the same. A checkpoint at a new position is
        // not in force, and the next one may remove the runs it lists: no open must load it.
        // (Best effort: if the removal fails too, the file stays, and only damage to every
        // newer checkpoint would make an open load it.) One that replaced the checkpoint in
        // force at its position (groups expired, nothing applied) is kept: the name holds the
        // one in force or its replacement, both of that position, and removing it would leave
        // the shard without the checkpoint memory says it has. The runs either lists are kept
        // (a merge between them may have replaced some) until a later checkpoint lists others.
        if inner.checkpoints.latest.get() != Some(header.scalars.applied_end) {
            let _ = disk.remove(&name).await;
        } else {
            let mut key_runs = inner.key_runs.borrow_mut();
            for (_, id) in runs {
                if !key_runs.latest_ids.contains(id) {
                    key_runs.latest_ids.push(*id);
                }
            }
        }
        return Err(io("sync directory", "", e));
    }
    Ok(written)
}

/// Writes whole pages at `offset` and empties `out`; returns the bytes written.
async fn write_pages<F: DiskFile>(file: &F, out: &mut Vec<u8>, offset: u64) -> std::io::Result<u64> {
    let len = out.len();
    let mut buf = file.alloc(len);
    buf.bytes_mut().copy_from_slice(out);
    let done = file.write_at(buf, offset).await?;
    if done != len {
        return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "short write of a checkpoint page"));
    }
    out.clear();
    Ok(len as u64)
}

/// Removes checkpoints older than the previous one, and the segments retention allows.
async fn apply_retention<D: Disk>(inner: &Inner<D>) -> Result<(), TradeError> {
    let checkpoints = &inner.checkpoints;
    let disk = inner.wal.disk();
    let io = |op, name: &str, e| TradeError::Log(LogError::io(op, disk.path_of(name), e));
    let Some(previous) = checkpoints.previous.get() else { return Ok(()) };
    let mut names = disk.list().map_err(|e| io("list", "", e))?;
    // In order, so that a simulated campaign's operations are the same on every run.
    names.sort_unstable();
    for name in names {
        if checkpoint::parse_file_name(&name).is_some_and(|position| position < previous) {
            disk.remove(&name).await.map_err(|e| io("remove", &name, e))?;
        }
    }
    disk.sync_dir().await.map_err(|e| io("sync directory", "", e))?;
    let groups_floor = inner.index.borrow().groups().map(|(_, group)| group.offset).min();
    let keep = keep_from(&inner.wal.segments(), previous, groups_floor, &checkpoints.upkeep, now_ms());
    inner.wal.remove_segments_below(keep).await?;
    inner.index.borrow_mut().forget_nack_floors_below(inner.wal.first_seq());
    Ok(())
}

/// A checkpoint read back: its header and the indexes it holds.
pub(crate) struct Loaded {
    pub header: Header,
    pub index: ShardIndex,
}

/// What an open found among the checkpoints.
pub(crate) struct Found {
    /// The newest checkpoint that reads back whole.
    pub loaded: Option<Loaded>,
    /// Why a newer one did not (its path and offset are in the error).
    pub passed_over: Option<TradeError>,
}

/// Reads the newest checkpoint in `disk` that reads back whole; a newer damaged one is passed
/// over and reported, so that the open can refuse it if the log no longer holds what the older
/// one needs.
pub(crate) async fn load_latest<D: Disk>(disk: &D, shard_id: u32) -> Result<Found, TradeError> {
    let names = disk.list().map_err(|e| TradeError::Log(LogError::io("list", disk.path_of(""), e)))?;
    let mut positions: Vec<u64> = names.iter().filter_map(|name| checkpoint::parse_file_name(name)).collect();
    positions.sort_unstable_by(|a, b| b.cmp(a));
    let mut passed_over = None;
    for position in positions {
        match load(disk, shard_id, position).await {
            Ok(loaded) => return Ok(Found { loaded: Some(loaded), passed_over }),
            Err(error @ TradeError::Log(LogError::Corruption { .. })) => {
                passed_over.get_or_insert(error);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(Found { loaded: None, passed_over })
}

async fn load<D: Disk>(disk: &D, shard_id: u32, position: u64) -> Result<Loaded, TradeError> {
    let name = checkpoint::file_name(position);
    let path = || disk.path_of(&name);
    let io = |op, e| TradeError::Log(LogError::io(op, path(), e));
    let file = disk.open(&name).await.map_err(|e| io("open", e))?;
    let size = file.size().await.map_err(|e| io("stat", e))?;
    let mut restorer = Restorer::new(shard_id, position);
    let mut at = 0u64;
    loop {
        let page = read_page(&file, at).await.map_err(|e| io("read", e))?;
        let corrupt = |reason| TradeError::Log(LogError::Corruption { path: path(), offset: at, reason });
        let len = checkpoint::page_payload_len(&page).map_err(corrupt)?;
        let end = at + checkpoint::page_bytes(len) as u64;
        match restorer.page(&page, end, size).map_err(corrupt)? {
            Restored::More => at = end,
            Restored::Done(header, index) => return Ok(Loaded { header, index: *index }),
        }
    }
}

/// The page at `at`, whole (its header announces its length).
async fn read_page<F: DiskFile>(file: &F, at: u64) -> std::io::Result<Vec<u8>> {
    let first = file.read_at(at, checkpoint::PAGE_ALIGN).await?;
    let Ok(len) = checkpoint::page_payload_len(&first) else { return Ok(first.to_vec()) };
    let bytes = checkpoint::page_bytes(len);
    if bytes <= first.len() {
        return Ok(first.to_vec());
    }
    Ok(file.read_at(at, bytes).await?.to_vec())
}
