//! The shard's in-memory indexes, rebuilt from the log on open and kept current as records
//! become durable: trade id → the trade's current state and where its `Created` record lies;
//! (merchant, order number) → trade id and user → that user's trades in creation order, both
//! for what was added since the last checkpoint (the rest is in runs on disk, `key_runs.rs`).
//!
//! What a record does to a trade is decided by the lifecycle rules (`lifecycle.rs`), shared
//! with the checks made before a write, so the log and the index never disagree on it.
//!
//! Memory per trade: an 88-byte slot (the entry, which knows its id's logical shard; the slot is
//! the counter) in the trade table while the trade is in memory (`trade_table/`: trades leave
//! memory for the table on disk), and about 2.4 bytes of Bloom filter and fence keys in the
//! runs; until the next checkpoint, 32 bytes in the order map and 8 in the user's list (see
//! `ARCHITECTURE.md`).

use std::collections::HashMap;
use std::num::NonZeroU64;

use crate::id_hash::IdMap;

use tradeshard_wal::Appended;

mod held;
mod items;
mod layers;
#[cfg(test)]
mod settle_tests;
mod staged;
mod user_trades;

pub(crate) use items::{Item, Scalars};
pub(crate) use staged::StagedKeys;
use user_trades::UserTrades;

use crate::accounts::{AccountBook, AccountItem};
pub(crate) use crate::entries::RunStore;
pub use crate::entries::{ClaimEntry, CreatedAt, GroupOffset, RefundEntry, StoredPart, TablePart, TradeEntry};
pub use crate::keys::{body_hash, order_key, refund_key};
use crate::layered::LayeredMap;
use crate::lifecycle::{next_state, Action, Lifecycle};
use crate::message::MessageRecord;
use crate::message_book::{MessageBook, MessageItem, MessageReceipt};
use crate::record::{Funding, RecordKind, TradeRecord};
use crate::system_record::{ClaimOutcome, ClaimSettled, LogRecord, OffsetCommit, OrderClaim};
use crate::tcc::TccRecord;
use crate::tcc_aside::EndedAside;
use crate::tcc_book::{StepAnswer, TccBook, TccItem};
use crate::tcc_rules::apply_step;
use crate::tcc_write::Books;
use crate::trade::{Receipt, TradeId, TradeStatus, COUNTER_BITS};
use crate::trade_table::{Dirty, TradeTable};

/// The most entries an open reserves in one map for its replay (`reserve_recent`): a bound on
/// what a damaged or unusual run's count can make an open allocate.
const RESERVED_ENTRIES_MAX: u64 = 1 << 22;

/// The durable indexes of one shard. Cloning shares the large maps with the clone, part by
/// part (`trade_table/`, `partitioned.rs`), and the maps of recent work whole once frozen
/// (`layered.rs`): a checkpoint's snapshot.
#[derive(Default, Clone)]
pub struct ShardIndex {
    // Laid out by counter (trade_table/); the others are partitioned, so that a map of
    // millions of entries never grows all at once (partitioned.rs), and the maps of recent
    // work layered over that (layered.rs).
    trades: TradeTable<TradeEntry>,
    /// Order keys of this shard's trades applied since the last checkpoint's run: the trade's
    /// id (never zero, so that the layered map's slot, an `Option`, takes no more) and body hash.
    by_order: LayeredMap<u128, (NonZeroU64, u64)>,
    /// Each user's trades applied since the last checkpoint's run, oldest first.
    by_user: LayeredMap<u64, UserTrades>,
    refunds: LayeredMap<u128, RefundEntry>,
    /// Order numbers whose home is this shard, claimed for trades of other shards: pending
    /// ones, and those confirmed since the last checkpoint's run.
    claims: LayeredMap<u128, ClaimEntry>,
    /// The claims not settled yet: few (the creates in flight when the engine stopped, and
    /// confirmations not yet written), resolved when the engine opens.
    pending_claims: IdMap<u128, ClaimEntry>,
    /// Highest counter part of any trade id in the shard.
    counter_max: u64,
    /// Every trade below this counter has its order number's claim durable in the number's
    /// home shard, or needed none (`doubts.rs`): as of the checkpoint, then as the log's
    /// `ClaimsKnown` records say.
    claims_known_below: u64,
    /// Each consumer group's committed offset in this shard's log.
    offsets: HashMap<String, GroupOffset>,
    /// The users' accounts and the account request numbers applied (`accounts.rs`).
    accounts: AccountBook,
    /// The branches and activities of flexible transactions (`tcc_book.rs`).
    tcc: TccBook,
    /// Half messages, scheduled messages, dead letters, producers (`message_book.rs`).
    messages: MessageBook,
    /// The offset after the last durable event, a trade event or a delivered message (system records after it are no events).
    events_end: u64,
    /// The record after the last one applied: the index holds the effect of every record
    /// below it and of none above (a checkpoint's position).
    applied_end: u64,
    /// While an open replays the log: the trades read from the table on disk whose record is
    /// newer than the checkpoint (a later checkpoint failed after writing the table), with
    /// the record's version and refunded amount; and the refunds such a record holds already,
    /// in log order (`finish_replay`).
    table_newer: IdMap<TradeId, (u64, u64)>,
    /// The highest counter of the table of trades, as the checkpoint loaded said.
    restored_table_max: u64,
    refunds_held: Vec<(TradeId, u128)>,
    /// The runs of order keys the checkpoint loaded lists, oldest first (`key_runs.rs`).
    listed_runs: Vec<(RunStore, u64)>,
}

impl ShardIndex {
    /// Order keys, claims (confirmed or not) and refunds held: what a checkpoint's runs take, at most.
    pub(crate) fn recent_key_counts(&self) -> (usize, usize, usize) {
        (self.by_order.len(), self.claims.len(), self.refunds.len())
    }

    /// The order keys applied since the last checkpoint's run: key, trade, body hash.
    pub(crate) fn recent_orders(&self) -> impl Iterator<Item = (u128, TradeId, u64)> + '_ {
        self.by_order.iter().map(|(key, (id, body))| (*key, TradeId(id.get()), *body))
    }

    /// The claims confirmed since the last checkpoint's run, with their trades.
    pub(crate) fn recent_confirmed_claims(&self) -> impl Iterator<Item = (u128, &ClaimEntry, TradeId)> + '_ {
        self.claims.iter().filter_map(|(key, claim)| Some((*key, claim, claim.trade?)))
    }

    /// Each user's trades applied since the last checkpoint's run, oldest first.
    pub(crate) fn recent_users(&self) -> impl Iterator<Item = (u64, &[TradeId])> + '_ {
        self.by_user.iter().map(|(user, ids)| (*user, ids.as_slice()))
    }

    /// The refunds applied since the last checkpoint's run.
    pub(crate) fn recent_refunds(&self) -> impl Iterator<Item = (u128, &RefundEntry)> + '_ {
        self.refunds.iter().map(|(key, refund)| (*key, refund))
    }

    /// The accounts and the account requests applied.
    pub(crate) fn accounts(&self) -> &AccountBook {
        &self.accounts
    }

    /// The accounts, to apply a durable journal record to.
    pub(crate) fn accounts_mut(&mut self) -> &mut AccountBook {
        &mut self.accounts
    }

    /// The durable message state.
    pub(crate) fn messages(&self) -> &MessageBook {
        &self.messages
    }

    /// Forgets the nack floors at or below `first`, the log's first offset: a nack of an offset
    /// below it is refused as out of range whatever its group's floor.
    pub(crate) fn forget_nack_floors_below(&mut self, first: u64) {
        self.messages.forget_nack_floors_below(first)
    }

    /// Applies a durable message record at `seq`; a delivered one moves the end of events.
    pub(crate) fn apply_message(&mut self, seq: u64, record: &MessageRecord) -> Result<MessageReceipt, &'static str> {
        let receipt = self.messages.apply(seq, record)?;
        if record.is_delivered() {
            self.events_end = self.events_end.max(seq + 1);
        }
        Ok(receipt)
    }

    /// The branches, activities and money in transit.
    pub(crate) fn tcc(&self) -> &TccBook {
        &self.tcc
    }

    /// The accounts and the flexible transactions together, as the rules of a step see them.
    pub(crate) fn books(&mut self) -> Books<'_> {
        Books { accounts: &mut self.accounts, tcc: &mut self.tcc, ended_aside: None }
    }

    /// Applies the money a durable trade record of shard `home` moves (a trade paid from a
    /// balance, `trade_money.rs`), whether or not the trade's own change is applied now.
    pub(crate) fn apply_money(&mut self, record: &TradeRecord, home: u32) -> Result<(), &'static str> {
        let mut books = self.books();
        crate::trade_money::apply_funding(&mut books, record, home)
            .map_err(|_| "a trade's payment from a balance does not apply to the accounts")
    }

    /// Applies a durable local transaction, step by step, as an open's replay does: the entries
    /// that end are set `aside` (`tcc_aside.rs`). Returns each step's answer.
    pub(crate) fn apply_tcc_replayed(
        &mut self,
        record: &TccRecord,
        aside: &mut EndedAside,
    ) -> Result<Vec<StepAnswer>, &'static str> {
        let mut books = Books { accounts: &mut self.accounts, tcc: &mut self.tcc, ended_aside: Some(aside) };
        let apply = |step| {
            apply_step(&mut books, step, record.at_ms).map_err(|_| "a step of a local transaction does not apply")
        };
        record.steps.iter().map(apply).collect()
    }

    /// Installs what a durable local transaction changes, as its check computed it
    /// (`TccChanges`): the balances, then the branches, then the activities (a completed one
    /// may give out the first branch it keeps, `ActivityEntry::give_out_first_branch`, as the
    /// rules' order leaves it).
    pub(crate) fn install_tcc(&mut self, changes: crate::tcc_write::TccChanges) {
        for (key, balance) in changes.balances {
            self.accounts.set_balance(key, balance);
        }
        for ((activity, branch), entry) in changes.branches {
            self.tcc.put_branch(activity, branch, entry);
        }
        for (activity, entry) in changes.activities {
            self.tcc.set_activity(activity, entry);
        }
        for (currency, amount) in changes.in_transit {
            self.tcc.add_in_transit(currency, amount);
        }
    }

    /// The trade's entry, if it is in memory (a cold one is in the table on disk).
    pub fn get(&self, id: TradeId) -> Option<&TradeEntry> {
        self.trades.get(id)
    }

    /// The trades by counter, and which are in memory (`trade_table/`).
    pub(crate) fn trade_table(&self) -> &TradeTable<TradeEntry> {
        &self.trades
    }

    pub(crate) fn trade_table_mut(&mut self) -> &mut TradeTable<TradeEntry> {
        &mut self.trades
    }

    /// The last trade the loaded checkpoint's table holds (0: none).
    pub(crate) fn restored_table_max(&self) -> u64 {
        self.restored_table_max
    }

    /// Lays the trade table out in chunks of `2^chunk_bits`, every chunk up to the counter
    /// cold (in the table on disk): how an open finds it (the newest come back after it).
    pub(crate) fn lay_out_trades(&mut self, chunk_bits: u32) {
        let mut table = TradeTable::with_chunk_bits(chunk_bits);
        for (id, entry) in self.trades.scattered() {
            table.insert_scattered(id, *entry);
        }
        table.lay_out_cold(self.restored_table_max);
        self.trades = table;
    }

    /// Sizes the maps of recent keys for an open's replay, each for `expected(store)` entries:
    /// what the last checkpoint moved to that store's runs, one interval's work, which is about
    /// what a replay after a crash brings back (after a clean close, what the next interval
    /// will hold). Filled from empty, each of their parts would double again and again, moving
    /// every entry it holds each time.
    pub(crate) fn reserve_recent(&mut self, expected: impl Fn(RunStore) -> u64) {
        let entries = |store| expected(store).min(RESERVED_ENTRIES_MAX) as usize;
        self.by_order.reserve(entries(RunStore::Orders));
        self.claims.reserve(entries(RunStore::Claims));
        self.refunds.reserve(entries(RunStore::Refunds));
        self.accounts.reserve_requests(entries(RunStore::Requests));
        self.tcc.reserve(entries(RunStore::Branches), entries(RunStore::Activities));
    }

    /// A trade read back from the table on disk while an open replays the log from
    /// `replay_from` (the checkpoint's position): `version` is its record's, and a record newer
    /// than the checkpoint holds the log's changes below it.
    pub(crate) fn note_table_record(&mut self, id: TradeId, entry: &TradeEntry, version: u64, replay_from: u64) {
        if version > replay_from {
            self.table_newer.insert(id, (version, entry.lifecycle.refunded));
        }
    }

    /// Ends an open's replay: the refunds a table record held already get the refunded total
    /// each left (counted back from the record's).
    pub(crate) fn finish_replay(&mut self) -> Result<(), &'static str> {
        let held = std::mem::take(&mut self.refunds_held);
        let mut refunded: IdMap<TradeId, u64> = self.table_newer.iter().map(|(id, (_, r))| (*id, *r)).collect();
        for (id, key) in held.into_iter().rev() {
            let after = refunded.get_mut(&id).ok_or("a held refund of a trade not read back")?;
            let refund = self.refunds.get_mut(&key).ok_or("a held refund not in the refunds")?;
            refund.refunded_after = *after;
            *after = after.checked_sub(refund.amount).ok_or("refunds beyond a table record's refunded amount")?;
        }
        self.table_newer = IdMap::default();
        Ok(())
    }

    /// Takes the trades changed since the last call: a checkpoint writes them to the table.
    pub(crate) fn take_dirty(&mut self) -> Dirty {
        self.trades.take_dirty()
    }

    /// The trade created with this order key, and its body hash, if it is among the keys
    /// since the last checkpoint's run (`key_runs.rs` asks the runs for the others).
    pub fn by_order(&self, key: u128) -> Option<(TradeId, u64)> {
        self.by_order.get(&key).map(|(id, body)| (TradeId(id.get()), *body))
    }

    /// The claim of an order key, if this shard is its home and it is claimed: pending, or
    /// confirmed since the last checkpoint's run.
    pub fn claim(&self, key: u128) -> Option<&ClaimEntry> {
        self.claims.get(&key)
    }

    /// The claims not settled yet, with their keys.
    pub fn pending_claims(&self) -> impl Iterator<Item = (u128, &ClaimEntry)> {
        self.pending_claims.iter().map(|(key, claim)| (*key, claim))
    }

    /// Applies a durable claim: the key must be free here (no trade of this shard has it, no
    /// claim holds it; checked against memory only: the runs were checked before the claim
    /// was written).
    pub fn apply_claim(&mut self, claim: &OrderClaim) -> Result<(), &'static str> {
        if self.by_order.get(&claim.key).is_some() {
            return Err("order number claimed twice");
        }
        let entry = ClaimEntry { body: claim.body, buyer_id: claim.buyer_id, trade: None };
        if !self.claims.insert_new(claim.key, entry) {
            return Err("order number claimed twice");
        }
        self.pending_claims.insert(claim.key, entry);
        Ok(())
    }

    /// Confirms a pending claim with its trade, in memory only (see `claims.rs`); false when
    /// the key has no pending claim.
    pub(crate) fn confirm_pending_claim(&mut self, key: u128, trade: TradeId) -> bool {
        if self.pending_claims.remove(&key).is_none() {
            return false;
        }
        self.claims.get_mut(&key).expect("a pending claim is a claim").trade = Some(trade);
        true
    }

    /// Applies the end of a pending claim: confirmed for a trade, or released.
    pub fn apply_claim_settled(&mut self, settled: &ClaimSettled) -> Result<(), &'static str> {
        if self.pending_claims.remove(&settled.key).is_none() {
            return Err("settlement of a claim that is not pending");
        }
        match settled.outcome {
            ClaimOutcome::Confirmed(id) => {
                self.claims.get_mut(&settled.key).expect("a pending claim is a claim").trade = Some(id);
            }
            ClaimOutcome::Released => self.claims.remove(&settled.key),
        }
        Ok(())
    }

    /// The refund made under this refund key, if it is among the refunds since the last
    /// checkpoint's run (`key_runs.rs` asks the runs for the others).
    pub fn refund(&self, key: u128) -> Option<&RefundEntry> {
        self.refunds.get(&key)
    }

    /// The answer a repeat of a durable refund gets: the trade as that refund left it.
    pub fn refund_receipt(&self, refund: &RefundEntry) -> Receipt {
        let trade = self.get(refund.trade_id).map(|entry| entry.lifecycle);
        Receipt {
            id: refund.trade_id,
            status: TradeStatus::Refunded,
            amount: trade.map_or(0, |trade| trade.amount),
            refunded_amount: refund.refunded_after,
            updated_ms: refund.at_ms,
            from_balance: trade.is_some_and(|trade| trade.from_balance),
            replayed: true,
        }
    }

    /// The user's trades since the last checkpoint's run, oldest first (`key_runs.rs` lists
    /// the others).
    pub fn user_trades(&self, user_id: u64) -> &[TradeId] {
        self.by_user.get(&user_id).map_or(&[], UserTrades::as_slice)
    }

    /// Trades in the shard, in memory or not.
    pub fn len(&self) -> usize {
        self.trades.len()
    }

    /// Trades in memory.
    pub fn resident_len(&self) -> usize {
        self.trades.resident_len()
    }

    /// Highest counter of any trade id seen: new ids continue above it.
    pub fn counter_max(&self) -> u64 {
        self.counter_max
    }

    /// Every trade below this counter has its claim known durable (`doubts.rs`).
    pub(crate) fn claims_known_below(&self) -> u64 {
        self.claims_known_below
    }

    /// A `ClaimsKnown` record replayed.
    pub(crate) fn note_claims_known(&mut self, below_counter: u64) {
        self.claims_known_below = self.claims_known_below.max(below_counter);
    }

    /// A checkpoint's snapshot takes the live shard's value (`doubts.rs`).
    pub(crate) fn set_claims_known_below(&mut self, below_counter: u64) {
        self.claims_known_below = below_counter;
    }

    /// The offset after the last durable event (a trade event or a delivered message): what a consumer's lag is measured to.
    pub fn events_end(&self) -> u64 {
        self.events_end
    }

    /// A consumer group's committed offset.
    pub fn committed_offset(&self, group: &str) -> Option<u64> {
        self.offsets.get(group).map(|group| group.offset)
    }

    /// Every group's committed offset, in no particular order.
    pub fn groups(&self) -> impl Iterator<Item = (&str, GroupOffset)> {
        self.offsets.iter().map(|(group, offset)| (group.as_str(), *offset))
    }

    /// Forgets the groups that committed nothing since `idle_before_ms` (their offsets
    /// expire, as Kafka's `offsets.retention.minutes`); returns how many.
    pub fn expire_groups(&mut self, idle_before_ms: u64) -> usize {
        let before = self.offsets.len();
        self.offsets.retain(|_, group| group.at_ms >= idle_before_ms);
        before - self.offsets.len()
    }

    /// Applies a durable offset commit: the latest commit of a group wins (a group may move
    /// back, with a seek).
    pub fn apply_offset(&mut self, commit: &OffsetCommit) {
        self.offsets.insert(commit.group.clone(), GroupOffset { offset: commit.offset, at_ms: commit.at_ms });
    }

    /// The record after the last one applied.
    pub fn applied_end(&self) -> u64 {
        self.applied_end
    }

    /// Notes that the record `seq` was applied (every record is, in log order, whatever its
    /// kind).
    pub fn note_applied(&mut self, seq: u64) {
        debug_assert!(seq >= self.applied_end, "records are applied in log order");
        self.applied_end = seq + 1;
    }

    /// Points a trade's `Created` record at where a checkpoint kept it (`place`: the store of
    /// created parts, or the trade's record of the table), unless the trade is gone or
    /// already points elsewhere.
    pub fn note_stored(&mut self, id: TradeId, place: CreatedAt) {
        // Unmarked: the table on disk holds the stored part already (`checkpointer.rs`).
        if let Some(entry) = self.trades.get_mut_unmarked(id) {
            if matches!(entry.created_at, CreatedAt::Log(at) if at.seq == place.seq()) {
                entry.created_at = place;
            }
        }
    }

    /// Applies a durable record. A record that breaks the lifecycle cannot have been written by
    /// this engine, so it is an error (the log is not what it should be), not something to skip.
    pub fn apply(&mut self, record: &TradeRecord, at: Appended) -> Result<(), &'static str> {
        self.apply_keyed(record, at, record.created_keys())
    }

    /// Looks up the branches and activities a replayed record will change and drops the
    /// answers: run over a batch of records before their applies, so that the cache misses of
    /// the lookups (maps of millions of entries) overlap instead of coming one after another.
    /// (The order keys, claims and users' lists are applied part by part: `staged.rs`.)
    pub(crate) fn touch_replayed(&self, record: &LogRecord) {
        if let LogRecord::Tcc(record) = record {
            record.steps.iter().for_each(|step| self.tcc.touch(step));
        }
    }

    /// Takes `key` for trade `id`: no trade of this shard has it, no claim holds it.
    fn take_order_key(&mut self, key: u128, id: TradeId, body: u64) -> Result<(), &'static str> {
        if self.claims.get(&key).is_some() {
            return Err("order number used by two trades");
        }
        let id = NonZeroU64::new(id.0).ok_or("a trade of id zero")?;
        if !self.by_order.insert_new(key, (id, body)) {
            return Err("order number used by two trades");
        }
        Ok(())
    }

    /// Adds the trade a `Created` record made (its id is new).
    fn insert_created(&mut self, record: &TradeRecord, at: Appended) {
        let id = record.trade_id;
        let entry = TradeEntry {
            logical_shard: id.logical_shard() as u16,
            user_id: record.user_id,
            merchant_id: record.merchant_id,
            lifecycle: Lifecycle {
                status: TradeStatus::Created,
                amount: record.amount,
                refunded: 0,
                from_balance: false,
            },
            currency: record.currency,
            updated_ms: record.at_ms,
            created_at: CreatedAt::Log(at),
        };
        self.trades.insert_new(id, entry);
        self.counter_max = self.counter_max.max(id.counter());
    }

    /// [`apply`](Self::apply) with a `Created` record's order key and body hash already
    /// computed (the write path computed them when it checked the create).
    pub fn apply_keyed(
        &mut self,
        record: &TradeRecord,
        at: Appended,
        keys: Option<(u128, u64)>,
    ) -> Result<(), &'static str> {
        let id = record.trade_id;
        self.events_end = self.events_end.max(at.seq + 1);
        if record.kind == RecordKind::Created {
            let (key, body) = keys.ok_or("created record without its fields")?;
            if self.trades.contains(id) {
                return Err("trade created twice");
            }
            self.take_order_key(key, id, body)?;
            self.insert_created(record, at);
            self.by_user.get_or_default(record.user_id).push(id);
            return Ok(());
        }
        if let Some(&(version, _)) = self.table_newer.get(&id) {
            if at.seq < version {
                // The trade's record in the table holds this change already.
                self.trades.get(id).ok_or("change to a trade that does not exist")?;
                if record.kind == RecordKind::Refunded {
                    let refund_no = record.refund_no.as_deref().ok_or("refund record without its request number")?;
                    let key = refund_key(record.merchant_id, record.user_id, refund_no);
                    let refund =
                        RefundEntry { trade_id: id, amount: record.amount, refunded_after: 0, at_ms: record.at_ms };
                    if !self.refunds.insert_new(key, refund) {
                        return Err("refund request number used twice");
                    }
                    self.refunds_held.push((id, key));
                }
                return Ok(());
            }
        }
        let entry = self.trades.get_mut(id).ok_or("change to a trade that does not exist")?;
        let action = match record.kind {
            RecordKind::Paid if record.funding == Funding::Balance => Action::PayFromBalance,
            RecordKind::Paid => Action::Pay,
            RecordKind::Settled => Action::Settle,
            RecordKind::Closed => Action::Close,
            RecordKind::Refunded => Action::Refund(record.amount),
            RecordKind::Created => unreachable!("handled above"),
        };
        let next = next_state(id, entry.lifecycle, action).map_err(|_| "change breaks the trade lifecycle")?;
        // The money a record moved (applied on its own, `apply_money`) is the trade's to move.
        let credit_ok = match record.funding {
            Funding::Settles { credit, .. } => credit == next.settles(),
            Funding::External | Funding::Balance => true,
        };
        if (record.funding != Funding::External) != next.from_balance || !credit_ok {
            return Err("a record moves money the trade's payment does not");
        }
        entry.lifecycle = next;
        entry.updated_ms = record.at_ms;
        if record.kind == RecordKind::Refunded {
            let refund_no = record.refund_no.as_deref().ok_or("refund record without its request number")?;
            let refund = RefundEntry {
                trade_id: id,
                amount: record.amount,
                refunded_after: entry.lifecycle.refunded,
                at_ms: record.at_ms,
            };
            if !self.refunds.insert_new(refund_key(record.merchant_id, record.user_id, refund_no), refund) {
                return Err("refund request number used twice");
            }
        }
        Ok(())
    }
}

const _: () = assert!(COUNTER_BITS >= 40, "a shard issues at least 2^40 trade ids");
const _: () = assert!(std::mem::size_of::<Option<(NonZeroU64, u64)>>() == 16, "an order key's slot holds no tag");
