//! The write path of a shard: a write is checked against durable state plus the writes still
//! in flight (the accepted view), encoded and queued in the log at once, and answered by the
//! committer once durable.
//!
//! A create whose order number is already in flight waits for the first create to become
//! durable and answers with it; one already durable is answered at once. A refusal (bad
//! state, a conflict, a full log queue) is answered at once and leaves no trace.

use tradeshard_wal::disk::Disk;

use crate::error::{InputError, Refusal, TradeError};
use crate::index::{body_hash, next_state, order_key, Action, Lifecycle, ShardIndex};
use crate::record::{LogRecord, OffsetCommit, TradeRecord};
use crate::shard::{now_ms, Shard};
use crate::state::{Accepted, Effect, InFlight, Repeat, ShardReply, Waiter};
use crate::trade::{Receipt, TradeId, TradeStatus, ValidTrade, COUNTER_BITS};

/// A write to one shard.
#[derive(Debug, Clone)]
pub enum Command {
    /// Create a trade for a buyer of `logical_shard` (which this shard owns).
    Create { trade: ValidTrade, logical_shard: u32 },
    /// Change an existing trade.
    Change { id: TradeId, action: Action },
}

impl<D: Disk> Shard<D> {
    /// Starts a write; `reply` is answered once it is durable, or with why not.
    pub fn submit(&self, command: Command, reply: ShardReply<Receipt>) {
        let mut accepted = self.inner.accepted.borrow_mut();
        if let Some(failure) = &accepted.failed {
            return reply.send(Err(failure.clone()));
        }
        let index = self.inner.index.borrow();
        match command {
            Command::Create { trade, logical_shard } => self.create(&mut accepted, &index, trade, logical_shard, reply),
            Command::Change { id, action } => self.change(&mut accepted, &index, id, action, reply),
        }
    }

    /// Queues a create, or answers at once (a refusal, or the original of a retried create
    /// that is already durable).
    fn create(
        &self,
        accepted: &mut Accepted,
        index: &ShardIndex,
        trade: ValidTrade,
        logical_shard: u32,
        reply: ShardReply<Receipt>,
    ) {
        let key = order_key(trade.merchant_id, &trade.merchant_order_no);
        let body = body_hash(trade.buyer_id, trade.amount, trade.currency, &trade.memo);
        let conflict = |existing| -> TradeError {
            Refusal::IdempotencyConflict {
                existing,
                merchant_id: trade.merchant_id,
                order_no: trade.merchant_order_no.clone(),
            }
            .into()
        };
        if let Some(&(id, original_body, original_seq)) = accepted.orders.get(&key) {
            if original_body != body {
                return reply.send(Err(conflict(id)));
            }
            return accepted.repeats.push_back(Repeat { original_seq, id, reply });
        }
        if let Some((id, original_body)) = index.by_order(key) {
            if original_body != body {
                return reply.send(Err(conflict(id)));
            }
            let entry = index.get(id).expect("order index points at a trade");
            return reply.send(Ok(entry.receipt(id, true)));
        }
        let counter = accepted.next_counter;
        if counter >= 1 << COUNTER_BITS {
            return reply.send(Err(Refusal::CounterExhausted.into()));
        }
        let id = TradeId::new(logical_shard, counter);
        let record = TradeRecord::created(id, &trade, now_ms());
        let ticket = match self.inner.wal.enqueue(&record.encode()) {
            Ok(ticket) => ticket,
            Err(error) => return reply.send(Err(error.into())),
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
        let waiter = Waiter::Trade(reply);
        accepted.push(Effect { seq, ticket: Some(ticket), record, keys: Some((key, body)), waiter });
    }

    /// Queues a change, or answers at once with the refusal.
    fn change(
        &self,
        accepted: &mut Accepted,
        index: &ShardIndex,
        id: TradeId,
        action: Action,
        reply: ShardReply<Receipt>,
    ) {
        let current = match (accepted.trades.get(&id), index.get(id)) {
            (Some(in_flight), _) => *in_flight,
            (None, Some(entry)) => InFlight {
                lifecycle: entry.lifecycle,
                last_seq: entry.created_at.seq,
                user_id: entry.user_id,
                merchant_id: entry.merchant_id,
                currency: entry.currency,
            },
            (None, None) => return reply.send(Err(TradeError::NotFound(id))),
        };
        let next = match next_state(id, current.lifecycle, action) {
            Ok(next) => next,
            Err(error) => return reply.send(Err(error)),
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
            Err(error) => return reply.send(Err(error.into())),
        };
        let seq = ticket.seq();
        accepted.trades.insert(id, InFlight { lifecycle: next, last_seq: seq, ..current });
        let record = LogRecord::Trade(record);
        accepted.push(Effect { seq, ticket: Some(ticket), record, keys: None, waiter: Waiter::Trade(reply) });
    }

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
            keys: None,
            waiter: Waiter::Offset(reply),
        };
        self.inner.accepted.borrow_mut().push(effect);
    }
}
