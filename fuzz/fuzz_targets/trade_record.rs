//! Any bytes as a counter and a record of the table of trades: the decoder answers a record,
//! no record, or a defect, never a panic; a record that decodes encodes back to its bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tradeshard_shard::decode_trade_record;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(Some((read, again))) = decode_trade_record(bytes) {
        assert_eq!(read, again, "a decoded record encodes back to its bytes");
    }
});
