//! The write path of account requests (deposits, withdrawals, transfers between two accounts
//! of this shard): checked against the durable balances plus the requests still in flight,
//! queued in the log as one journal record, answered by the committer once durable.
//!
//! A request number already applied answers the original's receipt, marked `replayed`, and
//! writes nothing (after waiting for the original if it is still in flight); reused for
//! another operation or amount it is `Refusal::AccountRequestConflict`. A refusal (too little
//! available, a balance past its limit, a full log queue) is answered at once and leaves no
//! trace. One journal record is one movement naming both its sides, so a transfer is atomic:
//! recovery applies all of it or nothing.
//!
//! Request numbers older than the last checkpoint are in runs on disk (`key_runs.rs`): a
//! request whose key a run's Bloom filter may hold waits for one read of the runs, then is
//! checked again.

use std::collections::BTreeMap;
use std::rc::Rc;

use tradeshard_wal::disk::Disk;

use crate::accounts::{movement, AccountCommand, AccountKey, AccountReceipt, Balance, RequestEntry};
use crate::currency::Currency;
use crate::error::{LogError, Refusal, TradeError};
use crate::in_flight::{Applied, InFlightMap};
use crate::journal::{AccountOp, JournalRecord};
use crate::key_runs::{read_then, KeyKind, Lookup, RunRead};
use crate::keys::account_request_key;
use crate::shard::Shard;
use crate::state::{start_each, Accepted, Effect, EffectKeys, Inner, ShardReply, Waiter};
use crate::system_record::LogRecord;
use crate::trade::now_ms;

/// The account requests in flight: the balances they leave, and their request numbers. Their
/// entries count until the committer applies the record that wrote them (`in_flight.rs`).
#[derive(Default)]
pub(crate) struct InFlightAccounts {
    /// Account → its balance once every request in flight is durable.
    balances: InFlightMap<AccountKey, Balance>,
    /// Request key → (operation, currency, amount).
    requests: InFlightMap<u128, (AccountOp, Currency, u64)>,
    /// Requests that repeated one in flight, by the seq of that one.
    repeats: BTreeMap<u64, Vec<ShardReply<AccountReceipt>>>,
    /// Which records the committer applied.
    applied: Applied,
}

impl InFlightAccounts {
    /// Notes that the record at `seq`, and every one before it, is applied to the books.
    pub(crate) fn note_applied(&mut self, seq: u64) {
        self.applied.note(seq);
    }

    /// Answers the repeats of the durable journal record at `seq` with `receipt`.
    pub(crate) fn answer_repeats(&mut self, seq: u64, receipt: AccountReceipt) {
        for repeat in self.repeats.remove(&seq).unwrap_or_default() {
            repeat.send(Ok(AccountReceipt { replayed: true, ..receipt }));
        }
    }

    /// The account request in flight under `key`, with the seq of its record.
    fn request(&self, key: u128) -> Option<((AccountOp, Currency, u64), u64)> {
        self.requests.get(&key, self.applied).map(|(asked, seq)| (*asked, seq))
    }

    /// True when an account request in flight has this request key.
    pub(crate) fn has_request(&self, key: u128) -> bool {
        self.request(key).is_some()
    }

    /// An account's balance once every request in flight is durable.
    pub(crate) fn balance(&self, key: AccountKey) -> Option<Balance> {
        self.balances.get(&key, self.applied).map(|(balance, _)| *balance)
    }

    /// Notes a balance a write at `seq` leaves.
    pub(crate) fn note_balance(&mut self, key: AccountKey, balance: Balance, seq: u64) {
        self.balances.insert(key, balance, seq);
    }

    /// Notes the account request under `key` that the write at `seq` makes.
    fn note_request(&mut self, key: u128, asked: (AccountOp, Currency, u64), seq: u64) {
        self.requests.insert(key, asked, seq);
    }

    /// Removes the entries of applied records, if enough are held (`InFlightMap::sweep`).
    pub(crate) fn sweep(&mut self) {
        self.balances.sweep(self.applied);
        self.requests.sweep(self.applied);
    }

    /// After the log failed: forgets everything and fails the repeats waiting.
    pub(crate) fn fail(&mut self, error: &TradeError) {
        self.balances.clear();
        self.requests.clear();
        for repeat in std::mem::take(&mut self.repeats).into_values().flatten() {
            repeat.send(Err(error.clone()));
        }
    }
}

impl<D: Disk> Shard<D> {
    /// Makes an account request durable; `reply` is answered once it is, or with why not.
    pub fn post(&self, command: AccountCommand, reply: ShardReply<AccountReceipt>) {
        post_on(&self.inner, command, reply, None)
    }

    /// Makes many account requests durable, each as [`post`](Self::post) would; `reply` is
    /// answered once the last is durable or refused, with each one's answer in the order
    /// given, posted in turns (`state::start_each`).
    pub fn post_many(&self, commands: Vec<AccountCommand>, reply: ShardReply<Vec<Result<AccountReceipt, TradeError>>>) {
        start_each(&self.inner, commands, |inner, command, one| post_on(inner, command, one, None), reply)
    }

    /// What the durable account request under `key` did, its operation and amount, or `None`
    /// (read from the runs if a run may hold it).
    pub fn find_account_request(&self, key: u128, reply: ShardReply<Option<(AccountOp, u64)>>) {
        find_request(&self.inner, key, reply, None)
    }

    /// The account's durable balance (zero for an account never used).
    pub fn balance(&self, user_id: u64, currency: Currency) -> Balance {
        self.inner.index.borrow().accounts().balance(AccountKey { user_id, currency })
    }

    /// Per currency, the sum of this shard's balances (available and frozen): durable
    /// deposits less durable withdrawals.
    pub fn account_totals(&self) -> BTreeMap<Currency, u128> {
        self.inner.index.borrow().accounts().totals()
    }
}

/// [`Shard::find_account_request`], with the key's state read from the runs if it was.
fn find_request<D: Disk>(
    inner: &Rc<Inner<D>>,
    key: u128,
    reply: ShardReply<Option<(AccountOp, u64)>>,
    read: Option<RunRead>,
) {
    let lookup = inner.key_runs.borrow().lookup(&inner.index.borrow(), key, KeyKind::Request, read.as_ref());
    match lookup {
        Lookup::Known(state) => reply.send(Ok(state.request.map(|entry| (entry.op, entry.amount)))),
        Lookup::MustRead => read_then(inner, key, KeyKind::Request, reply, move |inner, reply, read| {
            find_request(inner, key, reply, Some(read))
        }),
    }
}

/// [`Shard::post`], with the request key's state read from the runs if it was.
fn post_on<D: Disk>(
    inner: &Rc<Inner<D>>,
    command: AccountCommand,
    reply: ShardReply<AccountReceipt>,
    read: Option<RunRead>,
) {
    let mut accepted = inner.accepted.borrow_mut();
    if let Some(failure) = &accepted.failed {
        return reply.send(Err(failure.clone()));
    }
    if accepted.closing {
        return reply.send(Err(TradeError::Log(LogError::Closed)));
    }
    if let Err(error) = command.check() {
        return reply.send(Err(error.into()));
    }
    let index = inner.index.borrow();
    let book = index.accounts();
    let key = account_request_key(command.user_id, &command.request_no);
    let asked = (command.op, command.currency, command.amount);
    let Accepted { accounts, tcc, .. } = &mut *accepted;
    if let Some(((op, currency, amount), seq)) = accounts.request(key) {
        if (op, currency, amount) != asked {
            let original = RequestEntry { op, currency, amount, at_ms: 0, after: Balance::default() };
            return reply.send(Err(original.conflict(&command.request_no).into()));
        }
        return accounts.repeats.entry(seq).or_default().push(reply);
    }
    if index.tcc().activity(key).is_some() || tcc.has_activity(key) {
        // The number names an activity (a transfer across shards): the amount of its first
        // branch, the payer's, once it is durable.
        let amount = index.tcc().activity(key).and_then(|entry| entry.branches.first()?.action.account());
        let (request_no, amount) = (command.request_no, amount.map_or(0, |(_, _, amount)| amount));
        return reply.send(Err(Refusal::AccountRequestConflict { request_no, op: "transfer", amount }.into()));
    }
    let durable = match inner.key_runs.borrow().lookup(&index, key, KeyKind::Request, read.as_ref()) {
        Lookup::Known(state) => state,
        Lookup::MustRead => {
            drop((accepted, index));
            return read_then(inner, key, KeyKind::Request, reply, move |inner, reply, read| {
                post_on(inner, command, reply, Some(read))
            });
        }
    };
    if let Some(ended) = durable.activity {
        // A completed transfer across shards, in a run: the payer's amount.
        let amount = ended.first.account().map_or(0, |(_, _, amount)| amount);
        let request_no = command.request_no;
        return reply.send(Err(Refusal::AccountRequestConflict { request_no, op: "transfer", amount }.into()));
    }
    let durable = durable.request;
    if let Some(entry) = durable {
        return match entry.same_as(&command) {
            true => reply.send(Ok(entry.receipt(command.user_id, true))),
            false => reply.send(Err(entry.conflict(&command.request_no).into())),
        };
    }
    let balance_of = |account| accounts.balance(account).unwrap_or_else(|| book.balance(account));
    let moved = match movement(command.op, command.user_id, command.currency, command.amount, balance_of) {
        Ok(moved) => moved,
        Err(refusal) => return reply.send(Err(refusal.into())),
    };
    let AccountCommand { op, user_id, currency, amount, request_no } = command;
    let record = JournalRecord { op, user_id, currency, amount, at_ms: now_ms(), request_no };
    let ticket = match inner.wal.enqueue(&record.encode()) {
        Ok(ticket) => ticket,
        Err(error) => return reply.send(Err(error.into())),
    };
    let seq = ticket.seq();
    for (account, balance) in moved.changed() {
        accounts.note_balance(account, balance, seq);
    }
    accounts.note_request(key, asked, seq);
    let record = LogRecord::Journal(record);
    let keys = EffectKeys::None;
    accepted.push(Effect { seq, ticket: Some(ticket), record, keys, waiter: Waiter::Account(reply) });
}
