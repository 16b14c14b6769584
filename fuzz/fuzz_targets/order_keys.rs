//! Any bytes as a shard's store of order keys, read as an open reads it: the keys restored or
//! a refusal, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tradeshard_shard::decode_order_keys;

fuzz_target!(|bytes: &[u8]| {
    let _ = decode_order_keys(bytes);
});
