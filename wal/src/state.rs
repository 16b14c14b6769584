//! What the flusher and the readers share: the segments, the queue, the visible end, counters.
//!
//! Everything here lives on one executor thread, so plain `Cell`/`RefCell` suffice; no borrow
//! is held across an await. The flusher is the only writer of segment ends and of
//! `visible_end`, and it moves them forward only after the bytes below them are acknowledged.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::commit::Queue;
use crate::config::WalConfig;
use crate::disk::Disk;
use crate::layout::BLOCK_BYTES;
use crate::recent::RecentFrames;
use crate::recycle::FreeSegments;

/// One segment file and what is known of its contents.
pub(crate) struct SegmentState<F> {
    pub base_seq: u64,
    pub name: String,
    pub file: Rc<F>,
    /// When the segment was made (from its header).
    pub created_ms: u64,
    /// Sparse index: (first sequence number of a frame, its offset), ascending, starting with
    /// the segment's first frame position; one entry per `index_interval_bytes` of log.
    index: RefCell<Vec<(u64, u64)>>,
    /// Offset just past the last acknowledged frame (block aligned).
    pub end_offset: Cell<u64>,
    /// Sequence number after the last acknowledged record in this segment.
    pub end_seq: Cell<u64>,
}

impl<F> SegmentState<F> {
    pub(crate) fn new(base_seq: u64, name: String, file: Rc<F>, created_ms: u64) -> Self {
        SegmentState {
            base_seq,
            name,
            file,
            created_ms,
            index: RefCell::new(vec![(base_seq, BLOCK_BYTES)]),
            end_offset: Cell::new(BLOCK_BYTES),
            end_seq: Cell::new(base_seq),
        }
    }

    /// Records an acknowledged frame `[first_seq, end_seq)` at `offset`, ending at `next_offset`.
    pub(crate) fn note_frame(&self, first_seq: u64, end_seq: u64, offset: u64, next_offset: u64, interval: u64) {
        assert!(offset >= self.end_offset.get() && first_seq == self.end_seq.get(), "frames are noted in order");
        let mut index = self.index.borrow_mut();
        let last_indexed = index.last().map_or(0, |&(_, at)| at);
        if offset >= last_indexed.saturating_add(interval) {
            index.push((first_seq, offset));
        }
        self.end_offset.set(next_offset);
        self.end_seq.set(end_seq);
    }

    /// Notes a sealed segment that recovery did not scan (all of it lies below the position
    /// the owner replays from): it holds `[base_seq, end_seq)` somewhere below `size`. Its
    /// sparse index is built by its readers (`note_read_frame`).
    pub(crate) fn note_unscanned(&self, end_seq: u64, size: u64) {
        self.end_offset.set(size);
        self.end_seq.set(end_seq);
    }

    /// Adds a frame a reader found at `offset` to the sparse index when it lies an interval or
    /// more past the entry before it and before the entry after it: the parts of a segment that
    /// recovery did not scan (all of a segment below the replay, or the part of the replay's
    /// first segment before the frame its checkpoint named) get their index as they are read,
    /// so that the next reader (each poll of a consumer makes one) starts near the records it
    /// wants, not at the segment's first frame. The index stays sorted, with an entry at most
    /// every interval after each one.
    pub(crate) fn note_read_frame(&self, first_seq: u64, offset: u64, interval: u64) {
        let mut index = self.index.borrow_mut();
        let at = index.partition_point(|&(seq, _)| seq <= first_seq);
        let Some(&(before_seq, before_at)) = at.checked_sub(1).and_then(|before| index.get(before)) else {
            return;
        };
        let before_next = index.get(at).is_none_or(|&(next_seq, next_at)| first_seq < next_seq && offset < next_at);
        if first_seq > before_seq && offset >= before_at.saturating_add(interval) && before_next {
            index.insert(at, (first_seq, offset));
        }
    }

    /// Offset of a frame at or before the one holding `seq`, to scan forward from.
    pub(crate) fn scan_start(&self, seq: u64) -> u64 {
        self.indexed_frame(seq).1
    }

    /// The index's entry for a frame at or before the one holding `seq`: its first record and
    /// its offset.
    pub(crate) fn indexed_frame(&self, seq: u64) -> (u64, u64) {
        let index = self.index.borrow();
        let at = index.partition_point(|&(first, _)| first <= seq);
        index[at.saturating_sub(1)]
    }

    /// Makes the frame at `offset`, whose first record is `first_seq`, the next one noted:
    /// recovery starting from a frame an owner named (`FramePos`) rather than the first.
    pub(crate) fn start_at_frame(&self, first_seq: u64, offset: u64) {
        assert!(self.end_seq.get() == self.base_seq && offset > BLOCK_BYTES, "only a segment not yet scanned");
        self.index.borrow_mut().push((first_seq, offset));
        self.end_offset.set(offset);
        self.end_seq.set(first_seq);
    }

    /// Entries in the sparse index (for tests of memory use).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn index_len(&self) -> usize {
        self.index.borrow().len()
    }
}

/// Counters of the log since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Batches taken by the flusher (each one write, and one fdatasync under `Sync`).
    pub flushes: u64,
    /// fdatasync calls on segment files.
    pub fsyncs: u64,
    /// Writes of frames that were durable on completion (`SyncMethod::DsyncWrites`), each
    /// standing in for the fdatasync it made unnecessary.
    pub durable_writes: u64,
    /// Frames written.
    pub frames: u64,
    /// Record bytes (length prefixes included) of the frames written, before compression.
    pub payload_raw_bytes: u64,
    /// The same frames' payloads as stored: their pieces, each compressed where LZ4 saved at
    /// least an eighth of it, headers included.
    pub payload_stored_bytes: u64,
    /// Pieces written.
    pub pieces: u64,
    /// Of them, those stored compressed.
    pub pieces_compressed: u64,
    /// Records acknowledged.
    pub records: u64,
    /// Record bytes acknowledged (without length prefixes).
    pub record_bytes: u64,
    /// Bytes written to segment files, headers and padding included.
    pub disk_bytes: u64,
    /// Segments created.
    pub segments_created: u64,
    /// Segments removed (retention), made free files or deleted.
    pub segments_removed: u64,
    /// Segments made from free files (segments retention removed) instead of new files.
    pub segments_recycled: u64,
    /// Free files waiting to be made segments (now, not a total), each `segment_bytes` on disk.
    pub free_segments: u64,
    /// Frames that readers took from the recent frames in memory instead of the device.
    pub memory_reads: u64,
    /// Point reads of one record (`Wal::read_at`) that went to the device.
    pub point_device_reads: u64,
    /// Frames that readers decoded from the device (read in chunks of `read_chunk_bytes`).
    pub device_frames_read: u64,
    /// Bytes held in memory by the recent frames, records and slots (now, not a total).
    pub recent_frame_bytes: u64,
    /// Flushes made durable in the flush itself (`Durability::Sync`), by the time from the
    /// first write to durable (the writes and their fdatasync, or the `O_DSYNC` writes):
    /// `[i]` counts those under 2^i microseconds (see [`log2_bucket`]).
    pub durable_flush_micros: [u64; HISTOGRAM_BUCKETS],
    /// The sum of those times, in microseconds.
    pub durable_flush_micros_sum: u64,
    /// Flushes by records in them (the group commit's size): `[i]` counts those of under
    /// 2^i records.
    pub flush_records: [u64; HISTOGRAM_BUCKETS],
}

/// Buckets of the log's histograms: powers of two up to 2^23 (8 s in microseconds, 8 M
/// records), the last one open-ended.
pub const HISTOGRAM_BUCKETS: usize = 24;

/// The bucket of `value` in a histogram of powers of two: the smallest `i` with
/// `value < 2^i`, the last bucket for anything larger.
pub fn log2_bucket(value: u64) -> usize {
    ((u64::BITS - value.leading_zeros()) as usize).min(HISTOGRAM_BUCKETS - 1)
}

/// The bucket of a histogram (`counts` per bucket, not cumulative) by which a fraction `q` of
/// its values is counted: the quantile lies under that bucket's bound. `None` for no values.
pub fn quantile_bucket(counts: &[u64], q: f64) -> Option<usize> {
    let total: u64 = counts.iter().sum();
    let wanted = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    counts.iter().position(|count| {
        seen += count;
        seen >= wanted
    })
}

/// What a log's owner sees of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The first record of the segment.
    pub base_seq: u64,
    /// The record after its last one (for the tail segment: after the last acknowledged one).
    pub end_seq: u64,
    /// When it was made.
    pub created_ms: u64,
    /// When its last record was written, as far as the log knows: when the next segment was
    /// made (`None` for the tail segment, still written).
    pub last_write_ms: Option<u64>,
    /// Bytes it takes on disk (segments are made whole).
    pub bytes: u64,
}

pub(crate) struct Shared<D: Disk> {
    pub disk: D,
    pub config: WalConfig,
    pub segments: RefCell<BTreeMap<u64, Rc<SegmentState<D::File>>>>,
    pub queue: RefCell<Queue>,
    /// Records below this are acknowledged and readable.
    pub visible_end: Cell<u64>,
    /// The first record still in the log.
    pub first_seq: Cell<u64>,
    /// Every record below this was fdatasync'd (under `Durability::Buffered`; under `Sync` the
    /// visible end is synced).
    pub synced_end: Cell<u64>,
    pub stats: Cell<WalStats>,
    /// Readers waiting for the visible end to move (long polls), woken when it does.
    pub end_waiters: RefCell<Vec<std::task::Waker>>,
    /// Set when the owner shuts down: waits end at once.
    pub waits_stopped: Cell<bool>,
    /// The last acknowledged frames, for readers that keep up (`recent.rs`).
    pub recent: RefCell<RecentFrames>,
    /// Removed segments kept as free files, for the next rolls (`recycle.rs`).
    pub free: FreeSegments,
}

impl<D: Disk> Shared<D> {
    pub(crate) fn count(&self, update: impl FnOnce(&mut WalStats)) {
        let mut stats = self.stats.get();
        update(&mut stats);
        self.stats.set(stats);
    }

    /// Moves the visible end and wakes every reader waiting for it.
    pub(crate) fn advance_visible_end(&self, end: u64) {
        self.visible_end.set(end);
        for waker in self.end_waiters.take() {
            waker.wake();
        }
    }

    /// The segment that holds `seq`, if it is retained.
    pub(crate) fn segment_for(&self, seq: u64) -> Option<Rc<SegmentState<D::File>>> {
        self.segments.borrow().range(..=seq).next_back().map(|(_, segment)| segment.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_quantile_lies_in_the_bucket_that_counts_its_share() {
        let counts = [0, 60, 0, 39, 1];
        assert_eq!(quantile_bucket(&counts, 0.5), Some(1));
        assert_eq!(quantile_bucket(&counts, 0.6), Some(1));
        assert_eq!(quantile_bucket(&counts, 0.61), Some(3));
        assert_eq!(quantile_bucket(&counts, 0.99), Some(3));
        assert_eq!(quantile_bucket(&counts, 1.0), Some(4));
        assert_eq!(quantile_bucket(&counts, 0.0), Some(1), "the smallest value's bucket");
        assert_eq!(quantile_bucket(&[0, 0], 0.5), None);
    }

    proptest! {
        /// However the index is filled (the flusher's frames in order, an open starting at a
        /// named frame, readers' frames in any order), it stays sorted, holds only frames of
        /// the segment, and sends each reader to a frame at or before the one it wants.
        #[test]
        fn the_sparse_index_stays_sorted_and_sends_readers_back_never_forward(
            blocks in proptest::collection::vec((1u64..5, 1u64..40), 2..120),
            flushed in 0usize..120,
            start in proptest::option::of(1usize..120),
            reads in proptest::collection::vec(0usize..120, 0..200),
            interval in 1u64..5,
        ) {
            let base = 1_000u64;
            // The segment's frames: (first record, offset), each `blocks` long and holding
            // `records`.
            let mut frames = Vec::new();
            let (mut seq, mut offset) = (base, BLOCK_BYTES);
            for (frame_blocks, records) in &blocks {
                frames.push((seq, offset));
                seq += records;
                offset += frame_blocks * BLOCK_BYTES;
            }
            let interval = interval * BLOCK_BYTES;
            let segment = SegmentState::new(base, "segment".into(), Rc::new(()), 0);
            let start = start.filter(|&at| at < frames.len());
            let noted_from = match start {
                Some(at) => {
                    segment.start_at_frame(frames[at].0, frames[at].1);
                    at
                }
                None => 0,
            };
            let noted_to = flushed.clamp(noted_from, frames.len());
            for at in noted_from..noted_to {
                let next = frames.get(at + 1).map_or(offset, |frame| frame.1);
                let end_seq = frames.get(at + 1).map_or(seq, |frame| frame.0);
                segment.note_frame(frames[at].0, end_seq, frames[at].1, next, interval);
            }
            let reads: Vec<usize> = reads.into_iter().filter(|&at| at < noted_to.max(1)).collect();
            for &at in &reads {
                segment.note_read_frame(frames[at].0, frames[at].1, interval);
            }
            // A frame a reader passed is found again from less than an interval before it.
            for &at in &reads {
                let (first, frame_at) = frames[at];
                prop_assert!(frame_at - segment.scan_start(first) < interval, "frame {:?} read, not indexed", frames[at]);
            }
            let index = segment.index.borrow().clone();
            prop_assert_eq!(index[0], (base, BLOCK_BYTES));
            prop_assert!(index.windows(2).all(|pair| pair[0].0 < pair[1].0 && pair[0].1 < pair[1].1), "{:?}", index);
            prop_assert!(index.iter().all(|entry| frames.contains(entry)), "{:?}", index);
            for (first, frame_at) in &frames {
                let found = segment.scan_start(*first);
                prop_assert!(found <= *frame_at, "record {} at {} sent to {}", first, frame_at, found);
            }
        }
    }

    #[test]
    fn a_value_lies_in_the_first_bucket_whose_bound_is_above_it() {
        assert_eq!(log2_bucket(0), 0);
        assert_eq!(log2_bucket(1), 1);
        assert_eq!((log2_bucket(7), log2_bucket(8)), (3, 4));
        assert_eq!(log2_bucket(u64::MAX), HISTOGRAM_BUCKETS - 1);
    }
}
