//! The flusher: the one task per log that turns queued records into durable frames.
//!
//! Each round takes every record waiting (so a lone record waits for no timer, and under load
//! one write and one fdatasync carry everything that arrived during the previous round), cuts
//! them into frames of at most `frame_payload_bytes_max`, places the frames on fresh blocks
//! (a block that holds acknowledged records is never written again), rolls to a new segment
//! when the next frame would not fit, writes each run of frames with one write, and under
//! `Durability::Sync` ends with one fdatasync (none when the disk's writes are durable on
//! completion, `SyncMethod::DsyncWrites`). Only then does it move the visible end and complete
//! the batch's tickets.
//!
//! A failed write or fdatasync fails the batch and poisons the queue: the log acknowledges
//! nothing more until it is reopened, because after a failed fdatasync the kernel may have
//! dropped the dirty data while reporting later syncs as clean.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;

use crate::commit::{Batch, FlushedPieces, PiecePos, Work};
use crate::config::Durability;
use crate::disk::{Disk, DiskFile, SyncMethod, WriteBuf};
use crate::error::{Error, Result};
use crate::frame::{seal_frame, FrameHeader, SealParams};
use crate::layout::{align_up, BLOCK_BYTES, FRAME_HEADER_BYTES, RECORD_PREFIX_BYTES};
use crate::piece::{stored_compressed, PieceSpan};
use crate::record::record_len_at;
use crate::roll::{write_all, SegmentMaker};
use crate::state::log2_bucket;
use crate::state::{SegmentState, Shared};

/// A frame placed but not yet written.
struct PlannedFrame {
    header: FrameHeader,
    /// Its pieces, in the writer's list of pieces; its stored payload is the writer's
    /// `stored` buffer of the same index as the frame.
    pieces: std::ops::Range<usize>,
    /// The frame opens a new segment.
    opens_segment: bool,
    offset: u64,
    /// Its records (with their prefixes) in the batch.
    raw: std::ops::Range<usize>,
}

pub(crate) struct Writer<D: Disk> {
    shared: Rc<Shared<D>>,
    tail: Option<Rc<SegmentState<D::File>>>,
    write_offset: u64,
    last_checksum: u64,
    /// Every record below this was fdatasync'd.
    synced_end: u64,
    /// Bytes written to the tail segment since its last fdatasync.
    tail_dirty: bool,
    last_sync: Instant,
    /// Stored payloads of the planned frames, one buffer per frame, kept across flushes.
    stored: Vec<Vec<u8>>,
    pieces: Vec<PieceSpan>,
    plan: Vec<PlannedFrame>,
    maker: SegmentMaker<D>,
}

impl<D: Disk> Writer<D> {
    pub(crate) fn new(shared: Rc<Shared<D>>, last_checksum: u64) -> Self {
        let tail = shared.segments.borrow().values().next_back().cloned();
        let write_offset = tail.as_ref().map_or(BLOCK_BYTES, |t| t.end_offset.get());
        let synced_end = shared.visible_end.get();
        Writer {
            tail,
            write_offset,
            last_checksum,
            synced_end,
            tail_dirty: false,
            last_sync: Instant::now(),
            stored: Vec::new(),
            pieces: Vec::new(),
            plan: Vec::new(),
            maker: SegmentMaker::new(shared.disk.clone(), &shared.config, shared.free.clone()),
            shared,
        }
    }

    /// The flusher's life: flush batches until the log closes or fails.
    pub(crate) async fn run(mut self) {
        // The next segment is prepared at the first flush (each flush asks), not at open, so
        // that an opener that only reads writes nothing; unless the log has no segment yet or
        // its tail is nearly full, when the first appends would soon wait for it.
        let segment_bytes = self.shared.config.segment_bytes;
        // A tail past the segment size (the size was lowered since it was written) is full.
        if self.tail.is_none() || segment_bytes.saturating_sub(self.write_offset) < segment_bytes / 4 {
            self.maker.prepare_next();
        }
        loop {
            if self.sync_due() {
                if let Err(error) = self.sync_tail().await {
                    self.shared.queue.borrow_mut().poison(error);
                    self.end_waits();
                    self.maker.finish().await;
                    return;
                }
            }
            match self.next_work().await {
                Some(Work::Flush(batch)) => match self.flush(&batch).await {
                    Ok(frames) => {
                        batch.completion.complete(Ok(frames));
                        self.shared.queue.borrow_mut().recycle(batch.raw);
                    }
                    Err(error) => {
                        self.shared.queue.borrow_mut().poison(error.clone());
                        batch.completion.complete(Err(error));
                        self.end_waits();
                        self.maker.finish().await;
                        return;
                    }
                },
                Some(Work::Exit) => {
                    if self.tail_dirty {
                        if let Err(error) = self.sync_tail().await {
                            self.shared.queue.borrow_mut().poison(error);
                        }
                    }
                    self.end_waits();
                    self.maker.finish().await;
                    return;
                }
                None => {} // the buffered sync interval elapsed; synced at the top of the loop
            }
        }
    }

    /// Wakes the readers waiting for the visible end: it will not move any more.
    fn end_waits(&self) {
        for waker in self.shared.end_waiters.take() {
            waker.wake();
        }
    }

    fn sync_interval(&self) -> Option<Duration> {
        match self.shared.config.durability {
            Durability::Sync => None,
            Durability::Buffered { sync_interval } => Some(sync_interval),
        }
    }

    fn sync_due(&self) -> bool {
        self.tail_dirty && self.sync_interval().is_some_and(|interval| self.last_sync.elapsed() >= interval)
    }

    /// Waits for a batch, for close, or (`None`) for the buffered sync deadline.
    async fn next_work(&self) -> Option<Work> {
        let shared = self.shared.clone();
        let work = async move { Some(std::future::poll_fn(|cx| shared.queue.borrow_mut().poll_work(cx)).await) };
        match self.sync_interval() {
            Some(interval) if self.tail_dirty => {
                let wait = interval.saturating_sub(self.last_sync.elapsed());
                future::or(work, async move {
                    glommio::timer::sleep(wait).await;
                    None
                })
                .await
            }
            _ => work.await,
        }
    }

    async fn flush(&mut self, batch: &Batch) -> Result<FlushedPieces> {
        let started = Instant::now();
        self.maker.prepare_next();
        self.plan_frames(batch);
        let mut flushed = Vec::with_capacity(self.pieces.len());
        let mut start = 0;
        while start < self.plan.len() {
            let mut end = start + 1;
            while end < self.plan.len() && !self.plan[end].opens_segment {
                end += 1;
            }
            if self.plan[start].opens_segment {
                let first = &self.plan[start].header;
                self.roll(first.first_seq, first.prev_checksum).await?;
            }
            self.write_run(start..end).await?;
            let tail = self.tail.as_ref().expect("a run is written to a segment");
            for planned in &self.plan[start..end] {
                let payload_at = planned.offset + FRAME_HEADER_BYTES as u64;
                for span in &self.pieces[planned.pieces.clone()] {
                    let at = PiecePos::new(tail.base_seq, payload_at + span.start as u64, span.len as u64);
                    flushed.push((span.first_seq, at));
                }
            }
            start = end;
        }
        if self.sync_interval().is_none() {
            self.sync_tail().await?;
            let micros = started.elapsed().as_micros() as u64;
            self.shared.count(|s| {
                s.durable_flush_micros[log2_bucket(micros)] += 1;
                s.durable_flush_micros_sum += micros;
            });
        } else if !self.tail_dirty {
            // Buffered, with every write of this flush durable on completion (`O_DSYNC`): its
            // records are synced now; no interval's fdatasync would come to say so.
            self.note_synced();
        }
        self.publish(batch);
        Ok(flushed.into())
    }

    /// Cuts the batch into frames, seals them, and gives each its place on disk.
    fn plan_frames(&mut self, batch: &Batch) {
        let config = &self.shared.config;
        let synced_seq = match config.durability {
            Durability::Sync => batch.first_seq,
            Durability::Buffered { .. } => self.synced_end,
        };
        self.plan.clear();
        self.pieces.clear();
        let mut offset = if self.tail.is_some() { self.write_offset } else { config.segment_bytes };
        let (mut at, mut first_seq, mut prev) = (0usize, batch.first_seq, self.last_checksum);
        while at < batch.raw.len() {
            let (start, mut count) = (at, 0u32);
            while at < batch.raw.len() {
                let framed = RECORD_PREFIX_BYTES + record_len_at(&batch.raw, at);
                if count > 0 && at + framed - start > config.frame_payload_bytes_max as usize {
                    break;
                }
                at += framed;
                count += 1;
            }
            let slot = self.plan.len();
            if self.stored.len() <= slot {
                self.stored.push(Vec::new());
            }
            let params = SealParams {
                first_seq,
                synced_seq,
                prev_checksum: prev,
                compression: config.compression,
                piece_raw_bytes: config.piece_raw_bytes,
            };
            let first_piece = self.pieces.len();
            let header = seal_frame(&batch.raw[start..at], count, params, &mut self.stored[slot], &mut self.pieces);
            let pieces = first_piece..self.pieces.len();
            let disk_bytes = align_up(header.frame_bytes());
            let opens_segment = offset + disk_bytes > config.segment_bytes;
            if opens_segment {
                offset = BLOCK_BYTES;
            }
            self.plan.push(PlannedFrame { header, pieces, opens_segment, offset, raw: start..at });
            offset += disk_bytes;
            first_seq = header.end_seq();
            prev = header.checksum;
        }
    }

    /// Writes frames `run` (all in the tail segment, contiguous) with one write.
    async fn write_run(&mut self, run: std::ops::Range<usize>) -> Result<()> {
        let tail = self.tail.clone().expect("rolled before writing");
        let first_offset = self.plan[run.start].offset;
        assert_eq!(first_offset, self.write_offset, "frames are written where the log ends");
        let last = &self.plan[run.end - 1];
        let run_bytes = (last.offset + align_up(last.header.frame_bytes()) - first_offset) as usize;
        let mut buf = tail.file.alloc(run_bytes);
        let bytes = buf.bytes_mut();
        // What compression did, counted once the write succeeds.
        let (mut raw_bytes, mut stored_bytes, mut pieces, mut compressed) = (0u64, 0u64, 0u64, 0u64);
        for (index, planned) in self.plan.iter().enumerate().take(run.end).skip(run.start) {
            let at = (planned.offset - first_offset) as usize;
            let stored = &self.stored[index][..planned.header.stored_len as usize];
            let end = at + FRAME_HEADER_BYTES + stored.len();
            bytes[at..at + FRAME_HEADER_BYTES].copy_from_slice(&planned.header.encode());
            bytes[at + FRAME_HEADER_BYTES..end].copy_from_slice(stored);
            bytes[end..at + align_up(planned.header.frame_bytes()) as usize].fill(0);
            self.last_checksum = planned.header.checksum;
            raw_bytes += u64::from(planned.header.raw_len);
            stored_bytes += stored.len() as u64;
            for span in &self.pieces[planned.pieces.clone()] {
                pieces += 1;
                compressed += u64::from(stored_compressed(&stored[span.start as usize..]));
            }
        }
        let path = || self.shared.disk.path_of(&tail.name);
        self.tail_dirty = true;
        write_all(&*tail.file, buf, first_offset, run_bytes).await.map_err(|e| Error::io("write", path(), e))?;
        // A completed write of an O_DSYNC file is durable: no fdatasync is owed for it.
        let durable = self.shared.disk.sync_method() == SyncMethod::DsyncWrites;
        self.tail_dirty = !durable;
        self.write_offset = first_offset + run_bytes as u64;
        self.shared.count(|s| {
            s.disk_bytes += run_bytes as u64;
            s.frames += run.len() as u64;
            s.durable_writes += u64::from(durable);
            s.payload_raw_bytes += raw_bytes;
            s.payload_stored_bytes += stored_bytes;
            s.pieces += pieces;
            s.pieces_compressed += compressed;
        });
        Ok(())
    }

    /// Seals the tail segment (synced) and moves to a new one, starting at `base_seq`.
    async fn roll(&mut self, base_seq: u64, chain_seed: u64) -> Result<()> {
        if self.tail_dirty {
            let tail = self.tail.clone().expect("dirty implies a tail");
            let path = self.shared.disk.path_of(&tail.name);
            tail.file.fdatasync().await.map_err(|e| Error::io("fdatasync", path, e))?;
            self.tail_dirty = false;
            self.shared.count(|s| s.fsyncs += 1);
        }
        let made = self.maker.make(base_seq, chain_seed).await?;
        let segment = Rc::new(SegmentState::new(base_seq, made.name, Rc::new(made.file), made.created_ms));
        self.shared.segments.borrow_mut().insert(base_seq, segment.clone());
        self.shared.count(|s| {
            s.segments_created += 1;
            s.segments_recycled += u64::from(made.recycled);
            s.fsyncs += made.fsyncs;
            s.disk_bytes += made.bytes_written;
        });
        self.tail = Some(segment);
        self.write_offset = BLOCK_BYTES;
        Ok(())
    }

    async fn sync_tail(&mut self) -> Result<()> {
        if let Some(tail) = self.tail.clone() {
            if self.tail_dirty {
                let path = self.shared.disk.path_of(&tail.name);
                tail.file.fdatasync().await.map_err(|e| Error::io("fdatasync", path, e))?;
                self.shared.count(|s| s.fsyncs += 1);
            }
        }
        self.tail_dirty = false;
        self.note_synced();
        Ok(())
    }

    /// Every record written so far is durable on the device.
    fn note_synced(&mut self) {
        self.last_sync = Instant::now();
        self.synced_end = self.write_end_seq();
        self.shared.synced_end.set(self.synced_end);
    }

    /// Sequence number after the last record written (acknowledged or about to be).
    fn write_end_seq(&self) -> u64 {
        self.plan
            .last()
            .map_or(self.shared.visible_end.get(), |p| p.header.end_seq())
            .max(self.shared.visible_end.get())
    }

    /// Makes a flushed batch visible to readers: segment ends, sparse index, visible end.
    fn publish(&mut self, batch: &Batch) {
        let interval = self.shared.config.index_interval_bytes;
        let mut segment = None;
        for planned in &self.plan {
            if planned.opens_segment || segment.is_none() {
                let first = self.pieces[planned.pieces.start].first_seq;
                segment = self.shared.segment_for(first);
            }
            let segment = segment.as_ref().expect("flushed into a known segment");
            let next = planned.offset + align_up(planned.header.frame_bytes());
            segment.note_frame(planned.header.first_seq, planned.header.end_seq(), planned.offset, next, interval);
        }
        self.shared.advance_visible_end(batch.end_seq());
        let mut recent = self.shared.recent.borrow_mut();
        for planned in &self.plan {
            recent.push(planned.header.first_seq, planned.header.end_seq(), &batch.raw[planned.raw.clone()]);
        }
        let record_bytes = (batch.raw.len() - batch.count * RECORD_PREFIX_BYTES) as u64;
        self.shared.count(|s| {
            s.flushes += 1;
            s.flush_records[log2_bucket(batch.count as u64)] += 1;
            s.records += batch.count as u64;
            s.record_bytes += record_bytes;
        });
    }
}
