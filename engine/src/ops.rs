//! The operations an executor runs: one named request type each, and what the executor does
//! with it. Everything that crosses from a caller's thread to an executor is one of these,
//! made a [`Request`] with the [`Reply`] its answer goes to.
//!
//! Adding an operation on one shard is a type here with a [`ShardOp`] impl that calls one
//! shard method, and one `EngineHandle` method that sends it (`ARCHITECTURE.md`, "How to add
//! an operation"). An operation over all of an executor's shards is an [`ExecutorOp`].

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tradeshard_shard::reply::{self, HoldsReply, Reply, ReplyFuture, ReplySlot};
use tradeshard_shard::{
    AccountCommand, AccountReceipt, ActivityEntry, Balance, Command, Currency, DiskShard, EventBatch, FoundActivity,
    ListQuery, LogError, PollQuery, Receipt, ShardReply, ShardStats, Step, StepAnswer, Trade, TradeError, TradeId,
};

use crate::inbox::{Inbox, Refused};
use crate::outbox::Outbox;
use crate::routing::Routing;

/// The shards one executor owns, the routing that tells which one holds a trade, and the
/// outbox of follow-ups for other executors.
pub(crate) struct ExecutorShards {
    pub routing: Routing,
    pub shards: HashMap<u32, DiskShard>,
    /// Jobs for other executors, pushed once per turn.
    pub outbox: Rc<Outbox>,
    /// Requests made on this executor's thread and run there, with no hand-off (`local.rs`).
    pub requests_in_place: Cell<u64>,
}

impl ExecutorShards {
    pub(crate) fn shard(&self, shard: u32) -> &DiskShard {
        self.shards.get(&shard).expect("requests are routed to the executor owning the shard")
    }
}

/// An operation on one shard.
pub(crate) trait ShardOp: Send + 'static {
    type Output: Send + 'static;
    fn start(self, shard: &DiskShard, reply: ShardReply<Self::Output>);
}

/// An operation over the shards of one executor.
pub(crate) trait ExecutorOp: Send + 'static {
    type Output: Send + 'static;
    fn start(self, shards: &ExecutorShards, reply: Reply<Self::Output>);
}

/// A [`ShardOp`] addressed to its shard.
pub(crate) struct OnShard<Op> {
    pub shard: u32,
    pub op: Op,
}

impl<Op: ShardOp> ExecutorOp for OnShard<Op> {
    type Output = Result<Op::Output, TradeError>;
    fn start(self, shards: &ExecutorShards, reply: Reply<Self::Output>) {
        self.op.start(shards.shard(self.shard), reply)
    }
}

/// What an executor's inbox carries: an operation with the reply it owes. Dropped without
/// running (a closed inbox), it answers its asker `None`.
pub(crate) struct Request(Kind);

enum Kind {
    /// A job whose reply, if any, is its own (sent between executors).
    Owned(Box<dyn Job>),
    /// A caller's operation sharing one allocation with the slot of its answer.
    Asked(Arc<dyn AskedJob>),
    /// Run already.
    Taken,
}

impl Request {
    pub(crate) fn owned(job: impl Job + 'static) -> Request {
        Request(Kind::Owned(Box::new(job)))
    }

    pub(crate) fn run(mut self, shards: &ExecutorShards) {
        match std::mem::replace(&mut self.0, Kind::Taken) {
            Kind::Owned(job) => job.run(shards),
            Kind::Asked(job) => job.run(shards),
            Kind::Taken => unreachable!("a request runs once"),
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if let Kind::Asked(job) = std::mem::replace(&mut self.0, Kind::Taken) {
            job.abandon();
        }
    }
}

/// A job an executor runs once, owning the reply it owes.
pub(crate) trait Job: Send {
    fn run(self: Box<Self>, shards: &ExecutorShards);
}

/// A job whose reply slot is in its own allocation, which the asker holds too.
trait AskedJob: Send + Sync {
    fn run(self: Arc<Self>, shards: &ExecutorShards);
    /// Never to run: answers the asker `None`.
    fn abandon(self: Arc<Self>);
}

/// An operation with the reply it owes.
pub(crate) struct Call<Op: ExecutorOp> {
    pub op: Op,
    pub reply: Reply<Op::Output>,
}

impl<Op: ExecutorOp> Job for Call<Op> {
    fn run(self: Box<Self>, shards: &ExecutorShards) {
        let Call { op, reply } = *self;
        op.start(shards, reply)
    }
}

/// A caller's operation and the slot of its answer (`reply.rs`): one allocation per request,
/// freed by the caller once it read the answer.
struct Ask<Op: ExecutorOp> {
    op: Mutex<Option<Op>>,
    answer: ReplySlot<Op::Output>,
}

impl<Op: ExecutorOp> HoldsReply<Op::Output> for Ask<Op> {
    fn reply_slot(&self) -> &ReplySlot<Op::Output> {
        &self.answer
    }
}

impl<Op: ExecutorOp> AskedJob for Ask<Op> {
    fn run(self: Arc<Self>, shards: &ExecutorShards) {
        let op = self.op.lock().expect("job lock").take().expect("a job runs once");
        op.start(shards, Reply::of(self))
    }

    fn abandon(self: Arc<Self>) {
        drop(Reply::of(self))
    }
}

/// `op` as a job for an inbox, and the future of its answer.
pub(crate) fn job<Op: ExecutorOp>(op: Op) -> (Request, ReplyFuture<Op::Output>) {
    let ask = Arc::new(Ask { op: Mutex::new(Some(op)), answer: ReplySlot::default() });
    let answer = ReplyFuture::of(ask.clone());
    (Request(Kind::Asked(ask)), answer)
}

/// Hands `job` to another executor's inbox from a task of this one, waiting for room as a task
/// (the executors keep draining their own inboxes meanwhile, so two executors handing jobs to
/// each other cannot wait on each other forever). A closed inbox drops the job, which answers
/// its asker `None` (the engine is closing).
pub(crate) async fn hand_over(inbox: Arc<Inbox<Request>>, mut job: Request) {
    loop {
        match inbox.push(job) {
            Ok(()) | Err(Refused::Closed) => return,
            Err(Refused::Full(back)) => {
                job = back;
                std::future::poll_fn(|cx| inbox.poll_room(cx)).await;
            }
        }
    }
}

/// A create or a change of a trade; answered once durable.
pub(crate) struct Write(pub Command);

impl ShardOp for Write {
    type Output = Receipt;
    fn start(self, shard: &DiskShard, reply: ShardReply<Receipt>) {
        shard.submit(self.0, reply)
    }
}

/// One trade's durable state, for a caller that missed it in the shard's cache.
pub(crate) struct Get(pub TradeId);

impl ShardOp for Get {
    type Output = Trade;
    fn start(self, shard: &DiskShard, reply: ShardReply<Trade>) {
        shard.get_after_miss(self.0, reply)
    }
}

/// A page of a user's trades.
pub(crate) struct List(pub ListQuery);

impl ShardOp for List {
    type Output = Vec<Trade>;
    fn start(self, shard: &DiskShard, reply: ShardReply<Vec<Trade>>) {
        shard.list(self.0, reply)
    }
}

/// Settlement events of one shard (partition), as record bytes.
pub(crate) struct PollEvents(pub PollQuery);

impl ShardOp for PollEvents {
    type Output = EventBatch;
    fn start(self, shard: &DiskShard, reply: ShardReply<EventBatch>) {
        shard.poll_events(self.0, reply)
    }
}

/// A consumer group's new position in one shard; answered with it once durable.
pub(crate) struct CommitOffset {
    pub group: String,
    pub offset: u64,
}

impl ShardOp for CommitOffset {
    type Output = u64;
    fn start(self, shard: &DiskShard, reply: ShardReply<u64>) {
        shard.commit_offset(&self.group, self.offset, reply)
    }
}

/// Where a consumer group stands in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPosition {
    /// The group's committed offset, if it ever committed one.
    pub committed: Option<u64>,
    /// The first offset still in the log.
    pub first: u64,
    /// The durable end: the offset the next record will get.
    pub end: u64,
    /// The offset after the last event, trade or message (offset commits are no events).
    pub events_end: u64,
}

/// A group's position in one partition.
pub(crate) struct Position {
    pub group: String,
}

impl ShardOp for Position {
    type Output = PartitionPosition;
    fn start(self, shard: &DiskShard, reply: ShardReply<PartitionPosition>) {
        let (first, end) = shard.offset_range();
        let committed = shard.committed_offset(&self.group);
        reply.send(Ok(PartitionPosition { committed, first, end, events_end: shard.events_end() }))
    }
}

/// Many trades in one trip, for a caller that missed them in the shards' caches: the answers
/// in the order of the ids, sent once the last is in (at once when every one is cached now).
pub(crate) struct GetMany(pub Vec<TradeId>);

impl ExecutorOp for GetMany {
    type Output = Vec<Result<Trade, TradeError>>;
    fn start(self, shards: &ExecutorShards, reply: Reply<Self::Output>) {
        let mut answers: Vec<ReplyFuture<Result<Trade, TradeError>>> = Vec::with_capacity(self.0.len());
        for id in self.0 {
            let (one, answer) = reply::channel();
            let shard = shards.routing.physical_of_trade(id).expect("ids are checked before they are sent");
            shards.shard(shard).get_after_miss(id, one);
            answers.push(answer);
        }
        let mut ready = Vec::with_capacity(answers.len());
        for answer in &mut answers {
            match answer.try_take() {
                Some(trade) => ready.push(trade),
                None => break,
            }
        }
        if ready.len() == answers.len() {
            return reply.send(ready);
        }
        glommio::spawn_local(async move {
            for answer in answers.drain(ready.len()..) {
                ready.push(answer.await.unwrap_or(Err(TradeError::Log(LogError::Closed))));
            }
            reply.send(ready)
        })
        .detach();
    }
}

/// A checkpoint of one shard, then its retention: the position, or `None` if nothing was
/// applied since the last one.
pub(crate) struct Checkpoint;

impl ShardOp for Checkpoint {
    type Output = Option<u64>;
    fn start(self, shard: &DiskShard, reply: ShardReply<Option<u64>>) {
        let checkpoint = shard.checkpoint();
        glommio::spawn_local(async move { reply.send(checkpoint.await) }).detach();
    }
}

/// The consumer groups of one shard: (group, committed offset, committed at ms).
pub(crate) struct Groups;

impl ShardOp for Groups {
    type Output = Vec<(String, u64, u64)>;
    fn start(self, shard: &DiskShard, reply: ShardReply<Self::Output>) {
        reply.send(Ok(shard.groups()))
    }
}

/// Counters of every shard of the executor.
#[derive(Clone, Copy)]
pub(crate) struct Stats;

impl ExecutorOp for Stats {
    /// Each shard's counters, and the requests run in place.
    type Output = (Vec<ShardStats>, u64);
    fn start(self, shards: &ExecutorShards, reply: Reply<(Vec<ShardStats>, u64)>) {
        reply.send((shards.shards.values().map(|shard| shard.stats()).collect(), shards.requests_in_place.get()))
    }
}

/// Settled amounts per (merchant, currency) over the executor's shards.
#[derive(Clone, Copy)]
pub(crate) struct SettledTotals;

impl ExecutorOp for SettledTotals {
    type Output = Result<BTreeMap<(u64, Currency), u128>, TradeError>;
    fn start(self, shards: &ExecutorShards, reply: Reply<Self::Output>) {
        // Trades not in memory are read from each shard's table on disk.
        let scans: Vec<_> = shards.shards.values().map(|shard| shard.settled_totals()).collect();
        glommio::spawn_local(async move {
            let mut totals = BTreeMap::new();
            for scan in scans {
                match scan.await {
                    Ok(shard_totals) => {
                        for (key, amount) in shard_totals {
                            *totals.entry(key).or_insert(0) += amount;
                        }
                    }
                    Err(error) => return reply.send(Err(error)),
                }
            }
            reply.send(Ok(totals))
        })
        .detach();
    }
}

/// An account request (a deposit, a withdrawal) in the user's shard.
pub(crate) struct Post(pub AccountCommand);

impl ShardOp for Post {
    type Output = AccountReceipt;
    fn start(self, shard: &DiskShard, reply: ShardReply<AccountReceipt>) {
        shard.post(self.0, reply)
    }
}

/// Account requests of one shard in one trip (`transfer_batch.rs`), answered together.
pub(crate) struct PostMany(pub Vec<AccountCommand>);

impl ShardOp for PostMany {
    type Output = Vec<Result<AccountReceipt, TradeError>>;
    fn start(self, shard: &DiskShard, reply: ShardReply<Self::Output>) {
        shard.post_many(self.0, reply)
    }
}

/// A local transaction of flexible-transaction steps.
pub(crate) struct Transact(pub Vec<Step>);

impl ShardOp for Transact {
    type Output = Vec<StepAnswer>;
    fn start(self, shard: &DiskShard, reply: ShardReply<Vec<StepAnswer>>) {
        shard.transact(self.0, reply)
    }
}

/// Many local transactions of flexible-transaction steps, each made or refused on its own.
pub(crate) struct TransactMany(pub Vec<Vec<Step>>);

impl ShardOp for TransactMany {
    type Output = Vec<Result<Vec<StepAnswer>, TradeError>>;
    fn start(self, shard: &DiskShard, reply: ShardReply<Self::Output>) {
        shard.transact_many(self.0, reply)
    }
}

/// What a durable account request did, by its request key.
pub(crate) struct GetAccountRequest(pub u128);

impl ShardOp for GetAccountRequest {
    type Output = Option<(tradeshard_shard::AccountOp, u64)>;
    fn start(self, shard: &DiskShard, reply: ShardReply<Self::Output>) {
        shard.find_account_request(self.0, reply)
    }
}

/// An activity the shard initiated that its memory holds (under way, or recently completed).
pub(crate) struct HeldActivity(pub u128);

impl ShardOp for HeldActivity {
    type Output = Option<ActivityEntry>;
    fn start(self, shard: &DiskShard, reply: ShardReply<Option<ActivityEntry>>) {
        reply.send(Ok(shard.activity(self.0)))
    }
}

/// An activity the shard initiated, held or completed and kept in a run on disk.
pub(crate) struct FindActivity(pub u128);

impl ShardOp for FindActivity {
    type Output = Option<FoundActivity>;
    fn start(self, shard: &DiskShard, reply: ShardReply<Option<FoundActivity>>) {
        shard.find_activity(self.0, reply)
    }
}

/// The activities not completed of every shard of the executor, with their shard.
#[derive(Clone, Copy)]
pub(crate) struct UnfinishedActivities;

impl ExecutorOp for UnfinishedActivities {
    type Output = Vec<(u32, u128, ActivityEntry)>;
    fn start(self, shards: &ExecutorShards, reply: Reply<Self::Output>) {
        let mut unfinished = Vec::new();
        for (id, shard) in &shards.shards {
            unfinished
                .extend(shard.unfinished_activities().into_iter().map(|(activity, entry)| (*id, activity, entry)));
        }
        reply.send(unfinished)
    }
}

/// Per currency, the money in the hands of activities, over the executor's shards.
#[derive(Clone, Copy)]
pub(crate) struct InTransit;

impl ExecutorOp for InTransit {
    type Output = BTreeMap<Currency, i128>;
    fn start(self, shards: &ExecutorShards, reply: Reply<Self::Output>) {
        let mut totals = BTreeMap::new();
        for shard in shards.shards.values() {
            for (currency, amount) in shard.in_transit() {
                *totals.entry(currency).or_insert(0) += amount;
            }
        }
        reply.send(totals)
    }
}

/// An account's durable balance.
pub(crate) struct GetBalance {
    pub user_id: u64,
    pub currency: Currency,
}

impl ShardOp for GetBalance {
    type Output = Balance;
    fn start(self, shard: &DiskShard, reply: ShardReply<Balance>) {
        reply.send(Ok(shard.balance(self.user_id, self.currency)))
    }
}

/// The sums of the balances per currency over the executor's shards.
#[derive(Clone, Copy)]
pub(crate) struct AccountTotals;

impl ExecutorOp for AccountTotals {
    type Output = BTreeMap<Currency, u128>;
    fn start(self, shards: &ExecutorShards, reply: Reply<Self::Output>) {
        let mut totals = BTreeMap::new();
        for shard in shards.shards.values() {
            for (currency, total) in shard.account_totals() {
                *totals.entry(currency).or_insert(0) += total;
            }
        }
        reply.send(totals)
    }
}

/// An answer after `duration`: the timer of a wait that has no shard to wait on (a clustered
/// consumer with no partition; a consumer may run on any thread, so it has no timer of its
/// own).
pub(crate) struct Sleep(pub Duration);

impl ExecutorOp for Sleep {
    type Output = ();
    fn start(self, _: &ExecutorShards, reply: Reply<()>) {
        glommio::spawn_local(async move {
            glommio::timer::sleep(self.0).await;
            reply.send(());
        })
        .detach();
    }
}
