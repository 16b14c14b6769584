//! A merchant order number's home shard: the claims that keep an order number to one trade
//! across all shards.
//!
//! The key (merchant, order number) has a home shard of its own. A create whose buyer lives in
//! another shard claims the key there ([`Shard::claim_order`]): the claim holds the create's
//! body hash and buyer, and is answered at once, with its durability to wait for, so that the
//! trade is written in the buyer's shard while the claim is written here; the create is
//! acknowledged once both are durable (the buyer's side is `doubts.rs`). Until the claim is
//! durable the key is held in memory. A second create of the key is answered from the claim:
//! the same body goes on to the buyer's shard (which answers the original trade, or creates it
//! if the first attempt never got there); another body is a conflict. Once the trade exists
//! the claim is confirmed with its id ([`Shard::settle_claim`]), in memory only: that the
//! trade is durable in its buyer's shard is a fact a record here would only repeat, and the
//! next checkpoint keeps it (in the claims' runs). A claim left pending by a stop (its trade
//! never written, or its confirmation not yet in a checkpoint) is confirmed or released when
//! the engine opens, by asking the buyer's shard whether the trade exists; only a release is
//! written. A trade whose claim a stop lost is claimed again first (`doubts.rs`). A create
//! whose buyer lives in the home shard needs no claim: its own `Created` record holds the key,
//! and the checks here and in `write.rs` look at both. Confirmed claims older than the last
//! checkpoint are in runs on disk (`key_runs.rs`): a request whose key a run may hold reads
//! the runs first, on a task, and is checked again with what it read.

use std::rc::Rc;

use tradeshard_wal::disk::Disk;

use crate::entries::ClaimEntry;
use crate::error::{Refusal, TradeError};
use crate::index::{body_hash, order_key};
use crate::key_runs::{read_reaching_then, read_then, KeyKind, Lookup, Reach, RunRead};
use crate::reply::{self, ReplyFuture};
use crate::shard::Shard;
use crate::state::{Effect, EffectKeys, Inner, ShardReply, Waiter};
use crate::system_record::{ClaimOutcome, ClaimSettled, LogRecord, OrderClaim};
use crate::trade::now_ms;
use crate::trade::{Trade, TradeId, ValidTrade};

/// A create's claim of its order key, sent to the key's home shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// `order_key(merchant_id, order_no)`.
    pub key: u128,
    /// `body_hash` of the create.
    pub body: u64,
    pub buyer_id: u64,
    /// The buyer's logical shard, which the id of the buyer's trade carries.
    pub logical_shard: u32,
    pub merchant_id: u64,
    /// For the conflict's message.
    pub order_no: String,
}

impl ClaimRequest {
    /// The claim of a validated create's order number, for a buyer of logical shard
    /// `logical_shard`.
    pub fn of(trade: &ValidTrade, logical_shard: u32) -> ClaimRequest {
        let body = body_hash(trade.buyer_id, trade.amount, trade.currency, &trade.memo);
        ClaimRequest::new(trade.merchant_id, &trade.merchant_order_no, trade.buyer_id, logical_shard, body)
    }

    /// The claim of a durable trade's order number (an open claims again the trades whose
    /// claim a stop may have lost: `doubts.rs`).
    pub fn of_trade(trade: &Trade) -> ClaimRequest {
        let body = body_hash(trade.buyer_id, trade.amount, trade.currency, &trade.memo);
        let logical_shard = trade.id.logical_shard();
        ClaimRequest::new(trade.merchant_id, &trade.merchant_order_no, trade.buyer_id, logical_shard, body)
    }

    fn new(merchant_id: u64, order_no: &str, buyer_id: u64, logical_shard: u32, body: u64) -> ClaimRequest {
        let key = order_key(merchant_id, order_no);
        ClaimRequest { key, body, buyer_id, logical_shard, merchant_id, order_no: order_no.to_string() }
    }

    /// Whether this may be the create that made `claim`, a durable claim of its key: the same
    /// body hash; or, for a confirmed claim a run keeps by its trade alone, a buyer of the
    /// trade's logical shard. A buyer of another logical shard is another buyer, so another
    /// body; a buyer of the same one is sent on to that shard, which holds the key with its
    /// trade and tells a repeat from a conflict by the trade's own fields (`write.rs`).
    fn may_have_made(&self, claim: &ClaimEntry) -> bool {
        match claim.trade {
            Some(trade) if !claim.kept_whole() => trade.logical_shard() == self.logical_shard,
            _ => claim.body == self.body,
        }
    }
}

/// Where a shard knows an order key from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderLookup {
    /// A durable trade of this shard has it.
    Trade(TradeId),
    /// This shard is its home and holds a claim confirmed with this trade, of a buyer of
    /// another shard.
    Claimed(TradeId),
    /// This shard is its home and holds a claim of this buyer (of another shard) not confirmed
    /// yet: the buyer's shard may hold the trade.
    ClaimPending { buyer_id: u64 },
    /// Neither.
    Free,
}

/// How a claim stands once [`Shard::claim_order`] made it, or found it made.
pub enum Reservation {
    /// Durable before this request: with the trade it was confirmed with (`None`: pending).
    Durable(Option<TradeId>),
    /// Made now, or by a create of the same body still in flight: the future answers once it
    /// is durable (with `None`), or why it failed. Until then the key is held in memory, and
    /// a create with another body is refused all the same.
    Pending(ReplyFuture<Result<Option<TradeId>, TradeError>>),
}

/// A claim not settled yet, as the engine resolves it when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingClaim {
    pub key: u128,
    /// The body hash of the create that claimed it.
    pub body: u64,
    pub buyer_id: u64,
}

impl<D: Disk> Shard<D> {
    /// Claims `request.key` for a create of a buyer of another shard. Answers at once: the
    /// claim made now and its durability to wait for, or the durable claim of a create of the
    /// same body (with its trade, if it got that far); another body holding the key is
    /// `Refusal::IdempotencyConflict`.
    pub fn claim_order(&self, request: ClaimRequest, reply: ShardReply<Reservation>) {
        claim_order(&self.inner, request, reply, None)
    }

    /// Ends the pending claim of `key`: confirmed with its trade (at once, in memory: the
    /// caller has the trade durable in its buyer's shard), or released (once durable).
    /// Idempotent: a claim settled the same way already (or being settled) is answered at once.
    pub fn settle_claim(&self, key: u128, outcome: ClaimOutcome, reply: ShardReply<()>) {
        settle_claim(&self.inner, key, outcome, reply, None)
    }

    /// Confirms the pending claim of `key` with `trade`, durable in the buyer's shard: in
    /// memory, at once (see the module's text). False when no claim of `key` is pending here
    /// (confirmed already, or being released).
    pub fn confirm_claim(&self, key: u128, trade: TradeId) -> bool {
        confirm_in_memory(&self.inner, key, trade)
    }

    /// Where this shard knows `key` from, in durable state, however long ago it was used (past
    /// the key window too: a lookup of a trade by its order number).
    pub fn find_order(&self, key: u128, reply: ShardReply<OrderLookup>) {
        find_order(&self.inner, key, Reach::All, reply, None)
    }

    /// Where this shard knows `key` from, for the resolution of a pending claim of a create
    /// of body `body` (the engine's open): a trade under the key within the key window is the
    /// claim's (a create's check sees no other). Past the window a trade is the claim's only if
    /// it is of the same body: the claim's own trade may have aged past the window while the
    /// claim waited (a long stop), and a trade of an earlier use of the number may lie there too.
    pub fn find_claims_trade(&self, key: u128, body: u64, reply: ShardReply<OrderLookup>) {
        let inner = self.inner.clone();
        glommio::spawn_local(async move { reply.send(claims_trade(&inner, key, body).await) }).detach();
    }

    /// [`find_claims_trade`](Self::find_claims_trade) answered from memory at once, or `None`
    /// when a run on disk must be read or a trade past the window compared (the open's
    /// resolution of many claims asks this first).
    pub fn find_claims_trade_in_memory(&self, key: u128) -> Option<OrderLookup> {
        let recent = order_lookup(&self.inner, key, Reach::Window, None)?;
        if matches!(recent, OrderLookup::Trade(_)) {
            return Some(recent);
        }
        match order_lookup(&self.inner, key, Reach::All, None)? {
            OrderLookup::Trade(_) => None,
            _ => Some(recent),
        }
    }

    /// The durable claims of this shard that are not settled yet.
    pub fn pending_claims(&self) -> Vec<PendingClaim> {
        let index = self.inner.index.borrow();
        index
            .pending_claims()
            .map(|(key, claim)| PendingClaim { key, body: claim.body, buyer_id: claim.buyer_id })
            .collect()
    }
}

/// [`Shard::claim_order`], with the key's state read from the runs if it was.
fn claim_order<D: Disk>(
    inner: &Rc<Inner<D>>,
    request: ClaimRequest,
    reply: ShardReply<Reservation>,
    read: Option<RunRead>,
) {
    let mut accepted = inner.accepted.borrow_mut();
    if let Some(failure) = &accepted.failed {
        return reply.send(Err(failure.clone()));
    }
    let index = inner.index.borrow();
    let conflict = |existing| -> TradeError {
        let ClaimRequest { merchant_id, order_no, .. } = request.clone();
        Refusal::IdempotencyConflict { existing, merchant_id, order_no }.into()
    };
    if let Some(&(body, seq)) = accepted.claims.get(&request.key) {
        return match body == request.body {
            true => {
                let (durable, answer) = reply::channel();
                accepted.claim_repeats.entry(seq).or_default().push(durable);
                reply.send(Ok(Reservation::Pending(answer)))
            }
            false => reply.send(Err(conflict(None))),
        };
    }
    if let Some(&(id, _, _)) = accepted.orders.get(&request.key) {
        return reply.send(Err(conflict(Some(id))));
    }
    let lookup = inner.key_runs.borrow().lookup(&index, request.key, KeyKind::Order, read.as_ref());
    let durable = match lookup {
        Lookup::Known(state) => state,
        Lookup::MustRead => {
            drop((accepted, index));
            let key = request.key;
            return read_then(inner, key, KeyKind::Order, reply, move |inner, reply, read| {
                claim_order(inner, request, reply, Some(read))
            });
        }
    };
    if let Some(claim) = durable.claim {
        return match request.may_have_made(&claim) {
            true => reply.send(Ok(Reservation::Durable(claim.trade))),
            false => reply.send(Err(conflict(claim.trade))),
        };
    }
    if let Some((id, _)) = durable.order {
        return reply.send(Err(conflict(Some(id))));
    }
    let claim = OrderClaim {
        key: request.key,
        body: request.body,
        buyer_id: request.buyer_id,
        merchant_id: request.merchant_id,
        at_ms: now_ms(),
    };
    let ticket = match inner.wal.enqueue(&claim.encode()) {
        Ok(ticket) => ticket,
        Err(error) => return reply.send(Err(error.into())),
    };
    let seq = ticket.seq();
    accepted.claims.insert(request.key, (request.body, seq));
    let record = LogRecord::Claim(claim);
    let (durable, answer) = reply::channel();
    accepted.push(Effect { seq, ticket: Some(ticket), record, keys: EffectKeys::None, waiter: Waiter::Claim(durable) });
    reply.send(Ok(Reservation::Pending(answer)));
}

/// [`Shard::settle_claim`], with the key's state read from the runs if it was.
fn settle_claim<D: Disk>(
    inner: &Rc<Inner<D>>,
    key: u128,
    outcome: ClaimOutcome,
    reply: ShardReply<()>,
    read: Option<RunRead>,
) {
    let mut accepted = inner.accepted.borrow_mut();
    if let Some(failure) = &accepted.failed {
        return reply.send(Err(failure.clone()));
    }
    // Only the engine settles claims, after the claim is durable: a settlement that meets
    // a claim still in flight, or contradicts one made or being made, is its bug.
    let contradiction = || TradeError::BadRecord { seq: 0, reason: "settlement contradicts the claim" };
    match accepted.settling.get(&key) {
        Some(settling) if *settling == outcome => return reply.send(Ok(())),
        Some(_) => return reply.send(Err(contradiction())),
        None if accepted.claims.contains_key(&key) => return reply.send(Err(contradiction())),
        None => {}
    }
    // Not being released (checked above): a pending claim is confirmed in memory.
    if let ClaimOutcome::Confirmed(trade) = outcome {
        if inner.index.borrow_mut().confirm_pending_claim(key, trade) {
            return reply.send(Ok(()));
        }
    }
    let lookup = inner.key_runs.borrow().lookup(&inner.index.borrow(), key, KeyKind::Order, read.as_ref());
    let claim = match lookup {
        Lookup::Known(state) => state.claim,
        Lookup::MustRead => {
            drop(accepted);
            return read_then(inner, key, KeyKind::Order, reply, move |inner, reply, read| {
                settle_claim(inner, key, outcome, reply, Some(read))
            });
        }
    };
    let settled_already = match (claim.map(|claim| claim.trade), outcome) {
        (Some(None), ClaimOutcome::Released) => false,
        (Some(Some(confirmed)), ClaimOutcome::Confirmed(id)) if confirmed == id => true,
        (None, ClaimOutcome::Released) => true,
        _ => return reply.send(Err(contradiction())),
    };
    if settled_already {
        return reply.send(Ok(()));
    }
    let settled = ClaimSettled { key, outcome, at_ms: now_ms() };
    let ticket = match inner.wal.enqueue(&settled.encode()) {
        Ok(ticket) => ticket,
        Err(error) => return reply.send(Err(error.into())),
    };
    accepted.settling.insert(key, outcome);
    let record = LogRecord::ClaimSettled(settled);
    let effect = Effect {
        seq: ticket.seq(),
        ticket: Some(ticket),
        record,
        keys: EffectKeys::None,
        waiter: Waiter::Settled(reply),
    };
    accepted.push(effect);
}

/// [`Shard::confirm_claim`].
fn confirm_in_memory<D: Disk>(inner: &Rc<Inner<D>>, key: u128, trade: TradeId) -> bool {
    if inner.accepted.borrow().settling.contains_key(&key) {
        return false;
    }
    inner.index.borrow_mut().confirm_pending_claim(key, trade)
}

/// [`Shard::find_order`] reaching the runs `reach` says, with the key's state read from them
/// if it was.
fn find_order<D: Disk>(
    inner: &Rc<Inner<D>>,
    key: u128,
    reach: Reach,
    reply: ShardReply<OrderLookup>,
    read: Option<RunRead>,
) {
    match order_lookup(inner, key, reach, read.as_ref()) {
        Some(found) => reply.send(Ok(found)),
        None => read_reaching_then(inner, key, KeyKind::Order, reach, reply, move |inner, reply, read| {
            find_order(inner, key, reach, reply, Some(read))
        }),
    }
}

/// [`Shard::find_claims_trade`].
async fn claims_trade<D: Disk>(inner: &Rc<Inner<D>>, key: u128, body: u64) -> Result<OrderLookup, TradeError> {
    let recent = asked(|one| find_order(inner, key, Reach::Window, one, None)).await?;
    if matches!(recent, OrderLookup::Trade(_)) {
        return Ok(recent);
    }
    let OrderLookup::Trade(id) = asked(|one| find_order(inner, key, Reach::All, one, None)).await? else {
        return Ok(recent);
    };
    let trade = crate::read::read_trade(inner, id, false).await?;
    Ok(match body_hash(trade.buyer_id, trade.amount, trade.currency, &trade.memo) == body {
        true => OrderLookup::Trade(id),
        false => recent,
    })
}

/// What `ask` answers through the reply it is given.
async fn asked<T: Send + 'static>(ask: impl FnOnce(ShardReply<T>)) -> Result<T, TradeError> {
    let (one, answer) = reply::channel();
    ask(one);
    answer.await.unwrap_or(Err(TradeError::Log(crate::error::LogError::Closed)))
}

/// Where this shard knows `key` from, in the runs `reach` says, or `None` when a run on disk
/// must be read to tell.
fn order_lookup<D: Disk>(inner: &Rc<Inner<D>>, key: u128, reach: Reach, read: Option<&RunRead>) -> Option<OrderLookup> {
    let lookup = inner.key_runs.borrow().lookup_reaching(&inner.index.borrow(), key, KeyKind::Order, reach, read);
    let state = match lookup {
        Lookup::Known(state) => state,
        Lookup::MustRead => return None,
    };
    Some(match (state.order, state.claim) {
        (Some((id, _)), _) => OrderLookup::Trade(id),
        (None, Some(claim)) => match claim.trade {
            Some(trade) => OrderLookup::Claimed(trade),
            None => OrderLookup::ClaimPending { buyer_id: claim.buyer_id },
        },
        (None, None) => OrderLookup::Free,
    })
}
