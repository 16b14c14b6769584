//! Any bytes through the piece decoder a point read uses: no panic, no allocation beyond the
//! raw limit, and whatever decodes holds exactly its declared records, which seal again into
//! a frame that decodes to the same records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tradeshard_wal::testing::{decode_frame, decode_piece_into, push_record, records, seal_frame, SealParams};
use tradeshard_wal::Compression;

const RAW_BYTES_MAX: u32 = 1 << 20;

fuzz_target!(|bytes: &[u8]| {
    let mut raw = vec![0xAB; 3];
    let Ok(header) = decode_piece_into(bytes, RAW_BYTES_MAX, &mut raw) else {
        assert_eq!(raw, [0xAB; 3], "a refused piece leaves the output as it was");
        return;
    };
    assert_eq!(raw.len() - 3, header.raw_len as usize);
    let decoded: Vec<Vec<u8>> = records(&raw[3..]).map(<[u8]>::to_vec).collect();
    assert_eq!(decoded.len(), header.record_count as usize);
    let mut framed = Vec::new();
    for record in &decoded {
        push_record(&mut framed, record);
    }
    let params = SealParams {
        first_seq: header.first_seq,
        synced_seq: 0,
        prev_checksum: 0,
        compression: Compression::Lz4,
        piece_raw_bytes: header.raw_len,
    };
    let (mut stored, mut pieces) = (Vec::new(), Vec::new());
    let frame = seal_frame(&framed, header.record_count, params, &mut stored, &mut pieces);
    assert_eq!(pieces.len(), 1, "a piece's records seal into one piece");
    let mut again = frame.encode().to_vec();
    again.extend_from_slice(&stored);
    let (_, from_frame) = decode_frame(&again, RAW_BYTES_MAX).expect("a sealed frame decodes");
    assert_eq!(from_frame, decoded);
});
