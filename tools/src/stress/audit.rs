//! The audit of the settlement stream: every acknowledged change to a trade reaches a consumer,
//! once, in its trade's order, across every kill of a data directory.
//!
//! An audit group is pinned at the start of a new directory's log before any child writes (so
//! that retention, which waits for every live group, keeps each event until the audit read
//! it). After each kill the checking parent reads the group on to the end of the log,
//! replaying each trade's state from its events (a refund event carries the refund's own
//! amount), and commits. The replayed state of every trade must then be the state the check
//! found and the retries left (`Model::verify`, `Model::retry_lost`): a change acknowledged
//! but missing from the stream, or there twice, or an event of a trade that does not exist,
//! is a violation. The child's own consumer checks order as it reads; this checks that
//! nothing is missing.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_lite::future::block_on;
use tradeshard_engine::{ConsumerConfig, Engine, EngineHandle, RecordKind, StartPosition, TradeId, TradeStatus};

use super::common::retrying;

/// The consumer group of the audit (the child never uses it).
const AUDIT_GROUP: &str = "stress-audit";

/// A trade's status and refunded total, as its events make it.
pub(super) type State = (TradeStatus, u64);

/// Each trade's state as the events read so far make it.
#[derive(Default)]
pub(super) struct Audit {
    states: HashMap<TradeId, State>,
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
        drop(consumer);
        engine.close().context("closing after pinning the audit group")?;
        Ok(Audit::default())
    }

    /// Reads the audit group on to the end of the log and commits; returns the events read.
    pub(super) fn read_on(&mut self, handle: &EngineHandle) -> anyhow::Result<u64> {
        let mut consumer = handle.consumer(ConsumerConfig::new(AUDIT_GROUP))?;
        let mut read = 0;
        loop {
            // An empty poll after its wait: the group has read to the end of the log.
            let events = retrying(|| consumer.poll_blocking(4096, Duration::from_millis(20)))?;
            if events.is_empty() {
                break;
            }
            read += events.len() as u64;
            for event in events {
                let record = &event.record;
                let before = self.states.get(&record.trade_id).copied();
                let after = apply(before, record.kind, record.amount).ok_or_else(|| {
                    anyhow!(
                        "trade {}: event {:?} at offset {} after {before:?}",
                        record.trade_id,
                        record.kind,
                        event.offset
                    )
                })?;
                self.states.insert(record.trade_id, after);
            }
        }
        retrying(|| block_on(consumer.commit())).context("committing the audit group")?;
        Ok(read)
    }

    /// Checks the states the events make against `expected`, every trade the engine holds
    /// with the state it holds: the same trades, each in the same state.
    pub(super) fn check(&self, expected: &HashMap<TradeId, State>) -> anyhow::Result<()> {
        for (id, state) in expected {
            match self.states.get(id) {
                Some(seen) if seen == state => {}
                seen => bail!("trade {id} is {state:?}, its events make it {seen:?}: a change missing or twice"),
            }
        }
        if let Some(id) = self.states.keys().find(|id| !expected.contains_key(id)) {
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

    #[test]
    fn a_change_missing_from_the_events_or_a_trade_unknown_is_refused() {
        let mut audit = Audit::default();
        audit.states.insert(TradeId(1), (TradeStatus::Paid, 0));
        let expected = |state| HashMap::from([(TradeId(1), state)]);
        assert!(audit.check(&expected((TradeStatus::Paid, 0))).is_ok());
        assert!(audit.check(&expected((TradeStatus::Settled, 0))).is_err(), "the settle's event is missing");
        assert!(audit.check(&HashMap::new()).is_err(), "events of a trade not held");
        assert!(audit.check(&HashMap::from([(TradeId(2), (TradeStatus::Created, 0))])).is_err());
    }
}
