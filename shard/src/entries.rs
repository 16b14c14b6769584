//! What the shard's indexes hold per trade, refund, claim and consumer group: small fixed
//! records, so that memory per entry is stated and asserted here.

use tradeshard_wal::Appended;

use crate::currency::Currency;
use crate::lifecycle::Lifecycle;
use crate::trade::{Receipt, TradeId};
use crate::trade_table::Slot;

const _: () = assert!(
    std::mem::size_of::<TradeEntry>() as u64 == crate::retention::TRADE_ENTRY_BYTES,
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

/// Where a trade's `Created` record can be read: in the log until a checkpoint copies what a
/// read needs of it (creation time, order number, memo) inline into the trade's record of the
/// table (`trade_file.rs`) where it fits, or else the whole record to the shard's store of
/// created parts (`parts.rs`); it is read from there ever after, so that retention can remove
/// the log segment it was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreatedAt {
    Log(Appended),
    Stored(StoredPart),
    Table(TablePart),
}

/// A `Created` record kept inline in the trade's record of the table: a read of the trade
/// finds its order number and memo in the same device read as its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TablePart {
    /// The record's sequence number in the log.
    pub seq: u64,
    /// The trade's creation time (the record's), milliseconds since the Unix epoch.
    pub created_ms: u64,
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
            CreatedAt::Table(part) => part.seq,
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
            from_balance: self.lifecycle.from_balance,
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

/// An order number claimed in this shard, its home, for a trade of a buyer in another shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimEntry {
    /// The body hash of the create that claimed it (0 where not kept, below).
    pub body: u64,
    /// The buyer (0 where not kept: a confirmed claim as a run keeps it, by its trade alone,
    /// since a claim's buyer and body are needed only while it is pending).
    pub buyer_id: u64,
    /// The trade, once the claim is confirmed; `None` while it is pending.
    pub trade: Option<TradeId>,
}

impl ClaimEntry {
    /// A confirmed claim as a run keeps it: its trade alone.
    pub(crate) fn confirmed(trade: TradeId) -> ClaimEntry {
        ClaimEntry { body: 0, buyer_id: 0, trade: Some(trade) }
    }

    /// Whether the claim's body hash and buyer are known (no claim is made with buyer 0).
    pub(crate) fn kept_whole(&self) -> bool {
        self.buyer_id != 0
    }
}

/// A consumer group's durable committed offset in a shard, and when it was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupOffset {
    pub offset: u64,
    pub at_ms: u64,
}

/// The store of keys a run on disk belongs to, as a checkpoint lists it
/// (`key_runs.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RunStore {
    /// Order key → this shard's trade with that order number, and its body hash.
    Orders = 1,
    /// Order key → the confirmed claim of a buyer of another shard.
    Claims = 2,
    /// (User, trade id) → nothing: each user's trades, in creation order.
    Users = 3,
    /// Refund key → the refund made under that request number (`RefundEntry`).
    Refunds = 4,
    /// Account request key → what the request did and the balance it left (`RequestEntry`).
    Requests = 5,
    /// Branch key (`run_values::branch_key`) → an ended branch of a flexible transaction.
    Branches = 6,
    /// Activity id → a completed activity this shard initiated (`EndedActivity`).
    Activities = 7,
}

impl RunStore {
    pub(crate) fn from_u8(byte: u8) -> Option<RunStore> {
        match byte {
            1 => Some(RunStore::Orders),
            2 => Some(RunStore::Claims),
            3 => Some(RunStore::Users),
            4 => Some(RunStore::Refunds),
            5 => Some(RunStore::Requests),
            6 => Some(RunStore::Branches),
            7 => Some(RunStore::Activities),
            _ => None,
        }
    }

    /// Every store, in the order a checkpoint lists them.
    pub(crate) const ALL: [RunStore; 7] = [
        RunStore::Orders,
        RunStore::Claims,
        RunStore::Users,
        RunStore::Refunds,
        RunStore::Requests,
        RunStore::Branches,
        RunStore::Activities,
    ];

    /// What its runs are like: a user's trades are asked for as a range only, which a Bloom
    /// filter cannot answer, and they have no value; an account request's value is 56 bytes
    /// (the 52 of its fields in a checkpoint), a completed activity's 48, an ended branch's 40,
    /// a refund's 32, an order's and a claim's 24.
    pub(crate) fn shape(self) -> crate::runs::Shape {
        use crate::runs::{Filter, Shape};
        match self {
            RunStore::Orders | RunStore::Claims => Shape { filter: Filter::PerKey, value_bytes: 24 },
            RunStore::Users => Shape { filter: Filter::RangesOnly, value_bytes: 0 },
            RunStore::Refunds => Shape { filter: Filter::PerKey, value_bytes: 32 },
            RunStore::Requests => Shape { filter: Filter::PerKey, value_bytes: 56 },
            RunStore::Branches => Shape { filter: Filter::PerKey, value_bytes: 40 },
            RunStore::Activities => Shape { filter: Filter::PerKey, value_bytes: 48 },
        }
    }

    /// The prefix of its run files' names.
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            RunStore::Orders => "orders",
            RunStore::Claims => "claims",
            RunStore::Users => "users",
            RunStore::Refunds => "refunds",
            RunStore::Requests => "requests",
            RunStore::Branches => "branches",
            RunStore::Activities => "activities",
        }
    }
}

/// A trade of user 42 and merchant 9, 1,000 CNY, in `status` with `refunded` refunded, for
/// the tests of the codecs and caches of entries.
#[cfg(test)]
pub(crate) fn sample_entry(status: crate::trade::TradeStatus, refunded: u64) -> TradeEntry {
    TradeEntry {
        logical_shard: 7,
        user_id: 42,
        merchant_id: 9,
        lifecycle: crate::lifecycle::Lifecycle { status, amount: 1_000, refunded, from_balance: false },
        currency: crate::currency::Currency::parse("CNY").unwrap(),
        updated_ms: 1_700_000_000_000,
        created_at: CreatedAt::Stored(StoredPart { seq: 5, offset: 4_096, len: 140 }),
    }
}
