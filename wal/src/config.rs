//! What a log may hold and how it commits: every limit of the log in one place.
//!
//! Limits are checked together by [`WalConfig::validate`] before anything is opened, so a frame
//! always fits in an empty segment and a record always fits in a frame. The sizes they are
//! checked against (block, headers, the largest any configuration may allow) are the on-disk
//! layout's, in `layout`, where compile-time assertions tie them together.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::layout::{
    align_up, BLOCK_BYTES, FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_LIMIT, PIECE_HEADER_BYTES, RECORD_PREFIX_BYTES,
    SEGMENT_BYTES_LIMIT,
};

/// The most free segments a log may keep (`WalConfig::recycled_segments_max`).
const RECYCLED_SEGMENTS_LIMIT: usize = 64;

/// How much an acknowledgement promises, and so what a crash may lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledge a record after its frame's write *and* fdatasync completed, like
    /// `write()` + `fdatasync()`. A crash loses nothing that was acknowledged.
    Sync,
    /// Acknowledge after the write completed, like a bare `write()`; fdatasync runs every
    /// `sync_interval` (and when a segment is sealed or the log closes). A crash of the process
    /// loses nothing (O_DIRECT writes bypass the page cache), but a power loss or a device
    /// failure may lose records acknowledged in the last `sync_interval`, always a suffix.
    Buffered { sync_interval: Duration },
}

/// Whether frame payloads are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Payloads are stored as they are.
    None,
    /// Each piece of at least 512 bytes of records is compressed with LZ4 (`LZ4_MIN_BYTES`),
    /// and stored compressed only when that saves at least an eighth of its size.
    Lz4,
}

/// How segment files get their space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preallocation {
    /// The next segment is created ahead of need, reserved with `fallocate` and filled with
    /// zeros, in the background. Appends then overwrite blocks the filesystem already counts as
    /// written, so fdatasync flushes data alone, without a metadata journal commit: on the
    /// measured disk that nearly doubles fdatasyncs per second. Each segment is written twice.
    Zeroed,
    /// Segments are reserved with `fallocate` when created; the first write to each block
    /// still changes extent metadata, which fdatasync must journal.
    Reserved,
}

/// The smallest payload worth trying to compress.
pub(crate) const LZ4_MIN_BYTES: usize = 512;

/// Configuration of one write-ahead log.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// Written into every segment header; a segment of another shard is refused on open.
    pub shard_id: u32,
    /// A segment is sealed and a new one begun once the next frame would not fit.
    pub segment_bytes: u64,
    /// Largest uncompressed payload of one frame; a flush larger than this spans frames.
    pub frame_payload_bytes_max: u32,
    /// A frame's records are cut into pieces of at least this many raw bytes (the last piece
    /// of a frame may be smaller), each compressed and checksummed on its own: a point read
    /// reads and decompresses one piece. Smaller pieces make point reads cheaper and
    /// compress less well.
    pub piece_raw_bytes: u32,
    /// Largest single record.
    pub record_bytes_max: u32,
    /// Most record bytes (with their length prefixes) waiting for the next flush.
    pub pending_bytes_max: usize,
    /// Most records waiting for the next flush.
    pub pending_records_max: usize,
    /// What an acknowledgement promises.
    pub durability: Durability,
    /// Whether payloads are compressed.
    pub compression: Compression,
    /// How segment files get their space.
    pub preallocation: Preallocation,
    /// Size of the reads made when scanning the log sequentially (recovery, iteration).
    pub read_chunk_bytes: usize,
    /// Distance in bytes between entries of a segment's sparse sequence-number index.
    pub index_interval_bytes: u64,
    /// Bytes of the latest acknowledged records kept in memory for readers that keep up with
    /// the writer (a tailing consumer, a read of a record just written): they read no device.
    /// 0 keeps none.
    pub recent_frames_bytes: usize,
    /// Most segments that retention removed kept as free files, to be made the next segments
    /// instead of new files (`recycle.rs`): at most this many times `segment_bytes` of disk
    /// held beside the log. 0 removes every segment retention takes.
    pub recycled_segments_max: usize,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            shard_id: 0,
            segment_bytes: 128 << 20,
            frame_payload_bytes_max: 1 << 20,
            piece_raw_bytes: 4 << 10,
            record_bytes_max: 256 << 10,
            pending_bytes_max: 16 << 20,
            pending_records_max: 1 << 18,
            durability: Durability::Sync,
            compression: Compression::Lz4,
            preallocation: Preallocation::Zeroed,
            read_chunk_bytes: 1 << 20,
            index_interval_bytes: 64 << 10,
            recent_frames_bytes: 8 << 20,
            recycled_segments_max: 4,
        }
    }
}

impl WalConfig {
    /// Largest number of bytes one frame occupies on disk, padding included: every piece
    /// but the last holds at least `piece_raw_bytes`, and a piece is stored compressed only
    /// when that makes it smaller.
    pub fn frame_disk_bytes_max(&self) -> u64 {
        let payload = self.frame_payload_bytes_max as u64;
        let pieces = payload / self.piece_raw_bytes.max(1) as u64 + 1;
        align_up(FRAME_HEADER_BYTES as u64 + payload + pieces * PIECE_HEADER_BYTES as u64)
    }

    /// Checks that the limits fit together; every open and every create calls it.
    pub fn validate(&self) -> Result<()> {
        let fail = |why: String| Err(Error::InvalidConfig(why));
        if !self.segment_bytes.is_multiple_of(BLOCK_BYTES) {
            return fail(format!("segment_bytes {} is not a multiple of {BLOCK_BYTES}", self.segment_bytes));
        }
        if self.segment_bytes < BLOCK_BYTES + self.frame_disk_bytes_max() {
            return fail(format!(
                "segment_bytes {} cannot hold its header block and one frame of {} bytes",
                self.segment_bytes,
                self.frame_disk_bytes_max()
            ));
        }
        if self.segment_bytes > SEGMENT_BYTES_LIMIT {
            return fail(format!("segment_bytes {} is above 2^40", self.segment_bytes));
        }
        let record_framed = self.record_bytes_max as u64 + RECORD_PREFIX_BYTES as u64;
        if record_framed > self.frame_payload_bytes_max as u64 {
            return fail(format!(
                "record_bytes_max {} does not fit a frame payload of {}",
                self.record_bytes_max, self.frame_payload_bytes_max
            ));
        }
        if self.frame_payload_bytes_max > FRAME_PAYLOAD_BYTES_LIMIT {
            return fail(format!("frame_payload_bytes_max {} is above 64 MiB", self.frame_payload_bytes_max));
        }
        if (self.pending_bytes_max as u64) < record_framed || self.pending_records_max == 0 {
            return fail("pending limits cannot hold one record".into());
        }
        if self.piece_raw_bytes == 0 || self.piece_raw_bytes > self.frame_payload_bytes_max {
            return fail(format!(
                "piece_raw_bytes {} must be above 0 and at most frame_payload_bytes_max {}",
                self.piece_raw_bytes, self.frame_payload_bytes_max
            ));
        }
        if self.read_chunk_bytes < BLOCK_BYTES as usize || self.index_interval_bytes == 0 {
            return fail("read_chunk_bytes must be at least one block and index_interval_bytes above 0".into());
        }
        if self.recycled_segments_max > RECYCLED_SEGMENTS_LIMIT {
            return fail(format!(
                "recycled_segments_max {} is above {RECYCLED_SEGMENTS_LIMIT}",
                self.recycled_segments_max
            ));
        }
        if let Durability::Buffered { sync_interval } = self.durability {
            if sync_interval.is_zero() {
                return fail("Buffered sync_interval must be above zero (use Durability::Sync)".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        WalConfig::default().validate().unwrap();
    }

    #[test]
    fn segment_too_small_for_a_frame_is_refused() {
        let config = WalConfig { segment_bytes: 64 << 10, ..WalConfig::default() };
        assert!(matches!(config.validate(), Err(Error::InvalidConfig(_))));
    }

    #[test]
    fn record_larger_than_frame_is_refused() {
        let config = WalConfig { record_bytes_max: 1 << 20, ..WalConfig::default() };
        assert!(matches!(config.validate(), Err(Error::InvalidConfig(_))));
    }
}
