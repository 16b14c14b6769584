//! The shard's cache of whole trades, which callers on any thread read without asking the
//! shard: a cached trade is its immutable part (order number, memo, creation time, buyer,
//! merchant, currency) and its durable state as of the last change the committer applied.
//!
//! The shard's executor is its only writer. A create puts the trade in when it becomes
//! durable; every later change that becomes durable updates a cached copy in place, under
//! the copy's stripe lock, before the change's caller is answered; a miss loads the trade and
//! puts it in composed from the state of that moment (`read.rs`). So a hit is never ahead of
//! durability (nothing is put in before it is durable) and never stale (no durable change
//! is answered before its copy is changed).
//!
//! A cached trade is one heap block, so that the map's bucket stays two words and a budget
//! of cache bytes holds as many trades as it can. A reader copies the block onto its stack
//! under the stripe's lock and builds the `Trade` after letting the lock go: the executor,
//! which takes that lock to apply changes, never waits while a caller allocates.

use std::hash::BuildHasherDefault;

use tradeshard_cache::SharedCache;

use crate::currency::Currency;
use crate::id_hash::IdHasher;
use crate::index::TradeEntry;
use crate::lifecycle::Lifecycle;
use crate::trade::{Trade, TradeId, MEMO_BYTES_MAX, ORDER_NO_BYTES_MAX};

/// The block's fixed part: created, buyer, merchant, amount, refunded, updated (8 bytes each),
/// status (1, with the bit of a trade paid from a balance), currency (3), the order number's
/// length (1); the order number and the memo
/// follow.
const FIXED_BYTES: usize = 53;
const AMOUNT_AT: usize = 24;
const REFUNDED_AT: usize = 32;
const UPDATED_AT: usize = 40;
const STATUS_AT: usize = 48;
/// The largest block: what a reader's stack copy must hold.
const BLOCK_BYTES_MAX: usize = FIXED_BYTES + ORDER_NO_BYTES_MAX + MEMO_BYTES_MAX;

/// A trade as the cache holds it: one heap block.
#[derive(Clone, Debug)]
pub struct CachedTrade(Box<[u8]>);

/// The cache a shard writes and callers read (`Shard::trade_cache`).
pub type TradeCache = SharedCache<TradeId, CachedTrade, BuildHasherDefault<IdHasher>>;

/// A reader's copy of a cached trade, on its stack.
pub struct TradeCopy {
    len: usize,
    bytes: [u8; BLOCK_BYTES_MAX],
}

impl CachedTrade {
    /// The trade of durable state `entry`, created at `created_ms` with this order number
    /// and memo.
    pub(crate) fn new(entry: &TradeEntry, created_ms: u64, order: &str, memo: &str) -> CachedTrade {
        let mut block = Vec::with_capacity(FIXED_BYTES + order.len() + memo.len());
        for word in [created_ms, entry.user_id, entry.merchant_id, 0, 0, 0] {
            block.extend_from_slice(&word.to_le_bytes());
        }
        block.push(0);
        block.extend_from_slice(&entry.currency.bytes());
        block.push(u8::try_from(order.len()).expect("order numbers are validated to fit a byte"));
        block.extend_from_slice(order.as_bytes());
        block.extend_from_slice(memo.as_bytes());
        debug_assert!(block.len() <= BLOCK_BYTES_MAX, "a reader's copy holds every block");
        let mut cached = CachedTrade(block.into());
        cached.set_state(entry);
        cached
    }

    /// The durable state after a change was applied.
    pub(crate) fn set_state(&mut self, entry: &TradeEntry) {
        let block = &mut self.0;
        block[AMOUNT_AT..AMOUNT_AT + 8].copy_from_slice(&entry.lifecycle.amount.to_le_bytes());
        block[REFUNDED_AT..REFUNDED_AT + 8].copy_from_slice(&entry.lifecycle.refunded.to_le_bytes());
        block[UPDATED_AT..UPDATED_AT + 8].copy_from_slice(&entry.updated_ms.to_le_bytes());
        block[STATUS_AT] = entry.lifecycle.status_byte();
    }

    /// A copy for a reader, made under the stripe's lock without allocating.
    pub fn copy(&self) -> TradeCopy {
        let mut copy = TradeCopy { len: self.0.len(), bytes: [0; BLOCK_BYTES_MAX] };
        copy.bytes[..self.0.len()].copy_from_slice(&self.0);
        copy
    }

    /// The trade `id` as a reader sees it.
    pub fn trade(&self, id: TradeId) -> Trade {
        compose(id, &self.0)
    }

    /// Bytes it occupies, so that the cache's budget bounds resident memory: its one heap
    /// block as the allocator rounds it (the cache charges its slots itself).
    pub(crate) fn cache_bytes(&self) -> usize {
        (self.0.len() + 8).next_multiple_of(16).max(32)
    }
}

impl TradeCopy {
    /// The trade `id` as a reader sees it.
    pub fn trade(&self, id: TradeId) -> Trade {
        compose(id, &self.bytes[..self.len])
    }
}

fn word(block: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(block[at..at + 8].try_into().expect("eight bytes"))
}

/// A trade from its block (made by [`CachedTrade::new`], so every field is valid).
fn compose(id: TradeId, block: &[u8]) -> Trade {
    let order_len = block[FIXED_BYTES - 1] as usize;
    let (status, from_balance) = Lifecycle::of_status_byte(block[STATUS_AT]).expect("made from a status");
    let text = |range: std::ops::Range<usize>| std::str::from_utf8(&block[range]).expect("made from a str").to_string();
    Trade {
        id,
        buyer_id: word(block, 8),
        merchant_id: word(block, 16),
        merchant_order_no: text(FIXED_BYTES..FIXED_BYTES + order_len),
        amount: word(block, AMOUNT_AT),
        refunded_amount: word(block, REFUNDED_AT),
        currency: Currency::from_bytes(block[STATUS_AT + 1..STATUS_AT + 4].try_into().expect("three bytes"))
            .expect("made from a currency"),
        status,
        from_balance,
        created_ms: word(block, 0),
        updated_ms: word(block, UPDATED_AT),
        memo: text(FIXED_BYTES + order_len..block.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trade::TradeStatus;

    fn entry(status: TradeStatus, refunded: u64, updated_ms: u64) -> TradeEntry {
        TradeEntry { updated_ms, ..crate::entries::sample_entry(status, refunded) }
    }

    #[test]
    fn a_cached_trade_reads_back_as_made_and_as_changed() {
        let longest_order = "9".repeat(ORDER_NO_BYTES_MAX);
        let longest_memo = "备".repeat(MEMO_BYTES_MAX / 3);
        for (order, memo) in [("", ""), ("ORD-1", "order 1"), (longest_order.as_str(), longest_memo.as_str())] {
            let id = TradeId::new(3, 12);
            let mut cached = CachedTrade::new(&entry(TradeStatus::Paid, 0, 6), 5, order, memo);
            let trade = cached.trade(id);
            assert_eq!((trade.merchant_order_no.as_str(), trade.memo.as_str()), (order, memo));
            assert_eq!((trade.buyer_id, trade.merchant_id, trade.amount, trade.created_ms), (42, 9, 1_000, 5));
            assert_eq!((trade.status, trade.refunded_amount, trade.updated_ms), (TradeStatus::Paid, 0, 6));
            cached.set_state(&entry(TradeStatus::Refunded, 300, 8));
            let changed = cached.copy().trade(id);
            assert_eq!((changed.status, changed.refunded_amount, changed.updated_ms), (TradeStatus::Refunded, 300, 8));
            assert_eq!(changed, Trade { status: TradeStatus::Refunded, refunded_amount: 300, updated_ms: 8, ..trade });
        }
    }

    /// One heap block, charged as the allocator rounds it: a typical trade is 112 bytes.
    #[test]
    fn a_cached_trade_is_charged_its_one_block() {
        let cached =
            CachedTrade::new(&entry(TradeStatus::Created, 0, 1), 1, "ORD-123456-78", "order 78 of buyer 123456");
        assert_eq!(cached.cache_bytes(), 112);
        assert_eq!(std::mem::size_of::<CachedTrade>(), 16, "the map's bucket holds two words");
    }
}
