//! What a checkpoint writes of the keys memory holds: one new sorted run of each store
//! (`key_runs.rs`), each store's entries sorted in turns and written before the next is
//! sorted, so that a checkpoint holds one store's entries at a time. Nothing is in force until
//! the checkpoint listing the runs is durable; merges come after it (`run_merges.rs`).

use std::cell::Cell;
use std::rc::Rc;

use tradeshard_wal::disk::Disk;

use crate::error::{LogError, TradeError};
use crate::index::RunStore;
use crate::index::ShardIndex;
use crate::key_runs::{take_id, user_key, RunSets};
use crate::prefetch::prefetch;
use crate::run_values::{
    activity_value, branch_key, branch_value, claim_value, order_value, refund_value, request_value,
};
use crate::runs::{KeysAge, Run, Value, VALUE_BYTES_MAX};
use crate::sort_room::SortRoom;
use crate::tcc_book::{ActivityEntry, BranchEntry};
use crate::tcc_ended::EndedActivity;
use crate::turns::{sorted_by_key, SortedInTurns};

/// The runs a checkpoint wrote, and what they cost.
pub(crate) struct WrittenRuns<D: Disk> {
    /// The sets the checkpoint lists: those in force when it began, and its new runs.
    pub sets: RunSets<D>,
    /// Its new runs, to add to the sets in force once it is durable (what they hold leaves
    /// memory with the frozen layers of the maps, `ShardIndex::settle_frozen_part`).
    pub new_runs: Vec<(RunStore, Rc<Run<D>>)>,
    /// Bytes and entries of the runs written.
    pub bytes: u64,
    pub entries: u64,
}

/// Writes the keys `snapshot` holds in memory as a new run of each store (after `sets`, the
/// runs in force; `age`, how old their keys are) and syncs the directory. Nothing is in force until the checkpoint listing
/// the runs is durable; merges come after it (`run_merges.rs`).
pub(crate) async fn write_runs<D: Disk>(
    disk: &D,
    sets: RunSets<D>,
    next_id: &Cell<u64>,
    snapshot: &ShardIndex,
    age: KeysAge,
    room: &SortRoom,
) -> Result<WrittenRuns<D>, TradeError> {
    let mut written = StoreWriter { disk, next_id, age, sets, new_runs: Vec::new(), bytes: 0, entries: 0 };
    // Each store sorted in turns (a checkpoint may hold millions of entries, `turns.rs`) and
    // written before the next is sorted, so that a checkpoint holds one store's entries at a
    // time. Order keys, claims, refunds and users' lists are sorted as their keys and what their
    // values are made of (an id, a refund, nothing), their 56-byte values made as the run is
    // written.
    let (order_count, claim_count, refund_count) = snapshot.recent_key_counts();
    let orders = sorted_by_key(snapshot.recent_orders().map(|(key, id, _)| (key, id)), order_count, room).await;
    written.write(RunStore::Orders, orders, nothing_ahead(), |id| order_value(*id)).await?;
    let claims = snapshot.recent_confirmed_claims().map(|(key, _, trade)| (key, trade));
    let claims = sorted_by_key(claims, claim_count, room).await;
    written.write(RunStore::Claims, claims, nothing_ahead(), |trade| claim_value(*trade)).await?;
    // A trade created since the last checkpoint has an order key and a place in its user's
    // list: about as many ids as order keys (the sort takes any first size).
    let users = snapshot.recent_users().flat_map(|(user, ids)| ids.iter().map(move |id| (user_key(user, *id), ())));
    let users = sorted_by_key(users, order_count, room).await;
    written.write(RunStore::Users, users, nothing_ahead(), |()| [0u8; VALUE_BYTES_MAX]).await?;
    let refunds = snapshot.recent_refunds().map(|(key, refund)| (key, *refund));
    written
        .write(RunStore::Refunds, sorted_by_key(refunds, refund_count, room).await, nothing_ahead(), refund_value)
        .await?;
    // Account requests make their values as they are collected, in the map's order (a copy of
    // their fields: made in the keys' order, each would be a miss). Ended branches and completed
    // activities are sorted as references to the snapshot's entries (32 bytes each, against 80
    // for a key and its value made), their values made as the run is written: in the keys'
    // order the entries are read at random, so each is prefetched some entries ahead (and an
    // activity's branch plans, which its value digests, a few after it).
    let requests = snapshot.accounts().recent_requests().map(|(key, entry)| (key, request_value(entry)));
    let requests = sorted_by_key(requests, snapshot.accounts().len().1, room).await;
    written.write(RunStore::Requests, requests, nothing_ahead(), |value| *value).await?;
    let tcc = snapshot.tcc();
    let (branch_count, activity_count) = tcc.len();
    let branches = tcc.ended_branches().map(|(named, entry)| (branch_key(named.0, named.1), (named, entry)));
    let branches = sorted_by_key(branches, branch_count, room).await;
    let branch = |(named, entry): &(&(u128, u16), &BranchEntry)| branch_value(named.0, named.1, entry);
    written.write(RunStore::Branches, branches, (|(_, entry)| prefetch(*entry), |_| {}), branch).await?;
    let activities = sorted_by_key(tcc.completed_activities(), activity_count, room).await;
    let plans = |entry: &&ActivityEntry| entry.branches.first().into_iter().for_each(prefetch);
    let activity = |entry: &&ActivityEntry| activity_value(&EndedActivity::of(entry).expect("collected as completed"));
    written.write(RunStore::Activities, activities, (|entry| prefetch(*entry), plans), activity).await?;
    let StoreWriter { sets, new_runs, bytes, entries, .. } = written;
    if bytes > 0 {
        disk.sync_dir().await.map_err(|e| TradeError::Log(LogError::io("sync directory", disk.path_of(""), e)))?;
    }
    Ok(WrittenRuns { sets, new_runs, bytes, entries })
}

/// For stores whose values are made of what their sorted entries hold: nothing to prefetch.
fn nothing_ahead<V>() -> (impl Fn(&V), impl Fn(&V)) {
    (|_: &V| {}, |_: &V| {})
}

/// What [`write_runs`] has written so far, and where to write the next store's run.
struct StoreWriter<'a, D: Disk> {
    disk: &'a D,
    next_id: &'a Cell<u64>,
    age: KeysAge,
    sets: RunSets<D>,
    new_runs: Vec<(RunStore, Rc<Run<D>>)>,
    bytes: u64,
    entries: u64,
}

impl<D: Disk> StoreWriter<'_, D> {
    /// Writes `entries` as a new run of `store`, each value made by `value` as it is written,
    /// `ahead`'s far and near calls given each entry some places before
    /// (`SortedInTurns::iter_ahead`; no run for no entries).
    async fn write<V>(
        &mut self,
        store: RunStore,
        entries: SortedInTurns<'_, V>,
        (far, near): (impl Fn(&V), impl Fn(&V)),
        value: impl Fn(&V) -> Value,
    ) -> Result<(), TradeError> {
        if entries.is_empty() {
            return Ok(());
        }
        let id = take_id(self.next_id);
        let count = entries.len() as u64;
        let values = entries.iter_ahead(far, near).map(|(key, entry)| (*key, value(entry)));
        let run = Run::write(self.disk, store.prefix(), id, 0, self.age, store.shape(), count, values).await?;
        let run = Rc::new(run);
        self.bytes += run.file_bytes();
        self.entries += count;
        self.sets.store_mut(store).push(run.clone());
        self.new_runs.push((store, run));
        Ok(())
    }
}
