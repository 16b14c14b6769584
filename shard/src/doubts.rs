//! A buyer shard's trades whose order number's claim is in doubt: created here while their
//! claim, in the number's home shard, was not known to be durable yet.
//!
//! A create across shards writes the claim in the home shard and the trade here at the same
//! time (`claims.rs`, the engine's `orders.rs`), so a stop can leave a durable trade whose
//! claim never reached the home shard's log: its order number would look free there. This
//! shard therefore remembers, by trade counter, every trade it created with its claim in
//! doubt, until the engine says the claim is durable. Counters grow in log order, so "every
//! trade below counter C is known" is one number, kept durable two ways:
//!
//! - a `ClaimsKnown` record in the log, written (without anyone waiting for it) when claims
//!   became known and the lowest doubt moved, at most one in flight at a time;
//! - the checkpoint's header, which records the number as of its snapshot (`Scalars`).
//!
//! An open takes the higher of the two. The trades at or above it that the checkpoint holds,
//! and the ones the replay applied whose order number's home is another shard, are in doubt
//! again; the engine claims each in its home shard (a claim there already is answered as
//! such) before the engine takes requests, then clears them here.

use std::collections::BTreeSet;

use tradeshard_wal::disk::Disk;

use crate::error::{LogError, TradeError};
use crate::reply::ReplyFuture;
use crate::routing::UserRouting;
use crate::shard::Shard;
use crate::state::{Accepted, Effect, EffectKeys, Inner, ShardReply, Waiter};
use crate::system_record::{ClaimsKnown, LogRecord};
use crate::trade::{now_ms, Receipt, TradeId, ValidTrade};
use crate::write::submit_create;

/// The trades in doubt and the durable record of which are known.
#[derive(Default)]
pub(crate) struct ClaimDoubts {
    /// The counters of the trades in doubt.
    open: BTreeSet<u64>,
    /// Every trade below this counter is known: the last `ClaimsKnown` written (or being
    /// written), or what the open found.
    marked_below: u64,
    /// A `ClaimsKnown` record is in flight.
    marking: bool,
    /// The highest counter whose claim became known since the open.
    known_max: Option<u64>,
    /// Found by the open, for the engine to claim (`take_recovered`): the trades in memory,
    /// and the counters of those only the table on disk holds.
    recovered: Vec<TradeId>,
    recovered_cold: Vec<u64>,
    /// The highest counter of the checkpoint the open loaded (0: none).
    pub(crate) checkpoint_max: u64,
    /// The open's trades in doubt were noted (once: a second count would miss the trades in
    /// doubt created since).
    recovered_once: bool,
}

impl ClaimDoubts {
    /// A trade created with its claim in doubt.
    pub(crate) fn doubt(&mut self, id: TradeId) {
        self.open.insert(id.counter());
    }

    /// Every trade below the returned counter is known, given that the next trade created
    /// gets `next_counter`.
    pub(crate) fn known_below(&self, next_counter: u64) -> u64 {
        self.open.first().copied().unwrap_or(next_counter)
    }

    /// The trade's claim is durable.
    fn know(&mut self, id: TradeId) {
        if self.open.remove(&id.counter()) {
            self.known_max = self.known_max.max(Some(id.counter()));
        }
    }

    /// A `ClaimsKnown` record is due when a claim became known at or above the last one and
    /// the lowest doubt moved past it; one at a time.
    fn mark_due(&mut self, next_counter: u64) -> Option<u64> {
        let below = self.known_below(next_counter);
        let due = !self.marking && self.known_max.is_some_and(|known| known >= self.marked_below);
        // Counters start at 1: a mark below 1 would say nothing.
        (due && below > self.marked_below.max(1)).then(|| {
            self.marking = true;
            self.marked_below = below;
            below
        })
    }

    /// Trades in doubt.
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }
}

/// How the claim of a create across shards stands when the create reaches the buyer's shard.
pub enum ClaimState {
    /// Durable in the home shard already.
    Durable,
    /// Made in the home shard, which answers here once it is durable (with the trade it was
    /// confirmed with, if any, or why it failed).
    Pending(ReplyFuture<Result<Option<TradeId>, TradeError>>),
}

impl<D: Disk> Shard<D> {
    /// The create of a trade whose order number's home is another shard, where it was
    /// claimed. Written at once, whatever `claim` says; answered once the trade and the claim
    /// are both durable, after `confirm` ran with the receipt on this executor (the engine
    /// confirms the claim with the trade's id). A trade made while its claim is pending is in
    /// doubt until then (see the module's text); a claim that fails leaves it in doubt until
    /// the next open, and the caller gets the claim's error.
    pub fn create_claimed(
        &self,
        trade: ValidTrade,
        logical_shard: u32,
        claim: ClaimState,
        reply: ShardReply<Receipt>,
        confirm: Box<dyn FnOnce(&Receipt)>,
    ) {
        let (created, answer) = crate::reply::channel();
        let pending = match claim {
            ClaimState::Durable => None,
            ClaimState::Pending(durable) => Some(durable),
        };
        submit_create(&self.inner, trade, logical_shard, created, pending.is_some());
        let inner = self.inner.clone();
        glommio::spawn_local(async move {
            let closed = || TradeError::Log(LogError::Closed);
            let receipt = match answer.await {
                Some(Ok(receipt)) => receipt,
                Some(Err(error)) => return reply.send(Err(error)),
                None => return reply.send(Err(closed())),
            };
            if let Some(durable) = pending {
                match durable.await {
                    Some(Ok(_)) => know(&inner, &[receipt.id]),
                    Some(Err(error)) => return reply.send(Err(error)),
                    None => return reply.send(Err(closed())),
                }
            }
            confirm(&receipt);
            reply.send(Ok(receipt))
        })
        .detach();
    }

    /// The trades the open found with their claim in doubt (once; then none), for the engine
    /// to claim in their home shards before it takes requests.
    pub fn take_trades_in_doubt(&self, reply: ShardReply<Vec<TradeId>>) {
        let inner = self.inner.clone();
        glommio::spawn_local(async move { reply.send(take_recovered(&inner).await) }).detach();
    }

    /// The claims of these trades are durable in their home shards.
    pub fn claims_known(&self, ids: &[TradeId]) {
        know(&self.inner, ids)
    }

    /// How many trades are in doubt now.
    pub fn trades_in_doubt(&self) -> usize {
        self.inner.accepted.borrow().doubts.len()
    }
}

/// Notes what an open found in doubt: the trades at or above the known counter among those
/// the checkpoint loaded holds (their order numbers are not in memory to tell where their
/// home is), and the trades replayed since whose order number's home is another shard by
/// `routing`. Run once the routing is known, before the shard takes a request.
pub(crate) fn recover<D: Disk>(inner: &Inner<D>, routing: UserRouting) {
    let checkpoint_max = {
        let mut accepted = inner.accepted.borrow_mut();
        if std::mem::replace(&mut accepted.doubts.recovered_once, true) {
            return;
        }
        accepted.doubts.checkpoint_max
    };
    let index = inner.index.borrow();
    let known_below = index.claims_known_below();
    let (mut recovered, mut recovered_cold) = (Vec::new(), Vec::new());
    for counter in known_below.max(1)..=checkpoint_max {
        match index.trade_table().at_counter(counter) {
            Ok(Some((id, _))) => recovered.push(id),
            Ok(None) => {}
            Err(()) => recovered_cold.push(counter),
        }
    }
    let replayed_from = known_below.max(checkpoint_max + 1);
    for (key, id, _) in index.recent_orders() {
        if id.counter() >= replayed_from && routing.physical_of_order_key(key) != inner.shard_id {
            recovered.push(id);
        }
    }
    let mut accepted = inner.accepted.borrow_mut();
    let doubts = &mut accepted.doubts;
    doubts.marked_below = known_below;
    doubts.open = recovered.iter().map(|id| id.counter()).chain(recovered_cold.iter().copied()).collect();
    (doubts.recovered, doubts.recovered_cold) = (recovered, recovered_cold);
}

/// The trades the open found in doubt, for the engine to claim (once); those only the table
/// holds are read from it.
pub(crate) async fn take_recovered<D: Disk>(inner: &Inner<D>) -> Result<Vec<TradeId>, TradeError> {
    let (mut ids, cold) = {
        let mut accepted = inner.accepted.borrow_mut();
        let doubts = &mut accepted.doubts;
        (std::mem::take(&mut doubts.recovered), std::mem::take(&mut doubts.recovered_cold))
    };
    for counter in cold {
        match crate::cold::id_at_counter(inner, counter).await? {
            Some(id) => ids.push(id),
            // No trade there: nothing to claim, and nothing to hold the known counter down.
            None => drop(inner.accepted.borrow_mut().doubts.open.remove(&counter)),
        }
    }
    Ok(ids)
}

/// The claims of `ids` are durable in their home shards: they leave the doubts, and a
/// `ClaimsKnown` record is queued if one is due.
pub(crate) fn know<D: Disk>(inner: &Inner<D>, ids: &[TradeId]) {
    let mut accepted = inner.accepted.borrow_mut();
    for id in ids {
        accepted.doubts.know(*id);
    }
    let next_counter = accepted.next_counter;
    if let Some(below) = accepted.doubts.mark_due(next_counter) {
        write_mark(inner, &mut accepted, below);
    }
}

/// A `ClaimsKnown` record is durable: the next one may be written.
pub(crate) fn marked(accepted: &mut Accepted) -> Option<u64> {
    accepted.doubts.marking = false;
    let next_counter = accepted.next_counter;
    accepted.doubts.mark_due(next_counter)
}

/// Queues a `ClaimsKnown` record; nobody waits for it (a lost one only makes the next open
/// claim more trades again).
pub(crate) fn write_mark<D: Disk>(inner: &Inner<D>, accepted: &mut Accepted, below: u64) {
    if accepted.failed.is_some() || accepted.closing {
        // No more writes: the close's checkpoint records what is known.
        accepted.doubts.marking = false;
        return;
    }
    let mark = ClaimsKnown { below_counter: below, at_ms: now_ms() };
    match inner.wal.enqueue(&mark.encode()) {
        Ok(ticket) => accepted.push(Effect {
            seq: ticket.seq(),
            ticket: Some(ticket),
            record: LogRecord::ClaimsKnown(mark),
            keys: EffectKeys::None,
            waiter: Waiter::Mark,
        }),
        // The log refuses only when it failed or is full; the doubts stay as they are.
        Err(_) => accepted.doubts.marking = false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_follows_the_lowest_doubt_and_stays_quiet_without_new_knowledge() {
        let mut doubts = ClaimDoubts::default();
        let ids: Vec<TradeId> = (1..=3).map(|counter| TradeId::new(0, counter)).collect();
        ids.iter().for_each(|id| doubts.doubt(*id));
        // The second is known first: the lowest doubt is still the first trade.
        doubts.know(ids[1]);
        assert_eq!(doubts.mark_due(4), None);
        assert_eq!(doubts.known_below(4), 1);
        doubts.know(ids[0]);
        assert_eq!(doubts.mark_due(4), Some(3));
        // One mark at a time: the third becomes known while the mark is in flight.
        doubts.know(ids[2]);
        assert_eq!(doubts.mark_due(4), None);
        doubts.marking = false;
        assert_eq!(doubts.mark_due(4), Some(4));
        doubts.marking = false;
        // Nothing new became known: no further mark, even as counters move on.
        assert_eq!(doubts.mark_due(9), None);
        assert_eq!(doubts.len(), 0);
    }
}
