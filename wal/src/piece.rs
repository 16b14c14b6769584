//! The piece: a run of records inside a frame, compressed and checked on its own.
//!
//! A piece is a run of length-prefixed records of a few KiB, with a 32-byte header of its own
//! (layout in `docs/FORMAT.md`): optionally LZ4 compressed on its own and checksummed on its
//! own, so that a point read reads the blocks of one piece and decompresses a few KiB, not its
//! whole frame. Sequential readers (recovery, consumers) decode every piece of a frame in
//! order, through the frame (`frame::raw_payload`).
//!
//! Decoding trusts nothing: every length is checked against the limit given before anything
//! is allocated, the decompressed size must be exactly the one declared, and the record
//! lengths must tile the piece exactly.

use xxhash_rust::xxh3::Xxh3;

use crate::config::{Compression, LZ4_MIN_BYTES};
use crate::defect::FrameDefect;
use crate::layout::{
    le_u16, le_u32, le_u64, FLAG_LZ4, FRAME_PAYLOAD_BYTES_LIMIT, PIECE_CHECKSUM_OFFSET, PIECE_HEADER_BYTES,
    RECORD_PREFIX_BYTES,
};
use crate::record::records_tile;

/// The decoded header of a piece: a run of records inside a frame, compressed and checksummed
/// on its own so that a point read decodes it without the rest of its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceHeader {
    /// `FLAG_*` bits.
    pub flags: u16,
    /// Records in the piece (at least one).
    pub record_count: u32,
    /// Bytes of the piece as stored, after its header.
    pub stored_len: u32,
    /// Bytes of the piece's records, with their length prefixes, once decompressed.
    pub raw_len: u32,
    /// Sequence number of the piece's first record.
    pub first_seq: u64,
    /// xxh3-64 of piece header bytes 0..24 and the stored bytes.
    pub checksum: u64,
}

impl PieceHeader {
    /// Sequence number after the piece's last record.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + self.record_count as u64
    }

    /// Bytes of the piece, header included.
    pub fn piece_bytes(&self) -> usize {
        PIECE_HEADER_BYTES + self.stored_len as usize
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; PIECE_HEADER_BYTES] {
        let mut out = [0u8; PIECE_HEADER_BYTES];
        out[0..4].copy_from_slice(&self.stored_len.to_le_bytes());
        out[4..8].copy_from_slice(&self.raw_len.to_le_bytes());
        out[8..12].copy_from_slice(&self.record_count.to_le_bytes());
        out[12..14].copy_from_slice(&self.flags.to_le_bytes());
        out[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        out[PIECE_CHECKSUM_OFFSET..].copy_from_slice(&self.checksum.to_le_bytes());
        out
    }

    /// Decodes and bounds-checks a piece header (`raw_bytes_max`: the largest raw payload
    /// allowed); the checksum is checked by [`decode_piece_into`].
    pub fn decode(bytes: &[u8], raw_bytes_max: u32) -> Result<PieceHeader, FrameDefect> {
        if bytes.len() < PIECE_HEADER_BYTES {
            return Err(FrameDefect::Short);
        }
        let header = PieceHeader {
            stored_len: le_u32(bytes, 0),
            raw_len: le_u32(bytes, 4),
            record_count: le_u32(bytes, 8),
            flags: le_u16(bytes, 12),
            first_seq: le_u64(bytes, 16),
            checksum: le_u64(bytes, PIECE_CHECKSUM_OFFSET),
        };
        let compressed = header.flags & FLAG_LZ4 != 0;
        let lengths_ok = header.raw_len <= raw_bytes_max.min(FRAME_PAYLOAD_BYTES_LIMIT)
            && if compressed { header.stored_len < header.raw_len } else { header.stored_len == header.raw_len };
        let count_ok = header.record_count >= 1
            && header.record_count as u64 * RECORD_PREFIX_BYTES as u64 <= header.raw_len as u64;
        let seq_ok = header.first_seq.checked_add(header.record_count as u64).is_some();
        if le_u16(bytes, 14) != 0 || header.flags & !FLAG_LZ4 != 0 || !lengths_ok || !count_ok || !seq_ok {
            return Err(FrameDefect::Header);
        }
        Ok(header)
    }
}

/// Where a piece lies in its frame's stored payload, and the sequence number it starts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceSpan {
    pub first_seq: u64,
    /// Offset of the piece's header from the start of the stored payload.
    pub start: u32,
    /// Bytes of the piece, header included.
    pub len: u32,
}

/// Whether the sealed piece that `piece` starts with is stored compressed (its header's flags,
/// at the offset [`PieceHeader::encode`] writes them).
pub(crate) fn stored_compressed(piece: &[u8]) -> bool {
    le_u16(piece, 12) & FLAG_LZ4 != 0
}

/// Appends one piece over `raw` (`record_count` records from `first_seq`) to `stored`.
pub(crate) fn seal_piece(
    raw: &[u8],
    record_count: u32,
    first_seq: u64,
    compression: Compression,
    stored: &mut Vec<u8>,
) {
    let header_at = stored.len();
    let body_at = header_at + PIECE_HEADER_BYTES;
    let mut flags = 0;
    if compression == Compression::Lz4 && raw.len() >= LZ4_MIN_BYTES {
        stored.resize(body_at + lz4_flex::block::get_maximum_output_size(raw.len()), 0);
        let compressed_len = lz4_flex::block::compress_into(raw, &mut stored[body_at..])
            .expect("output sized by get_maximum_output_size");
        if compressed_len <= raw.len() - raw.len() / 8 {
            flags = FLAG_LZ4;
            stored.truncate(body_at + compressed_len);
        }
    }
    if flags == 0 {
        stored.resize(body_at, 0);
        stored.extend_from_slice(raw);
    }
    let mut header = PieceHeader {
        flags,
        record_count,
        stored_len: (stored.len() - body_at) as u32,
        raw_len: raw.len() as u32,
        first_seq,
        checksum: 0,
    };
    header.checksum = piece_checksum(&header.encode(), &stored[body_at..]);
    stored[header_at..body_at].copy_from_slice(&header.encode());
}

/// The checksum of a piece: xxh3-64 over piece header bytes 0..24 and the stored bytes.
pub(crate) fn piece_checksum(header_bytes: &[u8], stored: &[u8]) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(&header_bytes[..PIECE_CHECKSUM_OFFSET]);
    hasher.update(stored);
    hasher.digest()
}

/// Decodes the piece at the start of `bytes` (anything may follow it): header, checksum,
/// decompression to exactly the declared size, and record lengths tiling it into exactly the
/// declared count. The raw records are appended to `out`; on a defect `out` is left as it was.
pub fn decode_piece_into(bytes: &[u8], raw_bytes_max: u32, out: &mut Vec<u8>) -> Result<PieceHeader, FrameDefect> {
    let header = PieceHeader::decode(bytes, raw_bytes_max)?;
    if bytes.len() < header.piece_bytes() {
        return Err(FrameDefect::Short);
    }
    let stored = &bytes[PIECE_HEADER_BYTES..header.piece_bytes()];
    if piece_checksum(bytes, stored) != header.checksum {
        return Err(FrameDefect::Checksum);
    }
    let at = out.len();
    if header.flags & FLAG_LZ4 != 0 {
        out.resize(at + header.raw_len as usize, 0);
        match lz4_flex::block::decompress_into(stored, &mut out[at..]) {
            Ok(n) if n == header.raw_len as usize => {}
            _ => {
                out.truncate(at);
                return Err(FrameDefect::Compression);
            }
        }
    } else {
        out.extend_from_slice(stored);
    }
    if !records_tile(&out[at..], header.record_count) {
        out.truncate(at);
        return Err(FrameDefect::Records);
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::sealed_frame;
    use crate::layout::FRAME_HEADER_BYTES;
    use crate::record::records;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_piece_decodes_on_its_own_to_its_records(
            records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..60),
            piece_raw_bytes in 1u32..2048,
            first_seq in 0u64..1 << 40,
        ) {
            let records: Vec<Vec<u8>> = records.iter().map(|r| vec![r.len() as u8; r.len()]).collect();
            let (bytes, pieces) = sealed_frame(&records, first_seq, Compression::Lz4, piece_raw_bytes);
            let mut next = first_seq;
            for span in &pieces {
                prop_assert_eq!(span.first_seq, next);
                let at = FRAME_HEADER_BYTES + span.start as usize;
                let mut raw = Vec::new();
                let piece = decode_piece_into(&bytes[at..at + span.len as usize], 1 << 20, &mut raw).unwrap();
                prop_assert_eq!(piece.first_seq, span.first_seq);
                let index = (piece.first_seq - first_seq) as usize;
                let decoded: Vec<&[u8]> = records_of(&raw).collect();
                let expected: Vec<&[u8]> = records[index..index + piece.record_count as usize].iter().map(|r| &r[..]).collect();
                prop_assert_eq!(decoded, expected);
                // A piece closes once it reaches the target; only the last may be smaller.
                if piece.end_seq() < first_seq + records.len() as u64 {
                    prop_assert!(piece.raw_len >= piece_raw_bytes);
                }
                next = piece.end_seq();
            }
            prop_assert_eq!(next, first_seq + records.len() as u64);
        }
    }

    fn records_of(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
        records(raw)
    }

    #[test]
    fn compressible_payload_is_stored_compressed() {
        let records = vec![vec![b'a'; 4000]; 4];
        let (bytes, _) = sealed_frame(&records, 0, Compression::Lz4, 4096);
        let header = crate::frame::FrameHeader::decode(&bytes, 1 << 20).unwrap();
        let piece = PieceHeader::decode(&bytes[FRAME_HEADER_BYTES..], 1 << 20).unwrap();
        assert_eq!(piece.flags & FLAG_LZ4, FLAG_LZ4);
        assert!(stored_compressed(&bytes[FRAME_HEADER_BYTES..]));
        assert_eq!(piece.record_count, 2, "a piece closes once it reaches 4096 raw bytes");
        assert!(header.stored_len < header.raw_len / 8);
    }

    #[test]
    fn incompressible_payload_is_stored_raw() {
        let mut rng = crate::disk::SplitMix64::new(1);
        let record: Vec<u8> = (0..4000).map(|_| rng.next_u64() as u8).collect();
        let (bytes, _) = sealed_frame(&[record], 0, Compression::Lz4, 4096);
        let piece = PieceHeader::decode(&bytes[FRAME_HEADER_BYTES..], 1 << 20).unwrap();
        assert_eq!(piece.flags, 0);
        assert_eq!(piece.stored_len, piece.raw_len);
        assert!(!stored_compressed(&bytes[FRAME_HEADER_BYTES..]));
    }
}
