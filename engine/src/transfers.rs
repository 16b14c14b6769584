//! Transfers between any two users, and activities of any branches: the engine's side of
//! flexible transactions, the activity manager's protocol (`tradeshard_shard::run_activity`)
//! carried between executors and to the embedder's participants (`participants.rs`).
//!
//! A transfer between two users of one shard is one journal record (a local transaction).
//! Across shards it is a TCC activity recorded in the payer's shard, with a Freeze branch of
//! the payer's money and a Credit branch of the payee; its id is the payer's request key, so
//! that a retry finds it. An activity answers once its decision is durable and every branch
//! answered it; if a branch could not be reached the decision stands and recovery
//! (`activities.rs`) finishes it.

use std::collections::BTreeMap;

use tradeshard_shard::{
    account_request_key, finish_activity, run_activity, validate_amount, validate_request_no, AccountCommand,
    AccountOp, ActivityEntry, ActivityState, BranchAction, BranchCall, BranchPlan, Currency, Decision, FoundActivity,
    InputError, Refusal, Step, StepAnswer, StepError, StepSender, BRANCHES_MAX, NO_SHARD,
};

use crate::blocking::blocking;
use crate::error::{Error, Result};
use crate::handle::EngineHandle;
use crate::ops;

/// How often a retry waiting for an activity that a first attempt still drives looks again.
const DRIVEN_LOOK: std::time::Duration = std::time::Duration::from_millis(2);

/// The activities callers of this engine are driving now, with how many callers each: a
/// retry that finds one undecided waits for its first attempt instead of cancelling it. Keyed
/// by activity ids (request keys made by xxh3, or an embedder's own), which `IdMap`'s one
/// multiply spreads as well as SipHash would.
#[derive(Default)]
pub(crate) struct Driving(std::sync::Mutex<tradeshard_shard::IdMap<u128, u32>>);

impl Driving {
    /// Counts `activities` as driven until the guard drops (also when the caller's future is
    /// dropped: then nobody drives them, and a retry may end them).
    pub(crate) fn guard(&self, activities: impl IntoIterator<Item = u128>) -> DrivingGuard<'_> {
        let activities: Vec<u128> = activities.into_iter().collect();
        let mut driven = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for activity in &activities {
            *driven.entry(*activity).or_default() += 1;
        }
        DrivingGuard { driving: self, activities }
    }

    pub(crate) fn is_driven(&self, activity: u128) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&activity)
    }
}

/// Held while its activities are driven ([`Driving::guard`]).
pub(crate) struct DrivingGuard<'a> {
    driving: &'a Driving,
    activities: Vec<u128>,
}

impl Drop for DrivingGuard<'_> {
    fn drop(&mut self) {
        let mut driven = self.driving.0.lock().unwrap_or_else(|p| p.into_inner());
        for activity in &self.activities {
            if let std::collections::hash_map::Entry::Occupied(mut callers) = driven.entry(*activity) {
                *callers.get_mut() -= 1;
                if *callers.get() == 0 {
                    callers.remove();
                }
            }
        }
    }
}

/// What a durable transfer answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransferReceipt {
    /// The transfer's id: the payer's request key (the id of its activity across shards).
    pub activity: u128,
    pub from_user: u64,
    pub to_user: u64,
    pub currency: Currency,
    pub amount: u64,
    /// Both accounts were in one shard: one journal record moved the money, no activity.
    pub local: bool,
    /// The request number was used already: this is the original's answer and nothing more
    /// moved.
    pub replayed: bool,
}

/// How an activity run by [`EngineHandle::run_activity`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivityOutcome {
    /// The initiator's request key.
    pub activity: u128,
    /// The decision in force: every branch confirmed, or every branch cancelled.
    pub decision: Decision,
    /// Every branch answered the decision; if not, recovery keeps sending it.
    pub completed: bool,
    /// The request number named an activity begun before (a retry).
    pub replayed: bool,
}

impl StepError for Error {
    fn refusal(&self) -> Option<&Refusal> {
        match self {
            Error::Refused(refusal) => Some(refusal),
            _ => None,
        }
    }
}

impl StepSender for EngineHandle {
    type Error = Error;

    async fn send(&self, shard: u32, steps: Vec<Step>) -> Result<Vec<StepAnswer>> {
        // Steps wait for room in a full queue whatever the caller chose: the executor's here,
        // the log's in the shard (`Shard::transact`). Refused in between, an activity would be
        // cancelled or left to recovery.
        self.on_shard_waiting(shard, ops::Transact(steps)).await
    }

    async fn post(&self, shard: u32, steps: Vec<Step>) {
        let executor = self.routing().executor_of_physical(shard);
        // Queued, its answer dropped: a completion lost to a stop is made by recovery.
        let _ = self.submit_waiting(executor, ops::OnShard { shard, op: ops::Transact(steps) }).await;
    }

    fn branches_remembered_for(&self) -> Option<std::time::Duration> {
        self.inner.key_window
    }

    async fn send_many(&self, shard: u32, transactions: Vec<Vec<Step>>) -> Result<Vec<Result<Vec<StepAnswer>>>> {
        let answers = self.on_shard_waiting(shard, ops::TransactMany(transactions)).await?;
        Ok(answers.into_iter().map(|answer| answer.map_err(Error::from)).collect())
    }

    async fn post_many(&self, shard: u32, transactions: Vec<Vec<Step>>) {
        let executor = self.routing().executor_of_physical(shard);
        let _ = self.submit_waiting(executor, ops::OnShard { shard, op: ops::TransactMany(transactions) }).await;
    }

    async fn call(
        &self,
        participant: u16,
        call: BranchCall,
        activity: u128,
        branch: u16,
        reference: u64,
    ) -> Result<()> {
        let Some(service) = self.inner.participants.get(participant) else {
            return Err(InputError::UnknownParticipant { participant }.into());
        };
        // A participant that never answers must not hold the activity, recovery or a close
        // forever: past the timeout the call failed (a Try: the activity is cancelled; a
        // Confirm or Cancel: recovery calls again).
        let late = Err(format!("no answer within {:?}", self.inner.participant_timeout));
        let answered = self.within_embedder_timeout(service.call(call, activity, branch, reference), late).await?;
        answered.map_err(|message| Error::Participant { participant, message })
    }
}

impl EngineHandle {
    /// Moves `amount` of `currency` from `from_user`'s available balance to `to_user`'s,
    /// never below zero (`Refusal::InsufficientFunds`, nothing moved). Idempotent on
    /// (`from_user`, `request_no`): a repeat answers the original (`replayed: true`), or for a
    /// transfer that was cancelled, `Refusal::TransferCancelled` again. Users in two shards
    /// make a TCC activity (module text); money is conserved at every instant, counting what
    /// is in the hands of activities ([`money_in_transit`](Self::money_in_transit)).
    pub async fn transfer(
        &self,
        from_user: u64,
        to_user: u64,
        currency: &str,
        amount: u64,
        request_no: &str,
    ) -> Result<TransferReceipt> {
        let command = AccountCommand::new(AccountOp::Transfer { to_user }, from_user, currency, amount, request_no)?;
        let (home, payee_shard) =
            (self.routing().physical_of_user(from_user), self.routing().physical_of_user(to_user));
        let activity = account_request_key(from_user, request_no);
        let currency = command.currency;
        let receipt =
            |local, replayed| TransferReceipt { activity, from_user, to_user, currency, amount, local, replayed };
        if home == payee_shard {
            let answer = self.on_shard(home, ops::Post(command)).await?;
            return Ok(receipt(true, answer.replayed));
        }
        let branches = transfer_branches(home, payee_shard, &command, to_user);
        let outcome = match self.drive(home, activity, branches).await {
            Err(Error::Refused(Refusal::StepConflict { activity: conflicting, .. })) if conflicting == activity => {
                return Err(self.request_conflict(home, activity, request_no).await);
            }
            outcome => outcome?,
        };
        match outcome.decision {
            Decision::Commit => Ok(receipt(false, outcome.replayed)),
            Decision::Cancel(reason) => Err(Refusal::TransferCancelled { activity, reason }.into()),
        }
    }

    /// The conflict of a transfer's request number used before for something else: another
    /// transfer across shards, or an account request, named with what it did.
    async fn request_conflict(&self, home: u32, key: u128, request_no: &str) -> Error {
        let request_no = request_no.to_string();
        let original = match self.on_shard(home, ops::FindActivity(key)).await {
            Ok(Some(found)) => found.first_action().and_then(|action| action.account()).map(|a| ("transfer", a.2)),
            _ => match self.on_shard(home, ops::GetAccountRequest(key)).await {
                Ok(Some((op, amount))) => Some((op.name(), amount)),
                _ => None,
            },
        };
        let (op, amount) = original.unwrap_or(("request", 0));
        Refusal::AccountRequestConflict { request_no, op, amount }.into()
    }

    /// Runs an activity of up to eight branches, initiated by `initiator` under its
    /// `request_no` (its id is the initiator's request key, recorded in the initiator's shard):
    /// Freeze and Credit branches of users' accounts, which must balance per currency (money
    /// only moves between accounts), and branches of the embedder's participants
    /// (`Options::participants`). Every Try succeeding commits it, else it is cancelled; the
    /// answer comes once the decision is durable and every branch answered it (or could not
    /// be reached: `completed: false`, and recovery keeps sending the decision). A retry with
    /// the same request number answers the same decision (`replayed: true`).
    pub async fn run_activity(
        &self,
        initiator: u64,
        request_no: &str,
        actions: &[BranchAction],
    ) -> Result<ActivityOutcome> {
        if initiator == 0 {
            return Err(InputError::ZeroUserId.into());
        }
        validate_request_no(request_no)?;
        if actions.is_empty() || actions.len() > BRANCHES_MAX {
            return Err(InputError::BadSteps { count: actions.len(), max: BRANCHES_MAX }.into());
        }
        let mut sums: BTreeMap<Currency, (u128, u128)> = BTreeMap::new();
        let mut branches = Vec::with_capacity(actions.len());
        for (branch, action) in actions.iter().enumerate() {
            let shard = match *action {
                BranchAction::Freeze { user_id, currency, amount }
                | BranchAction::Credit { user_id, currency, amount } => {
                    if user_id == 0 {
                        return Err(InputError::ZeroUserId.into());
                    }
                    validate_amount(amount)?;
                    let (taken, given) = sums.entry(currency).or_default();
                    match action {
                        BranchAction::Freeze { .. } => *taken += u128::from(amount),
                        _ => *given += u128::from(amount),
                    }
                    self.routing().physical_of_user(user_id)
                }
                BranchAction::External { participant, .. } => {
                    if self.inner.participants.get(participant).is_none() {
                        return Err(InputError::UnknownParticipant { participant }.into());
                    }
                    NO_SHARD
                }
            };
            branches.push(BranchPlan { shard, branch: branch as u16, action: *action });
        }
        if let Some((currency, (taken, given))) = sums.into_iter().find(|(_, (taken, given))| taken != given) {
            return Err(InputError::UnbalancedActivity { currency, taken, given }.into());
        }
        let home = self.routing().physical_of_user(initiator);
        self.drive(home, account_request_key(initiator, request_no), branches).await
    }

    /// Runs an activity, or, for a retry, drives the one begun before to its end.
    async fn drive(&self, home: u32, activity: u128, branches: Vec<BranchPlan>) -> Result<ActivityOutcome> {
        // A retry finds its activity begun (the Begin answers a repeat), or refused (its
        // branch was cancelled): then it is driven to its end from its record.
        let deadline_ms = now_ms() + self.inner.activity_timeout.as_millis() as u64;
        let driving = self.inner.driving.guard([activity]);
        let first_attempt = run_activity(self, home, activity, deadline_ms, branches.clone()).await;
        drop(driving);
        match first_attempt {
            Ok(driven) => Ok(ActivityOutcome {
                activity,
                decision: driven.decision,
                completed: driven.completed,
                replayed: driven.begun_before,
            }),
            Err(error) => match self.on_shard(home, ops::FindActivity(activity)).await? {
                Some(found) if error.refusal().is_some() && found.has_branches(&branches) => {
                    let (decision, completed) = self.finish_existing(home, activity, found).await?;
                    Ok(ActivityOutcome { activity, decision, completed, replayed: true })
                }
                _ => Err(error),
            },
        }
    }

    /// The decision of an activity already recorded, driving it to its end first if it is
    /// still under way (its first attempt stopped, or runs at the same time).
    async fn finish_existing(&self, home: u32, activity: u128, mut found: FoundActivity) -> Result<(Decision, bool)> {
        let mut entry = loop {
            let entry = match found {
                FoundActivity::Held(entry) if !matches!(entry.state, ActivityState::Completed(_)) => entry,
                completed => match completed.state() {
                    ActivityState::Completed(decision) => return Ok((decision, true)),
                    _ => unreachable!("only a completed activity leaves memory"),
                },
            };
            // An undecided one that a caller of this engine still drives (the first attempt,
            // or a request with the same number at the same time) is waited for, until it is
            // decided or its deadline passed: ending it now would cancel a transfer that may
            // be about to commit, under its own caller.
            if entry.state != ActivityState::Open
                || now_ms() >= entry.deadline_ms
                || !self.inner.driving.is_driven(activity)
            {
                break entry;
            }
            let _ = self.submit_waiting(0, ops::Sleep(DRIVEN_LOOK)).await?.await;
            found = match self.on_shard_waiting(home, ops::FindActivity(activity)).await? {
                Some(found) => found,
                None => break entry,
            };
        };
        // An undecided one nobody drives is cancelled now: its first attempt's caller is gone.
        if entry.state == ActivityState::Open {
            entry.deadline_ms = 0;
        }
        let driven = finish_activity(self, home, activity, &entry, now_ms()).await?;
        let reason = "an activity past its deadline was left undecided";
        driven
            .map(|driven| (driven.decision, driven.completed))
            .ok_or_else(|| Refusal::StepConflict { activity, reason }.into())
    }

    /// Per currency, money confirmed out of payers and not yet into payees: inside open
    /// activities. Balances plus this equal deposits less withdrawals at every instant.
    pub async fn money_in_transit(&self) -> Result<BTreeMap<Currency, i128>> {
        let mut totals = BTreeMap::new();
        for executor_totals in self.on_every_executor(ops::InTransit).await? {
            for (currency, amount) in executor_totals {
                *totals.entry(currency).or_insert(0) += amount;
            }
        }
        Ok(totals)
    }

    /// Every activity not completed, with the physical shard that initiated it: the
    /// activities in doubt, which recovery drives to their end.
    pub async fn activities_in_doubt(&self) -> Result<Vec<(u32, u128, ActivityEntry)>> {
        Ok(self.on_every_executor(ops::UnfinishedActivities).await?.into_iter().flatten().collect())
    }

    blocking!(activities_in_doubt_blocking = activities_in_doubt(&self) -> Result<Vec<(u32, u128, ActivityEntry)>>);
    blocking!(transfer_blocking = transfer(&self, from_user: u64, to_user: u64, currency: &str, amount: u64, request_no: &str) -> Result<TransferReceipt>);
    blocking!(run_activity_blocking = run_activity(&self, initiator: u64, request_no: &str, actions: &[BranchAction]) -> Result<ActivityOutcome>);
    blocking!(money_in_transit_blocking = money_in_transit(&self) -> Result<BTreeMap<Currency, i128>>);
}

/// A transfer's branches across shards: a Freeze of the payer's money in its shard (branch
/// 0) and a Credit of the payee in theirs (branch 1).
pub(crate) fn transfer_branches(
    home: u32,
    payee_shard: u32,
    command: &AccountCommand,
    to_user: u64,
) -> Vec<BranchPlan> {
    let (currency, amount) = (command.currency, command.amount);
    vec![
        BranchPlan {
            shard: home,
            branch: 0,
            action: BranchAction::Freeze { user_id: command.user_id, currency, amount },
        },
        BranchPlan {
            shard: payee_shard,
            branch: 1,
            action: BranchAction::Credit { user_id: to_user, currency, amount },
        },
    ]
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use futures_lite::future::block_on;

    use super::*;
    use crate::participants::{Participant, ParticipantFuture, Participants};

    /// A participant whose Try answers once the test opens its gate.
    struct Gate(Arc<AtomicBool>);

    impl Participant for Gate {
        fn call(&self, call: BranchCall, _: u128, _: u16, _: u64) -> ParticipantFuture<'_> {
            Box::pin(async move {
                while call == BranchCall::Try && !self.0.load(Ordering::SeqCst) {
                    futures_lite::future::yield_now().await;
                }
                Ok(())
            })
        }
    }

    /// A request that finds an undecided activity its first attempt still drives (the same
    /// request number at the same time) waits for that attempt's decision rather than
    /// cancelling it under its caller: both answer the commit.
    #[test]
    fn an_activity_its_first_attempt_still_drives_is_waited_for_not_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(AtomicBool::new(false));
        let options = crate::Options {
            physical_shards: Some(1),
            executors: Some(1),
            participants: Participants::default().with(7, Gate(gate.clone())),
            ..crate::Options::new(dir.path())
        };
        let engine = crate::Engine::open(options).unwrap();
        let handle = engine.handle();
        let actions = [BranchAction::External { participant: 7, reference: 1 }];
        let first = {
            let handle = handle.clone();
            std::thread::spawn(move || handle.run_activity_blocking(1, "X", &actions))
        };
        let activity = account_request_key(1, "X");
        let found = loop {
            if let Some(found) = block_on(handle.on_shard(0, ops::FindActivity(activity))).unwrap() {
                break found;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(found.state(), ActivityState::Open, "its Try has not answered");
        let second = {
            let handle = handle.clone();
            std::thread::spawn(move || block_on(handle.finish_existing(0, activity, found)))
        };
        std::thread::sleep(Duration::from_millis(100));
        gate.store(true, Ordering::SeqCst);
        let first = first.join().unwrap().unwrap();
        assert_eq!(first.decision, Decision::Commit, "the first attempt commits: {first:?}");
        let (decision, _) = second.join().unwrap().unwrap();
        assert_eq!(decision, Decision::Commit);
        engine.close().unwrap();
    }
}
