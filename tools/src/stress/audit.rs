//! The audit of the settlement stream: every acknowledged change to a trade reaches a consumer,
//! once, in its trade's order, across every kill of a data directory.
//!
//! An audit group is pinned at the start of a new directory's log before any child writes (so
//! that retention, which waits for every live group, keeps each event until the audit read
//! it). After each kill the checking parent reads the group on to the end of the log,
//! replaying each trade's state from its events (a refund event carries the refund's own
//! amount), checks, and only then commits. The replayed state of every trade must be the
//! state the check found and the retries left (`Model::verify`, `Model::retry_lost`), and its
//! `Created` event must carry the buyer and amount the child sent: a change acknowledged but
//! missing from the stream, or there twice, an event under another user, or an event of a
//! trade that does not exist, is a violation. The group must resume exactly where the audit
//! last committed: an offset the engine lost or moved is a violation of its own. The child's
//! own consumer checks order as it reads; this checks that nothing is missing in what the
//! log delivers after a reopen.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_lite::future::block_on;
use tradeshard_engine::{
    Consumer, ConsumerConfig, Engine, EngineHandle, RecordKind, StartPosition, TradeId, TradeStatus,
};

use super::common::retrying;

/// The consumer group of the audit (the child never uses it).
const AUDIT_GROUP: &str = "stress-audit";

/// Empty polls in a row that move no position, short of the log's end, before the audit gives
/// up: a poll passes at most a few MiB of records that are no events, so each one moves.
const STUCK_POLLS_MAX: u32 = 100;

/// A trade's status and refunded total, as its events make it.
pub(super) type State = (TradeStatus, u64);

/// A trade's buyer and amount, as its `Created` event carries them.
pub(super) type Origin = (u64, u64);

/// What the audit expects of the stream: every trade the engine holds, with its state, and
/// the buyer and amount its create was sent with.
pub(super) struct Expected {
    pub states: HashMap<TradeId, State>,
    pub origins: HashMap<TradeId, Origin>,
}

/// Each trade's state and origin as the events read so far make them, and the offsets the
/// audit group last committed.
#[derive(Default)]
pub(super) struct Audit {
    states: HashMap<TradeId, State>,
    origins: HashMap<TradeId, Origin>,
    committed: Vec<(u32, Option<u64>)>,
}

impl Audit {
    /// Opens the new directory `options` name and pins the audit group at the start of each
    /// partition, before any child writes.
    pub(super) fn begin(options: tradeshard_engine::Options) -> anyhow::Result<Audit> {
        let dir = options.dir.clone();
        let engine = Engine::open(options).with_context(|| format!("creating {}", dir.display()))?;
        let config = ConsumerConfig { start: StartPosition::Earliest, ..ConsumerConfig::new(AUDIT_GROUP) };
        let mut consumer = engine.handle().consumer(config)?;
        retrying(|| block_on(consumer.commit())).context("pinning the audit group")?;
        let committed = retrying(|| consumer.committed_blocking())?;
        drop(consumer);
        engine.close().context("closing after pinning the audit group")?;
        Ok(Audit { committed, ..Audit::default() })
    }

    /// Reads the audit group on to the end of the log, checks what the events make against
    /// `expected`, then commits; returns the events read.
    pub(super) fn read_check_commit(&mut self, handle: &EngineHandle, expected: &Expected) -> anyhow::Result<u64> {
        let mut consumer = handle.consumer(ConsumerConfig::new(AUDIT_GROUP))?;
        let resumed = retrying(|| consumer.committed_blocking())?;
        if resumed != self.committed {
            bail!("the audit group resumes at {resumed:?}, it committed {:?}", self.committed);
        }
        let read = self.read_to_end(&mut consumer)?;
        self.check(expected)?;
        retrying(|| block_on(consumer.commit())).context("committing the audit group")?;
        self.committed = retrying(|| consumer.committed_blocking())?;
        Ok(read)
    }

    /// Reads until every partition's position is at its end (an empty poll can stop short of
    /// it, having passed records that are no events).
    fn read_to_end(&mut self, consumer: &mut Consumer) -> anyhow::Result<u64> {
        let (mut read, mut stuck) = (0, 0);
        loop {
            let before = consumer.assignment();
            let events = retrying(|| consumer.poll_blocking(4096, Duration::from_millis(20)))?;
            if events.is_empty() {
                let ends: HashMap<u32, u64> = retrying(|| consumer.end_offsets_blocking())?.into_iter().collect();
                let positions = consumer.assignment();
                if !positions.is_empty() && positions.iter().all(|(partition, at)| *at >= ends[partition]) {
                    return Ok(read);
                }
                stuck = if positions == before { stuck + 1 } else { 0 };
                if stuck > STUCK_POLLS_MAX {
                    bail!("the audit group stays at {positions:?}, short of the log's end {ends:?}");
                }
                continue;
            }
            read += events.len() as u64;
            for event in events {
                self.apply_event(&event.record, event.offset)?;
            }
        }
    }

    fn apply_event(&mut self, record: &tradeshard_engine::TradeRecord, offset: u64) -> anyhow::Result<()> {
        let id = record.trade_id;
        let before = self.states.get(&id).copied();
        let after = apply(before, record.kind, record.amount)
            .ok_or_else(|| anyhow!("trade {id}: event {:?} at offset {offset} after {before:?}", record.kind))?;
        if record.kind == RecordKind::Created {
            self.origins.insert(id, (record.user_id, record.amount));
        } else if self.origins.get(&id).map(|origin| origin.0) != Some(record.user_id) {
            bail!("trade {id}: event {:?} at offset {offset} under user {}", record.kind, record.user_id);
        }
        self.states.insert(id, after);
        Ok(())
    }

    /// Checks the states and origins the events make against `expected`: the same trades,
    /// each in the same state, each created with the buyer and amount the child sent.
    fn check(&self, expected: &Expected) -> anyhow::Result<()> {
        for (id, state) in &expected.states {
            match self.states.get(id) {
                Some(seen) if seen == state => {}
                seen => bail!("trade {id} is {state:?}, its events make it {seen:?}: a change missing or twice"),
            }
            let (sent, seen) = (expected.origins.get(id), self.origins.get(id));
            if sent != seen {
                bail!("trade {id} was sent as (buyer, amount) {sent:?}, its Created event says {seen:?}");
            }
        }
        if let Some(id) = self.states.keys().find(|id| !expected.states.contains_key(id)) {
            bail!("events of trade {id}, which the engine does not hold");
        }
        Ok(())
    }
}

/// The state after an event of `kind` (a refund's `amount`), or `None` if no trade in
/// `before` can have that event next.
fn apply(before: Option<State>, kind: RecordKind, amount: u64) -> Option<State> {
    use TradeStatus::*;
    Some(match (before, kind) {
        (None, RecordKind::Created) => (Created, 0),
        (Some((Created, refunded)), RecordKind::Paid) => (Paid, refunded),
        (Some((Created, refunded)), RecordKind::Closed) => (Closed, refunded),
        (Some((Paid, refunded)), RecordKind::Settled) => (Settled, refunded),
        (Some((Paid | Refunded, refunded)), RecordKind::Refunded) => (Refunded, refunded.checked_add(amount)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_make_states_and_refuse_what_no_trade_can_have_next() {
        use TradeStatus::*;
        let created = apply(None, RecordKind::Created, 500);
        assert_eq!(created, Some((Created, 0)));
        let paid = apply(created, RecordKind::Paid, 500);
        let refunded = apply(apply(paid, RecordKind::Refunded, 100), RecordKind::Refunded, 30);
        assert_eq!(refunded, Some((Refunded, 130)));
        assert_eq!(apply(paid, RecordKind::Settled, 500), Some((Settled, 0)));
        assert_eq!(apply(created, RecordKind::Closed, 500), Some((Closed, 0)));
        // Twice, out of order, or of a trade never created.
        assert_eq!(apply(paid, RecordKind::Paid, 500), None);
        assert_eq!(apply(created, RecordKind::Created, 500), None);
        assert_eq!(apply(created, RecordKind::Settled, 500), None);
        assert_eq!(apply(None, RecordKind::Paid, 500), None);
    }

    fn expected(states: &[(u64, State, Origin)]) -> Expected {
        Expected {
            states: states.iter().map(|&(id, state, _)| (TradeId(id), state)).collect(),
            origins: states.iter().map(|&(id, _, origin)| (TradeId(id), origin)).collect(),
        }
    }

    #[test]
    fn a_change_missing_from_the_events_or_a_trade_unknown_is_refused() {
        let mut audit = Audit::default();
        audit.states.insert(TradeId(1), (TradeStatus::Paid, 0));
        audit.origins.insert(TradeId(1), (7, 500));
        assert!(audit.check(&expected(&[(1, (TradeStatus::Paid, 0), (7, 500))])).is_ok());
        let settled = expected(&[(1, (TradeStatus::Settled, 0), (7, 500))]);
        assert!(audit.check(&settled).is_err(), "the settle's event is missing");
        assert!(audit.check(&expected(&[])).is_err(), "events of a trade not held");
        assert!(audit.check(&expected(&[(2, (TradeStatus::Created, 0), (7, 500))])).is_err());
        assert!(audit.check(&expected(&[(1, (TradeStatus::Paid, 0), (8, 500))])).is_err(), "another buyer");
        assert!(audit.check(&expected(&[(1, (TradeStatus::Paid, 0), (7, 501))])).is_err(), "another amount");
    }

    #[test]
    fn an_event_under_another_user_than_its_create_is_refused() {
        let record = |kind, user_id| tradeshard_engine::TradeRecord {
            kind,
            trade_id: TradeId(1),
            user_id,
            merchant_id: 2,
            at_ms: 0,
            amount: 500,
            currency: tradeshard_engine::Currency::parse("CNY").unwrap(),
            created: None,
            refund_no: None,
            funding: tradeshard_engine::Funding::External,
        };
        let mut audit = Audit::default();
        audit.apply_event(&record(RecordKind::Created, 7), 0).unwrap();
        assert!(audit.apply_event(&record(RecordKind::Paid, 8), 1).is_err());
        audit.apply_event(&record(RecordKind::Paid, 7), 1).unwrap();
        assert_eq!(audit.states[&TradeId(1)], (TradeStatus::Paid, 0));
    }
}
