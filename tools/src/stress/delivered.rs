//! What the child's consumer took live against what the log holds: between two of its
//! commits the consumer journals, per partition, the offsets it moved across, how many events
//! it took and their digest ([`event_digest`], in offset order). After the kill the parent
//! reads the same offsets of the recovered log and must find the same events: an event a live
//! poll skipped, delivered twice, or delivered other than the log holds it, fails the
//! campaign. (The audit, `audit.rs`, reads the stream again after each reopen; this checks the
//! deliveries that happened while the child ran.)

use std::time::Duration;

use anyhow::{bail, Context};
use futures_lite::future::block_on;
use tradeshard_engine::{EngineHandle, Error, EventView, PollQuery, RecordKind, Refusal, Subscription, TradeId};

use super::common::retrying;

/// The digest of the events taken so far (`digest`) with one more: in order, so that the
/// same events in another order, or one missing or twice, digest otherwise.
pub(super) fn event_digest(digest: u64, offset: u64, trade: TradeId, kind: RecordKind, amount: u64, user: u64) -> u64 {
    let mut h = digest;
    for word in [offset, trade.0, kind as u64, amount, user] {
        h = (h ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
    h
}

/// A span of a partition the child's consumer read, as it journaled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Consumed {
    pub partition: u32,
    pub from: u64,
    pub to: u64,
    pub count: u64,
    pub digest: u64,
}

/// What the checks covered: spans checked, the events in them, and spans the log no longer
/// held (retention removed them once every group was past them).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Checked {
    pub spans: u64,
    pub events: u64,
    pub spans_retained_away: u64,
}

/// Reads each span from the recovered log and compares it with what the child took.
pub(super) fn check(handle: &EngineHandle, spans: &[Consumed]) -> anyhow::Result<Checked> {
    let mut checked = Checked::default();
    for span in spans {
        let Some((count, digest)) = read_span(handle, span)? else {
            checked.spans_retained_away += 1;
            continue;
        };
        if (count, digest) != (span.count, span.digest) {
            bail!(
                "partition {}: the consumer took {} events (digest {:x}) from offsets {}..{}, the log holds {count} \
                 (digest {digest:x}) there",
                span.partition,
                span.count,
                span.digest,
                span.from,
                span.to
            );
        }
        checked.spans += 1;
        checked.events += count;
    }
    Ok(checked)
}

/// The count and digest of the trade events at offsets `from..to` of the span's partition, or
/// `None` when retention removed the start of the span.
fn read_span(handle: &EngineHandle, span: &Consumed) -> anyhow::Result<Option<(u64, u64)>> {
    let (mut at, mut count, mut digest) = (span.from, 0, 0);
    while at < span.to {
        let query = PollQuery {
            from: at,
            max_events: 4096,
            max_bytes: 4 << 20,
            wait: Duration::ZERO,
            subscription: Subscription::trades(),
        };
        let batch = match retrying(|| block_on(handle.read_partition(span.partition, query.clone()))) {
            Ok(batch) => batch,
            Err(Error::Refused(Refusal::OffsetOutOfRange { first, .. })) if at < first && at == span.from => {
                return Ok(None)
            }
            Err(e) => return Err(e).with_context(|| format!("reading partition {} from {at}", span.partition)),
        };
        for event in batch.events() {
            let (offset, view) = event?;
            if offset >= span.to {
                break;
            }
            if let EventView::Trade(trade) = view {
                digest = event_digest(digest, offset, trade.trade_id, trade.kind, trade.amount, trade.user_id);
                count += 1;
            }
        }
        if batch.next_offset <= at {
            bail!("partition {}: a read from {at} moved nowhere, short of {}", span.partition, span.to);
        }
        at = batch.next_offset;
    }
    Ok(Some((count, digest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_tells_order_a_missing_event_and_a_changed_one() {
        let event = |d, offset, kind| event_digest(d, offset, TradeId(9), kind, 500, 7);
        let both = event(event(0, 1, RecordKind::Created), 2, RecordKind::Paid);
        assert_ne!(both, event(event(0, 2, RecordKind::Paid), 1, RecordKind::Created), "order");
        assert_ne!(both, event(0, 1, RecordKind::Created), "one missing");
        assert_ne!(both, event(event(0, 1, RecordKind::Created), 2, RecordKind::Settled), "another kind");
        assert_ne!(both, event(event(0, 1, RecordKind::Created), 3, RecordKind::Paid), "another offset");
    }
}
