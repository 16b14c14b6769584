//! The log's on-disk layout: the block, the magic numbers and versions, the sizes of the
//! segment, frame and piece headers and where their checksums sit, the record prefix, the
//! largest sizes any configuration may allow, and the little-endian readers the codecs decode
//! with.
//!
//! Every codec (`segment`, `frame`, `piece`, `record`) and the configuration's limits take
//! these from here rather than from each other, so the byte layout is stated once, next to
//! `docs/FORMAT.md`, and the codecs do not depend on one another to know a size. The relations
//! between the sizes are compile-time assertions.

/// The unit of alignment on disk: every segment header and every frame starts on a block.
pub const BLOCK_BYTES: u64 = 4096;

/// Rounds `bytes` up to a whole number of blocks.
pub(crate) const fn align_up(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

/// "TSSEGMNT", little-endian.
pub(crate) const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"TSSEGMNT");
/// The segment format this build writes and reads (2: the header carries its creation time).
pub(crate) const SEGMENT_VERSION: u16 = 2;
/// Bytes of the segment header that carry fields; the rest of the header block is zeros.
pub const SEGMENT_HEADER_BYTES: usize = 64;
/// Where the segment header's checksum (of the bytes before it) sits.
pub(crate) const SEGMENT_CHECKSUM_OFFSET: usize = 56;
/// No configuration may allow segments above this (offsets stay well inside u64 arithmetic).
pub(crate) const SEGMENT_BYTES_LIMIT: u64 = 1 << 40;

/// "TSFR", little-endian.
pub(crate) const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"TSFR");
/// The frame format this build writes and reads (2: payloads made of pieces).
pub(crate) const FRAME_VERSION: u16 = 2;
/// Size of the frame header.
pub const FRAME_HEADER_BYTES: usize = 64;
/// Where the frame header's checksum (of the bytes before it and the payload) sits.
pub(crate) const FRAME_CHECKSUM_OFFSET: usize = 56;
/// No configuration may allow frame payloads above this.
pub(crate) const FRAME_PAYLOAD_BYTES_LIMIT: u32 = 64 << 20;

/// Size of a piece's header.
pub(crate) const PIECE_HEADER_BYTES: usize = 32;
/// Where the piece header's checksum (of the bytes before it and the piece) sits.
pub(crate) const PIECE_CHECKSUM_OFFSET: usize = 24;
/// Piece flag: the piece is LZ4 block-compressed.
pub(crate) const FLAG_LZ4: u16 = 1;

/// Size of the length prefix in front of each record.
pub(crate) const RECORD_PREFIX_BYTES: usize = 4;

const _: () = assert!(SEGMENT_CHECKSUM_OFFSET + 8 == SEGMENT_HEADER_BYTES);
const _: () = assert!(SEGMENT_HEADER_BYTES as u64 <= BLOCK_BYTES);
const _: () = assert!(FRAME_CHECKSUM_OFFSET + 8 == FRAME_HEADER_BYTES);
const _: () = assert!(FRAME_HEADER_BYTES as u64 <= BLOCK_BYTES);
const _: () = assert!(PIECE_CHECKSUM_OFFSET + 8 == PIECE_HEADER_BYTES);

pub(crate) fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}

pub(crate) fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}
