//! The read path of a shard: a trade is composed of its state (status, amounts, times),
//! always from the durable index in memory, and its immutable part (order number, memo,
//! creation time) from the `Created` record, served by the read-through cache and read from the
//! log on a miss. Because the cached part never changes and the changing part is never cached,
//! a read can be neither stale nor ahead of durability; a create puts its immutable part in the
//! cache when it becomes durable. A hit is answered at once; only a miss spawns a task. A trade
//! that left memory has its state read from the table on disk (`cold.rs`).

use tradeshard_wal::disk::Disk;

use crate::created::CreatedPart;
use crate::error::{LogError, TradeError};
use crate::index::{CreatedAt, TradeEntry};
use crate::record::TradeRecordView;
use crate::shard::Shard;
use crate::state::{Inner, ShardReply};
use crate::trade::{Trade, TradeId};

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
    /// Reads a trade's durable state: at once when its immutable part is cached, else after
    /// reading the log.
    pub fn get(&self, id: TradeId, reply: ShardReply<Trade>) {
        let cached = {
            let index = self.inner.index.borrow();
            match index.get(id) {
                None if index.trade_table().is_cold(id) => None,
                None => Some(Err(TradeError::NotFound(id))),
                Some(entry) => {
                    let part = self.inner.created_parts.cache().borrow_mut().get(&id);
                    part.map(|part| Ok(compose(id, entry, &part)))
                }
            }
        };
        match cached {
            Some(answer) => reply.send(answer),
            None => {
                let inner = self.inner.clone();
                glommio::spawn_local(async move { reply.send(read_trade(&inner, id, true).await) }).detach();
            }
        }
    }

    /// Lists a user's durable trades, newest first: those older than `query.before` when
    /// given (a user's trade ids grow with time).
    pub fn list(&self, query: ListQuery, reply: ShardReply<Vec<Trade>>) {
        // The trades since the last checkpoint are in memory, the others in runs on disk.
        let ids = {
            let index = self.inner.index.borrow();
            let users = &self.inner.key_runs.borrow().sets.users;
            crate::key_runs::user_trades(&index, users, query.user_id, query.limit, query.before)
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

/// The trade's durable state: its immutable part from the cache (or the log), the rest from
/// the index. `missed`: the caller already looked the cache up and missed.
async fn read_trade<D: Disk>(inner: &Inner<D>, id: TradeId, missed: bool) -> Result<Trade, TradeError> {
    let entry = crate::cold::entry(inner, id).await?.ok_or(TradeError::NotFound(id))?;
    let created_at = entry.created_at;
    let load = || read_created_part(inner, id, created_at);
    let parts = &inner.created_parts;
    let part = if missed {
        parts.load_after_miss(id, load, CreatedPart::cache_bytes).await?
    } else {
        parts.get_or_load(id, load, CreatedPart::cache_bytes).await?
    };
    // A change made while the part was read is the newer state.
    let latest = inner.index.borrow().get(id).copied().unwrap_or(entry);
    Ok(compose(id, &latest, &part))
}

/// A trade from its durable state and its immutable part.
fn compose(id: TradeId, entry: &TradeEntry, part: &CreatedPart) -> Trade {
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

/// Reads a trade's `Created` record (direct I/O): a cache miss. From the log, or from the
/// store of created parts once a checkpoint copied it there; a read of the log that finds the
/// segment removed by retention meanwhile reads the store instead.
async fn read_created_part<D: Disk>(
    inner: &Inner<D>,
    id: TradeId,
    created_at: CreatedAt,
) -> Result<CreatedPart, TradeError> {
    let bytes = match created_at {
        CreatedAt::Stored(part) => inner.checkpoints.parts.read(part).await?,
        CreatedAt::Log(at) => match inner.wal.read_at(at.seq, at.piece).await {
            Ok(bytes) => bytes,
            Err(LogError::OutOfRange { .. }) => {
                let now = crate::cold::entry(inner, id).await?.map(|e| e.created_at).ok_or(TradeError::NotFound(id))?;
                match now {
                    CreatedAt::Stored(part) => inner.checkpoints.parts.read(part).await?,
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
