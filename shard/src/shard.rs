//! One shard: its log, its indexes, and the path of every request through them.
//!
//! A write is checked against the shard's *accepted* view (durable state plus writes still in
//! flight), encoded, and queued in the log at once, so every request that arrives while a flush
//! is on the disk joins the next group commit. Its effect is applied to the durable indexes,
//! and its caller answered, only once the log reports it durable, in log order, by the
//! shard's committer task. Reads look at durable state only: nothing is read before it is
//! durable, and a caller that got an answer to a write reads that write.
//!
//! A `get` composes the trade from two parts: its state (status, amounts, times), always from
//! the durable index in memory, and its immutable part (order number, memo, creation time)
//! from the `Created` record, served by the shard's read-through cache and read from the log
//! on a miss. Because the cached part never changes and the changing part is never cached, a
//! read can be neither stale nor ahead of durability; a create puts its immutable part in the
//! cache when it becomes durable.
//!
//! A create whose order number is already in flight waits for the first create to become
//! durable and answers with it. After the log fails, the shard answers every write with the
//! failure (the log acknowledges nothing more until reopened); reads of durable state go on.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::hash::BuildHasherDefault;
use std::rc::Rc;
use std::task::Waker;
use std::time::{SystemTime, UNIX_EPOCH};

use tradeshard_cache::{CacheStats, ReadThrough};
use tradeshard_wal::disk::Disk;
use tradeshard_wal::{Appended, RecoveredWal, Ticket, Wal, WalConfig, WalStats};

use crate::currency::Currency;
use crate::error::TradeError;
use crate::events::{EventBatch, PollQuery, RawEventBatch};
use crate::index::{body_hash, next_state, order_key, Action, IdHasher, IdMap, Lifecycle, ShardIndex, TradeEntry};
use crate::record::{LogRecord, OffsetCommit, TradeRecord, TradeRecordView};
use crate::trade::{Receipt, Trade, TradeId, TradeStatus, ValidTrade, COUNTER_BITS};

/// Called once with the outcome of a request.
pub type Done<T> = Box<dyn FnOnce(Result<T, TradeError>)>;

/// A write to one shard.
#[derive(Debug, Clone)]
pub enum Command {
    /// Create a trade for a buyer of `logical_shard` (which this shard owns).
    Create { trade: ValidTrade, logical_shard: u32 },
    /// Change an existing trade.
    Change { id: TradeId, action: Action },
}

/// Most trade reads one listing has in flight at once.
const LIST_READS_IN_FLIGHT: usize = 32;

/// Which of a user's trades to list: newest first, at most `limit`, older than `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListQuery {
    pub user_id: u64,
    pub limit: usize,
    pub before: Option<TradeId>,
}

/// Counters of one shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub trades: u64,
    pub writes_in_flight: u64,
    pub wal: WalStats,
    pub cache: CacheStats,
}

/// The immutable part of a trade, from its `Created` record: what the cache holds. One heap
/// block, shared by clones: the creation time (8 bytes), the order number's length (1), the
/// order number, the memo. (It was a struct of two `String`s behind an `Rc`: three blocks,
/// about twice the bytes, so the same budget cached fewer trades.)
#[derive(Clone, PartialEq, Eq)]
pub struct CreatedPart(Rc<[u8]>);

impl CreatedPart {
    pub fn new(created_ms: u64, merchant_order_no: &str, memo: &str) -> CreatedPart {
        let order_len = u8::try_from(merchant_order_no.len()).expect("order numbers are validated to fit a byte");
        let mut bytes = Vec::with_capacity(9 + merchant_order_no.len() + memo.len());
        bytes.extend_from_slice(&created_ms.to_le_bytes());
        bytes.push(order_len);
        bytes.extend_from_slice(merchant_order_no.as_bytes());
        bytes.extend_from_slice(memo.as_bytes());
        CreatedPart(bytes.into())
    }

    /// Milliseconds since the Unix epoch.
    pub fn created_ms(&self) -> u64 {
        u64::from_le_bytes(self.0[..8].try_into().expect("eight bytes"))
    }

    pub fn merchant_order_no(&self) -> &str {
        let len = self.0[8] as usize;
        std::str::from_utf8(&self.0[9..9 + len]).expect("made from a str")
    }

    pub fn memo(&self) -> &str {
        let len = self.0[8] as usize;
        std::str::from_utf8(&self.0[9 + len..]).expect("made from a str")
    }

    /// Bytes it really occupies: its one heap block (with the `Rc`'s two counts), rounded as
    /// the allocator rounds it, so that the cache's budget bounds resident memory.
    pub(crate) fn cache_bytes(part: &CreatedPart) -> usize {
        (16 + part.0.len() + 8).next_multiple_of(16).max(32)
    }
}

impl std::fmt::Debug for CreatedPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedPart")
            .field("created_ms", &self.created_ms())
            .field("merchant_order_no", &self.merchant_order_no())
            .field("memo", &self.memo())
            .finish()
    }
}

/// A trade with writes in flight: its accepted (not yet durable) state.
#[derive(Clone, Copy)]
pub(crate) struct InFlight {
    lifecycle: Lifecycle,
    pub last_seq: u64,
    user_id: u64,
    merchant_id: u64,
    currency: Currency,
}

/// A caller's callback and the answer to give it once the shard's borrows have ended.
type AnswerNow = (Done<Receipt>, Result<Receipt, TradeError>);

/// Who waits for a write, and for what.
pub(crate) enum Reply {
    Trade(Done<Receipt>),
    Offset(Done<u64>),
}

/// A durable write's answer, collected under the borrows and given after them.
pub(crate) enum Answer {
    Trade(Done<Receipt>, Receipt),
    Offset(Done<u64>, u64),
}

pub(crate) struct Effect {
    pub seq: u64,
    pub ticket: Option<Ticket>,
    pub record: LogRecord,
    /// A create's order key and body hash, computed once when it was checked.
    pub keys: Option<(u128, u64)>,
    pub reply: Reply,
}

#[derive(Default)]
pub(crate) struct Accepted {
    pub trades: IdMap<TradeId, InFlight>,
    pub orders: IdMap<u128, (TradeId, u64, u64)>,
    pub effects: VecDeque<Effect>,
    /// Duplicate creates waiting for the original (at this seq) to become durable.
    pub waiting: VecDeque<(u64, TradeId, Done<Receipt>)>,
    pub next_counter: u64,
    pub committer: Option<Waker>,
    pub failed: Option<TradeError>,
    pub closing: bool,
}

pub(crate) struct Inner<D: Disk> {
    pub wal: Wal<D>,
    pub index: RefCell<ShardIndex>,
    pub accepted: RefCell<Accepted>,
    pub created_parts: ReadThrough<TradeId, CreatedPart, TradeError, BuildHasherDefault<IdHasher>>,
}

/// One shard of the trade store, on the executor that opened it.
pub struct Shard<D: Disk> {
    inner: Rc<Inner<D>>,
    committer: Option<glommio::task::JoinHandle<()>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A shard whose log was verified and replayed into its indexes, not yet started: nothing on
/// disk has changed, and dropping it leaves the files as they were.
pub struct RecoveredShard<D: Disk> {
    wal: RecoveredWal<D>,
    index: ShardIndex,
    cache_bytes: usize,
}

impl<D: Disk> RecoveredShard<D> {
    /// Makes the log's repairs, starts it and the shard's committer.
    pub async fn start(self) -> Result<Shard<D>, TradeError> {
        let RecoveredShard { wal, index, cache_bytes } = self;
        let wal = wal.start().await?;
        let accepted = Accepted { next_counter: index.counter_max() + 1, ..Accepted::default() };
        let inner = Rc::new(Inner {
            wal,
            index: RefCell::new(index),
            accepted: RefCell::new(accepted),
            created_parts: ReadThrough::with_hasher(cache_bytes),
        });
        let committer = glommio::spawn_local(crate::committer::run(inner.clone())).detach();
        Ok(Shard { inner, committer: Some(committer) })
    }
}

impl<D: Disk> Shard<D> {
    /// Opens the shard's log on `disk`, rebuilding the indexes from every record, with a
    /// read-through cache of `cache_bytes` (0: every read goes to the log).
    pub async fn open(disk: D, wal_config: WalConfig, cache_bytes: usize) -> Result<Shard<D>, TradeError> {
        Self::recover(disk, wal_config, cache_bytes).await?.start().await
    }

    /// The first half of [`open`](Self::open): verifies the log and rebuilds the indexes from
    /// it, changing nothing on disk (see [`RecoveredShard::start`]).
    pub async fn recover(disk: D, wal_config: WalConfig, cache_bytes: usize) -> Result<RecoveredShard<D>, TradeError> {
        let mut index = ShardIndex::default();
        let mut replay_error = None;
        let (wal, _) = Wal::recover_with_positions(disk, wal_config, |at, bytes| {
            if replay_error.is_some() {
                return;
            }
            let applied = LogRecord::decode(bytes).and_then(|record| match record {
                LogRecord::Trade(record) => index.apply(&record, at),
                LogRecord::Offset(commit) => {
                    index.apply_offset(&commit);
                    Ok(())
                }
            });
            if let Err(reason) = applied {
                replay_error = Some(TradeError::BadRecord { seq: at.seq, reason });
            }
        })
        .await?;
        if let Some(error) = replay_error {
            return Err(error);
        }
        Ok(RecoveredShard { wal, index, cache_bytes })
    }

    /// Starts a write; `done` is called once it is durable, or with why not.
    pub fn submit(&self, command: Command, done: Done<Receipt>) {
        // Callers are answered only after the shard's borrows end, so that an answer may call
        // back into the shard.
        let answer_now = {
            let mut accepted = self.inner.accepted.borrow_mut();
            match &accepted.failed {
                Some(failure) => Some((done, Err(failure.clone()))),
                None => {
                    let index = self.inner.index.borrow();
                    match command {
                        Command::Create { trade, logical_shard } => {
                            self.create(&mut accepted, &index, trade, logical_shard, done)
                        }
                        Command::Change { id, action } => self.change(&mut accepted, &index, id, action, done),
                    }
                }
            }
        };
        if let Some((done, answer)) = answer_now {
            done(answer);
        }
    }

    /// Queues a create, or returns the answer to give at once (a refusal, or the original of
    /// a retried create that is already durable).
    fn create(
        &self,
        accepted: &mut Accepted,
        index: &ShardIndex,
        trade: ValidTrade,
        logical_shard: u32,
        done: Done<Receipt>,
    ) -> Option<AnswerNow> {
        let key = order_key(trade.merchant_id, &trade.merchant_order_no);
        let body = body_hash(trade.buyer_id, trade.amount, trade.currency, &trade.memo);
        let conflict = |existing| TradeError::IdempotencyConflict {
            existing,
            merchant_id: trade.merchant_id,
            order_no: trade.merchant_order_no.clone(),
        };
        if let Some(&(id, original_body, seq)) = accepted.orders.get(&key) {
            if original_body != body {
                return Some((done, Err(conflict(id))));
            }
            accepted.waiting.push_back((seq, id, done));
            return None;
        }
        if let Some((id, original_body)) = index.by_order(key) {
            if original_body != body {
                return Some((done, Err(conflict(id))));
            }
            let entry = index.get(id).expect("order index points at a trade");
            return Some((done, Ok(receipt(id, entry, true))));
        }
        let counter = accepted.next_counter;
        if counter >= 1 << COUNTER_BITS {
            return Some((done, Err(TradeError::CounterExhausted)));
        }
        let id = TradeId::new(logical_shard, counter);
        let record = TradeRecord::created(id, &trade, now_ms());
        let ticket = match self.inner.wal.enqueue(&record.encode()) {
            Ok(ticket) => ticket,
            Err(error) => return Some((done, Err(error.into()))),
        };
        let seq = ticket.seq();
        accepted.next_counter += 1;
        let lifecycle = Lifecycle { status: TradeStatus::Created, amount: trade.amount, refunded: 0 };
        let in_flight = InFlight {
            lifecycle,
            last_seq: seq,
            user_id: trade.buyer_id,
            merchant_id: trade.merchant_id,
            currency: trade.currency,
        };
        accepted.trades.insert(id, in_flight);
        accepted.orders.insert(key, (id, body, seq));
        let record = LogRecord::Trade(record);
        accepted.push(Effect { seq, ticket: Some(ticket), record, keys: Some((key, body)), reply: Reply::Trade(done) });
        None
    }

    /// Queues a change, or returns the refusal to give at once.
    fn change(
        &self,
        accepted: &mut Accepted,
        index: &ShardIndex,
        id: TradeId,
        action: Action,
        done: Done<Receipt>,
    ) -> Option<AnswerNow> {
        let current = match (accepted.trades.get(&id), index.get(id)) {
            (Some(in_flight), _) => *in_flight,
            (None, Some(entry)) => InFlight {
                lifecycle: entry.lifecycle,
                last_seq: entry.created_at.seq,
                user_id: entry.user_id,
                merchant_id: entry.merchant_id,
                currency: entry.currency,
            },
            (None, None) => return Some((done, Err(TradeError::NotFound(id)))),
        };
        let next = match next_state(id, current.lifecycle, action) {
            Ok(next) => next,
            Err(error) => return Some((done, Err(error))),
        };
        let record = TradeRecord {
            kind: action.record_kind(),
            trade_id: id,
            user_id: current.user_id,
            merchant_id: current.merchant_id,
            at_ms: now_ms(),
            amount: if let Action::Refund(amount) = action { amount } else { current.lifecycle.amount },
            currency: current.currency,
            created: None,
        };
        let ticket = match self.inner.wal.enqueue(&record.encode()) {
            Ok(ticket) => ticket,
            Err(error) => return Some((done, Err(error.into()))),
        };
        let seq = ticket.seq();
        accepted.trades.insert(id, InFlight { lifecycle: next, last_seq: seq, ..current });
        let record = LogRecord::Trade(record);
        accepted.push(Effect { seq, ticket: Some(ticket), record, keys: None, reply: Reply::Trade(done) });
        None
    }

    /// Reads a trade's durable state: at once when its immutable part is cached, else after
    /// reading the log.
    pub fn get(&self, id: TradeId, done: Done<Trade>) {
        let cached = {
            let index = self.inner.index.borrow();
            match index.get(id) {
                None => Some(Err(TradeError::NotFound(id))),
                Some(entry) => {
                    let part = self.inner.created_parts.cache().borrow_mut().get(&id);
                    part.map(|part| Ok(compose(id, entry, &part)))
                }
            }
        };
        match cached {
            Some(answer) => done(answer),
            None => {
                let inner = self.inner.clone();
                glommio::spawn_local(async move { done(read_trade(&inner, id, true).await) }).detach();
            }
        }
    }

    /// Lists a user's durable trades, newest first.
    pub fn list(&self, query: ListQuery, done: Done<Vec<Trade>>) {
        let ids: Vec<TradeId> = {
            let index = self.inner.index.borrow();
            let all = index.user_trades(query.user_id);
            // A cursor that is not one of the user's trades lists nothing.
            let end = query.before.map_or(all.len(), |before| all.iter().rposition(|id| *id == before).unwrap_or(0));
            all[..end].iter().rev().take(query.limit).copied().collect()
        };
        // The reads go out `LIST_READS_IN_FLIGHT` at a time, so a page of a listing costs
        // about one read's latency, not one per trade, and a long listing no more I/O memory.
        let inner = self.inner.clone();
        glommio::spawn_local(async move {
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
                        Err(error) => return done(Err(error)),
                    }
                }
            }
            done(Ok(trades))
        })
        .detach();
    }

    /// Records `group`'s position in this shard's log: `offset` is the next event the group
    /// will read. Durable (like any write) when `done` is called; at most the durable end.
    pub fn commit_offset(&self, group: &str, offset: u64, done: Done<u64>) {
        if let Some(failure) = self.inner.accepted.borrow().failed.clone() {
            return done(Err(failure));
        }
        if !OffsetCommit::valid_group(group) {
            return done(Err(TradeError::BadGroup { len: group.len() }));
        }
        let end = self.inner.wal.durable_end();
        if offset > end {
            return done(Err(TradeError::OffsetBeyondEnd { offset, end }));
        }
        let commit = OffsetCommit { group: group.to_string(), offset, at_ms: now_ms() };
        let ticket = match self.inner.wal.enqueue(&commit.encode()) {
            Ok(ticket) => ticket,
            Err(error) => return done(Err(error.into())),
        };
        let mut accepted = self.inner.accepted.borrow_mut();
        let seq = ticket.seq();
        let effect = Effect {
            seq,
            ticket: Some(ticket),
            record: LogRecord::Offset(commit),
            keys: None,
            reply: Reply::Offset(done),
        };
        accepted.push(effect);
    }

    /// `group`'s durable committed offset in this shard, if it ever committed one.
    pub fn committed_offset(&self, group: &str) -> Option<u64> {
        self.inner.index.borrow().committed_offset(group)
    }

    /// The offsets a consumer can read: the first retained and the durable end.
    pub fn offset_range(&self) -> (u64, u64) {
        (self.inner.wal.first_seq(), self.inner.wal.durable_end())
    }

    /// The offset after the last durable trade event (offset commits after it are no events).
    pub fn events_end(&self) -> u64 {
        self.inner.index.borrow().events_end()
    }

    /// Trade events from `query.from` on, durable only, in log order; waits up to
    /// `query.wait` for one if there is none yet (a long poll).
    pub fn poll_events(&self, query: PollQuery, done: Done<EventBatch>) {
        let inner = self.inner.clone();
        glommio::spawn_local(async move { done(crate::events::poll(&inner.wal, query).await) }).detach();
    }

    /// [`poll_events`](Self::poll_events), answered with the records' bytes (decoded by the
    /// reader, on its own thread).
    pub fn poll_raw_events(&self, query: PollQuery, done: Done<RawEventBatch>) {
        let inner = self.inner.clone();
        glommio::spawn_local(async move { done(crate::events::poll_raw(&inner.wal, query).await) }).detach();
    }

    /// The amounts of the durable settled trades, summed per (merchant, currency): what a
    /// settlement consumer's totals must equal.
    pub fn settled_totals(&self) -> Vec<((u64, Currency), u64)> {
        let mut totals: std::collections::HashMap<(u64, Currency), u64> = std::collections::HashMap::new();
        for (_, entry) in self.inner.index.borrow().trades() {
            if entry.lifecycle.status == TradeStatus::Settled {
                *totals.entry((entry.merchant_id, entry.currency)).or_default() += entry.lifecycle.amount;
            }
        }
        totals.into_iter().collect()
    }

    /// Counters of the shard.
    pub fn stats(&self) -> ShardStats {
        ShardStats {
            trades: self.inner.index.borrow().len() as u64,
            writes_in_flight: self.inner.accepted.borrow().effects.len() as u64,
            wal: self.inner.wal.stats(),
            cache: self.inner.created_parts.cache().borrow().stats(),
        }
    }

    /// Stops taking writes, waits for those in flight, and closes the log (synced).
    pub async fn close(mut self) -> Result<(), TradeError> {
        {
            let mut accepted = self.inner.accepted.borrow_mut();
            accepted.closing = true;
            accepted.wake();
        }
        if let Some(committer) = self.committer.take() {
            committer.await;
        }
        // Reads and polls in flight hold the shard; long polls are cut short, the rest finish.
        self.inner.wal.stop_waits();
        while Rc::strong_count(&self.inner) > 1 {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        let inner = self.inner.clone();
        drop(self);
        let inner = Rc::try_unwrap(inner).ok().expect("no other holder is left");
        Ok(inner.wal.close().await?)
    }
}

impl<D: Disk> Drop for Shard<D> {
    /// Without `close`, writes in flight still complete; the log closes once they have.
    fn drop(&mut self) {
        self.inner.wal.stop_waits();
        let mut accepted = self.inner.accepted.borrow_mut();
        accepted.closing = true;
        accepted.wake();
    }
}

impl Accepted {
    fn push(&mut self, effect: Effect) {
        self.effects.push_back(effect);
        self.wake();
    }

    fn wake(&mut self) {
        if let Some(waker) = self.committer.take() {
            waker.wake();
        }
    }
}

pub(crate) fn receipt(id: TradeId, entry: &TradeEntry, replayed: bool) -> Receipt {
    Receipt {
        id,
        status: entry.lifecycle.status,
        amount: entry.lifecycle.amount,
        refunded_amount: entry.lifecycle.refunded,
        updated_ms: entry.updated_ms,
        replayed,
    }
}

/// The trade's durable state: its immutable part from the cache (or the log), the rest from
/// the index.
/// `missed`: the caller already looked the cache up and missed.
async fn read_trade<D: Disk>(inner: &Inner<D>, id: TradeId, missed: bool) -> Result<Trade, TradeError> {
    let created_at = inner.index.borrow().get(id).map(|entry| entry.created_at).ok_or(TradeError::NotFound(id))?;
    let load = || read_created_part(inner, created_at);
    let parts = &inner.created_parts;
    let part = if missed {
        parts.load_after_miss(id, load, CreatedPart::cache_bytes).await?
    } else {
        parts.get_or_load(id, load, CreatedPart::cache_bytes).await?
    };
    let index = inner.index.borrow();
    Ok(compose(id, index.get(id).expect("trades are never removed"), &part))
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

/// Reads a trade's `Created` record from the log (direct I/O): a cache miss.
async fn read_created_part<D: Disk>(inner: &Inner<D>, created_at: Appended) -> Result<CreatedPart, TradeError> {
    let bytes = inner.wal.read_at(created_at.seq, created_at.piece).await?;
    let bad = |reason| TradeError::BadRecord { seq: created_at.seq, reason };
    let record = TradeRecordView::decode(&bytes).map_err(bad)?;
    let created = record.created.ok_or(bad("not a created record"))?;
    Ok(CreatedPart::new(record.at_ms, created.merchant_order_no, created.memo))
}

#[cfg(test)]
mod created_part_tests {
    use super::CreatedPart;
    use crate::trade::{MEMO_BYTES_MAX, ORDER_NO_BYTES_MAX};

    #[test]
    fn fields_come_back_as_they_went_in() {
        let longest_order = "9".repeat(ORDER_NO_BYTES_MAX);
        let longest_memo = "备".repeat(MEMO_BYTES_MAX / 3);
        for (ms, order, memo) in
            [(0, "", ""), (u64::MAX, "ORD-1", "order 1 of buyer 7"), (7, longest_order.as_str(), longest_memo.as_str())]
        {
            let part = CreatedPart::new(ms, order, memo);
            assert_eq!((part.created_ms(), part.merchant_order_no(), part.memo()), (ms, order, memo));
            assert_eq!(part.clone(), part);
        }
    }

    /// One heap block, charged as the allocator rounds it: a typical trade's part is charged
    /// 80 bytes (three blocks of 160 before).
    #[test]
    fn a_part_is_charged_its_one_block() {
        let part = CreatedPart::new(1, "ORD-123456-78", "order 78 of buyer 123456");
        assert_eq!(CreatedPart::cache_bytes(&part), 80);
        assert!(CreatedPart::cache_bytes(&CreatedPart::new(1, "", "")) >= 16 + 9);
    }
}
