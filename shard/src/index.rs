//! The shard's in-memory indexes, rebuilt from the log on open and kept current as records
//! become durable: trade id → the trade's current state and where its `Created` record lies;
//! (merchant, order number) → trade id; user → that user's trades in creation order.
//!
//! What a record does to a trade is decided by the lifecycle rules (`lifecycle.rs`), shared
//! with the checks made before a write, so the log and the index never disagree on it.
//!
//! Memory per trade: an 88-byte slot (the entry and its id) in the trade table, 32 bytes in
//! the order map and 8 bytes in the user's list, plus the order and user maps' hash-table
//! slack (see `ARCHITECTURE.md`).

use std::collections::HashMap;

use tradeshard_wal::Appended;

use crate::currency::Currency;
use crate::lifecycle::{next_state, Action, Lifecycle};
use crate::partitioned::PartitionedMap;
use crate::record::{RecordKind, TradeRecord};
use crate::system_record::{ClaimOutcome, ClaimSettled, OffsetCommit, OrderClaim};
use crate::trade::{Receipt, TradeId, TradeStatus, COUNTER_BITS, ORDER_NO_BYTES_MAX};
use crate::trade_table::{Slot, TradeTable};

const _: () = assert!(
    std::mem::size_of::<TradeEntry>() == 88,
    "the memory per trade stated here and in ARCHITECTURE.md; a trade's created part is in the log or the store"
);

const _: () = assert!(
    std::mem::size_of::<Slot<TradeEntry>>() == std::mem::size_of::<TradeEntry>(),
    "a slot of the trade table is a trade's entry, nothing more"
);

impl crate::trade_table::Entry for TradeEntry {
    fn logical_shard(&self) -> u32 {
        u32::from(self.logical_shard)
    }
}

/// A durable trade's state in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TradeEntry {
    /// The logical shard of the trade's id (the trade table keeps the counter).
    pub logical_shard: u16,
    pub user_id: u64,
    pub merchant_id: u64,
    pub lifecycle: Lifecycle,
    pub currency: Currency,
    pub updated_ms: u64,
    /// Where the trade's `Created` record lies (order number, memo, creation time).
    pub created_at: CreatedAt,
}

/// Where a trade's `Created` record can be read: in the log until a checkpoint copies it to
/// the shard's store of created parts (`parts.rs`), from which it is read ever after, so that
/// retention can remove the log segment it was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreatedAt {
    Log(Appended),
    Stored(StoredPart),
}

/// A `Created` record in the store of created parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredPart {
    /// The record's sequence number in the log.
    pub seq: u64,
    /// Where its entry starts in the store, and the entry's length (header included).
    pub offset: u64,
    pub len: u32,
}

impl CreatedAt {
    /// The `Created` record's sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            CreatedAt::Log(at) => at.seq,
            CreatedAt::Stored(part) => part.seq,
        }
    }
}

impl TradeEntry {
    /// The answer to a write that left the trade in this state.
    pub fn receipt(&self, id: TradeId, replayed: bool) -> Receipt {
        Receipt {
            id,
            status: self.lifecycle.status,
            amount: self.lifecycle.amount,
            refunded_amount: self.lifecycle.refunded,
            updated_ms: self.updated_ms,
            replayed,
        }
    }
}

/// A durable refund, by its request number: what a retry of it is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefundEntry {
    pub trade_id: TradeId,
    pub amount: u64,
    /// The trade's refunded total after this refund.
    pub refunded_after: u64,
    pub at_ms: u64,
}

/// The key of the refund map: a 128-bit hash of (merchant, buyer, refund request number).
/// Request numbers are unique per merchant and buyer, so every trade a number could be
/// reused for lives in this shard.
pub fn refund_key(merchant_id: u64, buyer_id: u64, refund_no: &str) -> u128 {
    let mut fixed = [0u8; 16];
    fixed[..8].copy_from_slice(&merchant_id.to_le_bytes());
    fixed[8..].copy_from_slice(&buyer_id.to_le_bytes());
    xxhash_rust::xxh3::xxh3_128_with_seed(refund_no.as_bytes(), xxhash_rust::xxh3::xxh3_64(&fixed))
}

/// An order number claimed in this shard, its home, for a trade of a buyer in another shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimEntry {
    /// The body hash of the create that claimed it.
    pub body: u64,
    pub buyer_id: u64,
    /// The trade, once the claim is confirmed; `None` while it is pending.
    pub trade: Option<TradeId>,
}

/// The key of the idempotency map: a 128-bit hash of (merchant id, order number).
pub fn order_key(merchant_id: u64, order_no: &str) -> u128 {
    let mut bytes = [0u8; 8 + ORDER_NO_BYTES_MAX];
    bytes[..8].copy_from_slice(&merchant_id.to_le_bytes());
    let order_no = &order_no.as_bytes()[..order_no.len().min(ORDER_NO_BYTES_MAX)];
    bytes[8..8 + order_no.len()].copy_from_slice(order_no);
    xxhash_rust::xxh3::xxh3_128(&bytes[..8 + order_no.len()])
}

/// A hash of what makes two creates with one order number "the same trade".
pub fn body_hash(buyer_id: u64, amount: u64, currency: Currency, memo: &str) -> u64 {
    let mut fixed = [0u8; 19];
    fixed[..8].copy_from_slice(&buyer_id.to_le_bytes());
    fixed[8..16].copy_from_slice(&amount.to_le_bytes());
    fixed[16..].copy_from_slice(&currency.bytes());
    xxhash_rust::xxh3::xxh3_64_with_seed(memo.as_bytes(), xxhash_rust::xxh3::xxh3_64(&fixed))
}

/// A consumer group's durable committed offset in a shard, and when it was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupOffset {
    pub offset: u64,
    pub at_ms: u64,
}

/// The durable indexes of one shard. Cloning shares the large maps with the clone, part by
/// part (`trade_table.rs`, `partitioned.rs`): a checkpoint's snapshot.
#[derive(Default, Clone)]
pub struct ShardIndex {
    // Laid out by counter (trade_table.rs); the others are partitioned, so that a map of
    // millions of entries never grows all at once (partitioned.rs).
    trades: TradeTable<TradeEntry>,
    by_order: PartitionedMap<u128, (TradeId, u64)>,
    by_user: PartitionedMap<u64, Vec<TradeId>>,
    refunds: PartitionedMap<u128, RefundEntry>,
    /// Order numbers whose home is this shard, claimed for trades of other shards.
    claims: PartitionedMap<u128, ClaimEntry>,
    /// The claims not settled yet: few (the creates in flight when the engine stopped, and
    /// confirmations not yet written), resolved when the engine opens.
    pending_claims: HashMap<u128, ClaimEntry>,
    /// Highest counter part of any trade id in the shard.
    counter_max: u64,
    /// Each consumer group's committed offset in this shard's log.
    offsets: HashMap<String, GroupOffset>,
    /// The offset after the last durable trade event (system records after it are no events).
    events_end: u64,
    /// The record after the last one applied: the index holds the effect of every record
    /// below it and of none above (a checkpoint's position).
    applied_end: u64,
}

/// One entry of the indexes, as a checkpoint holds it (`checkpoint.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    Trade(TradeId, TradeEntry),
    /// Order key → (trade, body hash).
    Order(u128, TradeId, u64),
    /// A user's trades, oldest first (a long list comes as several items, in order).
    User(u64, Vec<TradeId>),
    Refund(u128, RefundEntry),
    Claim(u128, ClaimEntry),
    Group(String, GroupOffset),
}

/// The numbers of an index beside its maps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Scalars {
    pub applied_end: u64,
    pub events_end: u64,
    pub counter_max: u64,
}

impl ShardIndex {
    /// Every entry of the indexes (a checkpoint writes them; `restore` reads them back).
    pub(crate) fn items(&self) -> impl Iterator<Item = Item> + '_ {
        let trades = self.trades.iter().map(|(id, entry)| Item::Trade(id, *entry));
        let orders = self.by_order.iter().map(|(key, (id, body))| Item::Order(*key, *id, *body));
        let users = self.by_user.iter().map(|(user, ids)| Item::User(*user, ids.clone()));
        let refunds = self.refunds.iter().map(|(key, refund)| Item::Refund(*key, *refund));
        let claims = self.claims.iter().map(|(key, claim)| Item::Claim(*key, *claim));
        let groups = self.offsets.iter().map(|(group, offset)| Item::Group(group.clone(), *offset));
        trades.chain(orders).chain(users).chain(refunds).chain(claims).chain(groups)
    }

    pub(crate) fn scalars(&self) -> Scalars {
        Scalars { applied_end: self.applied_end, events_end: self.events_end, counter_max: self.counter_max }
    }

    /// An index holding `scalars` and nothing else yet.
    pub(crate) fn with_scalars(scalars: Scalars) -> ShardIndex {
        ShardIndex {
            applied_end: scalars.applied_end,
            events_end: scalars.events_end,
            counter_max: scalars.counter_max,
            ..ShardIndex::default()
        }
    }

    /// Adds an entry read from a checkpoint; an entry that contradicts those before it means
    /// the checkpoint is not what was written.
    pub(crate) fn restore(&mut self, item: Item) -> Result<(), &'static str> {
        match item {
            Item::Trade(id, entry) => {
                if self.trades.contains(id) || id.counter() > self.counter_max {
                    return Err("trade twice in a checkpoint, or above its counter");
                }
                self.trades.insert_new(id, entry);
            }
            Item::Order(key, id, body) => {
                if self.by_order.insert(key, (id, body)).is_some() {
                    return Err("order key twice in a checkpoint");
                }
            }
            Item::User(user, ids) => self.by_user.get_or_default(user).extend(ids),
            Item::Refund(key, refund) => {
                if self.refunds.insert(key, refund).is_some() {
                    return Err("refund key twice in a checkpoint");
                }
            }
            Item::Claim(key, claim) => {
                if self.claims.insert(key, claim).is_some() {
                    return Err("claim twice in a checkpoint");
                }
                if claim.trade.is_none() {
                    self.pending_claims.insert(key, claim);
                }
            }
            Item::Group(group, offset) => {
                if self.offsets.insert(group, offset).is_some() {
                    return Err("group twice in a checkpoint");
                }
            }
        }
        Ok(())
    }

    pub fn get(&self, id: TradeId) -> Option<&TradeEntry> {
        self.trades.get(id)
    }

    /// The trade created with this order key, and its body hash.
    pub fn by_order(&self, key: u128) -> Option<(TradeId, u64)> {
        self.by_order.get(&key).copied()
    }

    /// The claim of an order key, if this shard is its home and it is claimed.
    pub fn claim(&self, key: u128) -> Option<&ClaimEntry> {
        self.claims.get(&key)
    }

    /// The claims not settled yet, with their keys.
    pub fn pending_claims(&self) -> impl Iterator<Item = (u128, &ClaimEntry)> {
        self.pending_claims.iter().map(|(key, claim)| (*key, claim))
    }

    /// Applies a durable claim: the key must be free here (no trade of this shard has it, no
    /// claim holds it).
    pub fn apply_claim(&mut self, claim: &OrderClaim) -> Result<(), &'static str> {
        if self.by_order.get(&claim.key).is_some() || self.claims.get(&claim.key).is_some() {
            return Err("order number claimed twice");
        }
        let entry = ClaimEntry { body: claim.body, buyer_id: claim.buyer_id, trade: None };
        self.claims.insert(claim.key, entry);
        self.pending_claims.insert(claim.key, entry);
        Ok(())
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
            ClaimOutcome::Released => drop(self.claims.remove(&settled.key)),
        }
        Ok(())
    }

    /// The refund made under this refund key.
    pub fn refund(&self, key: u128) -> Option<&RefundEntry> {
        self.refunds.get(&key)
    }

    /// The answer a repeat of a durable refund gets: the trade as that refund left it.
    pub fn refund_receipt(&self, refund: &RefundEntry) -> Receipt {
        let amount = self.get(refund.trade_id).map_or(0, |entry| entry.lifecycle.amount);
        Receipt {
            id: refund.trade_id,
            status: TradeStatus::Refunded,
            amount,
            refunded_amount: refund.refunded_after,
            updated_ms: refund.at_ms,
            replayed: true,
        }
    }

    /// The user's trades, oldest first.
    pub fn user_trades(&self, user_id: u64) -> &[TradeId] {
        self.by_user.get(&user_id).map_or(&[], Vec::as_slice)
    }

    /// Trades in the shard.
    pub fn len(&self) -> usize {
        self.trades.len()
    }

    /// Highest counter of any trade id seen: new ids continue above it.
    pub fn counter_max(&self) -> u64 {
        self.counter_max
    }

    /// Every durable trade's id and entry, in no particular order.
    pub fn trades(&self) -> impl Iterator<Item = (TradeId, &TradeEntry)> {
        self.trades.iter()
    }

    /// The offset after the last durable trade event: what a consumer's lag is measured to.
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

    /// Points a trade's `Created` record at its copy in the store of created parts, unless the
    /// trade is gone or already points elsewhere.
    pub fn note_stored(&mut self, id: TradeId, part: StoredPart) {
        if let Some(entry) = self.trades.get_mut(id) {
            if matches!(entry.created_at, CreatedAt::Log(at) if at.seq == part.seq) {
                entry.created_at = CreatedAt::Stored(part);
            }
        }
    }

    /// Applies a durable record. A record that breaks the lifecycle cannot have been written by
    /// this engine, so it is an error (the log is not what it should be), not something to skip.
    pub fn apply(&mut self, record: &TradeRecord, at: Appended) -> Result<(), &'static str> {
        let keys = record.created.as_ref().map(|created| {
            let key = order_key(record.merchant_id, &created.merchant_order_no);
            (key, body_hash(record.user_id, record.amount, record.currency, &created.memo))
        });
        self.apply_keyed(record, at, keys)
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
            let entry = TradeEntry {
                logical_shard: id.logical_shard() as u16,
                user_id: record.user_id,
                merchant_id: record.merchant_id,
                lifecycle: Lifecycle { status: TradeStatus::Created, amount: record.amount, refunded: 0 },
                currency: record.currency,
                updated_ms: record.at_ms,
                created_at: CreatedAt::Log(at),
            };
            if self.by_order.get(&key).is_some() || self.claims.get(&key).is_some() {
                return Err("order number used by two trades");
            }
            self.trades.insert_new(id, entry);
            self.by_order.insert(key, (id, body));
            self.by_user.get_or_default(record.user_id).push(id);
            self.counter_max = self.counter_max.max(id.counter());
            return Ok(());
        }
        let entry = self.trades.get_mut(id).ok_or("change to a trade that does not exist")?;
        let action = match record.kind {
            RecordKind::Paid => Action::Pay,
            RecordKind::Settled => Action::Settle,
            RecordKind::Closed => Action::Close,
            RecordKind::Refunded => Action::Refund(record.amount),
            RecordKind::Created => unreachable!("handled above"),
        };
        entry.lifecycle = next_state(id, entry.lifecycle, action).map_err(|_| "change breaks the trade lifecycle")?;
        entry.updated_ms = record.at_ms;
        if record.kind == RecordKind::Refunded {
            let refund_no = record.refund_no.as_deref().ok_or("refund record without its request number")?;
            let refund = RefundEntry {
                trade_id: id,
                amount: record.amount,
                refunded_after: entry.lifecycle.refunded,
                at_ms: record.at_ms,
            };
            if self.refunds.insert(refund_key(record.merchant_id, record.user_id, refund_no), refund).is_some() {
                return Err("refund request number used twice");
            }
        }
        Ok(())
    }
}

const _: () = assert!(COUNTER_BITS >= 40, "a shard issues at least 2^40 trade ids");
