//! What is kept of a flexible transaction's activity once it completed and a checkpoint moved
//! it out of memory into a run on disk (`key_runs.rs`): not its branches, which no late step
//! needs, but enough to answer every one of them and a retry of its begin (its decision, a
//! digest of its branches, its first branch's action, and that branch's end when the shard
//! held it); and an activity as a lookup finds it, in memory or in a run.

use crate::tcc::{push_plans, BranchAction, BranchPlan, Decision};
use crate::tcc_book::{ActivityEntry, ActivityState, BranchEntry, BranchState};

/// A completed activity as the runs on disk keep it: what answers its late steps and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndedActivity {
    pub decision: Decision,
    pub deadline_ms: u64,
    pub begun_ms: u64,
    /// [`plans_digest`] of its branches: a Begin naming the same branches repeats it.
    pub plans_digest: u64,
    /// Its first branch's action (a transfer's: the payer's).
    pub first: BranchAction,
    /// How its first branch, numbered 0, ended, when the initiator's shard held it (a
    /// transfer's payer): that branch is kept here, not in the branches
    /// ([`ActivityEntry::first_state`]).
    pub first_ended: Option<BranchState>,
}

impl EndedActivity {
    /// What the runs keep of `entry`, if it is completed.
    pub(crate) fn of(entry: &ActivityEntry) -> Option<EndedActivity> {
        let (decision, first) = Self::completed(entry)?;
        // A completed entry keeps no branch still tried (`TccBook::set_activity`).
        debug_assert_ne!(entry.first_state, Some(BranchState::Tried), "a completed activity keeps a tried branch");
        Some(EndedActivity {
            decision,
            deadline_ms: entry.deadline_ms,
            begun_ms: entry.begun_ms,
            plans_digest: plans_digest(&entry.branches),
            first,
            first_ended: entry.first_state,
        })
    }

    /// Branch `branch` of the activity, if this entry keeps it (`first_ended`).
    pub(crate) fn branch(&self, branch: u16) -> Option<BranchEntry> {
        match branch {
            0 => Some(BranchEntry { action: self.first, state: self.first_ended? }),
            _ => None,
        }
    }

    /// The decision and first branch of a completed activity with a branch: the one condition
    /// of both [`ends`](Self::ends) and [`of`](Self::of).
    fn completed(entry: &ActivityEntry) -> Option<(Decision, BranchAction)> {
        let ActivityState::Completed(decision) = entry.state else { return None };
        Some((decision, entry.branches.first()?.action))
    }
}

/// The xxh3-64 of an activity's branches as a Begin step holds them.
pub fn plans_digest(branches: &[BranchPlan]) -> u64 {
    let mut bytes = Vec::with_capacity(1 + branches.len() * 26);
    push_plans(&mut bytes, branches);
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// An activity a shard initiated, wherever it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoundActivity {
    /// In memory: under way, or ended since the last checkpoint.
    Held(ActivityEntry),
    /// Completed, in a run on disk.
    Ended(EndedActivity),
}

impl FoundActivity {
    pub fn state(&self) -> ActivityState {
        match self {
            FoundActivity::Held(entry) => entry.state,
            FoundActivity::Ended(ended) => ActivityState::Completed(ended.decision),
        }
    }

    /// True when it was begun with `branches`.
    pub fn has_branches(&self, branches: &[BranchPlan]) -> bool {
        match self {
            FoundActivity::Held(entry) => *entry.branches == *branches,
            FoundActivity::Ended(ended) => ended.plans_digest == plans_digest(branches),
        }
    }

    /// Its first branch's action (a transfer's: the payer's).
    pub fn first_action(&self) -> Option<BranchAction> {
        match self {
            FoundActivity::Held(entry) => Some(entry.branches.first()?.action),
            FoundActivity::Ended(ended) => Some(ended.first),
        }
    }
}
