//! Segment files: names and the header block that opens each one.
//!
//! A segment is named by the sequence number of its first record, zero-padded to 20 digits so
//! that names sort in log order. Its first block is a header (magic, version, shard id, base
//! sequence number, the checksum chain seed, a checksum of its own; its sizes are in
//! `layout`); frames follow from the second block on. A segment is written once from start to end and never reopened for
//! writing after it is sealed.

use crate::layout::{
    le_u16, le_u32, le_u64, BLOCK_BYTES, SEGMENT_CHECKSUM_OFFSET, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC, SEGMENT_VERSION,
};

const SUFFIX: &str = ".log";
const DIGITS: usize = 20;

/// The file name of the next segment while it is being prepared (zero-filled) ahead of need.
/// It never holds a frame: it is renamed to its segment name once its header is durable, and
/// recovery removes a leftover one.
pub const PREPARED_NAME: &str = "next-segment.prep";

/// The file name of the segment whose first record is `base_seq`.
pub fn file_name(base_seq: u64) -> String {
    format!("{base_seq:0DIGITS$}{SUFFIX}")
}

/// The base sequence number of a segment file name, or `None` for any other name.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What is wrong with a segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderDefect {
    /// Not a segment header at all (or a torn one).
    Invalid(&'static str),
    /// A version this build does not read.
    Version(u16),
}

/// The fields of a segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Shard whose log this is.
    pub shard_id: u32,
    /// Sequence number of the segment's first record.
    pub base_seq: u64,
    /// Checksum of the last frame of the previous segment (0 for a log's first segment):
    /// the first frame of this segment must carry it as its `prev_checksum`.
    pub chain_seed: u64,
    /// When the segment was made (ms since the Unix epoch): the time of the newest record of
    /// the segment before it, which retention by time goes by.
    pub created_ms: u64,
}

impl SegmentHeader {
    /// The header's bytes (the first `SEGMENT_HEADER_BYTES` of the header block).
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
        out[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.shard_id.to_le_bytes());
        out[16..24].copy_from_slice(&self.base_seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.chain_seed.to_le_bytes());
        out[32..36].copy_from_slice(&(BLOCK_BYTES as u32).to_le_bytes());
        out[40..48].copy_from_slice(&self.created_ms.to_le_bytes());
        let checksum = xxhash_rust::xxh3::xxh3_64(&out[..SEGMENT_CHECKSUM_OFFSET]);
        out[SEGMENT_CHECKSUM_OFFSET..].copy_from_slice(&checksum.to_le_bytes());
        out
    }

    /// Decodes and checks a header.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderDefect> {
        if bytes.len() < SEGMENT_HEADER_BYTES {
            return Err(HeaderDefect::Invalid("segment header is cut short"));
        }
        if le_u64(bytes, 0) != SEGMENT_MAGIC {
            return Err(HeaderDefect::Invalid("no segment magic"));
        }
        if xxhash_rust::xxh3::xxh3_64(&bytes[..SEGMENT_CHECKSUM_OFFSET]) != le_u64(bytes, SEGMENT_CHECKSUM_OFFSET) {
            return Err(HeaderDefect::Invalid("segment header checksum mismatch"));
        }
        let version = le_u16(bytes, 8);
        if version != SEGMENT_VERSION {
            return Err(HeaderDefect::Version(version));
        }
        if le_u32(bytes, 32) as u64 != BLOCK_BYTES {
            return Err(HeaderDefect::Invalid("segment block size differs from this build's"));
        }
        Ok(SegmentHeader {
            shard_id: le_u32(bytes, 12),
            base_seq: le_u64(bytes, 16),
            chain_seed: le_u64(bytes, 24),
            created_ms: le_u64(bytes, 40),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_log_order_and_parse_back() {
        let names: Vec<String> = [0u64, 9, 10, 123_456, u64::MAX].iter().map(|&s| file_name(s)).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for (name, seq) in names.iter().zip([0u64, 9, 10, 123_456, u64::MAX]) {
            assert_eq!(parse_file_name(name), Some(seq));
        }
        assert_eq!(parse_file_name("00000000000000000001.log.tmp"), None);
        assert_eq!(parse_file_name("1.log"), None);
    }

    #[test]
    fn header_round_trips_and_detects_flips() {
        let header =
            SegmentHeader { shard_id: 3, base_seq: 77, chain_seed: 0xdead_beef, created_ms: 1_700_000_000_000 };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        for bit in 0..SEGMENT_HEADER_BYTES * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&flipped).is_err(), "bit {bit} flip not detected");
        }
    }
}
