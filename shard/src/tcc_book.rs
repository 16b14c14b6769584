//! What a shard holds of flexible transactions: the branches it takes part in (by activity
//! and branch), the activities it initiated, and the money in the hands of activities
//! (confirmed from a payer, not yet confirmed to a payee). The rules of the steps that change
//! them are in `tcc_rules.rs`.
//!
//! Memory: a branch 64 bytes in its map, an activity 112 with the plans of up to two branches
//! inside it (more go to the heap, 32 bytes a plan), while they are under way. Once ended (a
//! branch confirmed, cancelled or fenced; an activity completed) they change no more, and the
//! next checkpoint moves them to runs on disk (`key_runs.rs`), where late and repeated steps
//! find them: the write path reads them into its scratch view
//! (`MoneyView::ended_activity`, and the branch itself) and leaves the steps they answer out
//! of the record it writes, so no record applied to the durable books ever names an entry that
//! left memory. A settlement's credit is forgotten by its trade's shard once completed
//! ([`DECIDED_AT_BEGIN`]). An activity's entry keeps its first branch when its own shard holds
//! it (a transfer's payer, [`ActivityEntry::keeps_branch`]), from the branch's Try on: one
//! entry instead of two, in memory, in the checkpoint's sort and in the runs, and one lookup
//! for each step of the payer's that goes with its activity's own.

use std::collections::BTreeMap;

use crate::currency::Currency;
use crate::layered::LayeredMap;
use crate::partitioned::{PartitionedMap, PARTS};
use crate::tcc::{BranchAction, BranchPlans, Decision, Step};
use crate::tcc_aside::EndedAside;

/// Where a branch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BranchState {
    /// Its Try reserved what its action needs.
    Tried,
    Confirmed,
    /// Cancelled after its Try: the reservation was released.
    Cancelled,
    /// Cancelled before any Try: nothing was reserved, and a later Try is refused.
    Fenced,
}

impl BranchState {
    /// Its code in checkpoints and runs: 1 tried, 2 confirmed, 3 cancelled, 4 fenced.
    pub(crate) fn code(self) -> u8 {
        match self {
            BranchState::Tried => 1,
            BranchState::Confirmed => 2,
            BranchState::Cancelled => 3,
            BranchState::Fenced => 4,
        }
    }

    pub(crate) fn of(code: u8) -> Option<BranchState> {
        match code {
            1 => Some(BranchState::Tried),
            2 => Some(BranchState::Confirmed),
            3 => Some(BranchState::Cancelled),
            4 => Some(BranchState::Fenced),
            _ => None,
        }
    }

    /// No step changes it any more.
    fn ended(self) -> bool {
        self != BranchState::Tried
    }
}

/// A branch this shard takes part in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BranchEntry {
    pub action: BranchAction,
    pub state: BranchState,
}

/// The deadline of an activity recorded already decided to commit (the credit of a settled
/// trade paid from a balance, `trade_money.rs`): it has nothing to time out. Once completed it
/// is forgotten, so that settlements leave nothing in memory or in checkpoints in the trade's
/// shard: the trade's Settled state answers a repeated settle, and the credit's branch in the
/// merchant's shard answers any late step.
pub(crate) const DECIDED_AT_BEGIN: u64 = 0;

/// Where an activity stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ActivityState {
    /// Begun, its Tries under way; cancelled once past its deadline.
    Open,
    /// Decided; its Confirms or Cancels under way.
    Decided(Decision),
    /// Every branch answered the decision.
    Completed(Decision),
}

/// An activity this shard initiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityEntry {
    pub branches: BranchPlans,
    pub deadline_ms: u64,
    pub begun_ms: u64,
    pub state: ActivityState,
    /// The state of its first branch when this entry keeps that branch
    /// ([`keeps_branch`](Self::keeps_branch)): a transfer's payer, whose Try goes with the
    /// Begin, then has no entry of its own, from its Try to the runs. `None`: the branches keep
    /// it, if this shard holds it at all.
    pub first_state: Option<BranchState>,
}

impl ActivityEntry {
    /// Its first branch when the entry keeps it ([`first_state`](Self::first_state)); only a
    /// first branch numbered 0 is kept, so that a lookup of any other branch asks no more than
    /// the branches.
    pub(crate) fn first_branch(&self) -> Option<BranchEntry> {
        let plan = self.branches.first().filter(|plan| plan.branch == 0)?;
        Some(BranchEntry { action: plan.action, state: self.first_state? })
    }

    /// Whether this entry keeps branch `branch` of its activity, changed to `entry`: the first
    /// branch, numbered 0, with its plan's action, unless it has an entry of its own already
    /// (`elsewhere`, asked only while this entry keeps no branch: a Cancel that fenced the
    /// branch before the Begin, a Try made before it). Every view of the books decides so,
    /// which keeps the entries a record leaves the same whoever applies it.
    pub(crate) fn keeps_branch(&self, branch: u16, entry: &BranchEntry, elsewhere: impl FnOnce() -> bool) -> bool {
        branch == 0
            && self.branches.first().is_some_and(|plan| plan.branch == 0 && plan.action == entry.action)
            && (self.first_state.is_some() || !elsewhere())
    }

    /// The first branch this entry, about to be set, keeps and must give an entry of its own:
    /// one still tried when the activity completes, or any when a completed settlement's credit
    /// is forgotten ([`DECIDED_AT_BEGIN`]). Only raw steps make either (a completion comes after
    /// every branch answered), and the runs then take the activity without its branch.
    pub(crate) fn give_out_first_branch(&mut self) -> Option<BranchEntry> {
        let give_out = match self.state {
            ActivityState::Completed(_) if self.deadline_ms == DECIDED_AT_BEGIN => true,
            ActivityState::Completed(_) => self.first_state == Some(BranchState::Tried),
            _ => false,
        };
        let branch = self.first_branch().filter(|_| give_out)?;
        self.first_state = None;
        Some(branch)
    }
}

/// What a step answers: its outcome, and whether it repeated one already recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepAnswer {
    pub outcome: StepOutcome,
    pub repeat: bool,
}

/// The state a step left (or found, for a repeat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// The activity is recorded; a repeat answers where it stands.
    Begun(ActivityState),
    Branch(BranchState),
    /// The decision in force (the first one recorded).
    Decided(Decision),
    Completed(Decision),
}

/// One entry of the book, as a checkpoint holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TccItem {
    Branch(u128, u16, BranchEntry),
    Activity(u128, ActivityEntry),
    InTransit(Currency, i128),
}

/// The durable branches, activities and money in transit of one shard. Cloning shares the
/// maps with the clone; a checkpoint freezes the maps of ended entries first
/// ([`TccBook::freeze`]), so that the writes while its snapshot lives copy nothing
/// (`layered.rs`).
///
/// An entry is in one of two maps: under way (a branch tried, an activity not completed) or
/// ended. The entries under way are few (those of the activities in flight, and any in doubt)
/// and take nearly every lookup and change (each step of an activity after its first finds
/// its entry there, twice: the write path's check and the committer's install), so their maps
/// stay in the processor's cache; the ended ones gather by the million between two
/// checkpoints, and are met once, when their entry ends and moves there.
#[derive(Default, Clone)]
pub(crate) struct TccBook {
    /// Branches tried, neither confirmed nor cancelled.
    branches_under_way: PartitionedMap<(u128, u16), BranchEntry>,
    /// Activities begun or decided and not completed: what recovery drives on.
    activities_under_way: PartitionedMap<u128, ActivityEntry>,
    /// Branches ended (confirmed, cancelled, fenced) since the last checkpoint took them.
    branches: LayeredMap<(u128, u16), BranchEntry>,
    /// Activities completed since the last checkpoint took them.
    activities: LayeredMap<u128, ActivityEntry>,
    in_transit: BTreeMap<Currency, i128>,
}

impl TccBook {
    /// Room for `branches` and `activities` more ended (an open's replay:
    /// `ShardIndex::reserve_recent`).
    pub(crate) fn reserve(&mut self, branches: usize, activities: usize) {
        self.branches.reserve(branches);
        self.activities.reserve(activities);
    }

    pub(crate) fn branch(&self, activity: u128, branch: u16) -> Option<BranchEntry> {
        // A first branch is asked of its activity's entry first: a transfer's payer is kept
        // there, in the shard that holds both (`ActivityEntry::keeps_branch`).
        if branch == 0 {
            if let Some(entry) = self.activity(activity).and_then(ActivityEntry::first_branch) {
                return Some(entry);
            }
        }
        self.branch_of_its_own(activity, branch).copied()
    }

    /// The branch's entry of its own (not one its activity's entry keeps), under way first.
    fn branch_of_its_own(&self, activity: u128, branch: u16) -> Option<&BranchEntry> {
        let key = (activity, branch);
        self.branches_under_way.get(&key).or_else(|| self.branches.get(&key))
    }

    /// Whether the branch has an entry of its own (not one its activity's entry keeps).
    pub(crate) fn branch_on_its_own(&self, activity: u128, branch: u16) -> bool {
        self.branch_of_its_own(activity, branch).is_some()
    }

    /// Looks up the entry `step` names and drops the answer: run over a batch of steps before
    /// their checks or applies, so that the cache misses of the lookups (maps of millions of
    /// entries) overlap instead of coming one after another.
    pub(crate) fn touch(&self, step: &Step) {
        match *step {
            // A first branch is asked of its activity first, and a Try reads its activity's
            // decision (a payee's, in a shard that does not hold its activity, misses there);
            // a Try or a Cancel that finds no branch kept asks the branches too (a Confirm of a
            // transfer's payer does not).
            Step::Try { activity, branch, .. } => {
                std::hint::black_box(self.activity(activity));
                std::hint::black_box(self.branch_of_its_own(activity, branch));
            }
            Step::Cancel { activity, branch, .. } => {
                if branch == 0 {
                    std::hint::black_box(self.activity(activity));
                }
                std::hint::black_box(self.branch_of_its_own(activity, branch));
            }
            Step::Confirm { activity, branch: 0 } => {
                std::hint::black_box(self.activity(activity));
            }
            Step::Confirm { activity, branch } => {
                std::hint::black_box(self.branch_of_its_own(activity, branch));
            }
            Step::Begin { activity, .. } | Step::Decide { activity, .. } | Step::Complete { activity } => {
                std::hint::black_box(self.activity(activity));
            }
        }
    }

    /// Looks up where [`put_branch`](Self::put_branch) will put `entry` and drops the answer
    /// (the committer's lookups ahead, `TccChanges::touch`): the map of branches under way, and
    /// the map of ended ones only for an entry that ends.
    pub(crate) fn touch_branch_install(&self, activity: u128, branch: u16, entry: &BranchEntry) {
        let key = (activity, branch);
        std::hint::black_box(self.branches_under_way.get(&key));
        if entry.state.ended() {
            std::hint::black_box(self.branches.get(&key));
        }
    }

    /// [`touch_branch_install`](Self::touch_branch_install) for [`set_activity`](Self::set_activity)
    /// (a settlement's credit, completed, is forgotten, not moved: `DECIDED_AT_BEGIN`).
    pub(crate) fn touch_activity_install(&self, activity: u128, entry: &ActivityEntry) {
        std::hint::black_box(self.activities_under_way.get(&activity));
        if matches!(entry.state, ActivityState::Completed(_)) && entry.deadline_ms != DECIDED_AT_BEGIN {
            std::hint::black_box(self.activities.get(&activity));
        }
    }

    /// Sets a branch where [`ActivityEntry::keeps_branch`] says: the rules' way, for a replay
    /// and a restore.
    pub(crate) fn set_branch(&mut self, activity: u128, branch: u16, entry: BranchEntry) {
        self.set_branch_or_aside(activity, branch, entry, None)
    }

    /// [`set_branch`](Self::set_branch), with an ended branch set `aside` when given (an open's
    /// replay, `tcc_aside.rs`).
    pub(crate) fn set_branch_or_aside(
        &mut self,
        activity: u128,
        branch: u16,
        entry: BranchEntry,
        mut aside: Option<&mut EndedAside>,
    ) {
        if let Some(aside) = aside.as_deref_mut() {
            // A completed activity set aside keeps its first branch as it would in memory (a
            // fence of a branch it never kept, `tcc_aside.rs`).
            if branch == 0
                && self.activity(activity).is_none()
                && aside.keep_first_branch(activity, &entry, || self.branch_on_its_own(activity, 0))
            {
                return;
            }
        }
        let kept = self
            .activity(activity)
            .is_some_and(|held| held.keeps_branch(branch, &entry, || self.branch_on_its_own(activity, branch)));
        match kept {
            true => {
                let held = match self.activities_under_way.get_mut(&activity) {
                    Some(held) => held,
                    None => self.activities.get_mut(&activity).expect("the entry just read"),
                };
                held.first_state = Some(entry.state);
            }
            false => self.put_branch_or_aside(activity, branch, entry, aside),
        }
    }

    /// Sets a branch in an entry of its own, where the write path's check put it (the
    /// committer's install: the check decided as the rules do, `tcc_write::Scratch`).
    pub(crate) fn put_branch(&mut self, activity: u128, branch: u16, entry: BranchEntry) {
        self.put_branch_or_aside(activity, branch, entry, None)
    }

    fn put_branch_or_aside(&mut self, activity: u128, branch: u16, entry: BranchEntry, aside: Option<&mut EndedAside>) {
        let key = (activity, branch);
        match entry.state.ended() {
            true => {
                self.branches_under_way.remove(&key);
                match aside {
                    Some(aside) => aside.branch(key, entry),
                    None => self.branches.insert(key, entry),
                }
            }
            false => {
                debug_assert!(self.branches.get(&key).is_none(), "an ended branch under way again");
                self.branches_under_way.insert(key, entry);
            }
        }
    }

    /// Freezes the ended branches and activities held, for a checkpoint's snapshot
    /// (`layered.rs`); the snapshot's clone of the maps under way shares their parts.
    pub(crate) fn freeze(&mut self) {
        self.branches.freeze();
        self.activities.freeze();
    }

    /// Part `part` of what came since a failed checkpoint moved down (`LayeredMap::fold_live_part`).
    pub(crate) fn fold_live_part(&mut self, part: usize) {
        self.branches.fold_live_part(part);
        self.activities.fold_live_part(part);
    }

    /// Once the checkpoint of the last freeze is durable, its runs holding the ended branches
    /// and completed activities: drops part `part` (`0..SETTLE_PARTS`) of what was frozen (all
    /// of it ended: the entries under way are in maps of their own); returns the entries the
    /// part held.
    pub(crate) fn settle_part(&mut self, part: usize) -> usize {
        self.branches.settle_part(part, |_| false) + self.activities.settle_part(part, |_| false)
    }

    /// Gives back the room its maps keep for the next interval (`LayeredMap::release_room`).
    pub(crate) fn release_room(&mut self) {
        self.branches.release_room();
        self.activities.release_room();
    }

    /// Inserts the ended entries set aside, part by part, and empties `aside`.
    pub(crate) fn insert_aside(&mut self, aside: &mut EndedAside) {
        for part in 0..PARTS {
            let (branches, activities) = aside.take_part(part);
            for (key, entry) in branches {
                self.branches.insert(key, entry);
            }
            for (activity, entry) in activities {
                self.activities.insert(activity, entry);
            }
        }
    }

    /// Whether a frozen layer waits for [`settle_part`](Self::settle_part) (it goes with its
    /// last part).
    pub(crate) fn has_frozen(&self) -> bool {
        self.branches.has_frozen() || self.activities.has_frozen()
    }

    pub(crate) fn activity(&self, activity: u128) -> Option<&ActivityEntry> {
        self.activities_under_way.get(&activity).or_else(|| self.activities.get(&activity))
    }

    pub(crate) fn set_activity(&mut self, activity: u128, entry: ActivityEntry) {
        self.set_activity_or_aside(activity, entry, None)
    }

    /// [`set_activity`](Self::set_activity), with a completed activity (and an ended branch it
    /// gives out) set `aside` when given (an open's replay, `tcc_aside.rs`).
    pub(crate) fn set_activity_or_aside(
        &mut self,
        activity: u128,
        mut entry: ActivityEntry,
        mut aside: Option<&mut EndedAside>,
    ) {
        if let Some(branch) = entry.give_out_first_branch() {
            self.put_branch_or_aside(activity, 0, branch, aside.as_deref_mut());
        }
        match entry.state {
            ActivityState::Completed(_) if entry.deadline_ms == DECIDED_AT_BEGIN => {
                // A settlement's credit, completed: forgotten (see `DECIDED_AT_BEGIN`). It was
                // under way until now: the ended ones never hold it.
                self.activities_under_way.remove(&activity);
                debug_assert!(self.activities.get(&activity).is_none(), "a forgotten activity among the ended");
            }
            ActivityState::Completed(_) => {
                self.activities_under_way.remove(&activity);
                match aside {
                    Some(aside) => aside.activity(activity, entry),
                    None => self.activities.insert(activity, entry),
                }
            }
            _ => {
                debug_assert!(self.activities.get(&activity).is_none(), "a completed activity under way again");
                self.activities_under_way.insert(activity, entry);
            }
        }
    }

    pub(crate) fn add_in_transit(&mut self, currency: Currency, amount: i128) {
        *self.in_transit.entry(currency).or_default() += amount;
    }

    /// Per currency, money confirmed out of this shard's payers less money confirmed into its
    /// payees (negative when its payees were paid before the payers' shards confirmed).
    pub(crate) fn in_transit(&self) -> &BTreeMap<Currency, i128> {
        &self.in_transit
    }

    /// The activities this shard initiated that are not completed, with their entries, in no
    /// order.
    pub(crate) fn unfinished(&self) -> impl Iterator<Item = (u128, &ActivityEntry)> + '_ {
        self.activities_under_way.iter().map(|(id, entry)| (*id, entry))
    }

    /// Bytes of the branches and activities held (plans on the heap, past two, not counted;
    /// while a checkpoint is under way, an entry changed since its snapshot counts twice): a
    /// checkpoint moves the ended ones to runs.
    pub(crate) fn entry_bytes(&self) -> u64 {
        fn bytes<K, V>(entries: usize) -> u64 {
            entries as u64 * (std::mem::size_of::<(K, V)>() as u64 + 1)
        }
        self.branches.entry_bytes()
            + self.activities.entry_bytes()
            + bytes::<(u128, u16), BranchEntry>(self.branches_under_way.len())
            + bytes::<u128, ActivityEntry>(self.activities_under_way.len())
    }

    /// Branches and activities held.
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.branches.len() + self.branches_under_way.len(), self.activities.len() + self.activities_under_way.len())
    }

    /// The ended branches held: a checkpoint moves them to runs.
    pub(crate) fn ended_branches(&self) -> impl Iterator<Item = (&(u128, u16), &BranchEntry)> + '_ {
        self.branches.iter()
    }

    /// The completed activities held (each has a [`crate::tcc_ended::EndedActivity::of`]): a
    /// checkpoint moves them to runs.
    pub(crate) fn completed_activities(&self) -> impl Iterator<Item = (u128, &ActivityEntry)> + '_ {
        self.activities.iter().map(|(id, entry)| (*id, entry))
    }

    /// The entries a checkpoint's file holds: those under way, and the money in transit (the
    /// ended ones are in its runs). The branches with entries of their own come first, then
    /// each activity under way followed by the first branch its entry keeps (in whatever
    /// state), so that a restore ([`set_branch`](Self::set_branch)) puts every branch back
    /// where it was kept.
    pub(crate) fn items(&self) -> impl Iterator<Item = TccItem> + '_ {
        let branches = self.branches_under_way.iter().map(|((a, b), entry)| TccItem::Branch(*a, *b, *entry));
        let activities = self.activities_under_way.iter().flat_map(|(id, entry)| {
            let first = entry.first_branch().map(|branch| TccItem::Branch(*id, 0, branch));
            std::iter::once(TccItem::Activity(*id, ActivityEntry { first_state: None, ..entry.clone() })).chain(first)
        });
        let transit = self.in_transit.iter().map(|(currency, amount)| TccItem::InTransit(*currency, *amount));
        branches.chain(activities).chain(transit)
    }

    pub(crate) fn restore(&mut self, item: TccItem) -> Result<(), &'static str> {
        let twice = match item {
            TccItem::Branch(activity, branch, entry) => {
                let twice = self.branch(activity, branch).is_some();
                self.set_branch(activity, branch, entry);
                twice
            }
            TccItem::Activity(id, entry) => {
                let twice = self.activity(id).is_some();
                self.set_activity(id, entry);
                twice
            }
            TccItem::InTransit(currency, amount) => self.in_transit.insert(currency, amount).is_some(),
        };
        match twice {
            true => Err("tcc entry twice in a checkpoint"),
            false => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layered::SETTLE_PARTS;
    use crate::tcc::BranchPlan;

    fn freeze_action(user_id: u64) -> BranchAction {
        BranchAction::Freeze { user_id, currency: Currency::parse("CNY").unwrap(), amount: 5 }
    }

    fn activity(state: ActivityState) -> ActivityEntry {
        let plans = vec![
            BranchPlan { shard: 0, branch: 0, action: freeze_action(1) },
            BranchPlan { shard: 1, branch: 1, action: freeze_action(2) },
        ];
        ActivityEntry { branches: BranchPlans::from(plans), deadline_ms: 10, begun_ms: 1, state, first_state: None }
    }

    fn branch(state: BranchState) -> BranchEntry {
        BranchEntry { action: freeze_action(3), state }
    }

    /// What a checkpoint's file and runs would take of `book`: the ids under way, the ended.
    fn split(book: &TccBook) -> (Vec<u128>, Vec<u128>) {
        let mut under_way: Vec<u128> = book
            .items()
            .filter_map(|item| match item {
                TccItem::Branch(activity, _, _) | TccItem::Activity(activity, _) => Some(activity),
                TccItem::InTransit(..) => None,
            })
            .collect();
        let mut ended: Vec<u128> = book
            .ended_branches()
            .map(|((activity, _), _)| *activity)
            .chain(book.completed_activities().map(|(id, _)| id))
            .collect();
        under_way.sort_unstable();
        ended.sort_unstable();
        (under_way, ended)
    }

    #[test]
    fn an_entry_is_under_way_or_ended_never_both_and_a_snapshot_keeps_what_it_saw() {
        let mut book = TccBook::default();
        let commit = ActivityState::Completed(Decision::Commit);
        book.set_activity(7, activity(ActivityState::Open));
        book.put_branch(8, 1, branch(BranchState::Tried));
        book.set_activity(9, activity(commit));
        assert_eq!(split(&book), (vec![7, 8], vec![9]));
        assert_eq!(book.unfinished().map(|(id, _)| id).collect::<Vec<_>>(), vec![7]);

        book.freeze();
        let snapshot = book.clone();
        book.set_activity(7, activity(ActivityState::Decided(Decision::Commit)));
        book.set_activity(7, activity(commit));
        book.put_branch(8, 1, branch(BranchState::Confirmed));
        assert_eq!(split(&book), (vec![], vec![7, 8, 9]));
        assert_eq!(book.len(), (1, 2), "each entry counted once, wherever it is");
        assert_eq!(book.unfinished().count(), 0);
        assert_eq!(book.activity(7).map(|entry| entry.state), Some(commit));
        assert_eq!(book.branch(8, 1).map(|entry| entry.state), Some(BranchState::Confirmed));
        assert_eq!(split(&snapshot), (vec![7, 8], vec![9]), "the snapshot's file holds what was under way at it");

        // The checkpoint of that snapshot durable: what it froze goes; what ended since stays.
        for part in 0..SETTLE_PARTS {
            book.settle_part(part);
        }
        assert_eq!(split(&book), (vec![], vec![7, 8]));
        book.freeze();
        for part in 0..SETTLE_PARTS {
            book.settle_part(part);
        }
        assert_eq!((book.len(), book.activity(7), book.branch(8, 1)), ((0, 0), None, None));
    }
}
