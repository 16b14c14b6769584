//! The write path of local transactions: 1..=17 steps of flexible transactions (`tcc.rs`)
//! checked together and made durable as one record, or refused with no trace.
//!
//! A transaction is checked by running the rules (`tcc_rules.rs`) on a scratch view: durable
//! state, the balances that writes in flight leave, and the transaction's own earlier steps.
//! A transaction that names an activity with a step still in flight (on the activity's own
//! entry or on one of its branches: a Try reads its activity's decision) waits until that
//! step is durable and is then checked afresh, so the durable state it is checked against
//! is the state it will apply to. A transaction whose every step repeats one recorded answers
//! at once and writes nothing; a repeated step among others is answered from the check and left
//! out of the record. A transaction that finds the log's queue full waits for the
//! last write in flight to be durable and is checked again, as a parked one is. A step naming an
//! activity or branch that memory does not hold, and that a run may hold (`key_runs.rs`: an
//! ended one, or an account request under an activity's id), waits for a read of the runs
//! first.

use std::collections::BTreeMap;
use std::rc::Rc;

use tradeshard_wal::disk::Disk;

use crate::account_write::InFlightAccounts;
use crate::accounts::{AccountBook, AccountKey, Balance};
use crate::currency::Currency;
use crate::error::{InputError, LogError, Refusal, TradeError};
use crate::id_hash::IdMap;
use crate::in_flight::{Applied, InFlightMap};
use crate::key_runs::{read_then, KeyKind, Lookup, RunRead};
use crate::run_values::branch_key;
use crate::shard::Shard;
use crate::state::{start_each, Effect, EffectKeys, Inner, ShardReply, Waiter};
use crate::system_record::LogRecord;
use crate::tcc::{BranchAction, Step, TccRecord, BRANCHES_MAX, STEPS_MAX};
use crate::tcc_aside::EndedAside;
use crate::tcc_book::{ActivityEntry, ActivityState, BranchEntry, StepAnswer, TccBook};
use crate::tcc_ended::{EndedActivity, FoundActivity};
use crate::tcc_rules::{apply_step, MoneyView};
use crate::trade::now_ms;
use crate::validate::validate_amount;

/// A transaction waiting for a step in flight on one of its activities.
pub(crate) type Parked = (Vec<Step>, ShardReply<Vec<StepAnswer>>);

/// The local transactions in flight: which activities they touch, and who waits.
#[derive(Default)]
pub(crate) struct InFlightTcc {
    /// Activity → the last record in flight touching it (a transaction naming an activity in
    /// flight waits, so at most one local transaction of an activity is in flight; a
    /// settlement may begin one beside it), counted until the committer applies that record
    /// (`in_flight.rs`); `true` when the record touches the activity's own entry (a Begin, a
    /// decision, a completion, a settlement), not only its branches.
    activities: InFlightMap<u128, bool>,
    /// Transactions waiting for the record at a seq.
    parked: BTreeMap<u64, Vec<Parked>>,
    /// Which records the committer applied.
    applied: Applied,
}

impl InFlightTcc {
    /// Notes that the record at `seq`, and every one before it, is applied to the books: the
    /// keys it touched stop counting.
    pub(crate) fn note_applied(&mut self, seq: u64) {
        self.applied.note(seq);
    }

    /// Removes the keys of applied records, if enough are held (`InFlightMap::sweep`).
    pub(crate) fn sweep(&mut self) {
        self.activities.sweep(self.applied);
    }

    /// The seq of the record in flight that touches `activity`, if any.
    fn in_flight(&self, activity: u128) -> Option<u64> {
        self.activities.get(&activity, self.applied).map(|(_, seq)| seq)
    }

    /// Notes a Settled trade record at `seq` that begins the settlement `activity`: local
    /// transactions naming it wait for that record, as for one of their own.
    pub(crate) fn note_settlement(&mut self, activity: u128, seq: u64) {
        self.activities.insert(activity, true, seq);
    }

    /// The transactions that waited for the durable write at `seq`: those that named an
    /// activity it touched, and those that found the log's queue full (which wait
    /// for the newest write in flight, whatever its kind).
    pub(crate) fn parked_behind(&mut self, seq: u64) -> Option<Vec<Parked>> {
        self.parked.remove(&seq)
    }

    /// True when a record in flight touches this activity's own entry.
    pub(crate) fn has_activity(&self, activity: u128) -> bool {
        self.activities.get(&activity, self.applied).is_some_and(|(own, _)| *own)
    }

    /// After the log failed: forgets everything and fails the waiting transactions.
    pub(crate) fn fail(&mut self, error: &TradeError) {
        self.activities.clear();
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

/// Whether `step` changes its activity's own entry rather than only one of its branches.
fn touches_own_entry(step: &Step) -> bool {
    matches!(step, Step::Begin { .. } | Step::Decide { .. } | Step::Complete { .. })
}

/// The durable books, as the rules change them.
pub(crate) struct Books<'a> {
    pub accounts: &'a mut AccountBook,
    pub tcc: &'a mut TccBook,
    /// Where an open's replay sets the entries that end aside (`tcc_aside.rs`); none live.
    pub ended_aside: Option<&'a mut EndedAside>,
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
        self.tcc.set_branch_or_aside(activity, branch, entry, self.ended_aside.as_deref_mut())
    }
    fn activity(&self, activity: u128) -> Option<ActivityEntry> {
        self.tcc.activity(activity).cloned()
    }
    fn set_activity(&mut self, activity: u128, entry: ActivityEntry) {
        self.tcc.set_activity_or_aside(activity, entry, self.ended_aside.as_deref_mut())
    }
    fn add_in_transit(&mut self, currency: Currency, amount: i128) {
        self.tcc.add_in_transit(currency, amount)
    }
}

/// The key a step's entry has in the runs, and which stores hold it.
fn run_key(step: &Step) -> (u128, KeyKind) {
    match *step {
        Step::Try { activity, branch, .. }
        | Step::Confirm { activity, branch }
        | Step::Cancel { activity, branch, .. } => (branch_key(activity, branch), KeyKind::Branch { activity, branch }),
        Step::Begin { activity, .. } | Step::Decide { activity, .. } | Step::Complete { activity } => {
            (activity, KeyKind::Request)
        }
    }
}

/// Durable state seen through the writes in flight, with a transaction's changes on top (and
/// under them, the ended entries read from the runs).
pub(crate) struct Scratch<'a> {
    accounts: &'a AccountBook,
    tcc: &'a TccBook,
    in_flight: &'a InFlightAccounts,
    balances: IdMap<AccountKey, Balance>,
    branches: IdMap<(u128, u16), BranchEntry>,
    activities: IdMap<u128, ActivityEntry>,
    in_transit: Vec<(Currency, i128)>,
    /// Ended branches read from the runs: what the steps found, not what they changed.
    run_branches: IdMap<(u128, u16), BranchEntry>,
    ended: IdMap<u128, EndedActivity>,
}

/// What a local transaction's steps change, as the write path's check computed it: the
/// entries and balances they leave and the money they move into or out of activities' hands.
/// The committer installs it once the record is durable (`ShardIndex::install_tcc`) instead of
/// running the rules again: the check ran them on the state the record applies to (durable
/// state and the writes in flight before it, which become durable first, in log order, and
/// nothing else changes the entries it names while it is in flight). Replay, which has only
/// the record, runs the rules.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TccChanges {
    pub balances: Vec<(AccountKey, Balance)>,
    pub branches: Vec<((u128, u16), BranchEntry)>,
    pub activities: Vec<(u128, ActivityEntry)>,
    pub in_transit: Vec<(Currency, i128)>,
}

impl TccChanges {
    /// Looks up the entries these changes install and drops the answers: the committer runs it
    /// a few transactions ahead of installing them (`committer.rs`), so that the misses of the
    /// lookups (maps of millions of entries) overlap.
    pub(crate) fn touch(&self, index: &crate::index::ShardIndex) {
        for (key, _) in &self.balances {
            std::hint::black_box(index.accounts().balance(*key));
        }
        for ((activity, branch), entry) in &self.branches {
            index.tcc().touch_branch_install(*activity, *branch, entry);
        }
        for (activity, entry) in &self.activities {
            index.tcc().touch_activity_install(*activity, entry);
        }
    }

    /// The same changes, whatever their order.
    #[cfg(debug_assertions)]
    fn sorted(mut self) -> TccChanges {
        self.balances.sort_unstable_by_key(|(key, _)| *key);
        self.branches.sort_unstable_by_key(|(key, _)| *key);
        self.activities.sort_unstable_by_key(|(key, _)| *key);
        let mut moved = BTreeMap::<Currency, i128>::new();
        for (currency, amount) in self.in_transit {
            *moved.entry(currency).or_default() += amount;
        }
        self.in_transit = moved.into_iter().filter(|(_, amount)| *amount != 0).collect();
        self
    }
}

/// What the rules make of `record`'s steps on the durable books of `index` alone: in debug
/// builds the committer checks the changes the write path computed against it.
#[cfg(debug_assertions)]
pub(crate) fn check_changes(index: &crate::index::ShardIndex, record: &TccRecord, changes: &TccChanges) {
    let none_in_flight = InFlightAccounts::default();
    let mut rules = Scratch::over(index.accounts(), index.tcc(), &none_in_flight, record.steps.len());
    for step in &record.steps {
        apply_step(&mut rules, step, record.at_ms).expect("a durable record's steps apply to the durable books");
    }
    assert_eq!(
        rules.into_changes().sorted(),
        changes.clone().sorted(),
        "a record's changes are what the rules make of it"
    );
}

impl<'a> Scratch<'a> {
    /// For `steps` steps: each changes at most one balance, branch and activity, so the
    /// changes' maps are made that large at once rather than grown step by step (none is
    /// allocated for 0, until its first write).
    pub(crate) fn over(
        accounts: &'a AccountBook,
        tcc: &'a TccBook,
        in_flight: &'a InFlightAccounts,
        steps: usize,
    ) -> Scratch<'a> {
        Scratch {
            accounts,
            tcc,
            in_flight,
            balances: IdMap::with_capacity_and_hasher(steps, Default::default()),
            branches: IdMap::with_capacity_and_hasher(steps, Default::default()),
            activities: IdMap::with_capacity_and_hasher(steps, Default::default()),
            in_transit: Vec::new(),
            run_branches: IdMap::default(),
            ended: IdMap::default(),
        }
    }

    /// The balances the rules changed.
    pub(crate) fn into_balances(self) -> Vec<(AccountKey, Balance)> {
        self.balances.into_iter().collect()
    }

    /// Everything the rules changed.
    pub(crate) fn into_changes(self) -> TccChanges {
        TccChanges {
            balances: self.balances.into_iter().collect(),
            branches: self.branches.into_iter().collect(),
            activities: self.activities.into_iter().collect(),
            in_transit: self.in_transit,
        }
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
        let key = (activity, branch);
        // A first branch its activity's entry keeps, changed here (`TccBook::branch`).
        if let Some(kept) = self.activities.get(&activity).filter(|_| branch == 0).and_then(ActivityEntry::first_branch)
        {
            return Some(kept);
        }
        let read = || self.run_branches.get(&key).copied().or_else(|| self.tcc.branch(activity, branch));
        self.branches.get(&key).copied().or_else(read)
    }
    fn set_branch(&mut self, activity: u128, branch: u16, entry: BranchEntry) {
        // Kept where the durable books will keep it (`ActivityEntry::keeps_branch`): in the
        // activity's entry, which the changes then carry, or on its own.
        let key = (activity, branch);
        let elsewhere = || {
            self.branches.contains_key(&key)
                || self.run_branches.contains_key(&key)
                || self.tcc.branch_on_its_own(activity, branch)
        };
        // Only a first branch may be kept: no other asks the activities (a payee's, in a shard
        // that does not hold its activity, would miss there).
        let held = (branch == 0).then(|| self.activities.get(&activity).or_else(|| self.tcc.activity(activity)));
        if !held.flatten().is_some_and(|held| held.keeps_branch(branch, &entry, elsewhere)) {
            self.branches.insert(key, entry);
            return;
        }
        let tcc = self.tcc;
        let held =
            self.activities.entry(activity).or_insert_with(|| tcc.activity(activity).expect("read above").clone());
        held.first_state = Some(entry.state);
    }
    fn activity(&self, activity: u128) -> Option<ActivityEntry> {
        self.activities.get(&activity).cloned().or_else(|| self.tcc.activity(activity).cloned())
    }
    fn set_activity(&mut self, activity: u128, mut entry: ActivityEntry) {
        // As the durable books will set it (`TccBook::set_activity`).
        if let Some(branch) = entry.give_out_first_branch() {
            self.branches.insert((activity, 0), branch);
        }
        self.activities.insert(activity, entry);
    }
    fn ended_activity(&self, activity: u128) -> Option<EndedActivity> {
        self.ended.get(&activity).copied()
    }
    fn activity_decided(&self, activity: u128) -> bool {
        match self.activities.get(&activity).or_else(|| self.tcc.activity(activity)) {
            Some(entry) => entry.state != ActivityState::Open,
            None => self.ended.contains_key(&activity),
        }
    }
    fn add_in_transit(&mut self, currency: Currency, amount: i128) {
        self.in_transit.push((currency, amount));
    }
}

impl<D: Disk> Shard<D> {
    /// Makes `steps` durable together, or none of them; `reply` is answered with each step's
    /// answer once durable, or with why not (the first step refused, nothing written).
    pub fn transact(&self, steps: Vec<Step>, reply: ShardReply<Vec<StepAnswer>>) {
        transact_on(&self.inner, steps, reply)
    }

    /// Many local transactions, each as [`transact`](Self::transact) would make it (one
    /// refused leaves the others); `reply` is answered once the last is durable or refused,
    /// with each one's answer in the order given, started in turns (`state::start_each`).
    pub fn transact_many(
        &self,
        transactions: Vec<Vec<Step>>,
        reply: ShardReply<Vec<Result<Vec<StepAnswer>, TradeError>>>,
    ) {
        // Their entries looked up together first, so that the checks find them in the cache;
        // and for the steps that make entries (a Begin, a Try), the lines of the runs' filters
        // their checks read.
        let index = self.inner.index.borrow();
        let runs = self.inner.key_runs.borrow();
        for step in transactions.iter().flatten() {
            index.tcc().touch(step);
            if matches!(step, Step::Begin { .. } | Step::Try { .. }) {
                let (key, kind) = run_key(step);
                runs.prefetch_filters(key, kind);
            }
        }
        drop((index, runs));
        start_each(&self.inner, transactions, transact_on, reply)
    }

    /// An activity this shard initiated that memory holds: under way, or completed since the
    /// last checkpoint ([`Shard::find_activity`] finds the others too).
    pub fn activity(&self, activity: u128) -> Option<ActivityEntry> {
        self.inner.index.borrow().tcc().activity(activity).cloned()
    }

    /// An activity this shard initiated, held in memory or completed and kept in a run.
    pub fn find_activity(&self, activity: u128, reply: ShardReply<Option<FoundActivity>>) {
        find_activity_on(&self.inner, activity, reply, None)
    }

    /// The activities this shard initiated that are not completed (recovery drives them), by id.
    pub fn unfinished_activities(&self) -> Vec<(u128, ActivityEntry)> {
        let index = self.inner.index.borrow();
        let mut unfinished: Vec<_> = index.tcc().unfinished().map(|(id, entry)| (id, entry.clone())).collect();
        unfinished.sort_unstable_by_key(|(id, _)| *id);
        unfinished
    }

    /// Per currency, money this shard's branches confirmed out of payers less money they
    /// confirmed into payees: summed over all shards, the money inside open activities.
    pub fn in_transit(&self) -> BTreeMap<Currency, i128> {
        self.inner.index.borrow().tcc().in_transit().clone()
    }
}

/// [`Shard::find_activity`], with the id's state read from the runs if it was.
fn find_activity_on<D: Disk>(
    inner: &Rc<Inner<D>>,
    activity: u128,
    reply: ShardReply<Option<FoundActivity>>,
    read: Option<RunRead>,
) {
    if let Some(entry) = inner.index.borrow().tcc().activity(activity) {
        return reply.send(Ok(Some(FoundActivity::Held(entry.clone()))));
    }
    let lookup = inner.key_runs.borrow().lookup(&inner.index.borrow(), activity, KeyKind::Request, read.as_ref());
    match lookup {
        Lookup::Known(state) => reply.send(Ok(state.activity.map(FoundActivity::Ended))),
        Lookup::MustRead => read_then(inner, activity, KeyKind::Request, reply, move |inner, reply, read| {
            find_activity_on(inner, activity, reply, Some(read))
        }),
    }
}

/// [`Shard::transact`] on a shard's state (the committer calls it again for parked ones).
pub(crate) fn transact_on<D: Disk>(inner: &Rc<Inner<D>>, steps: Vec<Step>, reply: ShardReply<Vec<StepAnswer>>) {
    transact_reading(inner, steps, reply, Vec::new())
}

/// [`transact_on`], with `reads`: what the runs hold of the activities and branches the steps
/// name (an entry memory does not hold and a run may hold is read before the transaction is
/// checked, one read at a time).
fn transact_reading<D: Disk>(
    inner: &Rc<Inner<D>>,
    mut steps: Vec<Step>,
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
    if let Some(seq) = steps.iter().filter_map(|step| accepted.tcc.in_flight(step.activity())).max() {
        return accepted.tcc.parked.entry(seq).or_default().push((steps, reply));
    }
    let index = inner.index.borrow();
    // What the runs keep of the branches and activities the steps name and memory does not hold.
    let (mut run_branches, mut run_activities) = (IdMap::default(), IdMap::default());
    for step in &steps {
        let (key, kind) = run_key(step);
        let held = match kind {
            KeyKind::Branch { activity, branch } => index.tcc().branch(activity, branch).is_some(),
            _ => index.tcc().activity(step.activity()).is_some(),
        };
        // A Begin asks even of an activity held: its id must not be an account request's.
        if held && !matches!(step, Step::Begin { .. }) {
            continue;
        }
        let read = reads.iter().find(|read| read.key == key);
        let state = match inner.key_runs.borrow().lookup(&index, key, kind, read) {
            Lookup::Known(state) => state,
            Lookup::MustRead => {
                drop((accepted, index));
                return read_then(inner, key, kind, reply, move |inner, reply, read| {
                    // A read of this key made before the runs changed is stale: the new one
                    // stands in its place, or the lookup would keep finding the stale one.
                    let mut reads = reads;
                    reads.retain(|earlier| earlier.key != read.key);
                    reads.push(read);
                    transact_reading(inner, steps, reply, reads)
                });
            }
        };
        // An activity's id may be its initiator's account request number (a transfer's): one
        // number is one request, either an account request or an activity.
        if let Step::Begin { activity, .. } = step {
            if state.request.is_some() || accepted.accounts.has_request(*activity) {
                let reason = "the activity's id is an account request already made";
                return reply.send(Err(Refusal::StepConflict { activity: *activity, reason }.into()));
            }
        }
        if let (Some(ended), false) = (state.activity, held) {
            run_activities.insert(step.activity(), ended);
        }
        if let (Some(entry), KeyKind::Branch { activity, branch }) = (state.branch, kind) {
            run_branches.insert((activity, branch), entry);
        }
    }
    let at_ms = now_ms();
    let mut scratch = Scratch::over(index.accounts(), index.tcc(), &accepted.accounts, steps.len());
    scratch.run_branches = run_branches;
    scratch.ended = run_activities;
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
    // A repeated step changes nothing: it is answered from this check and left out of the
    // record, so that no record names an entry a checkpoint may have moved to a run.
    let repeats = answers.iter().any(|answer| answer.repeat);
    let written = match repeats {
        false => std::mem::take(&mut steps),
        true => steps.iter().zip(&answers).filter(|(_, answer)| !answer.repeat).map(|(step, _)| step.clone()).collect(),
    };
    let record = TccRecord { at_ms, steps: written };
    let changes = scratch.into_changes();
    let ticket = match inner.wal.enqueue(&record.encode()) {
        Ok(ticket) => ticket,
        // The log's queue is full: the steps of an activity wait here, for the last write in
        // flight to be durable, rather than be refused midway through an activity.
        Err(LogError::Backpressure { .. }) if !accepted.effects.is_empty() => {
            let last = accepted.effects.back().expect("checked").seq;
            let steps = if repeats { steps } else { record.steps };
            return accepted.tcc.parked.entry(last).or_default().push((steps, reply));
        }
        Err(error) => return reply.send(Err(error.into())),
    };
    let seq = ticket.seq();
    for (key, balance) in &changes.balances {
        accepted.accounts.note_balance(*key, *balance, seq);
    }
    // Steps on activities' own entries go last: an activity is noted as touched on its own
    // entry when any step of the record touches it so.
    for own in [false, true] {
        for step in record.steps.iter().filter(|step| touches_own_entry(step) == own) {
            accepted.tcc.activities.insert(step.activity(), own, seq);
        }
    }
    let record = LogRecord::Tcc(record);
    accepted.push(Effect {
        seq,
        ticket: Some(ticket),
        record,
        keys: EffectKeys::None,
        waiter: Waiter::Tcc(reply, answers, changes),
    });
}
