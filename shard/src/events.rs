//! The shard's log read as a stream of events: each trade record (topic `trades`) and each
//! delivered application message (`message.rs`) is an event whose offset is its sequence
//! number; a poll returns those of the topics it subscribes to (and, of messages meant for one
//! group, those of its group), and skips the rest: system records (decoded all the same, so a
//! bad one is reported where it lies), and message records it does not take (half messages,
//! scheduled ones, other topics; of those only the header is read: the consumer's decode checks
//! every byte of what it is given).
//!
//! A poll returns durable events only, in log order, at most `max_events` and about
//! `max_bytes` of records (always at least one event when one is there), and waits up to
//! `wait` for the first when there is none yet (a long poll: woken by the log as soon as its
//! durable end moves, no polling loop).
//!
//! A poll answers with an [`EventBatch`]: the trade records' bytes back to back, as the log
//! holds them, decoded by whoever reads them (borrowed with [`EventBatch::views`], owned
//! with [`EventBatch::decode`] into [`Event`]s). The shard's executor only copies bytes, and a consumer that
//! needs a few fields, or forwards the bytes, allocates nothing per event.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tradeshard_wal::disk::Disk;
use tradeshard_wal::Wal;

use crate::error::{Refusal, TradeError};
use crate::message::{route, MessageBody, MessageView, KIND_MESSAGE, TRADES_TOPIC};
use crate::record::{TradeRecord, TradeRecordView};
use crate::system_record::LogRecord;

/// Largest number of events one poll may ask for.
pub const POLL_EVENTS_MAX: usize = 65_536;
/// Bytes of records not taken that a poll reads through, at most, looking for its first
/// event (its answer then ends where it stopped, with no event).
pub const SKIP_BYTES_MAX: usize = 4 << 20;

/// Largest number of record bytes one poll may ask for.
pub const POLL_BYTES_MAX: usize = 64 << 20;

/// The topics a poll reads, and the group it reads for (retries and replays are delivered to
/// their group alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Trade events (the topic `trades`).
    pub trades: bool,
    /// Application topics.
    pub topics: Arc<[String]>,
    /// The group's offsets key.
    pub group: Arc<str>,
}

impl Subscription {
    /// Trade events only.
    pub fn trades() -> Subscription {
        Subscription { trades: true, topics: Arc::new([]), group: Arc::from("") }
    }

    /// Whether a message record is delivered to this subscription (its header only: the
    /// reader of the batch decodes, and so checks, what it is given).
    fn takes(&self, record: &[u8]) -> Result<bool, &'static str> {
        let (delivered, group, topic) = route(record)?;
        let for_group = group.is_empty() || group == self.group.as_bytes();
        Ok(delivered && for_group && self.topics.iter().any(|t| t.as_bytes() == topic))
    }
}

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollQuery {
    /// Offset of the first event wanted.
    pub from: u64,
    pub max_events: usize,
    pub max_bytes: usize,
    /// How long to wait for a first event when there is none yet.
    pub wait: Duration,
    pub subscription: Subscription,
}

/// One settlement event, decoded and owned: a trade record at its offset in its partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub partition: u32,
    pub offset: u64,
    pub record: TradeRecord,
}

/// Where one event's record lies in an [`EventBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawEvent {
    offset: u64,
    start: u32,
    len: u32,
    /// An application message (not a trade event).
    message: bool,
}

/// One event decoded and owned as a message: an application message, or a trade event as the
/// topic `trades` carries it (key: the user id, 8 bytes little-endian; payload: the trade
/// record's bytes, `docs/FORMAT.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub key: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Vec<u8>,
    /// Milliseconds since the Unix epoch when the record delivering it was written.
    pub at_ms: u64,
    /// 0 for a first delivery; `n` for the `n`th retry to this group.
    pub attempt: u8,
}

/// Where one event of an [`EventBatch`] lies: its offset, its record's byte range in the
/// batch's bytes, and whether it is an application message (else a trade event).
pub type EventSpan = (u64, std::ops::Range<usize>, bool);

/// One event of an [`EventBatch`] read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventView<'a> {
    Trade(TradeRecordView<'a>),
    Message(MessageView<'a>),
}

/// The events one poll read from one partition, undecoded: each event's offset and record
/// bytes, as the log holds them. Read them in place with [`views`](EventBatch::views) or own
/// them with [`decode`](EventBatch::decode).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventBatch {
    /// The partition (physical shard) the events come from.
    pub partition: u32,
    bytes: Vec<u8>,
    events: Vec<RawEvent>,
    /// Where the next poll should start (past any system records read).
    pub next_offset: u64,
    /// The durable end of the log when the poll answered (for lag).
    pub end_offset: u64,
}

impl EventBatch {
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Each event's offset and record bytes, in log order.
    pub fn records(&self) -> impl ExactSizeIterator<Item = (u64, &[u8])> {
        self.events.iter().map(|e| (e.offset, &self.bytes[e.start as usize..(e.start + e.len) as usize]))
    }

    /// True when the batch holds application messages (not only trade events).
    pub fn has_messages(&self) -> bool {
        self.events.iter().any(|e| e.message)
    }

    /// Each trade event decoded in place (checked as [`TradeRecord::decode`] checks), in log
    /// order; application messages are left out ([`messages`](Self::messages) reads them).
    pub fn views(&self) -> impl Iterator<Item = Result<(u64, TradeRecordView<'_>), TradeError>> {
        self.events.iter().filter(|e| !e.message).map(|e| {
            let bytes = &self.bytes[e.start as usize..(e.start + e.len) as usize];
            TradeRecordView::decode(bytes)
                .map(|view| (e.offset, view))
                .map_err(|reason| TradeError::BadRecord { seq: e.offset, reason })
        })
    }

    /// Each application message read in place, in log order; trade events are left out.
    pub fn messages(&self) -> impl Iterator<Item = Result<(u64, MessageView<'_>), TradeError>> {
        self.events.iter().filter(|e| e.message).map(|e| {
            let bytes = &self.bytes[e.start as usize..(e.start + e.len) as usize];
            MessageView::decode(bytes)
                .map(|view| (e.offset, view))
                .map_err(|reason| TradeError::BadRecord { seq: e.offset, reason })
        })
    }

    /// The batch's record bytes and where each event lies in them (offset, byte range, and
    /// whether it is an application message rather than a trade event), for a server that
    /// hands slices of them on without copying (`bytes::Bytes::slice`).
    pub fn into_spans(self) -> (Vec<u8>, Vec<EventSpan>) {
        let spans =
            self.events.iter().map(|e| (e.offset, e.start as usize..(e.start + e.len) as usize, e.message)).collect();
        (self.bytes, spans)
    }

    /// Every event read in place, trade events and messages alike, in log order.
    pub fn events(&self) -> impl Iterator<Item = Result<(u64, EventView<'_>), TradeError>> {
        self.events.iter().map(|e| {
            let bytes = &self.bytes[e.start as usize..(e.start + e.len) as usize];
            let view = match e.message {
                true => MessageView::decode(bytes).map(EventView::Message),
                false => TradeRecordView::decode(bytes).map(EventView::Trade),
            };
            view.map(|view| (e.offset, view)).map_err(|reason| TradeError::BadRecord { seq: e.offset, reason })
        })
    }

    /// Every event owned as a [`Message`], trade events as the topic `trades` carries them;
    /// the first record that does not decode fails the whole batch.
    pub fn decode_messages(&self) -> Result<Vec<Message>, TradeError> {
        let mut messages = Vec::with_capacity(self.len());
        for e in &self.events {
            let bytes = &self.bytes[e.start as usize..(e.start + e.len) as usize];
            let bad = |reason| TradeError::BadRecord { seq: e.offset, reason };
            let (partition, offset) = (self.partition, e.offset);
            messages.push(if e.message {
                let view = MessageView::decode(bytes).map_err(bad)?;
                let body = view.body().ok_or_else(|| bad("a delivered message without its message"))?;
                let (at_ms, attempt) = (view.at_ms, view.attempt);
                let MessageBody { topic, key, headers, payload } = body;
                Message { topic, partition, offset, key, headers, payload, at_ms, attempt }
            } else {
                let view = TradeRecordView::decode(bytes).map_err(bad)?;
                let (key, payload) = (view.user_id.to_le_bytes().to_vec(), bytes.to_vec());
                let (topic, headers) = (TRADES_TOPIC.to_string(), Vec::new());
                Message { topic, partition, offset, key, headers, payload, at_ms: view.at_ms, attempt: 0 }
            });
        }
        Ok(messages)
    }

    /// Keeps the first `count` events; the next poll then starts at the first one dropped.
    pub fn truncate(&mut self, count: usize) {
        if count < self.events.len() {
            self.next_offset = self.events[count].offset;
            self.events.truncate(count);
        }
    }

    /// The owned trade events; the first record that does not decode fails the whole batch.
    pub fn decode(&self) -> Result<Vec<Event>, TradeError> {
        let mut events = Vec::with_capacity(self.len());
        for view in self.views() {
            let (offset, view) = view?;
            events.push(Event { partition: self.partition, offset, record: view.to_record() });
        }
        Ok(events)
    }
}

/// Reads events of partition `partition` per `query` from `wal`, as record bytes.
pub(crate) async fn poll<D: Disk>(partition: u32, wal: &Wal<D>, query: PollQuery) -> Result<EventBatch, TradeError> {
    let (max_events, max_bytes) =
        (query.max_events.clamp(1, POLL_EVENTS_MAX), query.max_bytes.clamp(1, POLL_BYTES_MAX));
    if query.from > wal.durable_end() || query.from < wal.first_seq() {
        // Past the end, or removed by retention: the refusal names the offsets there are.
        let (offset, first, end) = (query.from, wal.first_seq(), wal.durable_end());
        return Err(Refusal::OffsetOutOfRange { offset, first, end }.into());
    }
    if query.from == wal.durable_end() && !query.wait.is_zero() {
        futures_lite::future::or(wal.wait_beyond(query.from), glommio::timer::sleep(query.wait)).await;
    }
    let mut batch =
        EventBatch { partition, next_offset: query.from, end_offset: wal.durable_end(), ..Default::default() };
    let mut reader = wal.reader(query.from)?;
    let mut bytes = 0;
    // A read goes on past `max_bytes` to take its first event (however large), but through at
    // most `SKIP_BYTES_MAX` of records it does not take: a read of a topic with nothing left
    // answers the offset it reached rather than scanning the log to its end.
    let skip_max = max_bytes.max(SKIP_BYTES_MAX);
    while batch.events.len() < max_events && (bytes < max_bytes || (batch.events.is_empty() && bytes < skip_max)) {
        let Some((offset, record)) = reader.next().await? else { break };
        bytes += record.len();
        batch.next_offset = offset + 1;
        let bad = |reason| TradeError::BadRecord { seq: offset, reason };
        let message = record.get(1) == Some(&KIND_MESSAGE);
        let taken = match message {
            true => query.subscription.takes(record).map_err(bad)?,
            false if LogRecord::is_system(record) => {
                // Not an event; checked all the same, so a bad one is reported where it lies.
                LogRecord::decode(record).map_err(bad)?;
                false
            }
            false => query.subscription.trades,
        };
        if !taken {
            continue;
        }
        let start = batch.bytes.len() as u32;
        batch.bytes.extend_from_slice(record);
        batch.events.push(RawEvent { offset, start, len: record.len() as u32, message });
    }
    batch.end_offset = batch.end_offset.max(wal.durable_end());
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordKind;
    use crate::trade::TradeId;
    use crate::Currency;

    fn record(id: u64) -> Vec<u8> {
        TradeRecord {
            kind: RecordKind::Paid,
            trade_id: TradeId(id),
            user_id: 7,
            merchant_id: 9,
            at_ms: 1,
            amount: 100,
            currency: Currency::parse("CNY").unwrap(),
            created: None,
            refund_no: None,
            funding: Default::default(),
        }
        .encode()
    }

    fn batch(records: &[(u64, Vec<u8>)]) -> EventBatch {
        let mut batch = EventBatch { partition: 0, next_offset: 100, end_offset: 100, ..Default::default() };
        for (offset, bytes) in records {
            let start = batch.bytes.len() as u32;
            batch.bytes.extend_from_slice(bytes);
            batch.events.push(RawEvent { offset: *offset, start, len: bytes.len() as u32, message: false });
        }
        batch
    }

    #[test]
    fn a_bad_record_is_reported_at_its_offset() {
        let mut bad = record(2);
        bad[2] = b'?'; // no currency
        let raw = batch(&[(10, record(1)), (11, bad), (12, record(3))]);
        let views: Vec<_> = raw.views().collect();
        assert_eq!(views[0].as_ref().unwrap().1.trade_id, TradeId(1));
        assert!(matches!(views[1], Err(TradeError::BadRecord { seq: 11, .. })));
        assert!(views[2].is_ok());
        assert!(matches!(raw.decode(), Err(TradeError::BadRecord { seq: 11, .. })));
    }

    #[test]
    fn truncating_moves_the_next_offset_to_the_first_event_dropped() {
        let mut raw = batch(&[(10, record(1)), (12, record(2)), (15, record(3))]);
        raw.truncate(5);
        assert_eq!((raw.len(), raw.next_offset), (3, 100));
        raw.truncate(2);
        assert_eq!((raw.len(), raw.next_offset), (2, 15));
        assert_eq!(raw.records().map(|(offset, _)| offset).collect::<Vec<_>>(), vec![10, 12]);
        assert_eq!(raw.decode().unwrap()[1].record.trade_id, TradeId(2));
    }
}
