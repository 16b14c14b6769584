//! `EngineHandle`: the embedded API, usable from any thread and any async runtime.
//!
//! Every method checks its input first (bad input never reaches a queue), routes to the
//! executor owning the shard, and resolves when the shard answers: writes once durable, reads
//! with durable state. Each async method has a blocking twin for plain threads.

use std::sync::Arc;

use futures_lite::future::block_on;
use tradeshard_shard::trade::validate_amount;
use tradeshard_shard::{Action, Command, Currency, ListQuery, NewTrade, Receipt, ShardStats, Trade, TradeId};

use crate::error::{Error, Result};
use crate::inbox::{Inbox, Refused, Request};
use crate::options::Backpressure;
use crate::reply::{self, ReplyTx};
use crate::routing::Routing;

pub(crate) struct HandleInner {
    pub routing: Routing,
    pub inboxes: Vec<Arc<Inbox>>,
    pub backpressure: Backpressure,
    pub groups: crate::consumer::Groups,
}

/// One executor's share of a `get_many`: the caller's slots and the (shard, id) pairs.
type ExecutorBatch = (Vec<usize>, Vec<(u32, TradeId)>);

/// A cheap, cloneable handle to an open engine (`Clone + Send + Sync`).
#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) inner: Arc<HandleInner>,
}

/// Totals over every shard.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    /// Per physical shard, in shard order.
    pub shards: Vec<(u32, ShardStats)>,
    pub trades: u64,
    pub records: u64,
    /// Points where the logs made writes durable: fdatasync calls, plus frame writes that
    /// were durable on completion (`SyncMethod::DsyncWrites`).
    pub fsyncs: u64,
    pub flushes: u64,
    pub disk_bytes: u64,
    /// Cache counters summed over the shards.
    pub cache: tradeshard_shard::CacheStats,
}

impl EngineHandle {
    /// The engine's routing (shard counts, executors).
    pub fn routing(&self) -> Routing {
        self.inner.routing
    }

    async fn call<T>(&self, executor: usize, make: impl FnOnce(ReplyTx<Result<T>>) -> Request) -> Result<T> {
        let (tx, rx) = reply::channel();
        self.send(executor, make(tx)).await?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// A settlement consumer (see [`Consumer`](crate::Consumer)).
    pub fn consumer(&self, config: crate::ConsumerConfig) -> Result<crate::Consumer> {
        crate::Consumer::new(self.clone(), config)
    }

    /// Queues a request for `executor`, waiting for room or failing per the backpressure choice.
    pub(crate) async fn send(&self, executor: usize, mut request: Request) -> Result<()> {
        let inbox = &self.inner.inboxes[executor];
        loop {
            match inbox.push(request) {
                Ok(()) => return Ok(()),
                Err(Refused::Closed) => return Err(Error::Closed),
                Err(Refused::Full(back)) => {
                    if self.inner.backpressure == Backpressure::Fail {
                        return Err(Error::Backpressure { executor });
                    }
                    request = back;
                    std::future::poll_fn(|cx| inbox.poll_room(cx)).await;
                }
            }
        }
    }

    async fn write(&self, shard: u32, command: Command) -> Result<Receipt> {
        let executor = self.inner.routing.executor_of_physical(shard);
        self.call(executor, |reply| Request::Write { shard, command, reply }).await
    }

    /// Creates a trade, durable when this resolves. Idempotent on (merchant, order number): a
    /// retry with the same body returns the original (`replayed: true`); the same key with a
    /// different body is `TradeError::IdempotencyConflict`.
    pub async fn create_trade(&self, trade: NewTrade) -> Result<Receipt> {
        let trade = trade.validate()?;
        let routing = self.inner.routing;
        let logical_shard = routing.logical_of_user(trade.buyer_id);
        self.write(routing.physical_of_logical(logical_shard), Command::Create { trade, logical_shard }).await
    }

    async fn change(&self, id: TradeId, action: Action) -> Result<Receipt> {
        let shard = self.inner.routing.physical_of_trade(id)?;
        self.write(shard, Command::Change { id, action }).await
    }

    /// `Created → Paid`.
    pub async fn pay(&self, id: TradeId) -> Result<Receipt> {
        self.change(id, Action::Pay).await
    }

    /// `Paid → Settled`.
    pub async fn settle(&self, id: TradeId) -> Result<Receipt> {
        self.change(id, Action::Settle).await
    }

    /// `Created → Closed`.
    pub async fn close_trade(&self, id: TradeId) -> Result<Receipt> {
        self.change(id, Action::Close).await
    }

    /// `Paid → Refunded` (or a further partial refund), never above what was paid.
    pub async fn refund(&self, id: TradeId, amount: u64) -> Result<Receipt> {
        validate_amount(amount)?;
        self.change(id, Action::Refund(amount)).await
    }

    /// The trade's last durable state.
    pub async fn get(&self, id: TradeId) -> Result<Trade> {
        let shard = self.inner.routing.physical_of_trade(id)?;
        let executor = self.inner.routing.executor_of_physical(shard);
        self.call(executor, |reply| Request::Get { shard, id, reply }).await
    }

    /// Many trades in one trip per executor: the answers in the order of `ids`, each the
    /// trade or why not. Batching amortises the hand-off between threads, which dominates a
    /// cached read.
    pub async fn get_many(&self, ids: &[TradeId]) -> Result<Vec<Result<Trade>>> {
        let routing = self.inner.routing;
        let mut results: Vec<Option<Result<Trade>>> = vec![None; ids.len()];
        let mut per_executor: Vec<ExecutorBatch> = vec![(Vec::new(), Vec::new()); self.inner.inboxes.len()];
        for (slot, id) in ids.iter().enumerate() {
            match routing.physical_of_trade(*id) {
                Ok(shard) => {
                    let (slots, items) = &mut per_executor[routing.executor_of_physical(shard)];
                    slots.push(slot);
                    items.push((shard, *id));
                }
                Err(error) => results[slot] = Some(Err(error.into())),
            }
        }
        let mut waiting = Vec::new();
        for (executor, (slots, items)) in per_executor.into_iter().enumerate() {
            if items.is_empty() {
                continue;
            }
            let (tx, rx) = reply::channel();
            self.send(executor, Request::GetMany { items, reply: tx }).await?;
            waiting.push((slots, rx));
        }
        for (slots, rx) in waiting {
            let answers = rx.await.ok_or(Error::Closed)?;
            for (slot, answer) in slots.into_iter().zip(answers) {
                results[slot] = Some(answer);
            }
        }
        Ok(results.into_iter().map(|r| r.expect("every id answered")).collect())
    }

    /// A user's trades, newest first: at most `limit`, older than `before` when given.
    pub async fn list_user_trades(&self, user_id: u64, limit: usize, before: Option<TradeId>) -> Result<Vec<Trade>> {
        if user_id == 0 {
            return Err(tradeshard_shard::TradeError::ZeroUserId.into());
        }
        let routing = self.inner.routing;
        let shard = routing.physical_of_logical(routing.logical_of_user(user_id));
        let query = ListQuery { user_id, limit: limit.min(10_000), before };
        self.call(routing.executor_of_physical(shard), |reply| Request::List { shard, query, reply }).await
    }

    /// Counters of every shard, summed.
    pub async fn stats(&self) -> Result<EngineStats> {
        let mut stats = EngineStats::default();
        for executor in 0..self.inner.inboxes.len() {
            let (tx, rx) = reply::channel();
            match self.inner.inboxes[executor].push(Request::Stats { reply: tx }) {
                Ok(()) => {}
                Err(Refused::Closed) => return Err(Error::Closed),
                Err(Refused::Full(_)) => return Err(Error::Backpressure { executor }),
            }
            stats.shards.extend(rx.await.ok_or(Error::Closed)?);
        }
        stats.shards.sort_by_key(|(id, _)| *id);
        for (_, shard) in &stats.shards {
            stats.trades += shard.trades;
            stats.records += shard.wal.records;
            stats.fsyncs += shard.wal.fsyncs + shard.wal.durable_writes;
            stats.flushes += shard.wal.flushes;
            stats.disk_bytes += shard.wal.disk_bytes;
            let (total, cache) = (&mut stats.cache, &shard.cache);
            total.hits += cache.hits;
            total.misses += cache.misses;
            total.loads += cache.loads;
            total.coalesced += cache.coalesced;
            total.evictions += cache.evictions;
            total.bytes += cache.bytes;
            total.entries += cache.entries;
        }
        Ok(stats)
    }

    /// The amounts of every durable settled trade, summed per (merchant, currency): a scan of
    /// the store that a settlement consumer's totals can be reconciled against.
    pub async fn settled_totals(&self) -> Result<std::collections::BTreeMap<(u64, Currency), u64>> {
        let mut totals = std::collections::BTreeMap::new();
        for executor in 0..self.inner.inboxes.len() {
            let (tx, rx) = reply::channel();
            self.send(executor, Request::SettledTotals { reply: tx }).await?;
            for (key, amount) in rx.await.ok_or(Error::Closed)? {
                *totals.entry(key).or_insert(0) += amount;
            }
        }
        Ok(totals)
    }

    /// Blocking [`settled_totals`](Self::settled_totals).
    pub fn settled_totals_blocking(&self) -> Result<std::collections::BTreeMap<(u64, Currency), u64>> {
        block_on(self.settled_totals())
    }

    /// Blocking [`create_trade`](Self::create_trade).
    pub fn create_trade_blocking(&self, trade: NewTrade) -> Result<Receipt> {
        block_on(self.create_trade(trade))
    }

    /// Blocking [`pay`](Self::pay).
    pub fn pay_blocking(&self, id: TradeId) -> Result<Receipt> {
        block_on(self.pay(id))
    }

    /// Blocking [`settle`](Self::settle).
    pub fn settle_blocking(&self, id: TradeId) -> Result<Receipt> {
        block_on(self.settle(id))
    }

    /// Blocking [`close_trade`](Self::close_trade).
    pub fn close_trade_blocking(&self, id: TradeId) -> Result<Receipt> {
        block_on(self.close_trade(id))
    }

    /// Blocking [`refund`](Self::refund).
    pub fn refund_blocking(&self, id: TradeId, amount: u64) -> Result<Receipt> {
        block_on(self.refund(id, amount))
    }

    /// Blocking [`get`](Self::get).
    pub fn get_blocking(&self, id: TradeId) -> Result<Trade> {
        block_on(self.get(id))
    }

    /// Blocking [`get_many`](Self::get_many).
    pub fn get_many_blocking(&self, ids: &[TradeId]) -> Result<Vec<Result<Trade>>> {
        block_on(self.get_many(ids))
    }

    /// Blocking [`list_user_trades`](Self::list_user_trades).
    pub fn list_user_trades_blocking(&self, user_id: u64, limit: usize, before: Option<TradeId>) -> Result<Vec<Trade>> {
        block_on(self.list_user_trades(user_id, limit, before))
    }

    /// Blocking [`stats`](Self::stats).
    pub fn stats_blocking(&self) -> Result<EngineStats> {
        block_on(self.stats())
    }
}
