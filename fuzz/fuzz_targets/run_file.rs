//! Any bytes as the file of run 1, read as an open and a full scan read it: the entries or a
//! refusal, never a panic; entries that come back have strictly ascending keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tradeshard_shard::decode_run_file;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(entries) = decode_run_file(bytes, 1) {
        assert!(!entries.is_empty(), "a run holds at least one entry");
        assert!(entries.windows(2).all(|pair| pair[0].0 < pair[1].0), "keys strictly ascending");
    }
});
