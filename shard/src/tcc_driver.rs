//! The activity manager's protocol: the order in which an activity's steps are sent to the
//! shards and the embedder's participants are called, written once for whoever carries them
//! (the engine between its executors, the tests between shards on simulated disks), through a
//! [`StepSender`]. A branch of an account in the initiator's shard goes with the initiator's
//! own records; any other branch (an account of another shard, an embedder's participant) is
//! reached on its own.
//!
//! Running an activity from its start:
//!
//! 1. **Begin** in the initiator's shard, with the Tries of the branches that live there, as one
//!    local transaction: a refused Try (too little available) refuses the whole, and nothing
//!    is recorded.
//! 2. **Try** each other branch in its shard, all at once.
//! 3. **Decide**: commit if every Try succeeded, else cancel; the decision is durable (with the
//!    initiator's own Confirms or Cancels, in one local transaction) before any other Confirm
//!    or Cancel is sent. If the activity was decided otherwise meanwhile (recovery cancelled it
//!    past its deadline), that decision is the one carried out.
//! 4. **Confirm** (or **Cancel**) each other branch, all at once.
//! 5. **Complete** in the initiator's shard once every branch answered.
//!
//! An activity may also be recorded already decided to commit, with no Try made (the credit
//! of a settled trade paid from a balance: the Settled record is the decision; its deadline is
//! `DECIDED_AT_BEGIN`). Each branch's Try and Confirm then go together, in one local
//! transaction of its shard ([`commit_untried`]): Confirm still uses only what that Try
//! reserved.
//!
//! Every step is idempotent, so a step sent twice (a retry, recovery driving an activity its
//! initiator is still driving) changes nothing more. Recovery ([`finish_activity`]) takes an
//! activity not completed from where its record stands: undecided past its deadline, it is
//! cancelled; decided, the decision is sent again to every branch until each answered.

use std::future::Future;

use crate::error::{Refusal, TradeError};
use crate::join::join_all;
use crate::tcc::{BranchAction, BranchPlan, CancelReason, Decision, Step};
use crate::tcc_book::{ActivityEntry, ActivityState, StepAnswer, StepOutcome, DECIDED_AT_BEGIN};

/// Carries a local transaction to a shard and brings back its answers, and calls the
/// embedder's participants.
pub trait StepSender {
    type Error: StepError;
    fn send(&self, shard: u32, steps: Vec<Step>) -> impl Future<Output = Result<Vec<StepAnswer>, Self::Error>>;
    /// Queues steps whose answer nobody waits for (an activity's completion): lost, they are
    /// sent again by recovery.
    fn post(&self, shard: u32, steps: Vec<Step>) -> impl Future<Output = ()>;
    /// Carries several local transactions to one shard, each made or refused on its own, and
    /// brings back each one's answer in order (`Err`: none could be carried). A carrier that
    /// can take them in one hand-off ([`run_activities`](crate::run_activities) sends a
    /// batch's steps so) overrides this one at a time.
    fn send_many(
        &self,
        shard: u32,
        transactions: Vec<Vec<Step>>,
    ) -> impl Future<Output = Result<ManyAnswers<Self::Error>, Self::Error>> {
        async move { Ok(join_all(transactions.into_iter().map(|steps| self.send(shard, steps))).await) }
    }
    /// [`post`](Self::post) of several local transactions to one shard.
    fn post_many(&self, shard: u32, transactions: Vec<Vec<Step>>) -> impl Future<Output = ()> {
        async move {
            join_all(transactions.into_iter().map(|steps| self.post(shard, steps))).await;
        }
    }
    /// How long a shard remembers a branch it ended: past it (the key window,
    /// `Upkeep::key_window`), a Try of that branch sent again is taken as new. `None`: forever.
    fn branches_remembered_for(&self) -> Option<std::time::Duration> {
        None
    }
    /// Asks the embedder's participant `participant` to try, confirm or cancel its branch.
    fn call(
        &self,
        participant: u16,
        call: BranchCall,
        activity: u128,
        branch: u16,
        reference: u64,
    ) -> impl Future<Output = Result<(), Self::Error>>;
}

/// The answers of several local transactions sent together, each its own.
pub type ManyAnswers<E> = Vec<Result<Vec<StepAnswer>, E>>;

/// What the manager asks of a branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchCall {
    Try,
    Confirm,
    Cancel,
}

/// Sends one step to a branch of another shard, or calls an embedder's participant; true when
/// it answered with success.
async fn reach<S: StepSender>(sender: &S, activity: u128, plan: BranchPlan, call: BranchCall) -> bool {
    let (branch, action) = (plan.branch, plan.action);
    if let BranchAction::External { participant, reference } = action {
        return sender.call(participant, call, activity, branch, reference).await.is_ok();
    }
    let step = match call {
        BranchCall::Try => Step::Try { activity, branch, action },
        BranchCall::Confirm => Step::Confirm { activity, branch },
        BranchCall::Cancel => Step::Cancel { activity, branch, action },
    };
    sender.send(plan.shard, vec![step]).await.is_ok()
}

/// Whether a branch's steps go with the initiator's own records (an account of its shard), or
/// are sent on their own (an account of another shard, a participant of the embedder's).
fn goes_home(plan: &BranchPlan, home: u32) -> bool {
    plan.shard == home && plan.action.account().is_some()
}

/// The branches of `branches` whose steps go with the initiator's own records.
pub(crate) fn local(branches: &[BranchPlan], home: u32) -> impl Iterator<Item = &BranchPlan> + '_ {
    branches.iter().filter(move |plan| goes_home(plan, home))
}

/// The others: branches of other shards and the embedder's.
pub(crate) fn remote(branches: &[BranchPlan], home: u32) -> impl Iterator<Item = &BranchPlan> + '_ {
    branches.iter().filter(move |plan| !goes_home(plan, home))
}

/// The initiator's first record of an activity: its Begin, with the Tries of the branches
/// that go with it.
pub(crate) fn begin_steps(
    activity: u128,
    deadline_ms: u64,
    branches: &[BranchPlan],
    home: u32,
) -> impl Iterator<Item = Step> + '_ {
    let begin = Step::Begin { activity, deadline_ms, branches: branches.to_vec() };
    let tries = local(branches, home).map(move |plan| Step::Try { activity, branch: plan.branch, action: plan.action });
    std::iter::once(begin).chain(tries)
}

/// The initiator's decision, with the Confirms or Cancels of the branches that go with it.
pub(crate) fn decide_steps(
    activity: u128,
    decision: Decision,
    branches: &[BranchPlan],
    home: u32,
) -> impl Iterator<Item = Step> + '_ {
    let outcomes = local(branches, home).map(move |plan| outcome_step(activity, plan, decision));
    std::iter::once(Step::Decide { activity, decision }).chain(outcomes)
}

fn call_of(decision: Decision) -> BranchCall {
    match decision {
        Decision::Commit => BranchCall::Confirm,
        Decision::Cancel(_) => BranchCall::Cancel,
    }
}

/// An error of a [`StepSender`]: a shard's refusal, or a failure to carry the steps.
pub trait StepError: From<Refusal> {
    /// The refusal, if the shard refused the steps.
    fn refusal(&self) -> Option<&Refusal>;
}

impl StepError for TradeError {
    fn refusal(&self) -> Option<&Refusal> {
        match self {
            TradeError::Refused(refusal) => Some(refusal),
            _ => None,
        }
    }
}

/// The decision in force once a Decide of `sent` was answered (`answers`, the Decide's
/// first): `sent`, or, for a repeat, the one recorded first (a cancel recorded for another
/// reason), so that every caller names the same.
pub(crate) fn decision_in_force(answers: &[StepAnswer], sent: Decision) -> Decision {
    match answers.first().map(|answer| answer.outcome) {
        Some(StepOutcome::Decided(first) | StepOutcome::Completed(first)) => first,
        _ => sent,
    }
}

/// The decision in force named by a refused Decide, if that is what `error` is.
fn decided_otherwise(error: &impl StepError) -> Option<Decision> {
    match error.refusal() {
        Some(Refusal::DecidedOtherwise { decision, .. }) => Some(*decision),
        _ => None,
    }
}

/// How an activity ended, or where it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Driven {
    /// The decision in force.
    pub decision: Decision,
    /// Every branch answered the decision (the activity's completion is queued behind it); if
    /// not, recovery finishes it.
    pub completed: bool,
    /// The activity was begun before this run (a retry): nothing new was recorded for it
    /// unless its first run had stopped midway.
    pub begun_before: bool,
}

/// The step that carries `decision` out on a branch.
pub(crate) fn outcome_step(activity: u128, plan: &BranchPlan, decision: Decision) -> Step {
    match decision {
        Decision::Commit => Step::Confirm { activity, branch: plan.branch },
        Decision::Cancel(_) => Step::Cancel { activity, branch: plan.branch, action: plan.action },
    }
}

/// Runs a new activity from its start (see the module's text). A refusal of the initiator's
/// own Tries is returned as the error, with nothing recorded.
pub async fn run_activity<S: StepSender>(
    sender: &S,
    home: u32,
    activity: u128,
    deadline_ms: u64,
    branches: Vec<BranchPlan>,
) -> Result<Driven, S::Error> {
    let begun =
        sender.send(home, begin_steps(activity, deadline_ms, &branches, home).collect()).await?.first().copied();
    let begun_before = begun.is_some_and(|answer| answer.repeat);
    // A retry of an activity already decided carries its decision out: no branch is asked to
    // try again.
    if let Some(StepAnswer { outcome: StepOutcome::Begun(state), repeat: true }) = begun {
        match state {
            ActivityState::Open => {}
            ActivityState::Completed(decision) => return Ok(Driven { decision, completed: true, begun_before }),
            ActivityState::Decided(decision) => {
                return finish_decided(sender, home, activity, &branches, decision).await;
            }
        }
    }
    let tries = remote(&branches, home).map(|plan| reach(sender, activity, *plan, BranchCall::Try));
    // Any failure, a refusal or not knowing whether the Try landed, cancels: a Cancel releases
    // what a Try reserved, or fences a Try still on its way.
    let all_tried = join_all(tries).await.iter().all(|tried| *tried);
    let decision = if all_tried { Decision::Commit } else { Decision::Cancel(CancelReason::TryRefused) };
    let driven = match sender.send(home, decide_steps(activity, decision, &branches, home).collect()).await {
        Ok(answers) => carry_out(sender, home, activity, &branches, decision_in_force(&answers, decision)).await,
        Err(error) => match decided_otherwise(&error) {
            Some(decision) => finish_decided(sender, home, activity, &branches, decision).await,
            None => Err(error),
        },
    };
    driven.map(|driven| Driven { begun_before, ..driven })
}

/// Drives an activity not completed to its end from where its record stands (recovery):
/// `None` for an undecided one still before its deadline at `now_ms`, which is left to its
/// initiator.
pub async fn finish_activity<S: StepSender>(
    sender: &S,
    home: u32,
    activity: u128,
    entry: &ActivityEntry,
    now_ms: u64,
) -> Result<Option<Driven>, S::Error> {
    let decision = match entry.state {
        ActivityState::Open if now_ms < entry.deadline_ms => return Ok(None),
        ActivityState::Open => {
            let decision = Decision::Cancel(CancelReason::Timeout);
            match sender.send(home, vec![Step::Decide { activity, decision }]).await {
                Ok(answers) => decision_in_force(&answers, decision),
                Err(error) => decided_otherwise(&error).ok_or(error)?,
            }
        }
        ActivityState::Decided(_) if entry.deadline_ms == DECIDED_AT_BEGIN => {
            return commit_untried(sender, home, activity, entry, now_ms).await.map(Some);
        }
        ActivityState::Decided(decision) => decision,
        ActivityState::Completed(decision) => {
            return Ok(Some(Driven { decision, completed: true, begun_before: true }));
        }
    };
    finish_decided(sender, home, activity, &entry.branches, decision).await.map(Some)
}

/// Carries out an activity recorded already decided to commit whose branches in other shards
/// were never tried (the credit of a settled trade paid from a balance): each branch's Try and
/// Confirm go together, one local transaction in its shard, then the activity completes. The
/// steps are idempotent, so a branch tried and confirmed before answers as a repeat, as long
/// as its shard remembers it: from half its key window after the activity began, only the
/// Confirm is sent again, which confirms a branch still known and is refused where the shard
/// forgot it (the activity then stays in doubt, its money in transit, rather than credit the
/// merchant twice).
async fn commit_untried<S: StepSender>(
    sender: &S,
    home: u32,
    activity: u128,
    entry: &ActivityEntry,
    now_ms: u64,
) -> Result<Driven, S::Error> {
    let decision = match entry.state {
        ActivityState::Decided(Decision::Commit) => Decision::Commit,
        ActivityState::Completed(decision) => return Ok(Driven { decision, completed: true, begun_before: true }),
        ActivityState::Open | ActivityState::Decided(_) => {
            return Err(Refusal::StepConflict { activity, reason: "not an activity decided to commit" }.into());
        }
    };
    let age_ms = now_ms.saturating_sub(entry.begun_ms);
    let try_again = sender.branches_remembered_for().is_none_or(|window| u128::from(age_ms) < window.as_millis() / 2);
    let steps = remote(&entry.branches, home).map(|plan| async move {
        let (branch, action) = (plan.branch, plan.action);
        let steps = match try_again {
            true => vec![Step::Try { activity, branch, action }, Step::Confirm { activity, branch }],
            false => vec![Step::Confirm { activity, branch }],
        };
        match action.account() {
            Some(_) => sender.send(plan.shard, steps).await.is_ok(),
            None => reach(sender, activity, *plan, BranchCall::Confirm).await,
        }
    });
    if !join_all(steps).await.iter().all(|answered| *answered) {
        return Ok(Driven { decision, completed: false, begun_before: true });
    }
    sender.post(home, vec![Step::Complete { activity }]).await;
    Ok(Driven { decision, completed: true, begun_before: true })
}

/// Sends a durable decision to every branch (the initiator's own first), then completes.
async fn finish_decided<S: StepSender>(
    sender: &S,
    home: u32,
    activity: u128,
    branches: &[BranchPlan],
    decision: Decision,
) -> Result<Driven, S::Error> {
    if local(branches, home).next().is_some() {
        sender.send(home, local(branches, home).map(|plan| outcome_step(activity, plan, decision)).collect()).await?;
    }
    carry_out(sender, home, activity, branches, decision).await
}

/// Sends the decision to the branches of other shards and to the embedder's (of `branches`,
/// the activity's); completes the activity once each answered. A branch that did not answer
/// leaves the activity to recovery.
async fn carry_out<S: StepSender>(
    sender: &S,
    home: u32,
    activity: u128,
    branches: &[BranchPlan],
    decision: Decision,
) -> Result<Driven, S::Error> {
    let steps = remote(branches, home).map(|plan| reach(sender, activity, *plan, call_of(decision)));
    let answered = join_all(steps).await.iter().all(|answered| *answered);
    if !answered {
        return Ok(Driven { decision, completed: false, begun_before: true });
    }
    // The answer does not wait for the completion: every branch has answered.
    sender.post(home, vec![Step::Complete { activity }]).await;
    Ok(Driven { decision, completed: true, begun_before: true })
}
