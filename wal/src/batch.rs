//! The frame: one group-committed batch of records as it lies on disk.
//!
//! A frame is a 64-byte header and a payload of length-prefixed records, optionally LZ4
//! compressed, starting on a block boundary and padded with zeros to the next one (layout in
//! `docs/FORMAT.md`). The header's checksum covers the header and the stored payload and is
//! chained: each header also carries the previous frame's checksum, so a frame is valid on its
//! own (its checksum) and in place (its predecessor's checksum), and a frame that was skipped
//! or swapped is caught.
//!
//! Decoding trusts nothing: every length is checked against the configured limit before
//! anything is allocated, the decompressed size must be exactly the one declared, and the
//! record lengths must tile the payload exactly.

use xxhash_rust::xxh3::Xxh3;

use crate::config::{Compression, LZ4_MIN_BYTES};

/// "TSFR", little-endian.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"TSFR");
/// The frame format this build writes and reads.
pub const FRAME_VERSION: u16 = 1;
/// Size of the frame header.
pub const FRAME_HEADER_BYTES: usize = 64;
/// Size of the length prefix in front of each record.
pub const RECORD_PREFIX_BYTES: usize = 4;
/// No configuration may allow frame payloads above this.
pub const FRAME_PAYLOAD_BYTES_LIMIT: u32 = 64 << 20;
/// Flag: the payload is LZ4 block-compressed.
pub const FLAG_LZ4: u16 = 1;

const CHECKSUM_OFFSET: usize = 56;
const _: () = assert!(CHECKSUM_OFFSET + 8 == FRAME_HEADER_BYTES);
const _: () = assert!(FRAME_HEADER_BYTES as u64 <= crate::config::BLOCK_BYTES);

/// Why bytes are not a valid frame. Recovery decides whether that is a torn tail or corruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameDefect {
    /// Fewer bytes than a header or than the declared payload.
    Short,
    /// The header is all zeros: nothing was ever written here (the end of the log).
    Unwritten,
    /// The magic number is absent.
    NoMagic,
    /// A version this build does not read.
    Version,
    /// A length, count, flag or reserved field out of its bounds.
    Header,
    /// The checksum does not match the bytes.
    Checksum,
    /// The compressed payload does not decompress to the declared size.
    Compression,
    /// The record lengths do not tile the payload into the declared count.
    Records,
}

impl FrameDefect {
    /// A sentence for error messages.
    pub fn reason(self) -> &'static str {
        match self {
            FrameDefect::Short => "frame is cut short",
            FrameDefect::Unwritten => "unwritten (zero) block",
            FrameDefect::NoMagic => "no frame magic",
            FrameDefect::Version => "unknown frame version",
            FrameDefect::Header => "frame header field out of bounds",
            FrameDefect::Checksum => "frame checksum mismatch",
            FrameDefect::Compression => "frame payload does not decompress to its declared size",
            FrameDefect::Records => "record lengths do not match the frame",
        }
    }
}

/// The decoded header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// `FLAG_*` bits.
    pub flags: u16,
    /// Records in the payload (at least one).
    pub record_count: u32,
    /// Bytes of payload as stored (compressed or not).
    pub stored_len: u32,
    /// Bytes of payload once decompressed.
    pub raw_len: u32,
    /// Sequence number of the first record.
    pub first_seq: u64,
    /// Every record below this sequence number was durable when this frame was written.
    pub synced_seq: u64,
    /// Checksum of the frame before this one (or the segment's chain seed).
    pub prev_checksum: u64,
    /// Checksum of header bytes 0..56 and the stored payload.
    pub checksum: u64,
}

impl FrameHeader {
    /// Bytes the frame occupies on disk, header and payload, before padding.
    pub fn frame_bytes(&self) -> u64 {
        FRAME_HEADER_BYTES as u64 + self.stored_len as u64
    }

    /// Sequence number after the frame's last record.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + self.record_count as u64
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut out = [0u8; FRAME_HEADER_BYTES];
        out[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&FRAME_VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..12].copy_from_slice(&self.record_count.to_le_bytes());
        out[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        out[16..20].copy_from_slice(&self.raw_len.to_le_bytes());
        out[24..32].copy_from_slice(&self.first_seq.to_le_bytes());
        out[32..40].copy_from_slice(&self.synced_seq.to_le_bytes());
        out[40..48].copy_from_slice(&self.prev_checksum.to_le_bytes());
        out[CHECKSUM_OFFSET..].copy_from_slice(&self.checksum.to_le_bytes());
        out
    }

    /// Decodes and bounds-checks a header; the checksum is checked by [`verify`].
    pub fn decode(bytes: &[u8], payload_bytes_max: u32) -> Result<FrameHeader, FrameDefect> {
        if bytes.len() < FRAME_HEADER_BYTES {
            return Err(FrameDefect::Short);
        }
        if le_u32(bytes, 0) != FRAME_MAGIC {
            let unwritten = bytes[..FRAME_HEADER_BYTES].iter().all(|&b| b == 0);
            return Err(if unwritten { FrameDefect::Unwritten } else { FrameDefect::NoMagic });
        }
        if le_u16(bytes, 4) != FRAME_VERSION {
            return Err(FrameDefect::Version);
        }
        let header = FrameHeader {
            flags: le_u16(bytes, 6),
            record_count: le_u32(bytes, 8),
            stored_len: le_u32(bytes, 12),
            raw_len: le_u32(bytes, 16),
            first_seq: le_u64(bytes, 24),
            synced_seq: le_u64(bytes, 32),
            prev_checksum: le_u64(bytes, 40),
            checksum: le_u64(bytes, CHECKSUM_OFFSET),
        };
        let reserved_clear = le_u32(bytes, 20) == 0 && le_u64(bytes, 48) == 0;
        let compressed = header.flags & FLAG_LZ4 != 0;
        let lengths_ok = header.raw_len <= payload_bytes_max.min(FRAME_PAYLOAD_BYTES_LIMIT)
            && if compressed { header.stored_len < header.raw_len } else { header.stored_len == header.raw_len };
        let count_ok = header.record_count >= 1
            && header.record_count as u64 * RECORD_PREFIX_BYTES as u64 <= header.raw_len as u64;
        let seq_ok =
            header.first_seq.checked_add(header.record_count as u64).is_some() && header.synced_seq <= header.first_seq;
        if !reserved_clear || header.flags & !FLAG_LZ4 != 0 || !lengths_ok || !count_ok || !seq_ok {
            return Err(FrameDefect::Header);
        }
        Ok(header)
    }
}

/// The checksum of a frame: xxh3-64 over header bytes 0..56 and the stored payload.
pub fn checksum(header_bytes: &[u8], stored_payload: &[u8]) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(&header_bytes[..CHECKSUM_OFFSET]);
    hasher.update(stored_payload);
    hasher.digest()
}

/// Checks the checksum of a decoded header against its bytes and payload.
pub fn verify(header: &FrameHeader, header_bytes: &[u8], stored_payload: &[u8]) -> Result<(), FrameDefect> {
    if stored_payload.len() != header.stored_len as usize {
        return Err(FrameDefect::Short);
    }
    if checksum(header_bytes, stored_payload) != header.checksum {
        return Err(FrameDefect::Checksum);
    }
    Ok(())
}

/// Appends one record, with its length prefix, to a raw payload being gathered.
pub fn push_record(raw: &mut Vec<u8>, record: &[u8]) {
    let len = u32::try_from(record.len()).expect("record length checked against record_bytes_max");
    raw.extend_from_slice(&len.to_le_bytes());
    raw.extend_from_slice(record);
}

/// Length of the record whose prefix starts at `at` in a raw payload.
pub fn record_len_at(raw: &[u8], at: usize) -> usize {
    le_u32(raw, at) as usize
}

/// Builds the header of a frame over `raw` (length-prefixed records) and returns it with the
/// payload to store: `raw` itself or its LZ4 compression, left in `scratch`.
pub fn seal_frame<'a>(
    raw: &'a [u8],
    record_count: u32,
    first_seq: u64,
    synced_seq: u64,
    prev_checksum: u64,
    compression: Compression,
    scratch: &'a mut Vec<u8>,
) -> (FrameHeader, &'a [u8]) {
    let mut flags = 0;
    let mut stored: &[u8] = raw;
    if compression == Compression::Lz4 && raw.len() >= LZ4_MIN_BYTES {
        scratch.resize(lz4_flex::block::get_maximum_output_size(raw.len()), 0);
        let compressed_len =
            lz4_flex::block::compress_into(raw, scratch).expect("output sized by get_maximum_output_size");
        if compressed_len <= raw.len() - raw.len() / 8 {
            flags = FLAG_LZ4;
            stored = &scratch[..compressed_len];
        }
    }
    let mut header = FrameHeader {
        flags,
        record_count,
        stored_len: stored.len() as u32,
        raw_len: raw.len() as u32,
        first_seq,
        synced_seq,
        prev_checksum,
        checksum: 0,
    };
    header.checksum = checksum(&header.encode(), stored);
    (header, stored)
}

/// The raw (decompressed) payload of a verified frame, checked to hold exactly
/// `record_count` records. `scratch` holds the decompressed bytes when the frame is compressed.
pub fn raw_payload<'a>(
    header: &FrameHeader,
    stored: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8], FrameDefect> {
    let raw: &[u8] = if header.flags & FLAG_LZ4 != 0 {
        scratch.clear();
        scratch.resize(header.raw_len as usize, 0);
        match lz4_flex::block::decompress_into(stored, scratch) {
            Ok(n) if n == header.raw_len as usize => &scratch[..],
            _ => return Err(FrameDefect::Compression),
        }
    } else {
        stored
    };
    let mut at = 0usize;
    for _ in 0..header.record_count {
        if raw.len() - at < RECORD_PREFIX_BYTES {
            return Err(FrameDefect::Records);
        }
        let len = record_len_at(raw, at);
        if raw.len() - at - RECORD_PREFIX_BYTES < len {
            return Err(FrameDefect::Records);
        }
        at += RECORD_PREFIX_BYTES + len;
    }
    if at != raw.len() {
        return Err(FrameDefect::Records);
    }
    Ok(raw)
}

/// The records of a raw payload already checked by [`raw_payload`].
pub fn records(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= raw.len() {
            return None;
        }
        let len = record_len_at(raw, at);
        let record = &raw[at + RECORD_PREFIX_BYTES..at + RECORD_PREFIX_BYTES + len];
        at += RECORD_PREFIX_BYTES + len;
        Some(record)
    })
}

pub(crate) fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}

pub(crate) fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes a whole frame from `bytes` (header at 0): header, checksum and records. For tests
/// and fuzzing; the log itself decodes in steps as bytes arrive.
pub fn decode_frame(bytes: &[u8], payload_bytes_max: u32) -> Result<(FrameHeader, Vec<Vec<u8>>), FrameDefect> {
    let header = FrameHeader::decode(bytes, payload_bytes_max)?;
    let end = header.frame_bytes() as usize;
    if bytes.len() < end {
        return Err(FrameDefect::Short);
    }
    let stored = &bytes[FRAME_HEADER_BYTES..end];
    verify(&header, bytes, stored)?;
    let mut scratch = Vec::new();
    let raw = raw_payload(&header, stored, &mut scratch)?;
    Ok((header, records(raw).map(<[u8]>::to_vec).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(records: &[Vec<u8>], first_seq: u64, compression: Compression) -> Vec<u8> {
        let mut raw = Vec::new();
        for record in records {
            push_record(&mut raw, record);
        }
        let mut scratch = Vec::new();
        let (header, stored) =
            seal_frame(&raw, records.len() as u32, first_seq, first_seq, 7, compression, &mut scratch);
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(stored);
        bytes
    }

    proptest! {
        #[test]
        fn frame_round_trips(
            records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..40),
            repetitive in any::<bool>(),
            first_seq in 0u64..u64::MAX / 2,
        ) {
            let records: Vec<Vec<u8>> = if repetitive {
                records.iter().map(|r| vec![r.len() as u8; r.len()]).collect()
            } else {
                records
            };
            for compression in [Compression::None, Compression::Lz4] {
                let bytes = encode(&records, first_seq, compression);
                let (header, decoded) = decode_frame(&bytes, 1 << 20).unwrap();
                prop_assert_eq!(header.first_seq, first_seq);
                prop_assert_eq!(header.prev_checksum, 7);
                prop_assert_eq!(&decoded, &records);
            }
        }

        #[test]
        fn any_single_bit_flip_is_detected(
            records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..8),
            bit in any::<prop::sample::Index>(),
        ) {
            let mut bytes = encode(&records, 42, Compression::None);
            let bit = bit.index(bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_frame(&bytes, 1 << 20).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame(&bytes, 1 << 20);
        }
    }

    #[test]
    fn compressible_payload_is_stored_compressed() {
        let records = vec![vec![b'a'; 4000]; 4];
        let bytes = encode(&records, 0, Compression::Lz4);
        let header = FrameHeader::decode(&bytes, 1 << 20).unwrap();
        assert_eq!(header.flags & FLAG_LZ4, FLAG_LZ4);
        assert!(header.stored_len < header.raw_len / 8);
    }

    #[test]
    fn incompressible_payload_is_stored_raw() {
        let mut rng = crate::disk::SplitMix64::new(1);
        let record: Vec<u8> = (0..4000).map(|_| rng.next_u64() as u8).collect();
        let bytes = encode(&[record], 0, Compression::Lz4);
        let header = FrameHeader::decode(&bytes, 1 << 20).unwrap();
        assert_eq!(header.flags, 0);
    }

    #[test]
    fn oversized_declared_length_is_refused_before_allocation() {
        let mut bytes = encode(&[vec![1, 2, 3]], 0, Compression::None);
        bytes[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(FrameHeader::decode(&bytes, 1 << 20), Err(FrameDefect::Header));
    }

    #[test]
    fn zeros_read_as_unwritten() {
        assert_eq!(FrameHeader::decode(&[0u8; 64], 1 << 20), Err(FrameDefect::Unwritten));
        assert_eq!(FrameHeader::decode(&[1u8; 64], 1 << 20), Err(FrameDefect::NoMagic));
    }
}
