//! The frame: one group-committed batch of records as it lies on disk.
//!
//! A frame is a 64-byte header and a payload of pieces (`piece`), starting on a block
//! boundary and padded with zeros to the next one (layout in `docs/FORMAT.md`). The header's
//! checksum covers the header and the stored payload and is chained: each header also carries
//! the previous frame's checksum, so a frame is valid on its own (its checksum) and in place
//! (its predecessor's checksum), and a frame that was skipped or swapped is caught.
//!
//! Sealing cuts a frame's records into pieces; decoding checks the header before anything is
//! allocated (every length against the configured limit), then the checksum, then every piece
//! in sequence, which together must hold exactly the frame's records.

use xxhash_rust::xxh3::Xxh3;

use crate::config::Compression;
use crate::defect::FrameDefect;
use crate::layout::{
    le_u16, le_u32, le_u64, FRAME_CHECKSUM_OFFSET, FRAME_HEADER_BYTES, FRAME_MAGIC, FRAME_PAYLOAD_BYTES_LIMIT,
    FRAME_VERSION, PIECE_HEADER_BYTES, RECORD_PREFIX_BYTES,
};
use crate::piece::{decode_piece_into, seal_piece, PieceSpan};
use crate::record::record_len_at;

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
        out[FRAME_CHECKSUM_OFFSET..].copy_from_slice(&self.checksum.to_le_bytes());
        out
    }

    /// Decodes and bounds-checks a header; the checksum is checked by `verify`.
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
            checksum: le_u64(bytes, FRAME_CHECKSUM_OFFSET),
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
pub(crate) fn checksum(header_bytes: &[u8], stored_payload: &[u8]) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(&header_bytes[..FRAME_CHECKSUM_OFFSET]);
    hasher.update(stored_payload);
    hasher.digest()
}

/// Checks the checksum of a decoded header against its bytes and payload.
pub(crate) fn verify(header: &FrameHeader, header_bytes: &[u8], stored_payload: &[u8]) -> Result<(), FrameDefect> {
    if stored_payload.len() != header.stored_len as usize {
        return Err(FrameDefect::Short);
    }
    if checksum(header_bytes, stored_payload) != header.checksum {
        return Err(FrameDefect::Checksum);
    }
    Ok(())
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

/// The raw payload of a verified frame, decoded piece by piece into `scratch` (cleared
/// first): every piece checked, the pieces in sequence, together exactly the frame's records.
/// Where each piece lies is left in `pieces` (cleared first).
pub(crate) fn raw_payload<'a>(
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

/// Decodes a whole frame from `bytes` (header at 0): header, checksum, pieces and records.
/// For tests and fuzzing; the log itself decodes in steps as bytes arrive.
#[cfg(any(test, feature = "testing"))]
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
    Ok((header, crate::record::records(raw).map(<[u8]>::to_vec).collect()))
}

/// A frame over `records` cut into pieces of `piece_raw_bytes`, and where its pieces lie: what
/// the codecs' tests take apart.
#[cfg(test)]
pub(crate) fn sealed_frame(
    records: &[Vec<u8>],
    first_seq: u64,
    compression: Compression,
    piece_raw_bytes: u32,
) -> (Vec<u8>, Vec<crate::piece::PieceSpan>) {
    let mut raw = Vec::new();
    for record in records {
        crate::record::push_record(&mut raw, record);
    }
    let (mut stored, mut pieces) = (Vec::new(), Vec::new());
    let params = SealParams { first_seq, synced_seq: first_seq, prev_checksum: 7, compression, piece_raw_bytes };
    let header = seal_frame(&raw, records.len() as u32, params, &mut stored, &mut pieces);
    let mut bytes = header.encode().to_vec();
    bytes.extend_from_slice(&stored);
    (bytes, pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::piece::{piece_checksum, PieceHeader};
    use proptest::prelude::*;

    fn encode(records: &[Vec<u8>], first_seq: u64, compression: Compression) -> Vec<u8> {
        sealed_frame(records, first_seq, compression, 4096).0
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
    fn a_piece_out_of_sequence_is_refused() {
        let (mut bytes, pieces) = sealed_frame(&[vec![1; 600], vec![2; 600]], 5, Compression::None, 100);
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
