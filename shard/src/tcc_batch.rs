//! Many activities driven together (a batch of transfers across shards): each step of the
//! protocol (`tcc_driver.rs`) goes out once for the whole batch, one hand-off to each shard
//! carrying every activity's local transaction of that step, instead of one hand-off per
//! activity and step. Each activity keeps its own records, its own answer and its own order
//! of steps: Begin with the initiator's Tries; the other Tries; the decision, durable with
//! the initiator's own Confirms or Cancels; the other Confirms or Cancels; completion. The
//! batch is no transaction: a refusal of one activity leaves the others as they were.
//!
//! Every step goes many activities to a local transaction, up to `STEPS_MAX` steps, so a
//! transfer across shards costs about one record and a fraction, not five. A transaction is
//! refused whole, with no trace, when one of its steps is: the Begins and Tries, which a
//! book may refuse (too little available, a branch fenced by a Cancel), are then sent again
//! one activity to a transaction, so that each refusal is its own activity's alone.
//!
//! The batch drives an activity only along the path of one it began itself. Wherever an
//! activity leaves that path (its Begin repeats one recorded before or is refused, its Decide
//! is refused, a hand-off of its Begin or Decide fails), the batch steps aside and the caller
//! drives that one alone ([`run_activity`](crate::run_activity)), which takes it from where its
//! record stands: every step is idempotent. A Begin refused for too little available is the
//! exception: nothing was recorded, and alone it would be refused again, so that refusal is
//! its answer. An activity with a branch of the embedder's participants is always left to be
//! driven alone.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::error::Refusal;
use crate::join::join_all;
use crate::tcc::{BranchPlan, CancelReason, Decision, Step, STEPS_MAX};
use crate::tcc_book::StepAnswer;
use crate::tcc_driver::{self, decision_in_force, outcome_step, Driven, StepError, StepSender};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchDriven {
    /// Begun by this batch and driven to its decision, as `run_activity` would have.
    Driven(Driven),
    /// Refused at its Begin (too little available to the initiator's Tries): nothing was
    /// recorded, as `run_activity` would have answered.
    Refused(Refusal),
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
    // An activity's branches sent on their own (the others go with its own records): read
    // from its plan at each step rather than copied out per activity.
    let remote = |at: usize| tcc_driver::remote(&planned[at].branches, planned[at].home);
    let under_way =
        |aside: &[Option<BatchDriven>]| -> Vec<usize> { (0..aside.len()).filter(|&at| aside[at].is_none()).collect() };

    let mut begins = Items::default();
    for at in under_way(&aside) {
        let PlannedActivity { home, activity, deadline_ms, ref branches } = planned[at];
        begins.push(home, at, tcc_driver::begin_steps(activity, deadline_ms, branches, home));
    }
    // An activity the batch carries twice may be refused for funds in one place and begun in
    // another (its funds may come in between): a refusal answers it only when it is once.
    let mut carried: BTreeMap<u128, usize> = BTreeMap::new();
    for plan in planned {
        *carried.entry(plan.activity).or_default() += 1;
    }
    for (at, delivered) in deliver_refusable(sender, begins).await {
        aside[at] = match delivered {
            Delivered::Answered(begun) if begun.is_some_and(|begun| !begun.repeat) => continue,
            Delivered::Refused(Some(refusal @ Refusal::InsufficientFunds { .. }))
                if carried[&planned[at].activity] == 1 =>
            {
                Some(BatchDriven::Refused(refusal))
            }
            _ => Some(BatchDriven::Alone { begun: false }),
        };
    }

    // Any failure of a Try, a refusal or not knowing whether it landed, cancels.
    let mut tried = vec![true; planned.len()];
    let mut tries = Items::default();
    for at in under_way(&aside) {
        let activity = planned[at].activity;
        for plan in remote(at) {
            tries.push(plan.shard, at, [Step::Try { activity, branch: plan.branch, action: plan.action }]);
        }
    }
    for (at, delivered) in deliver_refusable(sender, tries).await {
        tried[at] &= matches!(delivered, Delivered::Answered(_));
    }
    let mut decided: Vec<Decision> = tried
        .iter()
        .map(|&tried| if tried { Decision::Commit } else { Decision::Cancel(CancelReason::TryRefused) })
        .collect();

    let mut decides = Items::default();
    for at in under_way(&aside) {
        let PlannedActivity { home, activity, ref branches, .. } = planned[at];
        decides.push(home, at, tcc_driver::decide_steps(activity, decided[at], branches, home));
    }
    for (at, delivered) in deliver_together(sender, decides).await {
        match delivered {
            // A repeat names the decision recorded first (a cancel for another reason).
            Delivered::Answered(decided_as) => decided[at] = decision_in_force(decided_as.as_slice(), decided[at]),
            // Decided otherwise meanwhile (recovery past the deadline), or not known to be
            // decided: driven alone from its record.
            _ => aside[at] = Some(BatchDriven::Alone { begun: true }),
        }
    }
    let decision_of = |at: usize| decided[at];

    // A branch that did not answer leaves the activity to recovery.
    let mut answered = vec![true; planned.len()];
    let mut outcomes = Items::default();
    for at in under_way(&aside) {
        let (activity, decision) = (planned[at].activity, decision_of(at));
        for plan in remote(at) {
            outcomes.push(plan.shard, at, [outcome_step(activity, plan, decision)]);
        }
    }
    for (at, delivered) in deliver_together(sender, outcomes).await {
        answered[at] &= matches!(delivered, Delivered::Answered(_));
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

    aside
        .into_iter()
        .enumerate()
        .map(|(at, aside)| {
            aside.unwrap_or(BatchDriven::Driven(Driven {
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
    /// Each item its own transaction, so that its refusal is its own.
    Alone,
    /// Consecutive items of one shard together, up to `STEPS_MAX` steps a transaction, so
    /// that many activities' steps are one record. A refused transaction is refused for each
    /// of its items.
    Together,
}

/// What became of one item's steps.
enum Delivered {
    /// Made, or answered as repeats: the answer to the item's first step (the Begin or the
    /// Decide the item leads with; of the others, only that they were answered counts).
    Answered(Option<StepAnswer>),
    /// Refused with no trace: the refusal when the transaction carried this item alone, or
    /// `None` when it carried others too (any of them may be the cause).
    Refused(Option<Refusal>),
    /// Not known to be carried: the hand-off, or the shard, failed.
    Unknown,
}

/// The items of one step of the protocol, each an activity's steps for one shard: their steps
/// one after another in one vector (not a vector an item, which the shard would free), and
/// each item's shard, activity (its place in the batch) and range of steps.
#[derive(Default)]
struct Items {
    steps: Vec<Step>,
    items: Vec<(u32, usize, Range<usize>)>,
}

impl Items {
    fn push(&mut self, shard: u32, at: usize, steps: impl IntoIterator<Item = Step>) {
        let start = self.steps.len();
        self.steps.extend(steps);
        self.items.push((shard, at, start..self.steps.len()));
    }

    /// Item `item`'s shard and steps.
    fn get(&self, item: usize) -> (u32, &[Step]) {
        let (shard, _, ref range) = self.items[item];
        (shard, &self.steps[range.clone()])
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    /// Each item's activity, with what became of it.
    fn activities_with(&self, delivered: Vec<Delivered>) -> Vec<(usize, Delivered)> {
        self.items.iter().map(|(_, at, _)| *at).zip(delivered).collect()
    }
}

/// Delivers steps a book may refuse: together, then again alone for the items of the
/// transactions refused or failed, so that each refusal or error (a failed read of a run for
/// one of them) falls on its own item only; the steps are idempotent, so an item whose
/// transaction landed unanswered is answered as a repeat. Each item's activity, and what
/// became of it, in the items' order.
async fn deliver_refusable<S: StepSender>(sender: &S, items: Items) -> Vec<(usize, Delivered)> {
    let mut delivered = deliver(sender, &items, Packing::Together).await;
    let again: Vec<usize> = (0..items.len())
        .filter(|&item| matches!(delivered[item], Delivered::Refused(None) | Delivered::Unknown))
        .collect();
    if !again.is_empty() {
        let mut alone = Items::default();
        for &item in &again {
            let (shard, steps) = items.get(item);
            alone.push(shard, items.items[item].1, steps.iter().cloned());
        }
        for (item, answer) in again.into_iter().zip(deliver(sender, &alone, Packing::Alone).await) {
            delivered[item] = answer;
        }
    }
    items.activities_with(delivered)
}

/// Delivers steps no book the engine made refuses: together. Each item's activity, and what
/// became of it, in the items' order.
async fn deliver_together<S: StepSender>(sender: &S, items: Items) -> Vec<(usize, Delivered)> {
    let delivered = deliver(sender, &items, Packing::Together).await;
    items.activities_with(delivered)
}

/// Sends each item's steps to its shard, every item of one shard in one hand-off and the
/// shards at once; what became of each item, in the items' order.
async fn deliver<S: StepSender>(sender: &S, items: &Items, packing: Packing) -> Vec<Delivered> {
    // Per shard: the transactions, and for each the items it carries (item, steps).
    type Carried = Vec<Vec<(usize, usize)>>;
    let mut by_shard: BTreeMap<u32, (Carried, Vec<Vec<Step>>)> = BTreeMap::new();
    for item in 0..items.len() {
        let (shard, steps) = items.get(item);
        let (carried, transactions) = by_shard.entry(shard).or_default();
        let room = transactions.last().is_some_and(|last| last.len() + steps.len() <= STEPS_MAX);
        if packing == Packing::Alone || !room {
            // Room for the transaction's items and steps: one item alone, else up to STEPS_MAX.
            let (items_room, steps_room) = match packing {
                Packing::Alone => (1, steps.len()),
                Packing::Together => (STEPS_MAX, STEPS_MAX),
            };
            carried.push(Vec::with_capacity(items_room));
            transactions.push(Vec::with_capacity(steps_room));
        }
        carried.last_mut().expect("pushed").push((item, steps.len()));
        transactions.last_mut().expect("pushed").extend(steps.iter().cloned());
    }
    let sent = by_shard.into_iter().map(|(shard, (carried, transactions))| async move {
        let count = carried.len();
        let answers: Vec<Option<Result<Vec<StepAnswer>, S::Error>>> = match sender.send_many(shard, transactions).await
        {
            Ok(answers) if answers.len() == count => answers.into_iter().map(Some).collect(),
            _ => (0..count).map(|_| None).collect(),
        };
        let mut delivered = Vec::with_capacity(carried.iter().map(Vec::len).sum());
        for (carried, answer) in carried.into_iter().zip(answers) {
            let refusal = match &answer {
                Some(Err(error)) => error.refusal().cloned(),
                _ => None,
            };
            let alone = carried.len() == 1;
            let mut answers = match answer {
                Some(Ok(answers)) => Some(answers.into_iter()),
                _ => None,
            };
            for (item, steps) in carried {
                let outcome = match (&mut answers, &refusal) {
                    (Some(answers), _) => {
                        let first = answers.next();
                        answers.by_ref().take(steps.saturating_sub(1)).for_each(drop);
                        Delivered::Answered(first)
                    }
                    (None, Some(refusal)) => Delivered::Refused(alone.then(|| refusal.clone())),
                    (None, None) => Delivered::Unknown,
                };
                delivered.push((item, outcome));
            }
        }
        delivered
    });
    let mut delivered: Vec<Option<Delivered>> = (0..items.len()).map(|_| None).collect();
    for (item, outcome) in join_all(sent).await.into_iter().flatten() {
        delivered[item] = Some(outcome);
    }
    delivered.into_iter().map(|outcome| outcome.expect("every item delivered")).collect()
}
