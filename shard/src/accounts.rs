//! Accounts: each user's balances per currency (available and frozen) and the request
//! numbers already applied, as the durable state that journal records (`journal.rs`) build.
//!
//! The rules of a movement ([`movement`]) are shared by the write path, which checks a request
//! against the balances it accepted, and by the book, which applies durable records (from the
//! committer and from replay), so that the log and the balances never disagree: a record that
//! would take a balance below zero or above [`BALANCE_MAX`] cannot have been written by this
//! engine and is refused as a bad record.
//!
//! Memory: about 56 bytes per account, all in memory and in checkpoints; about 100 per request
//! number applied since the last checkpoint, which moves them to the shard's sorted runs on
//! disk (`key_runs.rs`), where a repeat still finds its first answer.

use std::collections::BTreeMap;

use crate::currency::Currency;
use crate::error::Refusal;
use crate::journal::{AccountOp, JournalRecord};
use crate::keys::account_request_key;
use crate::layered::LayeredMap;
use crate::partitioned::PartitionedMap;

/// The most a balance (available, frozen and incoming) may hold, in minor units: room for 4,000
/// transfers of the largest amount, and far from overflowing a `u64` when summed twice.
pub const BALANCE_MAX: u64 = 4_000_000_000_000_000_000;

/// An account: a user's money in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountKey {
    pub user_id: u64,
    pub currency: Currency,
}

/// What an account holds, in minor units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Balance {
    /// What the user can spend.
    pub available: u64,
    /// What reservations hold (a TCC Try of a debit); not spendable until released.
    pub frozen: u64,
    /// Room reserved under the limit for credits on their way (a TCC Try of a credit): not
    /// money yet.
    pub incoming: u64,
}

impl Balance {
    /// Available plus frozen: the money the account holds.
    pub fn money(self) -> u64 {
        self.available.saturating_add(self.frozen)
    }

    /// What the limit counts: the money and the room reserved for credits (saturating: a
    /// checked balance never reaches `u64::MAX`).
    pub(crate) fn held(self) -> u64 {
        self.money().saturating_add(self.incoming)
    }
}

/// An account request as the engine checked it: the request number is valid, the amount in
/// bounds, the users distinct and not zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountCommand {
    pub op: AccountOp,
    pub user_id: u64,
    pub currency: Currency,
    pub amount: u64,
    pub request_no: String,
}

/// What a durable account request answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccountReceipt {
    pub op: AccountOp,
    pub user_id: u64,
    pub currency: Currency,
    pub amount: u64,
    /// The requesting user's balance right after this request.
    pub balance: Balance,
    pub at_ms: u64,
    /// The request number was applied already: this is the original's answer and nothing
    /// was written.
    pub replayed: bool,
}

/// A durable request, by its request number: what a repeat of it is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestEntry {
    pub op: AccountOp,
    pub currency: Currency,
    pub amount: u64,
    pub at_ms: u64,
    /// The requester's balance right after the request.
    pub after: Balance,
}

impl RequestEntry {
    /// True when `command` asks for what this request did (a repeat, not a conflict).
    pub(crate) fn same_as(&self, command: &AccountCommand) -> bool {
        (self.op, self.currency, self.amount) == (command.op, command.currency, command.amount)
    }

    pub(crate) fn receipt(&self, user_id: u64, replayed: bool) -> AccountReceipt {
        let RequestEntry { op, currency, amount, at_ms, after } = *self;
        AccountReceipt { op, user_id, currency, amount, balance: after, at_ms, replayed }
    }

    /// The refusal of a command reusing this request's number for something else.
    pub(crate) fn conflict(&self, request_no: &str) -> Refusal {
        Refusal::AccountRequestConflict { request_no: request_no.to_string(), op: self.op.name(), amount: self.amount }
    }
}

/// The accounts a movement changes, with their balances after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Movement {
    pub debit: Option<(AccountKey, Balance)>,
    pub credit: Option<(AccountKey, Balance)>,
}

impl Movement {
    /// The requester's balance after the movement.
    pub(crate) fn requester_after(&self, op: AccountOp) -> Balance {
        let side = match op {
            AccountOp::Deposit => self.credit,
            AccountOp::Withdraw | AccountOp::Transfer { .. } => self.debit,
        };
        side.expect("every operation moves its requester's money").1
    }

    pub(crate) fn changed(&self) -> impl Iterator<Item = (AccountKey, Balance)> {
        self.debit.into_iter().chain(self.credit)
    }
}

/// The balances after `op` of `amount`, given the balances now (`balance_of`); refused when
/// the debited account has too little available or the credited one would pass
/// [`BALANCE_MAX`].
pub(crate) fn movement(
    op: AccountOp,
    user_id: u64,
    currency: Currency,
    amount: u64,
    balance_of: impl Fn(AccountKey) -> Balance,
) -> Result<Movement, Refusal> {
    let (debited, credited) = match op {
        AccountOp::Deposit => (None, Some(user_id)),
        AccountOp::Withdraw => (Some(user_id), None),
        AccountOp::Transfer { to_user } => (Some(user_id), Some(to_user)),
    };
    let debit = match debited {
        None => None,
        Some(user_id) => {
            let key = AccountKey { user_id, currency };
            let mut balance = balance_of(key);
            if balance.available < amount {
                let available = balance.available;
                return Err(Refusal::InsufficientFunds { user_id, currency, available, requested: amount });
            }
            balance.available -= amount;
            Some((key, balance))
        }
    };
    let credit = match credited {
        None => None,
        Some(user_id) => {
            let key = AccountKey { user_id, currency };
            let mut balance = balance_of(key);
            if balance.held().checked_add(amount).is_none_or(|total| total > BALANCE_MAX) {
                let holds = balance.held();
                return Err(Refusal::BalanceLimit { user_id, currency, balance: holds, amount, max: BALANCE_MAX });
            }
            balance.available += amount;
            Some((key, balance))
        }
    };
    Ok(Movement { debit, credit })
}

/// One entry of the book, as a checkpoint holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AccountItem {
    Balance(AccountKey, Balance),
    Request(u128, RequestEntry),
}

/// The durable accounts of one shard. Cloning shares the maps with the clone, part by part
/// (`partitioned.rs`): a checkpoint's snapshot.
#[derive(Default, Clone)]
pub(crate) struct AccountBook {
    balances: PartitionedMap<AccountKey, Balance>,
    /// Frozen at a checkpoint's snapshot, so that the snapshot shares them without a copy
    /// (`layered.rs`); all of them go to the checkpoint's run.
    requests: LayeredMap<u128, RequestEntry>,
    /// Per currency, the sum of the balances' money, kept as each balance changes, so that a
    /// reader of the totals costs the currencies, not the accounts.
    totals: BTreeMap<Currency, u128>,
}

impl AccountBook {
    /// Room for `requests` more account requests (an open's replay: `ShardIndex::reserve_recent`).
    pub(crate) fn reserve_requests(&mut self, requests: usize) {
        self.requests.reserve(requests);
    }

    /// The account's durable balance (zero for an account never used).
    pub(crate) fn balance(&self, key: AccountKey) -> Balance {
        self.balances.get(&key).copied().unwrap_or_default()
    }

    /// Sets an account's balance (a step of a flexible transaction moved money).
    pub(crate) fn set_balance(&mut self, key: AccountKey, balance: Balance) {
        self.put(key, balance);
    }

    /// Sets a balance and keeps its currency's total; returns the balance it replaced.
    fn put(&mut self, key: AccountKey, balance: Balance) -> Option<Balance> {
        let before = self.balances.insert(key, balance);
        let total = self.totals.entry(key.currency).or_default();
        *total = *total + u128::from(balance.money()) - u128::from(before.map_or(0, |b| b.money()));
        before
    }

    /// The durable request made under this request key, if it is among those since the last
    /// checkpoint's run (`key_runs.rs` asks the runs for the others).
    pub(crate) fn request(&self, key: u128) -> Option<&RequestEntry> {
        self.requests.get(&key)
    }

    /// The requests applied since the last checkpoint's run.
    pub(crate) fn recent_requests(&self) -> impl Iterator<Item = (u128, &RequestEntry)> + '_ {
        self.requests.iter().map(|(key, entry)| (*key, entry))
    }

    /// Freezes the requests held, for a checkpoint's snapshot (`layered.rs`).
    pub(crate) fn freeze_requests(&mut self) {
        self.requests.freeze();
    }

    /// Gives back the room the requests' map keeps for the next interval
    /// (`LayeredMap::release_room`).
    pub(crate) fn release_requests_room(&mut self) {
        self.requests.release_room()
    }

    /// Part `part` of the requests since a failed checkpoint moved down (`LayeredMap::fold_live_part`).
    pub(crate) fn fold_live_requests_part(&mut self, part: usize) {
        self.requests.fold_live_part(part)
    }

    /// Once the checkpoint of the last freeze is durable, its run holding every request it
    /// froze: drops part `part` (`0..SETTLE_PARTS`) of them; returns how many the part held.
    pub(crate) fn settle_requests_part(&mut self, part: usize) -> usize {
        self.requests.settle_part(part, |_| false)
    }

    /// Whether frozen requests wait for [`settle_requests_part`](Self::settle_requests_part).
    pub(crate) fn has_frozen_requests(&self) -> bool {
        self.requests.has_frozen()
    }

    /// Applies a durable journal record; returns what its request answers. A number applied
    /// twice is caught among the requests in memory only: the write path checked the runs.
    pub(crate) fn apply(&mut self, record: &JournalRecord) -> Result<RequestEntry, &'static str> {
        let (key, entry, movement) = self.movement_of(record)?;
        // One probe of the requests both checks the number and takes it: every transfer of
        // the shard inserts into this map of millions, where each probe is a cache miss.
        self.take_request(key, entry)?;
        for (account, balance) in movement.changed() {
            self.put(account, balance);
        }
        Ok(entry)
    }

    /// [`apply`](Self::apply) for an open's replay: the balances change now, and the request
    /// number and its answer are returned, for [`take_request`](Self::take_request) once
    /// the replay's changes set aside are applied part by part (`index/staged.rs`; the
    /// replay reads no request).
    pub(crate) fn apply_but_request(&mut self, record: &JournalRecord) -> Result<(u128, RequestEntry), &'static str> {
        let (key, entry, movement) = self.movement_of(record)?;
        for (account, balance) in movement.changed() {
            self.put(account, balance);
        }
        Ok((key, entry))
    }

    /// Takes request number `key` for `entry`; a number taken already is refused.
    pub(crate) fn take_request(&mut self, key: u128, entry: RequestEntry) -> Result<(), &'static str> {
        match self.requests.insert_new(key, entry) {
            true => Ok(()),
            false => Err("account request number applied twice"),
        }
    }

    /// A journal record's request number, what it answers, and the balances it moves, checked
    /// against the balances held; nothing changes.
    fn movement_of(&self, record: &JournalRecord) -> Result<(u128, RequestEntry, Movement), &'static str> {
        let key = account_request_key(record.user_id, &record.request_no);
        let movement = movement(record.op, record.user_id, record.currency, record.amount, |key| self.balance(key))
            .map_err(|_| "journal record takes a balance out of bounds")?;
        let after = movement.requester_after(record.op);
        let entry = RequestEntry {
            op: record.op,
            currency: record.currency,
            amount: record.amount,
            at_ms: record.at_ms,
            after,
        };
        Ok((key, entry, movement))
    }

    /// Every balance (a checkpoint writes them; [`restore`](Self::restore) reads them back,
    /// and requests too if a checkpoint holds any). The requests are in runs (`key_runs.rs`).
    pub(crate) fn items(&self) -> impl Iterator<Item = AccountItem> + '_ {
        self.balances.iter().map(|(key, balance)| AccountItem::Balance(*key, *balance))
    }

    /// Adds an entry read from a checkpoint; a second entry of one key means the checkpoint is
    /// not what was written.
    pub(crate) fn restore(&mut self, item: AccountItem) -> Result<(), &'static str> {
        let twice = match item {
            AccountItem::Balance(key, balance) => self.put(key, balance).is_some(),
            AccountItem::Request(key, entry) => {
                let twice = self.requests.get(&key).is_some();
                self.requests.insert(key, entry);
                twice
            }
        };
        match twice {
            true => Err("account entry twice in a checkpoint"),
            false => Ok(()),
        }
    }

    /// Per currency, the sum of every account's available and frozen balance: what came in
    /// from outside minus what went out.
    pub(crate) fn totals(&self) -> BTreeMap<Currency, u128> {
        // Accounts are never removed, so a currency is here once any account of it exists, as
        // a sum over the accounts would have it.
        self.totals.clone()
    }

    /// Bytes of the request numbers held: a checkpoint moves them to runs.
    pub(crate) fn request_bytes(&self) -> u64 {
        self.requests.entry_bytes()
    }

    /// Accounts and request numbers held.
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.balances.len(), self.requests.len())
    }
}

const _: () = assert!(
    std::mem::size_of::<AccountKey>() + std::mem::size_of::<Balance>() <= 48
        && std::mem::size_of::<RequestEntry>() + std::mem::size_of::<u128>() <= 96,
    "the memory per account and per request number stated above, before the maps' own"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn record(op: AccountOp, user_id: u64, amount: u64, request_no: &str) -> JournalRecord {
        let currency = Currency::parse("USD").unwrap();
        JournalRecord { op, user_id, currency, amount, at_ms: 1, request_no: request_no.into() }
    }

    #[test]
    fn movements_keep_the_total_equal_to_deposits_less_withdrawals() {
        let mut book = AccountBook::default();
        book.apply(&record(AccountOp::Deposit, 1, 500, "a")).unwrap();
        let moved = book.apply(&record(AccountOp::Transfer { to_user: 2 }, 1, 200, "b")).unwrap();
        assert_eq!(moved.after, Balance { available: 300, ..Balance::default() });
        book.apply(&record(AccountOp::Withdraw, 1, 100, "c")).unwrap();
        let usd = Currency::parse("USD").unwrap();
        assert_eq!(book.balance(AccountKey { user_id: 2, currency: usd }).available, 200);
        assert_eq!(book.totals()[&usd], 400);
        let summed = |book: &AccountBook| book.balances.iter().map(|(_, b)| u128::from(b.money())).sum::<u128>();
        book.set_balance(AccountKey { user_id: 2, currency: usd }, Balance { available: 50, frozen: 150, incoming: 9 });
        assert_eq!(book.totals()[&usd], summed(&book), "the kept total is the sum over the accounts");
        let mut restored = AccountBook::default();
        for item in book.items() {
            restored.restore(item).unwrap();
        }
        assert_eq!(restored.totals(), book.totals());
    }

    #[test]
    fn a_record_no_check_would_pass_is_refused() {
        let mut book = AccountBook::default();
        assert!(book.apply(&record(AccountOp::Withdraw, 1, 1, "a")).is_err(), "below zero");
        book.apply(&record(AccountOp::Deposit, 1, 5, "a")).unwrap();
        assert!(book.apply(&record(AccountOp::Deposit, 1, 5, "a")).is_err(), "a request number twice");
        let usd = Currency::parse("USD").unwrap();
        let full = |_| Balance { available: BALANCE_MAX, ..Balance::default() };
        let refused = movement(AccountOp::Deposit, 1, usd, 1, full);
        assert!(matches!(refused, Err(Refusal::BalanceLimit { .. })), "{refused:?}");
        let refused =
            movement(AccountOp::Deposit, 1, usd, 1, |_| Balance { available: u64::MAX, frozen: 9, incoming: 0 });
        assert!(matches!(refused, Err(Refusal::BalanceLimit { .. })), "{refused:?}");
    }
}
