//! The shard's log read as a stream of settlement events: each trade record is an event whose
//! offset is its sequence number; system records (offset commits) are skipped.
//!
//! A poll returns durable events only, in log order, at most `max_events` and about
//! `max_bytes` of records (always at least one event when one is there), and waits up to
//! `wait` for the first when there is none yet (a long poll: woken by the log as soon as its
//! durable end moves, no polling loop).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tradeshard_wal::disk::Disk;
use tradeshard_wal::Wal;

use crate::error::TradeError;
use crate::record::{LogRecord, TradeRecord};

/// Largest number of events one poll may ask for.
pub const POLL_EVENTS_MAX: usize = 65_536;
/// Largest number of record bytes one poll may ask for.
pub const POLL_BYTES_MAX: usize = 64 << 20;

/// What to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollQuery {
    /// Offset of the first event wanted.
    pub from: u64,
    pub max_events: usize,
    pub max_bytes: usize,
    /// How long to wait for a first event when there is none yet.
    pub wait: Duration,
}

/// One settlement event: a trade record at its offset in its shard's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub offset: u64,
    pub record: TradeRecord,
}

/// The answer to a poll.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventBatch {
    pub events: Vec<Event>,
    /// Where the next poll should start (past any system records read).
    pub next_offset: u64,
    /// The durable end of the log when the poll answered (for lag).
    pub end_offset: u64,
}

/// Reads events per `query` from `wal`.
pub async fn poll<D: Disk>(wal: &Wal<D>, query: PollQuery) -> Result<EventBatch, TradeError> {
    let (max_events, max_bytes) =
        (query.max_events.clamp(1, POLL_EVENTS_MAX), query.max_bytes.clamp(1, POLL_BYTES_MAX));
    if query.from > wal.durable_end() {
        return Err(TradeError::OffsetBeyondEnd { offset: query.from, end: wal.durable_end() });
    }
    if query.from == wal.durable_end() && !query.wait.is_zero() {
        futures_lite::future::or(wal.wait_beyond(query.from), glommio::timer::sleep(query.wait)).await;
    }
    let mut batch = EventBatch { events: Vec::new(), next_offset: query.from, end_offset: wal.durable_end() };
    let mut reader = wal.reader(query.from)?;
    let mut bytes = 0;
    while batch.events.len() < max_events && (bytes < max_bytes || batch.events.is_empty()) {
        let Some((offset, record)) = reader.next().await? else { break };
        bytes += record.len();
        batch.next_offset = offset + 1;
        match LogRecord::decode(record).map_err(|reason| TradeError::BadRecord { seq: offset, reason })? {
            LogRecord::Trade(record) => batch.events.push(Event { offset, record }),
            LogRecord::Offset(_) => {}
        }
    }
    batch.end_offset = batch.end_offset.max(wal.durable_end());
    Ok(batch)
}
