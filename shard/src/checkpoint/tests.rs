//! The checkpoint codec's tests: round trips, long lists across pages, every flipped bit.
use super::codec::*;
use super::sample::{encode_sample, sample_items};
use crate::index::{Item, RefundEntry, Scalars};
use crate::trade::TradeId;
use tradeshard_wal::{FramePos, BLOCK_BYTES};

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
        frame: None,
        frozen_blocks: 0,
    };
    // Up to the counter after the highest trade held: what a snapshot can vouch for.
    assert!(Header::decode(&header(10).encode()).is_ok());
    assert!(Header::decode(&header(1).encode()).is_ok());
    // Past it (creates in flight at the snapshot, whose counters a stop may give to new
    // trades), or zero: damage.
    assert!(Header::decode(&header(11).encode()).is_err());
    assert!(Header::decode(&header(0).encode()).is_err());
}

/// A header at position 10 with `frame`.
fn header_with(frame: Option<FramePos>) -> Header {
    Header {
        shard_id: 1,
        scalars: Scalars {
            applied_end: 10,
            events_end: 10,
            counter_max: 9,
            table_counter_max: 0,
            claims_known_below: 1,
        },
        parts_len: 3,
        created_ms: 1,
        frame,
        frozen_blocks: 0,
    }
}

#[test]
fn the_log_frame_is_kept_and_ignored_outside_the_checkpoints_records() {
    let header = header_with;
    let at = |segment_base, offset, first_seq| Some(FramePos { segment_base, offset, first_seq });
    for frame in [None, at(0, 2 * BLOCK_BYTES, 9), at(3, 9 * BLOCK_BYTES, 4)] {
        assert_eq!(Header::decode(&header(frame).encode()), Ok(header(frame)));
    }
    // At or past the checkpoint's position, below its segment, numbered as the segment's first
    // frame, in the segment's header block, or off a block: none, and the rest of the header
    // as it was (the open then reads the segment from its first frame).
    for frame in [
        at(0, 2 * BLOCK_BYTES, 10),
        at(5, 9 * BLOCK_BYTES, 4),
        at(4, 9 * BLOCK_BYTES, 4),
        at(0, BLOCK_BYTES, 3),
        at(0, 5000, 3),
    ] {
        assert_eq!(Header::decode(&header(frame).encode()), Ok(header(None)), "{frame:?}");
    }
}

#[test]
fn a_header_of_the_version_before_is_read_without_a_log_frame() {
    let header = header_with(None);
    let mut before = header.encode()[..64].to_vec();
    before[0..2].copy_from_slice(&7u16.to_le_bytes());
    assert_eq!(Header::decode(&before), Ok(header));
    // The version before at the new length, or the new at the old: damage.
    assert!(Header::decode(&header.encode()[..64]).is_err());
    before.extend_from_slice(&[0; 24]);
    assert!(Header::decode(&before).is_err());
    assert!(Header::decode(&[8]).is_err());
}

#[test]
fn a_header_of_version_8_counts_no_frozen_blocks_and_the_count_stays_within_the_table() {
    let frame = Some(FramePos { segment_base: 0, offset: 2 * BLOCK_BYTES, first_seq: 3 });
    let header = header_with(frame);
    let mut eight = header.encode()[..88].to_vec();
    eight[0..2].copy_from_slice(&8u16.to_le_bytes());
    assert_eq!(Header::decode(&eight), Ok(header));
    assert!(Header::decode(&header.encode()[..88]).is_err(), "the new version at the old length");
    // Block 0 holds counters 0..128: a table up to counter 1 can have it frozen, not two.
    let mut scalars = header.scalars;
    scalars.table_counter_max = 1;
    scalars.counter_max = 9;
    let frozen = |blocks| Header { scalars, frozen_blocks: blocks, ..header };
    assert_eq!(Header::decode(&frozen(1).encode()), Ok(frozen(1)));
    assert!(Header::decode(&frozen(2).encode()).is_err());
}

#[test]
fn a_counter_past_any_trade_ids_is_refused() {
    let header = |counter_max, table_counter_max| Header {
        shard_id: 1,
        scalars: Scalars { applied_end: 10, events_end: 10, counter_max, table_counter_max, claims_known_below: 1 },
        parts_len: 0,
        created_ms: 1,
        frame: None,
        frozen_blocks: 0,
    };
    let highest = (1u64 << crate::trade::COUNTER_BITS) - 1;
    assert!(Header::decode(&header(highest, highest).encode()).is_ok());
    assert!(Header::decode(&header(highest + 1, 0).encode()).is_err());
    assert!(Header::decode(&header(u64::MAX, u64::MAX).encode()).is_err(), "no overflow, a refusal");
}
