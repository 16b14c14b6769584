//! The table's record codec for the fuzzers and tests: a decode that encodes again what it
//! read, with the decoder of the state alone checked against it, and records to start from.

use super::{decode, decode_state, encode, inline_part, RECORD_BYTES};
use crate::currency::Currency;
use crate::index::{CreatedAt, StoredPart, TablePart, TradeEntry};
use crate::lifecycle::Lifecycle;
use crate::trade::TradeId;

/// A record's bytes as read, and as encoded again from what they decoded to.
pub type ReadAndAgain = (Vec<u8>, Vec<u8>);

/// For fuzzing: the first 8 bytes are a counter, the rest a record at that counter. A record
/// that decodes is encoded again; the fuzz target checks the bytes come back the same. The
/// decoder of the state alone runs on the same bytes and must agree wherever the whole
/// record decodes (it panics otherwise, which the fuzzer reports).
pub fn decode_for_fuzzing(bytes: &[u8]) -> Result<Option<ReadAndAgain>, &'static str> {
    let counter = u64::from_le_bytes(bytes.get(..8).ok_or("no counter")?.try_into().expect("8 bytes"));
    let state = decode_state(counter, &bytes[8..]);
    let record = decode(counter, &bytes[8..]);
    if let Ok(record) = &record {
        let whole = record.map(|record| (record.id, record.entry, record.version));
        let alone = state.map(|state| state.map(|state| (state.id, state.entry, state.version)));
        assert_eq!(alone, Ok(whole), "the state decoder disagrees with the record's");
    }
    let Some(record) = record? else { return Ok(None) };
    let mut again = vec![0u8; RECORD_BYTES];
    encode(record.id, &record.entry, record.version, record.inline.as_ref(), &mut again)?;
    Ok(Some((bytes[8..8 + RECORD_BYTES].to_vec(), again)))
}

/// A record of every field, as [`decode_for_fuzzing`] takes it (the fuzzers' seed).
pub fn sample_for_fuzzing() -> Vec<u8> {
    let entry = TradeEntry {
        logical_shard: 3,
        user_id: 7,
        merchant_id: 1007,
        lifecycle: Lifecycle {
            status: crate::trade::TradeStatus::Refunded,
            amount: 5_000,
            refunded: 1_000,
            from_balance: true,
        },
        currency: Currency::parse("CNY").expect("a known code"),
        updated_ms: 1_700_000_000_300,
        created_at: CreatedAt::Stored(StoredPart { seq: 10, offset: 8_192, len: 120 }),
    };
    let mut bytes = 41u64.to_le_bytes().to_vec();
    bytes.resize(8 + RECORD_BYTES, 0);
    encode(TradeId::new(3, 41), &entry, 400, None, &mut bytes[8..]).expect("a stored part");
    bytes
}

/// [`sample_for_fuzzing`] with its created part inline.
pub fn inline_sample_for_fuzzing() -> Vec<u8> {
    let mut bytes = sample_for_fuzzing();
    let counter = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let record = decode(counter, &bytes[8..]).expect("the sample decodes").expect("a record");
    let mut entry = record.entry;
    entry.created_at = CreatedAt::Table(TablePart { seq: 10, created_ms: 1_700_000_000_000 });
    let inline = inline_part("ORD-2026-0041", "备注").expect("fits");
    encode(record.id, &entry, record.version, Some(&inline), &mut bytes[8..]).expect("an inline part");
    bytes
}
