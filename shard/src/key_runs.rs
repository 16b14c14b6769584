//! Where a shard keeps its order keys, refunds, account request numbers, users' lists and ended
//! flexible transactions once a checkpoint holds them: on disk, in sorted runs (`runs/`), so
//! that memory holds only what was added since the last checkpoint, not every trade's keys.
//!
//! Seven stores of runs per shard: `orders` (order key → the shard's trade with that order
//! number and its body hash), `claims` (order key → the confirmed claim of a buyer of another
//! shard: body hash, buyer, trade), `refunds` (refund key → the refund made under that request
//! number: trade, amount, the trade's refunded total after it, time), `requests` (account
//! request key → what the request did and the requester's balance after it), `branches` (an
//! ended branch of a flexible transaction), `activities` (a completed activity: an activity's id
//! is its initiator's request key, so one number is an account request or an activity, and a
//! request key is asked of both stores) and `users` (user and trade id → nothing: a user's
//! trades are a range of keys, in creation order, since a user's trade ids grow with time).
//! Pending claims, tried branches and activities under way are few and stay in memory and in
//! the checkpoint file. Each checkpoint writes what was applied since the one before as one new
//! run of each store (`checkpoint_runs.rs`); merges follow on a task of their own (`run_merges.rs`); the checkpoint
//! file lists the runs in force (`Item::Run`). A run is removed once it is not in force,
//! neither the latest checkpoint nor the one before it (the fallback) lists it, and no merge is
//! writing it.
//!
//! Asking for a key (an order key by a create, a refund key by a refund, a request key by an
//! account request or a step of an activity, a branch key by a step of a branch): the memory
//! first (the keys since the last checkpoint, the pending claims, the entries under way), then
//! the runs' Bloom filters; only a key some filter may hold is read from disk (one 4 KiB read per run that may hold it), by a
//! task, after which the request is checked again with what was read ([`RunRead`]). A read is
//! good only for the sets it was made against: a checkpoint that moves keys from memory into a
//! new run, or a merge, changes the generation, and a request holding an older read reads
//! again.
//!
//! Listing a user's trades: the ids in memory (newest), then each run's range of the user's
//! keys, newest run first, one 4 KiB read per run at least (a Bloom filter cannot tell of a
//! range), until the page is full.

use std::cell::Cell;
use std::rc::Rc;

use tradeshard_wal::disk::Disk;

use crate::accounts::RequestEntry;
use crate::error::{LogError, TradeError};
use crate::index::{ClaimEntry, RefundEntry, RunStore, ShardIndex};
use crate::run_values::{decode_activity, decode_branch, decode_claim, decode_order, decode_refund, decode_request};
use crate::runs::{BlockCache, KeysAge, Run, RunSet};
use crate::sort_room::SortRoom;
use crate::state::{Inner, ShardReply};
use crate::tcc_book::BranchEntry;
use crate::tcc_ended::EndedActivity;
use crate::trade::TradeId;

/// The runs of one shard's seven stores, oldest first each. A clone shares the runs.
#[derive(Clone)]
pub(crate) struct RunSets<D: Disk> {
    pub orders: RunSet<D>,
    pub claims: RunSet<D>,
    pub users: RunSet<D>,
    pub refunds: RunSet<D>,
    pub requests: RunSet<D>,
    pub branches: RunSet<D>,
    pub activities: RunSet<D>,
}

impl<D: Disk> Default for RunSets<D> {
    fn default() -> Self {
        let none = RunSet::default;
        RunSets {
            orders: none(),
            claims: none(),
            users: none(),
            refunds: none(),
            requests: none(),
            branches: none(),
            activities: none(),
        }
    }
}

impl<D: Disk> RunSets<D> {
    /// Each store with its runs.
    pub(crate) fn stores(&self) -> [(RunStore, &RunSet<D>); 7] {
        RunStore::ALL.map(|store| (store, self.store(store)))
    }

    pub(crate) fn store(&self, store: RunStore) -> &RunSet<D> {
        match store {
            RunStore::Orders => &self.orders,
            RunStore::Claims => &self.claims,
            RunStore::Users => &self.users,
            RunStore::Refunds => &self.refunds,
            RunStore::Requests => &self.requests,
            RunStore::Branches => &self.branches,
            RunStore::Activities => &self.activities,
        }
    }

    pub(crate) fn store_mut(&mut self, store: RunStore) -> &mut RunSet<D> {
        match store {
            RunStore::Orders => &mut self.orders,
            RunStore::Claims => &mut self.claims,
            RunStore::Users => &mut self.users,
            RunStore::Refunds => &mut self.refunds,
            RunStore::Requests => &mut self.requests,
            RunStore::Branches => &mut self.branches,
            RunStore::Activities => &mut self.activities,
        }
    }

    /// Entries of the store's newest run when a checkpoint wrote it (not a merge): what one
    /// interval between checkpoints moved out of memory.
    pub(crate) fn newest_written(&self, store: RunStore) -> u64 {
        self.store(store).runs().last().filter(|run| run.level() == 0).map_or(0, |run| run.entries())
    }

    /// Every run, as a checkpoint lists them.
    pub(crate) fn listed(&self) -> Vec<(RunStore, u64)> {
        let stores = self.stores();
        stores.into_iter().flat_map(|(store, set)| set.runs().iter().map(move |run| (store, run.id()))).collect()
    }
}

/// The runs of one shard's stores, and what reading them needs.
pub(crate) struct KeyRuns<D: Disk> {
    pub sets: RunSets<D>,
    /// Changes whenever the sets do (see the module's text).
    pub generation: u64,
    /// The id the next run written gets: ids only grow, across the stores, and an id is used
    /// once even when the checkpoint that wrote it failed (its file may already be listed by a
    /// checkpoint renamed into place before the failure).
    pub next_id: Rc<Cell<u64>>,
    /// The runs the latest checkpoint lists (merges may have replaced some in the sets since).
    pub latest_ids: Vec<u64>,
    /// The runs the checkpoint before the latest lists: kept while it is the fallback. At open,
    /// every run in the directory (the fallback there may list runs the latest merged away).
    pub previous_ids: Vec<u64>,
    /// The run a merge under way is writing.
    pub merging: Option<u64>,
    /// Keys read from the runs since open (retries, and the Bloom filters' false positives).
    pub reads: Cell<u64>,
    /// The runs' blocks read lately.
    pub blocks: Rc<BlockCache>,
    /// The memory the checkpoints sort their stores' entries in (`sort_room.rs`).
    pub sort_room: Rc<SortRoom>,
}

/// What the memory and the runs know of an order key's or a refund key's durable state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KeyState {
    /// A trade of this shard has it, with this body hash if it is known (memory knows it; a run
    /// does not: the trade's own fields tell).
    pub order: Option<(TradeId, Option<u64>)>,
    /// A buyer of another shard claimed it here.
    pub claim: Option<ClaimEntry>,
    /// A refund of a trade of this shard was made under it.
    pub refund: Option<RefundEntry>,
    /// An account request was made under it.
    pub request: Option<RequestEntry>,
    /// An activity begun under it completed (in memory only while under way or newly ended).
    pub activity: Option<EndedActivity>,
    /// The branch (in memory: in any state; in a run: ended).
    pub branch: Option<BranchEntry>,
}

/// What a key names, so which stores are asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// An order key: the orders and the claims.
    Order,
    /// A refund key: the refunds.
    Refund,
    /// An account request key, which is also an activity's id: the requests and the
    /// activities.
    Request,
    /// A branch of a flexible transaction (its key is `run_values::branch_key`): the branches.
    Branch { activity: u128, branch: u16 },
}

/// Which runs a lookup reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Those within the key window (`runs/set.rs`): a check of a request's key, for uniqueness
    /// or idempotency, and what answers a request made under it.
    Window,
    /// Every run: finding a trade by an order number however old.
    All,
}

/// A key's state as read from the runs, good while the runs are those of `generation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunRead {
    pub key: u128,
    kind: KeyKind,
    reach: Reach,
    generation: u64,
    state: KeyState,
}

/// What asking the memory found.
// Known is large and MustRead empty, but a lookup is consumed where it is made: boxing the
// state would allocate on every create, refund and step that asks.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Lookup {
    Known(KeyState),
    /// A run may hold the key: read it ([`KeyRuns::read`]) and ask again with the read.
    MustRead,
}

impl<D: Disk> KeyRuns<D> {
    /// The runs a loaded checkpoint lists (oldest first, per store), opened, those of unknown
    /// age taken as `assumed`; `next_id` is above every run file in the directory, listed or not.
    /// Their blocks read lately are kept in `block_cache_bytes` of memory.
    pub(crate) async fn open(
        disk: &D,
        listed: &[(RunStore, u64)],
        assumed: KeysAge,
        block_cache_bytes: u64,
    ) -> Result<KeyRuns<D>, TradeError> {
        let mut sets = RunSets::default();
        for &(store, id) in listed {
            let mut run = Run::open(disk, store.prefix(), id, store.shape().value_bytes).await?;
            run.assume_age(assumed);
            sets.store_mut(store).push(Rc::new(run));
        }
        let on_disk = disk.list().map_err(|e| TradeError::Log(LogError::io("list", disk.path_of(""), e)))?;
        let on_disk: Vec<u64> = on_disk.iter().filter_map(|name| run_file_id::<D>(name)).collect();
        let highest = on_disk.iter().copied().chain(listed.iter().map(|(_, id)| *id)).max().unwrap_or(0);
        let next_id = highest.checked_add(1).ok_or_else(|| {
            TradeError::Log(LogError::Corruption {
                path: disk.path_of(""),
                offset: 0,
                reason: "a run file with the highest id there is",
            })
        })?;
        Ok(KeyRuns {
            sets,
            generation: 0,
            next_id: Rc::new(Cell::new(next_id)),
            latest_ids: listed.iter().map(|(_, id)| *id).collect(),
            previous_ids: on_disk,
            merging: None,
            reads: Cell::new(0),
            blocks: Rc::new(BlockCache::new(block_cache_bytes)),
            sort_room: Rc::default(),
        })
    }

    /// Reads the Bloom filters an open left unread (version 5 runs read their page directory
    /// alone, version 4 runs their fence keys), and the fence keys of version 5 runs: called
    /// once the open has let the runs past the key window go and left the fence keys of old
    /// users' runs on disk, so that only the runs within the window read theirs.
    pub(crate) async fn read_filters(&self) -> Result<(), TradeError> {
        for (_, set) in self.sets.stores() {
            for run in set.runs() {
                run.read_filter().await?;
            }
        }
        Ok(())
    }

    /// The runs no removal may take now: those in force, those the latest checkpoint and the
    /// one before it list, the one a merge is writing, and (`ids >= .1`) any begun later.
    pub(crate) fn kept(&self) -> (Vec<u64>, u64) {
        let in_force = self.sets.listed().into_iter().map(|(_, id)| id);
        let listed = self.latest_ids.iter().chain(&self.previous_ids).copied();
        (in_force.chain(listed).chain(self.merging).collect(), self.next_id.get())
    }

    /// What the memory (`index`) and the Bloom filters of the runs within the key window tell
    /// of `key`, a key of `kind`, or that the runs must be read; `read`, a read of the runs made
    /// before, counts if the runs are still those it read.
    pub(crate) fn lookup(&self, index: &ShardIndex, key: u128, kind: KeyKind, read: Option<&RunRead>) -> Lookup {
        self.lookup_reaching(index, key, kind, Reach::Window, read)
    }

    /// [`lookup`](Self::lookup) reaching the runs `reach` says.
    pub(crate) fn lookup_reaching(
        &self,
        index: &ShardIndex,
        key: u128,
        kind: KeyKind,
        reach: Reach,
        read: Option<&RunRead>,
    ) -> Lookup {
        let in_memory = match kind {
            KeyKind::Order => KeyState {
                order: index.by_order(key).map(|(id, body)| (id, Some(body))),
                claim: index.claim(key).copied(),
                ..KeyState::default()
            },
            KeyKind::Refund => KeyState { refund: index.refund(key).copied(), ..KeyState::default() },
            KeyKind::Request => KeyState { request: index.accounts().request(key).copied(), ..KeyState::default() },
            KeyKind::Branch { activity, branch } => {
                KeyState { branch: index.tcc().branch(activity, branch), ..KeyState::default() }
            }
        };
        if in_memory != KeyState::default() {
            return Lookup::Known(in_memory);
        }
        let may_hold = match reach {
            Reach::Window => {
                let h = crate::runs::key_hash(key);
                self.stores_of(key, kind).any(|(set, asked)| match asked == key {
                    true => set.may_hold_hashed(h),
                    false => set.may_hold_hashed(crate::runs::key_hash(asked)),
                })
            }
            Reach::All => self.stores_of(key, kind).any(|(set, asked)| set.may_hold_any(asked)),
        };
        match read {
            Some(read) if (read.key, read.kind, read.reach, read.generation) == (key, kind, reach, self.generation) => {
                Lookup::Known(read.state)
            }
            _ if may_hold => Lookup::MustRead,
            _ => Lookup::Known(KeyState::default()),
        }
    }

    /// The stores that may hold `key`, a key of `kind`, each with the key it is asked by: a
    /// branch numbered 0 is also asked of the activities, by its activity's id, since a
    /// completed activity keeps the first branch its initiator's shard held
    /// (`EndedActivity::first_ended`).
    fn stores_of(&self, key: u128, kind: KeyKind) -> impl Iterator<Item = (&RunSet<D>, u128)> {
        let (first, second) = match kind {
            KeyKind::Order => (&self.sets.orders, Some((&self.sets.claims, key))),
            KeyKind::Refund => (&self.sets.refunds, None),
            KeyKind::Request => (&self.sets.requests, Some((&self.sets.activities, key))),
            KeyKind::Branch { activity, branch: 0 } => (&self.sets.branches, Some((&self.sets.activities, activity))),
            KeyKind::Branch { .. } => (&self.sets.branches, None),
        };
        std::iter::once((first, key)).chain(second)
    }

    /// Asks for the lines of `key` in the filters a check of it as a new key reads, without
    /// waiting: run over a batch of steps before their checks (`tcc_write.rs`), so that each
    /// check finds its lines in the cache rather than waiting for a miss in every run.
    pub(crate) fn prefetch_filters(&self, key: u128, kind: KeyKind) {
        let h = crate::runs::key_hash(key);
        self.stores_of(key, kind).for_each(|(set, asked)| match asked == key {
            true => set.prefetch_filter_lines(h),
            false => set.prefetch_filter_lines(crate::runs::key_hash(asked)),
        });
    }

    /// Reads `key`, a key of `kind`, from the runs in force now that `reach` says; the future
    /// holds no borrow of `self`.
    pub(crate) fn read(
        &self,
        key: u128,
        kind: KeyKind,
        reach: Reach,
    ) -> impl std::future::Future<Output = Result<RunRead, TradeError>> + 'static {
        self.reads.set(self.reads.get() + 1);
        let generation = self.generation;
        let mut stores =
            self.stores_of(key, kind).map(|(set, asked)| set.get_reaching(asked, reach == Reach::All, &self.blocks));
        let (first, second) = (stores.next().expect("every kind has a store"), stores.next());
        // An order number used again after it left the window may be in both stores, its old
        // use past the window: what the runs within it hold is the newer, and wins.
        let within = (kind == KeyKind::Order && reach == Reach::All).then(|| {
            let within = |set: &RunSet<D>| set.get_reaching(key, false, &self.blocks);
            (within(&self.sets.orders), within(&self.sets.claims))
        });
        async move {
            if let Some((order, claim)) = within {
                let (order, claim) = (order.await?, claim.await?);
                if order.is_some() || claim.is_some() {
                    let state = KeyState {
                        order: order.as_ref().map(decode_order).transpose()?,
                        claim: claim.as_ref().map(decode_claim).transpose()?,
                        ..KeyState::default()
                    };
                    return Ok(RunRead { key, kind, reach, generation, state });
                }
            }
            let first = first.await?;
            let state = match (kind, second) {
                (KeyKind::Order, Some(claim)) => KeyState {
                    order: first.as_ref().map(decode_order).transpose()?,
                    claim: claim.await?.as_ref().map(decode_claim).transpose()?,
                    ..KeyState::default()
                },
                (KeyKind::Request, Some(activity)) => KeyState {
                    request: first.as_ref().map(decode_request).transpose()?,
                    activity: activity.await?.as_ref().map(decode_activity).transpose()?,
                    ..KeyState::default()
                },
                (KeyKind::Branch { activity, branch }, kept) => {
                    let mut found = first.as_ref().map(|value| decode_branch(value, activity, branch)).transpose()?;
                    if let (None, Some(kept)) = (found, kept) {
                        let ended = kept.await?.as_ref().map(decode_activity).transpose()?;
                        found = ended.and_then(|ended| ended.branch(branch));
                    }
                    KeyState { branch: found, ..KeyState::default() }
                }
                _ => KeyState { refund: first.as_ref().map(decode_refund).transpose()?, ..KeyState::default() },
            };
            Ok(RunRead { key, kind, reach, generation, state })
        }
    }
}

/// Reads `key`, a key of `kind`, from the runs on disk within the key window on a task, then
/// calls `then` with what was read (or answers `reply` with why it could not be). The caller
/// holds no borrow of the shard's state: the task may start at once.
pub(crate) fn read_then<D: Disk, R: 'static>(
    inner: &Rc<Inner<D>>,
    key: u128,
    kind: KeyKind,
    reply: ShardReply<R>,
    then: impl FnOnce(&Rc<Inner<D>>, ShardReply<R>, RunRead) + 'static,
) {
    read_reaching_then(inner, key, kind, Reach::Window, reply, then)
}

/// [`read_then`] reaching the runs `reach` says.
pub(crate) fn read_reaching_then<D: Disk, R: 'static>(
    inner: &Rc<Inner<D>>,
    key: u128,
    kind: KeyKind,
    reach: Reach,
    reply: ShardReply<R>,
    then: impl FnOnce(&Rc<Inner<D>>, ShardReply<R>, RunRead) + 'static,
) {
    // Boxed: the task may start at once on this stack, and `then` may come back here for the
    // next key a transaction must read, so a read's whole future (pages, blocks, several runs)
    // would be on the stack once for every such key.
    let reading = Box::pin(inner.key_runs.borrow().read(key, kind, reach));
    let inner = inner.clone();
    let task = async move {
        match reading.await {
            Ok(read) => then(&inner, reply, read),
            Err(error) => reply.send(Err(error)),
        }
    };
    glommio::spawn_local(task).detach();
}

/// The key of a user's trade in the runs of users: the user, then the trade id, so that a
/// user's trades are one range, in creation order.
pub(crate) fn user_key(user_id: u64, id: TradeId) -> u128 {
    (u128::from(user_id) << 64) | u128::from(id.0)
}

/// A user's trades newest first, at most `limit`, older than `before` if given: those still in
/// `index`'s memory, then those in `users`' runs (taken together with the memory, so that a
/// checkpoint between the two neither hides nor repeats a trade). Borrows neither.
pub(crate) fn user_trades<D: Disk>(
    index: &ShardIndex,
    users: &RunSet<D>,
    blocks: &Rc<BlockCache>,
    user_id: u64,
    limit: usize,
    before: Option<TradeId>,
) -> impl std::future::Future<Output = Result<Vec<TradeId>, TradeError>> + 'static {
    let recent = index.user_trades(user_id);
    let below = before.map_or(recent.len(), |before| recent.partition_point(|id| id.0 < before.0));
    let mut ids: Vec<TradeId> = recent[..below].iter().rev().take(limit).copied().collect();
    // The runs hold only trades older than those in memory; while a checkpoint forgets what
    // its runs now hold, both have them, and the bound keeps a listing from naming one twice.
    let below_memory = recent.first().map(|oldest| oldest.0);
    let high = match before.map(|before| before.0).into_iter().chain(below_memory).min() {
        Some(0) => None,
        Some(bound) => Some(user_key(user_id, TradeId(bound - 1))),
        None => Some(user_key(user_id, TradeId(u64::MAX))),
    };
    let from_runs = (ids.len() < limit)
        .then_some(high)
        .flatten()
        .map(|high| users.keys_down(user_key(user_id, TradeId(0)), high, limit - ids.len(), blocks));
    async move {
        if let Some(from_runs) = from_runs {
            ids.extend(from_runs.await?.into_iter().map(|key| TradeId(key as u64)));
        }
        Ok(ids)
    }
}

/// The id of a run file of any store, or `None` for any other name.
fn run_file_id<D: Disk>(name: &str) -> Option<u64> {
    RunStore::ALL.into_iter().find_map(|store| Run::<D>::parse_file_name(store.prefix(), name))
}

/// The next run id, used up now whatever becomes of the run.
pub(crate) fn take_id(next_id: &Cell<u64>) -> u64 {
    let id = next_id.get();
    next_id.set(id + 1);
    id
}

/// Removes the run files below id `below` whose ids `kept` does not hold (runs merged away two
/// checkpoints ago, runs of checkpoints that did not complete, merges cut short); a run of an
/// id at or above `below` was begun after `kept` was taken.
pub(crate) async fn remove_unlisted<D: Disk>(disk: &D, kept: &[u64], below: u64) -> Result<(), TradeError> {
    let io = |op, name: &str, e| TradeError::Log(LogError::io(op, disk.path_of(name), e));
    let mut names = disk.list().map_err(|e| io("list", "", e))?;
    // In order, so that a simulated campaign's operations are the same on every run.
    names.sort_unstable();
    for name in names {
        if run_file_id::<D>(&name).is_some_and(|id| id < below && !kept.contains(&id)) {
            disk.remove(&name).await.map_err(|e| io("remove", &name, e))?;
        }
    }
    Ok(())
}
