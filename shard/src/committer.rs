//! The shard's committer: the one task that turns durable log records into durable state.
//!
//! It awaits the oldest write in flight; once the log reports it durable, every write below
//! the log's durable end is applied to the indexes in log order (a create also fills the
//! cache), its in-flight state is retired, and its caller is answered. If the log fails, every
//! write in flight and every later one fails with it.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use tradeshard_wal::disk::Disk;
use tradeshard_wal::{Appended, Ticket};

use crate::error::TradeError;
use crate::index::ShardIndex;
use crate::message_write::ParkedMessage;
use crate::record::{Funding, TradeRecord};
use crate::state::{Accepted, Effect, EffectKeys, Inner, Waiter};
use crate::system_record::LogRecord;
use crate::tcc_write::Parked;
use crate::trade::{Receipt, TradeId};
use crate::trade_cache::CachedTrade;

/// Waits for the oldest write in flight (or for close), returning its ticket.
fn next_ticket<D: Disk>(inner: &Inner<D>) -> impl Future<Output = Option<Ticket>> + '_ {
    std::future::poll_fn(move |cx| {
        let mut accepted = inner.accepted.borrow_mut();
        if let Some(front) = accepted.effects.front_mut() {
            return Poll::Ready(Some(front.ticket.take().expect("the front ticket is taken once")));
        }
        if accepted.closing || accepted.failed.is_some() {
            return Poll::Ready(None);
        }
        accepted.committer = Some(cx.waker().clone());
        Poll::Pending
    })
}

/// Applies durable writes to the indexes, in log order, and answers their callers.
pub(crate) async fn run<D: Disk>(inner: Rc<Inner<D>>) {
    while let Some(ticket) = next_ticket(&inner).await {
        let front = ticket.await;
        match front {
            Ok(appended) => {
                // Transactions that waited for a step now durable are checked again, outside
                // the borrows of the application.
                let began = std::time::Instant::now();
                let (parked, messages) = apply_durable(&inner, appended);
                for (steps, reply) in parked {
                    crate::tcc_write::transact_on(&inner, steps, reply);
                }
                for (command, reply, in_order) in messages {
                    crate::message_write::message_on(&inner, command, reply, in_order);
                }
                let mut turns = inner.apply_turns.get();
                turns.record(began.elapsed().as_micros() as u64);
                inner.apply_turns.set(turns);
            }
            Err(error) => {
                fail_all(&inner, error.into());
                return;
            }
        }
    }
}

/// How many effects ahead of the one it applies the committer looks up the entries of local
/// transactions: enough for their misses to overlap, few enough for what they bring to stay in
/// a core's cache until they are applied (a group commit may hold thousands).
const TOUCH_AHEAD: usize = 32;

/// Applies every write the log now holds durably (the front one is `front`). Answers only
/// wake their askers, so they are sent under the borrows. Returns the local transactions and
/// the message writes that waited for one of these writes.
fn apply_durable<D: Disk>(inner: &Inner<D>, front: Appended) -> (Vec<Parked>, Vec<ParkedMessage>) {
    let mut parked = Vec::new();
    let mut messages = Vec::new();
    let durable_end = inner.wal.durable_end();
    let mut accepted = inner.accepted.borrow_mut();
    let mut index = inner.index.borrow_mut();
    let mut front = Some(front);
    // The entries a transaction's changes install are looked up `TOUCH_AHEAD` effects before
    // it is applied, so that their misses overlap and are still in the cache when it is.
    let touch = |effect: Option<&Effect>, index: &ShardIndex| match effect {
        Some(Effect { seq, waiter: Waiter::Tcc(_, _, changes), .. }) if *seq < durable_end => changes.touch(index),
        _ => {}
    };
    accepted.effects.iter().take(TOUCH_AHEAD).for_each(|effect| touch(Some(effect), &index));
    while accepted.effects.front().is_some_and(|effect| effect.seq < durable_end) {
        touch(accepted.effects.get(TOUCH_AHEAD), &index);
        let mut effect = accepted.effects.pop_front().expect("checked");
        let appended = match front.take() {
            Some(appended) => appended,
            None => resolved(effect.ticket.take().expect("only the front ticket was taken")),
        };
        assert_eq!(appended.seq, effect.seq, "effects are applied in log order");
        index.note_applied(appended.seq);
        match (effect.record, effect.waiter) {
            (LogRecord::Trade(record), Waiter::Trade(reply)) => {
                let id = apply_trade(inner, &mut accepted, &mut index, record, appended, effect.keys);
                let receipt = index.get(id).expect("just applied").receipt(id, false);
                reply.send(Ok(receipt));
                for repeat in accepted.repeats.remove(&appended.seq).unwrap_or_default() {
                    repeat.send(Ok(Receipt { replayed: true, ..receipt }));
                }
            }
            (LogRecord::Offset(commit), Waiter::Offset(reply)) => {
                index.apply_offset(&commit);
                reply.send(Ok(commit.offset));
            }
            (LogRecord::Claim(claim), Waiter::Claim(reply)) => {
                index.apply_claim(&claim).expect("a claim checked against the accepted view applies");
                accepted.claims.remove(&claim.key);
                reply.send(Ok(None));
                for repeat in accepted.claim_repeats.remove(&appended.seq).unwrap_or_default() {
                    repeat.send(Ok(None));
                }
            }
            (LogRecord::ClaimSettled(settled), Waiter::Settled(reply)) => {
                index.apply_claim_settled(&settled).expect("a settlement of a pending claim applies");
                accepted.settling.remove(&settled.key);
                reply.send(Ok(()));
            }
            (LogRecord::Journal(record), Waiter::Account(reply)) => {
                let entry =
                    index.accounts_mut().apply(&record).expect("a request checked against the accepted view applies");
                let receipt = entry.receipt(record.user_id, false);
                accepted.accounts.answer_repeats(appended.seq, receipt);
                reply.send(Ok(receipt));
            }
            (LogRecord::Tcc(record), Waiter::Tcc(reply, answers, changes)) => {
                #[cfg(debug_assertions)]
                crate::tcc_write::check_changes(&index, &record, &changes);
                drop(record);
                index.install_tcc(changes);
                reply.send(Ok(answers));
            }
            (LogRecord::Message(record), Waiter::Message(reply)) => {
                let receipt = index
                    .apply_message(appended.seq, &record)
                    .expect("a message write checked against the accepted view applies");
                messages.extend(accepted.messages.retire(appended.seq));
                if record.due_ms.is_some() || record.op == crate::message::MessageOp::Nack {
                    // Something new is scheduled: the scheduler may have to wake sooner.
                    if let Some(scheduler) = accepted.scheduler.take() {
                        scheduler.wake();
                    }
                }
                reply.send(Ok(receipt));
            }
            (LogRecord::ClaimsKnown(_), Waiter::Mark) => {
                if let Some(below) = crate::doubts::marked(&mut accepted) {
                    crate::doubts::write_mark(inner, &mut accepted, below);
                }
            }
            _ => unreachable!("a record and its waiter are of one family"),
        }
        // Local transactions that waited for this record: one that named an activity it
        // touched (a local transaction's or a settlement's), or one that found the log's
        // queue full and waited for the newest write in flight then, of whatever kind.
        if let Some(waiting) = accepted.tcc.parked_behind(appended.seq) {
            parked.extend(waiting);
        }
        // From here on, what the record left in flight reads from the books.
        accepted.note_applied(appended.seq);
    }
    accepted.sweep_in_flight();
    (parked, messages)
}

/// Applies a durable trade record to the index, retires its in-flight state, and caches a
/// created trade or brings its cached copy up to date. Returns the trade's id.
fn apply_trade<D: Disk>(
    inner: &Inner<D>,
    accepted: &mut Accepted,
    index: &mut ShardIndex,
    mut record: TradeRecord,
    appended: Appended,
    keys: EffectKeys,
) -> TradeId {
    let order = match keys {
        EffectKeys::Order { key, body } => Some((key, body)),
        _ => None,
    };
    if record.funding != Funding::External {
        index.apply_money(&record, inner.shard_id).expect("a payment checked against the accepted view applies");
    }
    index.apply_keyed(&record, appended, order).expect("a write checked against the accepted view applies");
    let id = record.trade_id;
    if accepted.trades.get(&id).is_some_and(|in_flight| in_flight.last_seq == appended.seq) {
        accepted.trades.remove(&id);
    }
    match keys {
        EffectKeys::Order { key, .. } => drop(accepted.orders.remove(&key)),
        EffectKeys::Refund { key } => drop(accepted.refunds.remove(&key)),
        EffectKeys::None => {}
    }
    let entry = index.get(id).expect("just applied");
    let cache = inner.trade_cache.cache();
    match record.created.take() {
        Some(created) => {
            let trade = CachedTrade::new(entry, record.at_ms, &created.merchant_order_no, &created.memo);
            let bytes = trade.cache_bytes();
            cache.insert(id, trade, bytes);
        }
        // Readers on other threads see the change from now on, before its caller is answered.
        None => drop(cache.update(&id, |trade| trade.set_state(entry))),
    }
    id
}

/// The outcome of a ticket whose batch is known to be complete.
fn resolved(mut ticket: Ticket) -> Appended {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut ticket).poll(&mut cx) {
        Poll::Ready(Ok(appended)) => appended,
        other => panic!("a ticket below the durable end is resolved: {:?}", other.map(|r| r.map(|a| a.seq))),
    }
}

/// After the log failed: every write in flight fails, and so does every later one.
fn fail_all<D: Disk>(inner: &Inner<D>, error: TradeError) {
    let mut accepted = inner.accepted.borrow_mut();
    accepted.failed = Some(error.clone());
    accepted.trades.clear();
    accepted.orders.clear();
    accepted.refunds.clear();
    accepted.claims.clear();
    accepted.settling.clear();
    accepted.accounts.fail(&error);
    accepted.tcc.fail(&error);
    accepted.messages.fail(&error);
    for effect in std::mem::take(&mut accepted.effects) {
        effect.waiter.fail(error.clone());
    }
    for repeat in std::mem::take(&mut accepted.repeats).into_values().flatten() {
        repeat.send(Err(error.clone()));
    }
    for repeat in std::mem::take(&mut accepted.claim_repeats).into_values().flatten() {
        repeat.send(Err(error.clone()));
    }
}
