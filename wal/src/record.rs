//! Records inside a raw payload: each one a 4-byte little-endian length and its bytes.
//!
//! The queue gathers records in this form, pieces and frames are sealed over it, and readers
//! walk it after decoding; records themselves are opaque to the log. Only `records_tile` may
//! be given unchecked bytes (it is how decoders check them): the other readers here trust
//! their payload, which a decoder has checked or the log gathered itself.

use crate::layout::{le_u32, RECORD_PREFIX_BYTES};

/// Appends one record, with its length prefix, to a raw payload being gathered.
pub fn push_record(raw: &mut Vec<u8>, record: &[u8]) {
    let len = u32::try_from(record.len()).expect("record length checked against record_bytes_max");
    raw.extend_from_slice(&len.to_le_bytes());
    raw.extend_from_slice(record);
}

/// Length of the record whose prefix starts at `at` in a raw payload.
pub(crate) fn record_len_at(raw: &[u8], at: usize) -> usize {
    le_u32(raw, at) as usize
}

/// Whether the record lengths in `raw` tile it into exactly `count` records.
pub(crate) fn records_tile(raw: &[u8], count: u32) -> bool {
    let mut at = 0usize;
    for _ in 0..count {
        if raw.len() - at < RECORD_PREFIX_BYTES {
            return false;
        }
        let len = record_len_at(raw, at);
        if raw.len() - at - RECORD_PREFIX_BYTES < len {
            return false;
        }
        at += RECORD_PREFIX_BYTES + len;
    }
    at == raw.len()
}

/// The records of a raw payload already checked by `frame::raw_payload` or
/// `piece::decode_piece_into`.
pub fn records(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= raw.len() {
            return None;
        }
        let len = record_len_at(raw, at);
        let record = &raw[at + RECORD_PREFIX_BYTES..at + RECORD_PREFIX_BYTES + len];
        at += RECORD_PREFIX_BYTES + len;
        Some(record)
    })
}
