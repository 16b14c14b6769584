//! The rules of every step of flexible transactions, written once over a [`MoneyView`]: the
//! write path runs them on a scratch view (durable state, the balances of requests in flight,
//! and the record's own earlier steps) to check a record before it is written; replay runs them
//! on the durable books (`tcc_book.rs`), and the committer installs what the check computed
//! (`tcc_write::TccChanges`), which is what they make there. A step the write path accepted
//! therefore applies, and a record that does not apply cannot have been written by this engine.
//!
//! Fences (the lessons of Seata's TCC fence): a Cancel that comes before its Try records the
//! branch as fenced, and the Try that comes later is refused, so nothing stays reserved for an
//! activity that is over; Confirm and Cancel answer a repeat with the first answer; Confirm
//! after Cancel and Cancel after Confirm are refused. An activity's decision is the first one
//! recorded: a later Decide of the other outcome is refused naming the decision in force
//! (`Refusal::DecidedOtherwise`), so that the steps sent with it are not applied; a cancel
//! for another reason is a repeat, answered with the first one's (so that a record of a
//! batch's decisions is not refused whole for one activity recovery cancelled first).

use crate::accounts::{AccountKey, Balance, BALANCE_MAX};
use crate::currency::Currency;
use crate::error::Refusal;
use crate::tcc::{BranchAction, BranchPlans, Decision, Step};
use crate::tcc_book::{ActivityEntry, ActivityState, BranchEntry, BranchState, StepAnswer, StepOutcome};
use crate::tcc_ended::{EndedActivity, FoundActivity};

/// The state the rules read and change.
pub(crate) trait MoneyView {
    fn balance(&self, key: AccountKey) -> Balance;
    fn set_balance(&mut self, key: AccountKey, balance: Balance);
    fn branch(&self, activity: u128, branch: u16) -> Option<BranchEntry>;
    fn set_branch(&mut self, activity: u128, branch: u16, entry: BranchEntry);
    fn activity(&self, activity: u128) -> Option<ActivityEntry>;
    fn set_activity(&mut self, activity: u128, entry: ActivityEntry);
    /// A completed activity that is not held ([`MoneyView::activity`] has none) but that a run
    /// on disk keeps; only the write path's view reads the runs.
    fn ended_activity(&self, _activity: u128) -> Option<EndedActivity> {
        None
    }
    /// Whether the activity is known to be decided (held, or in a run). Only the write path's
    /// view answers it: a durable record was checked there and applies as written.
    fn activity_decided(&self, _activity: u128) -> bool {
        false
    }
    /// Money moves into (`+`) or out of (`-`) the hands of activities.
    fn add_in_transit(&mut self, currency: Currency, amount: i128);
}

/// The account a branch moves money in, and the amount; an embedder's branch has no step in a
/// shard.
fn account_of(action: &BranchAction, activity: u128) -> Result<(AccountKey, u64), Refusal> {
    match action.account() {
        Some((user_id, currency, amount)) => Ok((AccountKey { user_id, currency }, amount)),
        None => Err(Refusal::StepConflict { activity, reason: "an embedder's branch has no step in a shard" }),
    }
}

fn answer(outcome: StepOutcome, repeat: bool) -> Result<StepAnswer, Refusal> {
    Ok(StepAnswer { outcome, repeat })
}

/// Applies one step to `view` (see the module's text); a refusal changes nothing.
pub(crate) fn apply_step(view: &mut impl MoneyView, step: &Step, at_ms: u64) -> Result<StepAnswer, Refusal> {
    match step {
        Step::Begin { activity, deadline_ms, branches } => match found(view, *activity) {
            Some(found) if found.has_branches(branches) => answer(StepOutcome::Begun(found.state()), true),
            Some(_) => Err(Refusal::StepConflict { activity: *activity, reason: "begun with other branches" }),
            None => {
                let entry = ActivityEntry {
                    branches: BranchPlans::from(&branches[..]),
                    deadline_ms: *deadline_ms,
                    begun_ms: at_ms,
                    state: ActivityState::Open,
                    first_state: None,
                };
                view.set_activity(*activity, entry);
                answer(StepOutcome::Begun(ActivityState::Open), false)
            }
        },
        Step::Try { activity, branch, action } => try_branch(view, *activity, *branch, *action),
        Step::Confirm { activity, branch } => confirm_branch(view, *activity, *branch),
        Step::Cancel { activity, branch, action } => cancel_branch(view, *activity, *branch, *action),
        Step::Decide { activity, decision } => {
            let found = found(view, *activity)
                .ok_or(Refusal::StepConflict { activity: *activity, reason: "decision of an activity never begun" })?;
            match found.state() {
                ActivityState::Open => {
                    let FoundActivity::Held(mut entry) = found else { unreachable!("an open activity is held") };
                    entry.state = ActivityState::Decided(*decision);
                    view.set_activity(*activity, entry);
                    answer(StepOutcome::Decided(*decision), false)
                }
                // The other outcome is refused; a cancel for another reason (the initiator's
                // refused Try after recovery's timeout) is the same decision, a repeat.
                ActivityState::Decided(first) | ActivityState::Completed(first)
                    if matches!(first, Decision::Commit) != matches!(decision, Decision::Commit) =>
                {
                    Err(Refusal::DecidedOtherwise { activity: *activity, decision: first })
                }
                ActivityState::Decided(first) => answer(StepOutcome::Decided(first), true),
                ActivityState::Completed(first) => answer(StepOutcome::Completed(first), true),
            }
        }
        Step::Complete { activity } => {
            let found = found(view, *activity).ok_or(Refusal::StepConflict {
                activity: *activity,
                reason: "completion of an activity never begun",
            })?;
            match found.state() {
                ActivityState::Open => {
                    Err(Refusal::StepConflict { activity: *activity, reason: "completion before a decision" })
                }
                ActivityState::Decided(decision) => {
                    let FoundActivity::Held(mut entry) = found else { unreachable!("a decided activity is held") };
                    entry.state = ActivityState::Completed(decision);
                    view.set_activity(*activity, entry);
                    answer(StepOutcome::Completed(decision), false)
                }
                ActivityState::Completed(decision) => answer(StepOutcome::Completed(decision), true),
            }
        }
    }
}

/// The activity `view` holds, or else the completed one a run keeps.
fn found(view: &impl MoneyView, activity: u128) -> Option<FoundActivity> {
    match view.activity(activity) {
        Some(entry) => Some(FoundActivity::Held(entry)),
        None => view.ended_activity(activity).map(FoundActivity::Ended),
    }
}

fn try_branch(
    view: &mut impl MoneyView,
    activity: u128,
    branch: u16,
    action: BranchAction,
) -> Result<StepAnswer, Refusal> {
    if let Some(entry) = view.branch(activity, branch) {
        return match entry.state {
            _ if entry.action != action => {
                Err(Refusal::StepConflict { activity, reason: "a branch tried with another action" })
            }
            BranchState::Tried | BranchState::Confirmed => answer(StepOutcome::Branch(BranchState::Tried), true),
            BranchState::Cancelled | BranchState::Fenced => Err(Refusal::BranchCancelled { activity, branch }),
        };
    }
    // The branch may be gone from memory and from the runs the key window keeps while its
    // activity, decided, is still known (a late retry of the Begin with its Try): a new
    // reservation then would have no decision left to carry it out, and stay frozen.
    if view.activity_decided(activity) {
        return Err(Refusal::StepConflict { activity, reason: "a Try of an activity already decided" });
    }
    let (key, amount) = account_of(&action, activity)?;
    let mut balance = view.balance(key);
    let (user_id, currency) = (key.user_id, key.currency);
    match action {
        BranchAction::Freeze { .. } => {
            if balance.available < amount {
                let available = balance.available;
                return Err(Refusal::InsufficientFunds { user_id, currency, available, requested: amount });
            }
            balance.available -= amount;
            balance.frozen += amount;
        }
        BranchAction::Credit { .. } => {
            if balance.held().checked_add(amount).is_none_or(|held| held > BALANCE_MAX) {
                let holds = balance.held();
                return Err(Refusal::BalanceLimit { user_id, currency, balance: holds, amount, max: BALANCE_MAX });
            }
            balance.incoming += amount;
        }
        BranchAction::External { .. } => unreachable!("refused by account_of"),
    }
    view.set_balance(key, balance);
    view.set_branch(activity, branch, BranchEntry { action, state: BranchState::Tried });
    answer(StepOutcome::Branch(BranchState::Tried), false)
}

fn confirm_branch(view: &mut impl MoneyView, activity: u128, branch: u16) -> Result<StepAnswer, Refusal> {
    let Some(entry) = view.branch(activity, branch) else {
        return Err(Refusal::BranchNotTried { activity, branch });
    };
    match entry.state {
        BranchState::Confirmed => return answer(StepOutcome::Branch(BranchState::Confirmed), true),
        BranchState::Cancelled | BranchState::Fenced => return Err(Refusal::BranchCancelled { activity, branch }),
        BranchState::Tried => {}
    }
    end_tried_branch(view, activity, branch, entry, BranchState::Confirmed)
}

fn cancel_branch(
    view: &mut impl MoneyView,
    activity: u128,
    branch: u16,
    action: BranchAction,
) -> Result<StepAnswer, Refusal> {
    account_of(&action, activity)?;
    let Some(entry) = view.branch(activity, branch) else {
        // An empty rollback: nothing was reserved, and a Try that comes later is refused.
        view.set_branch(activity, branch, BranchEntry { action, state: BranchState::Fenced });
        return answer(StepOutcome::Branch(BranchState::Fenced), false);
    };
    match entry.state {
        BranchState::Cancelled | BranchState::Fenced => return answer(StepOutcome::Branch(entry.state), true),
        BranchState::Confirmed => return Err(Refusal::BranchConfirmed { activity, branch }),
        BranchState::Tried => {}
    }
    end_tried_branch(view, activity, branch, entry, BranchState::Cancelled)
}

/// Ends a tried branch as `to`, Confirmed (the reservation used: a payer's money passes into
/// the activity's hands, a payee's comes out of them) or Cancelled (the reservation released).
/// Both use only what the Try reserved: they fail only on books this engine cannot have made.
fn end_tried_branch(
    view: &mut impl MoneyView,
    activity: u128,
    branch: u16,
    mut entry: BranchEntry,
    to: BranchState,
) -> Result<StepAnswer, Refusal> {
    let (key, amount) = account_of(&entry.action, activity)?;
    let mut balance = view.balance(key);
    let broken = || Refusal::StepConflict { activity, reason: "the account does not hold the branch's reservation" };
    let confirm = to == BranchState::Confirmed;
    match entry.action {
        BranchAction::External { .. } => unreachable!("refused by account_of"),
        BranchAction::Freeze { .. } => {
            balance.frozen = balance.frozen.checked_sub(amount).ok_or_else(broken)?;
            match confirm {
                true => view.add_in_transit(key.currency, i128::from(amount)),
                false => balance.available = balance.available.checked_add(amount).ok_or_else(broken)?,
            }
        }
        BranchAction::Credit { .. } => {
            balance.incoming = balance.incoming.checked_sub(amount).ok_or_else(broken)?;
            if confirm {
                balance.available = balance.available.checked_add(amount).ok_or_else(broken)?;
                view.add_in_transit(key.currency, -i128::from(amount));
            }
        }
    }
    view.set_balance(key, balance);
    entry.state = to;
    view.set_branch(activity, branch, entry);
    answer(StepOutcome::Branch(to), false)
}
