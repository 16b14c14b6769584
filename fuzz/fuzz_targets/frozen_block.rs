//! Any bytes as a block number, an index entry and a compressed copy of a block of the table
//! of trades: the decoder answers the block's records or a refusal, never a panic, and every
//! record it gives decodes or is refused as a record of the table without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tradeshard_shard::decode_frozen_block;

fuzz_target!(|bytes: &[u8]| {
    if let Some(records) = decode_frozen_block(bytes) {
        assert_eq!(records.len() % 128, 0, "whole records");
    }
});
