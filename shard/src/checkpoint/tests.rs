//! The checkpoint codec's tests: round trips, long lists across pages, every flipped bit.
use super::codec::*;
use super::sample::{encode_sample, sample_items};
use crate::index::{Item, RefundEntry, Scalars};
use crate::trade::TradeId;

fn encode(items: &[Item]) -> Vec<u8> {
    encode_sample(items)
}

/// Decodes a whole file held in memory: the header and every entry.
fn decode(bytes: &[u8]) -> Result<(Header, Vec<Item>), &'static str> {
    let mut at = 0;
    let first = open_page(bytes)?;
    let header = Header::decode(first)?;
    at += page_bytes(first.len());
    let mut items = Vec::new();
    loop {
        let payload = open_page(bytes.get(at..).ok_or("cut")?)?;
        at += page_bytes(payload.len());
        let page = decode_items(payload)?;
        items.extend(page.items);
        if page.end.is_some() {
            return Ok((header, items));
        }
    }
}

#[test]
fn round_trips_every_kind_of_entry() {
    let items = sample_items();
    let bytes = encode(&items);
    assert_eq!(bytes.len() % PAGE_ALIGN, 0);
    let (header, decoded) = decode(&bytes).unwrap();
    assert_eq!(decode_file(&bytes, 2, 100), Ok(1), "restores whole");
    assert_eq!(decode_file(&bytes, 3, 100), Err((0, "checkpoint of another shard")));
    assert_eq!(header.scalars.applied_end, 100);
    assert_eq!(header.parts_len, 4_140);
    assert_eq!(decoded, items);
}

#[test]
fn long_user_lists_and_many_entries_span_pages() {
    let ids: Vec<TradeId> = (1..=10_000).map(|c| TradeId::new(0, c)).collect();
    let mut items = vec![Item::User(5, ids.clone())];
    items.extend((0..20_000u128).map(|k| {
        Item::Refund(k, RefundEntry { trade_id: TradeId::new(0, 1), amount: 1, refunded_after: 1, at_ms: 2 })
    }));
    let bytes = encode(&items);
    let (_, decoded) = decode(&bytes).unwrap();
    let listed: Vec<TradeId> = decoded
        .iter()
        .filter_map(|item| match item {
            Item::User(5, ids) => Some(ids.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(listed, ids, "a long list comes back whole and in order");
    assert!(bytes.len() > 2 * PAGE_PAYLOAD_TARGET, "several pages");
}

#[test]
fn every_flipped_bit_is_detected() {
    let bytes = encode(&sample_items());
    // Every byte of every page's header and payload (the padding after is not read).
    let mut used = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = page_payload_len(&bytes[at..]).unwrap();
        used.extend(at..at + PAGE_HEADER_BYTES + len);
        at += page_bytes(len);
    }
    for &byte in &used {
        let mut flipped = bytes.clone();
        flipped[byte] ^= 1 << (byte % 8);
        assert!(decode_file(&flipped, 2, 100).is_err(), "flip at byte {byte} not detected");
    }
}

#[test]
fn names_parse_back() {
    assert_eq!(parse_file_name(&file_name(123)), Some(123));
    assert_eq!(parse_file_name("checkpoint.tmp"), None);
    assert_eq!(parse_file_name("checkpoint-12.ckpt"), None);
}

#[test]
fn the_known_claims_counter_is_refused_past_the_checkpoints_trades() {
    let header = |claims_known_below| Header {
        shard_id: 1,
        scalars: Scalars { applied_end: 10, events_end: 10, counter_max: 9, table_counter_max: 0, claims_known_below },
        parts_len: 0,
        created_ms: 1,
    };
    // Up to the counter after the highest trade held: what a snapshot can vouch for.
    assert!(Header::decode(&header(10).encode()).is_ok());
    assert!(Header::decode(&header(1).encode()).is_ok());
    // Past it (creates in flight at the snapshot, whose counters a stop may give to new
    // trades), or zero: damage.
    assert!(Header::decode(&header(11).encode()).is_err());
    assert!(Header::decode(&header(0).encode()).is_err());
}

#[test]
fn a_counter_past_any_trade_ids_is_refused() {
    let header = |counter_max, table_counter_max| Header {
        shard_id: 1,
        scalars: Scalars { applied_end: 10, events_end: 10, counter_max, table_counter_max, claims_known_below: 1 },
        parts_len: 0,
        created_ms: 1,
    };
    let highest = (1u64 << crate::trade::COUNTER_BITS) - 1;
    assert!(Header::decode(&header(highest, highest).encode()).is_ok());
    assert!(Header::decode(&header(highest + 1, 0).encode()).is_err());
    assert!(Header::decode(&header(u64::MAX, u64::MAX).encode()).is_err(), "no overflow, a refusal");
}
