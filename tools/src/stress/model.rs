//! What the engine must hold after a kill, built from the journals of every cycle since the
//! data directory was made, and the check of a reopened engine against it.
//!
//! An acknowledged create or change must be there, exactly once, in its acknowledged state,
//! or in the state of the one change sent after it and not acknowledged (in flight at the
//! kill). An unacknowledged create is there once or not at all. Whatever a recovery shows of
//! an in-flight write is final: the model takes it as the new acknowledged state, so a later
//! recovery that loses it, or brings back a create that was absent, is a violation too.
//!
//! Then the parent does what a client that lost its answers does: it sends every request in
//! flight at the kill again, and checks that each has its effect exactly once. A retry of a
//! write that landed answers the original (`replayed`) and changes nothing; one that did not
//! land lands now; a refund is sent again under its own request number, and the trade's
//! refunded total must be the sum of its refunds, each counted once. Every order number is
//! then looked up by merchant and order number and must name its one trade.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{anyhow, bail};
use tradeshard_engine::{ConsumerConfig, EngineHandle, Error, NewTrade, Refusal, Trade, TradeId, TradeStatus};

use super::common::{new_trade, refund_no, retrying};
use super::journal::{Change, Entry};

/// A trade's status and refunded total.
use super::audit::State;

/// What the journals say of one create (a buyer's order).
struct Expected {
    amount: u64,
    /// The trade id, once a create was acknowledged or a recovery showed the trade.
    id: Option<TradeId>,
    /// A recovery found this unacknowledged create absent: it must stay absent.
    absent: bool,
    state: State,
    /// A change sent and not acknowledged: the state it would lead to.
    in_flight: Option<State>,
    /// That change.
    in_flight_change: Option<Change>,
}

/// Counts of what the checks covered.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Checked {
    pub acknowledged_trades: u64,
    pub in_flight_present: u64,
    pub in_flight_absent: u64,
    pub offset_commits: u64,
    /// Requests in flight at the kill, sent again after the check.
    pub retries_sent: u64,
    /// Retries answered as repeats of writes that had landed.
    pub retries_answered_as_repeat: u64,
    /// Acknowledged creates sent again after the check, by their buyer and by another.
    pub old_creates_repeated: u64,
}

/// A request whose answer the kill took, to send again.
enum Lost {
    Create { key: (u64, u64), landed: bool },
    Change { key: (u64, u64), change: Change, before: State, landed: bool },
}

/// The expected state of one data directory.
#[derive(Default)]
pub struct Model {
    orders: HashMap<(u64, u64), Expected>,
    by_id: HashMap<TradeId, (u64, u64)>,
    buyers: BTreeSet<u64>,
    /// Per partition, the highest offset a returned commit acknowledged, or a check found.
    committed: BTreeMap<u32, u64>,
    /// Per partition, the highest offset a commit was sent for: no check may find one above.
    commits_sent: BTreeMap<u32, u64>,
    /// Checks made so far: rotates the sample of users listed.
    listings: u64,
    /// The requests whose answers the last kill took, found by the last check.
    lost: Vec<Lost>,
    /// The spans the child's consumer journaled since the last check (`delivered.rs`).
    consumed: Vec<super::delivered::Consumed>,
}

fn after(state: State, amount: u64, change: Change) -> Option<State> {
    use TradeStatus::*;
    Some(match (state.0, change) {
        (Created, Change::Pay) => (Paid, state.1),
        (Created, Change::Close) => (Closed, state.1),
        (Paid, Change::Settle) => (Settled, state.1),
        (Paid | Refunded, Change::Refund(part)) if part > 0 && state.1 + part <= amount => (Refunded, state.1 + part),
        _ => return None,
    })
}

impl Model {
    /// Adds one thread's journal of the cycle that just ended; returns how many changes it
    /// sent to trades of earlier cycles (ones it did not create).
    pub fn merge(&mut self, entries: Vec<Entry>) -> anyhow::Result<u64> {
        let mut created = std::collections::HashSet::new();
        let mut older_changed = 0;
        for entry in entries {
            match entry {
                Entry::CreateSent { buyer, order, amount } => {
                    self.buyers.insert(buyer);
                    let expected = Expected {
                        amount,
                        id: None,
                        absent: false,
                        state: (TradeStatus::Created, 0),
                        in_flight: None,
                        in_flight_change: None,
                    };
                    if self.orders.insert((buyer, order), expected).is_some() {
                        bail!("the child sent order {order} of buyer {buyer} twice");
                    }
                }
                Entry::CreateAcked { buyer, order, id } => {
                    let expected =
                        self.orders.get_mut(&(buyer, order)).ok_or_else(|| anyhow!("ack of an unsent create"))?;
                    expected.id = Some(TradeId(id));
                    self.by_id.insert(TradeId(id), (buyer, order));
                    created.insert(id);
                }
                Entry::ChangeSent { id, change } => {
                    older_changed += u64::from(!created.contains(&id));
                    let expected = self.expected_mut(TradeId(id))?;
                    let next = after(expected.state, expected.amount, change).ok_or_else(|| {
                        anyhow!("the child sent {change:?} to {} in {:?}", TradeId(id), expected.state)
                    })?;
                    expected.in_flight = Some(next);
                    expected.in_flight_change = Some(change);
                }
                Entry::ChangeAcked { id } => {
                    let expected = self.expected_mut(TradeId(id))?;
                    expected.state = expected.in_flight.take().ok_or_else(|| anyhow!("ack of an unsent change"))?;
                    expected.in_flight_change = None;
                }
                Entry::CommitSent { partition, offset } => {
                    let highest = self.commits_sent.entry(partition).or_default();
                    *highest = (*highest).max(offset);
                }
                Entry::CommitAcked { partition, offset } => {
                    let highest = self.committed.entry(partition).or_default();
                    *highest = (*highest).max(offset);
                }
                Entry::Consumed { partition, from, to, count, digest } => {
                    self.consumed.push(super::delivered::Consumed { partition, from, to, count, digest });
                }
                Entry::MoneySent { .. } | Entry::MoneyAcked { .. } => bail!("money entries belong to the money model"),
                Entry::Failure(text) => bail!("the child stopped: {text}"),
            }
        }
        Ok(older_changed)
    }

    /// Every trade the engine holds, as the last check and the retries after it left it.
    pub fn held_states(&self) -> HashMap<TradeId, State> {
        self.orders.values().filter_map(|expected| Some((expected.id?, expected.state))).collect()
    }

    /// The spans the child's consumer journaled since the last call.
    pub fn take_consumed(&mut self) -> Vec<super::delivered::Consumed> {
        std::mem::take(&mut self.consumed)
    }

    /// The buyer and amount of every create the engine holds, as the child sent it.
    pub fn held_origins(&self) -> HashMap<TradeId, super::audit::Origin> {
        self.orders
            .iter()
            .filter_map(|(&(buyer, _), expected)| Some((expected.id?, (buyer, expected.amount))))
            .collect()
    }

    fn expected_mut(&mut self, id: TradeId) -> anyhow::Result<&mut Expected> {
        let key = self.by_id.get(&id).ok_or_else(|| anyhow!("change to {id}, never acknowledged as created"))?;
        Ok(self.orders.get_mut(key).expect("by_id names known orders"))
    }

    /// Checks a reopened engine against the model, then takes what it showed of in-flight
    /// writes as settled.
    pub fn verify(&mut self, handle: &EngineHandle) -> anyhow::Result<Checked> {
        let mut checked = Checked::default();
        let mut found: HashMap<(u64, u64), Trade> = HashMap::new();
        // By id: every trade whose id is known, in batches.
        let known: Vec<TradeId> = self.orders.values().filter_map(|e| e.id).collect();
        for chunk in known.chunks(1024) {
            for (id, result) in chunk.iter().zip(retrying(|| handle.get_many_blocking(chunk))?) {
                match result {
                    Ok(trade) if trade.id == *id => {
                        found.insert(self.by_id[id], trade);
                    }
                    Ok(trade) => bail!("reading {id} returned {}", trade.id),
                    Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        // By user: the buyers of creates whose outcome is unknown (an id-less create can only be
        // found so), and a rotating sample of the others for the listing path.
        let listed: BTreeSet<u64> = self
            .orders
            .iter()
            .filter(|(_, e)| e.id.is_none() && !e.absent)
            .map(|((buyer, _), _)| *buyer)
            .chain(self.buyers.iter().copied().skip(self.listings as usize % 16).step_by(16))
            .collect();
        self.listings += 1;
        for buyer in listed {
            for trade in retrying(|| handle.list_user_trades_blocking(buyer, 10_000, None))? {
                let order = super::common::order_of(&trade.merchant_order_no)
                    .filter(|(b, order)| *b == buyer && self.orders.contains_key(&(buyer, *order)))
                    .ok_or_else(|| anyhow!("trade {} ({}) was never sent", trade.id, trade.merchant_order_no))?;
                match found.get(&order) {
                    Some(by_id) if by_id.id != trade.id => {
                        bail!("order {} is held twice: {} and {}", trade.merchant_order_no, by_id.id, trade.id)
                    }
                    Some(by_id) if (by_id.status, by_id.refunded_amount) != (trade.status, trade.refunded_amount) => {
                        bail!("trade {} reads {:?} by id, {:?} by user", trade.id, by_id.status, trade.status)
                    }
                    Some(_) => {}
                    None => {
                        found.insert(order, trade);
                    }
                }
            }
        }
        let mut settled: BTreeMap<u64, u128> = BTreeMap::new();
        let mut lost = Vec::new();
        for (key, expected) in self.orders.iter_mut() {
            let Some(trade) = found.get(key) else {
                if let Some(id) = expected.id {
                    bail!("acknowledged order {key:?} (trade {id}) is lost");
                }
                checked.in_flight_absent += u64::from(!expected.absent);
                if !expected.absent {
                    lost.push(Lost::Create { key: *key, landed: false });
                }
                expected.absent = true;
                continue;
            };
            if expected.id.is_none() {
                lost.push(Lost::Create { key: *key, landed: true });
            }
            let landed = expected.in_flight == Some((trade.status, trade.refunded_amount));
            if let Some(change) = expected.in_flight_change {
                lost.push(Lost::Change { key: *key, change, before: expected.state, landed });
            }
            let actual = (trade.status, trade.refunded_amount);
            match expected.id {
                Some(id) if id != trade.id => bail!("order {key:?} was acknowledged as {id}, holds {}", trade.id),
                Some(_) => {
                    if actual != expected.state && Some(actual) != expected.in_flight {
                        bail!(
                            "trade {} is {actual:?}: acknowledged {:?}, in flight {:?}",
                            trade.id,
                            expected.state,
                            expected.in_flight
                        );
                    }
                    if expected.in_flight.is_some() {
                        checked.in_flight_present += u64::from(Some(actual) == expected.in_flight);
                    }
                    checked.acknowledged_trades += 1;
                }
                None if expected.absent => bail!("unacknowledged order {key:?} was absent, now is {}", trade.id),
                None => {
                    if actual != (TradeStatus::Created, 0) {
                        bail!("unacknowledged create {} is {actual:?}", trade.id);
                    }
                    expected.id = Some(trade.id);
                    self.by_id.insert(trade.id, *key);
                    checked.in_flight_present += 1;
                }
            }
            if trade.amount != expected.amount {
                bail!("trade {} holds amount {}, was sent {}", trade.id, trade.amount, expected.amount);
            }
            let sent = super::common::new_trade(key.0, key.1, expected.amount);
            let held = (trade.buyer_id, trade.merchant_id, &trade.merchant_order_no, &trade.memo);
            if held != (sent.buyer_id, sent.merchant_id, &sent.merchant_order_no, &sent.memo)
                || trade.currency.to_string() != sent.currency
            {
                bail!("trade {} holds {trade:?}, was sent {sent:?}", trade.id);
            }
            expected.state = actual;
            expected.in_flight = None;
            expected.in_flight_change = None;
            if actual.0 == TradeStatus::Settled {
                *settled.entry(trade.merchant_id).or_default() += u128::from(trade.amount);
            }
        }
        // Nothing held that was never sent, and no order twice: the engine holds exactly the
        // trades found.
        let stats = retrying(|| handle.stats_blocking())?;
        if stats.trades != found.len() as u64 {
            bail!("the engine counts {} trades, the users hold {}", stats.trades, found.len());
        }
        let totals: BTreeMap<u64, u128> = retrying(|| handle.settled_totals_blocking())?
            .into_iter()
            .map(|((merchant, _), sum)| (merchant, sum))
            .collect();
        if totals != settled {
            bail!("settled totals {totals:?} do not reconcile with the settled trades {settled:?}");
        }
        let consumer = handle.consumer(ConsumerConfig::new(super::common::GROUP))?;
        for (partition, offset) in consumer.committed_blocking()? {
            let acknowledged = self.committed.get(&partition).copied().unwrap_or(0);
            if offset.unwrap_or(0) < acknowledged {
                bail!(
                    "partition {partition}: committed offset {offset:?} is behind {acknowledged}, acknowledged or seen"
                );
            }
            let sent = self.commits_sent.get(&partition).copied();
            if offset.is_some_and(|offset| sent.is_none_or(|sent| offset > sent)) {
                bail!("partition {partition}: committed offset {offset:?} was never sent (highest sent {sent:?})");
            }
            checked.offset_commits += u64::from(self.committed.contains_key(&partition));
            // What a check found stands, as a trade's state does: a later check must not find
            // less.
            if let Some(offset) = offset {
                self.committed.insert(partition, acknowledged.max(offset));
            }
        }
        self.lost = lost;
        Ok(checked)
    }

    /// After [`verify`](Self::verify): sends every request the kill took the answer of again,
    /// checks each has its effect exactly once, then looks every order number up.
    pub fn retry_lost(&mut self, handle: &EngineHandle, checked: &mut Checked) -> anyhow::Result<()> {
        for lost in std::mem::take(&mut self.lost) {
            checked.retries_sent += 1;
            match lost {
                Lost::Create { key: (buyer, order), landed } => {
                    let expected = self.orders.get_mut(&(buyer, order)).expect("lost creates are known");
                    let trade = new_trade(buyer, order, expected.amount);
                    let receipt = retrying(|| handle.create_trade_blocking(trade.clone()))?;
                    match (landed, expected.id) {
                        (true, Some(id)) if receipt.id == id && receipt.replayed => {}
                        (false, _) if !receipt.replayed => {}
                        _ => bail!("a retried create of order {order} of buyer {buyer} answered {receipt:?}"),
                    }
                    checked.retries_answered_as_repeat += u64::from(receipt.replayed);
                    expected.id = Some(receipt.id);
                    expected.absent = false;
                    expected.state = (receipt.status, receipt.refunded_amount);
                    self.by_id.insert(receipt.id, (buyer, order));
                }
                Lost::Change { key, change, before, landed } => {
                    let expected = self.orders.get_mut(&key).expect("lost changes are known");
                    let id = expected.id.expect("changes follow acknowledged creates");
                    let receipt = retrying(|| match change {
                        Change::Pay => handle.pay_blocking(id),
                        Change::Settle => handle.settle_blocking(id),
                        Change::Close => handle.close_trade_blocking(id),
                        Change::Refund(amount) => handle.refund_blocking(id, &refund_no(id, before.1), amount),
                    })?;
                    let wanted = after(before, expected.amount, change).expect("the change was valid when sent");
                    if (receipt.status, receipt.refunded_amount) != wanted || receipt.replayed != landed {
                        bail!("a retried {change:?} of {id} answered {receipt:?}: wanted {wanted:?}, landed {landed}");
                    }
                    checked.retries_answered_as_repeat += u64::from(receipt.replayed);
                    expected.state = wanted;
                }
            }
        }
        self.check_lookups_by_order(handle, checked)
    }

    /// Every order number known to hold a trade is found by merchant and order number, and
    /// names that trade. A sixteenth of them, rotating with the checks, is created again: by
    /// its buyer, answered by its trade as it is now and marked a repeat; by the next buyer
    /// (of another shard, mostly), a conflict naming the trade. Most of these numbers are
    /// old, their keys in runs on disk, which keep a trade and no body hash.
    fn check_lookups_by_order(&self, handle: &EngineHandle, checked: &mut Checked) -> anyhow::Result<()> {
        for ((buyer, order), expected) in &self.orders {
            let Some(id) = expected.id else { continue };
            let trade = new_trade(*buyer, *order, expected.amount);
            if (order + self.listings).is_multiple_of(16) {
                checked.old_creates_repeated += 1;
                let again = retrying(|| handle.create_trade_blocking(trade.clone()))?;
                if (again.id, again.replayed, (again.status, again.refunded_amount)) != (id, true, expected.state) {
                    bail!(
                        "order {order} of buyer {buyer} ({id}, {:?}) created again answered {again:?}",
                        expected.state
                    );
                }
                let taken = NewTrade { buyer_id: buyer + 1, ..trade.clone() };
                match retrying(|| handle.create_trade_blocking(taken.clone())) {
                    Err(Error::Refused(Refusal::IdempotencyConflict { existing: Some(holder), .. }))
                        if holder == id => {}
                    other => bail!("order {order} of buyer {buyer} ({id}) taken by another buyer: {other:?}"),
                }
            }
            let found = retrying(|| handle.get_by_order_blocking(trade.merchant_id, &trade.merchant_order_no))?;
            if found.id != id {
                bail!(
                    "order {} of merchant {} names {}, not {id}",
                    trade.merchant_order_no,
                    trade.merchant_id,
                    found.id
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tradeshard_engine::Engine;

    fn engine(dir: &std::path::Path) -> Engine {
        Engine::open(super::super::common::engine_options(dir)).unwrap()
    }

    #[test]
    fn the_check_accepts_what_was_acknowledged_and_catches_what_was_not() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path());
        let handle = engine.handle();
        let paid = handle.create_trade_blocking(super::super::common::new_trade(10, 1, 500)).unwrap();
        handle.pay_blocking(paid.id).unwrap();
        let settled = handle.create_trade_blocking(super::super::common::new_trade(11, 2, 700)).unwrap();
        handle.pay_blocking(settled.id).unwrap();
        handle.settle_blocking(settled.id).unwrap();
        let unacknowledged = handle.create_trade_blocking(super::super::common::new_trade(12, 3, 900)).unwrap();
        let journal = vec![
            Entry::CreateSent { buyer: 10, order: 1, amount: 500 },
            Entry::CreateAcked { buyer: 10, order: 1, id: paid.id.0 },
            Entry::ChangeSent { id: paid.id.0, change: Change::Pay },
            Entry::ChangeAcked { id: paid.id.0 },
            // Sent, not acknowledged: the engine may hold the trade Paid or Settled.
            Entry::ChangeSent { id: paid.id.0, change: Change::Settle },
            Entry::CreateSent { buyer: 11, order: 2, amount: 700 },
            Entry::CreateAcked { buyer: 11, order: 2, id: settled.id.0 },
            Entry::ChangeSent { id: settled.id.0, change: Change::Pay },
            Entry::ChangeAcked { id: settled.id.0 },
            Entry::ChangeSent { id: settled.id.0, change: Change::Settle },
            Entry::ChangeAcked { id: settled.id.0 },
            Entry::CreateSent { buyer: 12, order: 3, amount: 900 },
            Entry::CreateSent { buyer: 13, order: 4, amount: 100 },
        ];
        let mut model = Model::default();
        model.merge(journal.clone()).unwrap();
        let checked = model.verify(&handle).unwrap();
        assert_eq!(checked.acknowledged_trades, 2);
        assert_eq!((checked.in_flight_present, checked.in_flight_absent), (1, 1), "order 3 found, order 4 not");
        assert_eq!(model.orders[&(12, 3)].id, Some(unacknowledged.id));

        // What the engine holds must not go back behind what an earlier check found.
        let lost = |entries: Vec<Entry>| {
            let mut model = Model::default();
            model.merge(entries).unwrap();
            model.verify(&handle).unwrap_err().to_string()
        };
        let mut acked_more = journal[..4].to_vec();
        acked_more.extend([
            Entry::ChangeSent { id: paid.id.0, change: Change::Settle },
            Entry::ChangeAcked { id: paid.id.0 },
        ]);
        assert!(lost(acked_more).contains("acknowledged"), "an acknowledged settle that is not there");
        let never_created = vec![
            Entry::CreateSent { buyer: 14, order: 5, amount: 1 },
            Entry::CreateAcked { buyer: 14, order: 5, id: 99 },
        ];
        assert!(lost(never_created).contains("lost"));
        let other_amount = vec![
            Entry::CreateSent { buyer: 12, order: 3, amount: 901 },
            Entry::CreateAcked { buyer: 12, order: 3, id: unacknowledged.id.0 },
        ];
        assert!(lost(other_amount).contains("amount"));
        // Trades the journals never mention are found by the count.
        assert!(lost(journal[..4].to_vec()).contains("counts"));
        handle
            .consumer(ConsumerConfig::new(super::super::common::GROUP))
            .and_then(|mut c| futures_lite::future::block_on(c.commit_offsets(&[(0, 0)])))
            .unwrap();
        let mut ahead = journal.clone();
        ahead.push(Entry::CommitAcked { partition: 0, offset: 1 });
        assert!(lost(ahead).contains("behind"));

        // The requests the kill took the answers of (found by the first check) are sent again,
        // each to effect once: the settle in flight lands now, order 4 (absent) is created now,
        // order 3 (found) answers as a repeat.
        let mut retried = Checked::default();
        model.retry_lost(&handle, &mut retried).unwrap();
        assert_eq!((retried.retries_sent, retried.retries_answered_as_repeat), (3, 1));
        assert_eq!(handle.get_blocking(paid.id).unwrap().status, TradeStatus::Settled);
        assert!(handle.get_by_order_blocking(1 + 13 % 5, "S-13-4").is_ok(), "order 4 created by its retry");
        engine.close().unwrap();
    }
}
