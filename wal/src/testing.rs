//! What tests and fuzz targets reach inside the log for, with the `testing` feature: the
//! codecs of frames, pieces, records and segment headers, to build and take apart the bytes of
//! a log without opening one.
//!
//! The same feature builds the simulated disk at its own paths (`disk::SimDisk`, `disk::Fault`,
//! `disk::SplitMix64`) and the methods only tests call (`Wal::read`, `Wal::next_seq`,
//! `Wal::index_footprint`).
//! Nothing here is for a release build: owners of a log use the crate root.

pub use crate::defect::FrameDefect;
pub use crate::frame::{decode_frame, seal_frame, FrameHeader, SealParams};
pub use crate::layout::{FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
pub use crate::piece::{decode_piece_into, PieceHeader, PieceSpan};
pub use crate::record::{push_record, records};
pub use crate::segment::{file_name, HeaderDefect, SegmentHeader, PREPARED_NAME};

/// An acknowledgement of record `seq` in a one-block piece at the start of segment 0: for
/// tests that apply records without writing them.
pub fn appended_at(seq: u64) -> crate::Appended {
    crate::Appended { seq, piece: crate::PiecePos::new(0, 0, 1) }
}
