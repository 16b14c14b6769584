//! Any bytes through the segment header decoder: no panic, and a header that decodes encodes
//! back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tradeshard_wal::testing::{SegmentHeader, SEGMENT_HEADER_BYTES};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(header) = SegmentHeader::decode(bytes) {
        assert_eq!(&header.encode()[..], &bytes[..SEGMENT_HEADER_BYTES]);
    }
});
