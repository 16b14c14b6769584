//! The trade: its identity, its states, what a caller sends and what it gets back. The checks
//! every input passes before it can reach the log are in `validate.rs`.
//!
//! A trade id carries the logical shard of its buyer in its top 16 bits and a per-shard
//! counter in the low 48, so any id routes to its shard without an index. Amounts are minor
//! units in a `u64`, never floats, and bounded so that sums of refunds cannot overflow.

use serde::{Deserialize, Serialize};

use crate::currency::Currency;

/// Bits of a trade id that hold the logical shard.
pub const LOGICAL_SHARD_BITS: u32 = 16;
/// Bits of a trade id that hold the per-shard counter.
pub const COUNTER_BITS: u32 = 64 - LOGICAL_SHARD_BITS;
/// Largest number of logical shards a data directory can have.
pub const LOGICAL_SHARDS_MAX: u32 = 1 << LOGICAL_SHARD_BITS;
/// Largest amount of one trade, in minor units (10^15: ten trillion in a two-decimal currency).
pub const AMOUNT_MAX: u64 = 1_000_000_000_000_000;
/// Largest memo, in bytes of UTF-8.
pub const MEMO_BYTES_MAX: usize = 256;
/// Largest merchant order number, in bytes.
pub const ORDER_NO_BYTES_MAX: usize = 64;
/// Largest refund request number, in bytes.
pub const REFUND_NO_BYTES_MAX: usize = 64;

const _: () = assert!(AMOUNT_MAX.checked_mul(2).is_some(), "amount + refunds never overflow");
const _: () = assert!(ORDER_NO_BYTES_MAX <= u8::MAX as usize && MEMO_BYTES_MAX <= u16::MAX as usize);

/// A trade id issued by the engine. Zero is never issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TradeId(pub u64);

impl TradeId {
    /// The id of the `counter`th trade (from 1) of logical shard `logical_shard`.
    pub fn new(logical_shard: u32, counter: u64) -> TradeId {
        assert!(logical_shard < LOGICAL_SHARDS_MAX && counter > 0 && counter < 1 << COUNTER_BITS);
        TradeId(((logical_shard as u64) << COUNTER_BITS) | counter)
    }

    /// The logical shard encoded in the id.
    pub fn logical_shard(self) -> u32 {
        (self.0 >> COUNTER_BITS) as u32
    }

    /// The counter part of the id.
    pub fn counter(self) -> u64 {
        self.0 & ((1 << COUNTER_BITS) - 1)
    }
}

impl std::fmt::Display for TradeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04x}-{:012x}", self.logical_shard(), self.counter())
    }
}

/// Where a trade is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum TradeStatus {
    /// Created, awaiting payment.
    Created = 1,
    /// Paid by the buyer.
    Paid = 2,
    /// Settled to the merchant; final.
    Settled = 3,
    /// Closed before payment; final.
    Closed = 4,
    /// Paid, then refunded in part or in full (further partial refunds allowed up to the amount).
    Refunded = 5,
}

impl TradeStatus {
    /// The status of its stored byte.
    pub fn from_u8(byte: u8) -> Option<TradeStatus> {
        Some(match byte {
            1 => TradeStatus::Created,
            2 => TradeStatus::Paid,
            3 => TradeStatus::Settled,
            4 => TradeStatus::Closed,
            5 => TradeStatus::Refunded,
            _ => return None,
        })
    }
}

/// A request to create a trade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTrade {
    /// The paying user; chooses the shard. Not zero.
    pub buyer_id: u64,
    /// The merchant being paid. Not zero.
    pub merchant_id: u64,
    /// The merchant's own order number: with `merchant_id`, the idempotency key. 1..=64 bytes,
    /// printable ASCII.
    pub merchant_order_no: String,
    /// Minor units, 1..=`AMOUNT_MAX`.
    pub amount: u64,
    /// ISO 4217 code, e.g. "CNY".
    pub currency: String,
    /// Free text, at most `MEMO_BYTES_MAX` bytes.
    pub memo: String,
}

/// A `NewTrade` whose fields passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidTrade {
    pub buyer_id: u64,
    pub merchant_id: u64,
    pub merchant_order_no: String,
    pub amount: u64,
    pub currency: Currency,
    pub memo: String,
}

/// A trade as a reader sees it: its last durable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trade {
    pub id: TradeId,
    pub buyer_id: u64,
    pub merchant_id: u64,
    pub merchant_order_no: String,
    /// Minor units.
    pub amount: u64,
    /// Minor units refunded so far.
    pub refunded_amount: u64,
    pub currency: Currency,
    pub status: TradeStatus,
    /// Paid from the buyer's balance (`pay_from_balance`): refunds go back to it, and settling
    /// credits the merchant's account.
    pub from_balance: bool,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    pub updated_ms: u64,
    pub memo: String,
}

impl Trade {
    /// The trade's state as a write's answer.
    pub fn receipt(&self, replayed: bool) -> Receipt {
        Receipt {
            id: self.id,
            status: self.status,
            amount: self.amount,
            refunded_amount: self.refunded_amount,
            updated_ms: self.updated_ms,
            from_balance: self.from_balance,
            replayed,
        }
    }
}

/// What a write returns once durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub id: TradeId,
    pub status: TradeStatus,
    pub amount: u64,
    pub refunded_amount: u64,
    pub updated_ms: u64,
    /// The trade was paid from the buyer's balance (`pay_from_balance`): its refunds go back
    /// to that balance and settling it credits the merchant's account.
    pub from_balance: bool,
    /// The request repeated one already done (a create of an order number already taken with
    /// the same body, a move the trade already made, a refund request number already
    /// refunded): this is the original's answer and nothing was written.
    pub replayed: bool,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it): the time records carry.
pub(crate) fn now_ms() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
