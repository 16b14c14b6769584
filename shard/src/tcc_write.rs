//! The write path of local transactions: 1..=8 steps of flexible transactions (`tcc.rs`)
//! checked together and made durable as one record, or refused with no trace.
//!
//! A transaction is checked by running the rules (`tcc_book.rs`) on a scratch view: durable
//! state, the balances that writes in flight leave, and the transaction's own earlier steps.
//! A transaction that touches an activity or branch with a step still in flight waits until
//! that step is durable and is then checked afresh, so the durable state it is checked against
//! is the state it will apply to. A transaction whose every step repeats one recorded answers
//! at once and writes nothing. A transaction that finds the log's queue full waits for the
//! last write in flight to be durable and is checked again, as a parked one is. The begin of an
//! activity whose id a run of account requests may hold (`key_runs.rs`) waits for one read of
//! the runs first.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use tradeshard_wal::disk::Disk;

use crate::account_write::InFlightAccounts;
use crate::accounts::{AccountBook, AccountKey, Balance};
use crate::currency::Currency;
use crate::error::{InputError, LogError, Refusal, TradeError};
use crate::id_hash::IdMap;
use crate::key_runs::{read_then, KeyKind, Lookup, RunRead};
use crate::shard::Shard;
use crate::state::{Effect, EffectKeys, Inner, ShardReply, Waiter};
use crate::system_record::LogRecord;
use crate::tcc::{BranchAction, Step, TccRecord, BRANCHES_MAX, STEPS_MAX};
use crate::tcc_book::{apply_step, ActivityEntry, BranchEntry, MoneyView, StepAnswer, TccBook};
use crate::trade::now_ms;
use crate::validate::validate_amount;

/// The branch number standing for an activity's own record in the keys of steps in flight.
const ACTIVITY: u32 = u32::MAX;

/// A transaction waiting for a step in flight on one of its activities or branches.
pub(crate) type Parked = (Vec<Step>, ShardReply<Vec<StepAnswer>>);

/// The local transactions in flight: which activities and branches they touch, and who waits.
#[derive(Default)]
pub(crate) struct InFlightTcc {
    /// (activity, branch or `ACTIVITY`) → seq of the last record touching it.
    keys: IdMap<(u128, u32), u64>,
    /// The accounts each record in flight changed, by its seq.
    touched: IdMap<u64, Vec<AccountKey>>,
    /// Transactions waiting for the record at a seq.
    parked: BTreeMap<u64, Vec<Parked>>,
}

impl InFlightTcc {
    /// Retires the durable record at `seq`: forgets its keys and the balances it left; returns
    /// the transactions that waited for it, to be checked again.
    pub(crate) fn retire(&mut self, seq: u64, record: &TccRecord, accounts: &mut InFlightAccounts) -> Vec<Parked> {
        for step in &record.steps {
            let key = key_of(step);
            if self.keys.get(&key) == Some(&seq) {
                self.keys.remove(&key);
            }
        }
        accounts.retire_balances(seq, &self.touched.remove(&seq).unwrap_or_default());
        self.parked.remove(&seq).unwrap_or_default()
    }

    /// Notes a Settled trade record at `seq` that begins the settlement `activity`: local
    /// transactions naming it wait for that record, as for one of their own.
    pub(crate) fn note_settlement(&mut self, activity: u128, seq: u64) {
        self.keys.insert((activity, ACTIVITY), seq);
    }

    /// Retires the durable Settled record at `seq` that began `activity`; returns the
    /// transactions that waited for it, to be checked again.
    pub(crate) fn retire_settlement(&mut self, activity: u128, seq: u64) -> Vec<Parked> {
        if self.keys.get(&(activity, ACTIVITY)) == Some(&seq) {
            self.keys.remove(&(activity, ACTIVITY));
        }
        self.parked.remove(&seq).unwrap_or_default()
    }

    /// True when a record in flight touches this activity's own entry.
    pub(crate) fn has_activity(&self, activity: u128) -> bool {
        self.keys.contains_key(&(activity, ACTIVITY))
    }

    /// After the log failed: forgets everything and fails the waiting transactions.
    pub(crate) fn fail(&mut self, error: &TradeError) {
        self.keys.clear();
        self.touched.clear();
        for (_, reply) in std::mem::take(&mut self.parked).into_values().flatten() {
            reply.send(Err(error.clone()));
        }
    }
}

/// What no state could accept: 1..=`STEPS_MAX` steps, an activity of 1..=`BRANCHES_MAX`
/// branches, actions of a user and an amount in bounds (the decoders refuse the rest).
fn check_steps(steps: &[Step]) -> Result<(), InputError> {
    let bad = InputError::BadSteps { count: steps.len(), max: STEPS_MAX };
    let action_ok = |action: &BranchAction| match action.account() {
        Some((user_id, _, amount)) => user_id != 0 && validate_amount(amount).is_ok(),
        None => true,
    };
    let step_ok = |step: &Step| match step {
        Step::Begin { branches, .. } => {
            (1..=BRANCHES_MAX).contains(&branches.len()) && branches.iter().all(|plan| action_ok(&plan.action))
        }
        Step::Try { action, .. } | Step::Cancel { action, .. } => action_ok(action),
        Step::Confirm { .. } | Step::Decide { .. } | Step::Complete { .. } => true,
    };
    match (1..=STEPS_MAX).contains(&steps.len()) && steps.iter().all(step_ok) {
        true => Ok(()),
        false => Err(bad),
    }
}

fn key_of(step: &Step) -> (u128, u32) {
    match *step {
        Step::Try { activity, branch, .. }
        | Step::Confirm { activity, branch }
        | Step::Cancel { activity, branch, .. } => (activity, u32::from(branch)),
        Step::Begin { activity, .. } | Step::Decide { activity, .. } | Step::Complete { activity } => {
            (activity, ACTIVITY)
        }
    }
}

/// The durable books, as the rules change them.
pub(crate) struct Books<'a> {
    pub accounts: &'a mut AccountBook,
    pub tcc: &'a mut TccBook,
}

impl MoneyView for Books<'_> {
    fn balance(&self, key: AccountKey) -> Balance {
        self.accounts.balance(key)
    }
    fn set_balance(&mut self, key: AccountKey, balance: Balance) {
        self.accounts.set_balance(key, balance)
    }
    fn branch(&self, activity: u128, branch: u16) -> Option<BranchEntry> {
        self.tcc.branch(activity, branch)
    }
    fn set_branch(&mut self, activity: u128, branch: u16, entry: BranchEntry) {
        self.tcc.set_branch(activity, branch, entry)
    }
    fn activity(&self, activity: u128) -> Option<ActivityEntry> {
        self.tcc.activity(activity).cloned()
    }
    fn set_activity(&mut self, activity: u128, entry: ActivityEntry) {
        self.tcc.set_activity(activity, entry)
    }
    fn add_in_transit(&mut self, currency: Currency, amount: i128) {
        self.tcc.add_in_transit(currency, amount)
    }
}

/// Durable state seen through the writes in flight, with a transaction's changes on top.
pub(crate) struct Scratch<'a> {
    accounts: &'a AccountBook,
    tcc: &'a TccBook,
    in_flight: &'a InFlightAccounts,
    balances: HashMap<AccountKey, Balance>,
    branches: HashMap<(u128, u16), BranchEntry>,
    activities: HashMap<u128, ActivityEntry>,
}

impl<'a> Scratch<'a> {
    pub(crate) fn over(accounts: &'a AccountBook, tcc: &'a TccBook, in_flight: &'a InFlightAccounts) -> Scratch<'a> {
        let (balances, branches, activities) = (HashMap::new(), HashMap::new(), HashMap::new());
        Scratch { accounts, tcc, in_flight, balances, branches, activities }
    }

    /// The balances the rules changed.
    pub(crate) fn into_balances(self) -> Vec<(AccountKey, Balance)> {
        self.balances.into_iter().collect()
    }
}

impl MoneyView for Scratch<'_> {
    fn balance(&self, key: AccountKey) -> Balance {
        let durable = || self.in_flight.balance(key).unwrap_or_else(|| self.accounts.balance(key));
        self.balances.get(&key).copied().unwrap_or_else(durable)
    }
    fn set_balance(&mut self, key: AccountKey, balance: Balance) {
        self.balances.insert(key, balance);
    }
    fn branch(&self, activity: u128, branch: u16) -> Option<BranchEntry> {
        self.branches.get(&(activity, branch)).copied().or_else(|| self.tcc.branch(activity, branch))
    }
    fn set_branch(&mut self, activity: u128, branch: u16, entry: BranchEntry) {
        self.branches.insert((activity, branch), entry);
    }
    fn activity(&self, activity: u128) -> Option<ActivityEntry> {
        self.activities.get(&activity).cloned().or_else(|| self.tcc.activity(activity).cloned())
    }
    fn set_activity(&mut self, activity: u128, entry: ActivityEntry) {
        self.activities.insert(activity, entry);
    }
    fn add_in_transit(&mut self, _: Currency, _: i128) {}
}

impl<D: Disk> Shard<D> {
    /// Makes `steps` durable together, or none of them; `reply` is answered with each step's
    /// answer once durable, or with why not (the first step refused, nothing written).
    pub fn transact(&self, steps: Vec<Step>, reply: ShardReply<Vec<StepAnswer>>) {
        transact_on(&self.inner, steps, reply)
    }

    /// An activity this shard initiated.
    pub fn activity(&self, activity: u128) -> Option<ActivityEntry> {
        self.inner.index.borrow().tcc().activity(activity).cloned()
    }

    /// The activities this shard initiated that are not completed (recovery drives them).
    pub fn unfinished_activities(&self) -> Vec<(u128, ActivityEntry)> {
        self.inner.index.borrow().tcc().unfinished().map(|(id, entry)| (id, entry.clone())).collect()
    }

    /// Per currency, money this shard's branches confirmed out of payers less money they
    /// confirmed into payees: summed over all shards, the money inside open activities.
    pub fn in_transit(&self) -> BTreeMap<Currency, i128> {
        self.inner.index.borrow().tcc().in_transit().clone()
    }
}

/// [`Shard::transact`] on a shard's state (the committer calls it again for parked ones).
pub(crate) fn transact_on<D: Disk>(inner: &Rc<Inner<D>>, steps: Vec<Step>, reply: ShardReply<Vec<StepAnswer>>) {
    transact_reading(inner, steps, reply, Vec::new())
}

/// [`transact_on`], with `reads`: the state of activity ids read from the runs of account
/// requests (an id a run may hold is read before the transaction is checked).
fn transact_reading<D: Disk>(
    inner: &Rc<Inner<D>>,
    steps: Vec<Step>,
    reply: ShardReply<Vec<StepAnswer>>,
    reads: Vec<RunRead>,
) {
    let mut accepted = inner.accepted.borrow_mut();
    if let Some(failure) = &accepted.failed {
        return reply.send(Err(failure.clone()));
    }
    if accepted.closing {
        return reply.send(Err(TradeError::Log(LogError::Closed)));
    }
    if let Err(error) = check_steps(&steps) {
        return reply.send(Err(error.into()));
    }
    if let Some(seq) = steps.iter().filter_map(|step| accepted.tcc.keys.get(&key_of(step)).copied()).max() {
        return accepted.tcc.parked.entry(seq).or_default().push((steps, reply));
    }
    let index = inner.index.borrow();
    // An activity's id may be its initiator's account request number (a transfer's): one
    // number is one request, either an account request or an activity.
    let mut to_read = None;
    for step in &steps {
        if let Step::Begin { activity, .. } = step {
            let read = reads.iter().find(|read| read.key == *activity);
            let made = match inner.key_runs.borrow().lookup(&index, *activity, KeyKind::Request, read) {
                Lookup::Known(state) => state.request.is_some() || accepted.accounts.has_request(*activity),
                Lookup::MustRead => {
                    to_read = Some(*activity);
                    break;
                }
            };
            if made {
                let reason = "the activity's id is an account request already made";
                return reply.send(Err(Refusal::StepConflict { activity: *activity, reason }.into()));
            }
        }
    }
    if let Some(activity) = to_read {
        drop((accepted, index));
        return read_then(inner, activity, KeyKind::Request, reply, move |inner, reply, read| {
            let mut reads = reads;
            reads.push(read);
            transact_reading(inner, steps, reply, reads)
        });
    }
    let at_ms = now_ms();
    let mut scratch = Scratch::over(index.accounts(), index.tcc(), &accepted.accounts);
    let mut answers = Vec::with_capacity(steps.len());
    for step in &steps {
        match apply_step(&mut scratch, step, at_ms) {
            Ok(answer) => answers.push(answer),
            Err(refusal) => return reply.send(Err(refusal.into())),
        }
    }
    if answers.iter().all(|answer| answer.repeat) {
        return reply.send(Ok(answers));
    }
    let balances = scratch.into_balances();
    let record = TccRecord { at_ms, steps };
    let ticket = match inner.wal.enqueue(&record.encode()) {
        Ok(ticket) => ticket,
        // The log's queue is full: the steps of an activity wait here, for the last write in
        // flight to be durable, rather than be refused midway through an activity.
        Err(LogError::Backpressure { .. }) if !accepted.effects.is_empty() => {
            let last = accepted.effects.back().expect("checked").seq;
            return accepted.tcc.parked.entry(last).or_default().push((record.steps, reply));
        }
        Err(error) => return reply.send(Err(error.into())),
    };
    let seq = ticket.seq();
    for (key, balance) in &balances {
        accepted.accounts.note_balance(*key, *balance, seq);
    }
    accepted.tcc.touched.insert(seq, balances.iter().map(|(key, _)| *key).collect());
    for step in &record.steps {
        accepted.tcc.keys.insert(key_of(step), seq);
    }
    let record = LogRecord::Tcc(record);
    accepted.push(Effect {
        seq,
        ticket: Some(ticket),
        record,
        keys: EffectKeys::None,
        waiter: Waiter::Tcc(reply),
        after: None,
    });
}
