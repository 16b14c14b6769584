//! The branches and activities an open's replay ends, set aside per part of their maps and
//! inserted part by part (at the replay's end, or once the aside is full).
//!
//! A replay of cross-shard transfers ends about two entries a transfer (the payer's activity,
//! the payee's branch), each inserted into a map of the interval's ended entries that grows to
//! millions: one cache miss per insert, at random, a quarter of such a replay's time. No record
//! names an entry that ended before it (the write path answers the steps on an ended entry as
//! repeats or refusals and leaves them out of its record), so nothing later in the replay
//! looks for the entries set aside: the books' rules, which the replay applies
//! (`Books` in `tcc_write.rs`), see them as a checkpoint's runs would keep them, out of memory.
//! Inserted part by part, each part of a replay's ended entries fits in a core's cache.
//!
//! The one step that may name an ended entry is a Cancel that fences the first branch of a
//! completed activity that never kept it (only raw steps make one). Live, the activity in
//! memory takes the fence; replayed, the activity set aside is looked for in its part's list
//! and takes it the same way. The list is scanned only where a filter of the activities set
//! aside says the activity may be there, so fences of activities never begun (raw steps may
//! make many) cost a bit's test each.

use std::hash::{BuildHasher, BuildHasherDefault};

use crate::id_hash::IdHasher;
use crate::partitioned::{PartitionedMap, PARTS};
use crate::tcc_book::{ActivityEntry, BranchEntry};

/// Ended entries set aside before they must be inserted: a bound on the memory they hold
/// (64 bytes a branch, about 130 an activity: at most about 130 MB).
pub(crate) const ENDED_ASIDE_MAX: usize = 1 << 20;

/// Bits of the filter of the activities set aside (1 MiB): a fence looks for its activity in
/// a part's list only where the filter says it may be there, so that a replay of many fences
/// before their Begins (raw steps) does not scan a list for each.
const ACTIVITY_FILTER_BITS: u32 = 23;

/// An ended branch, keyed by activity and branch number.
pub(crate) type EndedBranch = ((u128, u16), BranchEntry);

/// The ended entries set aside, per part of their maps, each part's in log order.
pub(crate) struct EndedAside {
    branches: Vec<Vec<EndedBranch>>,
    activities: Vec<Vec<(u128, ActivityEntry)>>,
    /// One bit per activity set aside (and per false positive), by its hash's high bits.
    activity_filter: Vec<u64>,
    held: usize,
    /// Entries held before they must be inserted: [`ENDED_ASIDE_MAX`] but in tests.
    limit: usize,
}

impl EndedAside {
    /// Room for about `branches` and `activities` ended entries (what the last interval
    /// between checkpoints moved to runs), bound by [`ENDED_ASIDE_MAX`].
    pub(crate) fn with_expected(branches: u64, activities: u64) -> Self {
        let mut aside = Self::with_limit(ENDED_ASIDE_MAX);
        let per_part = |expected: u64| (expected.min(ENDED_ASIDE_MAX as u64) as usize).div_ceil(PARTS);
        aside.branches.iter_mut().for_each(|part| part.reserve(per_part(branches)));
        aside.activities.iter_mut().for_each(|part| part.reserve(per_part(activities)));
        aside
    }

    pub(crate) fn with_limit(limit: usize) -> Self {
        EndedAside {
            branches: (0..PARTS).map(|_| Vec::new()).collect(),
            activities: (0..PARTS).map(|_| Vec::new()).collect(),
            activity_filter: vec![0; (1 << ACTIVITY_FILTER_BITS) / 64],
            held: 0,
            limit,
        }
    }

    pub(crate) fn branch(&mut self, key: (u128, u16), entry: BranchEntry) {
        self.branches[PartitionedMap::<(u128, u16), ()>::part_of(&key)].push((key, entry));
        self.held += 1;
    }

    pub(crate) fn activity(&mut self, activity: u128, entry: ActivityEntry) {
        let bit = filter_bit(activity);
        self.activity_filter[bit / 64] |= 1 << (bit % 64);
        self.activities[PartitionedMap::<u128, ()>::part_of(&activity)].push((activity, entry));
        self.held += 1;
    }

    /// Gives a completed activity set aside its first branch, changed to `entry`, where the
    /// rules would keep it in the activity's entry ([`ActivityEntry::keeps_branch`];
    /// `in_maps`: whether the branch has an entry of its own in the maps); whether it did.
    pub(crate) fn keep_first_branch(
        &mut self,
        activity: u128,
        entry: &BranchEntry,
        in_maps: impl FnOnce() -> bool,
    ) -> bool {
        let bit = filter_bit(activity);
        if self.activity_filter[bit / 64] & (1 << (bit % 64)) == 0 {
            return false;
        }
        let part = PartitionedMap::<u128, ()>::part_of(&activity);
        // The newest version set aside is the one the maps will hold.
        let Some(at) = self.activities[part].iter().rposition(|(id, _)| *id == activity) else {
            return false;
        };
        let keeps =
            self.activities[part][at].1.keeps_branch(0, entry, || in_maps() || self.holds_branch((activity, 0)));
        if keeps {
            self.activities[part][at].1.first_state = Some(entry.state);
        }
        keeps
    }

    /// Whether an ended branch of this key is set aside.
    fn holds_branch(&self, key: (u128, u16)) -> bool {
        self.branches[PartitionedMap::<(u128, u16), ()>::part_of(&key)].iter().any(|(held, _)| *held == key)
    }

    /// Whether the entries set aside reached their bound.
    pub(crate) fn full(&self) -> bool {
        self.held >= self.limit
    }

    /// Part `part`'s entries, in the order they were set aside, to insert; once every part was
    /// taken, the aside is empty.
    pub(crate) fn take_part(
        &mut self,
        part: usize,
    ) -> (std::vec::Drain<'_, EndedBranch>, std::vec::Drain<'_, (u128, ActivityEntry)>) {
        let taken = self.branches[part].len() + self.activities[part].len();
        self.held -= taken;
        (self.branches[part].drain(..), self.activities[part].drain(..))
    }
}

/// An activity's bit in [`EndedAside::activity_filter`]: the high bits of its hash (the low
/// bits of the maps' one multiply are the weak ones).
fn filter_bit(activity: u128) -> usize {
    (BuildHasherDefault::<IdHasher>::default().hash_one(activity) >> (64 - ACTIVITY_FILTER_BITS)) as usize
}

#[cfg(test)]
#[path = "tcc_aside_tests.rs"]
mod tests;
