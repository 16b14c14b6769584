//! Kafka record batches (format v2, CRC-32C) out of the engine's events, and the engine's
//! messages out of a producer's record batches.
//!
//! A topic's offsets have gaps where the log holds records of other topics or of no topic.
//! When a read passed such records after its last event of the topic (or found none), its
//! answer ends with a control record (a transaction marker, which clients skip) at the last
//! offset passed, so that a client fetches next from `EventBatch::next_offset` instead of
//! asking for the gap again.
//!
//! The topic `trades` carries each trade event under the key of its user id (decimal text)
//! with a value in JSON (`docs/FORMAT.md`, "Trade events over Kafka") or, with
//! [`TradesEncoding::Binary`], the trade record's own bytes.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use std::fmt::Write;

use tradeshard_engine::{EventBatch, Funding, MessageView, OutgoingMessage, TradeRecordView};

/// How trade events are encoded in the topic `trades`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TradesEncoding {
    /// A JSON object per event (`docs/FORMAT.md`).
    #[default]
    Json,
    /// The trade record's bytes as the log holds them (`docs/FORMAT.md`).
    Binary,
}

/// Where a record's key or value lies: in the read's own bytes, or in the arena of bytes
/// made for the answer (trade events' keys and JSON values).
#[derive(Clone)]
enum Part {
    Read(std::ops::Range<usize>),
    Made(std::ops::Range<usize>),
}

struct Planned {
    offset: u64,
    at_ms: u64,
    key: Part,
    value: Part,
    headers: IndexMap<StrBytes, Option<Bytes>>,
}

/// The record batches of one partition's read of `topic`, from `from`; empty when the read
/// neither found an event nor moved past anything. Keys and values are slices of the read's
/// bytes (and of one buffer of the keys and JSON made here), not copies per record. A record
/// that does not decode ends the answer before it; the offset of one met first is the error.
pub(crate) fn encode_events(batch: EventBatch, topic: &str, from: u64, encoding: TradesEncoding) -> Result<Bytes, u64> {
    let mut end = batch.next_offset;
    let batch_next = batch.next_offset;
    let (read, spans) = batch.into_spans();
    let read = Bytes::from(read);
    let within = |part: &[u8]| {
        let start = part.as_ptr() as usize - read.as_ptr() as usize;
        start..start + part.len()
    };
    let mut made = BytesMut::with_capacity(match encoding {
        TradesEncoding::Json => spans.len() * 224,
        TradesEncoding::Binary => spans.len() * 8,
    });
    let mut planned = Vec::with_capacity(spans.len());
    for (offset, span, message) in spans {
        let bytes = &read[span.clone()];
        // The shard checked every record it handed over; one that does not decode here ends
        // the batch where it lies (the client asks again from there and gets the error).
        if message {
            let Ok(view) = MessageView::decode(bytes) else {
                end = offset;
                break;
            };
            if view.topic != topic {
                continue;
            }
            let mut headers = IndexMap::new();
            for (name, value) in view.headers() {
                headers.insert(StrBytes::from_string(name.to_string()), Some(read.slice(within(value))));
            }
            let (key, value) = (Part::Read(within(view.key)), Part::Read(within(view.payload)));
            planned.push(Planned { offset, at_ms: view.at_ms, key, value, headers });
        } else {
            let Ok(trade) = TradeRecordView::decode(bytes) else {
                end = offset;
                break;
            };
            if topic != tradeshard_engine::TRADES_TOPIC {
                continue;
            }
            let key_start = made.len();
            let _ = write!(made, "{}", trade.user_id);
            let key = Part::Made(key_start..made.len());
            let value = match encoding {
                TradesEncoding::Binary => Part::Read(span),
                TradesEncoding::Json => {
                    let value_start = made.len();
                    let _ = write_trade_json(&mut made, &trade);
                    Part::Made(value_start..made.len())
                }
            };
            planned.push(Planned { offset, at_ms: trade.at_ms, key, value, headers: IndexMap::new() });
        }
    }
    if planned.is_empty() && end == from && from < batch_next {
        return Err(from);
    }
    let made = made.freeze();
    let part = |part: &Part| match part {
        Part::Read(range) => read.slice(range.clone()),
        Part::Made(range) => made.slice(range.clone()),
    };
    let mut records: Vec<Record> =
        planned.into_iter().map(|p| record(p.offset, p.at_ms, part(&p.key), part(&p.value), p.headers)).collect();
    let covered = records.last().map_or(from, |r| r.offset as u64 + 1);
    if end > covered {
        records.push(gap_marker(end - 1));
    }
    let mut out = BytesMut::with_capacity(read.len() + made.len() + records.len() * 24 + 128);
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    if RecordBatchEncoder::encode(&mut out, records.iter(), &options).is_err() {
        return Ok(Bytes::new());
    }
    Ok(out.freeze())
}

/// A record as fetches answer it: not transactional, the log-append time, no producer.
pub(crate) fn record(
    offset: u64,
    at_ms: u64,
    key: Bytes,
    value: Bytes,
    headers: IndexMap<StrBytes, Option<Bytes>>,
) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::LogAppend,
        offset: offset as i64,
        // Keeps offset minus sequence equal over the read, so it makes one batch.
        sequence: offset as i32,
        timestamp: at_ms as i64,
        key: Some(key),
        value: Some(value),
        headers,
    }
}

/// A control record (a transaction's commit marker, which every client skips) at the last
/// offset a read passed without finding its topic there: its batch tells the client to fetch
/// next from past it. (An empty batch says the same, but librdkafka takes a response of no
/// record for a record too large to fetch.)
fn gap_marker(offset: u64) -> Record {
    let mut key = BytesMut::with_capacity(4);
    key.put_i16(0); // control record version
    key.put_i16(1); // commit
    let mut value = BytesMut::with_capacity(6);
    value.put_i16(0); // version
    value.put_i32(0); // coordinator epoch
    Record {
        transactional: true,
        control: true,
        sequence: -1,
        ..record(offset, 0, key.freeze(), value.freeze(), IndexMap::new())
    }
}

/// Writes a trade event as JSON (`docs/FORMAT.md`, "Trade events over Kafka").
pub(crate) fn write_trade_json(out: &mut impl Write, trade: &TradeRecordView<'_>) -> std::fmt::Result {
    let kind = match trade.kind {
        tradeshard_engine::RecordKind::Created => "created",
        tradeshard_engine::RecordKind::Paid => "paid",
        tradeshard_engine::RecordKind::Settled => "settled",
        tradeshard_engine::RecordKind::Closed => "closed",
        tradeshard_engine::RecordKind::Refunded => "refunded",
    };
    write!(
        out,
        "{{\"kind\":\"{kind}\",\"trade_id\":{},\"user_id\":{},\"merchant_id\":{},\"at_ms\":{},\"amount\":{},\"currency\":",
        trade.trade_id.0, trade.user_id, trade.merchant_id, trade.at_ms, trade.amount
    )?;
    write_json_string(out, trade.currency.as_str())?;
    if let Some(created) = &trade.created {
        out.write_str(",\"merchant_order_no\":")?;
        write_json_string(out, created.merchant_order_no)?;
        out.write_str(",\"memo\":")?;
        write_json_string(out, created.memo)?;
    }
    if let Some(refund_no) = trade.refund_no {
        out.write_str(",\"refund_no\":")?;
        write_json_string(out, refund_no)?;
    }
    match trade.funding {
        Funding::External => {}
        Funding::Balance => out.write_str(",\"from_balance\":true")?,
        Funding::Settles { credit, .. } => write!(out, ",\"from_balance\":true,\"merchant_credit\":{credit}")?,
    }
    out.write_char('}')
}

fn write_json_string(out: &mut impl Write, text: &str) -> std::fmt::Result {
    out.write_char('"')?;
    for c in text.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

/// Why a producer's records were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProduceRefusal {
    /// Not record batches of format v2, or bytes that do not decode.
    Corrupt,
    /// Compressed: this server stores messages as sent and decodes no compression.
    Compressed,
    /// Transactional or control batches: Kafka transactions are not served.
    Transactional,
}

/// The messages of a producer's record batches for `topic` and `partition`; an idempotent
/// producer's records carry its (id, epoch, topic) and their sequence numbers (one added,
/// the engine's numbering starting at 1).
pub(crate) fn decode_produced(
    records: Bytes,
    topic: &str,
    partition: u32,
) -> Result<Vec<OutgoingMessage>, ProduceRefusal> {
    let mut probe = records.clone();
    let infos = RecordBatchDecoder::decode_batch_info(&mut probe).map_err(|_| ProduceRefusal::Corrupt)?;
    for info in &infos {
        if info.version != 2 {
            return Err(ProduceRefusal::Corrupt);
        }
        if info.compression != Compression::None {
            return Err(ProduceRefusal::Compressed);
        }
        if info.transactional || info.control {
            return Err(ProduceRefusal::Transactional);
        }
    }
    if !super::bounds::counts_fit(&records) {
        return Err(ProduceRefusal::Corrupt);
    }
    // As for requests: a panic of the codec on bytes it did not foresee is a corrupt batch.
    let sets = std::panic::catch_unwind(move || {
        let mut bytes = records;
        RecordBatchDecoder::decode_all(&mut bytes)
    });
    let sets = match sets {
        Ok(Ok(sets)) => sets,
        _ => return Err(ProduceRefusal::Corrupt),
    };
    if sets.len() != infos.len() {
        return Err(ProduceRefusal::Corrupt);
    }
    let mut messages = Vec::new();
    // A batch is an idempotent producer's when it carries a producer id and a base sequence;
    // its records' numbers follow the base and wrap past `i32::MAX` (the codec adds their
    // offsets with a wrapping add, so a number past the wrap reads negative).
    let batches = infos.iter().zip(sets).map(|(info, set)| (info.producer_id >= 0 && info.base_sequence >= 0, set));
    for (idempotent, record) in
        batches.flat_map(|(idempotent, set)| set.records.into_iter().map(move |r| (idempotent, r)))
    {
        let key = record.key.map(|k| k.to_vec()).unwrap_or_default();
        let payload = record.value.map(|v| v.to_vec()).unwrap_or_default();
        let mut message = OutgoingMessage::new(topic, key, payload);
        for (name, value) in record.headers {
            message = message.header(name.to_string(), value.map(|v| v.to_vec()).unwrap_or_default());
        }
        message = if idempotent {
            // Kafka numbers a producer's records per topic-partition and starts again at each
            // new epoch; the engine numbers them per producer and partition. So the engine's
            // producer is the (id, epoch, topic) triple: another topic's or epoch's records
            // are never taken for repeats.
            let producer =
                [record.producer_id.to_le_bytes().as_slice(), &record.producer_epoch.to_le_bytes(), topic.as_bytes()]
                    .concat();
            // Kafka's numbers wrap to 0 after `i32::MAX`; the shard unwraps them.
            message.sequenced_wrapping(partition, xxhash_rust::xxh3::xxh3_64(&producer), record.sequence as u32)
        } else {
            message.to_partition(partition)
        };
        messages.push(message);
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tradeshard_engine::{Currency, RecordKind, TradeId, TradeRecord};

    fn json(kind: RecordKind, funding: Funding) -> String {
        let record = TradeRecord {
            kind,
            trade_id: TradeId(5),
            user_id: 7,
            merchant_id: 9,
            at_ms: 11,
            amount: 300,
            currency: Currency::parse("CNY").unwrap(),
            created: None,
            refund_no: (kind == RecordKind::Refunded).then(|| "R-1".into()),
            funding,
        };
        let bytes = record.encode();
        let mut out = String::new();
        write_trade_json(&mut out, &TradeRecordView::decode(&bytes).unwrap()).unwrap();
        out
    }

    #[test]
    fn events_of_a_trade_paid_from_a_balance_say_what_moved() {
        let base = "\"kind\":\"paid\",\"trade_id\":5,\"user_id\":7,\"merchant_id\":9,\"at_ms\":11,\"amount\":300,";
        assert_eq!(json(RecordKind::Paid, Funding::External), format!("{{{base}\"currency\":\"CNY\"}}"));
        assert_eq!(
            json(RecordKind::Paid, Funding::Balance),
            format!("{{{base}\"currency\":\"CNY\",\"from_balance\":true}}")
        );
        let settled = json(RecordKind::Settled, Funding::Settles { merchant_shard: 1, credit: 250 });
        assert!(settled.ends_with(",\"from_balance\":true,\"merchant_credit\":250}"), "{settled}");
        assert!(json(RecordKind::Refunded, Funding::Balance).ends_with("\"refund_no\":\"R-1\",\"from_balance\":true}"));
    }
}
