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
use crate::id_hash::IdHasher;
use crate::index::TradeEntry;
use crate::trade::{Trade, TradeId};

/// A trade as the cache holds it: one heap block of text and its durable state.
#[derive(Clone, Debug)]
pub struct CachedTrade {
    entry: TradeEntry,
    part: CreatedPart,
}

/// The cache a shard writes and callers read (`Shard::trade_cache`).
pub type TradeCache = SharedCache<TradeId, CachedTrade, BuildHasherDefault<IdHasher>>;

impl CachedTrade {
    pub(crate) fn new(entry: TradeEntry, part: CreatedPart) -> CachedTrade {
        CachedTrade { entry, part }
    }

    /// The trade `id` as a reader sees it.
    pub fn trade(&self, id: TradeId) -> Trade {
        compose(id, &self.entry, &self.part)
    }

    /// Bytes it occupies, so that the cache's budget bounds resident memory: the state in
    /// the cache's slot and the text's one heap block.
    pub(crate) fn cache_bytes(&self) -> usize {
        std::mem::size_of::<TradeEntry>() + CreatedPart::cache_bytes(&self.part)
    }

    /// The durable state after a change was applied.
    pub(crate) fn set_state(&mut self, entry: &TradeEntry) {
        self.entry = *entry;
    }
}

/// A trade from its durable state and its immutable part.
pub(crate) fn compose(id: TradeId, entry: &TradeEntry, part: &CreatedPart) -> Trade {
    Trade {
        id,
        buyer_id: entry.user_id,
        merchant_id: entry.merchant_id,
        merchant_order_no: part.merchant_order_no().to_string(),
        amount: entry.lifecycle.amount,
        refunded_amount: entry.lifecycle.refunded,
        currency: entry.currency,
        status: entry.lifecycle.status,
        created_ms: part.created_ms(),
        updated_ms: entry.updated_ms,
        memo: part.memo().to_string(),
    }
}
