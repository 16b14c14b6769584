//! The frame: one group-committed batch of records as it lies on disk.
//!
//! A frame is a 64-byte header and a payload of pieces, starting on a block boundary and
//! padded with zeros to the next one (layout in `docs/FORMAT.md`). The header's checksum covers
//! the header and the stored payload and is chained: each header also carries the previous
//! frame's checksum, so a frame is valid on its own (its checksum) and in place (its
//! predecessor's checksum), and a frame that was skipped or swapped is caught.
//!
//! A piece is a run of length-prefixed records of a few KiB, with a 32-byte header of its own:
//! optionally LZ4 compressed on its own and checksummed on its own, so that a point read reads
//! the blocks of one piece and decompresses a few KiB, not its whole frame. Sequential readers
//! (recovery, consumers) decode every piece of a frame in order.
//!
//! Decoding trusts nothing: every length is checked against the configured limit before
//! anything is allocated, the decompressed size must be exactly the one declared, and the
//! record lengths must tile the payload exactly.

use xxhash_rust::xxh3::Xxh3;

use crate::config::{Compression, LZ4_MIN_BYTES};

/// "TSFR", little-endian.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"TSFR");
/// The frame format this build writes and reads (2: payloads made of pieces).
pub const FRAME_VERSION: u16 = 2;
/// Size of the frame header.
pub const FRAME_HEADER_BYTES: usize = 64;
/// Size of a piece's header.
pub const PIECE_HEADER_BYTES: usize = 32;
/// Size of the length prefix in front of each record.
pub const RECORD_PREFIX_BYTES: usize = 4;
/// No configuration may allow frame payloads above this.
pub const FRAME_PAYLOAD_BYTES_LIMIT: u32 = 64 << 20;
/// Piece flag: the piece is LZ4 block-compressed.
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
    /// Flags; none are defined for frames (each piece has its own), so zero.
    pub flags: u16,
    /// Records in the payload (at least one).
    pub record_count: u32,
    /// Bytes of payload as stored: its pieces, headers included.
    pub stored_len: u32,
    /// Bytes of the records, with their length prefixes, once every piece is decompressed.
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
        let count_ok = header.record_count >= 1
            && header.record_count as u64 * RECORD_PREFIX_BYTES as u64 <= header.raw_len as u64;
        // Every piece holds a record and stores at most its raw bytes.
        let stored_max = header.raw_len as u64 + header.record_count as u64 * PIECE_HEADER_BYTES as u64;
        let lengths_ok = header.raw_len <= payload_bytes_max.min(FRAME_PAYLOAD_BYTES_LIMIT)
            && header.stored_len as usize >= PIECE_HEADER_BYTES
            && header.stored_len as u64 <= stored_max;
        let seq_ok =
            header.first_seq.checked_add(header.record_count as u64).is_some() && header.synced_seq <= header.first_seq;
        if !reserved_clear || header.flags != 0 || !lengths_ok || !count_ok || !seq_ok {
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

const PIECE_CHECKSUM_OFFSET: usize = 24;
const _: () = assert!(PIECE_CHECKSUM_OFFSET + 8 == PIECE_HEADER_BYTES);

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

/// How a frame is sealed, apart from its records.
#[derive(Debug, Clone, Copy)]
pub struct SealParams {
    pub first_seq: u64,
    pub synced_seq: u64,
    pub prev_checksum: u64,
    pub compression: Compression,
    /// A piece is closed once its records reach this many raw bytes.
    pub piece_raw_bytes: u32,
}

/// Builds the frame over `raw` (length-prefixed records): its stored payload, pieces of at
/// least `piece_raw_bytes` raw bytes each (the last may be smaller), each compressed on its own
/// when that pays, goes to `stored` (cleared first); where each piece lies is appended to
/// `pieces`. Returns the frame's header.
pub fn seal_frame(
    raw: &[u8],
    record_count: u32,
    params: SealParams,
    stored: &mut Vec<u8>,
    pieces: &mut Vec<PieceSpan>,
) -> FrameHeader {
    stored.clear();
    let (mut at, mut seq) = (0usize, params.first_seq);
    let mut sealed_records = 0u32;
    while at < raw.len() {
        let (start, mut count) = (at, 0u32);
        while at < raw.len() && (count == 0 || at - start < params.piece_raw_bytes as usize) {
            at += RECORD_PREFIX_BYTES + record_len_at(raw, at);
            count += 1;
        }
        let span_start = stored.len();
        seal_piece(&raw[start..at], count, seq, params.compression, stored);
        pieces.push(PieceSpan { first_seq: seq, start: span_start as u32, len: (stored.len() - span_start) as u32 });
        seq += count as u64;
        sealed_records += count;
    }
    assert_eq!(sealed_records, record_count, "record_count matches the raw payload");
    let mut header = FrameHeader {
        flags: 0,
        record_count,
        stored_len: stored.len() as u32,
        raw_len: raw.len() as u32,
        first_seq: params.first_seq,
        synced_seq: params.synced_seq,
        prev_checksum: params.prev_checksum,
        checksum: 0,
    };
    header.checksum = checksum(&header.encode(), stored);
    header
}

/// Appends one piece over `raw` (`record_count` records from `first_seq`) to `stored`.
fn seal_piece(raw: &[u8], record_count: u32, first_seq: u64, compression: Compression, stored: &mut Vec<u8>) {
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

fn piece_checksum(header_bytes: &[u8], stored: &[u8]) -> u64 {
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

/// Whether the record lengths in `raw` tile it into exactly `count` records.
fn records_tile(raw: &[u8], count: u32) -> bool {
    let mut at = 0usize;
    for _ in 0..count {
        if raw.len() - at < RECORD_PREFIX_BYTES {
            return false;
        }
        let len = record_len_at(raw, at);
        if raw.len() - at - RECORD_PREFIX_BYTES < len {
            return false;
        }
        at += RECORD_PREFIX_BYTES + len;
    }
    at == raw.len()
}

/// The raw payload of a verified frame, decoded piece by piece into `scratch` (cleared
/// first): every piece checked, the pieces in sequence, together exactly the frame's records.
/// Where each piece lies is left in `pieces` (cleared first).
pub fn raw_payload<'a>(
    header: &FrameHeader,
    stored: &[u8],
    scratch: &'a mut Vec<u8>,
    pieces: &mut Vec<PieceSpan>,
) -> Result<&'a [u8], FrameDefect> {
    scratch.clear();
    pieces.clear();
    scratch.reserve(header.raw_len as usize);
    let (mut at, mut seq) = (0usize, header.first_seq);
    while at < stored.len() {
        let room = header.raw_len - scratch.len() as u32;
        let piece = decode_piece_into(&stored[at..], room, scratch)?;
        if piece.first_seq != seq {
            return Err(FrameDefect::Records);
        }
        pieces.push(PieceSpan { first_seq: seq, start: at as u32, len: piece.piece_bytes() as u32 });
        seq = piece.end_seq();
        at += piece.piece_bytes();
    }
    if scratch.len() != header.raw_len as usize || seq != header.end_seq() {
        return Err(FrameDefect::Records);
    }
    Ok(&scratch[..])
}

/// The records of a raw payload already checked by [`raw_payload`] or [`decode_piece_into`].
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

/// Decodes a whole frame from `bytes` (header at 0): header, checksum, pieces and records.
/// For tests and fuzzing; the log itself decodes in steps as bytes arrive.
pub fn decode_frame(bytes: &[u8], payload_bytes_max: u32) -> Result<(FrameHeader, Vec<Vec<u8>>), FrameDefect> {
    let header = FrameHeader::decode(bytes, payload_bytes_max)?;
    let end = header.frame_bytes() as usize;
    if bytes.len() < end {
        return Err(FrameDefect::Short);
    }
    let stored = &bytes[FRAME_HEADER_BYTES..end];
    verify(&header, bytes, stored)?;
    let (mut scratch, mut pieces) = (Vec::new(), Vec::new());
    let raw = raw_payload(&header, stored, &mut scratch, &mut pieces)?;
    Ok((header, records(raw).map(<[u8]>::to_vec).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(records: &[Vec<u8>], first_seq: u64, compression: Compression) -> Vec<u8> {
        encode_pieces(records, first_seq, compression, 4096).0
    }

    fn encode_pieces(
        records: &[Vec<u8>],
        first_seq: u64,
        compression: Compression,
        piece_raw_bytes: u32,
    ) -> (Vec<u8>, Vec<PieceSpan>) {
        let mut raw = Vec::new();
        for record in records {
            push_record(&mut raw, record);
        }
        let (mut stored, mut pieces) = (Vec::new(), Vec::new());
        let params = SealParams { first_seq, synced_seq: first_seq, prev_checksum: 7, compression, piece_raw_bytes };
        let header = seal_frame(&raw, records.len() as u32, params, &mut stored, &mut pieces);
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(&stored);
        (bytes, pieces)
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
        fn every_piece_decodes_on_its_own_to_its_records(
            records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..60),
            piece_raw_bytes in 1u32..2048,
            first_seq in 0u64..1 << 40,
        ) {
            let records: Vec<Vec<u8>> = records.iter().map(|r| vec![r.len() as u8; r.len()]).collect();
            let (bytes, pieces) = encode_pieces(&records, first_seq, Compression::Lz4, piece_raw_bytes);
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

    fn records_of(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
        records(raw)
    }

    #[test]
    fn compressible_payload_is_stored_compressed() {
        let records = vec![vec![b'a'; 4000]; 4];
        let bytes = encode(&records, 0, Compression::Lz4);
        let header = FrameHeader::decode(&bytes, 1 << 20).unwrap();
        let piece = PieceHeader::decode(&bytes[FRAME_HEADER_BYTES..], 1 << 20).unwrap();
        assert_eq!(piece.flags & FLAG_LZ4, FLAG_LZ4);
        assert_eq!(piece.record_count, 2, "a piece closes once it reaches 4096 raw bytes");
        assert!(header.stored_len < header.raw_len / 8);
    }

    #[test]
    fn incompressible_payload_is_stored_raw() {
        let mut rng = crate::disk::SplitMix64::new(1);
        let record: Vec<u8> = (0..4000).map(|_| rng.next_u64() as u8).collect();
        let bytes = encode(&[record], 0, Compression::Lz4);
        let piece = PieceHeader::decode(&bytes[FRAME_HEADER_BYTES..], 1 << 20).unwrap();
        assert_eq!(piece.flags, 0);
        assert_eq!(piece.stored_len, piece.raw_len);
    }

    #[test]
    fn a_piece_out_of_sequence_is_refused() {
        let (mut bytes, pieces) = encode_pieces(&[vec![1; 600], vec![2; 600]], 5, Compression::None, 100);
        assert_eq!(pieces.len(), 2);
        // Rewrite the second piece's first_seq (and its checksum, and the frame's) to skip one.
        let at = FRAME_HEADER_BYTES + pieces[1].start as usize;
        let mut piece = PieceHeader::decode(&bytes[at..], 1 << 20).unwrap();
        piece.first_seq += 1;
        piece.checksum = piece_checksum(&piece.encode(), &bytes[at + PIECE_HEADER_BYTES..at + pieces[1].len as usize]);
        bytes[at..at + PIECE_HEADER_BYTES].copy_from_slice(&piece.encode());
        let mut frame = FrameHeader::decode(&bytes, 1 << 20).unwrap();
        frame.checksum = checksum(&frame.encode(), &bytes[FRAME_HEADER_BYTES..]);
        bytes[..FRAME_HEADER_BYTES].copy_from_slice(&frame.encode());
        assert_eq!(decode_frame(&bytes, 1 << 20).unwrap_err(), FrameDefect::Records);
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
