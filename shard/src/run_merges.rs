//! Merging a shard's runs apart from its checkpoints.
//!
//! A checkpoint writes only new runs of level 0 (`key_runs.rs`), so that it completes, and the
//! keys it wrote leave memory, in a time set by the work since the last one. Merges rewrite
//! older runs, and the merge into a store's highest level rewrites every key it holds: done
//! inside a checkpoint, it would hold the checkpoint, and so the keys arriving meanwhile, for a
//! time that grows with history. Here they run after a checkpoint, on a task of their own,
//! while the next checkpoints go on.
//!
//! One merge at a time (`Checkpoints::merge_lock`). A merge takes the newest runs of a store
//! that its policy says to merge, writes and syncs their merge (and the directory) without
//! holding the shard's state, then replaces exactly those runs in the set in force, which
//! checkpoints have only appended to meanwhile. Lookups made against the runs before read
//! again (the generation changes). The merged run is listed by the next checkpoint; until a
//! kept checkpoint no longer lists them, the runs it replaced stay on disk, and the output of
//! a merge under way is never removed (`KeyRuns::kept`).

use std::rc::Rc;

use tradeshard_wal::disk::Disk;

use crate::error::{LogError, TradeError};
use crate::index::RunStore;
use crate::key_runs::take_id;
use crate::runs::{merge, Filter, Shape};
use crate::state::Inner;

/// Merges runs until no store's policy asks for one. Waits for a merge under way first. The
/// merges' turns are counted (`CheckpointStats::merge_busy_us`).
pub(crate) async fn merge_due<D: Disk>(inner: &Inner<D>) -> Result<(), TradeError> {
    let (merged, spent) = crate::turns::timed(merge_all_due(inner)).await;
    inner.checkpoints.count(|s| s.merge_busy_us += spent.as_micros() as u64);
    merged
}

async fn merge_all_due<D: Disk>(inner: &Inner<D>) -> Result<(), TradeError> {
    let checkpoints = &inner.checkpoints;
    let _one_at_a_time =
        checkpoints.merge_lock.acquire_permit(1).await.map_err(|_| TradeError::Log(LogError::Closed))?;
    loop {
        let planned = {
            let mut runs = inner.key_runs.borrow_mut();
            let plan = RunStore::ALL.into_iter().find_map(|store| {
                let (range, level, past_window) = runs.sets.store(store).merge_plan()?;
                Some((store, runs.sets.store(store).runs()[range].to_vec(), level, past_window))
            });
            plan.map(|(store, inputs, level, past_window)| {
                let id = take_id(&runs.next_id);
                runs.merging = Some(id);
                (store, inputs, level, past_window, id)
            })
        };
        let Some((store, inputs, level, past_window, id)) = planned else { return Ok(()) };
        let merged = merge_one(inner, store, &inputs, level, past_window, id).await;
        let mut runs = inner.key_runs.borrow_mut();
        runs.merging = None;
        let merged = merged?;
        let bytes = merged.file_bytes();
        runs.sets.store_mut(store).replace_runs(&inputs, Rc::new(merged))?;
        runs.generation += 1;
        checkpoints.count(|s| s.key_run_bytes_written += bytes);
    }
}

/// Writes the merge of `inputs` as run `id` at `level`, synced with its directory entry; runs
/// past the key window merge with the least filter, which nothing will ask.
async fn merge_one<D: Disk>(
    inner: &Inner<D>,
    store: RunStore,
    inputs: &[Rc<crate::runs::Run<D>>],
    level: u32,
    past_window: bool,
    id: u64,
) -> Result<crate::runs::Run<D>, TradeError> {
    let disk = inner.wal.disk();
    let shape = match past_window {
        true => Shape { filter: Filter::RangesOnly, ..store.shape() },
        false => store.shape(),
    };
    let merged = merge(disk, store.prefix(), id, level, shape, inputs).await?;
    disk.sync_dir().await.map_err(|e| TradeError::Log(LogError::io("sync directory", disk.path_of(""), e)))?;
    Ok(merged)
}

/// Starts merging on a task of its own, unless one is under way or none is due; the shard's
/// close cancels it.
pub(crate) fn spawn_if_due<D: Disk>(inner: &Rc<Inner<D>>) {
    let checkpoints = &inner.checkpoints;
    let due = {
        let runs = inner.key_runs.borrow();
        RunStore::ALL.into_iter().any(|store| runs.sets.store(store).merge_plan().is_some())
    };
    if !due || checkpoints.merge_running.get() || inner.accepted.borrow().closing {
        return;
    }
    checkpoints.merge_running.set(true);
    let task_inner = inner.clone();
    let task = glommio::spawn_local(async move {
        if merge_due(&task_inner).await.is_err() {
            // Nothing is lost: the runs stay as they are, and the next checkpoint tries again.
            task_inner.checkpoints.count(|s| s.failed += 1);
        }
        task_inner.checkpoints.merge_running.set(false);
    })
    .detach();
    *checkpoints.merge_task.borrow_mut() = Some(task);
}

/// Stops a merge under way (its unfinished file is listed nowhere, and goes with a later
/// checkpoint's removal of unlisted runs).
pub(crate) async fn cancel<D: Disk>(inner: &Inner<D>) {
    let task = inner.checkpoints.merge_task.borrow_mut().take();
    if let Some(task) = task {
        task.cancel();
        task.await;
    }
}
