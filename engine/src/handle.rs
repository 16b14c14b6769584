//! `EngineHandle`: the embedded API, usable from any thread and any async runtime.
//!
//! Every method checks its input first (bad input never reaches a queue), routes to the
//! executor owning the shard, and resolves when the shard answers: writes once durable, reads
//! with durable state. A read of a trade its shard has cached is answered on the caller's
//! thread, from the cache the shard keeps current (`trade_cache.rs` in the shard crate), with
//! no hand-off to the executor. Each async method has a blocking twin for plain threads.
//!
//! A method sends one named operation (`ops.rs`) through [`EngineHandle::on_shard`] or
//! [`EngineHandle::submit`]; the plumbing between threads (the inbox, the reply, the blocking
//! twin) is written once, here and in `blocking.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use tradeshard_shard::{
    order_key, validate_amount, validate_refund_no, CachedTrade, Command, Currency, InputError, ListQuery, Move,
    NewTrade, Receipt, ReplyFuture, ShardStats, SharedCache, Trade, TradeCache, TradeError, TradeId,
};

use crate::blocking::blocking;
use crate::error::{Error, FullQueue, Result};
use crate::groups::Groups;
use crate::inbox::{Inbox, Refused};
use crate::ops::{self, ExecutorOp, OnShard, Request, ShardOp};
use crate::options::Backpressure;
use crate::routing::Routing;

pub(crate) struct HandleInner {
    pub routing: Routing,
    pub inboxes: Vec<Arc<Inbox<Request>>>,
    /// Each physical shard's cache of trades, read here, written by its executor.
    pub trade_caches: Vec<Arc<TradeCache>>,
    /// Order keys found by `get_by_order`, with the trade each names (`orders.rs`).
    pub order_ids: SharedCache<u128, TradeId>,
    pub backpressure: Backpressure,
    pub groups: Groups,
    /// How long a transfer's activity may stay undecided.
    pub activity_timeout: std::time::Duration,
    /// The embedder's participants in activities, and how long a call to one may take.
    pub participants: crate::participants::Participants,
    pub participant_timeout: std::time::Duration,
    /// How long the shards remember the keys of ended work (`Upkeep::key_window`).
    pub key_window: Option<std::time::Duration>,
    /// The checkers of half messages, by topic, and when they are asked.
    pub checkers: crate::checkers::MessageCheckers,
    pub half_checks: crate::checkers::HalfChecks,
    /// The next partition of a message with an empty key.
    pub next_partition: std::sync::atomic::AtomicU32,
    /// Each executor's beat, and the kicks it took (`kick.rs`).
    pub beats: Vec<Arc<crate::kick::Beat>>,
    /// Activities callers are driving now (`transfers.rs`).
    pub driving: crate::transfers::Driving,
}

/// A cheap, cloneable handle to an open engine (`Clone + Send + Sync`).
#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) inner: Arc<HandleInner>,
}

/// Totals over every shard.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    /// Per physical shard, in shard order.
    pub shards: Vec<ShardStats>,
    pub trades: u64,
    pub records: u64,
    /// Points where the logs made writes durable: fdatasync calls, plus frame writes that
    /// were durable on completion (`SyncMethod::DsyncWrites`).
    pub fsyncs: u64,
    pub flushes: u64,
    pub disk_bytes: u64,
    /// Record bytes the logs wrote before compression, and the same as stored (pieces
    /// compressed where LZ4 paid, their headers included): `WalStats::payload_*_bytes`.
    pub payload_raw_bytes: u64,
    pub payload_stored_bytes: u64,
    /// Cache counters summed over the shards.
    pub cache: tradeshard_shard::CacheStats,
    /// Counters of the handle's cache of order numbers found by `get_by_order`.
    pub order_ids: tradeshard_shard::CacheStats,
    /// Kicks sent to executors whose beat stood still (`kick.rs`: a wake of the beat task from
    /// outside, and a signal where the handler is installed): each one woke an executor left
    /// asleep with work to do, or found it in a long turn.
    pub executor_kicks: u64,
    /// Requests made on the executor that owns them (by tasks of `spawn_on`) and run there at
    /// once, with no hand-off between threads.
    pub requests_in_place: u64,
}

impl EngineHandle {
    /// The engine's routing (shard counts, executors).
    pub fn routing(&self) -> Routing {
        self.inner.routing
    }

    /// Queues `op` for `executor`, waiting for room or failing per the backpressure choice
    /// (or, made on that executor, runs it in place: `local.rs`); resolves to the future of
    /// its answer once queued or run.
    pub(crate) async fn submit<Op: ExecutorOp>(&self, executor: usize, op: Op) -> Result<ReplyFuture<Op::Output>> {
        self.submit_with(executor, op, self.inner.backpressure).await
    }

    /// [`submit`](Self::submit), waiting for room whatever the caller chose: for observers
    /// (stats, totals, the resolution of claims at open), which a full queue must not cut
    /// short.
    pub(crate) async fn submit_waiting<Op: ExecutorOp>(
        &self,
        executor: usize,
        op: Op,
    ) -> Result<ReplyFuture<Op::Output>> {
        self.submit_with(executor, op, Backpressure::Wait).await
    }

    async fn submit_with<Op: ExecutorOp>(
        &self,
        executor: usize,
        op: Op,
        backpressure: Backpressure,
    ) -> Result<ReplyFuture<Op::Output>> {
        let (job, answer) = ops::job(op);
        self.send(executor, job, backpressure).await?;
        Ok(answer)
    }

    /// [`submit`](Self::submit) of an operation on one shard, to the executor owning it.
    pub(crate) async fn submit_to_shard<Op: ShardOp>(
        &self,
        shard: u32,
        op: Op,
    ) -> Result<ReplyFuture<Result<Op::Output, TradeError>>> {
        self.submit(self.inner.routing.executor_of_physical(shard), OnShard { shard, op }).await
    }

    /// Runs an operation on one shard and waits for its answer.
    pub(crate) async fn on_shard<Op: ShardOp>(&self, shard: u32, op: Op) -> Result<Op::Output> {
        let answer = self.submit_to_shard(shard, op).await?;
        Ok(answer.await.ok_or(Error::Closed)??)
    }

    /// [`submit_to_shard`](Self::submit_to_shard), waiting for room in a full queue whatever
    /// the caller chose (see [`submit_waiting`](Self::submit_waiting)).
    pub(crate) async fn submit_to_shard_waiting<Op: ShardOp>(
        &self,
        shard: u32,
        op: Op,
    ) -> Result<ReplyFuture<Result<Op::Output, TradeError>>> {
        self.submit_waiting(self.inner.routing.executor_of_physical(shard), OnShard { shard, op }).await
    }

    /// [`on_shard`](Self::on_shard), waiting for room in a full queue whatever the caller
    /// chose (see [`submit_waiting`](Self::submit_waiting)).
    pub(crate) async fn on_shard_waiting<Op: ShardOp>(&self, shard: u32, op: Op) -> Result<Op::Output> {
        let answer = self.submit_to_shard_waiting(shard, op).await?;
        Ok(answer.await.ok_or(Error::Closed)??)
    }

    /// Runs an operation on every executor and gathers the answers, in executor order; an
    /// observer, it waits for room in full queues.
    pub(crate) async fn on_every_executor<Op: ExecutorOp + Clone>(&self, op: Op) -> Result<Vec<Op::Output>> {
        let mut answers = Vec::with_capacity(self.inner.inboxes.len());
        for executor in 0..self.inner.inboxes.len() {
            answers.push(self.submit_waiting(executor, op.clone()).await?);
        }
        let mut outputs = Vec::with_capacity(answers.len());
        for answer in answers {
            outputs.push(answer.await.ok_or(Error::Closed)?);
        }
        Ok(outputs)
    }

    async fn send(&self, executor: usize, request: Request, backpressure: Backpressure) -> Result<()> {
        let inbox = &self.inner.inboxes[executor];
        // Made on the executor that owns it: run now, with no hand-off (`local.rs`). Its answer
        // may be there already (a refusal, a repeat, a full log's queue), so a caller looping
        // on such answers would never give the executor's flushers a turn: it yields once its
        // time slice is used up, as a task answered from the cache does.
        let Some(mut request) = crate::local::run_here(inbox, request) else {
            glommio::yield_if_needed().await;
            return Ok(());
        };
        loop {
            match inbox.push(request) {
                Ok(()) => return Ok(()),
                Err(Refused::Closed) => return Err(Error::Closed),
                Err(Refused::Full(back)) => {
                    if backpressure == Backpressure::Fail {
                        return Err(Error::Backpressure { queue: FullQueue::Executor { executor } });
                    }
                    request = back;
                    std::future::poll_fn(|cx| inbox.poll_room(cx)).await;
                }
            }
        }
    }

    /// Creates a trade, durable when this resolves. Idempotent on (merchant, order number),
    /// unique per merchant across all shards: a retry with the same body returns the original
    /// (`replayed: true`); the same key with a different body (another buyer included) is
    /// `Refusal::IdempotencyConflict`.
    pub async fn create_trade(&self, trade: NewTrade) -> Result<Receipt> {
        let trade = trade.validate()?;
        let routing = self.inner.routing;
        let logical_shard = routing.logical_of_user(trade.buyer_id);
        let shard = routing.physical_of_logical(logical_shard);
        let key = order_key(trade.merchant_id, &trade.merchant_order_no);
        let home = routing.physical_of_order_key(key);
        if home != shard {
            return self.create_claimed(trade, logical_shard, key, home, shard).await;
        }
        // The order number's home is the buyer's shard: its `Created` record holds it.
        match self.on_shard(shard, ops::Write(Command::Create { trade, logical_shard })).await {
            Ok(receipt) => Ok(receipt),
            Err(error) => Err(self.naming_the_holder(error, key).await),
        }
    }

    async fn write_to_trade(&self, id: TradeId, command: Command) -> Result<Receipt> {
        let shard = self.inner.routing.physical_of_trade(id)?;
        self.on_shard(shard, ops::Write(command)).await
    }

    /// `Created → Paid`. Repeating it on a paid trade answers the original receipt
    /// (`replayed: true`).
    pub async fn pay(&self, id: TradeId) -> Result<Receipt> {
        self.write_to_trade(id, Command::Move { id, to: Move::Pay }).await
    }

    /// `Paid → Settled`. Repeating it on a settled trade answers the original receipt. A trade
    /// paid from a balance credits its merchant's account with what was not refunded (and
    /// settles after a partial refund too): answered once the credit is made, or, if it could
    /// not be made now, once it is recorded for recovery to make.
    pub async fn settle(&self, id: TradeId) -> Result<Receipt> {
        let settled = self.write_to_trade(id, Command::Move { id, to: Move::Settle }).await?;
        if settled.from_balance {
            // The trade is settled and the credit recorded: a failure to carry it out now is
            // not the settle's, recovery makes the credit.
            let _ = self.credit_settlement(&settled).await;
        }
        Ok(settled)
    }

    /// `Created → Closed`. Repeating it on a closed trade answers the original receipt.
    pub async fn close_trade(&self, id: TradeId) -> Result<Receipt> {
        self.write_to_trade(id, Command::Move { id, to: Move::Close }).await
    }

    /// `Paid → Refunded` (or a further partial refund), never above what was paid. `refund_no`
    /// is the caller's refund request number (1..=64 printable ASCII bytes, unique per merchant
    /// and buyer): repeating a refund with it answers the original receipt (`replayed: true`)
    /// and refunds nothing more; the same number with another amount or another trade is
    /// `Refusal::RefundRequestConflict`. Refunds with different numbers add up.
    pub async fn refund(&self, id: TradeId, refund_no: &str, amount: u64) -> Result<Receipt> {
        validate_amount(amount)?;
        validate_refund_no(refund_no)?;
        self.write_to_trade(id, Command::Refund { id, amount, refund_no: refund_no.to_string() }).await
    }

    /// The trade's last durable state: from its shard's cache on this thread when cached,
    /// else from its shard.
    pub async fn get(&self, id: TradeId) -> Result<Trade> {
        let shard = self.inner.routing.physical_of_trade(id)?;
        if let Some(trade) = self.cached(shard, id) {
            return Ok(trade);
        }
        self.on_shard(shard, ops::Get(id)).await
    }

    /// The trade from its shard's cache, read on this thread; `None` when it is not cached
    /// or the engine is closing (a closed engine answers `Closed`, as its queues do).
    fn cached(&self, shard: u32, id: TradeId) -> Option<Trade> {
        if self.inner.inboxes[self.inner.routing.executor_of_physical(shard)].is_closed() {
            return None;
        }
        // The trade is composed after the stripe's lock is let go: the executor takes that
        // lock to apply changes, and must not wait while this thread allocates.
        self.inner.trade_caches[shard as usize].get_with(&id, CachedTrade::copy).map(|copy| copy.trade(id))
    }

    /// Many trades, those cached read on this thread and the others in one trip per
    /// executor: the answers in the order of `ids`, each the trade or why not.
    pub async fn get_many(&self, ids: &[TradeId]) -> Result<Vec<Result<Trade>>> {
        let routing = self.inner.routing;
        let mut results: Vec<Option<Result<Trade>>> = vec![None; ids.len()];
        let mut slots_of_executor: Vec<Vec<usize>> = vec![Vec::new(); self.inner.inboxes.len()];
        let mut ids_of_executor: Vec<Vec<TradeId>> = vec![Vec::new(); self.inner.inboxes.len()];
        for (slot, id) in ids.iter().enumerate() {
            match routing.physical_of_trade(*id) {
                Ok(shard) => match self.cached(shard, *id) {
                    Some(trade) => results[slot] = Some(Ok(trade)),
                    None => {
                        let executor = routing.executor_of_physical(shard);
                        slots_of_executor[executor].push(slot);
                        ids_of_executor[executor].push(*id);
                    }
                },
                Err(error) => results[slot] = Some(Err(error.into())),
            }
        }
        let mut waiting = Vec::new();
        for (executor, (slots, ids)) in slots_of_executor.into_iter().zip(ids_of_executor).enumerate() {
            if !ids.is_empty() {
                waiting.push((slots, self.submit(executor, ops::GetMany(ids)).await?));
            }
        }
        for (slots, answer) in waiting {
            for (slot, trade) in slots.into_iter().zip(answer.await.ok_or(Error::Closed)?) {
                results[slot] = Some(trade.map_err(Error::from));
            }
        }
        Ok(results.into_iter().map(|r| r.expect("every id answered")).collect())
    }

    /// A user's trades, newest first: at most `limit` (at most 10,000), older than `before`
    /// when given.
    pub async fn list_user_trades(&self, user_id: u64, limit: usize, before: Option<TradeId>) -> Result<Vec<Trade>> {
        if user_id == 0 {
            return Err(InputError::ZeroUserId.into());
        }
        let routing = self.inner.routing;
        let shard = routing.physical_of_user(user_id);
        self.on_shard(shard, ops::List(ListQuery { user_id, limit: limit.min(10_000), before })).await
    }

    /// Counters of every shard, summed.
    pub async fn stats(&self) -> Result<EngineStats> {
        let mut stats = EngineStats::default();
        for (shards, in_place) in self.on_every_executor(ops::Stats).await? {
            stats.shards.extend(shards);
            stats.requests_in_place += in_place;
        }
        stats.shards.sort_by_key(|shard| shard.shard);
        for shard in &stats.shards {
            stats.trades += shard.trades;
            stats.records += shard.wal.records;
            stats.fsyncs += shard.wal.fsyncs + shard.wal.durable_writes;
            stats.flushes += shard.wal.flushes;
            stats.disk_bytes += shard.wal.disk_bytes;
            stats.payload_raw_bytes += shard.wal.payload_raw_bytes;
            stats.payload_stored_bytes += shard.wal.payload_stored_bytes;
            stats.cache.add(&shard.cache);
        }
        stats.order_ids = self.inner.order_ids.stats();
        stats.executor_kicks = self.inner.beats.iter().map(|beat| beat.kicks()).sum();
        Ok(stats)
    }

    /// Takes a checkpoint of every shard now (after any under way) and applies retention:
    /// each shard's checkpoint position, `None` where nothing changed since its last one.
    /// Shards also checkpoint on their own (`Options::upkeep`); this is for tools and tests.
    pub async fn checkpoint(&self) -> Result<Vec<Option<u64>>> {
        let mut positions = Vec::new();
        for shard in 0..self.inner.routing.physical_shards {
            positions.push(self.on_shard_waiting(shard, ops::Checkpoint).await?);
        }
        Ok(positions)
    }

    /// Every consumer group's durable committed offset per physical shard (in shard order):
    /// (group, offset, committed at in ms since the Unix epoch).
    pub async fn groups(&self) -> Result<Vec<Vec<(String, u64, u64)>>> {
        let mut groups = Vec::new();
        for shard in 0..self.inner.routing.physical_shards {
            groups.push(self.on_shard_waiting(shard, ops::Groups).await?);
        }
        Ok(groups)
    }

    /// What every durable settled trade settled to its merchant (its amount, less refunds for
    /// a trade paid from a balance: `TradeRecord::settled_amount` of its Settled event), summed
    /// per (merchant, currency): a scan of the store that a settlement consumer's totals can be
    /// reconciled against.
    pub async fn settled_totals(&self) -> Result<BTreeMap<(u64, Currency), u128>> {
        let mut totals = BTreeMap::new();
        for executor_totals in self.on_every_executor(ops::SettledTotals).await? {
            for (key, amount) in executor_totals? {
                *totals.entry(key).or_insert(0) += amount;
            }
        }
        Ok(totals)
    }

    blocking!(create_trade_blocking = create_trade(&self, trade: NewTrade) -> Result<Receipt>);
    blocking!(pay_blocking = pay(&self, id: TradeId) -> Result<Receipt>);
    blocking!(settle_blocking = settle(&self, id: TradeId) -> Result<Receipt>);
    blocking!(close_trade_blocking = close_trade(&self, id: TradeId) -> Result<Receipt>);
    blocking!(refund_blocking = refund(&self, id: TradeId, refund_no: &str, amount: u64) -> Result<Receipt>);
    blocking!(get_blocking = get(&self, id: TradeId) -> Result<Trade>);
    blocking!(get_many_blocking = get_many(&self, ids: &[TradeId]) -> Result<Vec<Result<Trade>>>);
    blocking!(list_user_trades_blocking = list_user_trades(&self, user_id: u64, limit: usize, before: Option<TradeId>) -> Result<Vec<Trade>>);
    blocking!(stats_blocking = stats(&self) -> Result<EngineStats>);
    blocking!(checkpoint_blocking = checkpoint(&self) -> Result<Vec<Option<u64>>>);
    blocking!(groups_blocking = groups(&self) -> Result<Vec<Vec<(String, u64, u64)>>>);
    blocking!(settled_totals_blocking = settled_totals(&self) -> Result<BTreeMap<(u64, Currency), u128>>);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_lite::future::block_on;

    use super::*;

    /// A handle to one inbox of one request that no executor drains.
    fn handle_of_unserved_inbox(backpressure: Backpressure) -> (EngineHandle, Arc<Inbox<Request>>) {
        let inbox = Arc::new(Inbox::new(1));
        let routing = Routing { logical_shards: 1, physical_shards: 1, executors: 1 };
        let inner = HandleInner {
            routing,
            inboxes: vec![inbox.clone()],
            trade_caches: vec![Arc::new(TradeCache::with_hasher(0))],
            order_ids: SharedCache::new(0),
            backpressure,
            groups: Groups::default(),
            activity_timeout: Duration::from_secs(1),
            participants: Default::default(),
            participant_timeout: Duration::from_secs(1),
            key_window: None,
            checkers: Default::default(),
            half_checks: crate::checkers::HalfChecks {
                delay: Duration::from_secs(1),
                interval: Duration::from_secs(1),
                max: 1,
            },
            next_partition: Default::default(),
            beats: Vec::new(),
            driving: Default::default(),
        };
        (EngineHandle { inner: Arc::new(inner) }, inbox)
    }

    #[test]
    fn a_full_queue_refuses_a_caller_that_chose_to_fail() {
        let (handle, _inbox) = handle_of_unserved_inbox(Backpressure::Fail);
        assert!(block_on(handle.submit(0, ops::Sleep(Duration::ZERO))).is_ok(), "the one place is free");
        match block_on(handle.submit(0, ops::Sleep(Duration::ZERO))) {
            Err(Error::Backpressure { queue: FullQueue::Executor { executor: 0 } }) => {}
            other => panic!("expected backpressure of executor 0, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_full_queue_holds_a_waiting_caller_until_there_is_room() {
        let (handle, inbox) = handle_of_unserved_inbox(Backpressure::Wait);
        assert!(block_on(handle.submit(0, ops::Sleep(Duration::ZERO))).is_ok(), "the one place is free");
        let waiter = {
            let handle = handle.clone();
            std::thread::spawn(move || block_on(handle.submit(0, ops::Sleep(Duration::ZERO))).map(drop))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "a waiting caller returned while the queue was full");
        assert_eq!(inbox.drain(1, drop), 1);
        assert!(waiter.join().unwrap().is_ok(), "the waiting caller got the room");
    }

    #[test]
    fn a_request_dropped_unrun_answers_its_caller_none() {
        let (handle, inbox) = handle_of_unserved_inbox(Backpressure::Fail);
        let answer = block_on(handle.submit(0, ops::Sleep(Duration::ZERO))).expect("queued");
        assert_eq!(inbox.drain(1, drop), 1, "the request is taken and dropped, as a closing executor does");
        let answered = block_on(futures_lite::future::poll_once(answer));
        assert_eq!(answered, Some(None), "its caller learns at once that no answer comes");
    }

    /// Holds its executor's thread until told to let go: nothing else runs there meanwhile.
    struct HoldExecutor(std::sync::mpsc::Receiver<()>);

    impl ExecutorOp for HoldExecutor {
        type Output = ();
        fn start(self, _: &ops::ExecutorShards, reply: tradeshard_shard::Reply<()>) {
            let _ = self.0.recv();
            reply.send(());
        }
    }

    /// A cached trade is read on the caller's thread: `get` answers while the executor that
    /// owns the trade's shard is held, where a request handed to it would wait behind the hold.
    #[test]
    fn a_cached_get_is_answered_while_its_executor_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let options =
            crate::Options { physical_shards: Some(1), executors: Some(1), ..crate::Options::new(dir.path()) };
        let engine = crate::Engine::open(options).unwrap();
        let handle = engine.handle();
        let trade = NewTrade {
            buyer_id: 7,
            merchant_id: 9,
            merchant_order_no: "ORD-1".into(),
            amount: 100,
            currency: "CNY".into(),
            memo: String::new(),
        };
        let id = handle.create_trade_blocking(trade).unwrap().id;
        let (release, held) = std::sync::mpsc::channel();
        let hold = block_on(handle.submit(0, HoldExecutor(held))).unwrap();
        let (answer_tx, answer) = std::sync::mpsc::channel();
        let reader = handle.clone();
        std::thread::spawn(move || answer_tx.send(reader.get_blocking(id).map(|trade| trade.amount)));
        let read = answer.recv_timeout(Duration::from_secs(10));
        release.send(()).unwrap();
        block_on(hold).unwrap();
        assert_eq!(read.expect("the read was answered while the executor was held").unwrap(), 100);
        engine.close().unwrap();
    }
}
