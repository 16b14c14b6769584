//! Fetch and ListOffsets: reads of a topic in a partition, long-polled, and the offsets a
//! client resets to.
//!
//! A Fetch first reads every partition asked at once, without waiting; if that found nothing
//! and the client allows a wait (`max_wait_ms`, `min_bytes` above 0), it reads again with a
//! wait and answers as soon as one partition has data or the wait ends (a `min_bytes` above
//! one event is taken as one event). Only durable records are read, and a half message is never a record of its
//! topic until its commit, so the high watermark and the last stable offset are one: the
//! log's durable end.

use std::task::Poll;
use std::time::Duration;

use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, RequestHeader};
use kafka_protocol::ResponseError;
use tradeshard_engine::{EventBatch, PollQuery, Subscription, TRADES_TOPIC};

use super::records::encode_events;
use super::{error_code, partition_of};
use crate::Shared;

/// Events one read of a partition takes at most.
const EVENTS_PER_READ: usize = 16_384;

/// What one read is charged against a Fetch's byte budget at least: a read answers at least
/// one event whatever its `max_bytes` (a message record is at most 38,120 bytes), so a request
/// naming many partitions with tiny limits would otherwise read far past the budget.
const READ_CHARGE_MIN: usize = 64 << 10;

/// One partition asked for.
struct Wanted {
    topic_index: usize,
    topic: String,
    index: i32,
    partition: Option<u32>,
    from: u64,
    max_bytes: usize,
    /// The request's budget was spent before this partition: it is answered empty, unread.
    over_budget: bool,
}

type Read = super::Pending<'static, Result<EventBatch, tradeshard_engine::Error>>;

fn subscription(topic: &str) -> Subscription {
    match topic {
        TRADES_TOPIC => Subscription::trades(),
        _ => Subscription {
            trades: false,
            topics: std::sync::Arc::from(vec![topic.to_string()]),
            group: std::sync::Arc::from(""),
        },
    }
}

fn read(shared: &Shared, wanted: &Wanted, wait: Duration) -> Option<Read> {
    let partition = wanted.partition.filter(|_| !wanted.over_budget)?;
    let query = PollQuery {
        from: wanted.from,
        max_events: EVENTS_PER_READ,
        max_bytes: wanted.max_bytes,
        wait,
        subscription: subscription(&wanted.topic),
    };
    let handle = shared.handle.clone();
    Some(Box::pin(async move { handle.read_partition(partition, query).await }))
}

pub(crate) async fn fetch(shared: &Shared, _header: &RequestHeader, request: FetchRequest) -> FetchResponse {
    let options = &shared.options;
    let mut budget = (request.max_bytes.max(1) as usize).min(options.fetch_bytes_max);
    let wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(options.fetch_wait_max);
    let min_bytes = request.min_bytes.max(0) as usize;
    let mut wanted = Vec::new();
    let mut topics = Vec::new();
    for (topic_index, topic) in request.topics.iter().enumerate() {
        let name = topic.topic.0.to_string();
        topics.push(FetchableTopicResponse::default().with_topic(topic.topic.clone()));
        for partition in &topic.partitions {
            let valid_topic = super::metadata::topic_error(&name).is_none();
            let over_budget = budget == 0;
            let max_bytes = (partition.partition_max_bytes.max(1) as usize).min(budget.max(1));
            budget = budget.saturating_sub(max_bytes.max(READ_CHARGE_MIN));
            wanted.push(Wanted {
                over_budget,
                topic_index,
                topic: name.clone(),
                index: partition.partition,
                partition: partition_of(shared, partition.partition).filter(|_| valid_topic),
                // A negative offset is past no log's start: the shard refuses it as out of range.
                from: u64::try_from(partition.fetch_offset).unwrap_or(u64::MAX),
                max_bytes,
            });
        }
    }
    let reads = wanted
        .iter()
        .map(|w| {
            let read = read(shared, w, Duration::ZERO);
            Box::pin(async move {
                match read {
                    Some(read) => Some(read.await),
                    None => None,
                }
            }) as super::Pending<'_, Answer>
        })
        .collect();
    let mut answers = super::join_all(reads).await;
    let found = wanted
        .iter()
        .zip(&answers)
        .filter(|(want, answer)| matches!(answer, Some(Ok(b)) if !b.is_empty() || b.next_offset > want.from))
        .count();
    let any_error = answers.iter().any(|a| matches!(a, Some(Err(_))));
    if found == 0 && min_bytes > 0 && !wait.is_zero() && !any_error && !shared.shutdown.is_stopping() {
        // Nothing yet: wait on every partition at once, answer with the first to have data.
        let waited = first_with_data(
            wanted.iter().map(|w| read(shared, w, wait)).collect(),
            wait + Duration::from_millis(50),
            &shared.shutdown,
        )
        .await;
        for (slot, answer) in answers.iter_mut().zip(waited) {
            if let Some(answer) = answer {
                *slot = Some(answer);
            }
        }
    }
    for (want, answer) in wanted.iter().zip(answers) {
        let data = PartitionData::default().with_partition_index(want.index).with_log_start_offset(-1);
        let data = match answer {
            None if want.over_budget && want.partition.is_some() => data.with_high_watermark(-1),
            None => data.with_error_code(ResponseError::UnknownTopicOrPartition.code()).with_high_watermark(-1),
            Some(Err(error)) => {
                let code = error_code(&error);
                match error {
                    tradeshard_engine::Error::Refused(tradeshard_engine::Refusal::OffsetOutOfRange {
                        end,
                        first,
                        ..
                    }) => return_range(data, first, end),
                    _ => data.with_high_watermark(-1),
                }
                .with_error_code(code)
            }
            Some(Ok(batch)) => {
                let end = batch.end_offset as i64;
                match encode_events(batch, &want.topic, want.from, shared.options.trades_encoding) {
                    Ok(records) => {
                        data.with_high_watermark(end).with_last_stable_offset(end).with_records(Some(records))
                    }
                    // A record at the offset asked that does not decode: said, not skipped.
                    Err(_) => data.with_high_watermark(end).with_error_code(ResponseError::CorruptMessage.code()),
                }
            }
        };
        topics[want.topic_index].partitions.push(data);
    }
    FetchResponse::default().with_responses(topics)
}

fn return_range(data: PartitionData, first: u64, end: u64) -> PartitionData {
    data.with_high_watermark(end as i64).with_last_stable_offset(end as i64).with_log_start_offset(first as i64)
}

/// A partition's read: `None` for a partition that is not one.
type Answer = Option<Result<EventBatch, tradeshard_engine::Error>>;

/// Runs `reads` together until one answers (a waiting read answers once something lies
/// beyond its offset, or its wait ended), `limit` passes or the server stops; answers what
/// each had answered by then.
async fn first_with_data(
    mut reads: Vec<Option<Read>>,
    limit: Duration,
    stopping: &crate::shutdown::Shutdown,
) -> Vec<Answer> {
    let mut answers: Vec<Answer> = reads.iter().map(|_| None).collect();
    let first = std::future::poll_fn(|cx| {
        let (mut pending, mut answered) = (false, false);
        for (read, answer) in reads.iter_mut().zip(answers.iter_mut()) {
            let Some(future) = read else { continue };
            match future.as_mut().poll(cx) {
                Poll::Ready(result) => {
                    *answer = Some(result);
                    *read = None;
                    answered = true;
                }
                Poll::Pending => pending = true,
            }
        }
        if answered || !pending {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    futures_lite::future::or(first, async {
        // The wait ends at its limit, or early for a stop.
        let deadline = std::time::Instant::now() + limit;
        while !stopping.is_stopping() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            glommio::timer::sleep(left.min(crate::shutdown::CHECK_INTERVAL)).await;
        }
    })
    .await;
    answers
}

pub(crate) async fn list_offsets(
    shared: &Shared,
    _header: &RequestHeader,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for asked in topic.partitions {
            let answer = ListOffsetsPartitionResponse::default().with_partition_index(asked.partition_index);
            let partition = partition_of(shared, asked.partition_index);
            let (Some(partition), None) = (partition, super::metadata::topic_error(&name)) else {
                partitions.push(answer.with_error_code(ResponseError::UnknownTopicOrPartition.code()).with_offset(-1));
                continue;
            };
            partitions.push(match offset_for(shared, &name, partition, asked.timestamp).await {
                Ok((offset, timestamp)) => answer.with_offset(offset).with_timestamp(timestamp),
                Err(code) => answer.with_error_code(code).with_offset(-1),
            });
        }
        topics.push(ListOffsetsTopicResponse::default().with_name(topic.name).with_partitions(partitions));
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// Reads of other records a search by time goes through, at most, looking for one event
/// (each read passes at most `SKIP_BYTES_MAX`).
const SEARCH_READS_MAX: usize = 256;

/// The first event of `topic` at or after `from` (its offset and write time), or `None` when
/// the log has none up to its end; an error code when that takes more than
/// `SEARCH_READS_MAX` reads.
async fn first_event_from(
    shared: &Shared,
    topic: &str,
    partition: u32,
    mut from: u64,
) -> Result<Option<(u64, u64)>, i16> {
    for _ in 0..SEARCH_READS_MAX {
        let query = PollQuery {
            from,
            max_events: 1,
            max_bytes: 64 << 10,
            wait: Duration::ZERO,
            subscription: subscription(topic),
        };
        let batch = shared.handle.read_partition(partition, query).await.map_err(|e| error_code(&e))?;
        if let Some(event) = batch.events().next() {
            let (offset, view) = event.map_err(|e| error_code(&e.into()))?;
            let at_ms = match view {
                tradeshard_engine::EventView::Trade(trade) => trade.at_ms,
                tradeshard_engine::EventView::Message(message) => message.at_ms,
            };
            return Ok(Some((offset, at_ms)));
        }
        if batch.next_offset >= batch.end_offset || batch.next_offset == from {
            return Ok(None);
        }
        from = batch.next_offset;
    }
    Err(ResponseError::RequestTimedOut.code())
}

/// ListOffsets' answer for one partition: -2 the earliest offset, -1 the latest (the durable
/// end), otherwise the first event of the topic written at or after `timestamp` (a binary
/// search over the log's offsets, whose write times only grow), or the end if none.
async fn offset_for(shared: &Shared, topic: &str, partition: u32, timestamp: i64) -> Result<(i64, i64), i16> {
    let position = shared.handle.partition_position("kafka", partition).await.map_err(|e| error_code(&e))?;
    match timestamp {
        -2 => return Ok((position.first as i64, -1)),
        -1 => return Ok((position.end as i64, -1)),
        _ => {}
    }
    let wanted = timestamp.max(0) as u64;
    let (mut low, mut high) = (position.first, position.end);
    let mut found: Option<(u64, u64)> = None;
    while low < high {
        let middle = low + (high - low) / 2;
        match first_event_from(shared, topic, partition, middle).await? {
            Some((offset, at_ms)) if at_ms >= wanted => {
                found = Some((offset, at_ms));
                high = middle;
            }
            Some((offset, _)) => low = offset + 1,
            None => high = middle,
        }
    }
    Ok(match found {
        Some((offset, at_ms)) => (offset as i64, at_ms as i64),
        None => (position.end as i64, -1),
    })
}
