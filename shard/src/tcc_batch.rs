//! Many activities driven together (a batch of transfers across shards): each step of the
//! protocol (`tcc_driver.rs`) goes out once for the whole batch, one hand-off to each shard
//! carrying every activity's local transaction of that step, instead of one hand-off per
//! activity and step. Each activity keeps its own records, its own answer and its own order
//! of steps: Begin with the initiator's Tries; the other Tries; the decision, durable with
//! the initiator's own Confirms or Cancels; the other Confirms or Cancels; completion. The
//! batch is no transaction: a refusal of one activity leaves the others as they were.
//!
//! The batch drives an activity only along the path of one it began itself. Wherever an
//! activity leaves that path (its Begin repeats one recorded before or is refused, its Decide
//! is refused, a hand-off of its Begin or Decide fails), the batch steps aside and the caller
//! drives that one alone ([`run_activity`](crate::run_activity)), which takes it from where its
//! record stands: every step is idempotent. An activity with a branch of the embedder's
//! participants is always left to be driven alone.

use std::collections::BTreeMap;

use crate::join::join_all;
use crate::tcc::{BranchPlan, CancelReason, Decision, Step};
use crate::tcc_book::StepAnswer;
use crate::tcc_driver::{outcome_step, split, Driven, StepSender};

/// An activity to run from its start, as [`run_activity`](crate::run_activity) takes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedActivity {
    /// The initiator's shard, which records the activity.
    pub home: u32,
    pub activity: u128,
    pub deadline_ms: u64,
    pub branches: Vec<BranchPlan>,
}

/// What the batch did with one activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchDriven {
    /// Begun by this batch and driven to its decision, as `run_activity` would have.
    Driven(Driven),
    /// Left to be driven alone; `begun` when this batch recorded its Begin (so a run alone
    /// finds it begun, though the caller's request is its first).
    Alone { begun: bool },
}

/// Runs `planned` together (module text); one answer each, in order.
pub async fn run_activities<S: StepSender>(sender: &S, planned: &[PlannedActivity]) -> Vec<BatchDriven> {
    let mut aside: Vec<Option<BatchDriven>> = planned
        .iter()
        .map(|plan| {
            let external = plan.branches.iter().any(|branch| branch.action.account().is_none());
            external.then_some(BatchDriven::Alone { begun: false })
        })
        .collect();
    let (local, remote): (Vec<_>, Vec<_>) = planned.iter().map(|plan| split(&plan.branches, plan.home)).unzip();
    let under_way =
        |aside: &[Option<BatchDriven>]| -> Vec<usize> { (0..aside.len()).filter(|&at| aside[at].is_none()).collect() };

    let begins = under_way(&aside).into_iter().map(|at| {
        let PlannedActivity { home, activity, deadline_ms, ref branches } = planned[at];
        let mut steps = vec![Step::Begin { activity, deadline_ms, branches: branches.clone() }];
        steps.extend(local[at].iter().map(|plan| Step::Try { activity, branch: plan.branch, action: plan.action }));
        (home, at, steps)
    });
    for (at, answer) in deliver(sender, begins.collect()).await {
        let begun_here = matches!(answer.as_deref(), Some([StepAnswer { repeat: false, .. }, ..]));
        if !begun_here {
            aside[at] = Some(BatchDriven::Alone { begun: false });
        }
    }

    // Any failure of a Try, a refusal or not knowing whether it landed, cancels.
    let mut tried = vec![true; planned.len()];
    let tries = under_way(&aside).into_iter().flat_map(|at| {
        let activity = planned[at].activity;
        remote[at]
            .iter()
            .map(move |plan| (plan.shard, at, vec![Step::Try { activity, branch: plan.branch, action: plan.action }]))
    });
    for (at, answer) in deliver(sender, tries.collect()).await {
        tried[at] &= answer.is_some();
    }
    let decision_of = |at: usize| if tried[at] { Decision::Commit } else { Decision::Cancel(CancelReason::TryRefused) };

    let decides = under_way(&aside).into_iter().map(|at| {
        let (home, activity, decision) = (planned[at].home, planned[at].activity, decision_of(at));
        let mut steps = vec![Step::Decide { activity, decision }];
        steps.extend(local[at].iter().map(|plan| outcome_step(activity, plan, decision)));
        (home, at, steps)
    });
    for (at, answer) in deliver(sender, decides.collect()).await {
        // Decided otherwise meanwhile (recovery past the deadline), or not known to be
        // decided: driven alone from its record.
        if answer.is_none() {
            aside[at] = Some(BatchDriven::Alone { begun: true });
        }
    }

    // A branch that did not answer leaves the activity to recovery.
    let mut answered = vec![true; planned.len()];
    let outcomes = under_way(&aside).into_iter().flat_map(|at| {
        let (activity, decision) = (planned[at].activity, decision_of(at));
        remote[at].iter().map(move |plan| (plan.shard, at, vec![outcome_step(activity, plan, decision)]))
    });
    for (at, answer) in deliver(sender, outcomes.collect()).await {
        answered[at] &= answer.is_some();
    }

    let mut completions: BTreeMap<u32, Vec<Vec<Step>>> = BTreeMap::new();
    for at in under_way(&aside).into_iter().filter(|&at| answered[at]) {
        let activity = planned[at].activity;
        completions.entry(planned[at].home).or_default().push(vec![Step::Complete { activity }]);
    }
    join_all(completions.into_iter().map(|(home, transactions)| sender.post_many(home, transactions))).await;

    (0..planned.len())
        .map(|at| {
            aside[at].unwrap_or(BatchDriven::Driven(Driven {
                decision: decision_of(at),
                completed: answered[at],
                begun_before: false,
            }))
        })
        .collect()
}

/// Sends each item's steps (shard, item, steps) to its shard, every item of one shard in one
/// hand-off and the shards at once; each item's answers, or `None` when its transaction was
/// refused or not known to be carried.
async fn deliver<S: StepSender>(
    sender: &S,
    items: Vec<(u32, usize, Vec<Step>)>,
) -> Vec<(usize, Option<Vec<StepAnswer>>)> {
    let mut by_shard: BTreeMap<u32, (Vec<usize>, Vec<Vec<Step>>)> = BTreeMap::new();
    for (shard, at, steps) in items {
        let (ats, transactions) = by_shard.entry(shard).or_default();
        ats.push(at);
        transactions.push(steps);
    }
    let sent = by_shard.into_iter().map(|(shard, (ats, transactions))| async move {
        match sender.send_many(shard, transactions).await {
            Ok(answers) if answers.len() == ats.len() => {
                ats.into_iter().zip(answers).map(|(at, answer)| (at, answer.ok())).collect::<Vec<_>>()
            }
            _ => ats.into_iter().map(|at| (at, None)).collect(),
        }
    });
    join_all(sent).await.into_iter().flatten().collect()
}
