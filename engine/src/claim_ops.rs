//! The operations of the claim protocol between executors (`orders.rs` says what the protocol
//! does; `shard/src/claims.rs` is the home shard's side): the create across shards and its
//! second step, the claim's confirmation, and the open's batched resolution of the claims a
//! stop left pending.

use tradeshard_shard::reply::{self, Reply, ReplyFuture};
use tradeshard_shard::{
    ClaimOutcome, ClaimRequest, ClaimState, Command, DiskShard, LogError, OrderLookup, PendingClaim, Receipt,
    Reservation, ShardReply, TradeError, TradeId, ValidTrade,
};

use crate::ops::{Call, ExecutorOp, ExecutorShards, Job, OnShard, Request, ShardOp, Write};

/// A create whose order number's home shard is not its buyer's: sent to the home shard's
/// executor, which claims the key and hands the create at once to the buyer shard's executor
/// with the caller's reply and the claim's durability to wait for, through its outbox (see
/// `orders.rs`). The caller makes one hand-off, as for any create.
pub(crate) struct CreateAcross {
    pub claim: ClaimRequest,
    pub trade: ValidTrade,
    pub logical_shard: u32,
    pub home: u32,
    pub buyer_shard: u32,
}

impl ExecutorOp for CreateAcross {
    type Output = Result<Receipt, TradeError>;
    fn start(self, shards: &ExecutorShards, reply: Reply<Self::Output>) {
        let CreateAcross { claim, trade, logical_shard, home, buyer_shard } = self;
        let key = claim.key;
        let (claimed, mut answer) = reply::channel();
        shards.shard(home).claim_order(claim, claimed);
        let buyer_executor = shards.routing.executor_of_physical(buyer_shard);
        let outbox = shards.outbox.clone();
        let next = move |reservation: Option<Result<Reservation, TradeError>>| {
            let claim = match reservation {
                None => return reply.send(Err(TradeError::Log(LogError::Closed))),
                Some(Err(refused)) => return reply.send(Err(refused)),
                // Confirmed already (a retry of a create that finished): the trade is there.
                Some(Ok(Reservation::Durable(Some(_)))) => {
                    let op = OnShard { shard: buyer_shard, op: Write(Command::Create { trade, logical_shard }) };
                    return outbox.send(buyer_executor, Request::owned(Call { op, reply }));
                }
                Some(Ok(Reservation::Durable(None))) => ClaimState::Durable,
                Some(Ok(Reservation::Pending(durable))) => ClaimState::Pending(durable),
            };
            let op = CreateClaimed { shard: buyer_shard, trade, logical_shard, home, key, claim };
            outbox.send(buyer_executor, Request::owned(Call { op, reply }))
        };
        // Answered at once unless the home shard reads its runs on disk first.
        match answer.try_take() {
            Some(reservation) => next(Some(reservation)),
            None => drop(glommio::spawn_local(async move { next(answer.await) }).detach()),
        }
    }
}

/// The second step of a create across shards: the trade in the buyer's shard, answered once
/// it and its claim are durable; then the claim's confirmation goes to the home shard's
/// executor from here (not through the caller: one hand-off fewer per create), with the other
/// jobs of this turn.
pub(crate) struct CreateClaimed {
    pub shard: u32,
    pub trade: ValidTrade,
    pub logical_shard: u32,
    pub home: u32,
    pub key: u128,
    pub claim: ClaimState,
}

impl ExecutorOp for CreateClaimed {
    type Output = Result<Receipt, TradeError>;
    fn start(self, shards: &ExecutorShards, reply: Reply<Self::Output>) {
        let CreateClaimed { shard, trade, logical_shard, home, key, claim } = self;
        let home_executor = shards.routing.executor_of_physical(home);
        let outbox = shards.outbox.clone();
        let confirm = Box::new(move |receipt: &Receipt| {
            outbox.send(home_executor, Request::owned(ConfirmClaim { shard: home, key, trade: receipt.id }));
        });
        shards.shard(shard).create_claimed(trade, logical_shard, claim, reply, confirm)
    }
}

/// A claim's confirmation with its trade, durable in the buyer's shard. Nothing waits for it:
/// the home shard makes it in memory, and one lost to a stop is made when the engine opens.
struct ConfirmClaim {
    shard: u32,
    key: u128,
    trade: TradeId,
}

impl Job for ConfirmClaim {
    fn run(self: Box<Self>, shards: &ExecutorShards) {
        shards.shard(self.shard).confirm_claim(self.key, self.trade);
    }
}

/// The ends of pending claims: each confirmed with its trade, or released. Answered once the
/// releases are durable, with the first error if any failed.
pub(crate) struct SettleClaims(pub Vec<(u128, ClaimOutcome)>);

impl ShardOp for SettleClaims {
    type Output = ();
    fn start(self, shard: &DiskShard, reply: ShardReply<()>) {
        let answers = self.0.into_iter().map(|(key, outcome)| match outcome {
            ClaimOutcome::Confirmed(trade) if shard.confirm_claim(key, trade) => Answer::Ready(()),
            _ => Answer::Later(answer_of(|one| shard.settle_claim(key, outcome, one))),
        });
        all_then(answers.collect(), reply, |_| ())
    }
}

/// The trades a shard's open found with their claim in doubt (`doubts.rs` in the shard crate).
pub(crate) struct TradesInDoubt;

impl ShardOp for TradesInDoubt {
    type Output = Vec<TradeId>;
    fn start(self, shard: &DiskShard, reply: ShardReply<Vec<TradeId>>) {
        shard.take_trades_in_doubt(reply)
    }
}

/// Claims of durable trades whose claims a stop may have lost, in their home shard: each
/// answered with how it stands (the first refusal fails them all).
pub(crate) struct ClaimAgain(pub Vec<ClaimRequest>);

impl ShardOp for ClaimAgain {
    type Output = Vec<Reservation>;
    fn start(self, shard: &DiskShard, reply: ShardReply<Vec<Reservation>>) {
        let answers = self.0.into_iter().map(|request| Answer::Later(answer_of(|one| shard.claim_order(request, one))));
        all_then(answers.collect(), reply, |reservations| reservations)
    }
}

/// The claims of these trades of the shard are durable in their home shards.
pub(crate) struct ClaimsKnown(pub Vec<TradeId>);

impl ShardOp for ClaimsKnown {
    type Output = ();
    fn start(self, shard: &DiskShard, reply: ShardReply<()>) {
        shard.claims_known(&self.0);
        reply.send(Ok(()))
    }
}

/// Where a shard knows an order key from.
pub(crate) struct FindOrder(pub u128);

impl ShardOp for FindOrder {
    type Output = OrderLookup;
    fn start(self, shard: &DiskShard, reply: ShardReply<OrderLookup>) {
        shard.find_order(self.0, reply)
    }
}

/// Where a shard knows each of these order keys from, in their order, for the pending claims
/// of the creates of these bodies (the open's resolution of pending claims: a trade under the
/// number is the claim's when it is within the key window, or past it with the claim's body;
/// `Shard::find_claims_trade`).
pub(crate) struct FindOrders(pub Vec<(u128, u64)>);

impl ShardOp for FindOrders {
    type Output = Vec<OrderLookup>;
    fn start(self, shard: &DiskShard, reply: ShardReply<Vec<OrderLookup>>) {
        let answers = self.0.into_iter().map(|(key, body)| match shard.find_claims_trade_in_memory(key) {
            Some(found) => Answer::Ready(found),
            None => Answer::Later(answer_of(|one| shard.find_claims_trade(key, body, one))),
        });
        all_then(answers.collect(), reply, |found| found)
    }
}

/// The pending claims of every shard of the executor, with their home shard.
#[derive(Clone, Copy)]
pub(crate) struct PendingClaims;

impl ExecutorOp for PendingClaims {
    type Output = Vec<(u32, PendingClaim)>;
    fn start(self, shards: &ExecutorShards, reply: Reply<Self::Output>) {
        let mut pending = Vec::new();
        for (id, shard) in &shards.shards {
            pending.extend(shard.pending_claims().into_iter().map(|claim| (*id, claim)));
        }
        reply.send(pending)
    }
}

type ShardAnswer<T> = ReplyFuture<Result<T, TradeError>>;

/// One of many answers: known at once (from memory), or to wait for.
enum Answer<T> {
    Ready(T),
    Later(ShardAnswer<T>),
}

/// The future of what `ask` answers.
fn answer_of<T: Send + 'static>(ask: impl FnOnce(ShardReply<T>)) -> ShardAnswer<T> {
    let (one, answer) = reply::channel();
    ask(one);
    answer
}

/// Answers `reply` with `finish` of every answer once all are in, or the first error; at once
/// when every answer is ready.
fn all_then<T: 'static, U: Send + 'static>(
    answers: Vec<Answer<T>>,
    reply: ShardReply<U>,
    finish: impl FnOnce(Vec<T>) -> U + 'static,
) {
    if answers.iter().all(|answer| matches!(answer, Answer::Ready(_))) {
        let values = answers.into_iter().map(|answer| match answer {
            Answer::Ready(value) => value,
            Answer::Later(_) => unreachable!("every answer is ready"),
        });
        return reply.send(Ok(finish(values.collect())));
    }
    glommio::spawn_local(async move {
        let mut values = Vec::with_capacity(answers.len());
        for answer in answers {
            match answer {
                Answer::Ready(value) => values.push(value),
                Answer::Later(later) => match later.await {
                    Some(Ok(value)) => values.push(value),
                    Some(Err(error)) => return reply.send(Err(error)),
                    None => return reply.send(Err(TradeError::Log(LogError::Closed))),
                },
            }
        }
        reply.send(Ok(finish(values)))
    })
    .detach();
}
