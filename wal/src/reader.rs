//! Reading the log back: forward iteration from any sequence number, and point reads.
//!
//! A reader never returns a record at or beyond the visible end, so nothing is observed
//! before it is acknowledged. It finds its starting frame through the segment's sparse index,
//! then decodes frames in order
//! through the same checked cursor as recovery; bytes that fail their checks are reported as
//! corruption naming the segment and offset, never skipped.

use std::rc::Rc;

use crate::cursor::{next_frame_offset, FrameCursor};
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::layout::RECORD_PREFIX_BYTES;
use crate::record::record_len_at;
use crate::state::{SegmentState, Shared};

/// A forward iterator over acknowledged records.
pub struct LogReader<D: Disk> {
    shared: Rc<Shared<D>>,
    next_seq: u64,
    chunk_bytes: usize,
    segment: Option<Rc<SegmentState<D::File>>>,
    cursor: Option<FrameCursor<D::File>>,
    offset: u64,
    raw: Vec<u8>,
    raw_at: usize,
    raw_seq: u64,
    raw_end_seq: u64,
}

impl<D: Disk> LogReader<D> {
    pub(crate) fn new(shared: Rc<Shared<D>>, from_seq: u64, chunk_bytes: usize) -> Result<Self> {
        let (first, end) = (shared.first_seq.get(), shared.visible_end.get());
        if from_seq < first || from_seq > end {
            return Err(Error::OutOfRange { seq: from_seq, first, end });
        }
        Ok(LogReader {
            shared,
            next_seq: from_seq,
            chunk_bytes,
            segment: None,
            cursor: None,
            offset: 0,
            raw: Vec::new(),
            raw_at: 0,
            raw_seq: 0,
            raw_end_seq: 0,
        })
    }

    /// The sequence number of the next record this reader returns.
    pub fn position(&self) -> u64 {
        self.next_seq
    }

    /// The next acknowledged record and its sequence number; `None` at the visible end (more
    /// may come later: call again).
    pub async fn next(&mut self) -> Result<Option<(u64, &[u8])>> {
        loop {
            if self.next_seq >= self.shared.visible_end.get() {
                return Ok(None);
            }
            while self.raw_seq < self.raw_end_seq {
                let (seq, at) = (self.raw_seq, self.raw_at);
                let len = record_len_at(&self.raw, at);
                self.raw_at += RECORD_PREFIX_BYTES + len;
                self.raw_seq += 1;
                if seq == self.next_seq {
                    self.next_seq += 1;
                    return Ok(Some((seq, &self.raw[at + RECORD_PREFIX_BYTES..at + RECORD_PREFIX_BYTES + len])));
                }
            }
            self.load_frame().await?;
        }
    }

    fn enter(&mut self, segment: Rc<SegmentState<D::File>>, offset: u64) {
        let config = &self.shared.config;
        self.cursor = Some(FrameCursor::new(segment.file.clone(), 0, self.chunk_bytes, config.frame_payload_bytes_max));
        self.offset = offset;
        self.segment = Some(segment);
    }

    /// Takes the frame that holds `next_seq` into `raw`: from the recent frames in memory if
    /// they hold it, else decoded from the device.
    async fn load_frame(&mut self) -> Result<()> {
        if let Some((first_seq, end_seq, raw)) = self.shared.recent.borrow().find(self.next_seq) {
            self.raw.clear();
            self.raw.extend_from_slice(raw);
            self.raw_at = 0;
            self.raw_seq = first_seq;
            self.raw_end_seq = end_seq;
            // A later read from the device finds its place again through the sparse index.
            self.segment = None;
            self.shared.count(|s| s.memory_reads += 1);
            return Ok(());
        }
        loop {
            let current = self.segment.clone().filter(|s| self.next_seq < s.end_seq.get());
            let segment = match current {
                Some(segment) => segment,
                None => {
                    let (first, end) = (self.shared.first_seq.get(), self.shared.visible_end.get());
                    let segment = self.shared.segment_for(self.next_seq);
                    let segment = segment.ok_or(Error::OutOfRange { seq: self.next_seq, first, end })?;
                    let offset = segment.scan_start(self.next_seq);
                    self.enter(segment.clone(), offset);
                    segment
                }
            };
            let path = || self.shared.disk.path_of(&segment.name);
            let cursor = self.cursor.as_mut().expect("entered a segment");
            cursor.end = segment.end_offset.get();
            let frame = cursor.frame_at(self.offset).await.map_err(|e| Error::io("read", path(), e))?;
            let frame = frame.map_err(|defect| Error::Corruption {
                path: path(),
                offset: self.offset,
                reason: defect.reason(),
            })?;
            let header = frame.header;
            if header.first_seq > self.next_seq {
                return Err(Error::Corruption {
                    path: path(),
                    offset: self.offset,
                    reason: "frame starts past the record sought",
                });
            }
            segment.note_read_frame(header.first_seq, self.offset, self.shared.config.index_interval_bytes);
            self.shared.count(|s| s.device_frames_read += 1);
            self.offset = next_frame_offset(self.offset, &header);
            if header.end_seq() <= self.next_seq {
                continue;
            }
            self.raw.clear();
            self.raw.extend_from_slice(frame.raw);
            self.raw_at = 0;
            self.raw_seq = header.first_seq;
            self.raw_end_seq = header.end_seq();
            return Ok(());
        }
    }
}
