//! The read path of a shard: a trade is its state (status, amounts, times), from the durable
//! index in memory or, once it left memory, the table on disk (`cold.rs`), and its immutable
//! part (order number, memo, creation time) from its `Created` record in the log or the store
//! of created parts. Whole trades are cached (`trade_cache.rs`): a hit is answered at once,
//! here or on the caller's own thread; only a miss spawns a task, which loads the trade and
//! caches it composed from the durable state of the moment it is cached.

use tradeshard_wal::disk::Disk;

use crate::created::CreatedPart;
use crate::error::{LogError, TradeError};
use crate::index::CreatedAt;
use crate::record::TradeRecordView;
use crate::shard::Shard;
use crate::state::{Inner, ShardReply};
use crate::trade::{Trade, TradeId};
use crate::trade_cache::{CachedTrade, TradeCache};

/// Most trade reads one listing has in flight at once.
const LIST_READS_IN_FLIGHT: usize = 32;

/// Which of a user's trades to list: newest first, at most `limit`, older than `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListQuery {
    pub user_id: u64,
    pub limit: usize,
    pub before: Option<TradeId>,
}

impl<D: Disk> Shard<D> {
    /// Reads a trade's durable state: at once when it is cached, else after reading it.
    pub fn get(&self, id: TradeId, reply: ShardReply<Trade>) {
        match self.inner.trade_cache.cache().get_with(&id, CachedTrade::copy) {
            Some(copy) => reply.send(Ok(copy.trade(id))),
            None => self.load(id, reply),
        }
    }

    /// [`get`](Self::get) for a caller that looked the trade up in the shard's cache on its
    /// own thread and missed: that miss was counted, so this looks again without counting
    /// (the trade may have been cached since).
    pub fn get_after_miss(&self, id: TradeId, reply: ShardReply<Trade>) {
        match self.inner.trade_cache.cache().peek_with(&id, CachedTrade::copy) {
            Some(copy) => reply.send(Ok(copy.trade(id))),
            None => self.load(id, reply),
        }
    }

    /// Reads a trade that was not cached, and caches it.
    fn load(&self, id: TradeId, reply: ShardReply<Trade>) {
        let unknown = {
            let index = self.inner.index.borrow();
            index.get(id).is_none() && !index.trade_table().is_cold(id)
        };
        if unknown {
            return reply.send(Err(TradeError::NotFound(id)));
        }
        let inner = self.inner.clone();
        glommio::spawn_local(async move { reply.send(read_trade(&inner, id, true).await) }).detach();
    }

    /// The cache of whole trades, for readers on other threads (see `trade_cache.rs` for why
    /// what they read is durable and current).
    pub fn trade_cache(&self) -> std::sync::Arc<TradeCache> {
        self.inner.trade_cache.cache().clone()
    }

    /// Lists a user's durable trades, newest first: those older than `query.before` when
    /// given (a user's trade ids grow with time).
    pub fn list(&self, query: ListQuery, reply: ShardReply<Vec<Trade>>) {
        // The trades since the last checkpoint are in memory, the others in runs on disk.
        let ids = {
            let index = self.inner.index.borrow();
            let runs = self.inner.key_runs.borrow();
            crate::key_runs::user_trades(
                &index,
                &runs.sets.users,
                &runs.blocks,
                query.user_id,
                query.limit,
                query.before,
            )
        };
        // The reads go out `LIST_READS_IN_FLIGHT` at a time, so a page of a listing costs
        // about one read's latency, not one per trade, and a long listing no more I/O memory.
        let inner = self.inner.clone();
        glommio::spawn_local(async move {
            let ids = match ids.await {
                Ok(ids) => ids,
                Err(error) => return reply.send(Err(error)),
            };
            let mut trades = Vec::with_capacity(ids.len());
            for window in ids.chunks(LIST_READS_IN_FLIGHT) {
                let reads: Vec<_> = window
                    .iter()
                    .map(|&id| {
                        let inner = inner.clone();
                        glommio::spawn_local(async move { read_trade(&inner, id, false).await })
                    })
                    .collect();
                for read in reads {
                    match read.await {
                        Ok(trade) => trades.push(trade),
                        Err(error) => return reply.send(Err(error)),
                    }
                }
            }
            reply.send(Ok(trades))
        })
        .detach();
    }
}

/// The trade's durable state, from the cache or loaded into it. `missed`: the caller already
/// looked the cache up and missed.
pub(crate) async fn read_trade<D: Disk>(inner: &Inner<D>, id: TradeId, missed: bool) -> Result<Trade, TradeError> {
    let cache = &inner.trade_cache;
    if !missed {
        // A hit is copied out under the stripe's lock without allocating, as callers copy it.
        if let Some(copy) = cache.cache().get_with(&id, CachedTrade::copy) {
            return Ok(copy.trade(id));
        }
    }
    let cached = cache.load_after_miss(id, || load_trade(inner, id), CachedTrade::cache_bytes).await?;
    Ok(cached.trade(id))
}

/// Reads a trade that is not cached. What it returns is cached in the same poll, so its state
/// must be the durable state of that moment: a change applied while the reads were under way
/// is in the index (a change brings a cold trade into memory), and a trade that left memory
/// meanwhile is read again, since the table now holds what it had then.
async fn load_trade<D: Disk>(inner: &Inner<D>, id: TradeId) -> Result<CachedTrade, TradeError> {
    let mut part = None;
    loop {
        let evictions = inner.index.borrow().trade_table().evictions();
        let (entry, with_record) = crate::cold::entry_and_part(inner, id).await?.ok_or(TradeError::NotFound(id))?;
        let part = match (&part, with_record) {
            (Some(part), _) => part,
            // A cold trade's record held its part inline: one device read for the whole trade.
            (None, Some(with_record)) => part.insert(with_record),
            (None, None) => part.insert(read_created_part(inner, id, entry.created_at).await?),
        };
        let index = inner.index.borrow();
        let latest = match index.get(id) {
            Some(latest) => *latest,
            None if index.trade_table().evictions() == evictions => entry,
            None => continue,
        };
        return Ok(CachedTrade::new(&latest, part.created_ms(), part.merchant_order_no(), part.memo()));
    }
}

/// Reads a trade's created part (direct I/O): a cache miss. From its `Created` record in the
/// log, from its record of the table once a checkpoint put it there inline, or from the store
/// of created parts once a checkpoint copied the record there; a read of the log that finds
/// the segment removed by retention meanwhile reads where the checkpoint put it instead.
async fn read_created_part<D: Disk>(
    inner: &Inner<D>,
    id: TradeId,
    created_at: CreatedAt,
) -> Result<CreatedPart, TradeError> {
    let bytes = match created_at {
        CreatedAt::Stored(part) => inner.checkpoints.parts.read(part).await?,
        CreatedAt::Table(_) => return crate::cold::read_inline_part(inner, id).await,
        CreatedAt::Log(at) => match inner.wal.read_at(at.seq, at.piece).await {
            Ok(bytes) => bytes,
            Err(LogError::OutOfRange { .. }) => {
                let now = crate::cold::entry(inner, id).await?.map(|e| e.created_at).ok_or(TradeError::NotFound(id))?;
                match now {
                    CreatedAt::Stored(part) => inner.checkpoints.parts.read(part).await?,
                    CreatedAt::Table(_) => return crate::cold::read_inline_part(inner, id).await,
                    CreatedAt::Log(at) => inner.wal.read_at(at.seq, at.piece).await?,
                }
            }
            Err(error) => return Err(error.into()),
        },
    };
    let bad = |reason| TradeError::BadRecord { seq: created_at.seq(), reason };
    let record = TradeRecordView::decode(&bytes).map_err(bad)?;
    let created = record.created.ok_or(bad("not a created record"))?;
    Ok(CreatedPart::new(record.at_ms, created.merchant_order_no, created.memo))
}
