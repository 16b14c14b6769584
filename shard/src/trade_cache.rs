//! The shard's cache of whole trades, which callers on any thread read without asking the
//! shard: a cached trade is its immutable part (order number, memo, creation time) and its
//! durable state as of the last change the committer applied.
//!
//! The shard's executor is its only writer. A create puts the trade in when it becomes
//! durable; every later change that becomes durable updates a cached copy in place, under
//! the copy's stripe lock, before the change's caller is answered; a miss loads the trade and
//! puts it in composed from the state of that moment (`read.rs`). So a hit is never ahead of
//! durability (nothing is put in before it is durable) and never stale (no durable change
//! is answered before its copy is changed).

use std::hash::BuildHasherDefault;

use tradeshard_cache::SharedCache;

use crate::created::CreatedPart;
use crate::currency::Currency;
use crate::id_hash::IdHasher;
use crate::index::TradeEntry;
use crate::lifecycle::Lifecycle;
use crate::trade::{Trade, TradeId};

/// A trade as the cache holds it: one heap block of text and its durable state (what a
/// reader sees of it, nothing of where it lies).
#[derive(Clone, Debug)]
pub struct CachedTrade {
    buyer_id: u64,
    merchant_id: u64,
    lifecycle: Lifecycle,
    currency: Currency,
    updated_ms: u64,
    part: CreatedPart,
}

/// The cache a shard writes and callers read (`Shard::trade_cache`).
pub type TradeCache = SharedCache<TradeId, CachedTrade, BuildHasherDefault<IdHasher>>;

impl CachedTrade {
    pub(crate) fn new(entry: TradeEntry, part: CreatedPart) -> CachedTrade {
        let mut cached = CachedTrade {
            buyer_id: entry.user_id,
            merchant_id: entry.merchant_id,
            lifecycle: entry.lifecycle,
            currency: entry.currency,
            updated_ms: entry.updated_ms,
            part,
        };
        cached.set_state(&entry);
        cached
    }

    /// The trade `id` as a reader sees it.
    pub fn trade(&self, id: TradeId) -> Trade {
        Trade {
            id,
            buyer_id: self.buyer_id,
            merchant_id: self.merchant_id,
            merchant_order_no: self.part.merchant_order_no().to_string(),
            amount: self.lifecycle.amount,
            refunded_amount: self.lifecycle.refunded,
            currency: self.currency,
            status: self.lifecycle.status,
            created_ms: self.part.created_ms(),
            updated_ms: self.updated_ms,
            memo: self.part.memo().to_string(),
        }
    }

    /// Bytes it occupies, so that the cache's budget bounds resident memory: the text's one
    /// heap block, and the state in the map's bucket with the map's slack (its load factor is
    /// at least 7/16); the cache charges the rest of an entry's slots itself.
    pub(crate) fn cache_bytes(&self) -> usize {
        CreatedPart::cache_bytes(&self.part) + std::mem::size_of::<(TradeId, CachedTrade)>() * 16 / 7
    }

    /// The durable state after a change was applied.
    pub(crate) fn set_state(&mut self, entry: &TradeEntry) {
        self.lifecycle = entry.lifecycle;
        self.updated_ms = entry.updated_ms;
    }
}
