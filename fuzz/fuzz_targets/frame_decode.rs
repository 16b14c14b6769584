//! Any bytes through the frame decoder: no panic, no allocation beyond the payload limit, and
//! whatever decodes re-encodes to a frame that decodes to the same records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tradeshard_wal::testing::{decode_frame, push_record, seal_frame, SealParams, FRAME_HEADER_BYTES};
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
    let params = SealParams {
        first_seq: header.first_seq,
        synced_seq: header.synced_seq,
        prev_checksum: header.prev_checksum,
        compression: Compression::Lz4,
        piece_raw_bytes: 4096,
    };
    let (mut stored, mut pieces) = (Vec::new(), Vec::new());
    let resealed = seal_frame(&raw, header.record_count, params, &mut stored, &mut pieces);
    let mut again = resealed.encode().to_vec();
    again.extend_from_slice(&stored);
    assert_eq!(again.len(), FRAME_HEADER_BYTES + resealed.stored_len as usize);
    let (_, decoded) = decode_frame(&again, PAYLOAD_BYTES_MAX).expect("a sealed frame decodes");
    assert_eq!(decoded, records);
});
