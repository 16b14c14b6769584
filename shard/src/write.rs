//! The write path of a shard: a write is checked against durable state plus the writes still
//! in flight (the accepted view), encoded and queued in the log at once, and answered by the
//! committer once durable.
//!
//! Every write can be repeated safely. A create whose order number is taken with the same
//! body, a move the trade has made already (its status is the move's target), a refund whose
//! request number was refunded already with the same amount: each is answered with the
//! original's receipt, marked `replayed`, and writes nothing; when the original is still in
//! flight, the answer waits until it is durable. A refusal (bad state, a conflict, a full log
//! queue) is answered at once and leaves no trace.
//!
//! Order numbers and refund request numbers older than the last checkpoint are in runs on disk
//! (`key_runs.rs`): a create or a refund whose key a run's Bloom filter may hold waits for one
//! read of the runs, then is checked.

use std::rc::Rc;

use tradeshard_wal::disk::Disk;

use crate::command::Command;
use crate::entries::RefundEntry;
use crate::error::{InputError, LogError, Refusal, TradeError};
use crate::index::{body_hash, order_key, refund_key, ShardIndex};
use crate::key_runs::{KeyKind, KeyState, Lookup, Reach, RunRead};
use crate::lifecycle::{next_state, Action, Lifecycle, Move};
use crate::record::{Funding, TradeRecord};
use crate::shard::Shard;
use crate::state::{Accepted, Effect, EffectKeys, InFlight, Inner, ShardReply, Waiter, WaitingWrite};
use crate::system_record::{LogRecord, OffsetCommit};
use crate::tcc_write::Scratch;
use crate::trade::now_ms;
use crate::trade::{Receipt, TradeId, TradeStatus, ValidTrade, COUNTER_BITS};
use crate::trade_money::{apply_funding, settlement_begun};

/// A change to an existing trade, as the write path checks it.
enum Change {
    Move(Move),
    /// `durable`: the refund already made under its request number, if one is durable.
    Refund {
        amount: u64,
        refund_no: String,
        durable: Option<RefundEntry>,
    },
}

impl<D: Disk> Shard<D> {
    /// Starts a write; `reply` is answered once it is durable, or with why not.
    pub fn submit(&self, command: Command, reply: ShardReply<Receipt>) {
        submit_to(&self.inner, command, reply, false, None, true)
    }
}

/// [`Shard::submit`] of a create; `in_doubt`: its order number's claim in another shard is
/// not known durable yet, so the new trade is noted in the shard's doubts (`doubts.rs`).
pub(crate) fn submit_create<D: Disk>(
    inner: &Rc<Inner<D>>,
    trade: ValidTrade,
    logical_shard: u32,
    reply: ShardReply<Receipt>,
    in_doubt: bool,
) {
    submit_to(inner, Command::Create { trade, logical_shard }, reply, in_doubt, None, true)
}

/// Checks and queues a write. A create whose order key the memory cannot place (a run on disk
/// may hold it) first has the runs read (`read`), then is checked again; a write to a trade
/// that is not in memory first brings it back from the table on disk (`may_thaw`), and a
/// refund then has its refund key placed the way a create has its order key. Writes arriving
/// meanwhile for the same key, or the same trade, wait behind it, so that they are checked in
/// the order they came.
fn submit_to<D: Disk>(
    inner: &Rc<Inner<D>>,
    command: Command,
    reply: ShardReply<Receipt>,
    in_doubt: bool,
    read: Option<RunRead>,
    may_thaw: bool,
) {
    let mut accepted = inner.accepted.borrow_mut();
    if let Some(failure) = &accepted.failed {
        return reply.send(Err(failure.clone()));
    }
    if accepted.closing {
        // Only a write that waited for its trade or its key can arrive this late.
        return reply.send(Err(TradeError::Log(LogError::Closed)));
    }
    let index = inner.index.borrow();
    // A create's order key, as durable state holds it (the writes in flight are checked first,
    // by `create`).
    let mut durable = KeyState::default();
    if let Command::Create { trade, .. } = &command {
        let key = order_key(trade.merchant_id, &trade.merchant_order_no);
        if let Some(waiting) = accepted.reading.get_mut(&key) {
            return waiting.push(WaitingWrite { command, reply, in_doubt, read });
        }
        let in_flight = accepted.orders.contains_key(&key) || accepted.claims.contains_key(&key);
        let runs = inner.key_runs.borrow();
        match runs.lookup(&index, key, KeyKind::Order, read.as_ref()) {
            _ if in_flight => {}
            Lookup::Known(state) => durable = state,
            Lookup::MustRead => {
                accepted.reading.insert(key, vec![WaitingWrite { command, reply, in_doubt, read: None }]);
                let reading = runs.read(key, KeyKind::Order, Reach::Window);
                // The task may start at once: not under these borrows.
                drop((accepted, index, runs));
                glommio::spawn_local(read_then_submit(inner.clone(), key, reading)).detach();
                return;
            }
        }
    }
    if index.trade_table().has_cold() || !accepted.thawing.is_empty() {
        if let Some(id) = target(&command, &durable) {
            if let Some(waiting) = accepted.thawing.get_mut(&id) {
                return waiting.push(WaitingWrite { command, reply, in_doubt, read });
            }
            if may_thaw && !accepted.trades.contains_key(&id) && index.trade_table().is_cold(id) {
                accepted.thawing.insert(id, vec![WaitingWrite { command, reply, in_doubt, read }]);
                drop((accepted, index));
                glommio::spawn_local(thaw_then_submit(inner.clone(), id)).detach();
                return;
            }
        }
    }
    // A refund's key, as durable state holds it: the trade is in memory by now (or does not
    // exist, which `change` answers), and its parties make the key.
    if let Command::Refund { id, refund_no, .. } = &command {
        let parties = match (accepted.trades.get(id), index.get(*id)) {
            (Some(in_flight), _) => Some((in_flight.merchant_id, in_flight.user_id)),
            (None, Some(entry)) => Some((entry.merchant_id, entry.user_id)),
            (None, None) => None,
        };
        if let Some((merchant_id, user_id)) = parties {
            let key = refund_key(merchant_id, user_id, refund_no);
            if let Some(waiting) = accepted.reading.get_mut(&key) {
                return waiting.push(WaitingWrite { command, reply, in_doubt, read });
            }
            let runs = inner.key_runs.borrow();
            match runs.lookup(&index, key, KeyKind::Refund, read.as_ref()) {
                _ if accepted.refunds.contains_key(&key) => {}
                Lookup::Known(state) => durable.refund = state.refund,
                Lookup::MustRead => {
                    accepted.reading.insert(key, vec![WaitingWrite { command, reply, in_doubt, read: None }]);
                    let reading = runs.read(key, KeyKind::Refund, Reach::Window);
                    drop((accepted, index, runs));
                    glommio::spawn_local(read_then_submit(inner.clone(), key, reading)).detach();
                    return;
                }
            }
        }
    }
    match command {
        Command::Create { trade, logical_shard } => {
            create(inner, &mut accepted, &index, durable, trade, logical_shard, reply, in_doubt)
        }
        Command::Move { id, to } => change(inner, &mut accepted, &index, id, Change::Move(to), reply),
        Command::Refund { id, amount, refund_no } => {
            let refund = Change::Refund { amount, refund_no, durable: durable.refund };
            change(inner, &mut accepted, &index, id, refund, reply)
        }
    }
}

/// Waits for the runs' answer on key `key` (an order key or a refund key), then submits the
/// writes that waited for it, in the order they came.
async fn read_then_submit<D: Disk>(
    inner: Rc<Inner<D>>,
    key: u128,
    reading: impl std::future::Future<Output = Result<RunRead, TradeError>>,
) {
    let read = reading.await;
    let waiting = inner.accepted.borrow_mut().reading.remove(&key).unwrap_or_default();
    for WaitingWrite { command, reply, in_doubt, .. } in waiting {
        match &read {
            Ok(read) => submit_to(&inner, command, reply, in_doubt, Some(*read), true),
            Err(error) => reply.send(Err(error.clone())),
        }
    }
}

/// Brings trade `id` back from the table, then submits the writes that waited for it, in the
/// order they came.
async fn thaw_then_submit<D: Disk>(inner: Rc<Inner<D>>, id: TradeId) {
    let thawed = crate::cold::thaw(&inner, id).await;
    let waiting = inner.accepted.borrow_mut().thawing.remove(&id).unwrap_or_default();
    for WaitingWrite { command, reply, in_doubt, read } in waiting {
        match &thawed {
            Ok(_) => submit_to(&inner, command, reply, in_doubt, read, false),
            Err(error) => reply.send(Err(error.clone())),
        }
    }
}

/// The trade a write needs: the one it changes, or the original of a repeated create.
fn target(command: &Command, durable: &KeyState) -> Option<TradeId> {
    match command {
        // A repeat is answered from memory when the body hash is known; a run keeps none, and
        // the answer reads the trade without bringing it back into memory (`answer_repeat`).
        Command::Create { .. } => match durable.order? {
            (id, Some(_)) => Some(id),
            (_, None) => None,
        },
        Command::Move { id, .. } | Command::Refund { id, .. } => Some(*id),
    }
}

/// Queues a create, or answers at once (a refusal, or the original of a retried create
/// that is already durable). `durable`: the order key's durable state.
#[allow(clippy::too_many_arguments)]
fn create<D: Disk>(
    inner: &Rc<Inner<D>>,
    accepted: &mut Accepted,
    index: &ShardIndex,
    durable: KeyState,
    trade: ValidTrade,
    logical_shard: u32,
    reply: ShardReply<Receipt>,
    in_doubt: bool,
) {
    let key = order_key(trade.merchant_id, &trade.merchant_order_no);
    let body = body_hash(trade.buyer_id, trade.amount, trade.currency, &trade.memo);
    let conflict = |existing: Option<TradeId>| -> TradeError {
        let (merchant_id, order_no) = (trade.merchant_id, trade.merchant_order_no.clone());
        Refusal::IdempotencyConflict { existing, merchant_id, order_no }.into()
    };
    if let Some(&(id, original_body, original_seq)) = accepted.orders.get(&key) {
        if original_body != body {
            return reply.send(Err(conflict(Some(id))));
        }
        return accepted.repeat_of(original_seq, reply);
    }
    // This shard is the key's home and holds it for a buyer of another shard (a create
    // routed here is for a buyer of this shard, so its body differs).
    if accepted.claims.contains_key(&key) {
        return reply.send(Err(conflict(None)));
    }
    if let Some(claim) = durable.claim {
        return reply.send(Err(conflict(claim.trade)));
    }
    match durable.order {
        Some((id, Some(original_body))) if original_body != body => return reply.send(Err(conflict(Some(id)))),
        Some((id, Some(_))) => {
            let Some(entry) = index.get(id) else {
                return reply.send(Err(no_trade()));
            };
            return reply.send(Ok(entry.receipt(id, true)));
        }
        Some((id, None)) => {
            let conflict = conflict(Some(id));
            glommio::spawn_local(answer_repeat(inner.clone(), id, body, conflict, reply)).detach();
            return;
        }
        None => {}
    }
    let counter = accepted.next_counter;
    if counter >= 1 << COUNTER_BITS {
        return reply.send(Err(Refusal::CounterExhausted.into()));
    }
    let id = TradeId::new(logical_shard, counter);
    let record = TradeRecord::created(id, &trade, now_ms());
    let ticket = match inner.wal.enqueue(&record.encode()) {
        Ok(ticket) => ticket,
        Err(error) => return reply.send(Err(error.into())),
    };
    let seq = ticket.seq();
    accepted.next_counter += 1;
    let lifecycle = Lifecycle { status: TradeStatus::Created, amount: trade.amount, refunded: 0, from_balance: false };
    let in_flight = InFlight {
        lifecycle,
        last_seq: seq,
        user_id: trade.buyer_id,
        merchant_id: trade.merchant_id,
        currency: trade.currency,
    };
    accepted.trades.insert(id, in_flight);
    accepted.orders.insert(key, (id, body, seq));
    if in_doubt {
        accepted.doubts.doubt(id);
    }
    let record = LogRecord::Trade(record);
    let waiter = Waiter::Trade(reply);
    accepted.push(Effect { seq, ticket: Some(ticket), record, keys: EffectKeys::Order { key, body }, waiter });
}

/// The error of an order key whose trade is not there, which no log this engine wrote can make.
fn no_trade() -> TradeError {
    TradeError::BadRecord { seq: 0, reason: "an order number points at no trade" }
}

/// Answers a create whose order key a run gives to trade `id`: a run keeps no body hash, so
/// the trade's own fields tell a repeat (the original's receipt) from another create under the
/// same order number (`conflict`). Nothing is written either way, so the answer needs no place
/// in the queue of writes.
async fn answer_repeat<D: Disk>(
    inner: Rc<Inner<D>>,
    id: TradeId,
    body: u64,
    conflict: TradeError,
    reply: ShardReply<Receipt>,
) {
    let answer = match crate::read::read_trade(&inner, id, false).await {
        Ok(trade) if body_hash(trade.buyer_id, trade.amount, trade.currency, &trade.memo) == body => {
            Ok(trade.receipt(true))
        }
        Ok(_) => Err(conflict),
        Err(TradeError::NotFound(_)) => Err(no_trade()),
        Err(error) => Err(error),
    };
    reply.send(answer);
}

/// Queues a move or a refund, or answers at once: the original's receipt for a repeat, or
/// the refusal.
fn change<D: Disk>(
    inner: &Inner<D>,
    accepted: &mut Accepted,
    index: &ShardIndex,
    id: TradeId,
    change: Change,
    reply: ShardReply<Receipt>,
) {
    let in_flight = accepted.trades.get(&id).copied();
    let current = match (in_flight, index.get(id)) {
        (Some(in_flight), _) => in_flight,
        (None, Some(entry)) => InFlight {
            lifecycle: entry.lifecycle,
            last_seq: entry.created_at.seq(),
            user_id: entry.user_id,
            merchant_id: entry.merchant_id,
            currency: entry.currency,
        },
        (None, None) => return reply.send(Err(TradeError::NotFound(id))),
    };
    let (action, keys, refund_no) = match change {
        // Paid by card and paid from the balance are two different payments: a pay of the
        // other kind on a paid trade is refused, never answered as the first one's repeat.
        Change::Move(to @ (Move::Pay | Move::PayFromBalance))
            if current.lifecycle.status == TradeStatus::Paid
                && current.lifecycle.from_balance != (to == Move::PayFromBalance) =>
        {
            let action = to.action().name();
            return reply.send(Err(Refusal::IllegalTransition { id, from: TradeStatus::Paid, action }.into()));
        }
        Change::Move(to) if current.lifecycle.status == to.target() || paid_before(&current.lifecycle, to) => {
            // The trade made this move already: its last write made it (only this move
            // leads to its status), or, for a pay from the balance, a refund or a settle since.
            return match (in_flight, index.get(id)) {
                (Some(in_flight), _) => accepted.repeat_of(in_flight.last_seq, reply),
                (None, Some(entry)) => reply.send(Ok(entry.receipt(id, true))),
                (None, None) => unreachable!("found above"),
            };
        }
        Change::Move(to) => (to.action(), EffectKeys::None, None),
        Change::Refund { amount, refund_no, durable } => {
            let key = refund_key(current.merchant_id, current.user_id, &refund_no);
            let conflict = |existing, original| -> TradeError {
                Refusal::RefundRequestConflict { refund_no: refund_no.clone(), existing, amount: original }.into()
            };
            if let Some(&(existing, original, seq)) = accepted.refunds.get(&key) {
                return match existing == id && original == amount {
                    true => accepted.repeat_of(seq, reply),
                    false => reply.send(Err(conflict(existing, original))),
                };
            }
            if let Some(refund) = durable {
                return match refund.trade_id == id && refund.amount == amount {
                    true => reply.send(Ok(index.refund_receipt(&refund))),
                    false => reply.send(Err(conflict(refund.trade_id, refund.amount))),
                };
            }
            (Action::Refund(amount), EffectKeys::Refund { key }, Some(refund_no))
        }
    };
    let next = match next_state(id, current.lifecycle, action) {
        Ok(next) => next,
        Err(error) => return reply.send(Err(error)),
    };
    let funding = match action {
        Action::PayFromBalance => Funding::Balance,
        Action::Refund(_) if next.from_balance => Funding::Balance,
        Action::Settle if next.from_balance => {
            let merchant_shard = match inner.routing.get() {
                Some(routing) => routing.physical_of_user(current.merchant_id),
                None => inner.shard_id,
            };
            let merchant_shard = u16::try_from(merchant_shard).expect("physical shards are fewer than logical ones");
            Funding::Settles { merchant_shard, credit: next.settles() }
        }
        _ => Funding::External,
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
        refund_no,
        funding,
    };
    // A settlement that begins its credit's activity in the merchant's shard: the activity's
    // id must be free of local transactions in flight too (only a raw `Shard::transact` can
    // name it), or the Settled record would not apply when durable.
    let settlement = settlement_begun(funding, id, inner.shard_id);
    if let Some(activity) = settlement.filter(|activity| accepted.tcc.has_activity(*activity)) {
        let reason = "a local transaction in flight names the settlement's activity";
        return reply.send(Err(Refusal::StepConflict { activity, reason }.into()));
    }
    // The money it moves, checked against the balances durable and in flight.
    let mut balances = Vec::new();
    if funding != Funding::External {
        // One balance or one activity changed at most: the maps are made when first written.
        let mut scratch = Scratch::over(index.accounts(), index.tcc(), &accepted.accounts, 0);
        if let Err(refusal) = apply_funding(&mut scratch, &record, inner.shard_id) {
            return reply.send(Err(refusal.into()));
        }
        balances = scratch.into_balances();
    }
    let ticket = match inner.wal.enqueue(&record.encode()) {
        Ok(ticket) => ticket,
        Err(error) => return reply.send(Err(error.into())),
    };
    let seq = ticket.seq();
    for (key, balance) in balances {
        accepted.accounts.note_balance(key, balance, seq);
    }
    if let Some(activity) = settlement {
        // Local transactions naming the activity wait until this record is durable.
        accepted.tcc.note_settlement(activity, seq);
    }
    accepted.trades.insert(id, InFlight { lifecycle: next, last_seq: seq, ..current });
    if let (EffectKeys::Refund { key }, Action::Refund(amount)) = (keys, action) {
        accepted.refunds.insert(key, (id, amount, seq));
    }
    let record = LogRecord::Trade(record);
    accepted.push(Effect { seq, ticket: Some(ticket), record, keys, waiter: Waiter::Trade(reply) });
}

impl<D: Disk> Shard<D> {
    /// Records `group`'s position in this shard's log: `offset` is the next event the group
    /// will read. Durable (like any write) when answered; at most the durable end.
    pub fn commit_offset(&self, group: &str, offset: u64, reply: ShardReply<u64>) {
        let checked = (|| -> Result<(), TradeError> {
            if let Some(failure) = self.inner.accepted.borrow().failed.clone() {
                return Err(failure);
            }
            if !OffsetCommit::valid_group(group) {
                return Err(InputError::BadGroup { len: group.len() }.into());
            }
            let (first, end) = self.offset_range();
            if offset > end {
                return Err(Refusal::OffsetOutOfRange { offset, first, end }.into());
            }
            Ok(())
        })();
        if let Err(error) = checked {
            return reply.send(Err(error));
        }
        let commit = OffsetCommit { group: group.to_string(), offset, at_ms: now_ms() };
        let ticket = match self.inner.wal.enqueue(&commit.encode()) {
            Ok(ticket) => ticket,
            Err(error) => return reply.send(Err(error.into())),
        };
        let seq = ticket.seq();
        let effect = Effect {
            seq,
            ticket: Some(ticket),
            record: LogRecord::Offset(commit),
            keys: EffectKeys::None,
            waiter: Waiter::Offset(reply),
        };
        self.inner.accepted.borrow_mut().push(effect);
    }
}

/// Whether `to` is a pay from the balance of a trade paid so, refunded or settled since (only
/// a paid trade reaches those): a retry of it is a repeat, answered with the trade as it
/// stands, not refused as a move from its new status. A pay by card there stays refused: it
/// reports a payment made outside the engine, and one after a settle may be a second charge.
fn paid_before(lifecycle: &Lifecycle, to: Move) -> bool {
    to == Move::PayFromBalance
        && lifecycle.from_balance
        && matches!(lifecycle.status, TradeStatus::Refunded | TradeStatus::Settled)
}
