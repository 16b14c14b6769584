//! Many activities driven together (a batch of transfers across shards): each step of the
//! protocol (`tcc_driver.rs`) goes out once for the whole batch, one hand-off to each shard
//! carrying every activity's local transaction of that step, instead of one hand-off per
//! activity and step. Each activity keeps its own records, its own answer and its own order
//! of steps: Begin with the initiator's Tries; the other Tries; the decision, durable with
//! the initiator's own Confirms or Cancels; the other Confirms or Cancels; completion. The
//! batch is no transaction: a refusal of one activity leaves the others as they were.
//!
//! The steps no book the engine made refuses (the decisions, the Confirms and Cancels of what
//! Tries reserved, the completions) go many activities to a local transaction, up to
//! `STEPS_MAX` steps, so a transfer across shards costs about two records and a fraction,
//! not five; the Begins and Tries, which may be refused, go one activity to a transaction.
//!
//! The batch drives an activity only along the path of one it began itself. Wherever an
//! activity leaves that path (its Begin repeats one recorded before or is refused, its Decide
//! is refused, a hand-off of its Begin or Decide fails), the batch steps aside and the caller
//! drives that one alone ([`run_activity`](crate::run_activity)), which takes it from where its
//! record stands: every step is idempotent. An activity with a branch of the embedder's
//! participants is always left to be driven alone.

use std::collections::BTreeMap;

use crate::join::join_all;
use crate::tcc::{BranchPlan, CancelReason, Decision, Step, STEPS_MAX};
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
    for (at, answer) in deliver(sender, begins.collect(), Packing::Alone).await {
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
    for (at, answer) in deliver(sender, tries.collect(), Packing::Alone).await {
        tried[at] &= answer.is_some();
    }
    let decision_of = |at: usize| if tried[at] { Decision::Commit } else { Decision::Cancel(CancelReason::TryRefused) };

    let decides = under_way(&aside).into_iter().map(|at| {
        let (home, activity, decision) = (planned[at].home, planned[at].activity, decision_of(at));
        let mut steps = vec![Step::Decide { activity, decision }];
        steps.extend(local[at].iter().map(|plan| outcome_step(activity, plan, decision)));
        (home, at, steps)
    });
    for (at, answer) in deliver(sender, decides.collect(), Packing::Together).await {
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
    for (at, answer) in deliver(sender, outcomes.collect(), Packing::Together).await {
        answered[at] &= answer.is_some();
    }

    // Completions are queued, not waited for: lost, recovery makes them.
    let mut completions: BTreeMap<u32, Vec<Vec<Step>>> = BTreeMap::new();
    for at in under_way(&aside).into_iter().filter(|&at| answered[at]) {
        let transactions = completions.entry(planned[at].home).or_default();
        if transactions.last().is_none_or(|last| last.len() == STEPS_MAX) {
            transactions.push(Vec::with_capacity(STEPS_MAX));
        }
        let last = transactions.last_mut().expect("pushed");
        last.push(Step::Complete { activity: planned[at].activity });
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

/// How the items of one step are made into local transactions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Packing {
    /// Each item its own transaction: its refusal must leave the others (a Begin with the
    /// payer's Try, a payee's Try: too little money, a number used before).
    Alone,
    /// Consecutive items of one shard together, up to `STEPS_MAX` steps a transaction, so
    /// that many activities' steps are one record: for steps no book the engine made refuses
    /// (a decision of an activity this batch began, a Confirm or Cancel of what a Try
    /// reserved, a completion). Should one be refused after all, the whole transaction is,
    /// and each of its items is handled as a failure of its own (driven alone, or left to
    /// recovery).
    Together,
}

/// Sends each item's steps (shard, item, steps) to its shard, every item of one shard in one
/// hand-off and the shards at once; each item's answers, or `None` when its transaction was
/// refused or not known to be carried.
async fn deliver<S: StepSender>(
    sender: &S,
    items: Vec<(u32, usize, Vec<Step>)>,
    packing: Packing,
) -> Vec<(usize, Option<Vec<StepAnswer>>)> {
    // Per shard: the transactions, and for each the items it carries (item, steps).
    type Carried = Vec<Vec<(usize, usize)>>;
    let mut by_shard: BTreeMap<u32, (Carried, Vec<Vec<Step>>)> = BTreeMap::new();
    for (shard, at, steps) in items {
        let (carried, transactions) = by_shard.entry(shard).or_default();
        let room = transactions.last().is_some_and(|last| last.len() + steps.len() <= STEPS_MAX);
        if packing == Packing::Alone || !room {
            carried.push(Vec::new());
            transactions.push(Vec::new());
        }
        carried.last_mut().expect("pushed").push((at, steps.len()));
        transactions.last_mut().expect("pushed").extend(steps);
    }
    let sent = by_shard.into_iter().map(|(shard, (carried, transactions))| async move {
        let answers = match sender.send_many(shard, transactions).await {
            Ok(answers) if answers.len() == carried.len() => answers.into_iter().map(Result::ok).collect(),
            _ => vec![None; carried.len()],
        };
        let mut delivered = Vec::new();
        for (items, answer) in carried.into_iter().zip(answers) {
            let mut answer = answer.map(Vec::into_iter);
            for (at, steps) in items {
                delivered.push((at, answer.as_mut().map(|answers| answers.by_ref().take(steps).collect())));
            }
        }
        delivered
    });
    join_all(sent).await.into_iter().flatten().collect()
}
