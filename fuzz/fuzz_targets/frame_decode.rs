//! Any bytes through the frame decoder: no panic, no allocation beyond the payload limit, and
//! whatever decodes re-encodes to a frame that decodes to the same records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tradeshard_wal::batch::{decode_frame, push_record, seal_frame, FRAME_HEADER_BYTES};
use tradeshard_wal::Compression;

const PAYLOAD_BYTES_MAX: u32 = 1 << 20;

fuzz_target!(|bytes: &[u8]| {
    let Ok((header, records)) = decode_frame(bytes, PAYLOAD_BYTES_MAX) else { return };
    assert!(header.raw_len <= PAYLOAD_BYTES_MAX);
    assert_eq!(records.len(), header.record_count as usize);
    let mut raw = Vec::new();
    for record in &records {
        push_record(&mut raw, record);
    }
    let mut scratch = Vec::new();
    let (resealed, stored) =
        seal_frame(&raw, header.record_count, header.first_seq, header.synced_seq, header.prev_checksum, Compression::Lz4, &mut scratch);
    let mut again = resealed.encode().to_vec();
    again.extend_from_slice(stored);
    assert_eq!(again.len(), FRAME_HEADER_BYTES + resealed.stored_len as usize);
    let (_, decoded) = decode_frame(&again, PAYLOAD_BYTES_MAX).expect("a sealed frame decodes");
    assert_eq!(decoded, records);
});
