//! Any bytes as a checkpoint file of shard 2 at position 100: the decoder ends in the index it
//! holds or a defect at a page offset inside the file, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tradeshard_shard::decode_checkpoint;

fuzz_target!(|bytes: &[u8]| {
    if let Err((offset, _)) = decode_checkpoint(bytes, 2, 100) {
        assert!(offset <= bytes.len() as u64, "a defect is inside the file");
    }
});
